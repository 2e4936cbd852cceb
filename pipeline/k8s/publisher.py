"""The owners topic from the watcher's side: one ordered producer, and reading the topic back.

Each leadership term starts from what the topic already holds, so a restart publishes only
what changed while no watcher ran and never leaves known IPs unresolved.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.errors import KafkaError
from prometheus_client import Counter

from pipeline.basics.config import Settings
from pipeline.basics.metrics import REGISTRY
from pipeline.core.claims import event_to_json, progress_to_json
from pipeline.core.models import OwnerEvent, Progress
from pipeline.k8s.tracker import OwnershipTracker
from pipeline.transport import owners_topic
from pipeline.transport.kafka import make_consumer, make_producer

log = logging.getLogger("flows.watch")

PUBLISHED = Counter(
    "flows_owner_events_published_total", "Ownership events acknowledged by Kafka, by claim kind (tombstone: "
    "an expired claim removed from the compacted topic)", ["kind"], registry=REGISTRY)

Publishable = OwnerEvent | Progress | str  # a claim, a watermark, or a key to tombstone
Emit = Callable[[list[Publishable]], Awaitable[None]]


class OwnerPublisher:
    """The session's one producer: claims in the order the tracker made them, acks=all, keyed by claim."""

    def __init__(self, settings: Settings, max_pending: int = 10_000) -> None:
        self.settings = settings
        self.queue: asyncio.Queue[Publishable] = asyncio.Queue(max_pending)
        self.pending = 0  # emitted, not yet acknowledged by Kafka

    async def emit(self, items: list[Publishable]) -> None:
        self.pending += len(items)
        for item in items:
            await self.queue.put(item)

    async def run(self) -> None:
        producer = make_producer(self.settings, linger_ms=5)
        await producer.start()
        try:
            while True:
                # A watermark goes alone, after everything queued before it was acknowledged (claims
                # land on other partitions: a reader must never see the watermark before them).
                batch = [await self.queue.get()]
                mark = None
                if isinstance(batch[0], Progress):
                    mark, batch = batch[0], []
                while mark is None and len(batch) < 1000 and not self.queue.empty():
                    item = self.queue.get_nowait()
                    if isinstance(item, Progress):
                        mark = item
                    else:
                        batch.append(item)
                futures = []
                for item in batch:
                    if isinstance(item, str):
                        futures.append(await producer.send(self.settings.owners_topic, None, key=item.encode()))
                    else:
                        futures.append(await producer.send(self.settings.owners_topic, event_to_json(item),
                                                           key=item.key.encode()))
                await asyncio.gather(*futures)
                if mark is not None:
                    await (await producer.send(self.settings.owners_topic, progress_to_json(mark),
                                               key=mark.key.encode()))
                    PUBLISHED.labels("progress").inc()
                    self.queue.task_done()
                    self.pending -= 1
                for item in batch:
                    PUBLISHED.labels("tombstone" if isinstance(item, str) else item.kind).inc()
                    self.queue.task_done()
                self.pending -= len(batch)
        finally:
            try:
                await asyncio.wait_for(producer.stop(), 10)
            except (TimeoutError, KafkaError) as exc:
                log.warning("producer stop: %s", exc)


async def restore_from_topic(settings: Settings, tracker: OwnershipTracker) -> int:
    """Read the owners topic from the beginning to its end into ``tracker``; returns messages read.

    The topic must exist: the watcher creates none (its Kafka user may only use this one topic).
    """
    consumer = make_consumer(settings, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # loads cluster metadata so the partitions are known
        if not await owners_topic.rewind(consumer, settings.owners_topic):
            # publishing would let the broker auto-create it, without compaction
            raise RuntimeError(f"the owners topic {settings.owners_topic} does not exist: create it with "
                               "`flows topics create` (or run `flows up`)")

        def restore(msg: Any, item: OwnerEvent | Progress | None) -> None:
            if item is None:  # a tombstone: the claim under this key is gone
                if msg.key:
                    tracker.forget(msg.key.decode())
            elif isinstance(item, OwnerEvent):  # watermarks are the workers' business
                tracker.restore(item)

        return await owners_topic.read_to_end(consumer, restore)
    finally:
        await consumer.stop()
