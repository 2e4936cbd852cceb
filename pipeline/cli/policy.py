"""``flows policy NAMESPACE``: the egress policy that allows exactly what the namespace was seen doing.

Reads the namespace's allowlist and tier through the report plumbing, the labels and addresses
of its peers from ``current_claims``, and hands them to ``pipeline.analysis.policy`` to render.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.analysis import evidence as analysis
from pipeline.analysis.asn import prefix_grouping
from pipeline.analysis.evidence import AnalysisSettings, Peer
from pipeline.analysis.policy import FORMATS, Inventory, PolicySettings, common_labels, render_policy
from pipeline.basics.config import Settings
from pipeline.cli import common as cli
from pipeline.cli.report import (
    AsnDbPath,
    Cidrs,
    Since,
    T,
    Until,
    _peers,
    _ranges_grouping,
    _read_ranges,
    _require_namespace,
    _rows,
    _settings_of,
    _tiers,
    _window,
    open_asn_db,
)

CLAIMS_SQL = (
    "SELECT kind, namespace, name, workload, address, labels FROM current_claims WHERE "
    f"(kind = 'pod' AND namespace IN {{pod_ns:Array(String)}} AND (valid_to IS NULL OR valid_to >= {{since:{T}}})) "
    "OR (kind = 'service' AND namespace IN {svc_ns:Array(String)} AND valid_to IS NULL) "
    "OR (kind = 'node' AND name IN {nodes:Array(String)} AND valid_to IS NULL) "
    "ORDER BY kind, namespace, name, address"
)
# The pods backing each Service and the ports they serve it on: each endpoint claim's latest
# observation (as the registry ranks them), still backing at the start of the range.
BACKENDS_SQL = (
    "SELECT latest.1 AS namespace, latest.2 AS name, latest.3 AS target, port, protocol FROM ("
    " SELECT ip, port, protocol, uid, argMax((namespace, name, target, valid_to),"
    " (observed_at, -ifNull(toUnixTimestamp64Micro(valid_to), 9223372036854775807), valid_from, target)) AS latest"
    " FROM endpoint_claims GROUP BY ip, port, protocol, uid)"
    " WHERE latest.1 IN {svc_ns:Array(String)} AND latest.3 != ''"
    f" AND (latest.4 IS NULL OR latest.4 >= {{since:{T}}})"
    " ORDER BY namespace, name, target, protocol, port"
)
GROUPINGS = ("ip", "cidr-group", "prefix", "port")


async def _inventory(settings: Settings, peers: list[Peer], since: datetime) -> Inventory:
    pods = {(p.dst_namespace, p.name) for p in peers if p.dst_kind == "pod" and p.name}
    services = {(p.dst_namespace, p.name) for p in peers if p.dst_kind == "service"}
    nodes = sorted({p.name for p in peers if p.dst_kind == "node"})
    svc_ns = sorted({ns for ns, _ in services})
    backends = await _rows(settings, BACKENDS_SQL, since=since, svc_ns=svc_ns) if services else []
    rows = await _rows(settings, CLAIMS_SQL, since=since, pod_ns=sorted({ns for ns, _ in pods} | set(svc_ns)),
                       svc_ns=svc_ns, nodes=nodes)
    by_pod: dict[tuple[str, str], list[dict[str, str]]] = {}
    pod_labels: dict[tuple[str, str], list[dict[str, str]]] = {}
    service_ips: dict[tuple[str, str], list[str]] = {}
    node_ips: dict[str, list[str]] = {}
    for r in rows:
        key = (r["namespace"], r["workload"] if r["kind"] == "pod" else r["name"])
        if r["kind"] == "pod":
            by_pod.setdefault((r["namespace"], r["name"]), []).append(r["labels"])
        if r["kind"] == "pod" and key in pods:
            pod_labels.setdefault(key, []).append(r["labels"])
        elif r["kind"] == "service" and key in services:
            service_ips.setdefault(key, []).append(r["address"])
        elif r["kind"] == "node":
            node_ips.setdefault(r["name"], []).append(r["address"])
    served: dict[tuple[str, str], tuple[list[dict[str, str]], set[tuple[str, int]]]] = {}
    for b in backends:
        key = (b["namespace"], b["name"])
        if key in services:
            label_sets, ports = served.setdefault(key, ([], set()))
            label_sets.extend(by_pod.get((b["namespace"], b["target"]), []))
            ports.add((b["protocol"], int(b["port"])))
    return Inventory(
        workload_labels={k: common_labels(v) for k, v in pod_labels.items()},
        service_ips={k: tuple(sorted(set(v))) for k, v in service_ips.items()},
        node_ips={k: tuple(sorted(set(v))) for k, v in node_ips.items()},
        service_backends={k: (common_labels(labels), tuple(sorted(ports)))
                          for k, (labels, ports) in served.items() if labels},
    )


@cli.app.command()
def policy(
    namespace: Annotated[str, typer.Argument(help="source namespace to write the egress policy for")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="calico or k8s")] = "calico",
    staged: Annotated[bool, typer.Option("--staged", help="Calico staged policy: reported, not enforced")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="write the YAML here")] = None,
    since: Since = None,
    until: Until = None,
    cidrs: Cidrs = None,
    by: Annotated[str | None, typer.Option(
        "--by", show_default=False,
        help="how external IPs are allowed: ip (a /32 each), cidr-group (named ranges of --cidrs; the default "
             "with --cidrs), prefix (announced prefix from --asn-db; --cidrs ranges first), port (any external "
             "address on the observed ports, for broad egress)")] = None,
    asn_db: AsnDbPath = None,
    force: Annotated[bool, typer.Option("--force", help="generate even for tier D, unstable or under-observed, "
                                        "or when its replay denies observed egress")] = False,
    inventory_file: Annotated[Path | None, typer.Option(
        "--inventory", help="kubectl get namespaces,services -A -o json: lets the replay check decide Service "
        "backends")] = None,
) -> None:
    """YAML allowing exactly the namespace's observed egress (DNS, pods, services, IPs), then deny."""
    if fmt not in FORMATS:
        raise cli.fail(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    by = by or ("cidr-group" if cidrs is not None else "ip")
    if by not in GROUPINGS:
        raise cli.fail(f"--by must be one of {', '.join(GROUPINGS)}, not {by!r}")
    if by in ("ip", "port") and cidrs is not None:
        raise cli.fail(f"--by {by} does not use named ranges: drop --cidrs, or use --by cidr-group or prefix")
    if by == "cidr-group" and cidrs is None:
        raise cli.fail("--by cidr-group needs --cidrs FILE (named CIDR groups)")
    settings = cli.load_settings()
    cfg = _settings_of(AnalysisSettings)
    policy_cfg = _settings_of(PolicySettings)
    lo, hi = _window(since, until)
    grouping = _ranges_grouping(_read_ranges(cidrs))
    if by == "prefix":
        if asn_db is None:
            raise cli.fail("--by prefix needs an ASN database: --asn-db PATH or FLOWS_ASN_DB")
        by_prefix = prefix_grouping(open_asn_db(asn_db))
        by_range = grouping  # named ranges, the user's own knowledge, win over announced prefixes
        grouping = by_prefix if by_range is None else (lambda ip: by_range(ip) or by_prefix(ip))

    async def main() -> tuple[list[Peer], list[str], Inventory, list[tuple[Any, dict[str, Any], Any]]]:
        peers, outside = await _peers(settings, lo, hi, namespace, grouping)
        if not peers:
            await _require_namespace(settings, namespace)
            raise ValueError(f"no egress observed from namespace {namespace!r} between {lo.isoformat()} "
                             f"and {hi.isoformat()}")
        tiers = await _tiers(settings, cfg, lo, hi, namespace, grouping)
        return peers, outside, await _inventory(settings, peers, lo), tiers

    peers, outside, inventory, tiers = cli.run(main())
    tier, _, stability = tiers[0]
    refusals = analysis.policy_refusals(tier, stability, by_port=by == "port")
    if refusals and not force:
        raise cli.fail(f"refusing to write a policy for {namespace}: {'; '.join(refusals)}. "
                       "Pass --force to write it anyway (or keep observing).")
    context = {"tier": f"{tier.tier}: {tier.reason}"}
    if stability:
        context["stability"] = (f"horizon {stability['horizon_days']} d, {stability['days_observed']} days observed, "
                                f"{stability['days_since_new']} d since the last new destination")
    try:
        rendered = render_policy(namespace, peers, inventory, fmt=fmt, staged=staged, context=context,
                                 settings=policy_cfg, by_port=by == "port")
    except ValueError as exc:
        raise cli.fail(str(exc)) from None
    if outside:
        where = "named range" if by == "cidr-group" else "named range or ASN prefix"
        cli.err.print(f"{len(outside)} external IPs in no {where}, allowed as /32: {', '.join(outside[:50])}"
                      + (" …" if len(outside) > 50 else ""), highlight=False)
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
