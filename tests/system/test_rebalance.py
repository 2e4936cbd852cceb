"""Rebalances never let two workers write the same offsets.

Several ``flows worker`` processes cannot share one embedded store (chDB allows one process per
data directory), so the workers here are Worker instances in one process, each with its own
sink: its own ClickHouse session on its own thread, over one chDB directory, as workers share a
ClickHouse server. The broker, the shipper and the inventory loader are real processes.

Two adversarial cases. A worker's insert is held after its replay check while a rebalance
starts, and released well after aiokafka's default rebalance timeout (10 s): had its partitions
been handed on meanwhile, their next owner would insert the same records (its replay check cannot
see rows not inserted yet) and the held insert would add them a second time. The held worker is
the group's leader: the embedded broker (Tansu) does not wait for every revoked member as a Kafka
coordinator does (up to the rebalance timeout): after a few seconds it completes the join with
the members that rejoined and hands the others' partitions on, but it cannot complete it without
the leader's assignment. So against it this case shows the waiting, not the timeout. Then a
worker whose uploads all fail has a batch when a rebalance starts: it must abandon the batch in
time (uncommitted). A rolling restart of every worker follows, one membership change at a time;
the counts, the summary and the fan-out must be exact.
What a ClickHouse server would add: the server ending an attempt at INSERT_ATTEMPT_S
(max_execution_time) and processes that die with a query in flight; kill -9 of a worker process
is covered against chDB by tests/system/test_faults.py.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.analysis.reports import FANOUT_SQL, SUMMARY_SQL
from pipeline.basics.config import Settings
from pipeline.store.clickhouse import migrate, open_client
from pipeline.tooling.synthetic import generate
from pipeline.transport.broker import free_port
from pipeline.transport.kafka import ensure_topics, make_consumer
from pipeline.worker import consumer
from pipeline.worker.consumer import Worker
from pipeline.worker.sink import ClickHouseSink
from tests.conftest import flows, flows_env
from tests.system.test_e2e import FANOUT_KEYS

pytestmark = pytest.mark.slow
HELD_S = 12.0  # longer than aiokafka's default rebalance timeout (10 s), well inside ours


class Faults:
    """The client factory of every member: a fault is armed for whichever member inserts next, so
    the test never depends on which partitions (and so which records) a member was assigned.

    ``hold()``: the next client to copy into ``flows`` stops there until ``release()`` (its replay
    check is done, its rows are not stored yet). ``fail()``: the next client to upload a batch
    fails that upload and every later one until ``release()``, as an unreachable server would.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._mode = ""
        self.victim: Any = None
        self.reached = threading.Event()
        self.released = threading.Event()

    def hold(self) -> None:
        self._arm("hold")

    def fail(self) -> None:
        self._arm("fail")

    def _arm(self, mode: str) -> None:
        with self._lock:
            self._mode, self.victim = mode, None
            self.reached.clear()
            self.released.clear()

    def release(self) -> None:
        """End the fault: the held insert goes on, uploads succeed again."""
        with self._lock:
            self._mode = ""
        self.released.set()

    def _hit(self, client: Any, mode: str) -> bool:
        """True when ``client`` is (or now becomes) the victim of the armed ``mode``."""
        with self._lock:
            if self._mode != mode:
                return False
            if self.victim is None:
                self.victim = client
                self.reached.set()
            return self.victim is client

    def __call__(self, settings: Settings) -> Any:
        client = open_client(settings)
        command, insert_arrow = client.command, client.insert_arrow

        def held(sql: str, *args: Any, **kwargs: Any) -> Any:
            if sql.startswith("INSERT INTO flows ") and self._hit(client, "hold"):
                self.released.wait()
            return command(sql, *args, **kwargs)

        def failing(*args: Any, **kwargs: Any) -> Any:
            if self._hit(client, "fail"):
                raise ConnectionError("injected: ClickHouse unreachable")
            return insert_arrow(*args, **kwargs)

        client.command, client.insert_arrow = held, failing
        return client


class Member:
    """One worker of the group, with a ClickHouse session of its own."""

    def __init__(self, settings: Settings, factory: Any = open_client) -> None:
        self.sink = ClickHouseSink(settings, factory)
        self.worker = Worker(settings, self.sink)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.worker.run(self.stop))

    async def assigned(self) -> None:
        await asyncio.wait_for(self.worker.ready.wait(), 60)

    async def leave(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 120)
        self.sink.close()


async def regroup(group: list[Member], change: Callable[[], Any]) -> None:
    """Make one change to the group's membership and wait until every member of ``group`` (as it
    is after the change) was assigned partitions again. One change at a time: the embedded broker
    can lose the group's leader when a member leaves during a rebalance (seen: every JoinGroup
    answered without a leader, every 13 s, for good); a Kafka coordinator would not."""
    for m in group:
        m.worker.ready.clear()
    if asyncio.iscoroutine(done := change()):
        await done
    for m in group:
        await m.assigned()


def ship(env: dict[str, str], path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")
    flows(env, "ship", "file", str(path))


async def until(check: Any, what: Any, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what() if callable(what) else what}"
        await asyncio.sleep(0.2)


def stored(client: Any) -> tuple[int, int]:
    [(flows_n, rejects_n)] = client.query("SELECT (SELECT count() FROM flows), (SELECT count() FROM rejects)"
                                          ).result_rows
    return flows_n, rejects_n


def as_dicts(result: Any) -> list[dict[str, Any]]:
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def test_rebalances_during_inserts_and_rolling_restarts_store_every_record_once(broker, tmp_path, monkeypatch,
                                                                               caplog):
    corpus = generate(seed=31, namespaces=20, records=40_000)
    exp = corpus.expected
    env = flows_env(tmp_path / "cli", free_port(), FLOWS_KAFKA_BOOTSTRAP=broker.bootstrap, FLOWS_RAW_PARTITIONS="6")
    for key in ("FLOWS_HOME", "FLOWS_KAFKA_BOOTSTRAP", "FLOWS_RAW_PARTITIONS"):
        monkeypatch.setenv(key, str(tmp_path / "store") if key == "FLOWS_HOME" else env[key])
    monkeypatch.setenv("FLOWS_BATCH_MAX_S", "0.3")
    monkeypatch.setenv("FLOWS_BATCH_MAX_RECORDS", "2000")
    monkeypatch.setattr(consumer, "REVOKE_FLUSH_S", 2.0)  # the held insert outlives it: abandon, then wait
    # members notice a rebalance at their next heartbeat (aiokafka's default: every 3 s)
    monkeypatch.setattr(consumer, "make_consumer", functools.partial(make_consumer, heartbeat_interval_ms=500))
    settings = Settings()
    client = open_client(settings)
    migrate(client, ttl_days=settings.ttl_days)
    asyncio.run(ensure_topics(settings))
    inventory = tmp_path / "inventory.json"
    inventory.write_bytes(orjson.dumps(corpus.inventory))
    flows(env, "inventory", "load", str(inventory))
    third = len(corpus.journal) // 3
    parts = [corpus.journal[:third], corpus.journal[third:2 * third], corpus.journal[2 * third:]]

    faults = Faults()

    def abandoned() -> int:
        return sum("abandoned" in r.getMessage() for r in caplog.records if r.name == "flows.worker")

    everyone: list[Member] = []

    def member() -> Member:
        everyone.append(Member(settings, faults))
        return everyone[-1]

    async def scenario() -> None:
        try:
            await steps()
        finally:  # a failed step leaves members running: their store must close for the tests after this one
            for m in everyone:
                if not m.task.done():
                    await m.leave()

    async def steps() -> None:
        members: list[Member] = []
        await regroup(members, lambda: members.append(member()))  # the group's leader from now on
        await asyncio.to_thread(ship, env, tmp_path / "first.jsonl", parts[0])

        faults.hold()
        shipping = asyncio.create_task(asyncio.to_thread(ship, env, tmp_path / "second.jsonl", parts[1]))
        await until(faults.reached.is_set, "an insert to be held")

        async def join_while_held() -> None:  # every partition is revoked while that insert is held
            members.append(member())
            await asyncio.sleep(HELD_S)  # the hold's length is the fault itself (longer than aiokafka's default)
            assert not members[-1].worker.ready.is_set(), "the group moved on while a revoked insert was running"
            faults.release()
            await shipping

        await regroup(members, join_while_held)
        await regroup(members, lambda: members.append(member()))

        faults.fail()
        shipping = asyncio.create_task(asyncio.to_thread(ship, env, tmp_path / "third.jsonl", parts[2]))
        await until(faults.reached.is_set, "an upload to fail")
        [failing] = [m for m in members if m.sink.client() is faults.victim]
        await until(lambda: bool(failing.sink.last_error), "the failing worker to retry its batch")
        before = abandoned()
        # the failing worker is assigned again only once it abandoned its batch (uncommitted)
        await regroup(members, lambda: members.append(member()))
        assert abandoned() > before
        members.remove(failing)
        await regroup(members, failing.leave)
        faults.release()
        for i in range(len(members)):  # a rolling restart while the third part is shipped and consumed
            leaving = members.pop(i)
            await regroup(members, leaving.leave)
            await regroup(members, lambda i=i: members.insert(i, member()))
        await shipping
        await until(lambda: all(n >= want for n, want in zip(stored(client), (exp.records, exp.rejected), strict=True)),
                    lambda: f"every record stored: {stored(client)} of {(exp.records, exp.rejected)}")
        for m in members:  # every sink's thread is done after this: no insert can land later
            await m.leave()

    try:
        asyncio.run(scenario())
        check(client, exp)
    finally:
        client.close()


def check(client: Any, exp: Any) -> None:
    [(n, unique)] = client.query("SELECT count(), uniqExact(record_id) FROM flows").result_rows
    assert (n, unique) == (exp.records, exp.records)
    assert stored(client) == (exp.records, exp.rejected)
    [summary] = as_dicts(client.query(SUMMARY_SQL))
    assert (summary["records"], summary["rejected"], summary["unattributed"]) == (
        exp.records, exp.rejected, exp.unowned_sources)
    fanout = as_dicts(client.query(FANOUT_SQL, parameters={"since": "1970-01-01 00:00:00",
                                                           "until": "2100-01-01 00:00:00"}))
    assert {r["namespace"]: {k: r[k] for k in FANOUT_KEYS} for r in fanout} == exp.fanout
