"""The Loki shipper against a faithful stand-in of Loki (tests/standins/loki_standin.py), then end to end.

Unit tests ship into a list (the pager, dedupe and checkpoint logic do not need Kafka); the end-to-end
test ships through the real command, RecordProducer, broker and worker into ClickHouse and compares
with the synthetic corpus' ground truth.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import signal
import ssl
import subprocess
import sys
import time
from collections import Counter

import aiohttp
import orjson
import pytest
from typer.testing import CliRunner

from pipeline.basics.backoff import Backoff
from pipeline.cli.ship import Reporter, resolve_start, ship_loki
from pipeline.core.calico_iface import cali_iface_name
from pipeline.core.envelopes import UNDECODABLE
from pipeline.core.models import RawRecord
from pipeline.sources.checkpoint import Checkpoint
from pipeline.sources.loki.client import LokiAuth, LokiClient, ssl_option
from pipeline.sources.loki.errors import LokiError, LokiHTTPError, parse_retry_after, retry_delay
from pipeline.sources.loki.logql import NS, LogQuery, loki_duration_ns, loki_time
from pipeline.sources.loki.shipper import LokiShipper, instant_ranges
from pipeline.sources.loki.streams import decode_result, decode_tail
from pipeline.tooling.synthetic import Corpus, generate
from tests.standins.loki_standin import Fault, LokiStandin, Query, go_duration, prom_duration

BASE = 1_795_000_000 * NS  # 2026-11-18T11:06:40Z
Q = LogQuery.parse('{job="j"}')


class ListSink:
    """Collects records; ``fail_after`` makes it fail like a broker that went away."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.records: list[RawRecord] = []
        self.flushes = 0
        self.fail_after = fail_after

    async def add(self, rec: RawRecord) -> None:
        if self.fail_after is not None and len(self.records) >= self.fail_after:
            raise RuntimeError("broker gone")
        self.records.append(rec)

    async def flush(self) -> None:
        if self.fail_after is not None and len(self.records) >= self.fail_after:
            raise RuntimeError("broker gone")
        self.flushes += 1


def identity(rec: RawRecord) -> tuple:
    return tuple(sorted((rec.labels or {}).items())), rec.ts_ns, rec.message


def shipped_counts(sink: ListSink) -> Counter:
    return Counter(identity(r) for r in sink.records)


async def backfill(loki: LokiStandin, sink: ListSink, start: int, end: int, query: LogQuery = Q,
                   **kw) -> LokiShipper:
    client_kw = {k: kw.pop(k) for k in ("timeout_s", "attempts", "auth", "org_id", "ssl_opt", "host_labels")
                 if k in kw}
    async with LokiClient(loki.url, backoff_s=0.01, backoff_cap_s=0.05, **client_kw) as client:
        shipper = LokiShipper(client, query, sink, position=start, **kw)
        await shipper.backfill(end)
    return shipper


# --- pure helpers ------------------------------------------------------------------

def test_log_query_split_and_exact_stream_selector():
    q = LogQuery.parse(' {job="a}b", host=~`x{1}`} |= "calico-packet" != "}" ')
    assert q.selector == '{job="a}b", host=~`x{1}`}'
    assert q.pipeline == '|= "calico-packet" != "}"'
    one = q.for_stream({"job": 'we"ird\\', "host": "n1"}, {"job", "host", "unit"})
    assert one.text == '{host="n1", job="we\\"ird\\\\", unit=""} |= "calico-packet" != "}"'
    parsed = Query(one.text)  # the stand-in (Loki's grammar) reads it back
    assert parsed.selects({"job": 'we"ird\\', "host": "n1"})
    assert not parsed.selects({"job": 'we"ird\\', "host": "n1", "unit": "kernel"})
    for bad, message in [('rate({a="b"}[5m])', "log query"), ('{a="b"', "not closed")]:
        with pytest.raises(ValueError, match=message):
            LogQuery.parse(bad)


def test_times_durations_and_backoff():
    assert loki_time(BASE) == str(BASE) and len(loki_time(BASE)) == 19
    assert loki_time(5) == "1970-01-01T00:00:00.000000005Z"  # never 10 digits or fewer: Loki reads seconds
    assert loki_duration_ns("721h0m0s") == 721 * 3600 * NS
    assert loki_duration_ns("30d1h") == 721 * 3600 * NS
    assert loki_duration_ns("1m0.5s") == 60 * NS + NS // 2
    assert loki_duration_ns("soon") is None and loki_duration_ns("1h junk") is None
    for ns in (1, NS, 3601 * NS + 5, 721 * 3600 * NS, 45 * 86400 * NS):  # the stand-in's texts parse back
        assert loki_duration_ns(go_duration(ns)) == ns
    assert loki_duration_ns(prom_duration(721 * 3600 * NS)) == 721 * 3600 * NS
    assert retry_delay(Backoff(0.5, 30, rand=lambda: 1.0)) == 0.5  # no Retry-After: the backoff's own delay
    assert retry_delay(Backoff(0.5, 30), retry_after_s=7) == 7
    assert retry_delay(Backoff(0.5, 30), retry_after_s=10**6) == 300
    assert retry_delay(Backoff(8, 30, rand=lambda: 1.0), retry_after_s=2) == 8  # the longer of the two
    assert parse_retry_after("3") == 3 and parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert 0 <= parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") <= 1
    assert instant_ranges([5, 3 * NS, 1, 3 * NS, 9 * NS]) == [(1, 6), (3 * NS, 3 * NS + 1), (9 * NS, 9 * NS + 1)]


def test_malformed_answers_never_raise_and_are_kept():
    entries = decode_result([
        {"stream": {"hostname": "n1"}, "values": [[str(BASE), "ok"], [str(BASE + 1), 7], ["later", "x"], "junk"]},
        {"values": [[str(BASE), "no labels"]]},
        {"stream": {"hostname": "n2"}, "values": [[str(BASE + 2), '{"MESSAGE": "inner"}']]},
    ])
    assert [e.ts for e in entries] == [BASE, BASE + 1, -1, -1, -1, BASE + 2]
    good = entries[0].record
    assert (good.host, good.labels, good.message, good.source) == ("n1", {"hostname": "n1"}, "ok", "loki")
    assert entries[-1].record.message == "inner"
    bad = [e for e in entries if e.undecodable]
    assert len(bad) == 4 and all(e.record.source.startswith(UNDECODABLE) for e in bad)
    assert len({e.record.record_id for e in bad}) == 4  # each keeps its own text and identity
    assert '"later"' in bad[1].record.message
    assert decode_result({"not": "a list"})[0].undecodable
    assert decode_tail("{garbage").malformed and decode_tail("[1]").malformed
    msg = decode_tail(orjson.dumps({"streams": [], "dropped_entries": [
        {"labels": {"a": "b"}, "timestamp": str(BASE)}, {"labels": '{a="b", c="d"}', "timestamp": "7"},
        {"labels": 5, "timestamp": "8"}, {"timestamp": "x"}]}))
    assert msg.dropped == [("a='b'", BASE), ("a='b',c='d'", 7), (None, 8)] and msg.malformed


# --- the stand-in is Loki ---------------------------------------------------------------

async def test_standin_follows_loki_semantics():
    loki = LokiStandin(max_entries=200, max_query_length_s=3600)
    with loki.running():
        loki.push_many([({"job": "j", "host": f"n{i % 3}"}, BASE + (i // 4) * NS, f"l{i}") for i in range(120)])
        assert not loki.push({"job": "j", "host": "n0"}, BASE, "l0")  # identical entry stored once
        async with aiohttp.ClientSession() as http:
            async def get(path: str = "query_range", **params: str) -> tuple[int, object]:
                async with http.get(f"{loki.url}/loki/api/v1/{path}", params=params) as r:
                    return r.status, (await r.json() if r.status == 200 else await r.text())

            status, text = await get(query='{job="j"}', start=str(BASE), end=str(BASE + 3000 * NS), limit="201")
            assert (status, text) == (400, "max entries limit per query exceeded, limit > max_entries_limit "
                                           "(201 > 200)\n")
            status, text = await get(query='{job="j"}', start=str(BASE), end=str(BASE + 3601 * NS))
            assert status == 400 and "the query time range exceeds the limit (query length: 1h0m1s, limit: 1h)" in text
            status, text = await get(query='{job=~".*"}', start=str(BASE), end=str(BASE + NS))
            assert status == 400 and "at least one" in text

            def values(doc) -> list[tuple[int, str]]:
                return sorted((int(ts), line) for s in doc["data"]["result"] for ts, line in s["values"])

            # start inclusive, end exclusive; default limit 100; default direction backward
            _, doc = await get(query='{job="j"}', start=str(BASE + NS), end=str(BASE + 3 * NS), direction="forward")
            assert [ts for ts, _ in values(doc)] == [BASE + NS] * 4 + [BASE + 2 * NS] * 4
            assert all(len(s["stream"]) == 2 for s in doc["data"]["result"])  # grouped per stream
            _, doc = await get(query='{job="j"}', start=str(BASE), end=str(BASE + 3000 * NS))
            assert len(values(doc)) == 100 and values(doc)[0][0] == BASE + 5 * NS
            # ≤10-digit integers are seconds, RFC3339 works, line filters apply
            _, doc = await get(query='{job="j"} |= "l1"', start=str(BASE // NS), end="2026-11-18T11:07:05Z",
                               direction="forward", limit="50")
            assert {line for _, line in values(doc)} == {"l1", "l10", "l11", "l12", "l13", "l14", "l15",
                                                         "l16", "l17", "l18", "l19"}
            status, doc = await get("series", **{"match[]": '{job="j", host="n1"}'}, start=str(BASE),
                                    end=str(BASE + 3000 * NS))
            assert doc["data"] == [{"job": "j", "host": "n1"}]


# --- paging exactly once -------------------------------------------------------------------

def adversarial_layout(seed: int, limit: int) -> list[tuple[dict[str, str], int, str]]:
    """Bursts on single nanoseconds around every multiple of the limit, streams nested and interleaved."""
    rng = random.Random(seed)
    streams = [{"job": "j"}, {"job": "j", "host": "a"}, {"job": "j", "host": "b"},
               {"job": "j", "host": "b", "unit": "kernel"}, {"job": "other"}][: rng.randint(2, 5)]
    entries: list[tuple[dict[str, str], int, str]] = []
    per_instant: Counter = Counter()
    t = BASE
    for i in range(rng.randint(40, 120)):
        t += rng.choice((0, 1, 1, 1000, NS))
        for j in range(rng.choice((1, 1, 2, limit - 1, limit, limit + 1, 2 * limit + 3, 3 * limit))):
            stream = streams[j % len(streams)]
            if per_instant[t, id(stream)] < limit - 1:  # one stream alone stays under the limit per instant
                per_instant[t, id(stream)] += 1
                entries.append((stream, t, f"l{i}-{j}" + (" skip" if rng.random() < 0.1 else "")))
    return entries


@pytest.mark.parametrize("seed", range(12))
async def test_backfill_ships_every_entry_exactly_once(seed):
    limit = random.Random(seed).choice((3, 4, 5, 7, 10, 12))
    loki = LokiStandin(seed=seed, max_entries=limit)
    with loki.running():
        loki.push_many(adversarial_layout(seed, limit))
        sink = ListSink()
        query = LogQuery.parse('{job="j"} != "skip"')
        shipper = await backfill(loki, sink, BASE, BASE + 10**6 * NS, query, limit=limit)
    want = {e for e in loki.entries() if ("job", "j") in e[0] and "skip" not in e[2]}
    got = shipped_counts(sink)
    assert set(got) == want and max(got.values()) == 1, (len(got), len(want))
    assert shipper.position == BASE + 10**6 * NS and shipper.stats.incomplete == 0


async def test_a_burst_cut_at_every_page_boundary():
    """Every page of 10 ends inside a 7-entry nanosecond spread over two interleaved streams."""
    loki = LokiStandin(max_entries=10)
    entries = [({"job": "j", "host": "ab"[k % 2]}, BASE + i * 1000, f"e{i}-{k}") for i in range(40) for k in range(7)]
    with loki.running():
        loki.push_many(entries)
        sink = ListSink()
        shipper = await backfill(loki, sink, BASE, BASE + NS, limit=10)
    assert sorted(shipped_counts(sink).values()) == [1] * 280
    assert shipper.stats.splits == 0 and shipper.stats.queries < 100


async def test_an_instant_over_the_limit_is_split_by_stream():
    loki = LokiStandin(max_entries=12)
    nested = [{"job": "j"}, {"job": "j", "host": "a"}, {"job": "j", "host": "a", "unit": "k"}]
    with loki.running():
        loki.push_many([(nested[i % 3], BASE + 5, f"x{i}") for i in range(33)])
        loki.push_many([(nested[0], BASE + 4, "before"), (nested[1], BASE + 6, "after")])
        sink = ListSink()
        shipper = await backfill(loki, sink, BASE, BASE + NS, limit=12)
        assert set(shipped_counts(sink)) == loki.entries() and len(sink.records) == 35
        assert shipper.stats.splits == 1 and shipper.stats.incomplete == 0
        series = [r for r in loki.requests if r[0].endswith("/series")]
        assert len(series) == 1 and series[0][1]["match[]"] == '{job="j"}'


async def test_one_stream_over_the_limit_in_one_nanosecond_is_reported(caplog):
    loki = LokiStandin(max_entries=10)
    with loki.running():
        loki.push_many([({"job": "j"}, BASE + 5, f"x{i}") for i in range(15)] + [({"job": "j"}, BASE + 9, "later")])
        sink = ListSink()
        with caplog.at_level(logging.ERROR, "flows.loki"):
            shipper = await backfill(loki, sink, BASE, BASE + NS, limit=10)
    assert shipper.stats.incomplete == 1 and "may be missing" in caplog.text
    assert len(sink.records) == 11 and max(shipped_counts(sink).values()) == 1  # what it could get, once


async def test_limit_above_the_server_maximum_and_long_ranges_adapt(caplog):
    loki = LokiStandin(max_entries=20, max_query_length_s=3600)
    with loki.running():
        loki.push_many([({"job": "j", "host": f"n{i % 2}"}, BASE + i * 97 * NS + i % 3, f"x{i}") for i in range(150)])
        sink = ListSink()
        with caplog.at_level(logging.WARNING, "flows.loki"):
            shipper = await backfill(loki, sink, BASE, BASE + 5 * 3600 * NS, limit=500, chunk_ns=5 * 3600 * NS)
        assert set(shipped_counts(sink)) == loki.entries() and len(sink.records) == 150
        assert shipper.limit == 20 and shipper.chunk_ns <= 3600 * NS
        assert "at most 20 entries per query" in caplog.text and "max_query_length is 1h" in caplog.text


async def test_transient_failures_are_retried_and_permanent_ones_say_why():
    loki = LokiStandin(max_entries=10)
    with loki.running():
        loki.push_many([({"job": "j"}, BASE + i, f"x{i}") for i in range(35)])
        loki.faults = [Fault("status", status=429, retry_after="1", body="too many outstanding requests"),
                       Fault("status", status=502, body="bad gateway"), Fault("malformed"),
                       Fault("slow", delay_s=1.5), Fault("status", path="series", status=503)]
        sink = ListSink()
        started = time.monotonic()
        await backfill(loki, sink, BASE, BASE + NS, limit=10, timeout_s=0.5)
        assert time.monotonic() - started >= 1  # Retry-After respected
        assert sorted(shipped_counts(sink).values()) == [1] * 35

        loki.faults = [Fault("status", status=503, body="ingester unhealthy")] * 3
        with pytest.raises(LokiError, match="failed 3 times.*HTTP 503: ingester unhealthy"):
            await backfill(loki, ListSink(), BASE, BASE + NS, attempts=3)
        with pytest.raises(LokiHTTPError, match="HTTP 400.*parse error at line 1"):
            await backfill(loki, ListSink(), BASE, BASE + NS, LogQuery.parse('{job="j"} |x "y"'))


async def test_malformed_entries_are_shipped_as_rejects_and_labels_travel():
    loki = LokiStandin()
    with loki.running():
        loki.push_many([({"job": "j", "hostname": "node3"}, BASE + i, f"x{i}") for i in range(5)])
        loki.faults = [Fault("bad_entries")]
        sink = ListSink()
        shipper = await backfill(loki, sink, BASE, BASE + NS, limit=100)
    good = [r for r in sink.records if r.source == "loki"]
    assert len(good) == 5 and all(r.host == "node3" and r.labels == {"job": "j", "hostname": "node3"} for r in good)
    assert shipper.stats.undecodable == 4 == len(sink.records) - 5


async def test_host_labels_name_the_node_of_each_entry():
    loki = LokiStandin()
    with loki.running():
        loki.push_many([({"job": "j", "instance": "promtail-7", "nodename": "node1"}, BASE, "a"),
                        ({"job": "j", "instance": "node2"}, BASE + 1, "b")])
        default, chosen = ListSink(), ListSink()
        await backfill(loki, default, BASE, BASE + NS)
        await backfill(loki, chosen, BASE, BASE + NS, host_labels=("instance",))
    assert sorted((r.message, r.host) for r in default.records) == [("a", "node1"), ("b", "node2")]
    assert sorted((r.message, r.host) for r in chosen.records) == [("a", "promtail-7"), ("b", "node2")]


async def test_credentials_and_tenant(tmp_path, monkeypatch, caplog):
    token_file = tmp_path / "token"
    token_file.write_text("s3cr3t-token\n")
    loki = LokiStandin(token="s3cr3t-token", org_id="team-a")  # noqa: S106
    with loki.running(), caplog.at_level(logging.DEBUG):
        loki.push({"job": "j"}, BASE, "mine")
        monkeypatch.setenv("FLOWS_LOKI_TOKEN_FILE", str(token_file))
        sink = ListSink()
        await backfill(loki, sink, BASE, BASE + NS, auth=LokiAuth(), org_id="team-a")
        assert len(sink.records) == 1
        assert loki.requests[-1][2] == {"Authorization": "Bearer s3cr3t-token", "X-Scope-OrgID": "team-a"}
        sink = ListSink()
        await backfill(loki, sink, BASE, BASE + NS, auth=LokiAuth(), org_id="team-b")
        assert sink.records == []  # another tenant's data is not ours
        with pytest.raises(LokiHTTPError, match="HTTP 401.*no org id"):
            await backfill(loki, ListSink(), BASE, BASE + NS, auth=LokiAuth())
        monkeypatch.setenv("FLOWS_LOKI_TOKEN", "wrong-token")
        with pytest.raises(LokiHTTPError, match="refused the credentials"):
            await backfill(loki, ListSink(), BASE, BASE + NS, auth=LokiAuth(), org_id="team-a")
    assert "s3cr3t" not in caplog.text and "wrong-token" not in caplog.text
    monkeypatch.delenv("FLOWS_LOKI_TOKEN")
    monkeypatch.delenv("FLOWS_LOKI_TOKEN_FILE")
    monkeypatch.setenv("FLOWS_LOKI_USERNAME", "ops")
    monkeypatch.setenv("FLOWS_LOKI_PASSWORD", "pw")
    basic = LokiStandin(basic=("ops", "pw"))
    with basic.running():
        basic.push({"job": "j"}, BASE, "x")
        sink = ListSink()
        await backfill(basic, sink, BASE, BASE + NS, auth=LokiAuth())
        assert len(sink.records) == 1
    monkeypatch.setenv("FLOWS_LOKI_TOKEN", "t")
    with pytest.raises(ValueError, match="not both"):
        LokiAuth()


async def test_tls_with_a_private_ca_or_insecure(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    loki = LokiStandin(ssl_context=server)
    with loki.running():
        loki.push({"job": "j"}, BASE, "over tls")
        assert loki.url.startswith("https://")
        for opt in (ssl_option(cert, False), ssl_option(None, True)):
            sink = ListSink()
            await backfill(loki, sink, BASE, BASE + NS, ssl_opt=opt)
            assert [r.message for r in sink.records] == ["over tls"]
        with pytest.raises(LokiError, match="pass --ca-file"):
            await backfill(loki, ListSink(), BASE, BASE + NS, ssl_opt=ssl_option(None, False))


# --- checkpoints ----------------------------------------------------------------------------

async def test_restart_from_checkpoint_loses_nothing(tmp_path):
    loki = LokiStandin(max_entries=10)
    path = tmp_path / "cp.json"
    with loki.running():
        loki.push_many(adversarial_layout(99, 10))
        want = {e for e in loki.entries() if ("job", "j") in e[0]}
        first = ListSink(fail_after=len(want) // 2)
        with Checkpoint(path, "loki") as cp, pytest.raises(RuntimeError, match="broker gone"):
            await backfill(loki, first, BASE, BASE + 10**6 * NS, limit=10, checkpoint=cp, save_every_s=0)
        with Checkpoint(path, "loki") as cp:
            position = cp.load()["position_ns"]
            assert BASE < position < BASE + 10**6 * NS
            second = ListSink()
            await backfill(loki, second, position, BASE + 10**6 * NS, limit=10, checkpoint=cp)
            assert cp.load()["position_ns"] == BASE + 10**6 * NS
    assert set(shipped_counts(first)) | set(shipped_counts(second)) == want
    assert max(shipped_counts(second).values()) == 1
    assert all(r.ts_ns >= position for r in second.records)  # nothing acknowledged is shipped again
    replayed = set(shipped_counts(first)) & set(shipped_counts(second))
    assert all(ts >= position for _, ts, _ in replayed)


def test_where_shipping_starts(tmp_path):
    ident = {"url": "http://loki", "query": '{job="j"}', "org_id": ""}
    cp = tmp_path / "cp.json"
    state = {**ident, "position_ns": BASE}
    assert resolve_start(state, None, ident, False, 0, cp) == (BASE, f"resuming from checkpoint {cp} at "
                                                                      "2026-11-18T11:06:40Z")
    start, note = resolve_start(state, BASE - NS, ident, False, 0, cp)
    assert start == BASE and "resuming there, not at --since" in note and "--restart" in note
    start, note = resolve_start(state, BASE + NS, ident, False, 0, cp)
    assert start == BASE + NS and "before --since" in note
    assert resolve_start(None, 7, ident, False, 0, cp) == (7, None)
    assert resolve_start(None, None, ident, True, 42, cp) == (42, None)
    with pytest.raises(ValueError, match="--since is needed"):
        resolve_start(None, None, ident, False, 0, cp)
    with pytest.raises(ValueError, match="written for"):
        resolve_start({**state, "query": "{a=\"b\"}"}, None, ident, False, 0, cp)
    with pytest.raises(ValueError, match="no valid position"):
        resolve_start({**ident, "position_ns": "x"}, None, ident, False, 0, cp)


def test_cli_refuses_bad_input_clearly(tmp_path):
    runner = CliRunner()
    env = {"FLOWS_HOME": str(tmp_path), "FLOWS_KAFKA_BOOTSTRAP": "127.0.0.1:1", "COLUMNS": "200"}
    base = ["--url", "http://127.0.0.1:1", "--query", '{job="j"}']
    (tmp_path / "corrupt.json").write_text("{")
    for args, extra_env, message in [
        (["--url", "http://x", "--query", 'rate({a="b"}[5m])'], {}, "must be a LogQL log query"),
        ([*base, "--follow", "--until", "1h"], {}, "--until does not go with --follow"),
        (base, {}, "--since is needed"),
        ([*base, "--since", "yesterday"], {}, "not a time"),
        ([*base, "--since", "1h", "--until", "2h"], {}, "empty time range"),
        ([*base, "--max-query-length", "forever"], {}, "not a duration"),
        ([*base, "--ca-file", str(tmp_path / "missing.pem")], {}, "cannot use --ca-file"),
        (base, {"FLOWS_LOKI_TOKEN": "t", "FLOWS_LOKI_USERNAME": "u"}, "not both"),
        ([*base, "--checkpoint", str(tmp_path / "corrupt.json")], {}, "corrupt"),
        ([*base, "--insecure"], {}, "certificate is not verified"),
    ]:
        result = runner.invoke(_app(), args, env={**env, **extra_env})
        assert result.exit_code == 2, (args, result.output)
        assert message in " ".join(result.output.split()), (args, result.output)


def _app():
    import typer

    app = typer.Typer()
    app.command()(ship_loki)
    return app


def test_plain_progress_lines_have_rate_and_eta(caplog):
    class Fake:
        position = BASE + 25 * NS
        stats = type("S", (), {"entries": 1000})()

    with caplog.at_level(logging.INFO, "flows.loki"), Reporter(BASE, BASE + 100 * NS, terminal=False,
                                                               every_s=0) as report:
        report(Fake())  # type: ignore[arg-type]
    assert re.search(r"1000 entries \(\d+/s\), at 2026-11-18T11:07:05Z, 25% of the range, ETA \d+s", caplog.text)
    with Reporter(BASE, BASE + 100 * NS, terminal=True, every_s=0) as bar:
        bar(Fake())  # type: ignore[arg-type]
        assert bar.progress is not None and bar.progress.tasks[0].percentage == 25
        assert bar.progress.tasks[0].fields["entries"] == 1000


# --- following ------------------------------------------------------------------------------

async def test_follow_survives_closes_drops_and_late_writes_without_gaps():
    loki = LokiStandin(max_entries=7, tail_max_s=1.2, seed=5)
    labels = [{"job": "j", "hostname": f"node{i}"} for i in range(3)]
    now = time.time_ns()
    with loki.running():
        loki.push_many([(labels[i % 3], now - 8 * NS + i * 10**7, f"old{i}") for i in range(60)])
        sink = ListSink()
        async with LokiClient(loki.url, backoff_s=0.01) as client:
            shipper = LokiShipper(client, Q, sink, position=now - 10 * NS, limit=7)
            task = asyncio.create_task(shipper.follow(safety_lag_ns=NS, delay_for_s=0, poll_s=0.2,
                                                      gap_margin_ns=NS))
            while loki.tail_connections < 1:
                await asyncio.sleep(0.02)
            for i in range(80):
                ts = time.time_ns()
                loki.push_many([(labels[i % 3], ts, f"live{i}"), (labels[(i + 1) % 3], ts, f"live{i}b")])
                if i == 10:
                    loki.drop_tail(4)
                if i == 25:
                    loki.abort_tails()  # network drop
                if i in (40, 45):
                    # Written later than the safety lag: only a connected tail (or its dropped_entries)
                    # reveals them, so push them just after a (re)connection, as a live Loki would see them.
                    connections = loki.tail_connections
                    loki.close_tails()
                    while loki.tail_connections == connections:
                        await asyncio.sleep(0.005)
                if i == 40:
                    loki.push_many([(labels[0], now - 20 * NS + k, f"late{k}") for k in range(3)])
                if i == 45:
                    loki.drop_tail(2)
                    loki.push_many([(labels[1], now - 30 * NS + k, f"late-dropped{k}") for k in range(2)])
                if i == 55:
                    loki.garble_tail()
                await asyncio.sleep(0.04)
            last = time.time_ns()
            while shipper.position <= last:
                await asyncio.sleep(0.05)
            shipper.stop.set()
            await asyncio.wait_for(task, 10)
    got = shipped_counts(sink)
    assert set(got) == loki.entries()  # no gap
    s = shipper.stats
    assert s.dropped == 6 and s.reconnects >= 2 and s.tail > 100 and s.gap >= 2 and s.late >= 3
    assert sum(got.values()) - len(got) <= 10  # re-sends are rare (and harmless downstream)


# --- end to end ---------------------------------------------------------------------------------

def ship_command() -> list[str]:
    """`flows ship loki` as a real process."""
    return [sys.executable, "-m", "pipeline", "ship", "loki"]


_EGRESS = re.compile(r"IN=(cali[0-9a-f]{11}) .*SRC=(\d+\.\d+\.\d+\.\d+) .*PROTO=TCP SPT=\d+ DPT=(\d+) ")


def loki_entries(corpus: Corpus) -> list[tuple[dict[str, str], int, str]]:
    """The journal as Promtail would push it: MESSAGE as the line, node and transport as stream labels."""
    out = []
    for line in corpus.journal:
        d = orjson.loads(line)
        labels = {"job": "systemd-journal", "hostname": d["_HOSTNAME"], "transport": d["_TRANSPORT"]}
        out.append((labels, int(d["__REALTIME_TIMESTAMP"]) * 1000, d["MESSAGE"]))
    return out


def bursts(corpus: Corpus, entries: list, sizes: list[tuple[int, int]]) -> tuple[list, dict[str, int]]:
    """Copies of attributed egress lines (other source ports) on the original's nanosecond and stream,
    plus non-Calico lines of other streams on it; returns them and the extra connections per namespace."""
    owner = {cali_iface_name(p["metadata"]["namespace"], p["metadata"]["name"]): p["metadata"]["namespace"]
             for p in corpus.inventory["items"] if p["kind"] == "Pod" and not p["spec"].get("hostNetwork")}
    candidates = [e for e in entries if (m := _EGRESS.search(e[2])) and m.group(1) in owner
                  and owner[m.group(1)] in corpus.expected.fanout and int(m.group(3)) <= 65535]
    extra, added = [], {}
    for n, (size, noise) in enumerate(sizes):
        labels, ts, line = candidates[(n + 1) * len(candidates) // (len(sizes) + 1)]
        extra += [(labels, ts, re.sub(r"SPT=\d+ ", f"SPT={20000 + k} ", line)) for k in range(size)]
        others = [{**labels, "hostname": f"node{h}"} for h in range(1, 7) if f"node{h}" != labels["hostname"]]
        extra += [(others[k % len(others)], ts, f"eth0: renamed from tmp{n}{k:06x}") for k in range(noise)]
        ns = owner[_EGRESS.search(line).group(1)]
        added[ns] = added.get(ns, 0) + size
    return extra, added


@pytest.mark.slow
def test_end_to_end_backfill_kill_restart_and_follow(stack_factory, tmp_path):
    from tests.system.test_e2e import fanout_of, load_inventory

    corpus = generate(seed=23, namespaces=16, records=20_000)
    entries = loki_entries(corpus)
    extra, added = bursts(corpus, entries, [(300, 0), (450, 200), (900, 400)])
    exp = corpus.expected
    want_records = exp.records + sum(added.values())
    want_fanout = {ns: {**row, "connections": row["connections"] + added.get(ns, 0)}
                   for ns, row in exp.fanout.items()}

    # Only an inventory vouches for ownership here, up to its snapshot: the newest lines that nothing
    # attributes wait for FLOWS_HOLD_MAX_S before they are stored unattributed (docs/attribution.md).
    stack = stack_factory(FLOWS_HOLD_MAX_S="5").start()
    load_inventory(stack, corpus, tmp_path)
    loki = LokiStandin(max_entries=1000, seed=1)
    with loki.running():
        stored = loki.push_many(entries + extra)
        start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(corpus.start_ns // NS))
        end = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(corpus.end_ns // NS + 1))
        cp = tmp_path / "loki.json"
        args = [*ship_command(), "--url", loki.url, "--query", '{job="systemd-journal"}', "--since", start,
                "--until", end, "--limit", "1000", "--checkpoint", str(cp)]

        # Killed (SIGKILL) mid-backfill, then the same command again: it resumes from the checkpoint.
        loki.latency_s = 0.1
        started = time.monotonic()
        proc = subprocess.Popen(args, env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        third = corpus.start_ns + (corpus.end_ns - corpus.start_ns) // 3
        while not (cp.exists() and orjson.loads(cp.read_bytes())["state"]["position_ns"] > third):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        time.sleep(0.5)  # between two checkpoints: what was sent since the last one is sent again
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed_at = orjson.loads(cp.read_bytes())["state"]["position_ns"]
        loki.latency_s = 0
        second = subprocess.run(args, env=stack.env, capture_output=True, timeout=120)
        shipping_s = time.monotonic() - started
        log_text = second.stderr.decode()
        assert second.returncode == 0, log_text[-3000:]
        assert re.search(f"checkpoint {cp} is at .*: resuming there, not at --since", " ".join(log_text.split()))
        shipped = int(re.search(r"shipped (\d+) entries", log_text).group(1))
        assert 0 < shipped < stored

        summary = stack.wait_for_stored(want_records, exp.rejected)
        assert (summary["records"], summary["rejected"], summary["unattributed"]) == (
            want_records, exp.rejected, exp.unowned_sources)
        assert fanout_of(stack) == want_fanout
        assert orjson.loads(cp.read_bytes())["state"]["position_ns"] == corpus.end_ns // NS * NS + NS
        totals = stack.status()["totals"]
        replayed = totals.get("replayed", 0) + totals.get("duplicate", 0)

        # A query that matches nothing says so.
        nothing = subprocess.run(
            [*ship_command(), "--url", loki.url, "--query", '{job="nobody"}', "--since", start, "--until", end,
             "--checkpoint", str(tmp_path / "none.json")], env=stack.env, capture_output=True, timeout=60)
        assert nothing.returncode == 0
        assert 'no stream matches {job="nobody"}' in " ".join(nothing.stderr.decode().split())

        # Follow: live lines through tail closes, a network drop, dropped entries and late writes.
        template = next(e[2] for e in entries if _EGRESS.search(e[2]))
        live_line = re.sub(r"IN=cali[0-9a-f]{11} ", "IN=cali00000dead00 ", template)
        live_line = re.sub(r"SRC=\S+ ", "SRC=10.244.250.7 ", live_line)
        loki.tail_max_s = 1.5
        follower = subprocess.Popen(
            [*ship_command(), "--url", loki.url, "--query", '{job="systemd-journal"}', "--follow", "--since", "5s",
             "--safety-lag", "2s", "--delay-for", "0", "--checkpoint", str(tmp_path / "follow.json")],
            env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while loki.tail_connections < 1:
            assert follower.poll() is None and time.monotonic() < deadline, follower.stderr.read().decode()
            time.sleep(0.05)
        n_live = 0
        for i in range(120):
            labels = {"job": "systemd-journal", "hostname": f"node{1 + i % 6}", "transport": "kernel"}
            n_live += loki.push(labels, time.time_ns(), re.sub(r"SPT=\d+ ", f"SPT={30000 + i} ", live_line))
            if i == 30:
                loki.drop_tail(7)
            if i == 60:
                loki.abort_tails()
            if i == 80:
                connections = loki.tail_connections  # late writes are only seen by a connected tail: wait for one
                loki.close_tails()
                while loki.tail_connections == connections:
                    time.sleep(0.005)
                loki.drop_tail(2)
                for k in range(4):  # written 60 s late: only the tail (or its dropped_entries) reveals them
                    n_live += loki.push(labels, time.time_ns() - 60 * NS + k,
                                        re.sub(r"SPT=\d+ ", f"SPT={40000 + k} ", live_line))
            time.sleep(0.03)
        summary = stack.wait_for_stored(want_records + n_live, exp.rejected)
        follower.send_signal(signal.SIGTERM)
        out, err = follower.communicate(timeout=20)
        follow_log = " ".join(err.decode().split())
        assert follower.returncode == 0, follow_log[-3000:]
        assert (summary["records"], summary["unattributed"]) == (want_records + n_live, exp.unowned_sources + n_live)
        assert fanout_of(stack) == want_fanout
        assert re.search(r"dropped by Loki 9\b", follow_log) and not re.search(r"reconnects [01]\b", follow_log)
    print(f"\nbackfill: {stored} Loki entries ({len(extra)} in bursts), "
          f"killed at {killed_at}, restart shipped {shipped}, kill+restart+store {shipping_s:.1f}s, "
          f"replayed downstream {replayed}; follow: {n_live} live entries; {follow_log[-300:]}")
