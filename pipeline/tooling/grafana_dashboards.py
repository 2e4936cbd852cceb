"""Grafana dashboards and alert rules, generated from one place so that every panel is built alike.

Every query reads the views of ``sql/`` (fanout, destinations, drift, stability, profile,
allowlist, connections_over_time, pipeline_series, freshness, watched) through the official
``grafana-clickhouse-datasource`` plugin, with its macros for the time range:
``fanout(since = $__fromTime, until = $__toTime)`` (``$__fromTime`` is ``toDateTime(<seconds>)``,
which binds to the views' DateTime64 parameters). The rollout tier (``tier_sql``) is rendered
from the one tier rule, ``pipeline.analysis.tier_rule``, which ``assign_tier`` evaluates in Python.

``python -m pipeline.tooling.grafana_dashboards`` rewrites ``grafana/dashboards/*.json`` and
``grafana/provisioning/alerting/flows-alerts.yaml``, and copies them with the datasource file into
``deploy/components/grafana/files/``; tests/system/test_grafana.py checks that the committed files are
exactly this output.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.analysis.evidence import AnalysisSettings
from pipeline.analysis.tier_rule import tier_case_sql

ROOT = Path(__file__).resolve().parents[2] / "grafana"  # a generator run from a checkout
DASHBOARD_DIR = ROOT / "dashboards"
ALERTS_FILE = ROOT / "provisioning" / "alerting" / "flows-alerts.yaml"
DATASOURCE_FILE = ROOT / "provisioning" / "datasources" / "clickhouse.yaml"  # written by hand
# kustomize loads files only from inside a kustomization's directory (unless every user passes
# --load-restrictor LoadRestrictionsNone), so the Grafana component carries copies of what it ships.
COMPONENT_COPY = ROOT.parent / "deploy" / "components" / "grafana" / "files"

CLICKHOUSE_UID = "flows-clickhouse"  # grafana/provisioning/datasources/clickhouse.yaml
CLICKHOUSE = {"type": "grafana-clickhouse-datasource", "uid": CLICKHOUSE_UID}
PROMETHEUS_VAR = {"type": "prometheus", "uid": "${prometheus}"}
# Alert rules cannot use dashboard variables: the Prometheus that scrapes the pipeline is
# referenced by the UID kube-prometheus-stack gives its default Prometheus datasource.
PROMETHEUS_ALERT_UID = "prometheus"
SCHEMA_VERSION = 39
FOLDER = "Egress observatory"

OVERVIEW_UID = "flows-overview"
NAMESPACE_UID = "flows-namespace"
DRIFT_UID = "flows-drift"
PIPELINE_UID = "flows-pipeline"

RANGE = "since = $__fromTime, until = $__toTime"
NS_IN = "namespace IN (${namespace:sqlstring})"
NS_EQ = "namespace = ${namespace:sqlstring}"
# sqlds' data formats: 0 time series (long rows become one series per string column value), 1 table
_FORMATS = {"timeseries": (0, "timeseries"), "table": (1, "table")}

# The tier thresholds are the documented defaults (FLOWS_TIER_*), not this process's environment.
TIER_DEFAULTS = AnalysisSettings.model_construct()


def tier_sql(cfg: AnalysisSettings = TIER_DEFAULTS) -> str:
    """Rollout tier per namespace over the dashboard's range: ``assign_tier`` without named ranges.

    Stability is taken as of the range's end (or now), as ``flows report tiers`` does.
    """
    return (
        "SELECT p.namespace AS namespace,\n"
        f"  {tier_case_sql(cfg, profile='p', stability='s')} AS tier,\n"
        "  p.ip_peers AS ip_peers, p.internal AS internal, p.high_ports AS high_ports, p.unknown AS unknown,\n"
        "  s.horizon_days AS horizon_days, s.days_since_new AS days_since_new\n"
        f"FROM profile({RANGE}) AS p\n"
        f"LEFT JOIN stability(now = least($__toTime, now()), min_days = {cfg.min_days}, "
        f"stable_days = {cfg.stable_days}) AS s ON s.namespace = p.namespace"
    )


def stability_sql(cfg: AnalysisSettings = TIER_DEFAULTS) -> str:
    return (f"stability(now = least($__toTime, now()), min_days = {cfg.min_days}, "
            f"stable_days = {cfg.stable_days})")


# -- panels ------------------------------------------------------------------------------------


class Grid:
    """Places panels left to right in rows of Grafana's 24 columns."""

    def __init__(self) -> None:
        self.x = self.y = self.row_h = 0

    def place(self, w: int, h: int) -> dict[str, int]:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos


def sql_target(sql: str, fmt: str) -> dict[str, Any]:
    """A query of the ClickHouse plugin's SQL editor."""
    number, query_type = _FORMATS[fmt]
    return {"refId": "A", "datasource": CLICKHOUSE, "editorType": "sql", "format": number,
            "queryType": query_type, "rawSql": sql}


def prom_target(expr: str, legend: str, ref: str = "A") -> dict[str, Any]:
    return {"refId": ref, "datasource": PROMETHEUS_VAR, "expr": expr, "legendFormat": legend, "range": True}


def namespace_link() -> dict[str, Any]:
    """Field override: a namespace cell opens its detail dashboard with the same time range."""
    return {"matcher": {"id": "byName", "options": "namespace"},
            "properties": [{"id": "links", "value": [{
                "title": "Namespace detail",
                "url": f"/d/{NAMESPACE_UID}/egress-namespace-detail?var-namespace=${{__value.raw}}"
                       "&${__url_time_range}"}]}]}


@dataclass
class Board:
    """One dashboard: panels get ids in order and a place on the grid."""

    uid: str
    title: str
    description: str
    variables: list[dict[str, Any]] = field(default_factory=list)
    panels: list[dict[str, Any]] = field(default_factory=list)
    grid: Grid = field(default_factory=Grid)

    def add(self, kind: str, title: str, w: int, h: int, *, description: str,
            targets: list[dict[str, Any]] | None = None, unit: str = "short",
            overrides: list[dict[str, Any]] | None = None, options: dict[str, Any] | None = None,
            custom: dict[str, Any] | None = None, thresholds: list[tuple[float | None, str]] | None = None) -> None:
        panel: dict[str, Any] = {"id": len(self.panels) + 1, "type": kind, "title": title,
                                 "description": description, "gridPos": self.grid.place(w, h)}
        if targets:
            panel["datasource"] = targets[0]["datasource"]
            panel["targets"] = targets
            steps = [{"color": color, "value": value} for value, color in (thresholds or [(None, "green")])]
            panel["fieldConfig"] = {
                "defaults": {"unit": unit, "custom": custom or {}, "color": {"mode": "palette-classic"},
                             "thresholds": {"mode": "absolute", "steps": steps}},
                "overrides": overrides or []}
        panel["options"] = options or {}
        self.panels.append(panel)

    def table(self, title: str, sql: str, w: int, h: int, *, description: str, sort_by: str | None = None,
              overrides: list[dict[str, Any]] | None = None) -> None:
        """Sortable by any column header; ``sort_by`` is the initial (descending) order."""
        options: dict[str, Any] = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
        if sort_by:
            options["sortBy"] = [{"displayName": sort_by, "desc": True}]
        self.add("table", title, w, h, description=description, targets=[sql_target(sql, "table")],
                 overrides=overrides, options=options, custom={"filterable": True, "align": "auto"})

    def stat(self, title: str, sql: str, w: int, *, description: str, unit: str = "short", fields: str = "",
             thresholds: list[tuple[float | None, str]] | None = None) -> None:
        self.add("stat", title, w, 4, description=description, targets=[sql_target(sql, "table")], unit=unit,
                 thresholds=thresholds,
                 options={"reduceOptions": {"values": False, "calcs": ["lastNotNull"], "fields": fields},
                          "colorMode": "value", "graphMode": "none", "textMode": "auto", "justifyMode": "auto"})

    def series(self, title: str, targets: list[dict[str, Any]], w: int, h: int, *, description: str,
               unit: str = "short", bars: bool = False, stack: bool = False) -> None:
        custom = {"drawStyle": "bars" if bars else "line", "fillOpacity": 60 if bars else 10, "lineWidth": 1,
                  "showPoints": "never", "spanNulls": False,
                  "stacking": {"mode": "normal" if stack else "none", "group": "A"}}
        self.add("timeseries", title, w, h, description=description, targets=targets, unit=unit, custom=custom,
                 options={"legend": {"displayMode": "table", "placement": "right", "calcs": ["sum"]},
                          "tooltip": {"mode": "multi", "sort": "desc"}})

    def text(self, title: str, content: str, w: int, h: int, *, description: str) -> None:
        self.add("text", title, w, h, description=description, options={"mode": "markdown", "content": content})

    def json(self) -> dict[str, Any]:
        return {
            "id": None, "uid": self.uid, "title": self.title, "description": self.description,
            "tags": ["flows", "egress"], "timezone": "utc", "schemaVersion": SCHEMA_VERSION, "version": 1,
            "editable": False, "graphTooltip": 1, "refresh": "5m", "fiscalYearStartMonth": 0, "liveNow": False,
            "time": {"from": "now-7d", "to": "now"},
            "timepicker": {"refresh_intervals": ["1m", "5m", "15m", "1h"]},
            "templating": {"list": self.variables},
            "annotations": {"list": []},
            "links": [{"title": "Egress observatory", "type": "dashboards", "tags": ["flows"], "asDropdown": True,
                       "keepTime": True, "includeVars": False, "targetBlank": False, "icon": "external link",
                       "tooltip": "", "url": ""}],
            "panels": self.panels,
        }


def namespace_variable(multi: bool) -> dict[str, Any]:
    """Namespaces with attributed egress in the selected range."""
    sql = f"SELECT namespace FROM fanout({RANGE}) ORDER BY namespace"
    return {"name": "namespace", "label": "Namespace", "type": "query", "datasource": CLICKHOUSE,
            "query": {"refId": "namespace", "queryType": "sql", "rawSql": sql}, "definition": sql,
            "refresh": 2, "sort": 1, "multi": multi, "includeAll": multi, "hide": 0,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]} if multi else {},
            "options": [], "regex": "", "skipUrlSync": False}


PROMETHEUS_VARIABLE = {"name": "prometheus", "label": "Prometheus", "type": "datasource", "query": "prometheus",
                       "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": [], "skipUrlSync": False}


# -- dashboards --------------------------------------------------------------------------------


def drift_sql(ns_filter: str) -> str:
    return ("SELECT first_seen, namespace, dst_kind, dst, proto, port, connections, "
            "arrayStringConcat(nodes, ', ') AS nodes\n"
            f"FROM drift(baseline_until = $__fromTime, {RANGE})\nWHERE {ns_filter}\nORDER BY first_seen DESC")


def overview() -> dict[str, Any]:
    b = Board(OVERVIEW_UID, "Egress overview",
              "Per-namespace egress fan-out, rollout tiers and new destinations (sql/005, sql/006).",
              variables=[namespace_variable(multi=True)])
    b.stat("Namespaces with egress", f"SELECT count() AS namespaces FROM fanout({RANGE}) WHERE {NS_IN}", 6,
           description="Source namespaces with attributed egress in the range.")
    b.stat("Connections", f"SELECT sum(connections) AS connections FROM fanout({RANGE}) WHERE {NS_IN}", 6,
           description="New connections logged by Calico (distinct records), attributed egress only.")
    b.stat("New destinations", f"SELECT count() AS new_destinations FROM drift(baseline_until = $__fromTime, "
           f"{RANGE}) WHERE {NS_IN}", 6,
           description="Destination identities (peer, protocol, port) first seen inside the range.",
           thresholds=[(None, "green"), (1, "orange")])
    b.stat("Tier A namespaces", f"SELECT countIf(tier = 'A') AS tier_a FROM ({tier_sql()}) WHERE {NS_IN}", 6,
           description="Namespaces that only talk inside the cluster, stable and observed long enough: "
                       "pilot candidates for enforcement.")
    b.table("Egress fan-out per namespace",
            "SELECT namespace, dests, pod_ns, svc, external, node, unknown, connections, first_seen, last_seen\n"
            f"FROM fanout({RANGE})\nWHERE {NS_IN}\nORDER BY dests DESC, namespace", 24, 12, sort_by="dests",
            description="dests = pod namespaces + services + external IPs: what an egress policy must allow. "
                        "node and unknown are shown beside it. Click a namespace for its destinations.",
            overrides=[namespace_link()])
    b.add("piechart", "Rollout tiers", 8, 10, targets=[sql_target(
        f"SELECT tier, count() AS namespaces FROM ({tier_sql()}) WHERE {NS_IN} GROUP BY tier ORDER BY tier",
        "table")],
        description="A pilot, B small, C investigate, D keep logging (flows report tiers, without named ranges).",
        options={"reduceOptions": {"values": True, "calcs": [], "fields": ""}, "pieType": "donut",
                 "legend": {"displayMode": "table", "placement": "right", "values": ["value"]},
                 "displayLabels": ["name", "value"]})
    b.table("Tier per namespace", f"SELECT namespace, tier, ip_peers, internal, high_ports, unknown, horizon_days, "
            f"days_since_new\nFROM ({tier_sql()})\nWHERE {NS_IN}\nORDER BY tier, namespace", 16, 10,
            description="The measures the tier rules read; stability as of the end of the range.",
            overrides=[namespace_link()])
    b.table("New destinations in the range", drift_sql(NS_IN), 24, 10, sort_by="first_seen",
            description="Identities first seen inside the range: new peers, or new ports/protocols to known ones.",
            overrides=[namespace_link()])
    return b.json()


POLICY_TEXT = """\
### Egress policy for `${namespace}`

The allowlist above is the evidence a policy is generated from. Preview it with the CLI:

```
flows report allowlist -n ${namespace}
flows policy ${namespace} --staged -o ${namespace}-egress.yaml
```

`--staged` writes a Calico StagedNetworkPolicy (reported, not enforced). `flows policy` refuses
tier D, unstable or under-observed namespaces unless `--force` is given. Once enforced, watch it:

```
flows sql "INSERT INTO watched_namespaces (namespace, mode) VALUES ('${namespace}', 'enforced')"
```
"""


def namespace_detail() -> dict[str, Any]:
    b = Board(NAMESPACE_UID, "Egress namespace detail",
              "Every destination of one namespace with ports, first/last seen, connections and nodes.",
              variables=[namespace_variable(multi=False)])
    b.stat("Fan-out", f"SELECT dests, pod_ns, svc, external, node, unknown FROM fanout({RANGE}) "
           f"WHERE {NS_EQ}", 10, description="dests = pod_ns + svc + external; node and unknown beside it.",
           fields="/.*/")
    b.stat("Tier", f"SELECT tier FROM ({tier_sql()}) WHERE {NS_EQ}", 4, fields="/^tier$/",
           description="Rollout tier (A pilot, B small, C investigate, D keep logging).")
    b.stat("Days since a new destination", f"SELECT days_since_new FROM {stability_sql()} WHERE {NS_EQ}", 5,
           unit="d", thresholds=[(None, "orange"), (TIER_DEFAULTS.stable_days, "green")],
           description=f"Stable after {TIER_DEFAULTS.stable_days} days without a new destination.")
    b.stat("Observed", f"SELECT horizon_days FROM {stability_sql()} WHERE {NS_EQ}", 5, unit="d",
           thresholds=[(None, "orange"), (TIER_DEFAULTS.min_days, "green")],
           description=f"First to last line; enforcement wants at least {TIER_DEFAULTS.min_days} days.")
    b.table("Destinations",
            "SELECT dst_kind, dst, name, proto, arrayStringConcat(arrayMap(p -> toString(p), ports), ', ') AS ports,\n"
            "  first_seen, last_seen, connections, arrayStringConcat(nodes, ', ') AS nodes\n"
            f"FROM allowlist({RANGE})\nWHERE {NS_EQ}\nORDER BY dst_kind, dst, name, proto", 24, 12,
            sort_by="connections",
            description="One row per destination and protocol (sql/006 allowlist): what a policy has to allow.")
    b.series("Connections over time", [sql_target(
        "SELECT bucket AS time, connections\n"
        f"FROM connections_over_time({RANGE}, step_s = $__interval_s)\nWHERE {NS_EQ}\nORDER BY time",
        "timeseries")], 16, 9, description="New connections per interval (daily points before flows' retention).")
    b.text("Policy preview", POLICY_TEXT, 8, 9, description="Generate the egress policy from this evidence.")
    b.table("Drift events", drift_sql(NS_EQ), 24, 8, sort_by="first_seen",
            description="Destinations first seen inside the range.")
    return b.json()


def drift_and_stability() -> dict[str, Any]:
    cfg = TIER_DEFAULTS
    b = Board(DRIFT_UID, "Egress drift and stability",
              "When namespaces start talking to something new, and whether their egress has settled.",
              variables=[namespace_variable(multi=True)])
    b.series("New destinations over time", [sql_target(
        "SELECT toDateTime(toStartOfInterval(first_seen, toIntervalSecond($__interval_s)), 'UTC') AS time,\n"
        "  namespace, count() AS new_destinations\n"
        f"FROM drift(baseline_until = $__fromTime, {RANGE})\nWHERE {NS_IN}\nGROUP BY time, namespace\n"
        "ORDER BY time, namespace", "timeseries")], 24, 9, bars=True, stack=True,
        description="First sightings of destination identities per interval, per namespace.")
    b.add("bargauge", "Days since the last new destination", 10, 12, unit="d", targets=[sql_target(
        f"SELECT namespace, days_since_new\nFROM {stability_sql()}\nWHERE {NS_IN}\nORDER BY days_since_new",
        "table")],
        thresholds=[(None, "orange"), (cfg.stable_days, "green")],
        description=f"Green: stable (no new destination for {cfg.stable_days} days).",
        options={"reduceOptions": {"values": True, "calcs": [], "fields": "/^days_since_new$/"},
                 "displayMode": "basic", "orientation": "horizontal", "showUnfilled": True})
    b.table("Observation coverage and stability",
            "SELECT namespace, first_seen, last_seen, days_observed, horizon_days, meets_horizon, destinations,\n"
            f"  last_new, days_since_new, stable\nFROM {stability_sql()}\nWHERE {NS_IN}\nORDER BY namespace", 14, 12,
            description=f"meets_horizon: first to last line >= {cfg.min_days} days; days_observed: UTC days with "
                        "traffic; stable: no new destination for the last "
                        f"{cfg.stable_days} days.", overrides=[namespace_link()])
    b.series("Observed connections", [sql_target(
        "SELECT bucket AS time, sum(connections) AS connections\n"
        f"FROM connections_over_time({RANGE}, step_s = $__interval_s)\nWHERE {NS_IN}\nGROUP BY time\nORDER BY time",
        "timeseries")], 24, 7,
        description="Gaps mean no observation (no logging, or the pipeline was down): they shorten the evidence.")
    return b.json()


def pipeline_health() -> dict[str, Any]:
    b = Board(PIPELINE_UID, "Egress pipeline health",
              "Lines in, parsed and rejected, unresolved sources, insert latency, consumer lag, watcher freshness.",
              variables=[PROMETHEUS_VARIABLE])
    b.series("Records stored by record time", [sql_target(
        "SELECT bucket AS time, records, rejected, envelope_rejects\n"
        f"FROM pipeline_series({RANGE}, step_s = $__interval_s)\nORDER BY time", "timeseries")], 12, 8,
        description="From ClickHouse: distinct records, rejected Calico lines and undecodable messages, "
                    "bucketed by the records' own time (a backfill shows up in the past).")
    b.series("Unresolved source ratio", [sql_target(
        "SELECT bucket AS time, if(egress = 0, 0, unattributed / egress) AS unresolved_ratio\n"
        f"FROM pipeline_series({RANGE}, step_s = $__interval_s)\nORDER BY time", "timeseries")], 8, 8,
        unit="percentunit", description="Egress records whose source IP no pod owned (inventory or watcher gaps).")
    b.stat("Since the last insert", "SELECT seconds_since_insert FROM freshness", 4, unit="s",
           thresholds=[(None, "green"), (900, "red")],
           description="Age of the newest row written for a record of the last two days.")
    b.series("Lines in, parsed, rejected", [prom_target(
        "sum by (outcome) (rate(flows_records_total[$__rate_interval]))", "{{outcome}}")], 12, 8, unit="ops",
        description="Worker counters: records taken from the raw topic (received), and by outcome.")
    b.series("Insert latency", [
        prom_target("histogram_quantile(0.5, sum by (le) (rate(flows_insert_seconds_bucket[$__rate_interval])))",
                    "p50"),
        prom_target("histogram_quantile(0.95, sum by (le) (rate(flows_insert_seconds_bucket[$__rate_interval])))",
                    "p95", ref="B"),
        prom_target("max(flows_insert_blocked)", "blocked (retrying)", ref="C")], 12, 8, unit="s",
        description="Batch insert time into ClickHouse; 'blocked' is 1 while a failed insert is retried.")
    b.series("Consumer lag", [prom_target("sum(flows_consumer_lag_messages)", "messages behind")], 8, 8,
             description="Raw-topic messages not yet confirmed in ClickHouse (end offset - committed offset).")
    b.series("Unattributed connections", [prom_target(
        "sum(rate(flows_unattributed_connections_total[$__rate_interval]))"
        " / clamp_min(sum(rate(flows_records_total{outcome=\"parsed\"}[$__rate_interval])), 1e-9)",
        "unattributed / parsed")], 8, 8, unit="percentunit",
        description="Worker counters: share of parsed records whose egress source no pod owned.")
    b.series("Watcher freshness", [prom_target(
        "time() - max by (resource) (flows_watch_newest_event_timestamp_seconds)", "{{resource}}")], 8, 8,
        unit="s", description="Seconds since the k8s watcher last heard from the API server (bookmarks count).")
    b.series("Attribution: held, released, repaired", [
        prom_target("sum(flows_held_records)", "held (waiting for ownership)"),
        prom_target("sum by (outcome) (rate(flows_hold_released_total[$__rate_interval]))", "released {{outcome}}",
                    ref="B"),
        prom_target("sum(rate(flows_rows_repaired_total[$__rate_interval]))", "repaired rows", ref="C")], 12, 8,
        description="Records waiting for ownership that covers their time (bounded by FLOWS_HOLD_MAX_S), how they "
                    "left the hold (attributed, or stored unattributed for repair), and stored rows attributed "
                    "later. docs/attribution.md explains the rule.")
    b.series("Ownership watermark lag", [prom_target(
        "time() - max(flows_owners_watermark_timestamp_seconds)", "seconds behind now")], 12, 8, unit="s",
        description="How far behind now ownership publishers vouch for completeness (watcher progress, inventory "
                    "snapshot time). Records newer than the watermark less FLOWS_OWNERSHIP_ALLOWANCE_S may wait.")
    b.series("Rows refused by ClickHouse", [prom_target(
        "sum(increase(flows_quarantined_rows_total[$__rate_interval]))", "quarantined rows")], 8, 8,
        description="Rows the server refused on their own (a deterministic error, found by splitting the batch): "
                    "stored in rejects with stage 'insert' and the server's message instead.")
    b.table("Rejects by reason",
            "SELECT stage, reason, uniqExact(record_id) AS lines, max(ts) AS last_seen, any(raw) AS example\n"
            "FROM rejects\nWHERE $__timeFilter(ts)\nGROUP BY stage, reason\nORDER BY lines DESC", 16, 8,
            sort_by="lines", description="Dead letters kept with their reason; the raw input is in rejects.raw.")
    return b.json()


DASHBOARDS = {
    "egress-overview.json": overview,
    "egress-namespace.json": namespace_detail,
    "egress-drift.json": drift_and_stability,
    "pipeline-health.json": pipeline_health,
}


# -- alert rules -------------------------------------------------------------------------------

NEW_DESTINATION_SQL = (
    "SELECT namespace, dst_kind, dst, proto, ifNull(toString(port), '') AS port,\n"
    "  toString(toDateTime(first_seen)) AS first_seen, connections\n"
    "FROM drift(baseline_until = $__fromTime, since = $__fromTime, until = $__toTime)\n"
)
RATIO_SQL = (
    "SELECT if({den} = 0, 0, {num} / {den}) AS {name}\n"
    "FROM (SELECT sum(records) AS records, sum(rejected) AS rejected, sum(egress) AS egress,\n"
    "             sum(unattributed) AS unattributed\n"
    "      FROM pipeline_series(since = $__fromTime, until = $__toTime, step_s = 3600))"
)


def clickhouse_query(sql: str, window_s: int) -> dict[str, Any]:
    """A ClickHouse query over the last ``window_s`` seconds; tabular: strings are labels, one number."""
    return {"refId": "A", "relativeTimeRange": {"from": window_s, "to": 0}, "datasourceUid": CLICKHOUSE_UID,
            "model": {**sql_target(sql, "table"), "intervalMs": 60000, "maxDataPoints": 43200}}


def prometheus_query(expr: str, window_s: int) -> dict[str, Any]:
    """A Prometheus range query over the last ``window_s`` seconds (reduce it before a threshold)."""
    return {"refId": "A", "relativeTimeRange": {"from": window_s, "to": 0}, "datasourceUid": PROMETHEUS_ALERT_UID,
            "model": {"refId": "A", "datasource": {"type": "prometheus", "uid": PROMETHEUS_ALERT_UID},
                      "expr": expr, "range": True, "instant": False, "intervalMs": 60000, "maxDataPoints": 43200}}


def expression(ref: str, model: dict[str, Any]) -> dict[str, Any]:
    return {"refId": ref, "datasourceUid": "__expr__",
            "model": {"refId": ref, "datasource": {"type": "__expr__", "uid": "__expr__"}, **model}}


def threshold(ref: str, of: str, op: str, value: float) -> dict[str, Any]:
    return expression(ref, {"type": "threshold", "expression": of,
                            "conditions": [{"evaluator": {"type": op, "params": [value]}}]})


def panel_id(dashboard_uid: str, title: str) -> int:
    """The id of a generated panel, for an alert rule's link to it."""
    board = next(b for b in (build() for build in DASHBOARDS.values()) if b["uid"] == dashboard_uid)
    return next(p["id"] for p in board["panels"] if p["title"] == title)


def rule(uid: str, title: str, data: list[dict[str, Any]], *, for_: str, severity: str, summary: str,
         description: str, no_data: str, dashboard: str, panel: str) -> dict[str, Any]:
    return {"uid": uid, "title": title, "condition": data[-1]["refId"], "data": data, "for": for_,
            "noDataState": no_data, "execErrState": "Error", "isPaused": False,
            "dashboardUid": dashboard, "panelId": panel_id(dashboard, panel),
            "labels": {"severity": severity, "component": "flows"},
            "annotations": {"summary": summary, "description": description}}


NEW_DESTINATION_SUMMARY = (
    "{{ $labels.namespace }} talks to something new: {{ $labels.dst_kind }} {{ $labels.dst }} "
    "{{ $labels.proto }}{{ if $labels.port }}/{{ $labels.port }}{{ end }}, first seen {{ $labels.first_seen }} UTC")


def alert_rules() -> dict[str, Any]:
    """Grafana unified-alerting file provisioning (apiVersion 1)."""
    drift_rules = [
        rule("flows-new-destination", "New egress destination",
             [clickhouse_query(NEW_DESTINATION_SQL + "WHERE namespace NOT IN (SELECT namespace FROM watched)", 1800),
              threshold("B", "A", "gt", 0)],
             for_="0s", severity="warning", no_data="OK", dashboard=DRIFT_UID, panel="New destinations over time",
             summary=NEW_DESTINATION_SUMMARY,
             description="A destination identity (peer, protocol, port) first seen in the last 30 minutes, in a "
                         "namespace not listed in watched_namespaces. Expected during rollout; review it with "
                         "flows report drift -n <namespace>."),
    ]
    watched_rules = [
        rule("flows-new-destination-watched", "New egress destination in a watched namespace",
             [clickhouse_query(
                 "SELECT d.namespace AS namespace, w.current_mode AS mode, d.dst_kind AS dst_kind, d.dst AS dst,\n"
                 "  d.proto AS proto, ifNull(toString(d.port), '') AS port,\n"
                 "  toString(toDateTime(d.first_seen)) AS first_seen, d.connections AS connections\n"
                 "FROM drift(baseline_until = $__fromTime, since = $__fromTime, until = $__toTime) AS d\n"
                 "INNER JOIN watched AS w ON w.namespace = d.namespace", 3600),
              threshold("B", "A", "gt", 0)],
             for_="0s", severity="critical", no_data="OK", dashboard=NAMESPACE_UID, panel="Drift events",
             summary=NEW_DESTINATION_SUMMARY + " ({{ $labels.mode }} namespace)",
             description="A namespace marked enforced or watched in watched_namespaces reached a destination "
                         "never seen before (last hour). If its policy is enforced this traffic is probably "
                         "being denied: check the workload, then the allowlist."),
    ]
    ratio = {"num": "rejected", "den": "(records + rejected)", "name": "reject_ratio"}
    unresolved = {"num": "unattributed", "den": "egress", "name": "unresolved_ratio"}
    pipeline_rules = [
        rule("flows-ingestion-stalled", "Egress ingestion stalled",
             [clickhouse_query("SELECT seconds_since_insert FROM freshness", 600), threshold("B", "A", "gt", 900)],
             for_="5m", severity="critical", no_data="Alerting", dashboard=PIPELINE_UID, panel="Since the last insert",
             summary="No Calico record stored for {{ $values.A.Value }} s (over 15 min)",
             description="Nothing from the last two days was written to ClickHouse in 15 minutes: shippers, "
                         "Kafka or the workers are stuck (flows status, worker logs, consumer lag)."),
        rule("flows-reject-ratio", "Egress reject ratio high",
             [clickhouse_query(RATIO_SQL.format(**ratio), 1800), threshold("B", "A", "gt", 0.01)],
             for_="10m", severity="warning", no_data="OK", dashboard=PIPELINE_UID, panel="Rejects by reason",
             summary="{{ humanizePercentage $values.A.Value }} of Calico lines rejected in 30 min (over 1 %)",
             description="Lines that do not parse are kept in rejects with their reason: a changed log prefix "
                         "(FLOWS_LOG_PREFIX) or a new Calico/kernel format is the usual cause."),
        rule("flows-unresolved-sources", "Egress sources unresolved",
             [clickhouse_query(RATIO_SQL.format(**unresolved), 1800), threshold("B", "A", "gt", 0.05)],
             for_="15m", severity="warning", no_data="OK", dashboard=PIPELINE_UID, panel="Unresolved source ratio",
             summary="{{ humanizePercentage $values.A.Value }} of egress sources owned by no pod in 30 min "
                     "(over 5 %)",
             description="Source IPs with no ownership claim: the k8s watcher is down or lagging, or the "
                         "inventory is stale; these connections are missing from fan-out and drift."),
        rule("flows-watcher-stale", "Kubernetes watcher stale",
             [prometheus_query("time() - max by (resource) (flows_watch_newest_event_timestamp_seconds)", 600),
              expression("B", {"type": "reduce", "expression": "A", "reducer": "last", "settings": {"mode": ""}}),
              threshold("C", "B", "gt", 600)],
             for_="5m", severity="critical", no_data="Alerting", dashboard=PIPELINE_UID, panel="Watcher freshness",
             summary="k8s watcher silent for {{ $values.B.Value }} s on {{ $labels.resource }} (or not scraped)",
             description="No watch event or bookmark for 10 minutes: ownership stops following the cluster and "
                         "new pods' egress goes unattributed. Check flows watch k8s (leader election, RBAC)."),
    ]
    pipeline_rules.append(
        rule("flows-rows-quarantined", "Rows refused by ClickHouse",
             [prometheus_query("sum(increase(flows_quarantined_rows_total[15m]))", 900),
              expression("B", {"type": "reduce", "expression": "A", "reducer": "last", "settings": {"mode": ""}}),
              threshold("C", "B", "gt", 0)],
             for_="0s", severity="warning", no_data="OK", dashboard=PIPELINE_UID, panel="Rows refused by ClickHouse",
             summary="ClickHouse refused {{ $values.B.Value }} rows in 15 min; they are in rejects (stage insert)",
             description="An insert failed with a deterministic error (a value, a constraint, a grant or the schema) "
                         "and the rows that fail on their own were moved to rejects with the server's message: "
                         "SELECT reason, detail, raw FROM rejects WHERE stage = 'insert'. They are missing from "
                         "fan-out and drift until re-shipped."))
    groups = [("flows-drift", "5m", drift_rules), ("flows-watched", "1m", watched_rules),
              ("flows-pipeline", "1m", pipeline_rules)]
    return {"apiVersion": 1, "groups": [{"orgId": 1, "name": name, "folder": FOLDER, "interval": interval,
                                         "rules": rules} for name, interval, rules in groups]}


# -- files -------------------------------------------------------------------------------------


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (SQL) as literal blocks, so that the YAML reads like the SQL; no anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)


def rendered() -> dict[Path, str]:
    """Every generated file and its text."""
    files = {DASHBOARD_DIR / name: json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}
    header = ("# Generated by `python -m pipeline.tooling.grafana_dashboards`: "
              "edit pipeline/tooling/grafana_dashboards.py instead.\n")
    files[ALERTS_FILE] = header + yaml.dump(alert_rules(), Dumper=_BlockDumper, sort_keys=False, width=1000)
    shipped = {**files, DATASOURCE_FILE: DATASOURCE_FILE.read_text(encoding="utf-8")}
    files.update({COMPONENT_COPY / path.relative_to(ROOT): text for path, text in shipped.items()})
    return files


def main() -> None:
    for path, text in rendered().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(path.relative_to(ROOT.parent), file=sys.stderr)


if __name__ == "__main__":
    main()
