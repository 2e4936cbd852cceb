"""Every shipper, as a real process against a real broker, when Kafka does not acknowledge one send.

The promise: a checkpoint never moves past a record Kafka did not acknowledge; the shipper stops
with a one-line error and a non-zero exit; the same command run again fills the gap, so every
record is in Kafka. The lost send is injected at the producer boundary (tests/standins/lossy_kafka.py).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest
from aiokafka import TopicPartition

from pipeline.basics.config import Settings
from pipeline.core.envelopes import decode_message, from_journal_entry, iter_file_records
from pipeline.core.models import RawRecord
from pipeline.sources.journal import JournalSource, journalctl_argv
from pipeline.sources.shipper import undecodable_record
from pipeline.tooling.synthetic import generate
from pipeline.transport.broker import EmbeddedBroker, free_port
from pipeline.transport.kafka import make_consumer
from tests.conftest import ROOT, flows, flows_env
from tests.standins.loki_standin import NS, LokiStandin
from tests.system.test_journal import PREFIX, needs_journal_tools, write_journal

pytestmark = pytest.mark.slow
BASE = 1_795_000_000 * NS  # 2026-11-18T11:06:40Z


@pytest.fixture
def env(tmp_path: Path):
    """A broker of its own (topics created) and the environment of commands that ship to it."""
    broker = EmbeddedBroker(free_port(), tmp_path / "broker.log")
    asyncio.run(broker.start())
    try:
        environ = flows_env(tmp_path / "home", broker.port, FLOWS_KAFKA_BOOTSTRAP=broker.bootstrap)
        flows(environ, "topics", "create")
        yield environ
    finally:
        broker.stop()


def lossy(env: dict[str, str], lose: int, *args: str) -> subprocess.CompletedProcess:
    """`flows …` whose Kafka send number ``lose`` is never acknowledged."""
    return subprocess.run([sys.executable, "-m", "tests.standins.lossy_kafka", *args], env={
        **env, "FLOWS_TEST_LOSE_SEND": str(lose)}, capture_output=True, timeout=180, cwd=ROOT)


def in_kafka(env: dict[str, str]) -> list[RawRecord]:
    """Every record on the raw topic, in no particular order."""
    settings = Settings(kafka_bootstrap=env["FLOWS_KAFKA_BOOTSTRAP"])

    async def read() -> list[RawRecord]:
        consumer = make_consumer(settings, group_id=None)
        await consumer.start()
        try:
            await consumer.topics()
            tps = [TopicPartition(settings.raw_topic, p) for p in consumer.partitions_for_topic(settings.raw_topic)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            out: list[RawRecord] = []
            while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    for msg in messages:
                        records, errors = decode_message(msg.value)
                        assert not errors
                        out += records
            return out
        finally:
            await consumer.stop()

    return asyncio.run(read())


def assert_stopped_on_the_lost_send(proc: subprocess.CompletedProcess) -> None:
    stderr = proc.stderr.decode()
    assert proc.returncode == 2, stderr[-2000:]
    [line] = [ln for ln in stderr.splitlines() if "did not acknowledge" in ln]
    assert line.startswith("error: Kafka did not acknowledge ") and "(KafkaTimeoutError)" in line, stderr[-2000:]
    assert line.endswith("run the same command again to ship them (a checkpoint stays before them)"), line


def test_ship_file_stops_on_a_lost_send_and_a_rerun_fills_the_gap(env, tmp_path):
    lines = generate(seed=31, namespaces=6, records=3_000).journal
    journal = tmp_path / "journal.jsonl"
    journal.write_text("\n".join(lines) + "\n")
    want = {(i if isinstance(i, RawRecord) else undecodable_record(i, "journal-json")).record_id
            for i in iter_file_records("journal-json", lines)}
    command = ("ship", "file", "--format", "journal-json", str(journal))

    assert_stopped_on_the_lost_send(lossy(env, 2, *command))
    first = {r.record_id for r in in_kafka(env)}
    assert first < want  # a whole message is missing

    flows(env, *command)
    assert {r.record_id for r in in_kafka(env)} == want


def test_ship_loki_checkpoint_stays_before_a_lost_send(env, tmp_path):
    entries = [({"job": "j", "hostname": f"node{i % 3}"}, BASE + i * 10**6, f"calico-packet: line {i}")
               for i in range(6_000)]
    checkpoint = tmp_path / "loki.json"
    loki = LokiStandin(max_entries=500)
    with loki.running():
        loki.push_many(entries)
        loki.latency_s = 0.05  # long enough for a periodic checkpoint before the end
        command = ("ship", "loki", "--url", loki.url, "--query", '{job="j"}', "--since", "2026-11-18T11:06:40Z",
                   "--until", "2026-11-18T11:06:50Z", "--limit", "500", "--checkpoint", str(checkpoint))
        assert_stopped_on_the_lost_send(lossy(env, 5, *command))
        first = in_kafka(env)
        want = {(f"node{i % 3}", ts, line) for i, (_, ts, line) in enumerate(entries)}
        got = {(r.host, r.ts_ns, r.message) for r in first}
        lost = want - got
        assert lost and got <= want
        saved = checkpoint.exists()
        position = json.loads(checkpoint.read_text())["state"]["position_ns"] if saved else BASE
        assert position <= min(ts for _, ts, _ in lost)  # the gap is ahead of the checkpoint

        rerun = flows(env, *command)
        assert ("resuming from checkpoint" in rerun.stderr.decode()) == saved
    everything = in_kafka(env)
    assert {(r.host, r.ts_ns, r.message) for r in everything} == want
    sent = Counter(r.record_id for r in everything)
    assert all(r.ts_ns >= position for r in everything if sent[r.record_id] > 1)  # only the unsaved tail twice


@needs_journal_tools
def test_ship_journal_checkpoint_stays_before_a_lost_send(env, tmp_path):
    corpus = generate(seed=32, namespaces=6, records=2_000)
    distinct = {e["__CURSOR"]: e for e in map(orjson.loads, corpus.journal)}.values()
    journal = tmp_path / "node.journal"
    write_journal(journal, sorted(distinct, key=lambda e: int(e["__REALTIME_TIMESTAMP"])))
    source = JournalSource(files=(str(journal),))
    listed = subprocess.run(journalctl_argv(source, None), capture_output=True, timeout=60, check=True).stdout
    in_order = [orjson.loads(line) for line in listed.splitlines()]
    ids = [from_journal_entry(e).record_id for e in in_order if PREFIX in e["MESSAGE"]]
    checkpoint = tmp_path / "journal.json"
    # cursor saves are counted in records, so the run is deterministic: saved twice, then the lost send
    command = ("ship", "journal", "--file", str(journal), "--checkpoint", str(checkpoint),
               "--flush-records", "300", "--flush-interval", "3600")

    assert_stopped_on_the_lost_send(lossy(env, 8, *command))
    cursor = json.loads(checkpoint.read_text())["state"]["cursor"]
    saved = [i for i, e in enumerate(in_order) if e["__CURSOR"] == cursor][0]
    saved_ids = {from_journal_entry(e).record_id for e in in_order[: saved + 1] if PREFIX in e["MESSAGE"]}
    got = {r.record_id for r in in_kafka(env)}
    assert saved_ids and saved_ids <= got and got < set(ids)  # everything before the cursor is in Kafka

    flows(env, *command)
    assert {r.record_id for r in in_kafka(env)} == set(ids)
