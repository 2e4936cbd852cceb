"""A packet is one record whatever path brought its line: the same journal through three shippers.

A real `flows up`; the corpus' journal shipped as a journal-JSON file, then the same entries as
promtail/alloy push journald to Loki (entry time = __REALTIME_TIMESTAMP, line = MESSAGE, node in a
label) through `flows ship loki` and the Loki stand-in, then as fluent-bit's Kafka records. The
answer must not move: one `flows` row per packet. Raw lines, which carry no time, are one record
per (host, text) when their unchanged file is shipped again.
"""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from pipeline.basics.config import Settings
from pipeline.core.calico_line import LineRejected, parse_message
from pipeline.tooling.synthetic import generate, to_fluentbit
from pipeline.transport.kafka import make_producer
from tests.standins.loki_standin import NS, LokiStandin
from tests.system.test_e2e import fanout_of, load_inventory

pytestmark = pytest.mark.slow


def promtail_entries(journal: list[str]) -> list[tuple[dict[str, str], int, str]]:
    """journald as promtail/alloy push it to Loki, the node in a `host` label (a relabel of _HOSTNAME)."""
    out = []
    for line in journal:
        d = orjson.loads(line)
        labels = {"job": "systemd-journal", "host": d["_HOSTNAME"], "transport": d["_TRANSPORT"]}
        out.append((labels, int(d["__REALTIME_TIMESTAMP"]) * 1000, d["MESSAGE"]))
    return out


def valid_calico(message: str) -> bool:
    try:
        return parse_message(message) is not None
    except LineRejected:
        return False


def test_same_lines_through_journal_loki_and_fluentbit_are_one_row_each(stack_factory, tmp_path):
    corpus = generate(seed=41, namespaces=8, records=3_000)
    exp = corpus.expected
    stack = stack_factory().start()
    load_inventory(stack, corpus, tmp_path)

    def one_row_per_packet() -> None:
        assert stack.json("sql", "SELECT count() AS n, uniqExact(record_id) AS u FROM flows") == [
            {"n": exp.records, "u": exp.records}]

    def consumed(records: int) -> None:
        stack.wait_for(lambda: (c := stack.status()["conservation"])["received"] >= records and c["pending"] == 0,
                       what=f"{records} records consumed")

    journal = tmp_path / "journal.jsonl"
    journal.write_text("\n".join(corpus.journal) + "\n")
    stack.run("ship", "file", "--format", "journal-json", str(journal))
    summary = stack.wait_for_stored(exp.records, exp.rejected)
    assert (summary["records"], summary["rejected"]) == (exp.records, exp.rejected)
    received = len(corpus.journal)
    consumed(received)
    fanout = fanout_of(stack)
    assert fanout == exp.fanout
    one_row_per_packet()

    loki = LokiStandin(max_entries=1000)
    with loki.running():
        received += loki.push_many(promtail_entries(corpus.journal))
        start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(corpus.start_ns // NS))
        end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(corpus.end_ns // NS + 1))
        stack.run("ship", "loki", "--url", loki.url, "--query", '{job="systemd-journal"}', "--since", start,
                  "--until", end, "--checkpoint", str(tmp_path / "loki.json"))
    consumed(received)
    assert stack.json("report", "summary") == summary
    one_row_per_packet()

    settings = Settings(kafka_bootstrap=f"127.0.0.1:{stack.port}")

    async def fluent_bit() -> None:
        producer = make_producer(settings, linger_ms=5)
        await producer.start()
        try:
            acks = [await producer.send(settings.raw_topic, orjson.dumps(to_fluentbit(line)))
                    for line in corpus.journal]
            await asyncio.gather(*acks)
        finally:
            await producer.stop()

    asyncio.run(fluent_bit())
    received += len(corpus.journal)
    consumed(received)
    assert stack.json("report", "summary") == summary
    assert fanout_of(stack) == fanout
    one_row_per_packet()

    # Raw lines: identical lines are one record, and shipping the unchanged file again is a replay.
    lines = sorted({d["MESSAGE"] for d in map(orjson.loads, corpus.journal) if valid_calico(d["MESSAGE"])})[:50]
    raw = tmp_path / "dmesg.txt"
    raw.write_text("\n".join(lines + lines[:10]) + "\n")
    for _ in range(2):
        stack.run("ship", "file", "--format", "raw", "--host", "node-raw", str(raw))
        received += len(lines) + 10
        consumed(received)
        assert stack.json("sql", "SELECT count() AS n, uniqExact(record_id) AS u FROM flows WHERE source = 'raw'") == [
            {"n": len(lines), "u": len(lines)}]
