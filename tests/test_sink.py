"""ClickHouseSink against chDB: what it reports as written/replayed is what ClickHouse holds.

A synthetic corpus goes through the real parse + enrich path (enrich.Batch), so the batches
hold what the worker sends: IPv4 and IPv6, ports and NULL ports, rejects, 128-bit ids.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.basics.config import Settings
from pipeline.core.claims import events_from_list
from pipeline.core.enrich import Batch, add_record
from pipeline.core.envelopes import from_journal_entry
from pipeline.core.registry import OwnershipRegistry
from pipeline.store import clickhouse as ch
from pipeline.tooling.synthetic import Corpus, generate
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


def batches(corpus: Corpus, *bounds: int) -> list[Batch]:
    """The corpus's journal enriched into one Batch per [bounds[i], bounds[i+1]) slice of entries."""
    registry = OwnershipRegistry()
    for ev in events_from_list(corpus.inventory, corpus.end_ns)[0]:
        registry.apply(ev)
    out = []
    for lo, hi in itertools.pairwise(bounds):
        batch = Batch()
        for line in corpus.journal[lo:hi]:
            add_record(batch, from_journal_entry(json.loads(line)), registry, "calico-packet", "cali")
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
    assert written == {"flows": first.flow_rows, "rejects": first.reject_rows, "ownership": 0, "replayed": 0}
    # a batch that starts 100 entries before the end of the first: those (and any later copy of
    # a line of the first batch) are replays
    seen = {table: set(getattr(first, table)["record_id"]) for table in ("flows", "rejects")}
    old = {table: sum(i in seen[table] for i in getattr(overlap, table)["record_id"]) for table in seen}
    assert old["flows"] > 0
    written = sink._write(overlap, [])
    assert written == {"flows": overlap.flow_rows - old["flows"], "rejects": overlap.reject_rows - old["rejects"],
                       "ownership": 0, "replayed": old["flows"] + old["rejects"]}
    flows, flow_ids, rejects, reject_ids, connections, egress = counts(client)
    assert (flows, flow_ids, rejects, reject_ids) == (exp.records, exp.records, exp.rejected, exp.rejected)
    assert connections == egress > 0  # edges counted every attributed egress row once

    # the whole journal again: every row a replay, nothing stored twice
    written = sink._write(whole, [])
    assert written == {"flows": 0, "rejects": 0, "ownership": 0, "replayed": exp.records + exp.rejected}
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
    assert written == {"flows": 0, "rejects": batch.reject_rows, "ownership": 0, "replayed": batch.flow_rows}
    monkeypatch.undo()
    flows, flow_ids, rejects, reject_ids, connections, egress = counts(client)
    assert (flows, flow_ids, rejects, reject_ids) == (batch.flow_rows,) * 2 + (batch.reject_rows,) * 2
    assert connections == egress
    assert client.query("SELECT count() FROM flows_staging").result_rows == [(0,)]
    assert client.query("SELECT count() FROM rejects_staging").result_rows == [(0,)]
