"""``flows bench``: pipeline throughput and latency with ceilings measured in the same run.

The machine is shared and noisy, so every pipeline figure is reported next to
ceilings measured minutes apart on the same broker and the same ClickHouse
engine: raw parsing + enrichment (no I/O), raw aiokafka consumption, raw
columnar insert. The pipeline runs as a real ``flows up`` process (embedded
broker + one worker) unless FLOWS_KAFKA_BOOTSTRAP / FLOWS_CLICKHOUSE_URL point
elsewhere; the ceilings and the query timings use their own chDB directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pipeline.basics.config import Settings
from pipeline.basics.timespec import ch_time
from pipeline.core.calico_line import LineRejected, parse_message
from pipeline.core.claims import event_from_json, event_to_json, events_from_list, progress_to_json
from pipeline.core.columnar import add_records
from pipeline.core.enrich import Batch, add_record
from pipeline.core.envelopes import encode_batch, from_journal_entry, record_id
from pipeline.core.models import OwnerEvent, Progress, RawRecord
from pipeline.core.registry import OwnershipRegistry
from pipeline.sources.shipper import publish_owner_events
from pipeline.store.clickhouse import FLOW_COLUMNS, connect, insert_columns, migrate
from pipeline.store.edge_seals import seal_edges
from pipeline.tooling.synthetic import Corpus, generate
from pipeline.transport.broker import EmbeddedBroker, free_port
from pipeline.transport.control import StackClient, read_stack_file
from pipeline.transport.kafka import ensure_topics, make_consumer, make_producer

PREFIX, IFACE = "calico-packet", "cali"
REGISTRY_IPS = 100_000  # issue #16's registry_bytes_per_claim: 100 000 owned IPs and a week of churn


@dataclass
class Sizes:
    records: int
    single_records: int
    latency_s: float
    query_days: int
    query_namespaces: int
    query_rows_per_day: int
    owned_ips: int

    @classmethod
    def pick(cls, quick: bool) -> Sizes:
        if quick:
            return cls(20_000, 10_000, 4.0, 30, 100, 3_000, 10_000)
        return cls(300_000, 100_000, 20.0, 30, 100, 100_000, 100_000)


def _records(corpus: Corpus, n: int, host: str | None = None) -> list[RawRecord]:
    """n distinct records cycling over the corpus's valid Calico lines (fresh identities)."""
    base = []
    for line in corpus.journal:
        rec = from_journal_entry(json.loads(line))
        with contextlib.suppress(LineRejected):
            if parse_message(rec.message, PREFIX) is not None:
                base.append(rec)
    out = []
    for i in range(n):
        r = base[i % len(base)]
        out.append(RawRecord(record_id("bench", host, i), r.ts_ns + i // len(base), host or r.host, r.message,
                             r.source))
    return out


def _registry(corpus: Corpus) -> OwnershipRegistry:
    reg = OwnershipRegistry()
    for ev in events_from_list(corpus.inventory, time.time_ns())[0]:
        reg.apply(ev)
    return reg


def bench_parse(corpus: Corpus, n: int) -> float:
    records, reg = _records(corpus, n), _registry(corpus)
    started = time.perf_counter()
    batch = Batch()
    for i, rec in enumerate(records):
        add_record(batch, rec, reg, PREFIX, IFACE)
        if i % 20_000 == 19_999:
            batch = Batch()
    return n / (time.perf_counter() - started)


def bench_parse_batch(corpus: Corpus, n: int) -> float:
    """bench_parse through the worker's batch path (core/columnar.py), one call per 20 000-record fetch."""
    records, reg = _records(corpus, n), _registry(corpus)
    started = time.perf_counter()
    for i in range(0, n, 20_000):
        fetch = records[i : i + 20_000]
        add_records(Batch(), fetch, [0] * len(fetch), reg, PREFIX, IFACE)
    return n / (time.perf_counter() - started)


async def _produce(settings: Settings, topic: str, values: list[bytes], keys: list[bytes] | None = None) -> None:
    producer = make_producer(settings, linger_ms=5, max_batch_size=1024 * 1024)
    await producer.start()
    try:
        futures = []
        for i, v in enumerate(values):
            futures.append(await producer.send(topic, v, key=keys[i] if keys else None))
            if len(futures) >= 20_000:
                await asyncio.gather(*futures)
                futures = []
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def bench_consume(settings: Settings, n: int) -> float:
    """Raw aiokafka consumption of n small messages (no processing) from the same broker."""
    topic = f"bench.consume.{os.getpid()}.{time.time_ns()}"
    await _produce(settings, topic, [b"x" * 200] * n)
    consumer = make_consumer(settings, topic, group_id=None)
    await consumer.start()
    try:
        got, started = 0, time.perf_counter()
        while got < n:
            data = await consumer.getmany(timeout_ms=1000, max_records=50_000)
            got += sum(len(v) for v in data.values())
        return n / (time.perf_counter() - started)
    finally:
        await consumer.stop()


def _flow_columns(n: int, days: int, namespaces: int, end: datetime) -> dict[str, list]:
    """Synthetic enriched rows: 100 namespaces, each with ~30 steady destinations and a little drift."""
    cols: dict[str, list] = {c: [] for c in FLOW_COLUMNS}
    span_us = days * 86_400 * 1_000_000
    start_us = int(end.timestamp() * 1_000_000) - span_us
    kinds = ("pod", "service", "external", "external", "node", "unknown")
    for i in range(n):
        ns_i = i % namespaces
        dest = (i * 7919) % 30 if i % 500 else 30 + (i // 500) % 200  # occasional new destinations
        kind = kinds[dest % len(kinds)]
        values = {
            "ts": start_us + (i * span_us) // n, "record_id": i + 1, "host": f"node{i % 12}",
            "source": "journal", "direction": "egress", "in_iface": f"cali{ns_i:011x}", "out_iface": "eth0",
            "family": 4, "proto": "UDP" if dest % 5 == 0 else "TCP",
            "src_ip": f"10.244.{ns_i}.{i % 200 + 1}", "src_port": 40000 + i % 20000,
            "dst_ip": f"{(dest % 200) + 20}.{ns_i % 250}.1.{dest % 250 + 1}" if kind == "external"
            else f"10.{96 + dest % 100}.{ns_i}.{dest + 1}",
            "dst_port": 443 if dest % 5 else 53, "length": 60, "src_kind": "pod", "src_namespace": f"ns-{ns_i:03d}",
            "src_workload_kind": "Deployment", "src_workload": f"app-{ns_i}", "src_pod": f"app-{ns_i}-x",
            "src_match": "ip+iface", "dst_kind": kind,
            "dst_namespace": f"ns-{dest % namespaces:03d}" if kind in ("pod", "service") else "",
            "dst_workload_kind": "Deployment" if kind == "pod" else "",
            "dst_name": f"svc-{dest}" if kind in ("pod", "service", "node") else "", "dst_pod": "",
        }
        for c in FLOW_COLUMNS:
            cols[c].append(values[c])
    return cols


def _chunks(cols: dict[str, list], size: int) -> Iterator[list[list]]:
    n = len(cols["ts"])
    for lo in range(0, n, size):
        yield [cols[c][lo:lo + size] for c in FLOW_COLUMNS]


def bench_insert_and_queries(settings: Settings, sizes: Sizes, workdir: Path) -> dict[str, Any]:
    """Columnar insert ceilings, then fan-out and drift query times over 30 days of rows."""
    url = settings.clickhouse_url or f"chdb://{workdir / 'bench-chdb'}"
    client = connect(url, username=settings.clickhouse_user,
                     password=settings.clickhouse_password.get_secret_value() if settings.clickhouse_password
                     else None, database="flows_bench")
    try:
        return _insert_and_queries(client, sizes)
    finally:  # chDB's engine ends with its last connection: its merges must not run beside the pipeline's
        client.close()


def _insert_and_queries(client: Any, sizes: Sizes) -> dict[str, Any]:
    migrate(client)
    end = datetime.now(UTC).replace(microsecond=0)
    cols = _flow_columns(min(200_000, sizes.records), 1, 100, end)
    # The ceiling: the store's own insert (insert_columns: Arrow built from the columns, as every insert
    # of the worker). The driver's Native insert, the ceiling before 2026-12-08, converts value by value
    # in Python and took half that rate: kept beside it to compare with earlier runs.
    started = time.perf_counter()
    for chunk in _chunks(cols, 20_000):
        insert_columns(client, "flows", FLOW_COLUMNS, chunk)
    insert_rate = len(cols["ts"]) / (time.perf_counter() - started)
    client.command("TRUNCATE TABLE flows")
    started = time.perf_counter()
    for chunk in _chunks(cols, 20_000):
        client.insert("flows", chunk, column_names=list(FLOW_COLUMNS), column_oriented=True,
                      settings={"async_insert": 0})
    native_rate = len(cols["ts"]) / (time.perf_counter() - started)
    client.command("TRUNCATE TABLE flows")

    total = sizes.query_days * sizes.query_rows_per_day
    data = _flow_columns(total, sizes.query_days, sizes.query_namespaces, end)
    for chunk in _chunks(data, 100_000):
        insert_columns(client, "flows", FLOW_COLUMNS, chunk)
    seal_edges(client)  # the steady state a running worker keeps: whole days answer from their seals
    params = {"since": ch_time(end - timedelta(days=sizes.query_days)), "until": ch_time(end)}
    fanout_sql = ("SELECT * FROM fanout(since={since:DateTime64(6,'UTC')}, until={until:DateTime64(6,'UTC')})")
    fanout_ms = _median_ms(lambda: client.query(fanout_sql, parameters=params))
    drift_ms = None
    drift_sql = ("SELECT * FROM drift(baseline_until={b:DateTime64(6,'UTC')}, since={since:DateTime64(6,'UTC')}, "
                 "until={until:DateTime64(6,'UTC')})")
    drift_params = {"b": ch_time(end - timedelta(days=7)), **params}
    with contextlib.suppress(Exception):  # the drift view may not exist in this build
        drift_ms = _median_ms(lambda: client.query(drift_sql, parameters=drift_params))
    edges = client.query("SELECT count() FROM edges").result_rows[0][0]
    return {"insert_rows_per_s": insert_rate, "insert_native_rows_per_s": native_rate, "query_fanout_ms": fanout_ms,
            "query_drift_ms": drift_ms, "query_flows_rows": total, "query_edges_rows": edges,
            "query_namespaces": sizes.query_namespaces, "query_days": sizes.query_days}


def _median_ms(fn: Callable[[], Any], repeat: int = 5) -> float:
    """Median wall time of ``repeat`` runs after a warm-up: steady-state, and robust to one noisy run."""
    fn()  # warm caches
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


class StackProcess:
    """A real ``flows worker`` process (or ``flows up`` without a bootstrap) for the pipeline measurements."""

    def __init__(self, home: Path, settings: Settings) -> None:
        self.home = home
        self.env = {**os.environ, "FLOWS_HOME": str(home), "FLOWS_BATCH_MAX_S": "0.5"}
        if settings.embedded_kafka:
            self.env["FLOWS_EMBEDDED_KAFKA_PORT"] = str(free_port())
        else:
            self.env["FLOWS_KAFKA_BOOTSTRAP"] = str(settings.kafka_bootstrap)
        self.cmd = "up" if settings.embedded_kafka else "worker"
        self.proc: subprocess.Popen | None = None

    async def __aenter__(self) -> tuple[Settings, StackClient]:
        self.home.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", self.cmd], env=self.env,
                                     stdout=subprocess.DEVNULL, stderr=open(self.home / "stack.log", "wb"),  # noqa: SIM115
                                     start_new_session=True)
        settings = Settings(home=self.home)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = read_stack_file(settings)
            if state:
                client = StackClient(state)
                with contextlib.suppress(Exception):
                    if (await client.status()).get("ready"):
                        live = settings.model_copy(update={"kafka_bootstrap": state["kafka_bootstrap"]})
                        return live, client
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.2)
        raise RuntimeError(f"the stack did not start; see {self.home / 'stack.log'}")

    async def __aexit__(self, *exc: object) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)

    def rss_mb(self, field: str = "VmRSS") -> float:
        """Resident memory of the stack process; ``RssFile`` is the part backed by mapped files (chDB's
        library code, shared and reclaimable), ``RssAnon`` what the process itself allocated."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
        return float("nan")


async def _stored(client: StackClient, host: str) -> int:
    _, rows = await client.query("SELECT count() FROM flows WHERE host = {h:String}", {"h": host})
    return int(rows[0][0])


async def produce_backlog(live: Settings, corpus: Corpus, n: int, batched: bool) -> str:
    """n records on the raw topic before the worker starts; returns the host that marks them."""
    host = f"bench-{'batched' if batched else 'single'}-{time.time_ns()}"
    records = _records(corpus, n, host)
    if batched:
        values = [encode_batch(records[i:i + 500]) for i in range(0, n, 500)]
    else:
        values = [encode_batch([r]) for r in records]
    await _produce(live, live.raw_topic, values, [host.encode()] * len(values))
    return host


async def drain_rate(client: StackClient, host: str, n: int) -> float:
    """Lines/s from the worker being ready (partitions assigned) to the last row confirmed by ClickHouse.

    Progress is read from the worker's counters (rows confirmed by ClickHouse), not by querying the
    table: a polling query would run on the worker's ClickHouse thread and slow down what it measures.
    The rows are then counted in the table once, to check the counters.
    """
    started = time.perf_counter()
    deadline = time.monotonic() + 600
    while (await client.status())["totals"].get("stored", 0) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not store {n} rows in time")
        await asyncio.sleep(0.05)
    rate = n / (time.perf_counter() - started)
    if await _stored(client, host) != n:
        raise RuntimeError(f"the worker's counters and the flows table disagree for {host}")
    return rate


# A stored row the worker held first: what ``add_record`` holds (an egress line whose source or destination
# ownership known on arrival cannot name), stored once the watermark vouched for its time or it waited too long.
HELD_ROW = "(direction = 'egress' AND (src_match IN ('none', 'iface_mismatch') OR dst_kind = 'unknown'))"


async def _publish_watermarks(live: Settings) -> None:
    """What a synced ``flows watch`` publishes about every second: ownership is complete up to now."""
    producer = make_producer(live)
    await producer.start()
    try:
        while True:
            now = time.time_ns()
            mark = Progress("watch", now, now)
            await producer.send_and_wait(live.owners_topic, progress_to_json(mark), key=mark.key.encode())
            await asyncio.sleep(1.0)
    finally:
        await producer.stop()


@dataclass
class Latency:
    """Seconds from a record's send to its row being visible, split by whether the worker held it."""

    arrival: list[float]  # attributed on arrival: the pipeline's own delay
    held: list[float]  # held for ownership: the allowance after the watermark passes their time

    def quantiles(self) -> dict[str, float | int]:
        def q(values: list[float], p: float) -> float | None:
            return values[min(len(values) - 1, int(len(values) * p))] if values else None
        a, h = sorted(self.arrival), sorted(self.held)
        return {"latency_p50_s": q(a, 0.5), "latency_p99_s": q(a, 0.99), "latency_lines": len(a),
                "latency_held_p50_s": q(h, 0.5), "latency_held_p99_s": q(h, 0.99), "latency_held_lines": len(h)}


async def bench_latency(live: Settings, client: StackClient, corpus: Corpus, rate: int, seconds: float) -> Latency:
    """Produce the corpus's lines at a fixed rate in 50 ms ticks, stamped with their send time, while
    watermarks advance as in production; a record's latency is when its row became visible.

    Lines whose sources are unowned now are held by the worker until the watermark, less
    FLOWS_OWNERSHIP_ALLOWANCE_S, passes their time, and are measured apart. The bench predicts
    which lines are held (the same ``add_record`` on the same ownership) only to poll cheaply
    for the others; the split reported comes from the stored rows.
    """
    host = f"bench-latency-{time.time_ns()}"
    templates = _records(corpus, min(5_000, rate))
    registry, probe_ts = _registry(corpus), time.time_ns()
    held_template = [add_record(Batch(), replace(t, ts_ns=probe_ts), registry, PREFIX, IFACE, settled_ns=0)
                     is not None for t in templates]
    producer = make_producer(live, linger_ms=5)
    await producer.start()
    sent: dict[int, float] = {}
    predicted_held: set[int] = set()
    visible: dict[int, tuple[float, bool]] = {}
    tick, per_tick = 0.05, max(1, int(rate * 0.05))
    sql = (f"SELECT toUnixTimestamp64Micro(ts), {HELD_ROW} FROM flows WHERE host = {{h:String}} AND ("
           "ts >= fromUnixTimestamp64Micro({lo:Int64}, 'UTC') OR "
           f"(ts >= fromUnixTimestamp64Micro({{lo_held:Int64}}, 'UTC') AND {HELD_ROW}))")

    async def poll() -> None:
        while True:
            unseen = [k for k in sent if k not in visible]
            if unseen:
                lo = min((k for k in unseen if k not in predicted_held), default=max(sent) + 1)
                lo_held = min((k for k in unseen if k in predicted_held), default=max(sent) + 1)
                _, rows = await client.query(sql, {"h": host, "lo": lo, "lo_held": lo_held})
                now = time.perf_counter()
                for us, held in rows:
                    visible.setdefault(int(us), (now, bool(held)))
            await asyncio.sleep(0.05)

    poller = asyncio.create_task(poll())
    marks = asyncio.create_task(_publish_watermarks(live))
    try:
        us, i = 0, 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            batch = []
            for _ in range(per_tick):
                # the record's time is when it is sent (what the hold compares with the watermark), unique per record
                us, j = max(time.time_ns() // 1000, us + 1), i % len(templates)
                i += 1
                batch.append(RawRecord(f"{us:032x}", us * 1000, host, templates[j].message, "journal"))
                sent[us] = time.perf_counter()
                if held_template[j]:
                    predicted_held.add(us)
            # one message per node and tick, as a shipper batching for 50 ms would send
            await producer.send(live.raw_topic, encode_batch(batch), key=host.encode())
            await asyncio.sleep(max(0.0, started + (i / per_tick) * tick - time.perf_counter()))
        await producer.flush()
        deadline = time.monotonic() + live.hold_max_s + 60  # held lines wait for the watermark, at most hold_max_s
        while len(visible) < len(sent) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        for task in (poller, marks):
            task.cancel()
        await asyncio.gather(poller, marks, return_exceptions=True)
        await producer.stop()
    if len(visible) < len(sent):
        raise RuntimeError(f"only {len(visible)} of {len(sent)} latency records became visible")
    out = Latency([], [])
    for k, (seen, held) in visible.items():
        (out.held if held else out.arrival).append(seen - sent[k])
    return out


def _owned_ip(i: int) -> str:
    return f"10.{64 + i // 65536}.{(i // 256) % 256}.{i % 256}"


def ownership_events(ips: int, days: int = 7) -> Iterator[OwnerEvent]:
    """ips pod IPs, each re-used by a new pod every ~34 h over a week: closed claims plus open ones."""
    now = time.time_ns()
    start = now - days * 86_400 * 10**9
    period = 34 * 3600 * 10**9
    for i in range(ips):
        ip = _owned_ip(i)
        t, gen = start + (i * 7_919_000_000) % period, 0
        while t < now:
            end = t + period
            yield OwnerEvent(ip, "pod", f"ns-{i % 100}", f"p-{i}-{gen}", f"u-{i}-{gen}", t,
                             end if end < now else None, now, "Deployment", f"app-{i % 100}", f"n{i % 12}",
                             {"app": f"app-{i % 100}"})
            t, gen = end, gen + 1


def registry_footprint(ips: int) -> dict[str, float]:
    """The registry's own memory with ``ips`` IPs and a week of churn: traced bytes it keeps, per claim.

    Events are decoded from the JSON the owners topic carries, as the worker does, so the
    strings and numbers the registry keeps from them count; every IP's owner and its
    interface are then looked up once, which fills the registry's bounded caches of built
    Owners. Run it in a fresh process (``registry_footprint_alone``): nothing else is traced.
    """
    gc.collect()
    tracemalloc.start()
    reg = OwnershipRegistry()
    for ev in ownership_events(ips):
        reg.apply(event_from_json(event_to_json(ev)))
    now = time.time_ns()
    for i in range(ips):
        owner = reg.owner_of(_owned_ip(i), now)
        if owner is not None:
            reg.pod_by_iface(owner.iface, now)
    del owner
    gc.collect()
    used = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    claims = reg.stats()["claims"]
    return {"registry_bytes_per_claim": used / claims, "registry_claims": claims, "registry_mb": used / 2**20}


def registry_footprint_alone(ips: int) -> dict[str, float]:
    code = ("import json; from pipeline.tooling.bench import registry_footprint; "
            f"print(json.dumps(registry_footprint({ips})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


async def bench_rss(live: Settings, client: StackClient, proc: StackProcess, ips: int) -> tuple[float, int]:
    events = list(ownership_events(ips))
    await _produce(live, live.owners_topic, [event_to_json(e) for e in events], [e.key.encode() for e in events])
    deadline = time.monotonic() + 900
    while (await client.status()).get("registry", {}).get("claims", 0) < len(events):
        if time.monotonic() > deadline:
            raise RuntimeError("the worker did not apply the ownership events in time")
        await asyncio.sleep(0.5)
    return proc.rss_mb(), len(events)


async def run_bench(quick: bool, progress: Callable[[str], None]) -> dict[str, Any]:
    sizes = Sizes.pick(quick)
    settings = Settings()
    corpus = generate(seed=5, namespaces=40, records=30_000)
    result: dict[str, Any] = {"quick": quick, "machine_cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="flows-bench-") as tmp:
        work = Path(tmp)
        progress("parse + enrich ceiling")
        result["parse_lines_per_s"] = bench_parse(corpus, sizes.records)
        result["parse_batch_lines_per_s"] = bench_parse_batch(corpus, sizes.records)
        progress("insert ceiling and queries over 30 days")
        result.update(await asyncio.to_thread(bench_insert_and_queries, settings, sizes, work))
        async with contextlib.AsyncExitStack() as resources:
            if settings.embedded_kafka:
                broker = EmbeddedBroker(free_port(), work / "broker.log")
                await broker.start()
                resources.callback(broker.stop)
                settings = settings.model_copy(update={"kafka_bootstrap": broker.bootstrap})
            await ensure_topics(settings)
            progress("raw consume ceiling")
            result["consume_msgs_per_s"] = await bench_consume(settings, sizes.records)
            # The worker's throughput is its drain rate of a backlog produced beforehand: a Python producer
            # in this process would otherwise be what is measured.
            now = time.time_ns()
            events, _ = events_from_list(corpus.inventory, now)
            await publish_owner_events(settings, events, Progress("inventory", now, now))  # a complete snapshot
            for batched in (True, False):
                key = "pipeline_batched_lines_per_s" if batched else "pipeline_single_lines_per_s"
                n = sizes.records if batched else sizes.single_records
                progress(f"pipeline, {'batched messages' if batched else 'one line per message'}: backlog")
                host = await produce_backlog(settings, corpus, n, batched)
                progress("pipeline: worker draining it")
                async with StackProcess(work / "stack", settings) as (_, client):
                    result[key] = await drain_rate(client, host, n)
            stack = StackProcess(work / "stack", settings)
            async with stack as (live, client):
                result["worker_rss_start_mb"] = stack.rss_mb()
                progress("latency at 5k lines/s, watermarks advancing")
                latency = await bench_latency(live, client, corpus, 5_000, sizes.latency_s)
                result.update(latency.quantiles())
                result["latency_offered_lines_per_s"] = 5_000
                progress("worker memory with a week of ownership")
                result["worker_rss_before_ownership_mb"] = stack.rss_mb()
                result["worker_rss_mb"], result["worker_rss_claims"] = await bench_rss(
                    live, client, stack, sizes.owned_ips)
                result["worker_rss_owned_ips"] = sizes.owned_ips
                result["worker_rss_file_mb"] = stack.rss_mb("RssFile")
                result["worker_rss_anon_mb"] = stack.rss_mb("RssAnon")
                result["worker_rss_peak_mb"] = stack.rss_mb("VmHWM")  # the latency run and the claims included
        # Always the 100 000 IPs: the Owner caches are a fixed cost a smaller registry would
        # spread over fewer claims.
        progress("registry footprint with 100 000 IPs, alone in a fresh process")
        result.update(await asyncio.to_thread(registry_footprint_alone, REGISTRY_IPS))
        result["registry_owned_ips"] = REGISTRY_IPS
    # The split of the worker's memory: the registry (traced alone, same events; scaled to the worker's claims
    # with --quick), the rest (chDB's engine and caches, the interpreter, Kafka clients, allocator slack).
    registry_mb = result["registry_mb"] * result["worker_rss_claims"] / result["registry_claims"]
    result["worker_rss_registry_mb"] = registry_mb
    result["worker_rss_rest_mb"] = result["worker_rss_mb"] - registry_mb
    c, p = result["consume_msgs_per_s"], result["parse_lines_per_s"]
    for key in ("pipeline_batched_lines_per_s", "pipeline_single_lines_per_s"):
        result[key.replace("_lines_per_s", "_vs_consume")] = result[key] / c
        result[key.replace("_lines_per_s", "_vs_parse")] = result[key] / p
        result[key.replace("_lines_per_s", "_vs_insert")] = result[key] / result["insert_rows_per_s"]
    return result


TARGETS = {  # issue #16
    "pipeline_batched_lines_per_s": (">=", 100_000),
    "pipeline_batched_vs_insert": (">=", 0.6),
    "pipeline_single_lines_per_s": (">=", 50_000),
    "latency_p99_s": ("<=", 1.0),
    "query_fanout_ms": ("<=", 100),
    "query_drift_ms": ("<=", 100),
    "registry_bytes_per_claim": ("<=", 150),
    "worker_rss_mb": ("<=", 550),
}


def verdicts(result: dict[str, Any]) -> dict[str, str]:
    out = {}
    for key, (op, target) in TARGETS.items():
        value = result.get(key)
        if value is None:
            out[key] = "not measured"
        else:
            ok = value >= target if op == ">=" else value <= target
            out[key] = f"{'met' if ok else 'MISSED'} ({op} {target})"
    return out
