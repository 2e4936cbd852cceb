"""``flows report drift|stability|tiers|allowlist``, ``flows policy`` and ``flows baseline save|list``.

Thin adapters: each command binds its arguments to a view of ``sql/006_analysis.sql``, runs
it where ``flows report`` runs everything (the running stack, or ClickHouse directly), and
hands the rows to the pure rules in ``pipeline.analysis.evidence`` / ``pipeline.analysis.policy``.
``pipeline.cli.app`` registers these functions.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from pipeline.analysis import evidence as analysis
from pipeline.analysis.evidence import AnalysisSettings, NamedRanges, Peer
from pipeline.analysis.policy import FORMATS, Inventory, PolicySettings, common_labels, render_policy
from pipeline.analysis.reports import as_dicts, render
from pipeline.basics.config import Settings
from pipeline.basics.timespec import EARLIEST, LATEST, ch_time, parse_time, rfc3339, time_range
from pipeline.cli import common as cli
from pipeline.store.queries import run_query

T = "DateTime64(6, 'UTC')"
_BASELINE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
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
BASELINE_LIST_SQL = "SELECT * FROM baseline_list WHERE ({name:String} = '' OR name = {name:String}) ORDER BY name"
BASELINE_COUNT_SQL = f"SELECT count() AS n FROM peers(since = {{since:{T}}}, until = {{until:{T}}})"
BASELINE_SAVE_SQL = (
    f"INSERT INTO baselines SELECT {{name:String}}, {{saved_at:{T}}}, {{since:{T}}}, {{until:{T}}}, "
    f"namespace, dst_kind, dst, proto, port, first_seen, last_seen, connections "
    f"FROM peers(since = {{since:{T}}}, until = {{until:{T}}})"
)
CLAIMS_SQL = (
    "SELECT kind, namespace, name, workload, address, labels FROM current_claims WHERE "
    f"(kind = 'pod' AND namespace IN {{pod_ns:Array(String)}} AND (valid_to IS NULL OR valid_to >= {{since:{T}}})) "
    "OR (kind = 'service' AND namespace IN {svc_ns:Array(String)} AND valid_to IS NULL) "
    "OR (kind = 'node' AND name IN {nodes:Array(String)} AND valid_to IS NULL) "
    "ORDER BY kind, namespace, name, address"
)

Format = Annotated[str, typer.Option("--format", "-f", help="table, json or csv")]
Since = Annotated[str | None, typer.Option(help="RFC3339 time, date or duration like 7d (inclusive)")]
Until = Annotated[str | None, typer.Option(help="RFC3339 time, date or duration like 1h (exclusive)")]
Namespace = Annotated[str | None, typer.Option("--namespace", "-n", help="only this source namespace")]
Cidrs = Annotated[Path | None, typer.Option("--cidrs", help="YAML file of named CIDRs: name: [cidr, ...]")]

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


def _emit(rows: list[dict[str, Any]], fmt: str, title: str) -> None:
    """JSON keeps lists; table and csv show them comma-separated."""
    if fmt != "json":
        rows = [{k: ", ".join(map(str, v)) if isinstance(v, list) else v for k, v in r.items()} for r in rows]
    text = render(rows, fmt, title, console=cli.out if fmt == "table" else None)
    if text is not None:
        print(text)


# -- drift -------------------------------------------------------------------------------------


def report_drift(
    baseline_until: Annotated[str | None, typer.Option(help="destinations first seen from this time on are drift")]
    = None,
    baseline: Annotated[str | None, typer.Option(help="or: drift against a saved baseline (flows baseline save)")]
    = None,
    since: Annotated[str | None, typer.Option(help="only drift first seen (or, with --baseline, seen) since then")]
    = None,
    until: Until = None,
    namespace: Namespace = None,
    fmt: Format = "table",
) -> None:
    """Destinations first seen after a baseline: new peers, and new ports or protocols to known ones."""
    cli.check_format(fmt)
    if (baseline_until is None) == (baseline is None):
        raise cli.fail("give either --baseline-until TIME or --baseline NAME")
    settings = cli.load_settings()
    start = _instant(baseline_until, "--baseline-until") if baseline_until is not None else EARLIEST
    ns = namespace or ""

    async def main() -> list[dict[str, Any]]:
        if baseline_until is not None:
            lo, hi = time_range(since or baseline_until, until)
            if hi <= start:
                raise ValueError(f"empty time range: --until {hi.isoformat()} is not after the baseline "
                                 f"{start.isoformat()}")
            rows = await _rows(settings, DRIFT_SQL, baseline=start, since=lo, until=hi, ns=ns)
        else:
            saved = await _rows(settings, BASELINE_LIST_SQL, name=baseline)
            if not saved:
                names = [r["name"] for r in await _rows(settings, BASELINE_LIST_SQL, name="")]
                raise ValueError(f"unknown baseline {baseline!r}"
                                 + (f" (saved: {', '.join(names)})" if names else " (none saved yet)"))
            lo, hi = time_range(since or saved[0]["window_until"], until)
            rows = await _rows(settings, DRIFT_BASELINE_SQL, name=baseline, since=lo, until=hi, ns=ns)
        if not rows and ns:
            await _require_namespace(settings, ns)
        return rows

    rows = cli.run(main())
    _emit(rows, fmt, "Drift: destinations first seen after the baseline")


# -- stability and tiers -----------------------------------------------------------------------


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


async def _tiers(settings: Settings, cfg: AnalysisSettings, lo: datetime, hi: datetime, ns: str,
                 ranges: NamedRanges | None) -> list[tuple[analysis.TierResult, dict[str, Any], dict[str, Any] | None]]:
    """(tier, profile row, stability row) per namespace; stability as of the window's end (or now)."""
    profiles = await _rows(settings, PROFILE_SQL, since=lo, until=hi, ns=ns)
    now = min(hi, _now())
    stability = {r["namespace"]: r for r in await _rows(
        settings, STABILITY_SQL, now=now, min_days=cfg.min_days, stable_days=cfg.stable_days, ns=ns)}
    grouped: dict[str, int] = {}
    if ranges is not None:
        peers = [Peer.from_row(r) for r in await _rows(settings, ALLOWLIST_SQL, since=lo, until=hi, ns=ns)]
        grouped = analysis.ip_peer_counts(analysis.group_by_ranges(peers, ranges)[0])
    out = []
    for p in profiles:
        ip_peers = grouped.get(p["namespace"], 0) if ranges is not None else None
        st = stability.get(p["namespace"])
        out.append((analysis.assign_tier(p, st, cfg, ip_peers), p, st))
    return out


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
        tiers = await _tiers(settings, cfg, lo, hi, ns, ranges)
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


# -- allowlist and policy ----------------------------------------------------------------------


async def _peers(settings: Settings, lo: datetime, hi: datetime, ns: str,
                 ranges: NamedRanges | None) -> tuple[list[Peer], list[str]]:
    peers = [Peer.from_row(r) for r in await _rows(settings, ALLOWLIST_SQL, since=lo, until=hi, ns=ns)]
    if ranges is None:
        return peers, []
    return analysis.group_by_ranges(peers, ranges)


def report_allowlist(
    namespace: Namespace = None,
    since: Since = None,
    until: Until = None,
    cidrs: Cidrs = None,
    fmt: Format = "table",
) -> None:
    """What an egress policy needs per namespace: ports per peer, with first/last seen, connections, nodes."""
    cli.check_format(fmt)
    settings = cli.load_settings()
    lo, hi = _window(since, until)
    ranges = _read_ranges(cidrs)
    ns = namespace or ""

    async def main() -> tuple[list[Peer], list[str]]:
        found = await _peers(settings, lo, hi, ns, ranges)
        if not found[0] and ns:
            await _require_namespace(settings, ns)
        return found

    peers, outside = cli.run(main())
    _emit([p.as_row(ranges is not None) for p in peers], fmt, "Egress allowlist")
    if ranges is not None and outside:
        cli.err.print(f"{len(outside)} external IPs outside every named range: {', '.join(outside[:50])}"
                      + (" …" if len(outside) > 50 else ""), highlight=False)


async def _inventory(settings: Settings, peers: list[Peer], since: datetime) -> Inventory:
    pods = {(p.dst_namespace, p.name) for p in peers if p.dst_kind == "pod" and p.name}
    services = {(p.dst_namespace, p.name) for p in peers if p.dst_kind == "service"}
    nodes = sorted({p.name for p in peers if p.dst_kind == "node"})
    rows = await _rows(settings, CLAIMS_SQL, since=since, pod_ns=sorted({ns for ns, _ in pods}),
                       svc_ns=sorted({ns for ns, _ in services}), nodes=nodes)
    pod_labels: dict[tuple[str, str], list[dict[str, str]]] = {}
    service_ips: dict[tuple[str, str], list[str]] = {}
    node_ips: dict[str, list[str]] = {}
    for r in rows:
        key = (r["namespace"], r["workload"] if r["kind"] == "pod" else r["name"])
        if r["kind"] == "pod" and key in pods:
            pod_labels.setdefault(key, []).append(r["labels"])
        elif r["kind"] == "service" and key in services:
            service_ips.setdefault(key, []).append(r["address"])
        elif r["kind"] == "node":
            node_ips.setdefault(r["name"], []).append(r["address"])
    return Inventory(
        workload_labels={k: common_labels(v) for k, v in pod_labels.items()},
        service_ips={k: tuple(sorted(set(v))) for k, v in service_ips.items()},
        node_ips={k: tuple(sorted(set(v))) for k, v in node_ips.items()},
    )


def policy(
    namespace: Annotated[str, typer.Argument(help="source namespace to write the egress policy for")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="calico or k8s")] = "calico",
    staged: Annotated[bool, typer.Option("--staged", help="Calico staged policy: reported, not enforced")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the YAML here")] = None,
    since: Since = None,
    until: Until = None,
    cidrs: Cidrs = None,
    force: Annotated[bool, typer.Option("--force", help="generate even for tier D, unstable or under-observed, "
                                        "or when its replay denies observed egress")] = False,
    inventory_file: Annotated[Path | None, typer.Option(
        "--inventory", help="kubectl get namespaces,services -A -o json: lets the replay check decide Service "
        "backends")] = None,
) -> None:
    """YAML allowing exactly the namespace's observed egress (DNS, pods, services, IPs), then deny."""
    if fmt not in FORMATS:
        raise cli.fail(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    settings = cli.load_settings()
    cfg = _settings_of(AnalysisSettings)
    policy_cfg = _settings_of(PolicySettings)
    lo, hi = _window(since, until)
    ranges = _read_ranges(cidrs)

    async def main() -> tuple[list[Peer], Inventory, list[tuple[Any, dict[str, Any], Any]]]:
        peers, _ = await _peers(settings, lo, hi, namespace, ranges)
        if not peers:
            await _require_namespace(settings, namespace)
            raise ValueError(f"no egress observed from namespace {namespace!r} between {lo.isoformat()} "
                             f"and {hi.isoformat()}")
        tiers = await _tiers(settings, cfg, lo, hi, namespace, ranges)
        return peers, await _inventory(settings, peers, lo), tiers

    peers, inventory, tiers = cli.run(main())
    tier, _, stability = tiers[0]
    refusals = analysis.policy_refusals(tier, stability)
    if refusals and not force:
        raise cli.fail(f"refusing to write a policy for {namespace}: {'; '.join(refusals)}. "
                       "Pass --force to write it anyway (or keep observing).")
    context = {"tier": f"{tier.tier}: {tier.reason}"}
    if stability:
        context["stability"] = (f"horizon {stability['horizon_days']} d, {stability['days_observed']} days observed, "
                                f"{stability['days_since_new']} d since the last new destination")
    try:
        rendered = render_policy(namespace, peers, inventory, fmt=fmt, staged=staged, context=context,
                                 settings=policy_cfg)
    except ValueError as exc:
        raise cli.fail(str(exc)) from None
    for warning in rendered.warnings:
        cli.err.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    _check_replay(settings, namespace, rendered.document, lo, hi, force, inventory_file)
    if output is None:
        print(rendered.text, end="")
        return
    try:
        output.write_text(rendered.text, encoding="utf-8")
    except OSError as exc:
        raise cli.fail(f"cannot write {output}: {exc.strerror}") from None
    cli.err.print(f"wrote {output} ({len(rendered.document['spec']['egress'])} egress rules)", highlight=False)


def _check_replay(settings: Settings, namespace: str, document: dict[str, Any], lo: datetime, hi: datetime,
                  force: bool, inventory: Path | None) -> None:
    """Refuse (unless ``force``) a policy whose replay over its own window denies observed egress."""
    from pipeline.analysis.policy_rules import parse_documents
    from pipeline.cli.replay import describe_denied, read_inventory, replay_documents

    results = cli.run(replay_documents(settings, parse_documents([document]), lo, hi, namespace,
                                       read_inventory(inventory)))
    if not results:
        return
    result = results[0]
    if result.denied:
        denied = describe_denied(result)
        if not force:
            raise cli.fail(f"refusing to write a policy for {namespace}: replayed over {lo.isoformat()} .. "
                           f"{hi.isoformat()} it denies observed egress: {denied}. Pass --force to write it anyway.")
        cli.err.print(f"[yellow]warning:[/yellow] this policy denies observed egress: {denied}", highlight=False)
    if result.undecidable:
        first = result.undecidable[0][1].reason
        cli.err.print(f"[yellow]warning:[/yellow] replay cannot decide {len(result.undecidable)} observed "
                      f"destinations (first: {first}); `flows replay --namespace {namespace}` lists them",
                      highlight=False)


# -- baselines ---------------------------------------------------------------------------------


def baseline_save(
    name: Annotated[str, typer.Argument(help="baseline name (letters, digits, '.', '_', '-')")],
    since: Since = None,
    until: Annotated[str | None, typer.Option(help="end of the window to freeze (default now)")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="supersede an existing baseline of that name")]
    = False,
) -> None:
    """Freeze the current allowlists (every destination identity) under NAME, for `report drift --baseline`."""
    if not _BASELINE_NAME.match(name):
        raise cli.fail("baseline name must be letters, digits, '.', '_' or '-' (max 63), starting alphanumeric")
    settings = cli.load_settings()
    now = _now()
    lo, hi = _window(since, until or rfc3339(now))

    async def main() -> dict[str, Any]:
        saved_at = now
        existing = await _rows(settings, BASELINE_LIST_SQL, name=name)
        if existing and not replace:
            raise ValueError(f"baseline {name!r} exists; pass --replace to save a newer snapshot over it")
        if existing:  # the newest snapshot wins: never tie with the one replaced
            saved_at = max(now, analysis.parse_instant(existing[0]["saved_at"]) + timedelta(microseconds=1))
        if not (await _rows(settings, BASELINE_COUNT_SQL, since=lo, until=hi))[0]["n"]:
            raise ValueError("no egress observed in that window: nothing to freeze")
        await _rows(settings, BASELINE_SAVE_SQL, name=name, saved_at=saved_at, since=lo, until=hi)
        return (await _rows(settings, BASELINE_LIST_SQL, name=name))[0]

    row = cli.run(main())
    cli.out.print(f"saved baseline {name}: {row['destinations']} destinations of {row['namespaces']} namespaces "
                  f"({lo.isoformat()} .. {hi.isoformat()})", highlight=False)


def baseline_list(fmt: Format = "table") -> None:
    """Saved baselines (newest snapshot of each)."""
    cli.check_format(fmt)
    settings = cli.load_settings()
    _emit(cli.run(_rows(settings, BASELINE_LIST_SQL, name="")), fmt, "Baselines")
