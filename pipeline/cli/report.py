"""``flows report …``: every report over the SQL views, one command each.

Thin adapters: each command binds its arguments to a view of ``sql/`` (fan-out and summary in
``005``, drift, stability, tiers and allowlist in ``006``, the HTML page's series in ``007``), runs
it where every query runs (the running stack, or ClickHouse directly), and hands the rows to the
pure rules in ``pipeline.analysis``. ``flows policy`` and ``flows baseline`` reuse the plumbing here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from pipeline.analysis import evidence as analysis
from pipeline.analysis import reports
from pipeline.analysis.asn import AsnDb, provider_drift, with_asn
from pipeline.analysis.evidence import AnalysisSettings, Group, NamedRanges, Peer
from pipeline.analysis.html_report import Report, bucket_seconds
from pipeline.analysis.html_report import render as render_html
from pipeline.analysis.reports import FANOUT_SQL, SUMMARY_SQL, as_dicts, render
from pipeline.basics.config import Settings
from pipeline.basics.timespec import EARLIEST, LATEST, ch_time, parse_instant, parse_time, rfc3339, time_range
from pipeline.cli import common as cli
from pipeline.cli.common import Format
from pipeline.store.queries import run_query

report_app = typer.Typer(help="Reports over the SQL views.", no_args_is_help=True)
cli.app.add_typer(report_app, name="report")

T = "DateTime64(6, 'UTC')"
_IDENTITY_COLS = "namespace, dst_kind, dst, proto, port, first_seen, last_seen, connections, nodes, workloads"
_ORDER = "ORDER BY first_seen, namespace, dst_kind, dst, proto, port"
_NS_FILTER = "({ns:String} = '' OR namespace = {ns:String})"

DRIFT_SQL = (f"SELECT {_IDENTITY_COLS} FROM drift(baseline_until = {{baseline:{T}}}, since = {{since:{T}}}, "
             f"until = {{until:{T}}}) WHERE {_NS_FILTER} {_ORDER}")
DRIFT_BASELINE_SQL = (f"SELECT {_IDENTITY_COLS} FROM drift_vs_baseline(name = {{name:String}}, "
                      f"since = {{since:{T}}}, until = {{until:{T}}}) WHERE {_NS_FILTER} {_ORDER}")
STABILITY_SQL = (f"SELECT * FROM stability(now = {{now:{T}}}, min_days = {{min_days:Float64}}, "
                 f"stable_days = {{stable_days:Float64}}) WHERE {_NS_FILTER} ORDER BY namespace")
PROFILE_SQL = (f"SELECT * FROM profile(since = {{since:{T}}}, until = {{until:{T}}}) WHERE {_NS_FILTER} "
               "ORDER BY namespace")
ALLOWLIST_SQL = (f"SELECT * FROM allowlist(since = {{since:{T}}}, until = {{until:{T}}}) WHERE {_NS_FILTER} "
                 "ORDER BY namespace, dst_kind, dst, name, proto")
NAMESPACES_SQL = f"SELECT namespace FROM fanout(since = {{since:{T}}}, until = {{until:{T}}}) ORDER BY namespace"
# External IPs each namespace reached before a moment / in a saved baseline: what drift's
# provider verdict compares against.
KNOWN_BEFORE_SQL = (f"SELECT DISTINCT namespace, dst FROM peers(since = {{since:{T}}}, until = {{until:{T}}}) "
                    f"WHERE dst_kind = 'external' AND {_NS_FILTER}")
KNOWN_IN_BASELINE_SQL = ("SELECT DISTINCT namespace, dst FROM baseline_rows WHERE name = {name:String} "
                         f"AND dst_kind = 'external' AND {_NS_FILTER}")
BASELINE_LIST_SQL = "SELECT * FROM baseline_list WHERE ({name:String} = '' OR name = {name:String}) ORDER BY name"

Since = Annotated[str | None, typer.Option(help="RFC3339 time, date or duration like 7d (inclusive)")]
Until = Annotated[str | None, typer.Option(help="RFC3339 time, date or duration like 1h (exclusive)")]
Namespace = Annotated[str | None, typer.Option("--namespace", "-n", help="only this source namespace")]
Cidrs = Annotated[Path | None, typer.Option("--cidrs", help="YAML file of named CIDRs: name: [cidr, ...]")]
AsnDbPath = Annotated[Path | None, typer.Option(
    "--asn-db", envvar="FLOWS_ASN_DB", show_default=False,
    help="IP-to-ASN MMDB file (MaxMind GeoLite2-ASN, IPinfo): provider and announced prefix of external IPs")]

S = TypeVar("S", bound=BaseSettings)


# -- shared plumbing ---------------------------------------------------------------------------


def _settings_of(kind: Callable[[], S]) -> S:
    try:
        return kind()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
        raise cli.fail(f"invalid configuration: {problems}") from None


def _now() -> datetime:
    return datetime.fromtimestamp(time.time_ns() // 1000 / 1e6, tz=UTC)


def _window(since: str | None, until: str | None) -> tuple[datetime, datetime]:
    try:
        return time_range(since, until)
    except ValueError as exc:
        raise cli.fail(str(exc)) from None


def _instant(value: str, option: str) -> datetime:
    try:
        return parse_time(value)
    except ValueError as exc:
        raise cli.fail(f"{option}: {exc}") from None


async def _rows(settings: Settings, sql: str, **params: Any) -> list[dict[str, Any]]:
    bound = {k: ch_time(v) if isinstance(v, datetime) else v for k, v in params.items()}
    columns, rows = await run_query(settings, sql, bound)
    return as_dicts(columns, rows)


async def _require_namespace(settings: Settings, namespace: str) -> None:
    """Raise a clear error when ``namespace`` never sent egress (a typo, usually)."""
    known = [r["namespace"] for r in await _rows(settings, NAMESPACES_SQL, since=EARLIEST, until=LATEST)]
    if namespace not in known:
        shown = ", ".join(known[:30]) + (" …" if len(known) > 30 else "")
        raise ValueError(f"unknown namespace {namespace!r}: no egress observed from it"
                         + (f" (known: {shown})" if known else " (no egress stored yet)"))


def _read_ranges(path: Path | None) -> NamedRanges | None:
    if path is None:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise cli.fail(f"cannot read {path}: {exc.strerror}") from None
    try:
        return analysis.parse_ranges(text, str(path))
    except ValueError as exc:
        raise cli.fail(str(exc)) from None


def open_asn_db(path: Path) -> AsnDb:
    try:
        return AsnDb.open(path)
    except ValueError as exc:
        raise cli.fail(str(exc)) from None


def _emit(rows: list[dict[str, Any]], fmt: str, title: str) -> None:
    """JSON keeps lists; table and csv show them comma-separated."""
    if fmt != "json":
        rows = [{k: ", ".join(map(str, v)) if isinstance(v, list) else v for k, v in r.items()} for r in rows]
    text = render(rows, fmt, title, console=cli.out if fmt == "table" else None)
    if text is not None:
        print(text)


# -- drift -------------------------------------------------------------------------------------


@report_app.command("drift")
def report_drift(
    baseline_until: Annotated[str | None, typer.Option(help="destinations first seen from this time on are drift")]
    = None,
    baseline: Annotated[str | None, typer.Option(help="or: drift against a saved baseline (flows baseline save)")]
    = None,
    since: Annotated[str | None, typer.Option(help="only drift first seen (or, with --baseline, seen) since then")]
    = None,
    until: Until = None,
    namespace: Namespace = None,
    asn_db: AsnDbPath = None,
    fmt: Format = "table",
) -> None:
    """Destinations first seen after a baseline: new peers, and new ports or protocols to known ones.

    With --asn-db, external rows name their provider and say whether the namespace reached
    that prefix or AS before (a provider rotating IPs) or never (a new provider).
    """
    cli.check_format(fmt)
    if (baseline_until is None) == (baseline is None):
        raise cli.fail("give either --baseline-until TIME or --baseline NAME")
    settings = cli.load_settings()
    db = open_asn_db(asn_db) if asn_db else None
    start = _instant(baseline_until, "--baseline-until") if baseline_until is not None else EARLIEST
    ns = namespace or ""

    async def main() -> list[dict[str, Any]]:
        if baseline_until is not None:
            lo, hi = time_range(since or baseline_until, until)
            if hi <= start:
                raise ValueError(f"empty time range: --until {hi.isoformat()} is not after the baseline "
                                 f"{start.isoformat()}")
            rows = await _rows(settings, DRIFT_SQL, baseline=start, since=lo, until=hi, ns=ns)
            if db is not None:
                known = await _rows(settings, KNOWN_BEFORE_SQL, since=EARLIEST, until=start, ns=ns)
                rows = provider_drift(rows, known, db)
        else:
            saved = await _rows(settings, BASELINE_LIST_SQL, name=baseline)
            if not saved:
                names = [r["name"] for r in await _rows(settings, BASELINE_LIST_SQL, name="")]
                raise ValueError(f"unknown baseline {baseline!r}"
                                 + (f" (saved: {', '.join(names)})" if names else " (none saved yet)"))
            lo, hi = time_range(since or saved[0]["window_until"], until)
            rows = await _rows(settings, DRIFT_BASELINE_SQL, name=baseline, since=lo, until=hi, ns=ns)
            if db is not None:
                known = await _rows(settings, KNOWN_IN_BASELINE_SQL, name=baseline, ns=ns)
                rows = provider_drift(rows, known, db)
        if not rows and ns:
            await _require_namespace(settings, ns)
        return rows

    rows = cli.run(main())
    _emit(rows, fmt, "Drift: destinations first seen after the baseline")


# -- stability and tiers -----------------------------------------------------------------------


@report_app.command("stability")
def report_stability(
    at: Annotated[str | None, typer.Option(help="evaluate as of this time (default now)")] = None,
    namespace: Namespace = None,
    fmt: Format = "table",
) -> None:
    """Per namespace: first/last line, days observed, days since the last new destination, horizon met."""
    cli.check_format(fmt)
    settings = cli.load_settings()
    cfg = _settings_of(AnalysisSettings)
    now = _instant(at, "--at") if at else _now()
    ns = namespace or ""

    async def main() -> list[dict[str, Any]]:
        rows = await _rows(settings, STABILITY_SQL, now=now, min_days=cfg.min_days, stable_days=cfg.stable_days,
                           ns=ns)
        if not rows and ns:
            await _require_namespace(settings, ns)
        return rows

    _emit(cli.run(main()), fmt, f"Stability (horizon >= {cfg.min_days} d, stable after {cfg.stable_days} d)")


Grouping = Callable[[str], Group | None]


async def _tiers(settings: Settings, cfg: AnalysisSettings, lo: datetime, hi: datetime, ns: str,
                 grouping: Grouping | None) -> list[tuple[analysis.TierResult, dict[str, Any], dict[str, Any] | None]]:
    """(tier, profile row, stability row) per namespace; stability as of the window's end (or now).
    With a grouping (named ranges, announced prefixes) a group counts as one IP destination."""
    profiles = await _rows(settings, PROFILE_SQL, since=lo, until=hi, ns=ns)
    now = min(hi, _now())
    stability = {r["namespace"]: r for r in await _rows(
        settings, STABILITY_SQL, now=now, min_days=cfg.min_days, stable_days=cfg.stable_days, ns=ns)}
    grouped: dict[str, int] = {}
    if grouping is not None:
        grouped = analysis.ip_peer_counts((await _peers(settings, lo, hi, ns, grouping))[0])
    out = []
    for p in profiles:
        ip_peers = grouped.get(p["namespace"], 0) if grouping is not None else None
        st = stability.get(p["namespace"])
        out.append((analysis.assign_tier(p, st, cfg, ip_peers), p, st))
    return out


@report_app.command("tiers")
def report_tiers(
    since: Since = None,
    until: Until = None,
    cidrs: Cidrs = None,
    namespace: Namespace = None,
    fmt: Format = "table",
) -> None:
    """Rollout tier per namespace (A pilot, B small, C investigate, D keep logging), with the reason."""
    cli.check_format(fmt)
    settings = cli.load_settings()
    cfg = _settings_of(AnalysisSettings)
    lo, hi = _window(since, until)
    ranges = _read_ranges(cidrs)
    ns = namespace or ""

    async def main() -> list[dict[str, Any]]:
        tiers = await _tiers(settings, cfg, lo, hi, ns, _ranges_grouping(ranges))
        if not tiers and ns:
            await _require_namespace(settings, ns)
        return [{
            "namespace": t.namespace, "tier": t.tier, "reason": t.reason, "advice": t.advice,
            "ip_peers": t.ip_peers,
            "internal": p["internal"], "high_ports": p["high_ports"],
            "horizon_days": st["horizon_days"] if st else None,
            "days_since_new": st["days_since_new"] if st else None,
        } for t, p, st in tiers]

    _emit(cli.run(main()), fmt, "Rollout tiers")


# -- allowlist --------------------------------------------------------------------------------


def _ranges_grouping(ranges: NamedRanges | None) -> Grouping | None:
    return analysis.ranges_grouping(ranges) if ranges is not None else None


async def _peers(settings: Settings, lo: datetime, hi: datetime, ns: str,
                 grouping: Grouping | None) -> tuple[list[Peer], list[str]]:
    """Allowlist peers, external IPs grouped when a grouping is given (and those outside every group)."""
    peers = [Peer.from_row(r) for r in await _rows(settings, ALLOWLIST_SQL, since=lo, until=hi, ns=ns)]
    if grouping is None:
        return peers, []
    return analysis.group_external(peers, grouping)


@report_app.command("allowlist")
def report_allowlist(
    namespace: Namespace = None,
    since: Since = None,
    until: Until = None,
    cidrs: Cidrs = None,
    asn_db: AsnDbPath = None,
    fmt: Format = "table",
) -> None:
    """What an egress policy needs per namespace: ports per peer, with first/last seen, connections, nodes
    (and, with --asn-db, each external IP's AS and announced prefix)."""
    cli.check_format(fmt)
    settings = cli.load_settings()
    lo, hi = _window(since, until)
    ranges = _read_ranges(cidrs)
    db = open_asn_db(asn_db) if asn_db else None
    ns = namespace or ""

    async def main() -> tuple[list[Peer], list[str]]:
        found = await _peers(settings, lo, hi, ns, _ranges_grouping(ranges))
        if not found[0] and ns:
            await _require_namespace(settings, ns)
        return found

    peers, outside = cli.run(main())
    rows = [p.as_row(ranges is not None) for p in peers]
    _emit(with_asn(rows, db) if db is not None else rows, fmt, "Egress allowlist")
    if ranges is not None and outside:
        cli.err.print(f"{len(outside)} external IPs outside every named range: {', '.join(outside[:50])}"
                      + (" …" if len(outside) > 50 else ""), highlight=False)


# -- fan-out and summary -----------------------------------------------------------------------


@report_app.command("fanout")
def report_fanout(
    since: Annotated[str | None, typer.Option(help="RFC3339 time or a duration like 30h")] = None,
    until: Annotated[str | None, typer.Option(help="RFC3339 time or a duration like 1h (exclusive)")] = None,
    fmt: Format = "table",
) -> None:
    """Per-namespace egress fan-out: dests = pod_ns + svc + external."""
    cli.check_format(fmt)
    settings = cli.load_settings()
    rows = cli.run(reports.fanout(settings, since, until))
    if fmt == "table":
        rows = reports.fanout_table_rows(rows)
    text = render(rows, fmt, "Egress fan-out per namespace", console=cli.out if fmt == "table" else None)
    if text is not None:
        print(text)


@report_app.command("summary")
def report_summary(fmt: Format = "table") -> None:
    """Distinct records stored, rejected lines, unattributed sources."""
    cli.check_format(fmt)
    settings = cli.load_settings()
    row = cli.run(reports.summary(settings))
    if fmt == "json":
        print(orjson.dumps(row).decode())
    else:
        text = render([row], fmt, "Summary", console=cli.out if fmt == "table" else None)
        if text is not None:
            print(text)


# -- one HTML page -----------------------------------------------------------------------------


CONNECTIONS_SQL = (f"SELECT bucket, namespace, connections FROM connections_over_time(since = {{since:{T}}}, "
                   f"until = {{until:{T}}}, step_s = {{step:UInt32}}) ORDER BY bucket, namespace")
NEW_DESTINATIONS_SQL = (
    "SELECT toDateTime(toStartOfInterval(first_seen, toIntervalSecond({step:UInt32})), 'UTC') AS bucket, "
    f"count() AS new_destinations FROM drift(baseline_until = {{since:{T}}}, since = {{since:{T}}}, "
    f"until = {{until:{T}}}) GROUP BY bucket ORDER BY bucket"
)


async def collect(settings: Settings, cfg: analysis.AnalysisSettings, lo: datetime, hi: datetime,
                  drift_days: float, now: datetime, db: AsnDb | None = None, inventory: Any = None) -> Report:
    """Everything the page shows for [lo, hi); drift covers the last ``drift_days`` of observed traffic.
    With an ASN database, external destinations name their provider and drift says whether a
    new IP belongs to a prefix or AS the namespace reached before the drift window."""
    from pipeline.cli.coverage import coverage_summary
    from pipeline.cli.replay import replay_summaries

    fanout = await _rows(settings, FANOUT_SQL, since=lo, until=hi)
    summary = (await _rows(settings, SUMMARY_SQL))[0]
    first = min((parse_instant(r["first_seen"]) for r in fanout), default=min(hi, now))
    last = max((parse_instant(r["last_seen"]) for r in fanout), default=min(hi, now))
    step = bucket_seconds(first, last)
    profiles = await _rows(settings, PROFILE_SQL, since=lo, until=hi, ns="")
    stability = {r["namespace"]: r for r in await _rows(
        settings, STABILITY_SQL, now=min(hi, now), min_days=cfg.min_days, stable_days=cfg.stable_days, ns="")}
    tiers = {}
    for p in profiles:
        tier = analysis.assign_tier(p, stability.get(p["namespace"]), cfg)
        tiers[tier.namespace] = {"tier": tier.tier, "reason": tier.reason}
    drift_since = max(lo, min(hi, last) - timedelta(days=drift_days))
    destinations = await _rows(settings, ALLOWLIST_SQL, since=lo, until=hi, ns="")
    drift = await _rows(settings, DRIFT_SQL, baseline=drift_since, since=drift_since, until=hi, ns="")
    if db is not None:
        destinations = with_asn(destinations, db)
        known = await _rows(settings, KNOWN_BEFORE_SQL, since=EARLIEST, until=drift_since, ns="")
        drift = provider_drift(drift, known, db)
    return Report(
        since=rfc3339(lo), until=rfc3339(hi), generated_at=rfc3339(now),
        summary=summary, fanout=fanout, tiers=tiers,
        destinations=destinations,
        drift_since=rfc3339(drift_since),
        drift=drift,
        asn_db=db.describe() if db is not None else "",
        step_s=step,
        connections=await _rows(settings, CONNECTIONS_SQL, since=lo, until=hi, step=step),
        new_destinations=await _rows(settings, NEW_DESTINATIONS_SQL, since=lo, until=hi, step=step),
        replays=await replay_summaries(settings, lo, hi, inventory),
        coverage=await coverage_summary(settings, lo, hi, inventory),
    )


@report_app.command("html")
def report_html(
    output: Annotated[Path, typer.Option("--output", "-o", help="where to write the page")]
    = Path("flows-report.html"),
    since: Since = None,
    until: Until = None,
    drift_days: Annotated[float, typer.Option(help="list destinations first seen in the last N days of traffic",
                                              min=0)] = 7.0,
    asn_db: AsnDbPath = None,
    inventory: Annotated[Path | None, typer.Option(
        help="kubectl get namespaces,services -A -o json: namespace labels and Service selectors for replay "
             "and coverage")] = None,
) -> None:
    """One self-contained HTML page (no network needed): fan-out, destinations, drift, charts."""
    from pipeline.cli.replay import read_inventory

    settings = cli.load_settings()
    cfg = _settings_of(AnalysisSettings)
    lo, hi = _window(since, until)
    db = open_asn_db(asn_db) if asn_db else None
    report = cli.run(collect(settings, cfg, lo, hi, drift_days, datetime.now(UTC), db, read_inventory(inventory)))
    try:
        output.write_text(render_html(report), encoding="utf-8")
    except OSError as exc:
        raise cli.fail(f"cannot write {output}: {exc.strerror}") from None
    cli.err.print(f"wrote {output} ({len(report.fanout)} namespaces, {len(report.destinations)} destinations, "
                  f"{len(report.drift)} new since {report.drift_since})", highlight=False)
