"""``flows replay``: a policy file, or the policy ``flows policy`` would write, against stored egress.

A thin adapter: the destinations come from the ``destinations`` view (the identities drift and
the allowlist use), the facts (pods with labels and IPs in the range, Service and node addresses)
from ``current_claims``, Namespace labels and Service selectors from an optional inventory file;
``pipeline.analysis.replay`` decides. ``flows policy`` and ``flows report html`` reuse
``replay_documents`` and ``generated_replays``. It registers itself on the root app.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from pipeline.analysis import policy_rules, replay_facts
from pipeline.analysis import replay as rp
from pipeline.analysis.policy import FORMATS, PolicySettings, render_policy
from pipeline.analysis.reports import render
from pipeline.basics.config import Settings
from pipeline.cli import common as cli
from pipeline.cli import policy as policy_cli
from pipeline.cli import report as analysis

T = "DateTime64(6, 'UTC')"
DESTINATIONS_SQL = (
    "SELECT namespace, dst_kind, dst, dst_namespace, dst_name, proto, port, first_seen, last_seen, connections "
    f"FROM destinations(since = {{since:{T}}}, until = {{until:{T}}}) "
    "WHERE ({ns:String} = '' OR namespace = {ns:String}) "
    "ORDER BY namespace, dst_kind, dst, dst_name, proto, port"
)
# Every claim that overlapped [since, until): pods with labels, Service and node addresses.
FACTS_SQL = (
    "SELECT kind, uid, namespace, name, workload, address, labels FROM current_claims "
    f"WHERE valid_from < {{until:{T}}} AND (valid_to IS NULL OR valid_to >= {{since:{T}}}) "
    "ORDER BY kind, namespace, name, address"
)

# The pods each Service's endpoint claims named in the range (a backing pod even when no inventory
# gives the Service's selector).
ENDPOINTS_SQL = (
    "SELECT DISTINCT latest.1 AS namespace, latest.2 AS name, latest.3 AS target FROM ("
    " SELECT argMax((namespace, name, target, valid_from, valid_to),"
    " (observed_at, -ifNull(toUnixTimestamp64Micro(valid_to), 9223372036854775807), valid_from, target)) AS latest"
    " FROM endpoint_claims GROUP BY ip, port, protocol, uid)"
    f" WHERE latest.3 != '' AND latest.4 < {{until:{T}}} AND (latest.5 IS NULL OR latest.5 >= {{since:{T}}})"
)  # each endpoint claim's latest observation, ranked as the registry ranks them


async def load_facts(settings: Settings, lo: datetime, hi: datetime, inventory: Any = None) -> replay_facts.Facts:
    rows = await analysis._rows(settings, FACTS_SQL, since=lo, until=hi)
    pods: dict[str, dict[str, Any]] = {}
    service_ips: dict[tuple[str, str], set[str]] = {}
    node_ips: dict[str, set[str]] = {}
    for r in rows:
        if r["kind"] == "pod":
            pod = pods.setdefault(r["uid"], {"namespace": r["namespace"], "workload": r["workload"] or r["name"],
                                             "labels": dict(r["labels"]), "ips": set(), "name": r["name"]})
            pod["ips"].add(r["address"])
        elif r["kind"] == "service":
            service_ips.setdefault((r["namespace"], r["name"]), set()).add(r["address"])
        elif r["kind"] == "node":
            node_ips.setdefault(r["name"], set()).add(r["address"])
    by_ns: dict[str, list[replay_facts.Pod]] = {}
    for p in pods.values():
        by_ns.setdefault(p["namespace"], []).append(
            replay_facts.Pod(p["namespace"], p["workload"], p["labels"], tuple(sorted(p["ips"])), p["name"]))
    endpoints: dict[tuple[str, str], set[str]] = {}
    for r in await analysis._rows(settings, ENDPOINTS_SQL, since=lo, until=hi):
        endpoints.setdefault((r["namespace"], r["name"]), set()).add(r["target"])
    namespaces, selectors = replay_facts.inventory_facts(inventory) if inventory is not None else (None, None)
    return replay_facts.Facts(
        pods={k: tuple(v) for k, v in by_ns.items()},
        service_ips={k: tuple(sorted(v)) for k, v in service_ips.items()},
        node_ips={k: tuple(sorted(v)) for k, v in node_ips.items()},
        namespace_labels=namespaces, service_selectors=selectors,
        service_endpoints={k: frozenset(v) for k, v in endpoints.items()},
    )


async def replay_documents(settings: Settings, policies: policy_rules.PolicySet, lo: datetime, hi: datetime,
                           namespace: str = "", inventory: Any = None) -> list[rp.NamespaceReplay]:
    """Replay parsed policies over the stored egress of [lo, hi) (one namespace, or all)."""
    rows = await analysis._rows(settings, DESTINATIONS_SQL, since=lo, until=hi, ns=namespace)
    facts = await load_facts(settings, lo, hi, inventory)
    return rp.replay(policies, [replay_facts.Destination.from_row(r) for r in rows], facts,
                     [namespace] if namespace else None)


async def generated_replays(settings: Settings, lo: datetime, hi: datetime, namespace: str = "",
                            fmt: str = "calico", ranges: Any = None, inventory: Any = None
                            ) -> tuple[dict[str, rp.NamespaceReplay], dict[str, str]]:
    """Per namespace, the replay of the policy ``flows policy NS`` would write for [lo, hi).

    Returns the replays and, for namespaces whose policy cannot be written, why.
    """
    peers, _ = await analysis._peers(settings, lo, hi, namespace, ranges)
    if namespace and not peers:
        await analysis._require_namespace(settings, namespace)  # a typo gets the list of known ones
    owned = await policy_cli._inventory(settings, peers, lo)
    rows = await analysis._rows(settings, DESTINATIONS_SQL, since=lo, until=hi, ns=namespace)
    facts = await load_facts(settings, lo, hi, inventory)
    dests = [replay_facts.Destination.from_row(r) for r in rows]
    cfg = PolicySettings()
    out: dict[str, rp.NamespaceReplay] = {}
    failed: dict[str, str] = {}
    for ns in sorted({p.namespace for p in peers}):
        try:
            doc = render_policy(ns, peers, owned, fmt=fmt, settings=cfg).document
        except ValueError as exc:
            failed[ns] = str(exc)
            continue
        policies = policy_rules.parse_documents([doc], f"generated policy of {ns}")
        result = rp.replay(policies, [d for d in dests if d.namespace == ns], facts, [ns])
        out[ns] = result[0] if result else rp.NamespaceReplay(ns)
    return out, failed


async def replay_summaries(settings: Settings, lo: datetime, hi: datetime, inventory: Any = None
                           ) -> dict[str, dict[str, Any]]:
    """Per namespace with egress: does its generated policy replay clean (for ``flows report html``)."""
    found, failed = await generated_replays(settings, lo, hi, inventory=inventory)
    out: dict[str, dict[str, Any]] = {}
    for ns, result in found.items():
        obj = rp.as_json([result], [])[0]  # counts per destination identity, as `flows replay` prints them
        state = "denies" if obj["denied"] else "undecidable" if obj["undecidable"] else "clean"
        detail = describe_denied(result) if result.denied else (
            result.undecidable[0][1].reason if result.undecidable else "")
        out[ns] = {"replay": state, "allowed": obj["allowed"], "denied": len(obj["denied"]),
                   "undecidable": len(obj["undecidable"]), "detail": detail}
    for ns, why in failed.items():
        out[ns] = {"replay": "not generated", "allowed": 0, "denied": 0, "undecidable": 0, "detail": why}
    return out


def read_inventory(path: Path | None) -> Any:
    if path is None:
        return None
    try:
        return orjson.loads(path.read_bytes())
    except OSError as exc:
        raise cli.fail(f"cannot read {path}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise cli.fail(f"{path} is not JSON (kubectl get namespaces,services -A -o json): {exc}") from None


def describe_denied(result: rp.NamespaceReplay, limit: int = 20) -> str:
    """One line per denied identity, for refusals and warnings."""
    rows = rp.as_json([result], [])[0]["denied"]
    text = "; ".join(f"{r['dst_kind']} {r['dst']} {r['proto']}" + (f"/{r['port']}" if r["port"] is not None else "")
                     + f" ({r['connections']} connections)" for r in rows[:limit])
    return text + (f" (+{len(rows) - limit} more)" if len(rows) > limit else "")


def _print_tables(objects: list[dict[str, Any]]) -> None:
    if not objects:
        cli.out.print("no namespace with egress in the range is selected by these policies", highlight=False)
    for obj in objects:
        state = "replays clean" if not obj["denied"] and not obj["undecidable"] else (
            f"{len(obj['denied'])} denied, {len(obj['undecidable'])} undecidable")
        cli.out.print(f"[bold]{obj['namespace']}[/bold]: {obj['allowed']} destinations allowed "
                      f"({obj['allowed_connections']} connections); {state}", highlight=False)
        for key, title in (("denied", "would be DENIED"), ("undecidable", "cannot be decided")):
            if obj[key]:
                rows = [{**{k: v for k, v in r.items() if k != "reasons"}, "why": "; ".join(r["reasons"])}
                        for r in obj[key]]
                render(rows, "table", f"{obj['namespace']}: {title}", console=cli.out)
    unsupported = objects[0]["unsupported"] if objects else []
    for item in unsupported:
        cli.err.print(f"[yellow]unsupported:[/yellow] {item}", highlight=False)


@cli.app.command()
def replay(
    file: Annotated[Path | None, typer.Argument(help="policy YAML (one or more documents); omit with --namespace")]
    = None,
    namespace: analysis.Namespace = None,
    since: analysis.Since = None,
    until: analysis.Until = None,
    inventory: Annotated[Path | None, typer.Option(
        "--inventory", help="kubectl get namespaces,services -A -o json: namespace labels, Service selectors")] = None,
    policy_format: Annotated[str, typer.Option("--policy-format", help="with --namespace and no FILE: calico or k8s")]
    = "calico",
    cidrs: analysis.Cidrs = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json")] = "table",
) -> None:
    """What a policy would have allowed and denied of the egress stored for a range, per namespace.

    With FILE, replays that file; with only --namespace NS, the policy `flows policy NS` would write.
    Exits 0 whether or not something is denied.
    """
    cli.check_format(fmt, ("table", "json"))
    if file is None and not namespace:
        raise cli.fail("give a policy FILE, or --namespace NS to replay the policy `flows policy NS` would write")
    if policy_format not in FORMATS:
        raise cli.fail(f"--policy-format must be one of {', '.join(FORMATS)}, not {policy_format!r}")
    settings = cli.load_settings()
    lo, hi = analysis._window(since, until)
    doc = read_inventory(inventory)
    unsupported: list[str] = []
    if file is not None:
        try:
            policies = policy_rules.load_policies(file.read_text(encoding="utf-8"), str(file))
        except OSError as exc:
            raise cli.fail(f"cannot read {file}: {exc.strerror}") from None
        except ValueError as exc:
            raise cli.fail(str(exc)) from None
        unsupported = policies.unsupported
        results = cli.run(replay_documents(settings, policies, lo, hi, namespace or "", doc))
    else:
        ranges = analysis._read_ranges(cidrs)
        found, failed = cli.run(generated_replays(settings, lo, hi, namespace or "", policy_format, ranges, doc))
        if namespace in failed or not found:
            raise cli.fail(failed.get(namespace or "", f"no egress observed from namespace {namespace!r} between "
                                     f"{lo.isoformat()} and {hi.isoformat()}"))
        results = list(found.values())
    objects = rp.as_json(results, unsupported)
    if fmt == "json":
        print(orjson.dumps(objects, option=orjson.OPT_INDENT_2).decode())
    else:
        _print_tables(objects)
