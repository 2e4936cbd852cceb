"""Replay: what a set of egress policies would have done to the egress we stored (pure).

Input: policy documents (Calico ``NetworkPolicy``, ``GlobalNetworkPolicy``, their ``Staged…``
variants and ``Tier``; Kubernetes ``networking.k8s.io/v1`` ``NetworkPolicy``), the rows of the
``destinations`` view for a range, and what ownership knows (``Facts``). Output per source
namespace: the destinations allowed, the ones denied, and the ones that cannot be decided.
Documents become matchers in ``policy_rules``; the facts a row resolves to are ``replay_facts``.

How a stored destination meets a rule:
- A pod destination is the pods of its workload (``dst_name``) that existed in the range, with
  their labels and IPs from the ownership table. A selector holds when it holds for all of them,
  fails when it fails for all; pods that disagree (relabelled mid-range) make it undecidable.
- A Service destination is the Service (``services`` rules, its ClusterIPs for ``nets``) and,
  for selector rules, its backing pods: egress policy meets service traffic after DNAT. Backing
  pods are the pods of its namespace matching the Service's selector, from an inventory of
  Service objects, else the pods its EndpointSlices named in the range (endpoint claims);
  without either a selector rule on a Service is undecidable.
- Node, external and unknown destinations are addresses only: selectors never match them
  (HostEndpoints and NetworkSets are not modelled; such documents are listed as unsupported).
- Namespace labels are known in full from an inventory of Namespace objects; otherwise only
  ``kubernetes.io/metadata.name``, and a namespaceSelector on another label is undecidable.
- Stored rows keep neither the ICMP type/code nor named ports: rules on them are undecidable.

Evaluation follows Calico: tiers by order (``default`` last, Kubernetes policies in it at
order 1000), policies by order then name, rules in order; Allow/Deny decide, Pass leaves the
tier, Log goes on; a tier that selects the pod and decides nothing denies (or passes, with the
Tier's ``defaultAction: Pass``); no policy: allowed.
Staged policies are replayed as if enforced (that is their question). Every construct this
module does not evaluate is listed, and a destination that reaches it is undecidable, never
allowed or denied by guess.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.analysis.policy_rules import Policy, PolicySet, Tier
from pipeline.analysis.replay_facts import Destination, Facts, resolve
from pipeline.basics.timespec import rfc3339


@dataclass(frozen=True)
class Verdict:
    action: str  # allow | deny | undecidable
    reason: str


def decide(policies: PolicySet, dest: Destination, facts: Facts) -> Verdict:
    """What the policies do to one stored destination of its source namespace."""
    target = resolve(dest, facts)
    by_tier: dict[str, list[Policy]] = {}
    for policy in policies.policies:
        by_tier.setdefault(policy.tier, []).append(policy)
    unknown = Tier(math.inf)
    ordered = sorted(by_tier, key=lambda t: (t not in policies.tiers, policies.tiers.get(t, unknown).order, t))
    for tier in ordered:
        members = sorted(by_tier[tier], key=lambda p: (p.order is None, p.order or 0.0, p.name))
        applicable = []
        for policy in members:
            value, why = policy.applies(dest.namespace, facts)
            if value is None:
                return Verdict("undecidable", why)
            if value:
                applicable.append(policy)
        if not applicable:
            continue
        if tier not in policies.tiers:
            return Verdict("undecidable", f"tier {tier!r} applies but its order is unknown")
        passed = False
        for policy in applicable:
            for rule in policy.rules:
                value, why = rule.match(target, facts)
                if value is False or rule.action == "Log":
                    continue
                if value is None:
                    return Verdict("undecidable", why or f"{rule.text}: cannot be evaluated")
                if rule.action == "Pass":
                    passed = True
                    break
                return Verdict("allow" if rule.action == "Allow" else "deny", f"{rule.action}: {rule.text}")
            if passed:
                break
        if not passed and policies.tiers[tier].default_action == "Deny":
            return Verdict("deny", f"tier {tier}: no rule of {', '.join(p.ref for p in applicable)} matched "
                                   "(default deny)")
    return Verdict("allow", "no policy applies")


@dataclass
class NamespaceReplay:
    namespace: str
    allowed: list[Destination] = field(default_factory=list)
    denied: list[tuple[Destination, Verdict]] = field(default_factory=list)
    undecidable: list[tuple[Destination, Verdict]] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.denied and not self.undecidable


def replay(policies: PolicySet, destinations: Iterable[Destination], facts: Facts,
           namespaces: Iterable[str] | None = None) -> list[NamespaceReplay]:
    """Per source namespace a policy applies to (or may apply to), what it would allow and deny.

    ``namespaces`` restricts the output; namespaces no policy selects are left out (nothing changes
    for them).
    """
    wanted = set(namespaces) if namespaces is not None else None
    out: dict[str, NamespaceReplay] = {}
    for dest in destinations:
        if wanted is not None and dest.namespace not in wanted:
            continue
        if all(p.applies(dest.namespace, facts)[0] is False for p in policies.policies):
            continue
        result = out.setdefault(dest.namespace, NamespaceReplay(dest.namespace))
        verdict = decide(policies, dest, facts)
        if verdict.action == "allow":
            result.allowed.append(dest)
        elif verdict.action == "deny":
            result.denied.append((dest, verdict))
        else:
            result.undecidable.append((dest, verdict))
    return [out[ns] for ns in sorted(out)]


def _identity_rows(items: list[tuple[Destination, Verdict]]) -> list[dict[str, Any]]:
    """Rows per drift identity (dst_kind, dst, proto, port): workloads of one pod namespace merge."""
    merged: dict[tuple, dict[str, Any]] = {}
    for dest, verdict in items:
        key = (dest.dst_kind, dest.dst, dest.proto, dest.port)
        row = merged.get(key)
        if row is None:
            merged[key] = {"dst_kind": dest.dst_kind, "dst": dest.dst, "proto": dest.proto, "port": dest.port,
                           "connections": dest.connections, "first_seen": dest.first_seen,
                           "last_seen": dest.last_seen, "reasons": [verdict.reason]}
            continue
        row["connections"] += dest.connections
        row["first_seen"] = min(row["first_seen"], dest.first_seen)
        row["last_seen"] = max(row["last_seen"], dest.last_seen)
        if verdict.reason not in row["reasons"]:
            row["reasons"].append(verdict.reason)
    rows = sorted(merged.values(), key=lambda r: (r["dst_kind"], r["dst"], r["proto"], r["port"] or 0))
    for row in rows:
        row["first_seen"], row["last_seen"] = rfc3339(row["first_seen"]), rfc3339(row["last_seen"])
    return rows


def as_json(results: list[NamespaceReplay], unsupported: list[str]) -> list[dict[str, Any]]:
    """The ``flows replay --format json`` objects: one per namespace."""
    out = []
    for r in results:
        allowed = {(d.dst_kind, d.dst, d.proto, d.port) for d in r.allowed}
        out.append({
            "namespace": r.namespace,
            "allowed": len(allowed),
            "allowed_connections": sum(d.connections for d in r.allowed),
            "denied": _identity_rows(r.denied),
            "undecidable": _identity_rows(r.undecidable),
            "unsupported": list(dict.fromkeys(unsupported)),
        })
    return out
