"""End to end through real processes: `flows up` (embedded broker + worker + chDB) and the CLI.

The corpus generator computes the right answer from its own model of the cluster; the
pipeline has to reproduce it exactly, through replays and in every input shape.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import orjson
import pytest

from pipeline.basics.config import Settings
from pipeline.core.claims import events_from_list
from pipeline.tooling.synthetic import Corpus, generate, to_fluentbit, to_syslog
from pipeline.transport.broker import port_free
from pipeline.transport.kafka import make_producer

pytestmark = pytest.mark.slow
FANOUT_KEYS = ("dests", "pod_ns", "svc", "external", "node", "unknown", "connections")


def claims(corpus: Corpus) -> int:
    events, _ = events_from_list(corpus.inventory, time.time_ns())
    return len({ev.key for ev in events})


def fanout_of(stack, *args: str) -> dict[str, dict[str, int]]:
    rows = stack.json("report", "fanout", *args)
    return {r["namespace"]: {k: r[k] for k in FANOUT_KEYS} for r in rows}


def load_inventory(stack, corpus: Corpus, tmp_path: Path) -> None:
    inv = tmp_path / "inventory.json"
    inv.write_bytes(orjson.dumps(corpus.inventory))
    out = stack.run("inventory", "load", str(inv))
    assert b"published" in out.stdout
    stack.wait_for_claims(claims(corpus))


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    return generate(seed=11, namespaces=40, records=30_000)


def test_journal_corpus_exact_fanout_and_counts_survive_replay(stack_factory, corpus, tmp_path):
    stack = stack_factory().start()
    load_inventory(stack, corpus, tmp_path)
    journal = tmp_path / "journal.jsonl"
    journal.write_text("\n".join(corpus.journal) + "\n")
    stack.run("ship", "file", "--format", "journal-json", str(journal))

    exp = corpus.expected
    summary = stack.wait_for_stored(exp.records, exp.rejected)
    assert (summary["records"], summary["rejected"], summary["unattributed"]) == (
        exp.records, exp.rejected, exp.unowned_sources)
    # claims and flows written, and pandas (~40 MB resident, pulled in by pyarrow) not in the worker
    assert "/pandas/" not in Path(f"/proc/{stack.proc.pid}/maps").read_text()
    assert fanout_of(stack) == exp.fanout

    # Ship the whole journal again: a replay must change no answer.
    stack.run("ship", "file", str(journal))  # format sniffed this time
    stack.wait_for(lambda: stack.status()["totals"].get("replayed", 0) >= exp.records + exp.rejected,
                   what="the replay to be consumed")
    assert stack.json("report", "summary") == summary
    assert fanout_of(stack) == exp.fanout
    # Conservation: everything shipped (twice) was received and is accounted for, nothing in flight.
    stack.wait_for(lambda: stack.status()["conservation"]["pending"] == 0, what="nothing in flight")
    status = stack.status()
    assert status["conservation"]["received"] == status["conservation"]["accounted"] == 2 * len(corpus.journal)
    t = status["totals"]
    # Non-Calico records are not stored, so a repeat in another batch is counted ignored again.
    assert t["stored"] == exp.records and t["rejected"] == 2 * exp.rejected and t["ignored"] >= 2 * exp.ignored
    human = stack.run("status").stdout.decode()
    assert f"received {2 * len(corpus.journal)} = stored {exp.records}" in human
    ad_hoc = stack.json("sql", "SELECT count() AS n FROM flows")
    assert ad_hoc == [{"n": exp.records}]

    # Clean, quick shutdown that takes the embedded broker with it.
    assert stack.stop() < 8
    assert stack.proc.returncode == 0
    assert port_free("127.0.0.1", stack.port)
    assert stack.run("status", check=False).returncode != 0


def test_a_baseline_is_saved_while_the_stack_holds_the_store(stack_factory, tmp_path):
    """README's "baseline save && report drift --baseline" against a running `flows up`: the save is a
    write, which the stack's read-only query session refuses, so it goes through the stack's action."""
    small = generate(seed=3, namespaces=6, records=2000)
    stack = stack_factory().start()
    load_inventory(stack, small, tmp_path)
    journal = tmp_path / "journal.jsonl"
    journal.write_text("\n".join(small.journal) + "\n")
    stack.run("ship", "file", str(journal))
    stack.wait_for_stored(small.expected.records, small.expected.rejected)

    saved = stack.run("baseline", "save", "before-rollout").stdout.decode()
    destinations = len(stack.json("sql", "SELECT DISTINCT namespace, dst_kind, dst, proto, port FROM "
                                         "peers(since = '1970-01-01 00:00:00', until = now64(6))"))
    assert f"saved baseline before-rollout: {destinations} destinations of {len(small.expected.fanout)} " \
           "namespaces" in " ".join(saved.split())
    assert stack.json("report", "drift", "--baseline", "before-rollout") == []
    (listed,) = stack.json("baseline", "list")
    assert (listed["name"], listed["destinations"]) == ("before-rollout", destinations)
    again = stack.run("baseline", "save", "before-rollout", check=False)
    assert again.returncode == 2 and b"exists; pass --replace" in again.stderr


def test_commands_follow_flows_up_without_a_pause(stack_factory, tmp_path):
    """README's everyday commands typed straight after `flows up &`: `status --wait` bridges the start."""
    small = generate(seed=4, namespaces=4, records=500)
    stack = stack_factory().launch()
    assert stack.run("status", "--wait", "120", timeout=150).returncode == 0
    load_inventory(stack, small, tmp_path)
    journal = tmp_path / "journal.jsonl"
    journal.write_text("\n".join(small.journal) + "\n")
    stack.run("ship", "file", str(journal))
    summary = stack.wait_for_stored(small.expected.records, small.expected.rejected)
    assert (summary["records"], summary["rejected"]) == (small.expected.records, small.expected.rejected)


def test_syslog_shape_gives_the_same_answer(stack_factory, corpus, tmp_path):
    stack = stack_factory().start()
    load_inventory(stack, corpus, tmp_path)
    kern_log = tmp_path / "kern.log"
    kern_log.write_text("\n".join(to_syslog(line) for line in corpus.journal) + "\n")
    stack.run("ship", "file", "--format", "syslog", str(kern_log))
    exp = corpus.expected
    summary = stack.wait_for_stored(exp.records, exp.rejected)
    assert (summary["records"], summary["rejected"]) == (exp.records, exp.rejected)
    assert fanout_of(stack) == exp.fanout


def test_fluentbit_records_one_per_message(stack_factory, corpus, tmp_path):
    """fluent-bit's Kafka output sends one JSON record per message, with its own timestamp key."""
    stack = stack_factory().start()
    load_inventory(stack, corpus, tmp_path)
    settings = Settings(kafka_bootstrap=f"127.0.0.1:{stack.port}")

    async def produce() -> None:
        producer = make_producer(settings, linger_ms=5)
        await producer.start()
        try:
            futures = [await producer.send(settings.raw_topic, orjson.dumps(to_fluentbit(line)))
                       for line in corpus.journal]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(produce())
    exp = corpus.expected
    summary = stack.wait_for_stored(exp.records, exp.rejected)
    assert (summary["records"], summary["rejected"]) == (exp.records, exp.rejected)
    assert fanout_of(stack) == exp.fanout


def test_time_ranges_and_bad_cli_input(stack_factory, tmp_path):
    small = generate(seed=3, namespaces=8, records=2_000)
    stack = stack_factory().start()
    load_inventory(stack, small, tmp_path)
    journal = tmp_path / "j.jsonl"
    journal.write_text("\n".join(small.journal))
    stack.run("ship", "file", str(journal))
    stack.wait_for_stored(small.expected.records, small.expected.rejected)

    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(small.start_ns // 10**9))
    end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(small.end_ns // 10**9 + 1))
    assert fanout_of(stack, "--since", start, "--until", end) == small.expected.fanout
    assert fanout_of(stack, "--until", start) == {}
    csv_out = stack.run("report", "fanout", "--format", "csv").stdout.decode()
    assert csv_out.splitlines()[0].startswith("namespace,dests,pod_ns,svc,external")

    for args, message in [
        (("report", "fanout", "--since", "yesterday"), "not a time"),
        (("report", "fanout", "--since", "1h", "--until", "2h"), "empty time range"),
        (("report", "fanout", "--format", "xml"), "--format must be one of"),
        (("report", "fanout", "--since", "2026-01-01' OR 1=1 --"), "not a time"),
        (("ship", "file", "--format", "nope", str(journal)), "--format must be one of"),
        (("ship", "file", str(tmp_path / "missing")), "cannot read"),
        (("inventory", "load", str(journal)), "not JSON"),
        (("sql", "SELEC nonsense"), "error"),
    ]:
        proc = stack.run(*args, check=False)
        assert proc.returncode != 0, args
        assert message in proc.stderr.decode(), (args, proc.stderr.decode())

    # Injection through a bound parameter is inert: the namespace is data, never SQL.
    rows = stack.json("sql", "SELECT count() AS n FROM flows WHERE src_namespace = 'x'' OR 1=1 --'")
    assert rows == [{"n": 0}]
    status = stack.status()
    assert status["ready"] is True and json.dumps(status).count("token") == 0


def test_status_without_stack_and_bad_config(tmp_path):
    from tests.conftest import flows, flows_env

    env = flows_env(tmp_path / "nothing", 1)
    proc = flows(env, "status", check=False)
    assert proc.returncode == 1 and "no running stack" in proc.stderr.decode()
    waited = flows(env, "status", "--wait", "1", check=False)  # nothing starting: gives up when the time is up
    assert waited.returncode == 1 and "no running stack" in waited.stderr.decode()
    bad = flows(flows_env(tmp_path, 1, FLOWS_TTL_DAYS="forever"), "report", "summary", check=False)
    assert bad.returncode == 2 and "ttl_days" in bad.stderr.decode()
    sasl = flows(flows_env(tmp_path, 1, FLOWS_KAFKA_BOOTSTRAP="127.0.0.1:1",
                           FLOWS_KAFKA_SECURITY_PROTOCOL="SASL_SSL"), "topics", "create", check=False)
    assert sasl.returncode == 2 and "SASL" in sasl.stderr.decode()
    proc = flows(flows_env(tmp_path, 1), "ship", "file", "-", input=b"x\n", check=False)
    assert proc.returncode == 2 and "no Kafka broker" in proc.stderr.decode()
