"""Destinations are repaired too, and edges follow (docs/attribution.md, "Repair"; sql/010).

On a real chDB store: rows are stored as the worker stores them, with the answer ownership gave
then; ownership learned later goes through the worker's repair bookkeeping (``Repairs``) and pass.
  (a) a private destination stored ``unknown`` (its owner's claim came after the hold let it go);
  (b) a destination credited to a stale owner (pod A's claim still open when pod B, which already
      held the IP, was reached; B's claim, with the later start, arrives later).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC

import pytest

from pipeline.basics.config import Settings
from pipeline.core.calico_iface import cali_iface_name
from pipeline.core.claims import events_from_object
from pipeline.core.enrich import Batch, add_record
from pipeline.core.models import OwnerEvent
from pipeline.core.registry import OwnershipRegistry
from pipeline.store import clickhouse as ch
from pipeline.store import repair
from pipeline.store.clickhouse import insert_new_rows
from pipeline.store.edge_seals import seal_edges
from pipeline.worker.consumer import BOOTSTRAP_RECENT_NS, Worker
from pipeline.worker.repairs import Repairs, destination_change
from pipeline.worker.sink import ClickHouseSink
from tests.standins.k8s_standin import make_endpoint_slice, make_pod
from tests.unit.test_attribution import PREFIX, S, record

NOON = dt.datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - dt.timedelta(days=2)
T = int(NOON.timestamp()) * S  # a day inside the flows window
DAY = (NOON - dt.timedelta(hours=12), NOON + dt.timedelta(hours=12))
CLIENT_IP, LATE_IP, REUSED_IP = "10.244.1.10", "10.244.2.20", "10.244.3.30"
IFACE = cali_iface_name("shop", "web-0")


def pod_events(name: str, namespace: str, ip: str, start_ns: int, **kw: object) -> list[OwnerEvent]:
    return events_from_object(make_pod(name, namespace, ip, start_ns=start_ns, **kw), start_ns)


@pytest.fixture
def store(tmp_path) -> Iterator[tuple[ch.Client, OwnershipRegistry]]:
    """Rows to LATE_IP (nobody known: ``unknown``), to REUSED_IP (credited to legacy/old-0, whose claim
    was still open) and to 8.8.8.8, stored by the ingest code; the day sealed. The registry is the
    worker's: it knew the client and old-0."""
    client = ch.connect(f"chdb://{tmp_path / 'data'}", database="t_dst_repair")
    ch.migrate(client)
    reg = OwnershipRegistry()
    for ev in [*pod_events("web-0", "shop", CLIENT_IP, T - 3600 * S),
               *pod_events("old-0", "legacy", REUSED_IP, T - 7200 * S)]:
        reg.apply(ev)
    batch = Batch()
    for i, dst in enumerate([LATE_IP] * 3 + [REUSED_IP] * 3 + ["8.8.8.8"]):
        add_record(batch, record(T + i * S, IFACE, CLIENT_IP, seq=i, dst=dst), reg, PREFIX, "cali")
    insert_new_rows(client, "flows", batch.flows, min(batch.flow_ts), max(batch.flow_ts))
    assert seal_edges(client) == [NOON.date()]
    assert destinations(client) == {("unknown", "10.244.2.20"): 3, ("pod", "legacy"): 3, ("external", "8.8.8.8"): 1}
    yield client, reg
    client.close()


def destinations(client: ch.Client) -> dict[tuple[str, str], int]:
    """shop's allowlist (what `flows policy` allows) as {(kind, destination): connections}."""
    rows = client.query("SELECT dst_kind, dst, connections FROM allowlist(since = {s:DateTime64(6, 'UTC')},"
                        " until = {u:DateTime64(6, 'UTC')}) WHERE namespace = 'shop'",
                        parameters={"s": DAY[0], "u": DAY[1]}).result_rows
    return {(kind, dst): n for kind, dst, n in rows}


def edge_names(client: ch.Client) -> dict[str, int]:
    """shop's edges of the day (sealed or not) by destination namespace or address."""
    rows = client.query("SELECT if(dst_namespace = '', replaceOne(toString(dst_ip), '::ffff:', ''), dst_namespace),"
                        " connections FROM edges WHERE src_namespace = 'shop'").result_rows
    return dict(sorted(rows))


def stored(client: ch.Client) -> list[tuple]:
    """(revision, destination namespace, rows) per destination."""
    return sorted(client.query("SELECT revision, dst_namespace, dst_kind, count() FROM flows"
                               " GROUP BY ALL").result_rows)


def learn(repairs: Repairs, reg: OwnershipRegistry, events: list[OwnerEvent]) -> None:
    """What Worker._apply_owner does with each claim read from the owners topic."""
    for ev in events:
        dest = destination_change(reg, ev)
        if reg.apply(ev):
            repairs.learned(ev.valid_from_ns, 0, dest)


def worker_repairs(client: ch.Client, reg: OwnershipRegistry) -> Repairs:
    sink = ClickHouseSink(Settings(), client_factory=lambda _settings: client)
    return Repairs(sink, reg, "cali", 0.0, lambda: ((0,), 1), 1)


async def run_due(repairs: Repairs) -> None:
    """The worker's loop: steps of the pass that learning made due, until it finished."""
    await repairs.step_if_due(0, T + 3600 * S)
    while repairs.current is not None:
        await repairs.step_if_due(0, T + 3600 * S)


@pytest.mark.asyncio
async def test_late_and_stale_destinations_are_corrected_in_flows_edges_and_the_allowlist(store):
    client, reg = store
    repairs = worker_repairs(client, reg)
    new_0 = pod_events("new-0", "api", REUSED_IP, T - 120 * S)
    learn(repairs, reg, [*pod_events("db-0", "db", LATE_IP, T - 60 * S),  # (a)
                         *new_0])  # (b): a later start than old-0's
    assert repairs.dests.since_ns == {LATE_IP: T - 60 * S, REUSED_IP: T - 120 * S}
    await run_due(repairs)
    assert repairs.repaired == 6
    # one row per record, the corrected ones at revision 1, the untouched one as stored
    assert stored(client) == [(0, "", "external", 1), (1, "api", "pod", 3), (1, "db", "pod", 3)]
    assert client.query("SELECT uniqExact(record_id) FROM flows").result_rows == [(7,)]
    want = {("pod", "db"): 3, ("pod", "api"): 3, ("external", "8.8.8.8"): 1}
    # the day's parts changed: unsealed, flows answers; the old destinations left edges, fan-out and policy
    assert client.query("SELECT day FROM unsealed_days").result_rows == [(NOON.date(),)]
    assert destinations(client) == want
    assert edge_names(client) == {"8.8.8.8": 1, "api": 3, "db": 3}
    (fanout,) = client.query("SELECT pod_ns, connections FROM fanout(since = {s:DateTime64(6, 'UTC')},"
                             " until = {u:DateTime64(6, 'UTC')}) WHERE namespace = 'shop'",
                             parameters={"s": DAY[0], "u": DAY[1]}).result_rows
    assert fanout == (2, 7)
    # sealed again: the latest seal alone answers, its older rows naming legacy/unknown do not
    assert seal_edges(client) == [NOON.date()]
    assert client.query("SELECT day FROM unsealed_days").result_rows == []
    assert client.query("SELECT countIf(dst_namespace = 'legacy') FROM edge_seals").result_rows == [(1,)]
    assert destinations(client) == want
    assert edge_names(client) == {"8.8.8.8": 1, "api": 3, "db": 3}

    # A second correction of the same rows: new-0's claim ends (it was held open), and newer-0 takes the
    # address from T + 4 s: the rows at T + 4 s and T + 5 s go to revision 2, the one at T + 3 s stays.
    closed = [replace(ev, valid_to_ns=T + 4 * S, observed_ns=T + 5 * S)
              for ev in new_0 if ev.ip]
    assert destination_change(reg, closed[0]) == (REUSED_IP, T + 4 * S)  # held: from its end on
    learn(repairs, reg, [*closed, *pod_events("newer-0", "api2", REUSED_IP, T + 4 * S)])
    await run_due(repairs)
    assert stored(client) == [(0, "", "external", 1), (1, "api", "pod", 1), (1, "db", "pod", 3),
                              (2, "api2", "pod", 2)]
    seal_edges(client)
    assert destinations(client) == {("pod", "db"): 3, ("pod", "api"): 1, ("pod", "api2"): 2,
                                    ("external", "8.8.8.8"): 1}
    # nothing left to do: `flows reattribute` through the stack, every destination of the range, changes nothing
    assert (await repairs.run(T - 3600 * S, T + 3600 * S))["repaired"] == 0


@pytest.mark.asyncio
async def test_a_service_endpoint_learned_after_the_rows_makes_their_destination_the_service(store):
    """A line to a backend pod stored before its Service's endpoint claim arrived: a pod destination,
    then the Service once the EndpointSlice is known (the endpoint claim names the pod's address)."""
    client, reg = store
    repairs = worker_repairs(client, reg)
    learn(repairs, reg, pod_events("db-0", "db", LATE_IP, T - 600 * S))
    await run_due(repairs)
    assert destinations(client)[("pod", "db")] == 3
    endpoints = make_endpoint_slice("db", "db", [(LATE_IP, "db-0", True)], [("https", 443, "TCP")],
                                    created_ns=T - 60 * S)
    learn(repairs, reg, events_from_object(endpoints, T + 3000 * S))
    assert repairs.dests.since_ns == {LATE_IP: T - 60 * S}
    await run_due(repairs)
    assert destinations(client) == {("service", "db/db"): 3, ("pod", "legacy"): 3, ("external", "8.8.8.8"): 1}
    assert stored(client)[-1] == (2, "db", "service", 3)
    (summary,) = client.query("SELECT records, unattributed, repaired FROM summary").result_rows
    assert summary == (7, 0, 3)


@pytest.mark.asyncio
async def test_a_pass_skips_only_this_workers_rows_of_the_batches_after_the_claims(tmp_path):
    """Rows to LATE_IP, stored ``unknown`` before db-0's claim was known, by: this worker in the batch it
    was building when the claim arrived (7) and in an earlier one (6); another worker in a later batch; a
    row with no mark (stored before sql/011, or a repaired row). All four are repaired. This worker's row of
    batch 8 is not looked at: a worker's rows of a later batch were attributed with the claim (it is stored
    ``unknown`` here only to show that the pass does not read it)."""
    client = ch.connect(f"chdb://{tmp_path / 'data'}", database="t_skip")
    ch.migrate(client)
    try:
        reg = OwnershipRegistry()
        for ev in pod_events("web-0", "shop", CLIENT_IP, T - 3600 * S):
            reg.apply(ev)
        me, other = 0xF00D_0000_0000_0001, 0xBEEF
        marks = [(me, 6), (me, 7), (me, 8), (other, 9), None]
        ids = []
        for i, mark in enumerate(marks):
            batch = Batch()
            add_record(batch, record(T + i * S, IFACE, CLIENT_IP, seq=i, dst=LATE_IP), reg, PREFIX, "cali")
            batch.flow_data.attributed = mark
            ids.append(batch.flow_data.record_id[0])
            insert_new_rows(client, "flows", batch.flow_data, min(batch.flow_ts), max(batch.flow_ts))
        assert client.query("SELECT attributed_by, attributed_batch FROM flows ORDER BY ts").result_rows == \
            [mark or (0, 0) for mark in marks]
        repairs = Repairs(ClickHouseSink(Settings(), client_factory=lambda _settings: client), reg, "cali", 0.0,
                          lambda: ((0,), 1), me)
        for ev in pod_events("db-0", "db", LATE_IP, T - 60 * S):
            dest = destination_change(reg, ev)
            if reg.apply(ev):
                repairs.learned(ev.valid_from_ns, 7, dest)
        await repairs.step_if_due(7, T + 3600 * S)
        run = repairs.current
        while repairs.current is not None:
            await repairs.step_if_due(7, T + 3600 * S)
        assert run is not None and run.done["examined"] == 4 and repairs.repaired == 4
        now = dict(client.query("SELECT record_id, dst_namespace FROM flows").result_rows)
        assert [now[rid] for rid in ids] == ["db", "db", "", "db", "db"]
    finally:
        client.close()


def test_a_close_the_registry_never_held_open_counts_from_the_claims_start():
    reg = OwnershipRegistry()
    (ip_claim,) = [ev for ev in pod_events("gone-0", "x", LATE_IP, T, phase="Succeeded", finished_ns=T + 9 * S)
                   if ev.ip]
    assert ip_claim.valid_to_ns is not None
    assert destination_change(reg, ip_claim) == (LATE_IP, T)
    identity = next(ev for ev in pod_events("gone-0", "x", LATE_IP, T) if not ev.ip)
    assert destination_change(reg, identity) is None  # names no address


def test_flows_reattribute_rechecks_every_destination_of_its_range(store):
    client, reg = store
    for ev in pod_events("db-0", "db", LATE_IP, T - 60 * S):
        reg.apply(ev)  # learned by no worker: only the range the user asked for repairs it
    done = repair.repair(client, reg, "cali", T - 3600 * S, T + 3600 * S)
    assert (done["examined"], done["repaired"], done["superseded_deleted"]) == (7, 3, 3)
    assert destinations(client) == {("pod", "db"): 3, ("pod", "legacy"): 3, ("external", "8.8.8.8"): 1}


def test_a_pass_killed_between_its_insert_and_its_delete_is_finished_by_the_next(store):
    client, reg = store
    for ev in pod_events("db-0", "db", LATE_IP, T - 60 * S):
        reg.apply(ev)
    bounds = repair.range_bounds(T - 3600 * S, T + 3600 * S)
    dests = repair.Dests({LATE_IP: T - 60 * S})
    rows = repair.candidates(client, bounds, (0,), 1, (-1, 0), dests)
    repair.insert_repaired(client, repair.reattribute(rows, reg, "cali"))  # ... and killed here
    assert stored(client) == [(0, "", "external", 1), (0, "", "unknown", 3), (0, "legacy", "pod", 3),
                              (1, "db", "pod", 3)]
    # the old rows are superseded: a pass takes only the current versions, which need nothing
    again = repair.candidates(client, bounds, (0,), 1, (-1, 0), dests)
    assert [r[-1] for r in again] == [1, 1, 1] and repair.reattribute(again, reg, "cali") == []
    run = repair.RepairPass(T - 3600 * S, T + 3600 * S, dests=dests)
    asyncio.run(run.step(repair._here, client, reg, "cali"))  # a pass starts by deleting them
    assert run.done["superseded_deleted"] == 3
    assert stored(client) == [(0, "", "external", 1), (0, "legacy", "pod", 3), (1, "db", "pod", 3)]
    assert destinations(client)[("pod", "db")] == 3


def test_bootstrap_learns_destinations_only_from_recent_claims(tmp_path):
    """At start the whole owners topic is applied again: old claims were repaired with by the worker
    that ran then; scheduling each would classify the whole flows window on every restart."""
    settings = Settings(home=tmp_path / "home")
    worker = Worker(settings, ClickHouseSink(settings))
    now = time.time_ns() // S * S
    old = pod_events("db-0", "db", LATE_IP, now - 86400 * S)
    recent = events_from_object(make_pod("api-0", "api", REUSED_IP, start_ns=now - 86400 * S), now - 60 * S)
    worker._bootstrapping = True
    for ev in [*old, *recent]:
        worker._apply_owner(None, ev)
    assert worker.repairs.dests.since_ns == {REUSED_IP: now - 86400 * S}
    assert (old[0].observed_ns < now - BOOTSTRAP_RECENT_NS, worker.repairs.dests.every_from_ns) == (True, None)
    worker._bootstrapping = False
    worker._apply_owner(None, next(ev for ev in pod_events("db-1", "db", "10.244.4.40", now - 86400 * S) if ev.ip))
    assert set(worker.repairs.dests.since_ns) == {REUSED_IP, "10.244.4.40"}  # running: every claim counts


def test_past_the_address_limit_a_pass_classifies_every_row_from_the_earliest_time():
    dests = repair.Dests()
    for i in range(3):
        dests.add(f"10.0.0.{i}", T + i, max_ips=2)
    assert (dests.since_ns, dests.every_from_ns) == ({}, T)
    dests.add("10.0.0.9", T - 5, max_ips=2)
    assert dests.every_from_ns == T - 5


def test_ipv6_sources_and_destinations_are_repaired_by_the_address_the_registry_knows(tmp_path):
    """Stored IPv6 addresses come back from ClickHouse as text and must name the registry's keys again:
    a source stored unattributed and a destination stored ``unknown`` both get their pods."""
    client = ch.connect(f"chdb://{tmp_path / 'data'}", database="t_dst_repair6")
    ch.migrate(client)
    src6, dst6 = "fd00:10:244:1::a", "fd00:10:244:2::14"
    reg = OwnershipRegistry()
    batch = Batch()
    for i in range(3):
        message = (f"{PREFIX}: IN={IFACE} OUT=eth0 SRC={src6} DST={dst6} LEN=80 TC=0 HOPLIMIT=64 FLOWLBL=1 PROTO=TCP "
                   f"SPT={40000 + i} DPT=443 WINDOW=64800 RES=0x00 SYN URGP=0 ")
        add_record(batch, replace(record(T + i * S, IFACE, src6, seq=i), message=message), reg, PREFIX, "cali")
    insert_new_rows(client, "flows", batch.flows, min(batch.flow_ts), max(batch.flow_ts))
    assert stored(client) == [(0, "", "unknown", 3)]
    for ev in [*pod_events("web-0", "shop", src6, T - 3600 * S), *pod_events("db-0", "db", dst6, T - 60 * S)]:
        reg.apply(ev)
    done = repair.repair(client, reg, "cali", T - 3600 * S, T + 3600 * S)
    assert (done["examined"], done["repaired"]) == (3, 3)
    rows = client.query("SELECT src_namespace, src_pod, dst_namespace, dst_pod, toString(src_ip), toString(dst_ip)"
                        " FROM flows").result_rows
    assert rows == [("shop", "web-0", "db", "db-0", src6, dst6)] * 3
    client.close()
