"""ClickHouseSink against chDB: what it reports as written/replayed is what ClickHouse holds.

A synthetic corpus goes through the real parse + enrich path (enrich.Batch), so the batches
hold what the worker sends: IPv4 and IPv6, ports and NULL ports, rejects, 128-bit ids.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from pipeline.basics import metrics
from pipeline.basics.config import Settings
from pipeline.core.claims import events_from_list
from pipeline.core.enrich import Batch, add_record
from pipeline.core.envelopes import from_journal_entry
from pipeline.core.models import RawRecord
from pipeline.core.registry import OwnershipRegistry
from pipeline.store import clickhouse as ch
from pipeline.store.errors import classify
from pipeline.store.ownership import claim_rows
from pipeline.tooling.bench import ownership_events
from pipeline.tooling.synthetic import Corpus, generate
from pipeline.worker import sink as sink_module
from pipeline.worker.sink import ClickHouseSink

_db = itertools.count()


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return generate(seed=3, namespaces=8, records=3000)


@pytest.fixture(scope="module")
def sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseSink]:
    s = ClickHouseSink(Settings(home=tmp_path_factory.mktemp("sink")))
    yield s
    s.client().close()
    s.close()


def fresh(sink: ClickHouseSink) -> ch.Client:
    client = sink.client()
    client.database = f"s_{next(_db)}"
    ch.migrate(client)
    return client


Edit = Callable[[int, RawRecord], RawRecord]


def batches(corpus: Corpus, *bounds: int, edit: Edit = lambda i, rec: rec) -> list[Batch]:
    """The corpus's journal enriched into one Batch per [bounds[i], bounds[i+1]) slice of entries
    (``edit`` may change the i-th record before it is enriched)."""
    registry = OwnershipRegistry()
    for ev in events_from_list(corpus.inventory, corpus.end_ns)[0]:
        registry.apply(ev)
    out = []
    for lo, hi in itertools.pairwise(bounds):
        batch = Batch()
        for i, line in enumerate(corpus.journal[lo:hi], lo):
            add_record(batch, edit(i, from_journal_entry(json.loads(line))), registry, "calico-packet", "cali")
        out.append(batch)
    return out


def counts(client: ch.Client) -> tuple[Any, ...]:
    return client.query(
        "SELECT (SELECT count() FROM flows), (SELECT uniqExact(record_id) FROM flows),"
        " (SELECT count() FROM rejects), (SELECT uniqExact(record_id) FROM rejects),"
        " (SELECT sum(connections) FROM edges),"
        " (SELECT count() FROM flows WHERE direction = 'egress' AND src_namespace != '')"
    ).result_rows[0]


def test_written_and_replayed_match_what_is_stored(sink: ClickHouseSink, corpus: Corpus) -> None:
    client = fresh(sink)
    n = len(corpus.journal)
    (whole,), (first,), (overlap,) = batches(corpus, 0, n), batches(corpus, 0, n // 2), batches(corpus, n // 2 - 100, n)
    exp = corpus.expected
    assert (whole.flow_rows, whole.reject_rows) == (exp.records, exp.rejected)
    assert whole.flow_rows > 2000 and whole.reject_rows > 0

    written = sink._write(first, [])
    assert written == {"flows": first.flow_rows, "rejects": first.reject_rows, "ownership": 0, "replayed": 0,
                       "quarantined": 0}
    # a batch that starts 100 entries before the end of the first: those (and any later copy of
    # a line of the first batch) are replays
    seen = {table: set(getattr(first, table)["record_id"]) for table in ("flows", "rejects")}
    old = {table: sum(i in seen[table] for i in getattr(overlap, table)["record_id"]) for table in seen}
    assert old["flows"] > 0
    written = sink._write(overlap, [])
    assert written == {"flows": overlap.flow_rows - old["flows"], "rejects": overlap.reject_rows - old["rejects"],
                       "ownership": 0, "replayed": old["flows"] + old["rejects"], "quarantined": 0}
    flows, flow_ids, rejects, reject_ids, connections, egress = counts(client)
    assert (flows, flow_ids, rejects, reject_ids) == (exp.records, exp.records, exp.rejected, exp.rejected)
    assert connections == egress > 0  # edges counted every attributed egress row once

    # the whole journal again: every row a replay, nothing stored twice
    written = sink._write(whole, [])
    assert written == {"flows": 0, "rejects": 0, "ownership": 0, "replayed": exp.records + exp.rejected,
                       "quarantined": 0}
    assert counts(client) == (flows, flow_ids, rejects, reject_ids, connections, egress)


async def test_retry_after_a_failure_between_tables_stores_once(
    sink: ClickHouseSink, corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """flows inserted, then the rejects insert fails: the retry replays flows and inserts rejects."""
    client = fresh(sink)
    batch = batches(corpus, 0, len(corpus.journal))[0]
    original = client.command
    failures = iter([True])

    def command(cmd: str, *args: Any, **kwargs: Any) -> Any:
        if cmd.startswith("INSERT INTO rejects") and next(failures, False):
            raise ConnectionError("injected")
        return original(cmd, *args, **kwargs)

    monkeypatch.setattr(client, "command", command)
    written = await sink.write(batch, [], asyncio.Event())
    assert sink.last_error == ""
    assert written == {"flows": 0, "rejects": batch.reject_rows, "ownership": 0, "replayed": batch.flow_rows,
                       "quarantined": 0}
    monkeypatch.undo()
    flows, flow_ids, rejects, reject_ids, connections, egress = counts(client)
    assert (flows, flow_ids, rejects, reject_ids) == (batch.flow_rows,) * 2 + (batch.reject_rows,) * 2
    assert connections == egress
    assert client.query("SELECT count() FROM flows_staging").result_rows == [(0,)]
    assert client.query("SELECT count() FROM rejects_staging").result_rows == [(0,)]


DAY_NS = 86_400 * 10**9


def test_a_batch_spanning_180_days_inserts_whole(sink: ClickHouseSink, corpus: Corpus) -> None:
    """ClickHouse refuses an INSERT block touching over 100 partitions (days here): the sink splits by day."""
    client = fresh(sink)
    (batch,) = batches(corpus, 0, len(corpus.journal), edit=lambda i, rec: dataclasses.replace(
        rec, ts_ns=rec.ts_ns - (i % 180) * DAY_NS))
    exp = corpus.expected
    # one call of the store, as the sink makes it for a batch that fails nothing
    assert ch.insert_new_rows(client, "flows", batch.flows, min(batch.flow_ts), max(batch.flow_ts)) == (
        exp.records, 0)
    assert sink._write(batch, []) == {"flows": 0, "rejects": exp.rejected, "ownership": 0,
                                      "replayed": exp.records, "quarantined": 0}
    days = client.query("SELECT uniqExact(toDate(ts)), uniqExact(_partition_id) FROM flows").result_rows[0]
    assert days[0] >= 180 and days[1] >= 180
    flows, flow_ids, rejects, reject_ids, connections, egress = counts(client)
    assert (flows, flow_ids, rejects, reject_ids) == (exp.records, exp.records, exp.rejected, exp.rejected)
    assert connections == egress > 0
    # the same batch again (a replay after a crash): every row found, nothing stored twice
    assert sink._write(batch, [])["replayed"] == exp.records + exp.rejected
    assert counts(client) == (flows, flow_ids, rejects, reject_ids, connections, egress)


def test_rows_the_server_refuses_are_quarantined_and_the_rest_stored(sink: ClickHouseSink, corpus: Corpus) -> None:
    """A real server refusal (a CHECK constraint an operator added) for 3 rows of a 3000-row batch."""
    client = fresh(sink)
    client.command("ALTER TABLE flows ADD CONSTRAINT no_quarantined_host CHECK host != 'refused-host'")
    (plain,) = batches(corpus, 0, len(corpus.journal))
    ids = plain.flows["record_id"]
    refused_ids = {ids[7], ids[len(ids) // 2], ids[-1]}  # Calico lines that parse, across the batch
    (batch,) = batches(corpus, 0, len(corpus.journal), edit=lambda i, rec: dataclasses.replace(
        rec, host="refused-host") if int(rec.record_id, 16) in refused_ids else rec)
    exp = corpus.expected
    before = metrics.QUARANTINED._value.get()
    written = asyncio.run(sink.write(batch, [], asyncio.Event()))
    assert written == {"flows": exp.records - 3, "rejects": exp.rejected + 3, "ownership": 0, "replayed": 0,
                       "quarantined": 3}
    assert metrics.QUARANTINED._value.get() - before == 3
    rows = client.query("SELECT record_id, host, reason, detail, raw FROM rejects WHERE stage = 'insert'"
                        " ORDER BY record_id").named_results()
    rows = list(rows)
    assert {r["record_id"] for r in rows} == refused_ids
    for r in rows:
        assert r["host"] == "refused-host" and r["reason"] == "VIOLATED_CONSTRAINT"
        assert "Constraint `no_quarantined_host`" in r["detail"]  # the server's own message
        assert r["raw"].startswith("IN=") and " SRC=" in r["raw"] and " DST=" in r["raw"]
    flows, flow_ids, rejects, _, connections, egress = counts(client)
    assert (flows, flow_ids, rejects) == (exp.records - 3, exp.records - 3, exp.rejected + 3)
    assert connections == egress > 0


def _as_stored(column: str) -> str:
    """``column`` read back as the batch holds it: times in µs, addresses as text (IPv4 unmapped)."""
    kind = ch.COLUMN_TYPES[column]
    if kind.startswith("DateTime64"):
        return f"toUnixTimestamp64Micro({column})"
    if kind == "IPv6":
        return f"replaceRegexpOne(toString({column}), '^::ffff:([0-9.]+)$', '\\\\1')"
    return column


def test_every_value_stored_is_the_one_enriched(sink: ClickHouseSink, corpus: Corpus) -> None:
    """Row for row and column for column, flows and rejects hold what enrichment produced, for batches
    of one entry (400 of them) and of the rest of the corpus: a column's conversion may depend on what
    else is in the batch (an IPv6 column of 16-character addresses only was stored as the text's bytes)."""
    client = fresh(sink)
    n = len(corpus.journal)
    bounds = [*range(401), n]
    sent: dict[str, set[tuple]] = {"flows": set(), "rejects": set()}
    for batch in batches(corpus, *bounds):
        sink._write(batch, [])
        sent["flows"].update(batch.flow_data.rows())
        sent["rejects"].update(batch.reject_tuples)
    assert len(sent["flows"]) > 2000 and sent["rejects"]
    for table, columns in (("flows", ch.FLOW_COLUMNS), ("rejects", ch.REJECT_COLUMNS)):
        stored = client.query(f"SELECT {', '.join(map(_as_stored, columns))} FROM {table}").result_rows
        assert len(stored) == len(sent[table])
        assert set(stored) == sent[table], table


def test_flows_rows_convert_by_flow_as_they_would_row_by_row(sink: ClickHouseSink, corpus: Corpus) -> None:
    """Each flow converted once and repeated by Arrow gives the table the rows' own columns give, and a
    flow looked up for a record the batch path then held (no row uses it) is not converted: were its
    values refused, the rows must still go in."""
    client = fresh(sink)
    (batch,) = batches(corpus, 0, len(corpus.journal))
    rows = batch.flow_data
    assert len(rows.flows) < len(rows) / 2  # flows repeat: what makes converting them once pay
    flows_cols = batch.flows
    by_row = ch._to_arrow(ch.FLOW_COLUMNS, [flows_cols[c] for c in ch.FLOW_COLUMNS])
    assert ch._flow_arrow(rows) == by_row
    rows.flow_index(("cali0", 4, "TCP", "not an address", "10.0.0.1", 80, *[""] * 11))
    assert ch._flow_arrow(rows) == by_row
    assert sink._write(batch, [])["flows"] == corpus.expected.records
    assert counts(client)[0] == corpus.expected.records


def test_addresses_are_stored_as_written_whatever_their_length(sink: ClickHouseSink, corpus: Corpus) -> None:
    """ClickHouse reads an Arrow string column into IPv6 as raw bytes when every value is 16 bytes long:
    a batch whose addresses were all 16-character texts (one IPv6 pod talking to another) was stored as
    the text's own bytes. Addresses of every length, alone in their batch or mixed, come back as sent."""
    client = fresh(sink)
    line = "calico-packet: IN=cali0123456789a OUT=eth0 SRC={} DST={} LEN=80 TC=0 HOPLIMIT=64 FLOWLBL=0 " \
           "PROTO=TCP SPT=40000 DPT=443 WINDOW=1 RES=0x00 SYN URGP=0 "
    pairs = [("fd00:10:244:1::a", "fd00:10:244:2::b"),  # 16 and 16 characters: the case that was corrupted
             ("fd00:10:244:1::ab", "2001:db8::1"), ("::1", "fd00:1:2:3:4:5:6:7")]
    for i, (src, dst) in enumerate(pairs):
        batch = Batch()
        rec = RawRecord(f"{i + 1:032x}", corpus.end_ns, "node-1", line.format(src, dst), "journal")
        add_record(batch, rec, OwnershipRegistry(), "calico-packet", "cali")
        asyncio.run(sink.write(batch, [], asyncio.Event()))
    stored = client.query("SELECT toString(src_ip), toString(dst_ip) FROM flows ORDER BY record_id").result_rows
    assert stored == pairs


def test_a_transient_error_is_retried_and_nothing_quarantined(
    sink: ClickHouseSink, corpus: Corpus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Memory limit exceeded (a real chDB error, code 241) on the first copy: retried, not split."""
    client = fresh(sink)
    try:
        client.query("SELECT groupArray(number) FROM numbers(10000000)", settings={"max_memory_usage": 1_000_000})
    except Exception as exc:  # the server's exception, as the insert would raise it
        oom = exc
    assert "Code: 241" in str(oom)
    original = client.command
    failures = iter([True])

    def command(cmd: str, *args: Any, **kwargs: Any) -> Any:
        if cmd.startswith("INSERT INTO flows") and next(failures, False):
            raise oom
        return original(cmd, *args, **kwargs)

    monkeypatch.setattr(client, "command", command)
    (batch,) = batches(corpus, 0, len(corpus.journal))
    failed = metrics.INSERT_FAILURES._value.get()
    written = asyncio.run(sink.write(batch, [], asyncio.Event()))
    assert metrics.INSERT_FAILURES._value.get() - failed == 1
    assert written == {"flows": batch.flow_rows, "rejects": batch.reject_rows, "ownership": 0, "replayed": 0,
                       "quarantined": 0}
    assert sink.last_error == "" and sink.blocked_s() == 0.0
    assert client.query("SELECT count() FROM rejects WHERE stage = 'insert'").result_rows == [(0,)]


def raised(fn: Callable[[], object]) -> Exception:
    try:
        fn()
    except Exception as exc:
        return exc
    raise AssertionError("no error")


def server_error(client: ch.Client, sql: str, **settings: Any) -> Exception:
    """The exception the server (chDB here) raises for ``sql``."""
    return raised(lambda: client.query(sql, settings=settings))


def test_errors_are_classified_from_the_servers_own_answers(sink: ClickHouseSink) -> None:
    import pyarrow as pa

    client = fresh(sink)
    client.command("CREATE TABLE days (ts DateTime64(6, 'UTC'), ip IPv6) ENGINE = MergeTree"
                   " PARTITION BY toYYYYMMDD(ts) ORDER BY ts")
    client.command("CREATE TABLE busy (x UInt8) ENGINE = MergeTree ORDER BY x SETTINGS parts_to_throw_insert = 2")
    client.command("SYSTEM STOP MERGES busy")
    client.command("INSERT INTO busy VALUES (1)")
    client.command("INSERT INTO busy VALUES (2)")
    cases = {  # error -> (deterministic, per row, reason)
        server_error(client, "INSERT INTO days SELECT toDateTime64('2026-01-01', 6, 'UTC') + toIntervalDay(number),"
                             " '::1' FROM numbers(180)"): (True, True, "TOO_MANY_PARTS"),
        server_error(client, "INSERT INTO busy VALUES (3)"): (False, False, "TOO_MANY_PARTS"),
        server_error(client, "INSERT INTO days VALUES (now(), 'fe80::1%eth0')"): (True, True, "CANNOT_PARSE_IPV6"),
        server_error(client, "INSERT INTO days (nope) VALUES (1)"): (True, False, "NO_SUCH_COLUMN_IN_TABLE"),
        server_error(client, "SELECT groupArray(number) FROM numbers(10000000)", max_memory_usage=1_000_000): (
            False, False, "MEMORY_LIMIT_EXCEEDED"),
        server_error(client, "SELECT count() FROM numbers(100000000000)", max_execution_time=0.2): (
            False, False, "TIMEOUT_EXCEEDED"),
        # As a ClickHouse server answers over HTTP (quoted: chDB has no users to deny)
        DatabaseError("HTTPDriver for https://ch:8443 received ClickHouse error code 497\n Code: 497. "
                         "DB::Exception: worker: Not enough privileges. To execute this query, it's necessary to "
                         "have the grant INSERT(ts) ON flows.flows. (ACCESS_DENIED) (version 25.8.2.29 (official "
                         "build))"): (True, False, "ACCESS_DENIED"),
        ConnectionError("[Errno 111] Connection refused"): (False, False, "ConnectionError"),
        TimeoutError("timed out"): (False, False, "TimeoutError"),
        raised(lambda: pa.array([70000], type=pa.uint16())): (True, True, "ArrowInvalid"),  # a port > 65535
        raised(lambda: ch.ipv6_bytes("fe80::1%eth0")): (True, True, "ArrowInvalid"),  # not an address
    }
    for exc, expected in cases.items():
        error = classify(exc)
        assert (error.deterministic, error.per_row, error.reason) == expected, exc
        assert "https://ch" not in error.message  # the server's message, not the driver's URL
    assert "Too many partitions for single INSERT block" in classify(next(iter(cases))).message


def test_a_burst_of_claims_goes_in_bounded_blocks_and_whole(
        sink: ClickHouseSink, monkeypatch: pytest.MonkeyPatch) -> None:
    """Claims piled up (an inventory, or an outage's worth retried at once) are stored in blocks of at
    most CLAIMS_PER_INSERT: one block of them all kept ~110 MB of the worker's memory afterwards."""
    client = fresh(sink)
    events = list(ownership_events(2_000))  # ~10 000 claims, IP and pod identity ones
    monkeypatch.setattr(sink_module, "CLAIMS_PER_INSERT", 3_000)
    blocks: list[int] = []
    insert = sink_module.insert_columns

    def recorded(client: Any, table: str, columns: tuple[str, ...], data: list[list]) -> None:
        blocks.append(len(data[0]))
        insert(client, table, columns, data)

    monkeypatch.setattr(sink_module, "insert_columns", recorded)
    written = sink._write(Batch(), events)
    assert written["ownership"] == len(events)
    assert len(blocks) >= -(-len(events) // 3_000) and max(blocks) <= 3_000
    stored = client.query("SELECT (SELECT count() FROM ownership FINAL), (SELECT count() FROM endpoint_claims FINAL)")
    assert sum(stored.result_rows[0]) == len({(ev.kind, ev.uid, ev.ip) for ev in events})


def test_an_insert_keeps_no_reference_to_the_columns_it_was_given(sink: ClickHouseSink) -> None:
    """The driver's Native insert left its context behind as cyclic garbage holding the columns: with
    the worker's GC thresholds every block of claims stayed resident until a rare full collection."""
    client = fresh(sink)
    parts = claim_rows(list(ownership_events(300)))
    blocks = [[cols[c] for c in columns] for _, columns, cols in parts]
    gc.collect()
    gc.disable()  # garbage stays where it is, as it does between the worker's rare full collections
    try:
        for (table, columns, _), data in zip(parts, blocks, strict=True):
            ch.insert_columns(client, table, columns, data)
        held = [r for data in blocks for r in gc.get_referrers(data) if r is not blocks]
        assert held == []
    finally:
        gc.enable()
    stored = client.query("SELECT (SELECT count() FROM ownership), (SELECT count() FROM endpoint_claims)")
    assert sum(stored.result_rows[0]) == sum(len(data[0]) for data in blocks)

