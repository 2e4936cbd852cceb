"""What a replay knows about a stored destination: its pods, labels and addresses (pure).

``Facts`` gathers what ownership held over the range (pods with labels and IPs, Service and node
addresses) and, from an optional inventory, namespace labels and Service selectors; ``resolve``
turns one row of the ``destinations`` view into a ``Target``: the pods and addresses it may have
been. ``pipeline.analysis.replay`` explains how these meet a policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pipeline.analysis.selectors import Labels
from pipeline.basics.timespec import parse_instant

NAMESPACE_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class Pod:
    """One pod that existed in the range (from an ownership claim)."""

    namespace: str
    workload: str
    labels: Mapping[str, str]
    ips: tuple[str, ...] = ()
    name: str = ""

    def label_view(self) -> Labels:
        return Labels({**self.labels, "projectcalico.org/namespace": self.namespace,
                       "projectcalico.org/orchestrator": "k8s"})


@dataclass(frozen=True)
class Facts:
    """What the replay may use beside the policy: ownership over the range, an optional inventory."""

    pods: Mapping[str, tuple[Pod, ...]] = field(default_factory=dict)  # by namespace
    service_ips: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    node_ips: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    namespace_labels: Mapping[str, Mapping[str, str]] | None = None  # None: no Namespace inventory
    service_selectors: Mapping[tuple[str, str], Mapping[str, str]] | None = None  # None: no Service inventory
    # Service -> names of the pods its endpoint claims (EndpointSlices) named in the range.
    service_endpoints: Mapping[tuple[str, str], frozenset[str]] = field(default_factory=dict)

    def namespace_view(self, namespace: str) -> Labels:
        known = {NAMESPACE_LABEL: namespace, "projectcalico.org/name": namespace}
        if self.namespace_labels is None or namespace not in self.namespace_labels:
            return Labels(known, complete=False)
        return Labels({**self.namespace_labels[namespace], **known})

    def workload_pods(self, namespace: str, workload: str) -> tuple[Pod, ...]:
        return tuple(p for p in self.pods.get(namespace, ()) if p.workload == workload)

    def backing_pods(self, namespace: str, name: str) -> tuple[Pod, ...] | None:
        """Pods of a Service by its selector, else the pods its EndpointSlices named; None when neither is known."""
        if self.service_selectors is None or (namespace, name) not in self.service_selectors:
            targets = self.service_endpoints.get((namespace, name))
            if not targets:
                return None
            return tuple(p for p in self.pods.get(namespace, ()) if p.name in targets)
        selector = self.service_selectors[(namespace, name)]
        if not selector:
            return None  # a Service without selector: endpoints are managed by hand
        return tuple(p for p in self.pods.get(namespace, ())
                     if all(p.labels.get(k) == v for k, v in selector.items()))


def inventory_facts(doc: Any) -> tuple[dict[str, dict[str, str]], dict[tuple[str, str], dict[str, str]]]:
    """Namespace labels and Service selectors from a ``kubectl get … -o json`` List (or one object).

    The ownership table keeps only objects that own IPs (pods, services, nodes) and not a
    Service's selector, so these two facts come from an inventory file when a replay needs them.
    """
    items = doc.get("items") if isinstance(doc, Mapping) and "items" in doc else [doc]
    if not isinstance(items, list):
        raise ValueError("inventory is neither a Kubernetes List nor an object")
    namespaces: dict[str, dict[str, str]] = {}
    selectors: dict[tuple[str, str], dict[str, str]] = {}
    for item in items:
        if not isinstance(item, Mapping):
            continue
        meta = item.get("metadata") or {}
        name = meta.get("name")
        if not isinstance(name, str):
            continue
        if item.get("kind") == "Namespace":
            namespaces[name] = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
        elif item.get("kind") == "Service" and isinstance(meta.get("namespace"), str):
            selector = (item.get("spec") or {}).get("selector") or {}
            selectors[(meta["namespace"], name)] = {str(k): str(v) for k, v in selector.items()}
    return namespaces, selectors


# -- destinations -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    """One row of the ``destinations`` view: a source namespace's egress to one identity."""

    namespace: str
    dst_kind: str
    dst: str
    dst_namespace: str
    dst_name: str
    proto: str
    port: int | None
    connections: int
    first_seen: datetime
    last_seen: datetime

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Destination:
        return cls(
            namespace=str(row["namespace"]), dst_kind=str(row["dst_kind"]), dst=str(row["dst"]),
            dst_namespace=str(row["dst_namespace"]), dst_name=str(row["dst_name"]), proto=str(row["proto"]),
            port=None if row["port"] is None else int(row["port"]), connections=int(row["connections"]),
            first_seen=parse_instant(row["first_seen"]), last_seen=parse_instant(row["last_seen"]),
        )


@dataclass(frozen=True)
class Target:
    """A destination resolved against the facts: its endpoints (pods) and addresses."""

    dest: Destination
    pods: tuple[Pod, ...] | None  # None: unknown; () for non-pod destinations
    pods_why: str
    ips: tuple[str, ...] | None  # None: unknown


def resolve(d: Destination, facts: Facts) -> Target:
    if d.dst_kind == "pod":
        pods = facts.workload_pods(d.dst_namespace, d.dst_name)
        if not pods:
            return Target(d, None, f"no pod of {d.dst_namespace}/{d.dst_name} known in the range", None)
        ips = tuple(ip for p in pods for ip in p.ips)
        return Target(d, pods, "", ips or None)
    if d.dst_kind == "service":
        backing = facts.backing_pods(d.dst_namespace, d.dst_name)
        why = "" if backing else (
            f"backing pods of Service {d.dst} unknown: its selector is not known (give an inventory with "
            "Services: --inventory) or it has none"
            if backing is None else f"no pod backs Service {d.dst} in the range")
        return Target(d, backing or None, why, facts.service_ips.get((d.dst_namespace, d.dst_name)) or None)
    if d.dst_kind == "node":
        return Target(d, (), "", facts.node_ips.get(d.dst_name) or None)
    return Target(d, (), "", (d.dst,))
