"""One self-contained HTML page of the egress picture, for people without Grafana and for reviews.

Pure: the rows the views returned go in (``Report``), a string of HTML comes out. No network is
needed to open the page: the CSS is inline and the charts are SVG drawn here. Every value is
escaped (namespaces and destinations are user data), and the report's data is embedded as JSON
(``<script type="application/json" id="report-data">``) for tools and for the page's tests.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any

from pipeline.analysis.asn import ASN_COLUMNS
from pipeline.basics.timespec import EARLIEST, LATEST, parse_instant

FANOUT_COLUMNS = ("namespace", "tier", "dests", "pod_ns", "svc", "external", "node", "unknown", "connections",
                  "first_seen", "last_seen")
DRIFT_COLUMNS = ("first_seen", "namespace", "dst_kind", "dst", "proto", "port", "connections", "nodes")
DESTINATION_COLUMNS = ("dst_kind", "dst", "name", "proto", "ports", "first_seen", "last_seen", "connections",
                       "nodes")
REPLAY_COLUMNS = ("namespace", "replay", "allowed", "denied", "undecidable", "detail")
COVERAGE_COLUMNS = ("namespace", "status", "pods", "pods_at_end", "dests", "connections")
NICE_STEPS_S = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400, 30 * 86400)
MAX_BUCKETS = 120
TOP_SERIES = 6
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#b07aa1", "#9c755f")
_INSTANT = re.compile(r"^(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(\.\d+)?Z$")


@dataclass(frozen=True)
class Report:
    """What the page shows; rows as the views return them (JSON-friendly values)."""

    since: str
    until: str
    generated_at: str
    summary: dict[str, Any]
    fanout: list[dict[str, Any]]
    tiers: dict[str, dict[str, str]]  # namespace -> {"tier", "reason"}
    destinations: list[dict[str, Any]]  # allowlist rows of every namespace
    drift_since: str
    drift: list[dict[str, Any]]
    step_s: int
    connections: list[dict[str, Any]]  # bucket, namespace, connections
    new_destinations: list[dict[str, Any]]  # bucket, new_destinations
    asn_db: str = ""  # the ASN database that named providers (its rows then carry ASN_COLUMNS)
    # namespace -> {"replay": clean | denies | undecidable | not generated, counts, "detail"}
    replays: dict[str, dict[str, Any]] = field(default_factory=dict)
    coverage: dict[str, Any] = field(default_factory=dict)  # {"summary", "selection", "namespaces": rows}

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def bucket_seconds(first: datetime, last: datetime) -> int:
    """The smallest nice bucket that draws [first, last] in at most MAX_BUCKETS points."""
    span = (last - first).total_seconds()
    return next((s for s in NICE_STEPS_S if span / s <= MAX_BUCKETS), NICE_STEPS_S[-1])


def cell(value: Any) -> str:
    """The text a table cell shows for a value (times to the second, lists comma-separated)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return ", ".join(cell(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    text = str(value)
    match = _INSTANT.match(text)
    return f"{match.group(1)} {match.group(2)}" if match else text


# -- charts ------------------------------------------------------------------------------------

_W, _H, _LEFT, _RIGHT, _TOP, _BOTTOM = 960, 280, 56, 170, 16, 36


def _y_scale(max_value: float) -> tuple[float, float]:
    """(top, tick): at most five round ticks from zero covering ``max_value`` (counts: ticks >= 1)."""
    raw = max(max_value, 4.0) / 4
    magnitude = 10 ** math.floor(math.log10(raw))
    tick = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return max(math.ceil(max_value / tick), 1) * tick, tick


def _time_ticks(t0: datetime, t1: datetime) -> tuple[list[datetime], int]:
    """Round moments (multiples of a nice step since the epoch) between t0 and t1, and the step."""
    step = next((s for s in NICE_STEPS_S if (t1 - t0).total_seconds() / s <= 6), NICE_STEPS_S[-1])
    first = math.ceil(t0.timestamp() / step) * step
    return [datetime.fromtimestamp(x, UTC) for x in range(first, int(t1.timestamp()) + 1, step)], step


def _frame(t0: datetime, t1: datetime, max_value: float, title: str) -> tuple[list[str], Any, Any]:
    """SVG head, axes and grid; returns the parts and the x/y scale functions."""
    span = max((t1 - t0).total_seconds(), 1.0)
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM
    top, y_tick = _y_scale(max_value)

    def x(moment: datetime) -> float:
        return _LEFT + (moment - t0).total_seconds() / span * plot_w

    def y(value: float) -> float:
        return _TOP + plot_h - value / top * plot_h

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" role="img" '
             f'aria-label="{escape(title)}"><title>{escape(title)}</title>']
    for i in range(round(top / y_tick) + 1):
        value = i * y_tick
        parts.append(f'<line class="grid" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}"/>'
                     f'<text class="tick" x="{_LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{value:g}</text>')
    moments, step = _time_ticks(t0, t1)
    for moment in moments:
        label = moment.strftime("%m-%d" if step >= 86400 else "%m-%d %H:%M")
        parts.append(f'<text class="tick" x="{x(moment):.1f}" y="{_H - _BOTTOM + 18}" text-anchor="middle">'
                     f"{label}</text>")
    parts.append(f'<line class="axis" x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y(0):.1f}" y2="{y(0):.1f}"/>')
    return parts, x, y


def _time_label(moment: datetime, step_s: int) -> str:
    return moment.strftime("%Y-%m-%d" if step_s >= 86400 else "%Y-%m-%d %H:%M")


def line_chart(series: list[tuple[str, list[tuple[datetime, float]]]], title: str) -> str:
    """One polyline per series over a shared time axis, with a legend."""
    moments = [t for _, points in series for t, _ in points]
    t0, t1 = min(moments), max(moments)
    parts, x, y = _frame(t0, t1, max(v for _, points in series for _, v in points), title)
    for i, (name, points) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
        parts.append(f'<polyline class="series" data-series="{escape(name)}" fill="none" stroke="{color}" '
                     f'stroke-width="1.6" points="{coords}"><title>{escape(name)}</title></polyline>')
        ly = _TOP + 14 + i * 18
        parts.append(f'<rect x="{_W - _RIGHT + 12}" y="{ly - 9}" width="10" height="10" fill="{color}"/>'
                     f'<text class="legend" x="{_W - _RIGHT + 28}" y="{ly}">{escape(name[:22])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def bar_chart(points: list[tuple[datetime, float]], step_s: int, title: str) -> str:
    """One bar per bucket (each bar spans its bucket)."""
    t0 = min(t for t, _ in points)
    t1 = max(t for t, _ in points) + timedelta(seconds=step_s)
    parts, x, y = _frame(t0, t1, max(v for _, v in points), title)
    for t, v in points:
        left, right = x(t), x(t + timedelta(seconds=step_s))
        parts.append(f'<rect class="bar" x="{left:.1f}" y="{y(v):.1f}" width="{max(right - left - 1, 1):.1f}" '
                     f'height="{y(0) - y(v):.1f}" fill="{PALETTE[0]}"><title>{escape(_time_label(t, step_s))}: '
                     f'{v:g}</title></rect>')
    parts.append("</svg>")
    return "".join(parts)


def connection_series(rows: list[dict[str, Any]], step_s: int) -> list[tuple[str, list[tuple[datetime, float]]]]:
    """The busiest namespaces one line each, the rest summed as "others", zero where nothing was seen."""
    per_ns: dict[str, dict[datetime, float]] = defaultdict(dict)
    for r in rows:
        per_ns[r["namespace"]][parse_instant(r["bucket"])] = float(r["connections"])
    grid_start, grid_end = min(min(p) for p in per_ns.values()), max(max(p) for p in per_ns.values())
    grid = [grid_start + timedelta(seconds=step_s * i)
            for i in range(int((grid_end - grid_start).total_seconds() // step_s) + 1)]
    ranked = sorted(per_ns, key=lambda ns: (-sum(per_ns[ns].values()), ns))
    out = [(ns, [(t, per_ns[ns].get(t, 0.0)) for t in grid]) for ns in ranked[:TOP_SERIES]]
    rest = ranked[TOP_SERIES:]
    if rest:
        out.append((f"others ({len(rest)})", [(t, sum(per_ns[ns].get(t, 0.0) for ns in rest)) for t in grid]))
    return out


# -- page --------------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1200px;padding:0 20px 40px;
color:#1d2330}
h1{font-size:22px;margin:24px 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d9dde5}
h3{font-size:15px;margin:22px 0 4px}.meta,.reason{color:#5a6478;margin:2px 0 8px}nav a{margin-right:14px}
table{border-collapse:collapse;width:100%;margin:6px 0 12px;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid #e6e9ef;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f5f9;position:sticky;top:0}td.num{text-align:right}
.tier{display:inline-block;min-width:1.4em;text-align:center;border-radius:3px;color:#fff;font-weight:600}
.tier-A{background:#3d9a50}.tier-B{background:#4e79a7}.tier-C{background:#d98b1e}.tier-D{background:#c43d3d}
figure{margin:8px 0}svg{width:100%;height:auto}svg .grid{stroke:#e6e9ef}svg .axis{stroke:#8a93a6}
svg .tick,svg .legend{font-size:11px;fill:#5a6478}.empty{color:#5a6478;font-style:italic}
@media print{th{position:static}nav{display:none}}
"""


def _table(columns: tuple[str, ...], rows: list[dict[str, Any]], table_id: str = "", css: str = "data",
           link: dict[str, str] | None = None, extra: dict[str, str] | None = None) -> str:
    """A table of ``columns``; ``link`` maps a namespace to an anchor, ``extra`` adds attributes."""
    attrs = f' id="{escape(table_id)}"' if table_id else ""
    attrs += "".join(f' {k}="{escape(v)}"' for k, v in (extra or {}).items())
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c)
            text = escape(cell(value))
            if link and c == "namespace" and value in link:
                text = f'<a href="#{link[value]}">{text}</a>'
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            cells.append(f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f'<table class="{css}"{attrs}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _embedded_json(report: Report) -> str:
    """The data as JSON that cannot end the script element early."""
    text = json.dumps(report.as_json(), ensure_ascii=False, separators=(",", ":"))
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def render(report: Report) -> str:
    """The whole page."""
    anchors = {r["namespace"]: f"ns-{i}" for i, r in enumerate(report.fanout)}
    fanout_rows = [{**r, "tier": report.tiers.get(r["namespace"], {}).get("tier", "")} for r in report.fanout]
    drift_columns = (*DRIFT_COLUMNS, "provider", *ASN_COLUMNS) if report.asn_db else DRIFT_COLUMNS
    destination_columns = (*DESTINATION_COLUMNS, *ASN_COLUMNS) if report.asn_db else DESTINATION_COLUMNS
    s = report.summary
    out = [
        '<!doctype html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>Egress observatory report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<header><h1>Egress observatory report</h1>",
        f'<p class="meta">Range {escape(_bound(report.since, "the first record"))} – '
        f'{escape(_bound(report.until, "now"))} (UTC, end exclusive)'
        f" · generated {escape(cell(report.generated_at))}</p>",
        f'<p class="meta" id="summary">{escape(cell(s.get("records")))} records stored · '
        f'{escape(cell(s.get("rejected")))} rejected lines · {escape(cell(s.get("unattributed")))} unattributed '
        f"egress sources · {len(report.fanout)} namespaces with egress in range</p>",
        f'<p class="meta" id="asn-db">Providers from {escape(report.asn_db)}</p>' if report.asn_db else "",
        '<nav><a href="#fanout">Fan-out</a><a href="#charts">Charts</a><a href="#drift">Drift</a>'
        '<a href="#replay">Replay</a><a href="#coverage">Coverage</a>'
        '<a href="#namespaces">Destinations per namespace</a></nav></header>',
        '<section id="fanout"><h2>Egress fan-out per namespace</h2>',
        '<p class="meta">dests = pod namespaces + services + external IPs: what an egress policy must allow; '
        "node and unknown (private, unowned) are shown beside it. Tier: A pilot, B small, C investigate, "
        "D keep logging.</p>",
        _table(FANOUT_COLUMNS, fanout_rows, "fanout-table", link=anchors),
        "</section>",
        '<section id="charts"><h2>Connections over time</h2>',
        f'<p class="meta">New connections per {escape(_duration(report.step_s))}, busiest namespaces.</p>',
    ]
    if report.connections:
        chart = line_chart(connection_series(report.connections, report.step_s), "Connections over time")
        out.append(f'<figure id="chart-connections">{chart}</figure>')
    else:
        out.append('<p class="empty" id="chart-connections">No connections in this range.</p>')
    out.append("<h2>New destinations over time</h2>"
               '<p class="meta">Destination identities (peer, protocol, port) by the time they were first seen.</p>')
    if report.new_destinations:
        points = [(parse_instant(r["bucket"]), float(r["new_destinations"])) for r in report.new_destinations]
        out.append(f'<figure id="chart-new">{bar_chart(points, report.step_s, "New destinations over time")}'
                   "</figure>")
    else:
        out.append('<p class="empty" id="chart-new">No new destinations in this range.</p>')
    out += [
        "</section>",
        f'<section id="drift"><h2>New destinations since {escape(cell(report.drift_since))}</h2>',
        '<p class="meta">First seen at or after that moment: new peers, or new ports or protocols to known '
        "ones." + (" provider: known-prefix or known-provider when the namespace reached that announced prefix "
                   "or AS before (the provider rotating IPs), new-provider when it never did." if report.asn_db
                   else "") + "</p>",
        _table(drift_columns, report.drift, "drift-table", link=anchors) if report.drift
        else '<p class="empty">No new destination.</p>',
        "</section>",
        *_replay_section(report, anchors),
        *_coverage_section(report, anchors),
        '<section id="namespaces"><h2>Destinations per namespace</h2>',
    ]
    by_ns: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in report.destinations:
        by_ns[row["namespace"]].append(row)
    for r in report.fanout:
        ns = r["namespace"]
        tier = report.tiers.get(ns, {})
        badge = (f' <span class="tier tier-{escape(tier["tier"])}">{escape(tier["tier"])}</span>' if tier else "")
        out += [
            f'<section class="namespace" id="{anchors[ns]}"><h3>{escape(ns)}{badge}</h3>',
            f'<p class="reason">{escape(tier.get("reason", ""))}</p>',
            _table(destination_columns, by_ns.get(ns, []), css="data destinations", extra={"data-namespace": ns}),
            "</section>",
        ]
    out += ["</section>", f'<script type="application/json" id="report-data">{_embedded_json(report)}</script>',
            "</body></html>"]
    return "\n".join(out)


def _replay_section(report: Report, anchors: dict[str, str]) -> list[str]:
    rows = [{"namespace": ns, **r} for ns, r in sorted(report.replays.items())]
    return [
        '<section id="replay"><h2>Replay of the generated policies</h2>',
        '<p class="meta">The Calico policy <code>flows policy NAMESPACE</code> would write for this range, replayed '
        "against the same egress: clean means nothing observed would be denied and every destination could be "
        "decided (<code>flows replay --namespace NAMESPACE</code> lists the rest).</p>",
        _table(REPLAY_COLUMNS, rows, "replay-table", link=anchors) if rows
        else '<p class="empty">No namespace with egress in this range.</p>',
        "</section>",
    ]


def _coverage_section(report: Report, anchors: dict[str, str]) -> list[str]:
    cov = report.coverage
    return [
        '<section id="coverage"><h2>Coverage of the observation</h2>',
        f'<p class="meta" id="coverage-summary">{escape(str(cov.get("summary", "")))} '
        f'(selection: {escape(str(cov.get("selection", "")))}). No egress seen is not "needs no egress": a '
        "silent namespace that is running may only talk inside itself, or be idle.</p>",
        _table(COVERAGE_COLUMNS, cov.get("namespaces", []), "coverage-table", link=anchors),
        "</section>",
    ]


def _bound(instant: str, open_end: str) -> str:
    """A range end for people: the CLI's all-time defaults read as words."""
    return open_end if parse_instant(instant) in (EARLIEST, LATEST) else cell(instant)


def _duration(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            n = seconds // size
            return f"{unit}" if n == 1 else f"{n} {unit}s"
    return f"{seconds} s"
