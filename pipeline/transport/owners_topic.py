"""The one reader of the compacted owners topic: every partition, from the beginning, up to its end as of now.

Both the worker (registry bootstrap, and catching up after each raw fetch) and the watcher
(restoring its tracker before publishing) rebuild state from this topic. Reading "to the end"
means to the end offsets asked for once, when the read starts: messages produced later are
left for the next read, so a catch-up costs one ``end_offsets`` call when nothing is new (asked
on a connection of its own: see ``read_to_end``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.basics import metrics
from pipeline.core.claims import owner_message_from_json
from pipeline.core.models import OwnerEvent, Progress

log = logging.getLogger("flows.owners")

# A message and what it carries: a claim, a watermark, or None for a compaction tombstone.
Handler = Callable[[Any, OwnerEvent | Progress | None], None]


def dispatch(messages: Iterable[Any], handle: Handler) -> int:
    """Decode each message and hand it to ``handle``; a malformed one is logged, counted and skipped.

    Returns how many messages were read (malformed ones included).
    """
    read = 0
    for msg in messages:
        read += 1
        if msg.value is None:
            handle(msg, None)
            continue
        try:
            item = owner_message_from_json(msg.value)
        except ValueError as exc:
            metrics.OWNER_EVENTS.labels("malformed").inc()
            log.warning("owners topic offset %d skipped: %s", msg.offset, exc)
            continue
        handle(msg, item)
    return read


async def rewind(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    """Assign every partition of ``topic`` (no consumer group) and seek to its beginning; returns them.

    The consumer's cluster metadata must be loaded (``await consumer.topics()``).
    """
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
    consumer.assign(tps)
    if tps:
        await consumer.seek_to_beginning(*tps)
    return tps


async def read_to_end(consumer: AIOKafkaConsumer, handle: Handler, probe: AIOKafkaConsumer | None = None) -> int:
    """Read the assigned partitions up to their end offsets as of now; returns the messages read.

    ``probe``: a started consumer with nothing assigned, asked for the end offsets instead of
    ``consumer``. A broker answers the requests of one connection in order, and ``consumer``'s
    connection nearly always carries a fetch waiting for new messages, so there the answer came
    after it: up to ``fetch_max_wait_ms`` (500 ms) per call, measured 500 ms against 0.45 ms on a
    connection of its own. The worker catches up after every raw fetch, so that wait was per fetch.
    """
    tps = list(consumer.assignment())
    end = await (probe or consumer).end_offsets(tps) if tps else {}
    read = 0
    while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
        data = await consumer.getmany(timeout_ms=500, max_records=50_000)
        for messages in data.values():
            read += dispatch(messages, handle)
    return read
