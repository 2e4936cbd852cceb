"""Coverage: which observed namespaces sent egress, and why the silent ones are silent (pure).

"No egress seen" must never read as "needs no egress": a namespace the observation selects but
that logged nothing is either empty over the whole range, scaled to zero during it, or running
and quiet (talking only to itself, or idle). Only the last one says something about its needs.

Which namespaces are selected, in order of preference:
1. an explicit list (``--namespaces``);
2. the observation policy's ``namespaceSelector`` (``deploy/calico/observe-egress.yaml``, or a
   given policy file) over Namespace labels from an inventory file: the ownership table keeps
   only objects that own IPs (pods, services, nodes), so namespace labels, and namespaces with
   no pod at all, are knowable only from an inventory of Namespace objects;
3. without either, every namespace the ownership table or the egress knows (a namespace that
   never had a pod with an IP is then invisible, and the report says so).
Pod counts come from ownership claims: hostNetwork pods claim no IP and are not counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.analysis.selectors import Labels, Selector, calico_selector

# The selector of deploy/calico/observe-egress.yaml (tests keep the two equal).
OBSERVE_SELECTOR = "egress-flows/observe == 'true'"
NAMESPACE_LABEL = "kubernetes.io/metadata.name"

EGRESS = "egress"
RUNNING = "silent: running"
ZERO_NOW = "silent: zero now"
NO_PODS = "silent: no pods"


def observation_selector(doc: Any) -> Selector:
    """The namespaceSelector of an observation GlobalNetworkPolicy (ValueError when it has none)."""
    spec = doc.get("spec") if isinstance(doc, Mapping) else None
    if not isinstance(spec, Mapping) or "namespaceSelector" not in spec:
        raise ValueError("the observation policy has no spec.namespaceSelector")
    return calico_selector(spec["namespaceSelector"])


@dataclass(frozen=True)
class Selection:
    """The namespaces the observation covers and how that was decided."""

    namespaces: tuple[str, ...]
    how: str


def select(explicit: Iterable[str] | None, namespace_labels: Mapping[str, Mapping[str, str]] | None,
           selector: Selector | None, known: Iterable[str]) -> Selection:
    """Pick the observed namespaces (see the module docstring for the order of preference)."""
    if explicit is not None:
        names = tuple(sorted(set(explicit)))
        return Selection(names, f"{len(names)} namespaces given")
    if namespace_labels is not None and selector is not None:
        chosen = tuple(ns for ns, labels in sorted(namespace_labels.items())
                       if selector(Labels({**labels, NAMESPACE_LABEL: ns})))
        return Selection(chosen, f"namespaces matching {selector.text} in the inventory")
    names = tuple(sorted(set(known)))
    return Selection(names, "every namespace ownership or egress knows (namespaces that never had a pod with "
                     "an IP cannot be listed without an inventory of Namespace objects)")


def coverage_rows(selection: Selection, egress: Iterable[Mapping[str, Any]],
                  pods: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per selected namespace (and per namespace with egress the selection missed).

    ``egress``: fanout rows (namespace, dests, connections, first_seen, last_seen); ``pods``: per
    namespace ``pods`` (distinct pods over the range) and ``pods_at_end`` (pods at its end).
    """
    seen = {str(r["namespace"]): r for r in egress}
    counts = {str(r["namespace"]): r for r in pods}
    selected = set(selection.namespaces)
    rows = []
    for ns in sorted(selected | set(seen)):
        e, p = seen.get(ns), counts.get(ns, {})
        in_range, at_end = int(p.get("pods", 0)), int(p.get("pods_at_end", 0))
        if e is not None:
            status = EGRESS if ns in selected else f"{EGRESS} (not selected)"
        else:
            status = RUNNING if at_end else ZERO_NOW if in_range else NO_PODS
        rows.append({
            "namespace": ns, "status": status, "pods": in_range, "pods_at_end": at_end,
            "dests": int(e["dests"]) if e else 0, "connections": int(e["connections"]) if e else 0,
            "first_seen": e["first_seen"] if e else None, "last_seen": e["last_seen"] if e else None,
        })
    return rows


def summary(selection: Selection, rows: list[dict[str, Any]]) -> str:
    """The headline: '36 of 82 selected namespaces sent egress; 30 running but silent, …'."""
    selected = [r for r in rows if r["namespace"] in set(selection.namespaces)]
    counts = {s: sum(1 for r in selected if r["status"] == s) for s in (EGRESS, RUNNING, ZERO_NOW, NO_PODS)}
    extra = sum(1 for r in rows if r["status"] == f"{EGRESS} (not selected)")
    text = (f"{counts[EGRESS]} of {len(selected)} selected namespaces sent egress; silent: {counts[RUNNING]} "
            f"running, {counts[ZERO_NOW]} scaled to zero, {counts[NO_PODS]} without pods")
    if extra:
        text += f"; {extra} namespaces sent egress but are not in the selection"
    return text
