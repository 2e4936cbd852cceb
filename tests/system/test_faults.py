"""Fault tolerance with real processes: killed workers, failing inserts, a frozen broker, hostile input.

The promise under test: every record shipped is stored once or rejected with a
reason, and the fan-out is exact, whatever was killed or unavailable meanwhile.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import orjson
import pytest

from pipeline.basics.config import Settings
from pipeline.tooling.synthetic import generate
from pipeline.transport.kafka import make_producer
from tests.conftest import ROOT
from tests.system.test_e2e import FANOUT_KEYS, load_inventory

pytestmark = pytest.mark.slow


def fanout(stack) -> dict:
    return {r["namespace"]: {k: r[k] for k in FANOUT_KEYS} for r in stack.json("report", "fanout")}


def exact_counts(stack, expected) -> None:
    summary = stack.json("report", "summary")
    assert (summary["records"], summary["rejected"], summary["unattributed"]) == (
        expected.records, expected.rejected, expected.unowned_sources), stack.json(
        "sql", "SELECT src_match, src_kind, count() AS n FROM flows GROUP BY ALL ORDER BY ALL")
    [row] = stack.json("sql", "SELECT count() AS n, uniqExact(record_id) AS u FROM flows")
    assert row == {"n": expected.records, "u": expected.records}  # no duplicate rows, not even unmerged ones
    assert fanout(stack) == expected.fanout


def test_worker_killed_repeatedly_mid_batch(stack_factory, broker, tmp_path):
    corpus = generate(seed=21, namespaces=30, records=100_000)
    env = {"FLOWS_KAFKA_BOOTSTRAP": broker.bootstrap, "FLOWS_BATCH_MAX_RECORDS": "5000"}
    worker = stack_factory("w", "worker", **env).start()
    load_inventory(worker, corpus, tmp_path)
    journal = tmp_path / "journal.jsonl"
    journal.write_text("\n".join(corpus.journal) + "\n")
    shipper = subprocess.Popen([sys.executable, "-m", "pipeline", "ship", "file", str(journal)], env=worker.env,
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kills = 0
    for _ in range(3):
        time.sleep(1.5)
        worker.kill()
        kills += 1
        worker.start(timeout=90)
    _, stderr = shipper.communicate(timeout=300)
    assert shipper.returncode == 0, stderr.decode()[-2000:]
    worker.wait_for_stored(corpus.expected.records, corpus.expected.rejected)
    time.sleep(1.5)  # anything still in flight would show up as an excess below
    assert kills == 3
    exact_counts(worker, corpus.expected)
    worker.stop()
    exact_counts(worker, corpus.expected)  # and straight from chDB, with no worker running
    worker.run("migrate")  # seals every day no worker pass sealed yet
    [left] = worker.json("sql", "SELECT count() AS n FROM (SELECT DISTINCT toDate(ts) AS d FROM flows)"
                                " WHERE d NOT IN (SELECT day FROM edge_sealed_days)")
    assert left == {"n": 0}
    exact_counts(worker, corpus.expected)  # days whose flows parts are unchanged now answer from their seals


def test_clickhouse_failing_inserts_backpressure_then_recovery(stack_factory, tmp_path):
    corpus = generate(seed=22, namespaces=10, records=40_000)
    stack = stack_factory(FLOWS_FAULT_INSERT_FAILURES="20", FLOWS_INSERT_RETRY_MAX_S="2",
                          FLOWS_BATCH_MAX_RECORDS="5000", FLOWS_INSERT_BLOCKED_READY_S="1").start()
    load_inventory(stack, corpus, tmp_path)

    def status() -> dict:  # `flows status` exits 1 while not ready
        return json.loads(stack.run("status", "--json", check=False).stdout)

    journal = tmp_path / "j.jsonl"
    journal.write_text("\n".join(corpus.journal))
    stack.run("ship", "file", str(journal))
    # The shipper returns once Kafka has the records; the worker's first insert attempt may come a moment later.
    stack.wait_for(lambda: status()["insert_blocked"] is True, what="the first failing insert")
    blocked = status()
    assert blocked["insert_blocked"] is True and "injected insert failure" in blocked["last_insert_error"]
    assert blocked["totals"].get("stored", 0) == 0
    # Backpressure: while blocked the worker holds one batch in flight and one being built, not the backlog,
    # and the lag (messages in Kafka not yet confirmed in ClickHouse) shows what waits.
    assert blocked["batch_pending_records"] < 10_000
    stack.wait_for(lambda: sum(status()["lag"].values()) > 0, what="lag to show the backlog")
    # blocked for longer than FLOWS_INSERT_BLOCKED_READY_S: the probe and `flows status` say not ready
    stack.wait_for(lambda: status()["ready"] is False, what="readiness to drop while blocked")
    assert readyz(stack) == 503
    human = stack.run("status", check=False)
    assert human.returncode == 1 and "inserts failing" in human.stdout.decode() and "blocked" in human.stdout.decode()
    metrics = stack.run("sql", "SELECT 1", "--format", "json")  # queries still answer during the outage
    assert json.loads(metrics.stdout) == [{"1": 1}]
    stack.wait_for_stored(corpus.expected.records, corpus.expected.rejected)
    stack.wait_for(lambda: sum(status()["lag"].values()) == 0, what="lag back to zero")
    after = status()
    assert after["insert_blocked"] is False and after["last_insert_error"] == ""
    assert after["ready"] is True and readyz(stack) == 200
    exact_counts(stack, corpus.expected)


def readyz(stack) -> int:
    """HTTP status of the stack's /readyz (its control endpoint is in the stack file)."""
    url = json.loads((stack.home / "run" / "stack.json").read_text())["control_url"] + "/readyz"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - a loopback http URL we wrote
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_frozen_broker_shipper_waits_and_nothing_is_lost(stack_factory, broker, tmp_path):
    corpus = generate(seed=23, namespaces=10, records=20_000)
    worker = stack_factory("w", "worker", FLOWS_KAFKA_BOOTSTRAP=broker.bootstrap).start()
    load_inventory(worker, corpus, tmp_path)
    journal = tmp_path / "j.jsonl"
    journal.write_text("\n".join(corpus.journal))
    assert broker.proc is not None
    os.kill(broker.proc.pid, signal.SIGSTOP)  # unreachable but not lost: the memory broker keeps its log
    try:
        shipper = subprocess.Popen([sys.executable, "-m", "pipeline", "ship", "file", str(journal)],
                                   env=worker.env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(5)
        assert shipper.poll() is None  # still waiting for acknowledgements, not claiming success
    finally:
        os.kill(broker.proc.pid, signal.SIGCONT)
    _, stderr = shipper.communicate(timeout=120)
    assert shipper.returncode == 0, stderr.decode()[-2000:]
    worker.wait_for_stored(corpus.expected.records, corpus.expected.rejected)
    exact_counts(worker, corpus.expected)


def test_hostile_input_never_stalls_a_partition(stack_factory, tmp_path):
    corpus = generate(seed=24, namespaces=8, records=3_000)
    # The odd lines are live and no pod owns their source: after the inventory's snapshot nothing vouches for
    # ownership, so they wait FLOWS_HOLD_MAX_S before being stored unattributed (docs/attribution.md).
    stack = stack_factory(FLOWS_HOLD_MAX_S="5").start()
    load_inventory(stack, corpus, tmp_path)
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{stack.port}")
    prefix = "calico-packet: IN=cali0123456789a OUT=eth0 "

    def poison(partition: int) -> list[bytes]:
        def one(n: int, ts: int, msg: str) -> bytes:
            rid = f"{partition}{n}".rjust(32, "0")
            return orjson.dumps({"v": 1, "records": [{"id": rid, "ts": ts, "host": "h", "msg": msg, "src": "j"}]})

        return [
            b"\x80" + os.urandom(1999), b"\xff\xfe\x00 calico-packet: IN=\xc3\x28", b"{" * 5000, b"[" * 100_000,
            one(0, 4_000_000_000 * 10**9, prefix + "SRC=1.2.3.4 DST=5.6.7.8 PROTO=TCP SPT=1 DPT=2 "),  # year 2096
            one(1, 1, prefix + "SRC=1.2.3.4 DST=5.6.7.8 PROTO=TCP SPT=1 DPT=2 "),  # 1970
            one(2, time.time_ns(), prefix + "SRC=::ffff:1.2.3.4 DST=0:0::1 PROTO=UDP SPT=0 DPT=65535 "),
            orjson.dumps({"MESSAGE": "calico-packet: " + "x" * 3_000_000, "@timestamp": time.time()}),
            b"", b"null", b'"str"', b"12",
        ]

    async def produce() -> None:
        producer = make_producer(settings)
        await producer.start()
        try:
            for partition in range(3):  # every partition gets its share of poison
                for value in poison(partition):
                    await producer.send_and_wait(settings.raw_topic, value, partition=partition)
        finally:
            await producer.stop()

    asyncio.run(produce())
    hostile = tmp_path / "hostile.log"
    hostile.write_bytes(b"\n".join([b"\x00\x01\x02 garbage", b"calico-packet: IN=" + b"A" * 10_000_000,
                                    "calico-packet: IN=cali\u00e9 OUT=\ud800".encode("utf-8", "surrogatepass"),
                                    b"\xff" * 100]))
    stack.run("ship", "file", "--format", "raw", "--host", "n1", str(hostile))
    journal = tmp_path / "j.jsonl"
    journal.write_text("\n".join(corpus.journal))
    stack.run("ship", "file", str(journal))
    exp = corpus.expected
    # The good corpus behind the poison is stored exactly: no partition stalled.
    stack.wait_for(lambda: stack.json("report", "summary")["records"] >= exp.records + 3, what="good records")
    summary = stack.json("report", "summary")
    assert summary["records"] == exp.records + 3  # one parseable odd-IP line per partition
    [row] = stack.json("sql", "SELECT countIf(reason = 'too_long') AS long, "
                              "countIf(reason = 'timestamp_out_of_range') AS ts, countIf(stage = 'envelope') AS env "
                              "FROM rejects")
    # 3 MB fluent-bit records, the 10 MB line. (The random bytes start with 0x80: a blob whose first byte
    # happened to be "{" was decoded as a JSON envelope, one more envelope reject, ~1 run in 85.)
    assert (row["long"], row["ts"], row["env"]) == (3 + 1, 6, 3), stack.json(
        "sql", "SELECT stage, reason, kafka_partition AS p, kafka_offset AS o, hex(record_id) AS id, count() AS n "
               "FROM rejects GROUP BY ALL ORDER BY ALL")
    assert stack.status()["ready"] is True
    odd = stack.json("sql", "SELECT DISTINCT toString(src_ip) AS s, toString(dst_ip) AS d, src_port, dst_port "
                            "FROM flows WHERE host = 'h'")
    assert odd == [{"s": "::ffff:1.2.3.4", "d": "::1", "src_port": 0, "dst_port": 65535}]


def test_sigterm_during_an_insert_outage_stops_within_seconds(stack_factory, tmp_path):
    corpus = generate(seed=25, namespaces=6, records=3_000)
    # three batches: one in flight, failing; one waiting for it, tried once more on the way out
    stack = stack_factory(FLOWS_FAULT_INSERT_FAILURES="1000", FLOWS_INSERT_RETRY_MAX_S="2",
                          FLOWS_BATCH_MAX_RECORDS="1000").start()
    load_inventory(stack, corpus, tmp_path)
    journal = tmp_path / "j.jsonl"
    journal.write_text("\n".join(corpus.journal))
    stack.run("ship", "file", str(journal))
    stack.wait_for(lambda: stack.status()["insert_blocked"], what="the outage to show")
    assert stack.stop() < 6
    assert stack.proc.returncode == 0
    assert "its records are replayed on restart" in stack.log.read_text()
