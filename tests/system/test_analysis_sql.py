"""sql/006_analysis.sql (drift, stability, profile, allowlist, baselines) against chDB, and the
commands of pipeline.cli.report, .policy and .baseline over it.

chDB opens one data directory per process: the module shares one client (closed at the end)
and gives each test that needs a clean slate its own database. The commands run in-process
on a throwaway Typer app, their queries routed to that client the way a running stack runs
them (query_direct, then JSON-friendly values).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.analysis import evidence as analysis
from pipeline.cli import baseline as baseline_commands
from pipeline.cli import report as report_commands
from pipeline.cli.app import app as CLI_APP
from pipeline.store import clickhouse as ch
from pipeline.store.edge_seals import seal_edges
from pipeline.store.queries import query_direct
from pipeline.transport.control import jsonable
from tests.standins.asn_db import TWO_PROVIDERS, write_mmdb
from tests.system.test_sql import at, flow, insert_flows, naive
from tests.unit.test_policy import validate_calico, validate_k8s

T = "DateTime64(6, 'UTC')"
EPOCH = "1970-01-01 00:00:00"
FAR = "2100-01-01 00:00:00"
NOW = at(21)
_db_counter = itertools.count()


def ext(ts: dt.datetime, rid: int, ip: str, port: int | None = 443, ns: str = "app", proto: str = "TCP") -> list[Any]:
    return flow(ts, rid, ns_=ns, dst_ip=ip, dst_port=port, proto="ICMP" if port is None else proto)


def pod(ts: dt.datetime, rid: int, workload: str, port: int, ns: str = "app", dst_ns: str = "db") -> list[Any]:
    return flow(ts, rid, ns_=ns, dst_kind="pod", dst_ip="10.244.2.9", dst_port=port, dst_namespace=dst_ns,
                dst_name=workload)


def dns(ts: dt.datetime, rid: int, ns: str) -> list[Any]:
    return flow(ts, rid, ns_=ns, dst_kind="service", dst_ip="10.96.0.10", dst_port=53, proto="UDP",
                dst_namespace="kube-system", dst_name="kube-dns")


rid = itertools.count(1)
BASELINE = at(12)
# app: the drift story around a baseline at Nov 12 00:00.
APP_ROWS = [
    pod(at(10, 8), next(rid), "postgres", 5432),
    ext(at(10, 9), next(rid), "1.2.3.4"),
    ext(at(10, 10), next(rid), "8.8.8.8", None),
    dns(at(10, 11), next(rid), "app"),
    ext(at(11, 23, 59, 59, 999999), next(rid), "9.9.9.9"),  # a microsecond before the baseline: old
    ext(at(12), next(rid), "5.6.7.8"),  # exactly at the baseline: drift
    ext(at(13, 1), next(rid), "1.2.3.4"),  # an old destination again: not drift
    ext(at(13, 2), next(rid), "1.2.3.4", 8443),  # a new port to a known peer: drift
    ext(at(13, 3), next(rid), "8.8.8.8", None),  # old ICMP again
    ext(at(13, 4), next(rid), "8.8.4.4", None),  # new ICMP: drift, port NULL
    ext(at(13, 5), next(rid), "2001:db8::1"),  # IPv6: drift
    pod(at(13, 6), next(rid), "redis", 5432),  # another workload of db on a known port: same identity
    pod(at(13, 7), next(rid), "redis", 6379),  # a new port to db: drift
    ext(at(20, 10), next(rid), "7.7.7.7"),  # drift, the only one after Nov 15
    ext(at(20, 11), next(rid), "2001:db8::1"),
]
APP_DRIFT = {
    ("external", "5.6.7.8", "TCP", 443),
    ("external", "1.2.3.4", "TCP", 8443),
    ("external", "8.8.4.4", "ICMP", None),
    ("external", "2001:db8::1", "TCP", 443),
    ("pod", "db", "TCP", 6379),
    ("external", "7.7.7.7", "TCP", 443),
}
# pilot: DNS and one database for twelve days, nothing new since the first: tier A.
PILOT = [dns(at(d, 6), next(rid), "pilot") for d in range(1, 13)] + [
    pod(at(1, 7), next(rid), "postgres", 5432, ns="pilot"),
    pod(at(12, 7), next(rid), "postgres", 5432, ns="pilot"),
]
# p2p: 25 external IPs (tier D); scatter: 12 high ports to 2 IPs (tier D); msg: 5 IPs of one
# provider range and one outside it (C, or B once the range groups them).
P2P = [ext(at(1 + i % 10, 12), next(rid), f"203.0.113.{i}", 6881, ns="p2p") for i in range(25)]
SCATTER = [ext(at(1 + i % 10, 13), next(rid), f"198.51.100.{i % 2}", 40000 + i, ns="scatter") for i in range(12)]
MSG = [ext(at(1 + i, 14), next(rid), f"147.92.{130 + i}.{i}", ns="msg") for i in range(5)] + [
    ext(at(9, 14), next(rid), "52.1.1.1", ns="msg"),
    ext(at(10, 14), next(rid), "2001:db8:cd::5", ns="msg"),
]
ALL_ROWS = APP_ROWS + PILOT + P2P + SCATTER + MSG
RANGES = "messaging-api: [147.92.128.0/17]\ndocs6: ['2001:db8:cd::/48']\n"


def claim(ip: str, kind: str, namespace: str, name: str, workload: str, labels: dict[str, str],
          uid: str) -> list[Any]:
    return [ip, kind, namespace, name, uid, "Deployment" if kind == "pod" else "", workload, "node-1", labels,
            at(1), None, at(1), "inventory"]


CLAIMS = [
    claim("10.244.2.9", "pod", "db", "postgres-7d9f-a", "postgres",
          {"app": "postgres", "tier": "db", "pod-template-hash": "7d9f"}, "u1"),
    claim("10.244.2.10", "pod", "db", "postgres-55bc-b", "postgres",
          {"app": "postgres", "tier": "db", "pod-template-hash": "55bc"}, "u2"),
    claim("10.244.2.11", "pod", "db", "redis-0", "redis", {"app": "redis"}, "u3"),
    claim("10.96.0.10", "service", "kube-system", "kube-dns", "", {"k8s-app": "kube-dns"}, "u4"),
]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ch.Client]:
    c = ch.connect(f"chdb://{tmp_path_factory.mktemp('chdb') / 'data'}", database="a_setup")
    yield c
    c.close()


def fresh(client: ch.Client) -> str:
    client.database = f"a_{next(_db_counter)}"
    assert ch.migrate(client)
    return client.database


def load(client: ch.Client) -> str:
    db = fresh(client)
    insert_flows(client, ALL_ROWS)
    ch.insert_columns(client, "ownership", ch.OWNERSHIP_COLUMNS, [list(c) for c in zip(*CLAIMS, strict=True)])
    return db


@pytest.fixture(scope="module")
def loaded(client: ch.Client) -> str:
    return load(client)


def use(client: ch.Client, db: str) -> ch.Client:
    client.database = db
    return client


def query(client: ch.Client, sql: str, **params: Any) -> list[dict[str, Any]]:
    result = client.query(sql, parameters=params)
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def drift(client: ch.Client, baseline: dt.datetime, since: dt.datetime | None = None, until: str | dt.datetime = FAR,
          ns: str = "app") -> set[tuple]:
    rows = query(client, f"SELECT * FROM drift(baseline_until = {{b:{T}}}, since = {{s:{T}}}, until = {{u:{T}}}) "
                 "WHERE namespace = {ns:String}", b=baseline, s=since or baseline, u=until, ns=ns)
    return {(r["dst_kind"], r["dst"], r["proto"], r["port"]) for r in rows}


# -- drift ---------------------------------------------------------------------------------------


def test_drift_first_seen_boundaries(client: ch.Client, loaded: str) -> None:
    use(client, loaded)
    assert drift(client, BASELINE) == APP_DRIFT
    assert drift(client, BASELINE, since=at(1)) == APP_DRIFT  # since before the baseline: the baseline wins
    assert drift(client, BASELINE, since=at(15)) == {("external", "7.7.7.7", "TCP", 443)}
    assert drift(client, BASELINE, until=at(13)) == {("external", "5.6.7.8", "TCP", 443)}  # until exclusive
    assert drift(client, at(12, 0, 0, 0, 1)) == APP_DRIFT - {("external", "5.6.7.8", "TCP", 443)}
    assert ("external", "9.9.9.9", "TCP", 443) in drift(client, at(11, 23, 59, 59, 999999))
    rows = {(r["dst"], r["port"]): r for r in query(
        client, f"SELECT * FROM drift(baseline_until = {{b:{T}}}, since = {{b:{T}}}, until = {{u:{T}}})",
        b=BASELINE, u=FAR)}
    v6 = rows[("2001:db8::1", 443)]
    assert (naive(v6["first_seen"]), naive(v6["last_seen"]), v6["connections"]) == (
        naive(at(13, 5)), naive(at(20, 11)), 2)
    assert rows[("db", 6379)]["workloads"] == ["redis"]
    assert not {ns for ns in (r["namespace"] for r in rows.values())} - {"app"}  # the others have no drift
    # the literal form ad-hoc users and Grafana type
    literal = client.query("SELECT count() FROM drift(baseline_until='2026-11-12 00:00:00', "
                           "since='2026-11-15 00:00:00', until='2100-01-01 00:00:00')").result_rows
    assert literal == [(1,)]


def test_drift_survives_flows_ttl(client: ch.Client) -> None:
    """First sightings come from edges: drift and stability are unchanged once flows expired."""
    load(client)
    ch.migrate(client, ttl_days=1)  # the corpus days are past flows' window: sealed history answers them
    seal_edges(client)  # what the worker does every few minutes
    stability_sql = f"SELECT * FROM stability(now = {{n:{T}}}, min_days = 7, stable_days = 3) ORDER BY namespace"
    before = (drift(client, BASELINE), drift(client, BASELINE, since=at(15)), query(client, stability_sql, n=NOW))
    client.command("TRUNCATE TABLE flows")
    after = (drift(client, BASELINE), drift(client, BASELINE, since=at(15)), query(client, stability_sql, n=NOW))
    assert after == before and before[0] == APP_DRIFT


# -- stability and profile -----------------------------------------------------------------------


def stability(client: ch.Client, now: dt.datetime) -> dict[str, dict[str, Any]]:
    rows = query(client, f"SELECT * FROM stability(now = {{n:{T}}}, min_days = 7, stable_days = 3)", n=now)
    return {r["namespace"]: r for r in rows}


def test_stability(client: ch.Client, loaded: str) -> None:
    use(client, loaded)
    st = stability(client, NOW)
    app = st["app"]
    assert (naive(app["first_seen"]), naive(app["last_seen"]), naive(app["last_new"])) == (
        naive(at(10, 8)), naive(at(20, 11)), naive(at(20, 10)))
    assert app["days_observed"] == 5  # Nov 10, 11, 12, 13, 20
    assert app["horizon_days"] == round((at(20, 11) - at(10, 8)).total_seconds() / 86400, 2)
    assert app["days_since_new"] == round((NOW - at(20, 10)).total_seconds() / 86400, 2)
    assert (app["meets_horizon"], app["stable"]) == (True, False)
    pilot = st["pilot"]
    assert (pilot["days_observed"], pilot["horizon_days"], pilot["destinations"]) == (12, 11.04, 2)
    assert (pilot["meets_horizon"], pilot["stable"]) == (True, True)
    # as of Nov 13 00:00: nothing after it counts
    early = stability(client, at(13))["app"]
    assert (early["days_observed"], naive(early["last_new"]), early["days_since_new"]) == (3, naive(at(12)), 1.0)
    assert early["meets_horizon"] is False


def test_profile_measures(client: ch.Client, loaded: str) -> None:
    use(client, loaded)
    rows = {r["namespace"]: r for r in query(client, f"SELECT * FROM profile(since = '{EPOCH}', until = '{FAR}')")}
    app = rows["app"]
    assert (app["internal"], app["ip_peers"], app["pod_ns"], app["svc"], app["external"]) == (2, 7, 1, 1, 7)
    assert (app["ip_ports"], app["high_ports"]) == (2, 1)  # 443, 8443 (ICMP has none)
    assert (rows["p2p"]["ip_peers"], rows["p2p"]["high_ports"]) == (25, 1)
    assert (rows["scatter"]["ip_peers"], rows["scatter"]["high_ports"]) == (2, 12)
    assert (rows["pilot"]["internal"], rows["pilot"]["ip_peers"]) == (2, 0)


def test_tiers_from_the_views(client: ch.Client, loaded: str) -> None:
    use(client, loaded)
    cfg = analysis.AnalysisSettings()
    profiles = query(client, f"SELECT * FROM profile(since = '{EPOCH}', until = '{FAR}')")
    st = stability(client, NOW)
    tiers = {p["namespace"]: analysis.assign_tier(p, st[p["namespace"]], cfg) for p in profiles}
    assert {ns: t.tier for ns, t in tiers.items()} == {
        "app": "C", "msg": "C", "p2p": "D", "pilot": "A", "scatter": "D"}
    assert "scattered high ports" in tiers["scatter"].reason
    peers = [analysis.Peer.from_row(jsonable_row(r)) for r in query(
        client, f"SELECT * FROM allowlist(since = '{EPOCH}', until = '{FAR}')")]
    counts = analysis.ip_peer_counts(analysis.group_by_ranges(peers, analysis.parse_ranges(RANGES))[0])
    grouped = analysis.assign_tier(next(p for p in profiles if p["namespace"] == "msg"), st["msg"], cfg, counts["msg"])
    assert (grouped.tier, grouped.ip_peers) == ("B", 3)  # messaging-api, docs6, 52.1.1.1


def jsonable_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: jsonable(v) for k, v in row.items()}


# -- allowlist and named ranges ------------------------------------------------------------------


def test_allowlist_rows(client: ch.Client, loaded: str) -> None:
    use(client, loaded)
    rows = query(client, f"SELECT * FROM allowlist(since = '{EPOCH}', until = '{FAR}') WHERE namespace = 'app'")
    by = {(r["dst_kind"], r["dst"], r["name"], r["proto"]): r for r in rows}
    assert by[("external", "1.2.3.4", "", "TCP")]["ports"] == [443, 8443]  # ports per peer
    assert by[("external", "1.2.3.4", "", "TCP")]["connections"] == 3
    assert by[("external", "8.8.8.8", "", "ICMP")]["ports"] == []
    assert by[("pod", "db", "redis", "TCP")]["ports"] == [5432, 6379]
    assert by[("pod", "db", "postgres", "TCP")]["ports"] == [5432]
    assert by[("service", "kube-system/kube-dns", "kube-dns", "UDP")]["dst_namespace"] == "kube-system"
    assert ("external", "2001:db8::1", "", "TCP") in by
    window = query(client, f"SELECT * FROM allowlist(since = {{s:{T}}}, until = {{u:{T}}}) WHERE namespace = 'app'",
                   s=at(13), u=at(14))
    assert {(r["dst"], tuple(r["ports"])) for r in window} == {
        ("1.2.3.4", (443, 8443)), ("8.8.8.8", ()), ("8.8.4.4", ()), ("2001:db8::1", (443,)), ("db", (5432, 6379))}


def test_named_ranges_over_the_allowlist(client: ch.Client, loaded: str) -> None:
    use(client, loaded)
    rows = query(client, f"SELECT * FROM allowlist(since = '{EPOCH}', until = '{FAR}') WHERE namespace = 'msg'")
    grouped, outside = analysis.group_by_ranges([analysis.Peer.from_row(jsonable_row(r)) for r in rows],
                                                analysis.parse_ranges(RANGES))
    by = {p.dst: p for p in grouped}
    api = by["messaging-api"]
    assert api.addresses == tuple(f"147.92.{130 + i}.{i}" for i in range(5))
    assert (api.connections, api.cidrs, api.first_seen) == (5, ("147.92.128.0/17",), at(1, 14))
    assert by["docs6"].addresses == ("2001:db8:cd::5",)
    assert outside == ["52.1.1.1"]


# -- the commands --------------------------------------------------------------------------------




@pytest.fixture
def cli(client: ch.Client, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Run a command line against the module's client, as of NOW."""

    async def run_query(settings: Any, sql: str, parameters: dict[str, Any] | None = None):
        columns, rows = query_direct(client, sql, parameters or {})
        return columns, jsonable(rows)

    monkeypatch.setattr(report_commands, "run_query", run_query)  # policy and baseline query through it too
    for module in (report_commands, baseline_commands):
        monkeypatch.setattr(module, "_now", lambda: NOW)
    for var in ("FLOWS_CLICKHOUSE_URL", "FLOWS_KAFKA_BOOTSTRAP"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FLOWS_HOME", str(tmp_path / "home"))
    runner = CliRunner()

    def invoke(*args: str, code: int = 0):
        result = runner.invoke(CLI_APP, list(args))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        assert result.exit_code == code, (args, result.output)
        return result

    return invoke


def words(text: str) -> str:
    return " ".join(text.split())


def test_report_drift_json(client: ch.Client, loaded: str, cli) -> None:
    use(client, loaded)
    rows = json.loads(cli("report", "drift", "--baseline-until", "2026-11-12T00:00:00Z", "-f", "json").stdout)
    assert {(r["dst_kind"], r["dst"], r["proto"], r["port"]) for r in rows} == APP_DRIFT
    assert {"namespace", "dst_kind", "dst", "proto", "port", "first_seen", "last_seen", "connections", "nodes"} <= set(
        rows[0])
    assert rows[0]["first_seen"] == "2026-11-12T00:00:00Z" and rows[0]["dst"] == "5.6.7.8"  # oldest first
    later = json.loads(cli("report", "drift", "--baseline-until", "2026-11-12", "--since", "2026-11-15",
                           "-n", "app", "-f", "json").stdout)
    assert [r["dst"] for r in later] == ["7.7.7.7"]
    assert json.loads(cli("report", "drift", "--baseline-until", "2026-11-12", "-n", "pilot", "-f", "json").stdout
                      ) == []
    csv = cli("report", "drift", "--baseline-until", "2026-11-12", "-f", "csv").stdout
    assert csv.splitlines()[0].startswith("namespace,dst_kind,dst,proto,port,first_seen")


def test_baselines(client: ch.Client, cli) -> None:
    load(client)
    saved = cli("baseline", "save", "before", "--until", "2026-11-12T00:00:00Z")
    assert "saved baseline before" in words(saved.stdout)

    def vs(name: str, *extra: str) -> set[tuple]:
        rows = json.loads(cli("report", "drift", "--baseline", name, "-n", "app", *extra, "-f", "json").stdout)
        return {(r["dst_kind"], r["dst"], r["proto"], r["port"]) for r in rows}

    assert vs("before") == APP_DRIFT  # ICMP to 8.8.8.8 (NULL port) seen again is in the baseline
    # with a baseline, --since means "seen since": the IPv6 peer (first seen Nov 13) is back on Nov 20
    assert vs("before", "--since", "2026-11-15") == {("external", "7.7.7.7", "TCP", 443),
                                                     ("external", "2001:db8::1", "TCP", 443)}
    err = cli("baseline", "save", "before", code=2)
    assert "exists; pass --replace" in words(err.stderr)
    cli("baseline", "save", "before", "--until", "2026-11-14T00:00:00Z", "--replace")
    assert vs("before") == {("external", "7.7.7.7", "TCP", 443)}  # the newer snapshot holds the Nov 13 ones
    cli("baseline", "save", "all")
    assert vs("all") == set()
    listing = {r["name"]: r for r in json.loads(cli("baseline", "list", "-f", "json").stdout)}
    assert listing["before"]["window_until"] == "2026-11-14T00:00:00Z"
    assert listing["all"]["namespaces"] == 5 and listing["all"]["saved_at"] == "2026-11-21T00:00:00Z"
    unknown = cli("report", "drift", "--baseline", "nope", code=2)
    assert "unknown baseline 'nope' (saved: all, before)" in words(unknown.stderr)
    # ad-hoc: the same view the command reads
    rows = client.query(f"SELECT dst FROM drift_vs_baseline(name = 'before', since = '2026-11-14 00:00:00', "
                        f"until = '{FAR}')").result_rows
    assert rows == [("7.7.7.7",)]


def test_reports_stability_tiers_allowlist(client: ch.Client, loaded: str, cli, tmp_path: Path) -> None:
    use(client, loaded)
    st = {r["namespace"]: r for r in json.loads(cli("report", "stability", "-f", "json").stdout)}
    assert st["pilot"]["stable"] is True and st["app"]["stable"] is False
    assert st["app"]["days_since_new"] == round((NOW - at(20, 10)).total_seconds() / 86400, 2)
    tiers = {r["namespace"]: r for r in json.loads(cli("report", "tiers", "-f", "json").stdout)}
    assert {ns: r["tier"] for ns, r in tiers.items()} == {
        "app": "C", "msg": "C", "p2p": "D", "pilot": "A", "scatter": "D"}
    assert tiers["p2p"]["reason"].startswith("25 external IPs >= 20")
    ranges = tmp_path / "ranges.yaml"
    ranges.write_text(RANGES)
    grouped = json.loads(cli("report", "tiers", "--cidrs", str(ranges), "-n", "msg", "-f", "json").stdout)
    assert [(r["tier"], r["ip_peers"]) for r in grouped] == [("B", 3)]
    result = cli("report", "allowlist", "-n", "msg", "--cidrs", str(ranges), "-f", "json")
    rows = json.loads(result.stdout)
    assert [(r["dst"], r["cidrs"]) for r in rows] == [
        ("52.1.1.1", []), ("docs6", ["2001:db8:cd::/48"]), ("messaging-api", ["147.92.128.0/17"])]
    assert "1 external IPs outside every named range: 52.1.1.1" in words(result.stderr)
    table = cli("report", "allowlist", "-n", "app", "-f", "csv").stdout
    assert "1.2.3.4,,TCP,\"443, 8443\"" in table


def test_policy_for_the_simplest_namespace_round_trips(client: ch.Client, loaded: str, cli, tmp_path: Path) -> None:
    use(client, loaded)
    out = tmp_path / "pilot.yaml"
    cli("policy", "pilot", "-o", str(out))
    doc = yaml.safe_load(out.read_text())
    validate_calico(doc)
    assert doc["kind"] == "NetworkPolicy" and doc["metadata"]["namespace"] == "pilot"
    assert doc["metadata"]["annotations"]["egress-observatory/tier"].startswith("A: ")
    egress = doc["spec"]["egress"]
    assert len(egress) == 4  # DNS over UDP and TCP, postgres, deny
    assert egress[0]["metadata"]["annotations"]["egress-observatory/connections"] == "12"
    assert egress[2]["destination"] == {"namespaceSelector": "kubernetes.io/metadata.name == 'db'",
                                        "selector": "app == 'postgres' && tier == 'db'", "ports": [5432]}
    assert egress[3]["action"] == "Deny"
    k8s = yaml.safe_load(cli("policy", "pilot", "-f", "k8s").stdout)
    validate_k8s(k8s)
    assert k8s["spec"]["egress"][2]["to"][0]["podSelector"] == {"matchLabels": {"app": "postgres", "tier": "db"}}
    staged = yaml.safe_load(cli("policy", "pilot", "--staged").stdout)
    validate_calico(staged)
    assert (staged["kind"], staged["spec"]["stagedAction"]) == ("StagedNetworkPolicy", "Set")
    validate_k8s(yaml.safe_load(cli("policy", "pilot", "--staged", "-f", "k8s").stdout))


def test_policy_refusals_and_override(client: ch.Client, loaded: str, cli) -> None:
    use(client, loaded)
    app = words(cli("policy", "app", code=2).stderr)
    assert "refusing to write a policy for app" in app and "unstable" in app and "--force" in app
    p2p = words(cli("policy", "p2p", code=2).stderr)
    assert "tier D" in p2p and "egress gateway" in p2p and "unstable" not in p2p
    forced = cli("policy", "app", "--force", "-f", "k8s")
    validate_k8s(yaml.safe_load(forced.stdout))
    assert "unattributed" not in forced.stderr and "NetworkPolicy cannot match ICMP" in words(forced.stderr)
    # a window ending Nov 14: three days observed, a new destination the day before
    short = words(cli("policy", "app", "--until", "2026-11-14", code=2).stderr)
    assert "under the minimum" in short


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("report", "drift", "--baseline-until", "2026-11-12", "-n", "nope"),
         "unknown namespace 'nope': no egress observed from it (known: app, msg, p2p, pilot, scatter)"),
        (("policy", "nope"), "unknown namespace 'nope'"),
        (("policy", "pilot", "--since", "2026-11-20"), "no egress observed from namespace 'pilot' between"),
        (("report", "tiers", "--since", "2026-11-20", "--until", "2026-11-10"), "empty time range"),
        (("report", "drift", "--baseline-until", "2026-11-12", "--until", "2026-11-11"), "empty time range"),
        (("report", "drift", "--baseline-until", "last tuesday"), "--baseline-until: not a time"),
        (("report", "drift"), "give either --baseline-until TIME or --baseline NAME"),
        (("report", "drift", "--baseline-until", "1d", "--baseline", "x"), "give either"),
        (("report", "stability", "-n", "nope"), "unknown namespace 'nope'"),
        (("report", "tiers", "--cidrs", "/nonexistent/ranges.yaml"), "cannot read /nonexistent/ranges.yaml"),
        (("policy", "pilot", "--format", "cilium"), "--format must be one of calico, k8s"),
        (("report", "allowlist", "--format", "xml"), "--format must be one of table, json, csv"),
        (("baseline", "save", "bad name"), "baseline name must be"),
    ],
)
def test_bad_inputs_give_clear_errors(client: ch.Client, loaded: str, cli, args: tuple[str, ...],
                                      message: str) -> None:
    use(client, loaded)
    assert message in words(cli(*args, code=2).stderr)


def test_malformed_cidr_file(client: ch.Client, loaded: str, cli, tmp_path: Path) -> None:
    use(client, loaded)
    bad = tmp_path / "bad.yaml"
    bad.write_text("messaging-api: [147.92.128.0/33]\n")
    for args in (("policy", "msg", "--force"), ("report", "allowlist"), ("report", "tiers")):
        err = words(cli(*args, "--cidrs", str(bad), code=2).stderr)
        assert f"{bad}: range 'messaging-api': '147.92.128.0/33' is not a valid CIDR" in err


def test_bad_tier_configuration(client: ch.Client, loaded: str, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    use(client, loaded)
    monkeypatch.setenv("FLOWS_TIER_MIN_DAYS", "a week")
    assert "invalid configuration: min_days" in words(cli("report", "stability", code=2).stderr)


# -- providers: ASN data at report time (tests/standins/asn_db.py writes the MMDB) ------------------------

# cdn: 21 IPs of one CDN prefix before Nov 12 (tier D by IP count), then one more IP of that
# prefix, an IP of the CDN's other prefix, a new provider and an IP the database does not know.
CDN_ROWS = [ext(at(1 + i % 8, 9), next(rid), f"151.101.{i}.1", ns="cdn") for i in range(21)] + [
    ext(at(13, 1), next(rid), "151.101.77.7", ns="cdn"),
    ext(at(13, 2), next(rid), "199.232.5.5", ns="cdn"),
    ext(at(13, 3), next(rid), "34.100.0.1", ns="cdn"),
    ext(at(13, 4), next(rid), "52.1.1.1", ns="cdn"),
]
# swarm: P2P-like, 25 public IPs on three ports and one UDP port: no address list holds it.
SWARM_ROWS = [ext(at(1 + i % 8, 10), next(rid), f"81.{i}.7.9", 6881 + i % 3, ns="swarm") for i in range(25)] + [
    ext(at(8, 11), next(rid), "81.99.0.1", 51413, ns="swarm", proto="UDP"),
    dns(at(8, 12), next(rid), "swarm"),
]
CDN_VERDICTS = {"151.101.77.7": "known-prefix", "199.232.5.5": "known-provider", "34.100.0.1": "new-provider",
                "52.1.1.1": "no-asn"}


@pytest.fixture(scope="module")
def asn_mmdb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mmdb(tmp_path_factory.mktemp("asn") / "asn.mmdb", TWO_PROVIDERS)


@pytest.fixture(scope="module")
def providers(client: ch.Client) -> str:
    db = fresh(client)
    insert_flows(client, CDN_ROWS + SWARM_ROWS)
    return db


def test_drift_tells_new_ips_of_known_providers_from_new_providers(client: ch.Client, providers: str, cli,
                                                                   asn_mmdb: Path) -> None:
    use(client, providers)
    rows = json.loads(cli("report", "drift", "--baseline-until", "2026-11-12", "-n", "cdn", "--asn-db", str(asn_mmdb),
                          "-f", "json").stdout)
    assert {r["dst"]: r["provider"] for r in rows} == CDN_VERDICTS
    cdn_b = next(r for r in rows if r["dst"] == "199.232.5.5")
    assert (cdn_b["asn"], cdn_b["as_org"], cdn_b["prefix"]) == (64500, "Example CDN", "199.232.0.0/16")
    cli("baseline", "save", "before", "--until", "2026-11-12T00:00:00Z")
    saved = json.loads(cli("report", "drift", "--baseline", "before", "-n", "cdn", "--asn-db", str(asn_mmdb),
                           "-f", "json").stdout)
    assert {r["dst"]: r["provider"] for r in saved} == CDN_VERDICTS
    plain = json.loads(cli("report", "drift", "--baseline-until", "2026-11-12", "-n", "cdn", "-f", "json").stdout)
    assert "provider" not in plain[0] and "asn" not in plain[0]  # without a database: the output as before
    csv = cli("report", "drift", "--baseline-until", "2026-11-12", "-n", "cdn", "--asn-db", str(asn_mmdb), "-f", "csv"
              ).stdout
    assert csv.splitlines()[0].endswith(",asn,as_org,prefix,provider")
    assert "34.100.0.1,TCP,443," in csv and ",64501,Other Cloud,34.64.0.0/10,new-provider" in csv


def test_allowlist_names_providers(client: ch.Client, providers: str, cli, asn_mmdb: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    use(client, providers)
    monkeypatch.setenv("FLOWS_ASN_DB", str(asn_mmdb))
    rows = {r["dst"]: r for r in json.loads(cli("report", "allowlist", "-n", "cdn", "-f", "json").stdout)}
    assert (rows["151.101.77.7"]["asn"], rows["151.101.77.7"]["prefix"]) == (64500, "151.101.0.0/16")
    assert (rows["52.1.1.1"]["asn"], rows["52.1.1.1"]["as_org"]) == (None, "")


def test_policy_by_prefix_holds_what_a_list_of_ips_cannot(client: ch.Client, providers: str, cli,
                                                          asn_mmdb: Path) -> None:
    use(client, providers)
    refused = words(cli("policy", "cdn", code=2).stderr)  # 25 IPs: tier D
    assert "tier D" in refused and "--by port" in refused
    result = cli("policy", "cdn", "--by", "prefix", "--asn-db", str(asn_mmdb))  # 4 destinations: tier C
    doc = yaml.safe_load(result.stdout)
    validate_calico(doc)
    assert doc["metadata"]["annotations"]["egress-observatory/tier"].startswith("C: 4 external")
    rules = {tuple(r["destination"]["nets"]): r["metadata"]["annotations"] for r in doc["spec"]["egress"]
             if "nets" in r.get("destination", {})}
    assert set(rules) == {("151.101.0.0/16",), ("199.232.0.0/16",), ("34.64.0.0/10",), ("52.1.1.1/32",)}
    cdn_a = rules[("151.101.0.0/16",)]
    assert cdn_a["egress-observatory/providers"] == "AS64500 Example CDN"
    assert cdn_a["egress-observatory/addresses"].startswith("151.101.0.1, 151.101.1.1, ")
    assert cdn_a["egress-observatory/addresses"].endswith("(+2 more)")  # 22 IPs, 20 listed
    stderr = words(result.stderr)
    assert "34.64.0.0/10 is wide" in stderr
    assert "1 external IPs in no named range or ASN prefix, allowed as /32: 52.1.1.1" in stderr
    k8s = yaml.safe_load(cli("policy", "cdn", "--by", "prefix", "--asn-db", str(asn_mmdb), "-f", "k8s").stdout)
    validate_k8s(k8s)


def test_policy_by_port_for_broad_egress(client: ch.Client, providers: str, cli) -> None:
    use(client, providers)
    refused = words(cli("policy", "swarm", code=2).stderr)
    assert "tier D (26 external IPs >= 20" in refused and "--by port" in refused
    doc = yaml.safe_load(cli("policy", "swarm", "--by", "port").stdout)
    validate_calico(doc)
    by_port = {r["protocol"]: r["destination"] for r in doc["spec"]["egress"]
               if "notNets" in r.get("destination", {})}
    assert by_port["TCP"]["ports"] == ["6881:6883"] and by_port["UDP"]["ports"] == [51413]
    assert by_port["TCP"]["nets"] == ["0.0.0.0/0"] and "10.0.0.0/8" in by_port["TCP"]["notNets"]
    assert not [r for r in doc["spec"]["egress"] if r.get("destination", {}).get("nets", [""])[0].endswith("/32")]
    validate_k8s(yaml.safe_load(cli("policy", "swarm", "--by", "port", "-f", "k8s").stdout))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("policy", "cdn", "--by", "prefix"), "--by prefix needs an ASN database: --asn-db PATH or FLOWS_ASN_DB"),
        (("policy", "cdn", "--by", "cidr-group"), "--by cidr-group needs --cidrs FILE"),
        (("policy", "cdn", "--by", "ip", "--cidrs", "r.yaml"), "--by ip does not use named ranges"),
        (("policy", "cdn", "--by", "port", "--cidrs", "r.yaml"), "--by port does not use named ranges"),
        (("policy", "cdn", "--by", "asn"), "--by must be one of ip, cidr-group, prefix, port, not 'asn'"),
        (("policy", "cdn", "--by", "prefix", "--asn-db", "/nonexistent/asn.mmdb"),
         "ASN database /nonexistent/asn.mmdb: no such file"),
        (("report", "allowlist", "--asn-db", "/nonexistent/asn.mmdb"), "no such file"),
        (("report", "drift", "--baseline-until", "1d", "--asn-db", "/nonexistent/asn.mmdb"), "no such file"),
    ],
)
def test_asn_options_give_clear_errors(client: ch.Client, providers: str, cli, args: tuple[str, ...],
                                       message: str) -> None:
    use(client, providers)
    assert message in words(cli(*args, code=2).stderr)
