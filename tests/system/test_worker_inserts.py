"""The worker in-process (embedded broker, chDB) when ClickHouse cannot take a batch as it is.

A batch whose rows span 180 days, rows the server refuses on their own, and a batch of big
rejects: the worker stores what can be stored, quarantines what cannot, and its committed
offsets reach the end of the topic.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from pipeline.basics.config import Settings
from pipeline.core.enrich import Batch
from pipeline.core.envelopes import encode_batch
from pipeline.core.models import OwnerEvent, RawRecord
from pipeline.sources.shipper import publish_owner_events
from pipeline.store.clickhouse import migrate
from pipeline.store.repair import RepairPass
from pipeline.tooling.bench import ownership_events
from pipeline.transport.broker import EmbeddedBroker
from pipeline.transport.kafka import ensure_topics, make_consumer, make_producer
from pipeline.worker import consumer
from pipeline.worker.consumer import Worker
from pipeline.worker.sink import ClickHouseSink

pytestmark = pytest.mark.slow

DAY_NS = 86_400 * 10**9
LINE = ("calico-packet: IN=cali0123456789a OUT=eth0 SRC=10.1.0.{n} DST=93.184.216.{d} LEN=60 PROTO=TCP "
        "SPT=4{n:04d} DPT=443 ")


class CountingSink(ClickHouseSink):
    """The real sink, noting the size of every batch it was handed, and how many claims came with it."""

    batch_rows: list[int]
    claims: list[int]

    async def write(self, batch: Batch, owners: list[OwnerEvent], stop: asyncio.Event,
                    abandon: asyncio.Event | None = None) -> dict[str, int] | None:
        self.batch_rows.append(batch.flow_rows + batch.reject_rows)
        self.claims.append(len(owners))
        return await super().write(batch, owners, stop, abandon)


def record(n: int, ts_ns: int, host: str = "node-1", message: str | None = None) -> RawRecord:
    return RawRecord(f"{n:032x}", ts_ns, host, message or LINE.format(n=n % 250, d=n % 7), "journal")


async def run_worker(settings: Settings, prepare: Callable[[Any], None], messages: list[bytes],
                     until: Callable[[Worker, Any], Awaitable[bool]],
                     owners: Sequence[OwnerEvent] = ()) -> tuple[Worker, CountingSink, dict]:
    """Ship ``messages`` to partition 0, run a worker until ``until`` holds, stop it (final flush);
    returns the worker, its sink and the group's committed offsets against the topic's end.
    ``owners`` are published once the worker is ready (read as it runs, not at its start)."""
    sink = CountingSink(settings)
    sink.batch_rows, sink.claims = [], []
    await sink.call(lambda: prepare(sink.client()))
    await ensure_topics(settings)
    producer = make_producer(settings)
    await producer.start()
    try:
        for value in messages:
            await producer.send_and_wait(settings.raw_topic, value, partition=0)
    finally:
        await producer.stop()
    worker, stop = Worker(settings, sink), asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    deadline = time.monotonic() + 120
    if owners:
        while not worker.status()["ready"]:
            assert time.monotonic() < deadline and not task.done(), worker.status()
            await asyncio.sleep(0.1)
        await publish_owner_events(settings, list(owners))
    while not await until(worker, sink.client()):
        assert time.monotonic() < deadline and not task.done(), (worker.status(), sink.claims)
        await asyncio.sleep(0.2)
    stop.set()
    await task
    probe = make_consumer(settings, group_id=settings.consumer_group)
    await probe.start()
    try:
        tp = TopicPartition(settings.raw_topic, 0)
        offsets = {"committed": await probe.committed(tp), "end": (await probe.end_offsets([tp]))[tp]}
    finally:
        await probe.stop()
    return worker, sink, offsets


def query(client: Any, sql: str) -> list[tuple]:
    return client.query(sql).result_rows


def test_refused_rows_are_quarantined_the_rest_stored_and_offsets_move_on(
        broker: EmbeddedBroker, tmp_path: Path) -> None:
    # No ownership is published: hold_max_s=0 stores unattributed lines at once (no wait for ownership).
    settings = Settings(home=tmp_path / "home", kafka_bootstrap=broker.bootstrap, raw_partitions=1,
                        batch_max_s=0.3, hold_max_s=0)
    now = time.time_ns()
    # 1000 good records over 180 days (a months-long kern.log), in envelopes of 100 ...
    good = [record(n, now - (n % 180) * DAY_NS - 3600 * 10**9) for n in range(1000)]
    # ... and 3 that the server refuses: an operator's CHECK constraint, a real deterministic error
    refused = [record(10_000 + n, now - n * 40 * DAY_NS, host="refused-host") for n in range(3)]
    rows = good[:500] + refused + good[500:]
    messages = [encode_batch(rows[i : i + 100]) for i in range(0, len(rows), 100)]

    def prepare(client: Any) -> None:
        migrate(client)
        client.command("ALTER TABLE flows ADD CONSTRAINT no_refused_host CHECK host != 'refused-host'")

    async def stored(worker: Worker, client: Any) -> bool:
        return await worker.sink.call(query, client, "SELECT count() FROM flows") == [(1000,)]

    worker, sink, offsets = asyncio.run(run_worker(settings, prepare, messages, stored))
    try:
        client = sink.client()
        assert query(client, "SELECT count(), uniqExact(record_id), uniqExact(toDate(ts)) FROM flows") == [
            (1000, 1000, 180)]
        # every row names the process and batch that attributed it (sql/011), the halves of a refused batch too
        [(by, first, last)] = query(client, "SELECT attributed_by, min(attributed_batch), max(attributed_batch)"
                                            " FROM flows GROUP BY attributed_by")
        assert by == worker.worker_id != 0 and 0 <= first <= last < worker.batch_seq
        quarantined = query(client, "SELECT record_id, host, reason, detail, raw, kafka_partition FROM rejects "
                                    "WHERE stage = 'insert' ORDER BY record_id")
        assert [(r[0], r[1], r[2]) for r in quarantined] == [
            (int(r.record_id, 16), "refused-host", "VIOLATED_CONSTRAINT") for r in refused]
        for row in quarantined:
            assert "Constraint `no_refused_host`" in row[3]  # the server's own message
            assert row[4].startswith("IN=cali0123456789a OUT=eth0 SRC=10.1.0.") and "DPT=443" in row[4]
        assert query(client, "SELECT count() FROM rejects") == [(3,)]
        assert worker.totals["quarantined"] == 3 and worker.totals["stored"] == 1000
        assert offsets["committed"] == offsets["end"] == len(messages)  # the partition moved on
        assert worker.status()["ready"] is True
    finally:
        client.close()
        sink.close()


def test_a_batch_is_bounded_in_bytes(broker: EmbeddedBroker, tmp_path: Path) -> None:
    """100 rejects of 60 KB with a 256 KiB bound and a 60 s batch age: flushed by size, in several batches
    of at most five (the first fetch, before the worker has measured a message's size, takes one message:
    it took batch_max_records / 500 of them, 100 at the default, and a batch of 88 was seen)."""
    settings = Settings(home=tmp_path / "home", kafka_bootstrap=broker.bootstrap, raw_partitions=1,
                        batch_max_s=60, batch_max_bytes=256 * 1024, hold_max_s=0)
    now = time.time_ns()
    big = [record(n, now - n * 10**9, message="calico-packet: IN=" + "A" * 60_000) for n in range(100)]
    messages = [encode_batch([r]) for r in big]

    async def half_stored(worker: Worker, client: Any) -> bool:  # before any batch could expire
        return (await worker.sink.call(query, client, "SELECT count() FROM rejects"))[0][0] >= 50

    worker, sink, offsets = asyncio.run(run_worker(settings, lambda c: migrate(c), messages, half_stored))
    try:
        client = sink.client()
        # what was taken before the stop is stored (the last part by the final flush), and committed
        [(stored, raw_len)] = query(client, "SELECT count(), min(raw_len) FROM rejects WHERE stage = 'line'")
        assert offsets["committed"] == stored == sum(sink.batch_rows) >= 50 and raw_len == 60_018
        assert len(sink.batch_rows) >= 10 and max(sink.batch_rows) <= 5, sink.batch_rows
    finally:
        client.close()
        sink.close()


def test_a_burst_of_owner_events_goes_through_in_slices_without_waiting_for_records(
        broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A week of churn published at once to a running worker: applied and written a slice at a time (few
    events alive at once: the interpreter's arenas stay small), and each slice goes on at once instead
    of waiting a whole batch age for records that do not come (batch_max_s=10: 20 slices would take
    200 s, past the deadline; the first wait, begun before the burst, is one batch age)."""
    monkeypatch.setattr(consumer, "OWNERS_PER_POLL", 250)
    settings = Settings(home=tmp_path / "home", kafka_bootstrap=broker.bootstrap, raw_partitions=1,
                        batch_max_s=10, hold_max_s=0)
    events = list(ownership_events(1_000))
    claims = len({ev.key for ev in events})
    assert claims >= 20 * 250

    async def written(worker: Worker, client: Any) -> bool:
        return sum(worker.sink.claims) >= claims

    worker, sink, _ = asyncio.run(run_worker(settings, lambda c: migrate(c), [], written, owners=events))
    try:
        client = sink.client()
        assert worker.status()["registry"]["claims"] == claims
        assert query(client, "SELECT count() FROM (SELECT DISTINCT ip, kind, uid FROM ownership)") == [(claims,)]
        assert len(sink.claims) >= claims // 250 and max(sink.claims) <= 250, sink.claims
    finally:
        client.close()
        sink.close()


def test_records_go_on_being_stored_while_a_repair_page_runs(
        broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A repair pass (ownership learned while records are stored) runs beside the consume loop: with its
    page held up, records produced meanwhile are still taken, stored and committed. Awaited in the loop,
    a page stalled the drain for its own time and the insert in flight ahead of it."""
    settings = Settings(home=tmp_path / "home", kafka_bootstrap=broker.bootstrap, raw_partitions=1,
                        batch_max_s=0.2, hold_max_s=0)
    now = time.time_ns()
    first = [encode_batch([record(n, now - 60 * 10**9)]) for n in range(1, 11)]
    later = [record(n, now - 60 * 10**9) for n in range(11, 61)]
    step = RepairPass.step
    state: dict[str, Any] = {}

    async def held_step(run: RepairPass, *args: Any) -> None:
        state.setdefault("page", asyncio.Event()).set()
        await state.setdefault("release", asyncio.Event()).wait()
        await step(run, *args)

    monkeypatch.setattr(RepairPass, "step", held_step)

    async def stored_while_held(worker: Worker, client: Any) -> bool:
        if "page" not in state or not state["page"].is_set():
            return False
        if "produced" not in state:  # the page is held from here on
            producer = make_producer(settings)
            await producer.start()
            try:
                await producer.send_and_wait(settings.raw_topic, encode_batch(later), partition=0)
            finally:
                await producer.stop()
            state["produced"] = True
        if worker.status()["totals"].get("stored", 0) < 60:
            return False
        state["release"].set()
        return True

    worker, sink, offsets = asyncio.run(run_worker(settings, lambda c: migrate(c), first, stored_while_held,
                                                   owners=list(ownership_events(10))))
    try:
        assert query(sink.client(), "SELECT count() FROM flows") == [(60,)]
        assert offsets["committed"] == offsets["end"] == 11
    finally:
        sink.client().close()
        sink.close()
