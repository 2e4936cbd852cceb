"""The SQL contract (sql/*.sql) and pipeline.store.clickhouse, against chDB in a temporary directory.

chDB opens one data directory per process, so the module shares one client and gives each
test that needs a clean slate its own database.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.store import clickhouse as ch
from pipeline.store.edge_seals import seal_edges

UTC = dt.UTC
T = "DateTime64(6, 'UTC')"
_db_counter = itertools.count()


def at(day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0) -> dt.datetime:
    """A UTC moment in November 2026 (the test data lives on the 23rd..25th)."""
    return dt.datetime(2026, 11, day, hour, minute, second, micro, tzinfo=UTC)


def naive(moment: dt.datetime) -> dt.datetime:
    """As the driver returns DateTime64('UTC') values: naive UTC."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def ns(moment: dt.datetime) -> int:
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ch.Client]:
    c = ch.connect(f"chdb://{tmp_path_factory.mktemp('chdb') / 'data'}", database="t_setup")
    yield c
    c.close()


def fresh(client: ch.Client, **migrate_kwargs: Any) -> str:
    """Switch the shared client to a new, migrated database."""
    client.database = f"t_{next(_db_counter)}"
    assert ch.migrate(client, **migrate_kwargs)
    return client.database


def flow(
    ts: dt.datetime,
    rid: int,
    *,
    ns_: str = "shop",
    dst_kind: str = "external",
    dst_ip: str = "93.184.216.34",
    dst_port: int | None = 443,
    proto: str = "TCP",
    direction: str = "egress",
    dst_namespace: str = "",
    dst_name: str = "",
    host: str = "node-1",
    workload: str = "web",
) -> list[Any]:
    row: dict[str, Any] = {
        "ts": ts,
        "record_id": rid,
        "host": host,
        "source": "journal",
        "direction": direction,
        "in_iface": "cali527b0801ecb" if direction == "egress" else "eth0",
        "out_iface": "eth0" if direction == "egress" else "cali527b0801ecb",
        "family": 6 if ":" in dst_ip else 4,
        "proto": proto,
        "src_ip": "10.244.1.5",
        "src_port": None if dst_port is None else 40000,
        "dst_ip": dst_ip,
        "dst_port": dst_port,
        "length": 60,
        "src_kind": "pod" if ns_ else "unknown",
        "src_namespace": ns_,
        "src_workload_kind": "Deployment" if ns_ else "",
        "src_workload": workload if ns_ else "",
        "src_pod": f"{workload}-abc" if ns_ else "",
        "src_match": "ip+iface" if ns_ else "none",
        "dst_kind": dst_kind,
        "dst_namespace": dst_namespace,
        "dst_workload_kind": "StatefulSet" if dst_kind == "pod" else "",
        "dst_name": dst_name,
        "dst_pod": f"{dst_name}-0" if dst_kind == "pod" else "",
    }
    return [row[c] for c in ch.FLOW_COLUMNS]


def insert_flows(client: ch.Client, rows: list[list[Any]]) -> None:
    ch.insert_columns(client, "flows", ch.FLOW_COLUMNS, [list(col) for col in zip(*rows, strict=True)])


def as_columns(rows: list[list[Any]], order: tuple[str, ...] = ch.FLOW_COLUMNS) -> dict[str, list]:
    """Rows (lists in ``order``) as the column dict enrich.Batch holds."""
    return {name: list(values) for name, values in zip(order, zip(*rows, strict=True), strict=True)}


def span(rows: list[list[Any]]) -> tuple[int, int]:
    """(lo_ns, hi_ns) of the rows' ts, as the worker passes its batch's."""
    ts = [r[0] if isinstance(r[0], int) else ns(r[0]) // 1000 for r in rows]  # ts is the first column
    return min(ts) * 1000, max(ts) * 1000


def insert_like_worker(client: ch.Client, rows: list[list[Any]], table: str = "flows") -> tuple[int, int]:
    """insert_new_rows, as the worker calls it: (inserted, replayed)."""
    order = ch.FLOW_COLUMNS if table == "flows" else ch.REJECT_COLUMNS
    return ch.insert_new_rows(client, table, as_columns(rows, order), *span(rows))


# Shop talks to every kind of destination over three days; `billing` a little; ingress and
# unattributed rows must never show up.
BASE_ROWS: list[list[Any]] = [
    # pods in namespace db (two workloads), and a pod in shop itself
    flow(
        at(23, 8),
        1,
        dst_kind="pod",
        dst_ip="10.244.2.9",
        dst_port=5432,
        dst_namespace="db",
        dst_name="postgres",
    ),
    flow(
        at(24, 9),
        2,
        dst_kind="pod",
        dst_ip="10.244.2.10",
        dst_port=5432,
        dst_namespace="db",
        dst_name="postgres",
        host="node-2",
    ),
    flow(
        at(24, 12),
        3,
        dst_kind="pod",
        dst_ip="10.244.2.11",
        dst_port=6379,
        dst_namespace="db",
        dst_name="redis",
    ),
    flow(
        at(25, 7),
        4,
        dst_kind="pod",
        dst_ip="10.244.1.6",
        dst_port=8080,
        dst_namespace="shop",
        dst_name="cart",
    ),
    # service
    flow(
        at(23, 13),
        5,
        dst_kind="service",
        dst_ip="10.96.0.10",
        dst_port=53,
        proto="UDP",
        dst_namespace="kube-system",
        dst_name="kube-dns",
    ),
    flow(
        at(25, 20),
        6,
        dst_kind="service",
        dst_ip="10.96.0.10",
        dst_port=53,
        proto="UDP",
        dst_namespace="kube-system",
        dst_name="kube-dns",
        host="node-3",
    ),
    # node
    flow(at(24, 15), 7, dst_kind="node", dst_ip="192.168.0.12", dst_port=10250, dst_name="node-2"),
    # external: IPv4, IPv6, ICMP without a port
    flow(at(23, 23, 59, 59, 999999), 8, dst_ip="93.184.216.34"),
    flow(at(24, 0), 9, dst_ip="93.184.216.34"),
    flow(at(24, 16, 30), 10, dst_ip="2606:2800:220:1:248:1893:25c8:1946"),
    flow(at(25, 11, 15), 11, dst_ip="8.8.8.8", dst_port=None, proto="ICMP"),
    # unknown
    flow(at(24, 18), 12, dst_kind="unknown", dst_ip="10.99.0.5", dst_port=8080),
    # another namespace
    flow(at(24, 10), 13, ns_="billing", dst_ip="1.1.1.1"),
    flow(
        at(25, 10),
        14,
        ns_="billing",
        dst_kind="service",
        dst_ip="10.96.0.10",
        dst_port=53,
        proto="UDP",
        dst_namespace="kube-system",
        dst_name="kube-dns",
    ),
    # excluded: ingress, and egress whose source could not be attributed
    flow(at(24, 11), 15, direction="ingress", dst_ip="10.244.1.5"),
    flow(at(24, 11), 16, ns_="", dst_ip="203.0.113.9"),
]

ALL_TIME = (dt.datetime(1970, 1, 1, tzinfo=UTC), dt.datetime(2100, 1, 1, tzinfo=UTC))
RANGES: list[tuple[dt.datetime, dt.datetime]] = [
    ALL_TIME,
    (at(23, 12), at(25, 12)),  # mid-day both ends
    (at(24), at(25)),  # exact midnights: one whole day
    (at(23), at(26)),  # exact midnights: three whole days
    (at(24, 9), at(24, 17)),  # same-day range
    (at(24), at(24, 12)),  # same day from midnight; until excluded (row 3 at 12:00)
    (at(24, 12), at(25)),  # mid-day to midnight; since included (row 3)
    (at(23, 23, 59, 59, 999999), at(24, 0, 0, 0, 1)),  # across midnight by a microsecond
    (at(24, 0, 0, 0, 1), at(25, 11, 15)),  # just after midnight to just before a row
    (at(24, 12), at(24, 12)),  # empty
]

DEST_COLS = (
    "namespace, dst_kind, dst, dst_namespace, dst_name, dst_ip, proto, port, "
    "first_seen, last_seen, connections, nodes"
)


def destinations(client: ch.Client, since: dt.datetime, until: dt.datetime) -> list[tuple]:
    return sorted(
        client.query(
            f"SELECT {DEST_COLS} FROM destinations(since = {{s:{T}}}, until = {{u:{T}}})",
            parameters={"s": since, "u": until},
        ).result_rows
    )


def brute_force(client: ch.Client, since: dt.datetime, until: dt.datetime) -> list[tuple]:
    """Destinations straight from flows (only valid while flows still holds every row)."""
    return sorted(
        client.query(
            f"""
        SELECT src_namespace, dst_kind,
               multiIf(dst_kind = 'pod', dst_namespace,
                       dst_kind = 'service', dst_namespace || '/' || dst_name,
                       dst_kind = 'node', dst_name,
                       IPv6CIDRToRange(ip, 96).1 = toIPv6('::ffff:0.0.0.0')
                           ? IPv4NumToString(toUInt32(bitAnd(toUInt128(ip), 0xffffffff)))
                           : toString(ip)) AS dst,
               dst_namespace, dst_name,
               if(dst_kind IN ('external', 'unknown'), dst_ip, toIPv6('::')) AS ip,
               proto, dst_port AS port, min(ts), max(ts), uniqExact(record_id),
               arraySort(groupUniqArray(toString(host)))
        FROM flows
        WHERE ts >= {{s:{T}}} AND ts < {{u:{T}}} AND direction = 'egress' AND src_namespace != ''
        GROUP BY src_namespace, dst_kind, dst_namespace, dst_name, ip, proto, port
        """,
            parameters={"s": since, "u": until},
        ).result_rows
    )


def fanout(client: ch.Client, since: dt.datetime, until: dt.datetime) -> list[tuple]:
    return client.query(
        f"SELECT * FROM fanout(since = {{s:{T}}}, until = {{u:{T}}})",
        parameters={"s": since, "u": until},
    ).result_rows


@pytest.fixture(scope="module")
def loaded(client: ch.Client) -> str:
    """A database holding BASE_ROWS, delivered with every kind of duplicate."""
    db = fresh(client)
    insert_flows(client, BASE_ROWS)
    insert_flows(client, BASE_ROWS)  # a retried batch: identical block, skipped
    # a replayed overlapping batch goes through the worker's filter: only row 17 is new
    extra = flow(at(25, 21), 17, dst_ip="93.184.216.34", host="node-2")
    assert insert_like_worker(client, [*BASE_ROWS[5:9], extra]) == (1, 4)
    # the same record twice inside one block (upstream duplicate)
    dup = flow(at(25, 22), 18, dst_ip="2606:2800:220:1:248:1893:25c8:1946")
    insert_flows(
        client,
        [
            dup,
            dup,
            flow(at(23, 9), 19, dst_kind="node", dst_ip="192.168.0.12", dst_port=10250, dst_name="node-2"),
        ],
    )
    return db


def use(client: ch.Client, db: str) -> ch.Client:
    client.database = db
    return client


# -- migrations --------------------------------------------------------------------------


def schema(client: ch.Client) -> list[tuple]:
    return client.query(
        "SELECT name, create_table_query FROM system.tables WHERE database = currentDatabase() ORDER BY name"
    ).result_rows


def test_migrate_is_idempotent(client: ch.Client) -> None:
    fresh(client)
    before = schema(client)
    assert {n for n, _ in before} >= {
        "flows",
        "rejects",
        "ownership",
        "edges",
        "edge_seals",
        "destinations",
        "fanout",
        "owner_at",
        "flows_dedup",
        "summary",
        "schema_migrations",
    }
    assert ch.migrate(client) == []
    assert schema(client) == before
    recorded = client.query("SELECT name, sha256 FROM schema_migrations ORDER BY name").result_rows
    assert [n for n, _ in recorded] == sorted(p.name for p in ch.sql_dir().glob("*.sql"))


def ttl_of(client: ch.Client, table: str) -> str:
    return client.query(
        "SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = {t:String}",
        parameters={"t": table},
    ).result_rows[0][0]


def test_ttl_change_applied_once(client: ch.Client) -> None:
    fresh(client)
    assert "TTL ingested_at + toIntervalDay(30)" in ttl_of(client, "flows")
    assert ch.migrate(client, ttl_days=7) == ["flows TTL 7d", "rejects TTL 7d"]
    assert ch.migrate(client, ttl_days=7) == []
    assert "TTL ingested_at + toIntervalDay(7)" in ttl_of(client, "flows")
    assert "TTL ingested_at + toIntervalDay(7)" in ttl_of(client, "rejects")
    assert ch.migrate(client) == ["flows TTL 30d", "rejects TTL 30d"]


@pytest.mark.parametrize("bad", [0, 3651, -1, "7; DROP TABLE flows", 7.0, True])
def test_ttl_days_validated(client: ch.Client, bad: Any) -> None:
    with pytest.raises(ValueError):
        ch.migrate(client, ttl_days=bad)


def test_new_database_created_and_fresh_db_migrates_in_one_go(client: ch.Client) -> None:
    client.database = "t_brand_new"
    applied = ch.migrate(client)
    assert applied == sorted(p.name for p in ch.sql_dir().glob("*.sql"))


@pytest.mark.parametrize(
    ("table", "columns"),
    [("flows", ch.FLOW_COLUMNS), ("rejects", ch.REJECT_COLUMNS), ("ownership", ch.OWNERSHIP_COLUMNS),
     ("endpoint_claims", ch.ENDPOINT_COLUMNS)],
)
def test_python_columns_match_sql(
    client: ch.Client, loaded: str, table: str, columns: tuple[str, ...]
) -> None:
    use(client, loaded)
    rows = client.query(
        "SELECT name, default_kind, type FROM system.columns"
        " WHERE database = currentDatabase() AND table = {t:String} ORDER BY position",
        parameters={"t": table},
    ).result_rows
    assert tuple(name for name, kind, _ in rows if kind == "") == columns
    defaults = {"ownership": [], "endpoint_claims": [], "rejects": ["ingested_at"],
                "flows": ["ingested_at", "revision", "attributed_by", "attributed_batch"]}
    assert [name for name, kind, _ in rows if kind != ""] == defaults[table]
    # every Arrow block is typed from COLUMN_TYPES
    assert {name: type_ for name, kind, type_ in rows if kind == ""} == {c: ch.COLUMN_TYPES[c] for c in columns}
    if table == "flows":
        assert dict((name, type_) for name, _, type_ in rows)["revision"] == ch.COLUMN_TYPES["revision"]


def test_column_types_cover_exactly_the_insert_columns() -> None:
    assert set(ch.COLUMN_TYPES) == {*ch.FLOW_COLUMNS, *ch.REJECT_COLUMNS, *ch.OWNERSHIP_COLUMNS, *ch.ENDPOINT_COLUMNS,
                                    "revision"}


def test_statement_splitter() -> None:
    text = (
        "-- a comment;\nCREATE TABLE a (x String DEFAULT 'a;') -- trailing;\nENGINE = Memory;  -- done\n"
        "SELECT '--;' ;\n\n-- only a comment\n"
    )
    assert ch._statements(text) == [
        "-- a comment;\nCREATE TABLE a (x String DEFAULT 'a;') -- trailing;\nENGINE = Memory",
        "SELECT '--;'",
    ]


# -- fan-out -----------------------------------------------------------------------------


def test_all_time_fanout_exact(client: ch.Client, loaded: str) -> None:
    use(client, loaded)
    rows = {r[0]: r for r in fanout(client, *ALL_TIME)}
    assert list(rows) == ["shop", "billing"]  # ordered by dests desc
    # shop: pod_ns {db, shop}; svc {kube-system/kube-dns}; external {93.184.216.34, 2606:…, 8.8.8.8}
    _, dests, pod_ns, svc, external, node, unknown, conns, first, last = rows["shop"]
    assert (dests, pod_ns, svc, external, node, unknown) == (6, 2, 1, 3, 1, 1)
    # rows 1-12 once each + row 17 + row 18 once (duplicate in its block) + row 19
    assert conns == 15
    assert (naive(first), naive(last)) == (naive(at(23, 8)), naive(at(25, 22)))
    assert rows["billing"][1:8] == (2, 0, 1, 1, 0, 0, 2)


def test_destinations_rows(client: ch.Client, loaded: str) -> None:
    use(client, loaded)
    rows = destinations(client, *ALL_TIME)
    by_dst = {(r[0], r[1], r[2], r[6], r[7]): r for r in rows}
    assert ("shop", "external", "93.184.216.34", "TCP", 443) in by_dst  # IPv4 shown dotted
    assert ("shop", "external", "2606:2800:220:1:248:1893:25c8:1946", "TCP", 443) in by_dst
    assert ("shop", "external", "8.8.8.8", "ICMP", None) in by_dst  # no port: NULL
    assert ("shop", "service", "kube-system/kube-dns", "UDP", 53) in by_dst
    assert ("shop", "node", "node-2", "TCP", 10250) in by_dst
    assert ("shop", "unknown", "10.99.0.5", "TCP", 8080) in by_dst
    postgres = by_dst[("shop", "pod", "db", "TCP", 5432)]
    assert postgres[4] == "postgres" and str(postgres[5]) == "::"  # two pod IPs, one destination
    assert postgres[10] == 2 and postgres[11] == ["node-1", "node-2"]
    kube_dns = by_dst[("shop", "service", "kube-system/kube-dns", "UDP", 53)]
    assert kube_dns[10] == 2 and kube_dns[11] == ["node-1", "node-3"]
    example = by_dst[("shop", "external", "93.184.216.34", "TCP", 443)]
    assert example[10] == 3 and example[11] == ["node-1", "node-2"]
    v6 = by_dst[("shop", "external", "2606:2800:220:1:248:1893:25c8:1946", "TCP", 443)]
    assert v6[10] == 2  # row 10 + row 18 (inserted twice in one block)
    excluded = {"10.244.1.5", "203.0.113.9"}
    assert not [r for r in rows if r[2] in excluded or r[0] == ""]


@pytest.mark.parametrize(("since", "until"), RANGES)
def test_destinations_match_brute_force(
    client: ch.Client, loaded: str, since: dt.datetime, until: dt.datetime
) -> None:
    """Edges for whole days + flows for the partial ends == flows alone, at any range."""
    use(client, loaded)
    got = destinations(client, since, until)
    assert got == brute_force(client, since, until)
    assert bool(got) == (since < until)  # every non-empty range of RANGES holds data


def test_range_boundaries(client: ch.Client, loaded: str) -> None:
    use(client, loaded)
    one_us = [r for r in destinations(client, at(23, 23, 59, 59, 999999), at(24, 0, 0, 0, 1))]
    assert [(r[2], r[10]) for r in one_us] == [("93.184.216.34", 2)]  # rows 8 and 9, either side
    assert destinations(client, at(24, 12), at(24, 12)) == []
    assert not [r for r in destinations(client, at(24), at(24, 12)) if r[4] == "redis"]  # until exclusive
    assert [r for r in destinations(client, at(24, 12), at(25)) if r[4] == "redis"]  # since inclusive


def test_edges_outlive_flows(client: ch.Client) -> None:
    fresh(client, ttl_days=1)  # the test days are past flows' window: sealed history answers them
    insert_flows(client, BASE_ROWS)
    days = (at(23), at(26))
    before_fanout = fanout(client, *ALL_TIME)
    before_days = destinations(client, *days)
    before_all = destinations(client, *ALL_TIME)
    seal_edges(client)  # what the worker does every few minutes
    client.command("TRUNCATE TABLE flows")  # what TTL does, all at once
    assert client.query("SELECT count() FROM flows").result_rows[0][0] == 0
    assert fanout(client, *ALL_TIME) == before_fanout
    assert destinations(client, *days) == before_days
    assert destinations(client, *ALL_TIME) == before_all
    assert len(client.query("SELECT * FROM edges").result_rows) < len(BASE_ROWS)


def test_retried_block_is_skipped_by_flows_and_edges(client: ch.Client) -> None:
    fresh(client)
    rows = BASE_ROWS[:4]
    insert_flows(client, rows)
    insert_flows(client, rows)
    assert client.query("SELECT count() FROM flows").result_rows[0][0] == 4
    assert client.query("SELECT sum(connections) FROM edges").result_rows[0][0] == 4
    # a different block whose edge rows happen to be identical is not a replay
    insert_flows(
        client,
        [
            flow(
                at(23, 8),
                101,
                dst_kind="pod",
                dst_ip="10.244.2.9",
                dst_port=5432,
                dst_namespace="db",
                dst_name="postgres",
            )
        ],
    )
    assert client.query("SELECT sum(connections) FROM edges").result_rows[0][0] == 5


def test_unfiltered_duplicate_does_not_change_fanout(client: ch.Client) -> None:
    """A duplicate that bypassed the worker's filter (another block) can inflate
    edges.connections, but never the destination counts: those come from idempotent sets."""
    fresh(client)
    client.command("SYSTEM STOP MERGES flows")  # keep the duplicates unmerged, as they may be
    insert_flows(client, BASE_ROWS)
    before = fanout(client, *ALL_TIME)
    insert_flows(client, [BASE_ROWS[0], BASE_ROWS[7]])
    assert client.query("SELECT count() FROM flows").result_rows[0][0] == len(BASE_ROWS) + 2
    assert client.query("SELECT count() FROM flows_dedup").result_rows[0][0] == len(BASE_ROWS)
    assert client.query("SELECT records FROM summary").result_rows[0][0] == len(BASE_ROWS)
    after = fanout(client, *ALL_TIME)
    assert [r[:7] for r in after] == [r[:7] for r in before]
    assert [r[8:] for r in after] == [r[8:] for r in before]
    partial = (at(23, 1), at(25, 23))  # partial days read flows: exact even then
    assert destinations(client, *partial) == brute_force(client, *partial)


# -- helpers -----------------------------------------------------------------------------


def stored_counts(client: ch.Client) -> tuple[int, int, int]:
    """(rows in flows, distinct record ids in flows, sum of edges.connections)."""
    return client.query(
        "SELECT (SELECT count() FROM flows), (SELECT uniqExact(record_id) FROM flows),"
        " (SELECT sum(connections) FROM edges)"
    ).result_rows[0]


def staged_rows(client: ch.Client, table: str = "flows") -> int:
    return client.query(f"SELECT count() FROM {table}_staging").result_rows[0][0]


def test_insert_new_rows_drops_replays_across_batches_and_calls(client: ch.Client) -> None:
    fresh(client)
    first = [flow(at(24, 10, i), i) for i in range(1, 6)]
    assert insert_like_worker(client, first) == (5, 0)
    assert stored_counts(client) == (5, 5, 5)
    # the same batch again (inserted, then the worker died before committing its offsets)
    assert insert_like_worker(client, first) == (0, 5)
    assert stored_counts(client) == (5, 5, 5)  # edges did not count the replayed batch again
    # an overlapping batch (other batch boundaries after a restart): 2 replays, 3 new rows
    second = [*first[3:], *(flow(at(24, 10, i), i) for i in range(6, 9))]
    assert insert_like_worker(client, second) == (3, 2)
    assert stored_counts(client) == (8, 8, 8)
    assert sorted(r[0] for r in client.query("SELECT record_id FROM flows").result_rows) == list(range(1, 9))
    # a record twice inside one call is passed on as given (enrich.Batch drops those first):
    # ReplacingMergeTree collapses the identical rows of one block, edges counts it once
    # (uniqExact), and a later replay of it is dropped
    dup = flow(at(24, 11), 50)
    assert insert_like_worker(client, [dup, dup]) == (2, 0)
    assert stored_counts(client) == (9, 9, 9)
    assert insert_like_worker(client, [dup, flow(at(24, 11), 51)]) == (1, 1)
    assert stored_counts(client) == (10, 10, 10)
    assert staged_rows(client) == 0  # emptied after every call


def test_insert_new_rows_span_is_exact_to_the_microsecond(client: ch.Client) -> None:
    fresh(client)
    lo, hi = at(24, 10, 0, 0, 123456), at(24, 10, 0, 5, 654321)
    one_us = dt.timedelta(microseconds=1)
    insert_flows(client, [flow(lo, 1), flow(hi, 2), flow(lo - one_us, 3), flow(hi + one_us, 4)])
    batch = [flow(lo, 1), flow(hi, 2), flow(lo, 3), flow(hi, 4), flow(lo, 5)]
    # bounds in nanoseconds inside the stored microseconds: lo floors, hi ceils to them; ids 3
    # and 4 are stored only outside the span, so they are not replays of this batch
    assert ch.insert_new_rows(client, "flows", as_columns(batch), ns(lo) + 789, ns(hi) - 211) == (3, 2)
    assert stored_counts(client) == (7, 5, 5)  # edges counts each record id once, as destinations does
    # exact bounds: both ends inclusive
    assert ch.insert_new_rows(client, "flows", as_columns(batch[:2]), ns(lo), ns(hi)) == (0, 2)
    # a span that misses every stored row finds nothing
    late = ns(hi) + 2000
    assert ch.insert_new_rows(client, "flows", as_columns([flow(hi + 2 * one_us, 1)]), late, late) == (1, 0)


def test_insert_new_rows_many_rows_across_midnight(client: ch.Client) -> None:
    """More rows than any id chunk, over two daily partitions."""
    fresh(client)
    start = at(23, 23, 59, 59)
    many = [flow(start + dt.timedelta(microseconds=500 * i), 1000 + i) for i in range(4500)]
    assert {r[0].date() for r in many} == {at(23).date(), at(24).date()}
    assert insert_like_worker(client, many) == (4500, 0)
    assert insert_like_worker(client, [*many, flow(at(24, 12), 9_999_999)]) == (1, 4500)
    assert insert_like_worker(client, many[::-1]) == (0, 4500)
    assert stored_counts(client) == (4501, 4501, 4501)


def _as_ticks(row: list[Any]) -> list[Any]:
    """The worker's form of a row: ts as integer microseconds."""
    return [ns(row[0]) // 1000, *row[1:]]


def test_insert_new_rows_stores_what_insert_columns_stores(client: ch.Client) -> None:
    """Arrow path == Native path, column by column: IPv4 and IPv6, NULL ports, 128-bit ids."""
    src_i = ch.FLOW_COLUMNS.index("src_ip")
    rows = [
        flow(at(24, 1), 2**128 - 1, dst_ip="2606:2800:220:1:248:1893:25c8:1946"),
        flow(at(24, 1, 0, 0, 1), 2**128 - 2, dst_ip="8.8.8.8", dst_port=None, proto="ICMP"),
        flow(at(24, 1, 0, 0, 2), 2**127 + 5, dst_kind="unknown", dst_ip="fd00::1", dst_port=65535),
        flow(at(24, 1, 0, 0, 3), 2**64, dst_kind="pod", dst_ip="10.244.2.9", dst_namespace="db", dst_name="pg"),
        flow(at(24, 1, 0, 0, 4), 0, ns_="", dst_ip="255.255.255.255", dst_port=0),
        flow(at(24, 1, 0, 0, 5), 1, direction="ingress", dst_ip="::", dst_port=None, proto="ICMPv6"),
    ]
    rows[0][src_i] = "fd00:10:244::5"
    rows[4][src_i] = "1.0.0.0"
    ticks = [_as_ticks(r) for r in rows]

    def stored() -> list[tuple]:
        return client.query("SELECT * EXCEPT ingested_at FROM flows ORDER BY record_id").result_rows

    fresh(client)
    insert_flows(client, ticks)
    expected = stored()
    fresh(client)
    assert insert_like_worker(client, ticks) == (6, 0)
    assert stored() == expected
    assert client.query("SELECT toString(record_id) FROM flows ORDER BY record_id DESC LIMIT 1").result_rows == [
        (str(2**128 - 1),)
    ]
    ips = client.query(
        "SELECT toString(src_ip), toString(dst_ip), dst_port FROM flows ORDER BY record_id"
    ).result_rows
    assert ips == [
        ("::ffff:1.0.0.0", "::ffff:255.255.255.255", 0),
        ("::ffff:10.244.1.5", "::", None),
        ("::ffff:10.244.1.5", "::ffff:10.244.2.9", 443),
        ("::ffff:10.244.1.5", "fd00::1", 65535),
        ("::ffff:10.244.1.5", "::ffff:8.8.8.8", None),
        ("fd00:10:244::5", "2606:2800:220:1:248:1893:25c8:1946", 443),
    ]
    assert insert_like_worker(client, ticks) == (0, 6)
    assert insert_like_worker(client, rows) == (0, 6)  # datetimes or ticks: the same moments


def test_insert_new_rows_rejects(client: ch.Client) -> None:
    def reject(moment: dt.datetime, rid: int, offset: int) -> list[Any]:
        return [moment, rid, "node-1", "journal", "line", "bad_port", "DPT=99999", "calico-packet: …", 18, 0, offset]

    rows = [reject(at(24, 1), 2**128 - 1, 7), reject(at(24, 1, 0, 0, 1), 500, 8), reject(at(24, 2), 501, -1)]
    rows[2][2:4] = ["", ""]

    def stored() -> list[tuple]:
        return client.query("SELECT * EXCEPT ingested_at FROM rejects ORDER BY record_id").result_rows

    fresh(client)
    ch.insert_columns(client, "rejects", ch.REJECT_COLUMNS, [list(c) for c in zip(*rows, strict=True)])
    expected = stored()
    fresh(client)
    assert insert_like_worker(client, rows, "rejects") == (3, 0)
    assert stored() == expected
    assert insert_like_worker(client, [*rows, reject(at(24, 3), 502, 9)], "rejects") == (1, 3)
    assert client.query("SELECT count(), uniqExact(record_id) FROM rejects").result_rows == [(4, 4)]
    assert client.query("SELECT count() FROM flows").result_rows == [(0,)]
    assert staged_rows(client, "rejects") == 0


class _Injected(ConnectionError):
    pass


def _lose_connection(
    monkeypatch: pytest.MonkeyPatch, client: ch.Client, at_prefix: str | None, *, after: bool = False
) -> list[str]:
    """Record client.command's statements; from the first one starting with ``at_prefix`` on, every
    command raises (the connection is gone) until monkeypatch.undo(). With ``after`` that first
    statement still runs on the server: only its response is lost."""
    original = client.command
    ran: list[str] = []
    lost = False

    def command(cmd: str, *args: Any, **kwargs: Any) -> Any:
        nonlocal lost
        ran.append(cmd)
        if not lost and at_prefix is not None and cmd.startswith(at_prefix):
            lost = True
            if after:
                original(cmd, *args, **kwargs)
            raise _Injected(f"connection lost at {at_prefix}")
        if lost:
            raise _Injected("connection lost")
        return original(cmd, *args, **kwargs)

    monkeypatch.setattr(client, "command", command)
    return ran


def test_failed_insert_select_leaves_nothing_for_the_retry(client: ch.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh(client)
    rows = [flow(at(24, 10, 0, 0, i), 100 + i) for i in range(3000)]
    first, other = rows[:2000], rows[2000:]

    def fail_midway(batch: list[list[Any]]) -> None:
        """The insert-select fails and so does the cleanup (the connection is gone): rows stay staged."""
        ran = _lose_connection(monkeypatch, client, "INSERT INTO flows")
        with pytest.raises(_Injected):
            insert_like_worker(client, batch)
        assert [c.split(" (")[0] for c in ran[-2:]] == ["INSERT INTO flows", "TRUNCATE TABLE flows_staging"]
        monkeypatch.undo()
        assert staged_rows(client) == len(batch)

    fail_midway(first)
    assert stored_counts(client) == (0, 0, 0)
    # the next call (another batch) inserts its own rows only
    assert insert_like_worker(client, other) == (1000, 0)
    assert stored_counts(client) == (1000, 1000, 1000)
    assert client.query("SELECT min(record_id) FROM flows").result_rows == [(2100,)]
    # the retry of the failed batch inserts each of its rows once
    fail_midway(first)
    assert insert_like_worker(client, first) == (2000, 0)
    assert stored_counts(client) == (3000, 3000, 3000)
    assert staged_rows(client) == 0


def test_insert_whose_response_was_lost_is_replayed_once(client: ch.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh(client)
    rows = [flow(at(24, 10, 0, 0, i), 100 + i) for i in range(50)]
    _lose_connection(monkeypatch, client, "INSERT INTO flows", after=True)
    with pytest.raises(_Injected):
        insert_like_worker(client, rows)
    monkeypatch.undo()
    assert stored_counts(client) == (50, 50, 50)
    assert insert_like_worker(client, rows) == (0, 50)
    assert stored_counts(client) == (50, 50, 50)


def test_retry_that_misses_the_replay_check_is_deduplicated(
    client: ch.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Backstop: the INSERT ... SELECT carries a token, so the same rows inserted again (the
    first insert not yet visible to the check) are skipped by flows and edges."""
    fresh(client)
    rows = [flow(at(24, 10, 0, 0, i), 100 + i) for i in range(50)]
    assert insert_like_worker(client, rows) == (50, 0)
    original = client.query

    def blind(query: str, *args: Any, **kwargs: Any) -> Any:  # the replay check sees nothing
        return original("SELECT toUInt128(0) WHERE 0" if query.startswith("SELECT DISTINCT record_id") else query,
                         *args, **kwargs)

    monkeypatch.setattr(client, "query", blind)
    assert insert_like_worker(client, rows) == (50, 0)  # claimed, but skipped by deduplication
    monkeypatch.undo()
    assert stored_counts(client) == (50, 50, 50)
    # a different set of rows is not mistaken for a retry
    assert insert_like_worker(client, rows[:49]) == (0, 49)
    assert insert_like_worker(client, [flow(at(24, 10, 0, 1), 1)]) == (1, 0)
    assert stored_counts(client) == (51, 51, 51)


def test_staging_is_private_to_the_session(client: ch.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    db = fresh(client)
    other = ch.connect(f"chdb://{client.path}", database=db)  # another handle on the same engine
    try:
        _lose_connection(monkeypatch, client, "INSERT INTO flows")
        with pytest.raises(_Injected):
            insert_like_worker(client, [flow(at(24, 10), 1), flow(at(24, 10, 1), 2)])
        monkeypatch.undo()
        assert staged_rows(client) == 2
        assert other.command("EXISTS TEMPORARY TABLE flows_staging") == 0
        assert insert_like_worker(other, [flow(at(24, 10, 2), 3)]) == (1, 0)
        assert staged_rows(client) == 2  # untouched by the other session
        assert stored_counts(client) == (1, 1, 1)
    finally:
        other.close()


def test_insert_new_rows_validates_before_any_statement(client: ch.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    fresh(client)
    ran = _lose_connection(monkeypatch, client, None)
    cols = as_columns([flow(at(24), 1)])
    for table in ("flows; DROP TABLE flows", "ownership", "system.users", "flows_staging"):
        with pytest.raises(ValueError, match="unknown table"):
            ch.insert_new_rows(client, table, cols, 0, 1)
    with pytest.raises(ValueError, match="exactly"):
        ch.insert_new_rows(client, "flows", {k: v for k, v in cols.items() if k != "dst_pod"}, 0, 1)
    with pytest.raises(ValueError, match="exactly"):
        ch.insert_new_rows(client, "flows", {**cols, "ingested_at": [at(24)]}, 0, 1)
    with pytest.raises(ValueError, match="lengths"):
        ch.insert_new_rows(client, "flows", {**cols, "host": []}, 0, 1)
    for rid in (2**128, -1):  # outside UInt128
        with pytest.raises(OverflowError):
            ch.insert_new_rows(client, "flows", {**cols, "record_id": [rid]}, 0, 1)
    with pytest.raises(ValueError):  # pyarrow.ArrowInvalid: out of UInt16
        ch.insert_new_rows(client, "flows", {**cols, "dst_port": [65536]}, 0, 1)
    assert ch.insert_new_rows(client, "flows", {c: [] for c in ch.FLOW_COLUMNS}, 0, 0) == (0, 0)
    assert ran == []
    assert stored_counts(client) == (0, 0, 0)


def test_insert_new_rows_needs_a_session() -> None:
    class NoSession:  # e.g. an HTTP client made with autogenerate_session_id=False
        uri = "http://localhost:8123"

        def get_client_setting(self, key: str) -> str | None:
            return None

    with pytest.raises(ValueError, match="session"):
        ch.insert_new_rows(NoSession(), "flows", as_columns([flow(at(24), 1)]), 0, 1)  # type: ignore[arg-type]


def test_connect_always_asks_for_an_http_session(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    class Fake:
        database = ""

    def get_client(**kwargs: Any) -> Fake:
        seen.update(kwargs)
        return Fake()

    monkeypatch.setattr(ch.clickhouse_connect, "get_client", get_client)
    ch.connect("http://localhost:8123")
    assert seen["autogenerate_session_id"] is True


def test_helpers_reject_unknown_tables_and_columns(client: ch.Client) -> None:
    with pytest.raises(ValueError):
        ch.insert_columns(client, "system.users", ("name",), [["x"]])
    with pytest.raises(ValueError):
        ch.insert_columns(client, "flows", ("ts", "record_id) SELECT 1 --"), [[at(24)], [1]])


def test_rejects_and_summary(client: ch.Client, loaded: str) -> None:
    use(client, loaded)
    reject = [
        at(24, 1),
        500,
        "node-1",
        "journal",
        "line",
        "no-src",
        "SRC= missing",
        "calico-packet: IN=",
        18,
        0,
        7,
    ]
    envelope = [at(24, 2), 0, "", "", "envelope", "bad-json", "Expecting value", "{", 1, 3, 99]
    envelope2 = [at(24, 2), 0, "", "", "envelope", "bad-json", "Expecting value", "{", 1, 3, 100]
    for batch in ([reject, envelope], [reject, envelope2]):
        ch.insert_columns(client, "rejects", ch.REJECT_COLUMNS, [list(c) for c in zip(*batch, strict=True)])
    rows = client.query("SELECT * FROM summary").result_rows
    records, rejected, envelope_rejects, unattributed, repaired, first_ts, last_ts = rows[0]
    assert (records, rejected, envelope_rejects, unattributed, repaired) == (19, 1, 2, 1, 0)
    assert (naive(first_ts), naive(last_ts)) == (naive(at(23, 8)), naive(at(25, 22)))
    assert client.query("SELECT count() FROM flows_dedup").result_rows[0][0] == 19


def test_owner_at(client: ch.Client) -> None:
    fresh(client)

    def claim(
        ip: str,
        uid: str,
        name: str,
        vf: dt.datetime,
        vt: dt.datetime | None,
        observed: dt.datetime,
        kind: str = "pod",
    ) -> list[Any]:
        return [
            ip,
            kind,
            "shop",
            name,
            uid,
            "Deployment",
            name.rsplit("-", 1)[0],
            "node-1",
            {"app": name},
            vf,
            vt,
            observed,
            "watch",
        ]

    rows = [
        claim("10.244.3.7", "uid-a", "web-a", at(20), None, at(20)),  # opened ...
        claim("10.244.3.7", "uid-a", "web-a", at(20), at(24, 12), at(24, 12)),  # ... and closed
        claim("10.244.3.7", "uid-b", "web-b", at(24, 12), None, at(24, 12)),
        # a claim closed, then re-observed open (newer): a bare argMax would skip the NULL
        claim("10.244.3.8", "uid-c", "api-c", at(20), at(21), at(21)),
        claim("10.244.3.8", "uid-c", "api-c", at(20), None, at(22)),
        claim("fd00::17", "uid-d", "v6-d", at(20), None, at(20)),
    ]
    ch.insert_columns(client, "ownership", ch.OWNERSHIP_COLUMNS, [list(c) for c in zip(*rows, strict=True)])

    def who(ip: str, moment: str) -> list[str]:
        return [
            r[0]
            for r in client.query(
                "SELECT name FROM owner_at(ip = {ip:String}, at = {at:DateTime64(6, 'UTC')})",
                parameters={"ip": ip, "at": moment},
            ).result_rows
        ]

    assert who("10.244.3.7", "2026-11-24 11:59:59") == ["web-a"]
    assert who("10.244.3.7", "2026-11-24 12:00:00") == ["web-b"]  # valid_to exclusive
    assert who("10.244.3.7", "2026-11-24 14:00:00") == ["web-b"]
    assert who("10.244.3.7", "2026-11-19 00:00:00") == []
    assert who("10.244.3.8", "2026-11-23 00:00:00") == ["api-c"]
    assert who("fd00::17", "2026-11-23 00:00:00") == ["v6-d"]
    assert who("::ffff:10.244.3.7", "2026-11-24 14:00:00") == ["web-b"]
    # the literal form ad-hoc users type
    lit = client.query(
        "SELECT name, valid_to FROM owner_at(ip='10.244.3.7', at='2026-11-24 11:00:00')"
    ).result_rows
    assert [(name, naive(valid_to)) for name, valid_to in lit] == [("web-a", naive(at(24, 12)))]


def test_injection_attempts_stay_values(client: ch.Client, loaded: str) -> None:
    use(client, loaded)
    count = client.query("SELECT count() FROM flows").result_rows[0][0]
    evil = "x' OR 1=1 --"
    rows = client.query(
        f"SELECT * FROM fanout(since = {{s:{T}}}, until = {{u:{T}}}) WHERE namespace = {{ns:String}}",
        parameters={"s": ALL_TIME[0], "u": ALL_TIME[1], "ns": evil},
    ).result_rows
    assert rows == []
    try:
        got = client.query(
            "SELECT * FROM owner_at(ip = {ip:String}, at = {at:DateTime64(6, 'UTC')})",
            parameters={"ip": "10.244.3.7') OR 1=1 --", "at": "2026-11-24 14:00:00"},
        ).result_rows
    except Exception as exc:  # an unparsable IP may be an error: fine, as long as it is nothing else
        assert "IPv6" in str(exc) or "parse" in str(exc).lower()
    else:
        assert got == []
    assert client.query("SELECT count() FROM flows").result_rows[0][0] == count


# -- connect -----------------------------------------------------------------------------


def test_connect_rejects_bad_urls() -> None:
    with pytest.raises(ValueError, match="scheme"):
        ch.connect("clickhouse://db:9000")
    with pytest.raises(ValueError, match="absolute"):
        ch.connect("chdb://relative/path")
    with pytest.raises(ValueError) as info:
        ch.connect("https://admin:hunter2@db.example:8443")
    assert "hunter2" not in str(info.value)
    with pytest.raises(ValueError, match="database"):
        ch.connect("http://localhost:8123", database="flows; DROP DATABASE x")


def test_connect_error_does_not_leak_password() -> None:
    with pytest.raises(Exception) as info:  # noqa: B017 - whatever the driver raises
        ch.connect("http://127.0.0.1:1", username="u", password="s3cret-pw")  # noqa: S106
    chain, exc = [], info.value
    while exc is not None:
        chain.append(repr(exc))
        exc = exc.__cause__ or exc.__context__
    assert not any("s3cret-pw" in text for text in chain)


