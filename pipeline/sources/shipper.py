"""Producing to Kafka: records batched into envelope messages, owner events one per key.

A shipper returns (or checkpoints) only after the broker acknowledged every
message (acks=all), so what it reports as shipped is in Kafka. One send that
fails (a delivery timeout, a broker error) fails the producer for good: every
later ``add`` and ``flush`` raises ``SendFailed``, so no checkpoint can be saved
past the lost records, and the shipper stops; the same command run again
re-sends from the last checkpoint (the worker drops what is sent twice).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

from pipeline.basics.config import Settings
from pipeline.core.claims import event_to_json, progress_to_json
from pipeline.core.envelopes import MAX_MESSAGE_CHARS, UNDECODABLE, EnvelopeError, encode_batch, record_id
from pipeline.core.models import OwnerEvent, Progress, RawRecord
from pipeline.transport.kafka import MAX_BATCH_BYTES, MAX_BATCH_RECORDS, make_producer

MAX_IN_FLIGHT = 64


class SendFailed(RuntimeError):
    """Kafka did not acknowledge a message: its records may be missing there, so shipping stops."""


def _describe(exc: BaseException) -> str:
    """An exception as one line; aiokafka's timeouts carry no text of their own."""
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    return name if not text or text == name else f"{name}: {text}"


@dataclass
class ShipStats:
    records: int = 0
    undecodable: int = 0
    messages: int = 0


def undecodable_record(err: EnvelopeError, source: str) -> RawRecord:
    """An input line the shipper could not decode travels as a marked record: kept, not lost."""
    raw = err.raw[:MAX_MESSAGE_CHARS]
    return RawRecord(record_id("undecodable", source, err.raw), time.time_ns(), "", raw,
                     f"{UNDECODABLE}{err.reason}", {"error": err.detail[:512], "format": source})


class RecordProducer:
    """Groups records by node into messages of at most MAX_BATCH_RECORDS / MAX_BATCH_BYTES."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = make_producer(settings)
        self._pending: dict[str, list[RawRecord]] = {}
        self._pending_bytes: dict[str, int] = {}
        self._inflight: list[tuple[asyncio.Future, int]] = []  # (ack, records in that message)
        self._failed: SendFailed | None = None
        self.stats = ShipStats()

    async def __aenter__(self) -> RecordProducer:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                await self.flush()
        finally:
            await self.producer.stop()

    def _check(self) -> None:
        if self._failed is not None:
            raise self._failed

    def _fail(self, exc: BaseException, records: int) -> SendFailed:
        self._failed = SendFailed(
            f"Kafka did not acknowledge {records} records sent to {self.settings.raw_topic} ({_describe(exc)}): "
            "stopping; run the same command again to ship them (a checkpoint stays before them)")
        return self._failed

    async def add(self, rec: RawRecord) -> None:
        self._check()
        key = rec.host
        batch = self._pending.setdefault(key, [])
        batch.append(rec)
        size = self._pending_bytes.get(key, 0) + len(rec.message) + 160
        self._pending_bytes[key] = size
        if len(batch) >= MAX_BATCH_RECORDS or size >= MAX_BATCH_BYTES:
            await self._send(key)

    async def _send(self, key: str) -> None:
        batch = self._pending.pop(key, [])
        self._pending_bytes.pop(key, None)
        if not batch:
            return
        try:
            fut = await self.producer.send(self.settings.raw_topic, encode_batch(batch), key=key.encode())
        except Exception as exc:  # any refusal loses the batch: stop, whatever it was
            raise self._fail(exc, len(batch)) from exc
        self._inflight.append((fut, len(batch)))
        self.stats.messages += 1
        self.stats.records += len(batch)
        if len(self._inflight) >= MAX_IN_FLIGHT:
            await self._await_inflight()

    async def _await_inflight(self) -> None:
        """Wait for every ack in flight; any failure fails the producer (all are awaited, none left dangling)."""
        inflight, self._inflight = self._inflight, []
        results = await asyncio.gather(*(fut for fut, _ in inflight), return_exceptions=True)
        failed = [(exc, n) for exc, (_, n) in zip(results, inflight, strict=True) if isinstance(exc, BaseException)]
        if failed:
            raise self._fail(failed[0][0], sum(n for _, n in failed)) from failed[0][0]

    async def flush(self) -> None:
        """Send everything pending and wait until the broker acknowledged all of it; SendFailed otherwise."""
        self._check()
        for key in list(self._pending):
            await self._send(key)
        await self._await_inflight()


async def ship_records(
    settings: Settings, items: Iterable[RawRecord | EnvelopeError] | AsyncIterator[RawRecord | EnvelopeError],
    source: str, on_progress: Callable[[ShipStats], None] | None = None,
) -> ShipStats:
    """Ship decoded records (undecodable ones as marked records) and wait for all acks."""
    async with RecordProducer(settings) as producer:
        iterator = items.__aiter__() if hasattr(items, "__aiter__") else None
        count = 0

        async def one(item: RawRecord | EnvelopeError) -> None:
            nonlocal count
            if isinstance(item, EnvelopeError):
                producer.stats.undecodable += 1
                item = undecodable_record(item, source)
            await producer.add(item)
            count += 1
            if on_progress and count % 1000 == 0:
                on_progress(producer.stats)

        if iterator is not None:
            async for item in iterator:
                await one(item)
        else:
            for item in items:  # type: ignore[union-attr]
                await one(item)
        await producer.flush()
        if on_progress:
            on_progress(producer.stats)
        return producer.stats


async def publish_owner_events(settings: Settings, events: list[OwnerEvent], progress: Progress | None = None) -> int:
    """Publish ownership events keyed by claim (the owners topic is compacted by that key).

    ``progress`` (a snapshot's completeness watermark) is sent only after every claim was
    acknowledged: a worker that sees it has every claim before it.
    """
    producer = make_producer(settings)
    await producer.start()
    try:
        futures = [await producer.send(settings.owners_topic, event_to_json(ev), key=ev.key.encode())
                   for ev in events]
        await asyncio.gather(*futures)
        if progress is not None:
            await (await producer.send(settings.owners_topic, progress_to_json(progress), key=progress.key.encode()))
        return len(futures)
    finally:
        await producer.stop()
