"""`edges` keeps long-term history exactly (sql/004_edges.sql and 009, pipeline/store/edge_seals.py).

flows answers a day while it holds it; a sealed snapshot answers after. Nothing is summed across
writes or deleted, so replays after expiry, repeated seals, a crash at any point and concurrent
sealers leave the counts exact.

These run on chDB (ClickHouse as chDB embeds it: see test_chdb_version_this_stands_for). The same
statements run on a ClickHouse server; nothing relies on what differs between the two: seals are
inserted with insert_deduplicate = 0 (ClickHouse 25.8 deduplicates a repeated INSERT ... SELECT,
chDB does not), readers use argMax rather than merges or FINAL, and "has flows changed" comes
from system.parts, which both have.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import threading
from collections.abc import Iterator
from datetime import UTC
from typing import Any

import chdb
import pytest

from pipeline.store import clickhouse as ch
from pipeline.store.edge_seals import seal_days, seal_edges
from tests.system.test_sql import ALL_TIME, T, fanout, flow, fresh, insert_flows, insert_like_worker


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ch.Client]:
    c = ch.connect(f"chdb://{tmp_path_factory.mktemp('chdb') / 'data'}", database="e_setup")
    yield c
    c.close()


NOON = dt.datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
OLD = NOON - dt.timedelta(days=40)  # outside the default 30-day flows window
RECENT = NOON - dt.timedelta(days=2)  # inside it


def three_destinations(day: dt.datetime, first_id: int) -> list[list[Any]]:
    return [flow(day + dt.timedelta(minutes=i), first_id + i, dst_ip=f"140.82.112.{i + 1}") for i in range(3)]


def shop(client: ch.Client) -> tuple[int, int]:
    """(external destinations, connections) of namespace shop over all time."""
    rows = {r[0]: (r[4], r[7]) for r in fanout(client, *ALL_TIME)}
    return rows.get("shop", (0, 0))


def expire(client: ch.Client, day: dt.datetime) -> None:
    """What flows' TTL does to a day (ttl_only_drop_parts: whole parts go)."""
    client.command(f"ALTER TABLE flows DROP PARTITION {int(day.strftime('%Y%m%d'))}")


def edges(client: ch.Client) -> list[tuple]:
    return sorted(client.query("SELECT * FROM edges").result_rows)


def unsealed(client: ch.Client) -> list[dt.date]:
    return [r[0] for r in client.query("SELECT day FROM unsealed_days ORDER BY day").result_rows]


def test_chdb_version_this_stands_for() -> None:
    """Names the engine these tests ran on, for the record (printed with -s)."""
    print("chDB", chdb.__version__, "ClickHouse", chdb.query("SELECT version()", "CSV").bytes().decode().strip())


def test_a_day_past_flows_ttl_keeps_its_destinations_when_records_come_back(client: ch.Client) -> None:
    """Before: a replay after expiry made the rebuild read one row of the day (3 became 1)."""
    fresh(client)
    rows = three_destinations(OLD, 1)
    assert insert_like_worker(client, rows) == (3, 0)
    assert shop(client) == (3, 3)  # a backfilled old day answers from flows before any seal
    assert OLD.date() in seal_edges(client)
    expire(client, OLD)
    assert shop(client) == (3, 3)
    # the worker restarts and its uncommitted batch comes back: flows no longer holds the record
    assert insert_like_worker(client, rows[:1]) == (1, 0)
    assert shop(client) == (3, 3)  # not 1 destination, not 4 connections
    seal_edges(client)
    expire(client, OLD)
    assert shop(client) == (3, 3)


def test_sealing_an_unchanged_day_again_changes_nothing(client: ch.Client) -> None:
    """Before: on ClickHouse 25.8 a second rebuild was deduplicated after its DELETE: day empty."""
    fresh(client)
    insert_flows(client, [*three_destinations(OLD, 1), *three_destinations(RECENT, 10)])
    from_flows = edges(client)
    seal_edges(client)
    assert unsealed(client) == []  # both days now answer from their seals
    assert edges(client) == from_flows
    for _ in range(2):
        seal_days(client, [OLD.date(), RECENT.date()])
        assert edges(client) == from_flows
    expire(client, OLD)
    seal_days(client, [OLD.date()])  # flows holds nothing of the day any more
    assert edges(client) == from_flows
    assert shop(client) == (3, 6)


class KilledBeforeRecording:
    """A client whose process dies after the seal rows went in, before the seal was recorded."""

    def __init__(self, inner: ch.Client) -> None:
        self.inner = inner

    def query(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.query(*args, **kwargs)

    def command(self, sql: str, *args: Any, **kwargs: Any) -> Any:
        if "edge_sealed_days" in sql:
            raise RuntimeError("killed")
        return self.inner.command(sql, *args, **kwargs)


def test_rows_without_a_seal_count_at_once_and_the_next_pass_seals_them(client: ch.Client) -> None:
    """A kill after the flows insert (no edges part exists to lose) or inside a seal: no delete window."""
    fresh(client)
    insert_flows(client, three_destinations(OLD, 1))
    seal_edges(client)
    # a worker killed right after its flows insert: nothing else was written
    insert_flows(client, [flow(OLD + dt.timedelta(hours=1), 4, dst_ip="140.82.112.9"), *three_destinations(RECENT, 10)])
    assert unsealed(client) == [OLD.date(), RECENT.date()]
    assert shop(client) == (4, 7)
    with pytest.raises(RuntimeError, match="killed"):
        seal_edges(KilledBeforeRecording(client))  # type: ignore[arg-type]
    assert unsealed(client) == [OLD.date(), RECENT.date()]
    assert shop(client) == (4, 7)
    # the restarted worker's first passes: bounded, oldest (closest to leaving flows) first
    assert seal_edges(client, max_days=1) == [OLD.date()]
    assert unsealed(client) == [RECENT.date()]
    assert seal_edges(client, max_days=1) == [RECENT.date()]
    assert unsealed(client) == []
    expire(client, OLD)
    assert shop(client) == (4, 7)


def test_concurrent_sealers_and_writers_never_double_count(client: ch.Client) -> None:
    """Two sealers (own sessions) race a writer whose batches overlap (replays): exact counts.

    Before: an insert between a rebuild's DELETE and INSERT was counted twice. chDB allows one
    process per data directory, so the sessions are threads of this process: the closest to
    several workers on one server that runs here.
    """
    db = fresh(client)
    done = threading.Event()
    errors: list[Exception] = []

    def session() -> ch.Client:
        return ch.connect(client.uri, database=db)

    def sealer() -> None:
        own = session()
        try:
            while not done.is_set():
                seal_edges(own)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    rows = [flow(day + dt.timedelta(minutes=i), 1000 * n + i, dst_ip=f"140.82.113.{i % 4 + 1}")
            for n, day in enumerate((OLD, RECENT)) for i in range(60)]
    threads = [threading.Thread(target=sealer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        writer = session()
        for lo in range(0, len(rows), 6):
            insert_like_worker(writer, rows[max(0, lo - 2):lo + 6])  # each batch replays two rows
    finally:
        done.set()
        for t in threads:
            t.join()
    assert errors == []
    assert shop(client) == (4, 120)
    seal_edges(client)
    expire(client, OLD)
    assert shop(client) == (4, 120)
    per_day = client.query("SELECT day, sum(connections), uniqExact(dst_ip) FROM edges GROUP BY day ORDER BY day")
    assert per_day.result_rows == [(OLD.date(), 60, 4), (RECENT.date(), 60, 4)]


def test_migrate_turns_a_summed_edges_table_into_the_oldest_seal(client: ch.Client) -> None:
    """An install from before keeps its history: the summed table becomes version 0 of its days."""
    fresh(client)
    client.command("DROP VIEW edges")
    client.command(
        "CREATE TABLE edges (day Date, src_namespace LowCardinality(String), src_workload_kind LowCardinality(String),"
        " src_workload String, dst_kind LowCardinality(String), dst_namespace LowCardinality(String),"
        " dst_workload_kind LowCardinality(String), dst_name String, dst_ip IPv6, proto LowCardinality(String),"
        " dst_port UInt16, first_seen SimpleAggregateFunction(min, DateTime64(6, 'UTC')),"
        " last_seen SimpleAggregateFunction(max, DateTime64(6, 'UTC')),"
        " connections SimpleAggregateFunction(sum, UInt64),"
        " nodes SimpleAggregateFunction(groupUniqArrayArray, Array(String)))"
        " ENGINE = AggregatingMergeTree ORDER BY (src_namespace, day, dst_kind, dst_namespace, dst_name, dst_ip, proto,"
        " dst_port, src_workload_kind, src_workload, dst_workload_kind)")
    legacy = ("INSERT INTO edges VALUES ({d:Date}, 'shop', 'Deployment', 'web', 'external', '', '', '',"
              " toIPv6({ip:String}), 'TCP', 443, {t:DateTime64(6, 'UTC')}, {t:DateTime64(6, 'UTC')}, 2, ['node-1'])")
    for ip in ("140.82.112.1", "140.82.112.2", "140.82.112.1"):  # unmerged parts of one edge sum up
        client.command(legacy, parameters={"d": OLD.date(), "ip": ip, "t": OLD})
    ch.migrate(client)
    kinds = dict(client.query("SELECT name, engine FROM system.tables WHERE database = currentDatabase()"
                              " AND name IN ('edges', 'edges_summed', 'edges_mv', 'edge_seals')").result_rows)
    assert kinds == {"edges": "View", "edge_seals": "ReplacingMergeTree"}
    assert shop(client) == (2, 6)
    assert ch.migrate(client) == []
    assert shop(client) == (2, 6)


SHIPPED = {"004_edges.sql": ("edges_from_flows", "edges_sealed", "edges"), "005_views.sql": ("destinations",)}
_SHIPPED_NAME = re.compile(r"\b(edges_from_flows|edges_sealed|edges|destinations)\b")


def create_shipped_views(client: ch.Client) -> None:
    """004's edges and 005's destinations exactly as shipped, under ``*_shipped`` names: the answers
    sql/009_fast_edges.sql must give (it only changes how they are read)."""
    for name, views in SHIPPED.items():
        for statement in ch._statements((ch.sql_dir() / name).read_text(encoding="utf-8")):
            if any(f"CREATE OR REPLACE VIEW {view} AS" in statement for view in views):
                client.command(_SHIPPED_NAME.sub(r"\1_shipped", statement))


def assert_answers_as_shipped(client: ch.Client) -> None:
    """edges, and destinations over ranges with whole and partial days, equal the shipped rule's."""
    assert edges(client) == sorted(client.query("SELECT * FROM edges_shipped").result_rows)
    noon = NOON.replace(tzinfo=None)
    ranges = [(dt.datetime(1970, 1, 1), noon + dt.timedelta(days=1)), (OLD.replace(tzinfo=None), noon),
              (RECENT.replace(tzinfo=None) - dt.timedelta(hours=13), noon - dt.timedelta(hours=1)),
              (RECENT.replace(tzinfo=None).replace(hour=0), noon.replace(hour=0)),
              (noon, RECENT.replace(tzinfo=None))]  # since after until: nothing
    for since, until in ranges:
        got, want = (client.query(f"SELECT * FROM {view}(since = {{s:{T}}}, until = {{u:{T}}}) ORDER BY ALL",
                                  parameters={"s": since, "u": until}).result_rows
                     for view in ("destinations", "destinations_shipped"))
        assert got == want, (since, until)


def test_edges_and_destinations_answer_as_the_shipped_rule_in_every_state(client: ch.Client) -> None:
    """009/010 read sealed days without regrouping them and unsealed ones as 004 did: same rows, whether a
    day is in flows only, sealed, changed after its seal, expired or repaired; a day shrunk inside the
    window is the one state 010 answers differently (flows alone)."""
    fresh(client)
    create_shipped_views(client)
    today = NOON.replace(hour=1)
    insert_flows(client, [*three_destinations(OLD, 1), *three_destinations(RECENT, 10),
                          *three_destinations(today, 20), flow(RECENT, 30, host="node-2", dst_port=None, proto="ICMP")])
    assert_answers_as_shipped(client)  # flows only
    seal_edges(client)
    assert unsealed(client) == []
    assert_answers_as_shipped(client)  # every day from its seal
    # new rows and a replay in sealed days: both days unsealed, their seals and flows combined
    insert_flows(client, [flow(OLD + dt.timedelta(hours=2), 40, host="node-3"), flow(RECENT, 10),
                          flow(RECENT + dt.timedelta(hours=3), 41, dst_ip="140.82.112.1", host="node-3")])
    assert unsealed(client) == [OLD.date(), RECENT.date()]
    assert_answers_as_shipped(client)
    seal_edges(client)
    expire(client, OLD)  # past the window: the seal, then a record shipped again after its row expired
    insert_flows(client, [flow(OLD + dt.timedelta(minutes=1), 2, dst_ip="140.82.112.2")])
    assert_answers_as_shipped(client)
    # attribution repair in a recent day: the unattributed original, then its attributed twin
    original = flow(RECENT + dt.timedelta(hours=5), 50, ns_="", dst_ip="140.82.112.7")
    insert_flows(client, [original])
    assert_answers_as_shipped(client)
    repaired = flow(RECENT + dt.timedelta(hours=5), 50, dst_ip="140.82.112.7")
    ch.insert_columns(client, "flows", (*ch.FLOW_COLUMNS, "revision"),
                      [list(col) for col in zip([*repaired, 1], strict=True)])
    assert_answers_as_shipped(client)
    # a sealed day inside the window that flows now holds less of: flows alone answers (sql/010: there a
    # seal row of an edge flows no longer holds is a corrected row's old destination, and flows' TTL
    # never takes part of such a day), where the shipped rule kept the seal's other edges
    seal_edges(client)
    expire(client, RECENT)
    insert_flows(client, [flow(RECENT + dt.timedelta(minutes=1), 11, dst_ip="140.82.112.2")])
    assert unsealed(client) == [RECENT.date()]
    shipped = sorted(client.query("SELECT * FROM edges_shipped").result_rows)
    assert [r for r in edges(client) if r[0] != RECENT.date()] == [r for r in shipped if r[0] != RECENT.date()]
    assert [(str(r[8]), r[13]) for r in edges(client) if r[0] == RECENT.date()] == [("::ffff:8c52:7002", 1)]


def test_every_branch_of_edges_sees_one_list_of_unsealed_days(client: ch.Client) -> None:
    """009 splits days between its branches with the same scalar subquery in each; the engine evaluates
    identical scalar subqueries once per query, so a seal landing mid-query cannot put a day in both
    branches or in neither. This is the engine property that relies on (a random value shows it)."""
    fresh(client)
    once = "(SELECT groupArray(rand64()) FROM numbers(3))"
    rows = client.query(f"SELECT {once} AS a UNION ALL SELECT {once} AS a").result_rows
    assert len(rows) == 2 and rows[0] == rows[1]


def test_a_day_past_the_window_is_never_sealed_smaller_from_partially_expired_flows(client: ch.Client) -> None:
    """flows' TTL drops whole parts: a day older than the window may keep only some of its rows. Its
    answer (and so its next seal) is the larger count per edge of its latest seal and what flows holds."""
    fresh(client)
    insert_flows(client, three_destinations(OLD, 1))
    insert_flows(client, [flow(OLD + dt.timedelta(hours=1), 4, dst_ip="140.82.112.1")])  # a second part
    seal_edges(client)
    sealed = edges(client)
    assert shop(client) == (3, 4)
    (first_part,) = client.query("SELECT min(name) FROM system.parts WHERE database = currentDatabase()"
                                 " AND table = 'flows' AND active").result_rows[0]
    client.command(f"ALTER TABLE flows DROP PART '{first_part}'")  # TTL took the older part only
    assert unsealed(client) == [OLD.date()]
    assert edges(client) == sealed
    assert seal_edges(client) == [OLD.date()]  # sealed again from the partial day: nothing lost
    assert unsealed(client) == []
    assert edges(client) == sealed and shop(client) == (3, 4)


def test_a_corrected_destination_leaves_edges_and_a_seal_that_never_completed_does_not_count(
        client: ch.Client) -> None:
    """sql/010: repair moved a record to another destination (revision 1, the original deleted). The
    old edge is in the day's earlier seal only: it no longer counts, sealed again or not."""
    fresh(client)
    insert_flows(client, [flow(RECENT, 1, dst_ip="140.82.112.1"), flow(RECENT, 2, dst_ip="140.82.112.2")])
    seal_edges(client)
    corrected = flow(RECENT, 1, dst_ip="140.82.112.3")
    ch.insert_columns(client, "flows", (*ch.FLOW_COLUMNS, "revision"),
                      [list(col) for col in zip([*corrected, 1], strict=True)])
    client.command("DELETE FROM flows WHERE record_id = 1 AND revision = 0")
    want = [(ipaddress.ip_address("::ffff:140.82.112.2"), 1), (ipaddress.ip_address("::ffff:140.82.112.3"), 1)]

    def answer() -> list[tuple[Any, int]]:
        return sorted((r[8], r[13]) for r in edges(client))

    assert unsealed(client) == [RECENT.date()] and answer() == want
    with pytest.raises(RuntimeError, match="killed"):
        seal_edges(KilledBeforeRecording(client))  # type: ignore[arg-type]
    assert unsealed(client) == [RECENT.date()] and answer() == want
    seal_edges(client)
    assert unsealed(client) == [] and answer() == want
    # a later seal of the unchanged day killed before it was recorded: the same rows, the same answer
    with pytest.raises(RuntimeError, match="killed"):
        seal_days(KilledBeforeRecording(client), [RECENT.date()])  # type: ignore[arg-type]
    client.command("OPTIMIZE TABLE edge_seals FINAL")
    assert unsealed(client) == [] and answer() == want
    assert shop(client) == (2, 2)
