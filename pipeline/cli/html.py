"""``flows report html``: fan-out, destinations, drift and charts as one self-contained page.

A thin adapter: the rows come from the same views as every other report (sql/005, 006, 007),
run where ``flows report`` runs everything (the running stack, or ClickHouse directly); tiers
come from ``pipeline.analysis.evidence``; ``pipeline.analysis.html_report`` draws the page. ``pipeline.cli.app``
registers ``report_html`` as ``flows report html``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from pipeline.analysis import evidence as analysis
from pipeline.analysis.html_report import Report, bucket_seconds, render
from pipeline.analysis.reports import FANOUT_SQL, SUMMARY_SQL, as_dicts
from pipeline.basics.config import Settings
from pipeline.basics.timespec import ch_time, rfc3339, time_range
from pipeline.cli import common as cli
from pipeline.cli.analysis import ALLOWLIST_SQL, DRIFT_SQL, PROFILE_SQL, STABILITY_SQL
from pipeline.cli.coverage import coverage_summary
from pipeline.cli.replay import read_inventory, replay_summaries
from pipeline.store.queries import run_query

T = "DateTime64(6, 'UTC')"
CONNECTIONS_SQL = (f"SELECT bucket, namespace, connections FROM connections_over_time(since = {{since:{T}}}, "
                   f"until = {{until:{T}}}, step_s = {{step:UInt32}}) ORDER BY bucket, namespace")
NEW_DESTINATIONS_SQL = (
    "SELECT toDateTime(toStartOfInterval(first_seen, toIntervalSecond({step:UInt32})), 'UTC') AS bucket, "
    f"count() AS new_destinations FROM drift(baseline_until = {{since:{T}}}, since = {{since:{T}}}, "
    f"until = {{until:{T}}}) GROUP BY bucket ORDER BY bucket"
)


async def _rows(settings: Settings, sql: str, **params: Any) -> list[dict[str, Any]]:
    bound = {k: ch_time(v) if isinstance(v, datetime) else v for k, v in params.items()}
    columns, rows = await run_query(settings, sql, bound)
    return as_dicts(columns, rows)


async def collect(settings: Settings, cfg: analysis.AnalysisSettings, lo: datetime, hi: datetime,
                  drift_days: float, now: datetime, inventory: Any = None) -> Report:
    """Everything the page shows for [lo, hi); drift covers the last ``drift_days`` of observed traffic."""
    fanout = await _rows(settings, FANOUT_SQL, since=lo, until=hi)
    summary = (await _rows(settings, SUMMARY_SQL))[0]
    first = min((analysis.parse_instant(r["first_seen"]) for r in fanout), default=min(hi, now))
    last = max((analysis.parse_instant(r["last_seen"]) for r in fanout), default=min(hi, now))
    step = bucket_seconds(first, last)
    profiles = await _rows(settings, PROFILE_SQL, since=lo, until=hi, ns="")
    stability = {r["namespace"]: r for r in await _rows(
        settings, STABILITY_SQL, now=min(hi, now), min_days=cfg.min_days, stable_days=cfg.stable_days, ns="")}
    tiers = {}
    for p in profiles:
        tier = analysis.assign_tier(p, stability.get(p["namespace"]), cfg)
        tiers[tier.namespace] = {"tier": tier.tier, "reason": tier.reason}
    drift_since = max(lo, min(hi, last) - timedelta(days=drift_days))
    return Report(
        since=rfc3339(lo), until=rfc3339(hi), generated_at=rfc3339(now),
        summary=summary, fanout=fanout, tiers=tiers,
        destinations=await _rows(settings, ALLOWLIST_SQL, since=lo, until=hi, ns=""),
        drift_since=rfc3339(drift_since),
        drift=await _rows(settings, DRIFT_SQL, baseline=drift_since, since=drift_since, until=hi, ns=""),
        step_s=step,
        connections=await _rows(settings, CONNECTIONS_SQL, since=lo, until=hi, step=step),
        new_destinations=await _rows(settings, NEW_DESTINATIONS_SQL, since=lo, until=hi, step=step),
        replays=await replay_summaries(settings, lo, hi, inventory),
        coverage=await coverage_summary(settings, lo, hi, inventory),
    )


def report_html(
    output: Annotated[Path, typer.Option("--output", "-o", help="where to write the page")]
    = Path("flows-report.html"),
    since: Annotated[str | None, typer.Option(help="RFC3339 time, date or duration like 7d (inclusive)")] = None,
    until: Annotated[str | None, typer.Option(help="RFC3339 time, date or duration like 1h (exclusive)")] = None,
    drift_days: Annotated[float, typer.Option(help="list destinations first seen in the last N days of traffic",
                                              min=0)] = 7.0,
    inventory: Annotated[Path | None, typer.Option(
        help="kubectl get namespaces,services -A -o json: namespace labels and Service selectors for replay "
             "and coverage")] = None,
) -> None:
    """One self-contained HTML page (no network needed): fan-out, destinations, drift, charts."""
    settings = cli.load_settings()
    try:
        cfg = analysis.AnalysisSettings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
        raise cli.fail(f"invalid configuration: {problems}") from None
    try:
        lo, hi = time_range(since, until)
    except ValueError as exc:
        raise cli.fail(str(exc)) from None
    report = cli.run(collect(settings, cfg, lo, hi, drift_days, datetime.now(UTC), read_inventory(inventory)))
    try:
        output.write_text(render(report), encoding="utf-8")
    except OSError as exc:
        raise cli.fail(f"cannot write {output}: {exc.strerror}") from None
    cli.err.print(f"wrote {output} ({len(report.fanout)} namespaces, {len(report.destinations)} destinations, "
                  f"{len(report.drift)} new since {report.drift_since})", highlight=False)
