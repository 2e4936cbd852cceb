"""grafana/: provisioning, dashboards and alert rules, checked without a Grafana binary.

Structure is checked offline (unique panel ids, a grid without overlaps, datasource UIDs that
resolve, schemaVersion, alert rule fields). Every panel, variable and alert query is taken from
the committed files, expanded as Grafana and the grafana-clickhouse-datasource plugin expand it
(``expand`` below: the frontend's template variables, then the plugin's macros, following
pkg/macros/macros.go of the plugin and the SDK's sqlutil macro parser), and run on chDB loaded
with a synthetic cluster sent through the real enrichment path; the answers are compared with
the corpus's ground truth and with the views queried with bound parameters.

chDB opens one data directory per process: the module shares one client and gives each data
set its own database.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.analysis import evidence as analysis
from pipeline.analysis.reports import FANOUT_SQL
from pipeline.analysis.tier_rule import tier_case_sql
from pipeline.basics.metrics import REGISTRY
from pipeline.core.claims import events_from_list
from pipeline.core.enrich import Batch, add_record
from pipeline.core.envelopes import EnvelopeError, iter_file_records
from pipeline.core.registry import OwnershipRegistry
from pipeline.k8s.watch import REGISTRY as WATCH_REGISTRY
from pipeline.store import clickhouse as ch
from pipeline.store.edge_seals import seal_edges
from pipeline.store.ownership import owner_rows
from pipeline.tooling import grafana_dashboards as gd
from pipeline.tooling.synthetic import Corpus, generate
from tests.conftest import ROOT
from tests.system.test_sql import flow, insert_flows

GRAFANA = ROOT / "grafana"
UTC = dt.UTC
T = "DateTime64(6, 'UTC')"
DEMO_START = dt.datetime(2026, 11, 20, 9, tzinfo=UTC)
DEMO_DAYS = 3
# Ends off midnight on both sides: partial days come from flows, whole days from edges.
FULL = (dt.datetime(2026, 11, 19, 21, 30, tzinfo=UTC), dt.datetime(2026, 11, 23, 12, 15, tzinfo=UTC))
_db_counter = itertools.count()


# -- what Grafana and the plugin do to a query before ClickHouse sees it -------------------------


@dataclass(frozen=True)
class Range:
    """A query's time range and interval, as Grafana hands them to the datasource backend."""

    start: dt.datetime
    end: dt.datetime
    interval_s: float = 3600

    @property
    def seconds(self) -> tuple[int, int]:
        return int(self.start.timestamp()), int(self.end.timestamp())  # Go's Time.Unix(): whole seconds

    @property
    def millis(self) -> tuple[int, int]:
        return int(self.start.timestamp() * 1000), int(self.end.timestamp() * 1000)


def _args(n: int) -> Callable[[Callable[..., str]], Callable[[Range, list[str]], str]]:
    """A macro taking exactly ``n`` arguments (the plugin answers ErrorBadArgumentCount otherwise)."""

    def wrap(fn: Callable[..., str]) -> Callable[[Range, list[str]], str]:
        def macro(r: Range, args: list[str]) -> str:
            if len(args) != n:
                raise ValueError(f"expected {n} argument(s), received {len(args)}")
            return fn(r, *args)

        return macro

    return wrap


def _date(moment: dt.datetime) -> str:
    return f"toDate('{moment.astimezone(UTC):%Y-%m-%d}')"


MACROS: dict[str, Callable[[Range, list[str]], str]] = {
    # grafana-clickhouse-datasource pkg/macros/macros.go
    "fromTime": lambda r, a: f"toDateTime({r.seconds[0]})",
    "toTime": lambda r, a: f"toDateTime({r.seconds[1]})",
    "fromTime_ms": lambda r, a: f"fromUnixTimestamp64Milli({r.millis[0]})",
    "toTime_ms": lambda r, a: f"fromUnixTimestamp64Milli({r.millis[1]})",
    "timeFilter": _args(1)(lambda r, c: f"{c} >= toDateTime({r.seconds[0]}) AND {c} <= toDateTime({r.seconds[1]})"),
    "timeFilter_ms": _args(1)(lambda r, c: f"{c} >= fromUnixTimestamp64Milli({r.millis[0]}) AND "
                                           f"{c} <= fromUnixTimestamp64Milli({r.millis[1]})"),
    "dateFilter": _args(1)(lambda r, c: f"{c} >= {_date(r.start)} AND {c} <= {_date(r.end)}"),
    "dateTimeFilter": _args(2)(lambda r, d, c: f"({d} >= {_date(r.start)} AND {d} <= {_date(r.end)}) AND ("
                                               f"{c} >= toDateTime({r.seconds[0]}) AND "
                                               f"{c} <= toDateTime({r.seconds[1]}))"),
    "timeInterval": _args(1)(lambda r, c: f"toStartOfInterval(toDateTime({c}), INTERVAL {max(int(r.interval_s), 1)} "
                                          "second)"),
    "timeInterval_ms": _args(1)(lambda r, c: f"toStartOfInterval(toDateTime64({c}, 3), INTERVAL "
                                             f"{max(int(r.interval_s * 1000), 1)} millisecond)"),
    "interval_s": lambda r, a: str(max(int(r.interval_s), 1)),
}
MACROS["dt"] = MACROS["dateTimeFilter"]
_MACRO = re.compile(r"\$__(\w+)")
_VARIABLE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(\w+)|\[\[(\w+)(?::(\w+))?\]\]")


def _split_args(sql: str, open_at: int) -> tuple[list[str], int]:
    """Arguments of the parenthesis at ``open_at``: split on top-level commas, trimmed; and the end."""
    depth, start, args = 0, open_at + 1, []
    for i in range(open_at, len(sql)):
        if sql[i] == "(":
            depth += 1
        elif sql[i] == ")":
            depth -= 1
            if depth == 0:
                args.append(sql[start:i].strip())
                return ([] if args == [""] else args), i + 1
        elif sql[i] == "," and depth == 1:
            args.append(sql[start:i].strip())
            start = i + 1
    raise ValueError(f"missing closing parenthesis in {sql[open_at - 20:open_at + 40]!r}")


def expand_macros(sql: str, r: Range) -> str:
    """The plugin's backend macros: ``$__name`` ends at a word boundary (``$__fromTime_ms`` is not
    ``$__fromTime``); arguments only when ``(`` follows the name immediately."""
    out, pos = [], 0
    for m in _MACRO.finditer(sql):
        if m.start() < pos:
            continue
        name = m.group(1)
        if name not in MACROS:
            raise ValueError(f"unknown macro $__{name}")
        args, end = _split_args(sql, m.end()) if sql[m.end():m.end() + 1] == "(" else ([], m.end())
        out += [sql[pos:m.start()], MACROS[name](r, args)]
        pos = end
    return "".join(out) + sql[pos:]


def interpolate(text: str, variables: dict[str, str | list[str]]) -> str:
    """Grafana's template variables as the plugin formats them (``applyTemplateVariables``): a
    multi-value as ``'a','b'``; ``:sqlstring`` quotes every value and doubles its quotes. Names
    starting ``__`` are left alone (the backend's macros); an unknown variable is an error here."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3) or m.group(4)
        fmt = m.group(2) or m.group(5)
        if name.startswith("__"):
            return m.group(0)
        if name not in variables:
            raise ValueError(f"undefined variable ${name}")
        value = variables[name]
        values = value if isinstance(value, list) else [value]
        if fmt == "sqlstring":
            return ",".join("'" + v.replace("'", "''") + "'" for v in values)
        if fmt is None:
            return "'" + "','".join(values) + "'" if isinstance(value, list) else value
        raise ValueError(f"format {fmt} is not one the dashboards should use")

    return _VARIABLE.sub(sub, text)


def expand(sql: str, r: Range, variables: dict[str, str | list[str]] | None = None) -> str:
    """Frontend interpolation (dashboards only), then the backend's macros."""
    expanded = expand_macros(interpolate(sql, variables or {}), r)
    assert "$" not in expanded, expanded
    return expanded


def test_expander_follows_the_plugin() -> None:
    r = Range(dt.datetime(2026, 11, 20, 0, 0, 1, 900000, tzinfo=UTC), dt.datetime(2026, 11, 21, tzinfo=UTC), 0.2)
    f, t = 1795132801, 1795219200
    assert expand_macros("WHERE $__timeFilter(ts)", r) == f"WHERE ts >= toDateTime({f}) AND ts <= toDateTime({t})"
    assert expand_macros("$__fromTime,$__fromTime_ms", r) == f"toDateTime({f}),fromUnixTimestamp64Milli({f}900)"
    assert expand_macros("x($__toTime) AND f(a)", r) == f"x(toDateTime({t})) AND f(a)"  # (a) is not an argument
    assert expand_macros("$__timeInterval(toDateTime(x, 'UTC'))", r) == (
        "toStartOfInterval(toDateTime(toDateTime(x, 'UTC')), INTERVAL 1 second)")
    assert expand_macros("$__interval_s", r) == "1"
    assert expand_macros("$__dt(d, t)", r) == (f"(d >= toDate('2026-11-20') AND d <= toDate('2026-11-21')) AND "
                                                f"(t >= toDateTime({f}) AND t <= toDateTime({t}))")
    for bad in ("$__timeFilter(ts", "$__timeFilter(a, b)", "$__nope"):
        with pytest.raises(ValueError):
            expand_macros(bad, r)
    assert interpolate("${namespace:sqlstring} $x [[x]] $__fromTime", {"namespace": ["a", "o'b"], "x": "v"}) == (
        "'a','o''b' v v $__fromTime")


# -- demo data through the real enrichment path ---------------------------------------------------


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ch.Client]:
    c = ch.connect(f"chdb://{tmp_path_factory.mktemp('chdb') / 'data'}", database="g_setup")
    yield c
    c.close()


def fresh(client: ch.Client) -> str:
    client.database = f"g_{next(_db_counter)}"
    assert ch.migrate(client)
    return client.database


def load_demo(client: ch.Client) -> Corpus:
    """A synthetic cluster's journal, parsed and attributed by the worker's code, as the worker inserts it."""
    corpus = generate(seed=7, namespaces=12, records=4000, start=DEMO_START, duration_s=DEMO_DAYS * 86400)
    events, _ = events_from_list(corpus.inventory, time.time_ns())
    registry = OwnershipRegistry()
    for ev in events:
        registry.apply(ev)
    batch = Batch()
    for offset, item in enumerate(iter_file_records("journal-json", corpus.journal)):
        if isinstance(item, EnvelopeError):
            batch.add_envelope_error(item, corpus.end_ns, 0, offset)
        else:
            add_record(batch, item, registry, "calico-packet", "cali", 0, offset)
    for table, columns, ts in (("flows", batch.flows, batch.flow_ts), ("rejects", batch.rejects, batch.reject_ts)):
        ch.insert_new_rows(client, table, columns, min(ts), max(ts))
    owners = owner_rows(events)
    ch.insert_columns(client, "ownership", ch.OWNERSHIP_COLUMNS, [owners[c] for c in ch.OWNERSHIP_COLUMNS])
    return corpus


@dataclass
class Demo:
    client: ch.Client
    db: str
    corpus: Corpus

    def use(self) -> ch.Client:
        self.client.database = self.db
        return self.client

    def query(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        result = self.use().query(sql, parameters=params or None)
        return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


@pytest.fixture(scope="module")
def demo(client: ch.Client) -> Demo:
    db = fresh(client)
    return Demo(client, db, load_demo(client))


# -- the committed files --------------------------------------------------------------------------


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted((GRAFANA / "dashboards").glob("*.json"))}


def alert_file() -> dict[str, Any]:
    return yaml.safe_load(gd.ALERTS_FILE.read_text())


def rules() -> list[dict[str, Any]]:
    return [r for g in alert_file()["groups"] for r in g["rules"]]


def test_committed_files_are_the_generators_output() -> None:
    for path, text in gd.rendered().items():
        assert path.read_text(encoding="utf-8") == text, f"{path} is stale: run python -m pipeline.tooling.grafana_dashboards"  # noqa: E501
    assert {p.name for p in (GRAFANA / "dashboards").glob("*.json")} == set(gd.DASHBOARDS)


def test_datasource_provisioning() -> None:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "clickhouse.yaml").read_text())
    assert doc["apiVersion"] == 1
    (ds,) = doc["datasources"]
    assert (ds["uid"], ds["type"], ds["access"]) == (gd.CLICKHOUSE_UID, "grafana-clickhouse-datasource", "proxy")
    env = {"FLOWS_GRAFANA_CLICKHOUSE_HOST": "clickhouse.flows.svc", "FLOWS_GRAFANA_CLICKHOUSE_PORT": "8443",
           "FLOWS_GRAFANA_CLICKHOUSE_SECURE": "true", "FLOWS_GRAFANA_CLICKHOUSE_CA_CERT": "PEM",
           "FLOWS_GRAFANA_CLICKHOUSE_DATABASE": "flows", "FLOWS_GRAFANA_CLICKHOUSE_USER": "grafana",
           "FLOWS_GRAFANA_CLICKHOUSE_PASSWORD": "s3cret"}
    # Grafana expands $VAR / ${VAR} in provisioning values; where and who come from there only
    text = (GRAFANA / "provisioning" / "datasources" / "clickhouse.yaml").read_text()
    assert set(re.findall(r"\$\{(\w+)\}", text)) == set(env)
    loaded = yaml.safe_load(re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], text))["datasources"][0]
    data = loaded["jsonData"]
    # as the plugin's LoadSettings reads them (port and timeouts may be strings)
    assert (data["host"], int(str(data["port"]), 0), data["protocol"], data["username"], data["defaultDatabase"]) == (
        "clickhouse.flows.svc", 8443, "http", "grafana", "flows")
    assert str(data["secure"]).lower() == str(data["tlsAuthWithCACert"]).lower() == "true"  # ParseBool or a bool
    assert "tlsSkipVerify" not in data
    assert loaded["secureJsonData"] == {"password": "s3cret", "tlsCACert": "PEM"}
    users = (ROOT / "deploy" / "base" / "clickhouse" / "flows-users.xml").read_text()
    assert "<grafana>" in users and "GRANT SELECT ON flows.*" in users  # the read-only user it names
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "flows.yaml").read_text())
    assert providers["apiVersion"] == 1 and providers["providers"][0]["type"] == "file"


def _overlap(a: dict[str, int], b: dict[str, int]) -> bool:
    return (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
            and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])


def test_dashboard_structure() -> None:
    boards = dashboards()
    uids = {d["uid"] for d in boards.values()}
    assert len(uids) == len(boards) == 4
    for name, d in boards.items():
        assert d["schemaVersion"] == gd.SCHEMA_VERSION and d["id"] is None and d["title"], name
        variables = {v["name"]: v for v in d["templating"]["list"]}
        assert len(variables) == len(d["templating"]["list"])
        datasource_vars = {f"${{{n}}}" for n, v in variables.items() if v["type"] == "datasource"}
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), name
        for p in d["panels"]:
            pos = p["gridPos"]
            assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, (name, p["title"])
            assert p["title"] and p["description"], (name, p["id"])
            for target in p.get("targets", []):
                uid = target["datasource"]["uid"]
                assert uid == gd.CLICKHOUSE_UID or uid in datasource_vars, (name, p["title"], uid)
                assert target["datasource"] == p["datasource"]
                if "rawSql" in target:
                    assert target["format"] in (0, 1) and target["editorType"] == "sql"
            text = json.dumps(p)
            for var in re.findall(r"\$\{(\w+)", text) + re.findall(r"\$(?!__)(\w+)", text):
                assert var in variables or var.startswith("__"), (name, p["title"], var)
            for link in re.findall(r'"url": "/d/([\w-]+)/', text):
                assert link in uids, (name, p["title"], link)
        for a, b in itertools.combinations(d["panels"], 2):
            assert not _overlap(a["gridPos"], b["gridPos"]), (name, a["title"], b["title"])


def test_prometheus_panels_name_exported_metrics() -> None:
    suffixes = {"counter": ("_total",), "histogram": ("", "_bucket", "_sum", "_count"), "gauge": ("",)}
    exported = {m.name + suffix for reg in (REGISTRY, WATCH_REGISTRY) for m in reg.collect()
                for suffix in suffixes[m.type]}
    exprs = [t["expr"] for d in dashboards().values() for p in d["panels"] for t in p.get("targets", [])
             if "expr" in t]
    exprs += [q["model"]["expr"] for r in rules() for q in r["data"] if "expr" in q["model"]]
    assert len(exprs) >= 6
    for expr in exprs:
        for metric in re.findall(r"\bflows_\w+", expr):
            assert metric in exported, (metric, expr)


# -- every dashboard query against ClickHouse ----------------------------------------------------

# Column names each ClickHouse panel must answer with (the dashboards' contract with their readers).
DRIFT_COLS = ["first_seen", "namespace", "dst_kind", "dst", "proto", "port", "connections", "nodes"]
EXPECTED_COLUMNS: dict[tuple[str, str], list[str]] = {
    (gd.OVERVIEW_UID, "Namespaces with egress"): ["namespaces"],
    (gd.OVERVIEW_UID, "Connections"): ["connections"],
    (gd.OVERVIEW_UID, "New destinations"): ["new_destinations"],
    (gd.OVERVIEW_UID, "Tier A namespaces"): ["tier_a"],
    (gd.OVERVIEW_UID, "Egress fan-out per namespace"): ["namespace", "dests", "pod_ns", "svc", "external", "node",
                                                        "unknown", "connections", "first_seen", "last_seen"],
    (gd.OVERVIEW_UID, "Rollout tiers"): ["tier", "namespaces"],
    (gd.OVERVIEW_UID, "Tier per namespace"): ["namespace", "tier", "ip_peers", "internal", "high_ports", "unknown",
                                              "horizon_days", "days_since_new"],
    (gd.OVERVIEW_UID, "New destinations in the range"): DRIFT_COLS,
    (gd.NAMESPACE_UID, "Fan-out"): ["dests", "pod_ns", "svc", "external", "node", "unknown"],
    (gd.NAMESPACE_UID, "Tier"): ["tier"],
    (gd.NAMESPACE_UID, "Days since a new destination"): ["days_since_new"],
    (gd.NAMESPACE_UID, "Observed"): ["horizon_days"],
    (gd.NAMESPACE_UID, "Destinations"): ["dst_kind", "dst", "name", "proto", "ports", "first_seen", "last_seen",
                                         "connections", "nodes"],
    (gd.NAMESPACE_UID, "Connections over time"): ["time", "connections"],
    (gd.NAMESPACE_UID, "Drift events"): DRIFT_COLS,
    (gd.DRIFT_UID, "New destinations over time"): ["time", "namespace", "new_destinations"],
    (gd.DRIFT_UID, "Days since the last new destination"): ["namespace", "days_since_new"],
    (gd.DRIFT_UID, "Observation coverage and stability"): ["namespace", "first_seen", "last_seen", "days_observed",
                                                           "horizon_days", "meets_horizon", "destinations",
                                                           "last_new", "days_since_new", "stable"],
    (gd.DRIFT_UID, "Observed connections"): ["time", "connections"],
    (gd.PIPELINE_UID, "Records stored by record time"): ["time", "records", "rejected", "envelope_rejects"],
    (gd.PIPELINE_UID, "Unresolved source ratio"): ["time", "unresolved_ratio"],
    (gd.PIPELINE_UID, "Since the last insert"): ["seconds_since_insert"],
    (gd.PIPELINE_UID, "Rejects by reason"): ["stage", "reason", "lines", "last_seen", "example"],
}


def resolve_variables(demo: Demo, d: dict[str, Any], r: Range) -> dict[str, str | list[str]]:
    """Run each query variable; multi-value ones select All, single ones their first option."""
    values: dict[str, str | list[str]] = {}
    for v in d["templating"]["list"]:
        if v["type"] != "query":
            continue
        assert v["datasource"]["uid"] == gd.CLICKHOUSE_UID and v["definition"] == v["query"]["rawSql"]
        result = demo.use().query(expand(v["query"]["rawSql"], r, values))
        options = [row[0] for row in result.result_rows]
        assert options, v["name"]
        values[v["name"]] = options if v["multi"] else options[0]
    return values


def run_panels(demo: Demo, r: Range) -> dict[tuple[str, str], tuple[list[str], list[tuple]]]:
    """Every ClickHouse panel of every dashboard over ``r``: (uid, title) -> (columns, rows)."""
    answers = {}
    for d in dashboards().values():
        variables = resolve_variables(demo, d, r)
        for p in d["panels"]:
            for target in p.get("targets", []):
                if "rawSql" in target:
                    result = demo.use().query(expand(target["rawSql"], r, variables))
                    answers[(d["uid"], p["title"])] = (list(result.column_names), result.result_rows)
    return answers


def test_every_panel_query_runs_on_demo_data(demo: Demo) -> None:
    answers = run_panels(demo, Range(*FULL))
    assert set(answers) == set(EXPECTED_COLUMNS)
    for key, (columns, rows) in answers.items():
        assert columns == EXPECTED_COLUMNS[key], key
        assert rows, f"{key}: no rows"
        if columns[0] == "time":  # time series: a time column, sorted, then numbers (or a series label)
            times = [row[0] for row in rows]
            assert all(isinstance(t, dt.datetime) for t in times) and times == sorted(times), key
    # the macro-bound views answer what the views answer with bound parameters, and the ground truth
    lo, hi = FULL
    fanout_cols, fanout_rows = answers[(gd.OVERVIEW_UID, "Egress fan-out per namespace")]
    bound = demo.query(FANOUT_SQL, since=lo, until=hi)
    assert [dict(zip(fanout_cols, row, strict=True)) for row in fanout_rows] == bound
    keys = ("dests", "pod_ns", "svc", "external", "node", "unknown", "connections")
    assert {row["namespace"]: {k: row[k] for k in keys} for row in bound} == demo.corpus.expected.fanout
    assert answers[(gd.OVERVIEW_UID, "Namespaces with egress")][1] == [(len(bound),)]
    truth = demo.corpus.expected.fanout
    assert answers[(gd.OVERVIEW_UID, "Connections")][1] == [(sum(v["connections"] for v in truth.values()),)]
    summary = demo.query("SELECT * FROM summary")[0]
    records = answers[(gd.PIPELINE_UID, "Records stored by record time")][1]
    assert (sum(r[1] for r in records), sum(r[2] for r in records)) == (summary["records"], summary["rejected"])
    coverage = answers[(gd.DRIFT_UID, "Observed connections")][1]
    assert sum(r[1] for r in coverage) == sum(row["connections"] for row in bound)


def test_panels_answer_from_edges_once_flows_expired(client: ch.Client) -> None:
    """Whole days come from edges (no TTL): with flows emptied, whole-day ranges answer the same."""
    demo = Demo(client, fresh(client), load_demo(client))
    whole_days = Range(dt.datetime(2026, 11, 20, tzinfo=UTC), dt.datetime(2026, 11, 24, tzinfo=UTC), 86400)
    ch.migrate(demo.use(), ttl_days=1)  # the demo days are past flows' window: sealed history answers them
    seal_edges(demo.use())  # what the worker does every few minutes
    before = run_panels(demo, whole_days)
    demo.use().command("TRUNCATE TABLE flows")
    after = run_panels(demo, whole_days)
    for key in [(gd.OVERVIEW_UID, "Egress fan-out per namespace"), (gd.NAMESPACE_UID, "Destinations"),
                (gd.DRIFT_UID, "New destinations over time"), (gd.DRIFT_UID, "Observation coverage and stability"),
                (gd.DRIFT_UID, "Observed connections"), (gd.OVERVIEW_UID, "Tier per namespace")]:
        assert after[key] == before[key] and before[key][1], key


# -- the rollout tier, mirrored in SQL ------------------------------------------------------------


def tiers_sql(demo: Demo, r: Range) -> dict[str, str]:
    return {row["namespace"]: row["tier"] for row in demo.query(expand(gd.tier_sql(), r))}


def tiers_python(demo: Demo, r: Range) -> dict[str, str]:
    """pipeline.analysis.evidence.assign_tier over profile and stability, as `flows report tiers` runs it."""
    cfg = gd.TIER_DEFAULTS
    now = min(r.end, dt.datetime.now(UTC))
    profiles = demo.query(f"SELECT * FROM profile(since = {{s:{T}}}, until = {{u:{T}}})", s=r.start, u=r.end)
    stability = {row["namespace"]: row for row in demo.query(
        f"SELECT * FROM stability(now = {{n:{T}}}, min_days = {{m:Float64}}, stable_days = {{d:Float64}})",
        n=now, m=cfg.min_days, d=cfg.stable_days)}
    return {p["namespace"]: analysis.assign_tier(p, stability.get(p["namespace"]), cfg).tier for p in profiles}


def tier_rows() -> list[list[Any]]:
    """Twelve days of four namespaces, one per tier: pilot (A), small (B), mid (C), p2p (D)."""
    rid = itertools.count(1)
    day = [dt.datetime(2026, 11, d, 6, tzinfo=UTC) for d in range(1, 13)]
    dns = {"dst_kind": "service", "dst_ip": "10.96.0.10", "dst_port": 53, "proto": "UDP",
           "dst_namespace": "kube-system", "dst_name": "kube-dns"}
    rows = [flow(t, next(rid), ns_="pilot", **dns) for t in day]
    rows += [flow(t, next(rid), ns_="pilot", dst_kind="pod", dst_ip="10.244.2.9", dst_port=5432,
                  dst_namespace="db", dst_name="postgres") for t in day]
    for ns, ips in (("small", 2), ("mid", 6), ("p2p", 25)):
        rows += [flow(day[i % 12], next(rid), ns_=ns, dst_ip=f"8.8.{i}.{i}") for i in range(ips)]
    return rows


def test_tier_sql_agrees_with_assign_tier(demo: Demo, client: ch.Client) -> None:
    for r in (Range(*FULL), Range(DEMO_START + dt.timedelta(hours=30), FULL[1])):
        assert tiers_sql(demo, r) == tiers_python(demo, r)
    every_tier = Demo(client, fresh(client), demo.corpus)
    insert_flows(every_tier.use(), tier_rows())
    r = Range(dt.datetime(2026, 11, 1, tzinfo=UTC), dt.datetime(2026, 11, 21, tzinfo=UTC))
    assert tiers_sql(every_tier, r) == tiers_python(every_tier, r) == {"pilot": "A", "small": "B", "mid": "C",
                                                                       "p2p": "D"}


@st.composite
def tier_settings(draw: st.DrawFn) -> analysis.AnalysisSettings:
    """Any thresholds the settings accept: A <= B < D for external IPs, A <= B for internal peers."""
    a_ext = draw(st.integers(0, 6))
    b_ext = draw(st.integers(a_ext, 10))
    a_int = draw(st.integers(0, 6))
    return analysis.AnalysisSettings(
        a_max_external=a_ext, b_max_external=b_ext, d_min_external=draw(st.integers(b_ext + 1, 14)),
        a_max_internal=a_int, b_max_internal=draw(st.integers(a_int, 10)), d_min_high_ports=draw(st.integers(1, 14)))


PROFILES = st.fixed_dictionaries({name: st.integers(0, 16) for name in ("ip_peers", "internal", "high_ports",
                                                                         "unknown")})
STABILITIES = st.none() | st.fixed_dictionaries({"meets_horizon": st.booleans(), "stable": st.booleans(),
                                                  "horizon_days": st.just(1.0), "days_since_new": st.just(1.0)})
TIER_PROBE = """SELECT {tier} AS tier
FROM (SELECT 'ns' AS namespace, {ip_peers:UInt64} AS ip_peers, {internal:UInt64} AS internal,
             {high_ports:UInt64} AS high_ports, {unknown:UInt64} AS unknown) AS p
LEFT JOIN (SELECT {stability_of:String} AS namespace, toBool({meets_horizon:UInt8}) AS meets_horizon,
                  toBool({stable:UInt8}) AS stable) AS s ON s.namespace = p.namespace"""


@pytest.fixture(scope="module")
def probe(client: ch.Client) -> ch.Client:
    """The module's engine on a database of its own (the probe reads no table)."""
    fresh(client)
    return client


@settings(max_examples=300, deadline=None)
@given(cfg=tier_settings(), profile=PROFILES, stability=STABILITIES)
def test_rendered_tier_sql_agrees_with_python(probe: ch.Client, cfg: analysis.AnalysisSettings,
                                              profile: dict[str, int], stability: dict[str, Any] | None) -> None:
    """The one tier rule, rendered to SQL and run on chDB, gives the tier assign_tier gives.

    A namespace without a stability row (the LEFT JOIN finds none) is covered too.
    """
    expected = analysis.assign_tier({"namespace": "ns", **profile}, stability, cfg).tier
    known = stability or {"meets_horizon": True, "stable": True}
    sql = TIER_PROBE.replace("{tier}", tier_case_sql(cfg))
    rows = probe.query(sql, parameters={**profile, "stability_of": "ns" if stability else "another",
                                        "meets_horizon": int(known["meets_horizon"]),
                                        "stable": int(known["stable"])}).result_rows
    assert rows == [(expected,)]


# -- alert rules ----------------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+(ms|s|m|h|d|w|y))+$")
_ENV = re.compile(r"\$\{?\w+")


def test_alert_rule_structure() -> None:
    doc = alert_file()
    assert doc["apiVersion"] == 1
    boards = {d["uid"]: d for d in dashboards().values()}
    uids = [r["uid"] for r in rules()]
    assert len(uids) == len(set(uids)) == 7
    for group in doc["groups"]:
        assert group["name"] and group["folder"] == gd.FOLDER and _DURATION.match(group["interval"])
        for rule in group["rules"]:
            where = rule["uid"]
            assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", rule["uid"]) and rule["title"], where
            refs = [q["refId"] for q in rule["data"]]
            assert len(refs) == len(set(refs)) and rule["condition"] in refs, where
            assert _DURATION.match(rule["for"]) and rule["noDataState"] in ("NoData", "Alerting", "OK"), where
            assert rule["execErrState"] in ("Error", "Alerting", "OK") and rule["labels"]["severity"], where
            # Grafana expands environment variables in these values (not in models and annotations)
            for value in [rule["uid"], rule["title"], rule["condition"], rule["for"], *rule["labels"].values(),
                          *[q["datasourceUid"] for q in rule["data"]]]:
                assert not _ENV.search(str(value)), (where, value)
            panel_ids = [p["id"] for p in boards[rule["dashboardUid"]]["panels"]]
            assert rule["panelId"] in panel_ids, where
            for q in rule["data"]:
                model = q["model"]
                assert model["refId"] == q["refId"], where
                if q["datasourceUid"] == "__expr__":
                    assert model["type"] in ("threshold", "reduce", "math") and model["expression"] in refs, where
                else:
                    assert q["datasourceUid"] in (gd.CLICKHOUSE_UID, gd.PROMETHEUS_ALERT_UID), where
                    assert q["relativeTimeRange"]["from"] > q["relativeTimeRange"]["to"] == 0, where
                    assert "${" not in json.dumps(model), where  # no dashboard variables in alerts
            summary = rule["annotations"]["summary"]
            for ref in re.findall(r"\$values\.(\w+)", summary):
                assert ref in refs, where


def evaluate(demo: Demo, rule: dict[str, Any], at: dt.datetime) -> list[dict[str, Any]]:
    """Run the rule's ClickHouse query as Grafana evaluates it at ``at``, check Grafana's tabular
    contract (string columns are labels, exactly one number, one row per label set), apply the
    threshold; returns the series with ``value`` and ``firing``."""
    query, *expressions = rule["data"]
    window = query["relativeTimeRange"]
    r = Range(at - dt.timedelta(seconds=window["from"]), at - dt.timedelta(seconds=window["to"]),
              query["model"]["intervalMs"] / 1000)
    result = demo.use().query(expand(query["model"]["rawSql"], r))
    (threshold,) = [e["model"] for e in expressions if e["model"]["type"] == "threshold"]
    evaluator = threshold["conditions"][0]["evaluator"]
    assert evaluator["type"] == "gt"
    series = []
    for row in result.result_rows:
        values = dict(zip(result.column_names, row, strict=True))
        numbers = [k for k, v in values.items() if isinstance(v, (int, float, Decimal)) and not isinstance(v, bool)]
        assert len(numbers) == 1 and all(isinstance(values[k], str) for k in values if k not in numbers), values
        value = float(values.pop(numbers[0]))
        series.append({"labels": values, "value": value, "firing": value > evaluator["params"][0]})
    assert len({tuple(sorted(s["labels"].items())) for s in series}) == len(series)
    for label in re.findall(r"\$labels\.(\w+)", rule["annotations"]["summary"]):
        assert all(label in s["labels"] for s in series), (rule["uid"], label)
    return series


def rule_by_uid(uid: str) -> dict[str, Any]:
    return next(r for r in rules() if r["uid"] == uid)


def test_new_destination_alerts(demo: Demo) -> None:
    identities = demo.query(f"SELECT namespace, dst, proto, port, first_seen FROM drift(baseline_until = "
                            f"{{b:{T}}}, since = {{b:{T}}}, until = {{u:{T}}}) ORDER BY first_seen DESC",
                            b=DEMO_START + dt.timedelta(hours=12), u=FULL[1])
    late = identities[0]  # the latest first sighting
    at = late["first_seen"].replace(tzinfo=UTC) + dt.timedelta(minutes=10)
    key = {"namespace": late["namespace"], "dst": late["dst"], "proto": late["proto"],
           "port": "" if late["port"] is None else str(late["port"])}
    general, watched = rule_by_uid("flows-new-destination"), rule_by_uid("flows-new-destination-watched")

    def fired(rule: dict[str, Any], when: dt.datetime = at) -> list[dict[str, str]]:
        return [{k: s["labels"][k] for k in key} for s in evaluate(demo, rule, when) if s["firing"]]

    assert key in fired(general) and evaluate(demo, watched, at) == []
    assert key not in fired(general, at + dt.timedelta(minutes=30))  # the window moved past its first sighting
    demo.use().command("INSERT INTO watched_namespaces (namespace, mode) VALUES ({ns:String}, 'enforced')",
                       parameters={"ns": late["namespace"]})
    try:
        assert key not in fired(general)
        series = [s for s in evaluate(demo, watched, at) if {k: s["labels"][k] for k in key} == key]
        assert len(series) == 1 and series[0]["firing"] and series[0]["labels"]["mode"] == "enforced"
        assert series[0]["labels"]["first_seen"] == late["first_seen"].strftime("%Y-%m-%d %H:%M:%S")
    finally:
        demo.use().command("DELETE FROM watched_namespaces WHERE namespace = {ns:String}",
                           parameters={"ns": late["namespace"]})


def window_counts(demo: Demo, at: dt.datetime, seconds: int) -> dict[str, int]:
    """The ratio alerts' inputs counted straight from the tables."""
    lo, hi = at - dt.timedelta(seconds=seconds), at
    flows = demo.query(f"SELECT uniqExact(record_id) AS records, uniqExactIf(record_id, direction = 'egress') AS "
                       f"egress, uniqExactIf(record_id, direction = 'egress' AND src_namespace = '') AS unattributed "
                       f"FROM flows WHERE ts >= {{lo:{T}}} AND ts < {{hi:{T}}}", lo=lo, hi=hi)[0]
    rejected = demo.query(f"SELECT uniqExact(record_id) AS n FROM rejects WHERE stage = 'line' AND ts >= {{lo:{T}}} "
                          f"AND ts < {{hi:{T}}}", lo=lo, hi=hi)[0]["n"]
    return {**flows, "rejected": rejected}


def test_pipeline_alerts(demo: Demo, client: ch.Client) -> None:
    reject = demo.query("SELECT max(ts) AS ts FROM rejects WHERE stage = 'line'")[0]["ts"].replace(tzinfo=UTC)
    at = reject + dt.timedelta(minutes=5)
    n = window_counts(demo, at, 1800)
    (series,) = evaluate(demo, rule_by_uid("flows-reject-ratio"), at)
    assert series["value"] == pytest.approx(n["rejected"] / (n["records"] + n["rejected"])) and series["firing"]
    unowned = demo.query("SELECT max(ts) AS ts FROM flows WHERE direction = 'egress' AND src_namespace = ''")[0]["ts"]
    at = unowned.replace(tzinfo=UTC) + dt.timedelta(minutes=5)
    n = window_counts(demo, at, 1800)
    (series,) = evaluate(demo, rule_by_uid("flows-unresolved-sources"), at)
    assert n["unattributed"] and series["value"] == pytest.approx(n["unattributed"] / n["egress"])
    assert series["firing"] == (series["value"] > 0.05)
    stalled = rule_by_uid("flows-ingestion-stalled")
    (series,) = evaluate(demo, stalled, dt.datetime.now(UTC))
    assert series["firing"]  # the demo's records are days old: nothing recent was stored
    live = Demo(client, fresh(client), demo.corpus)
    insert_flows(live.use(), [flow(dt.datetime.now(UTC) - dt.timedelta(seconds=30), 1)])
    (series,) = evaluate(live, stalled, dt.datetime.now(UTC))
    assert not series["firing"] and series["value"] < 900
