"""The one owners-topic reader on the embedded broker: claims, watermarks and tombstones handed over
in order, malformed messages skipped and counted, and each read stops at the end it found."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from pipeline.basics import metrics
from pipeline.basics.config import Settings
from pipeline.core.claims import event_to_json, progress_to_json
from pipeline.core.models import OwnerEvent, Progress
from pipeline.transport import owners_topic
from pipeline.transport.broker import EmbeddedBroker, free_port
from pipeline.transport.kafka import ensure_topics, make_consumer, make_producer


def claim(n: int) -> OwnerEvent:
    now = time.time_ns()
    return OwnerEvent(ip=f"10.244.0.{n}", kind="pod", namespace="a", name=f"p{n}", uid=f"u{n}",
                      valid_from_ns=now, valid_to_ns=None, observed_ns=now)


def malformed() -> float:
    return metrics.REGISTRY.get_sample_value("flows_owner_events_total", {"kind": "malformed"}) or 0.0


async def test_read_to_end_hands_over_every_message_once(tmp_path: Path) -> None:
    broker = EmbeddedBroker(free_port(), tmp_path / "broker.log")
    await broker.start()
    try:
        settings = Settings(kafka_bootstrap=broker.bootstrap, home=tmp_path)
        await ensure_topics(settings)
        topic = settings.owners_topic
        producer = make_producer(settings)
        await producer.start()
        mark = Progress("watcher", 5, 6)
        for key, value in ((b"c1", event_to_json(claim(1))), (b"w", progress_to_json(mark)),
                           (b"bad", b"{not json"), (b"c1", None)):
            await producer.send_and_wait(topic, value, key=key, partition=0)

        seen: list[tuple[bytes, Any]] = []
        consumer = make_consumer(settings, group_id=None, enable_auto_commit=False)
        await consumer.start()
        try:
            await consumer.topics()
            assert await owners_topic.rewind(consumer, topic)
            before = malformed()
            assert await owners_topic.read_to_end(consumer, lambda msg, item: seen.append((msg.key, item))) == 4
            assert [(k, type(i).__name__) for k, i in seen] == [(b"c1", "OwnerEvent"), (b"w", "Progress"),
                                                                 (b"c1", "NoneType")]
            assert seen[1][1] == mark and malformed() == before + 1

            seen.clear()  # at the end, a read costs one end_offsets call and hands over nothing
            assert await owners_topic.read_to_end(consumer, lambda msg, item: seen.append((msg.key, item))) == 0
            await producer.send_and_wait(topic, event_to_json(claim(2)), key=b"c2", partition=0)
            assert await owners_topic.read_to_end(consumer, lambda msg, item: seen.append((msg.key, item))) == 1
            assert [k for k, _ in seen] == [b"c2"]

            assert await owners_topic.rewind(consumer, topic)  # from the beginning again: everything once more
            assert await owners_topic.read_to_end(consumer, lambda msg, item: None) == 5
            assert await owners_topic.rewind(consumer, "no-such-topic") == []
        finally:
            await consumer.stop()
            await producer.stop()
    finally:
        broker.stop()


async def test_a_catch_up_does_not_wait_behind_the_readers_own_fetch(tmp_path: Path) -> None:
    """The worker catches up after every raw fetch. A broker answers one connection's requests in order, and
    the reader's connection carries a fetch waiting for new messages (here up to 60 s): asked there, the end
    offsets came only when that fetch returned. Asked through a probe (a consumer with nothing assigned),
    they come at once: the catch-up ends long before the reader's fetch would."""
    broker = EmbeddedBroker(free_port(), tmp_path / "broker.log")
    await broker.start()
    try:
        settings = Settings(kafka_bootstrap=broker.bootstrap, home=tmp_path)
        await ensure_topics(settings)
        producer = make_producer(settings)
        await producer.start()
        await producer.send_and_wait(settings.owners_topic, event_to_json(claim(1)), key=b"c1", partition=0)
        reader = make_consumer(settings, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=60_000)
        probe = make_consumer(settings, group_id=None, enable_auto_commit=False)
        await reader.start()
        await probe.start()
        try:
            await reader.topics()
            await owners_topic.rewind(reader, settings.owners_topic)
            assert await owners_topic.read_to_end(reader, lambda msg, item: None, probe) == 1
            # the reader's next fetch is sent in the background and waits at the broker for a message that
            # does not come; a second is ample for it to be on the connection (this sets the fault up)
            await asyncio.sleep(1)
            catch_up = owners_topic.read_to_end(reader, lambda msg, item: None, probe)
            assert await asyncio.wait_for(catch_up, 20) == 0
        finally:
            await reader.stop()
            await probe.stop()
            await producer.stop()
    finally:
        broker.stop()
