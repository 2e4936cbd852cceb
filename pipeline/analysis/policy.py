"""Egress policy YAML from an allowlist: Calico ``NetworkPolicy`` or Kubernetes ``NetworkPolicy``.

Pure: the caller passes the namespace's allowlist peers and what ownership knows (workload
labels, service ClusterIPs, node addresses); out comes YAML that allows exactly the observed
egress, evidence in annotations, then denies the rest (or stages it for a preview).

Choices worth knowing:
- DNS is always allowed by selector (kube-dns pods, UDP and TCP 53): blocking it breaks every
  other rule, and TCP 53 (large answers) is rarely seen in a short window.
- Namespaces are selected by ``kubernetes.io/metadata.name`` (set by Kubernetes >= 1.21);
  pods additionally by the labels every pod of their workload shared, minus per-pod and
  per-rollout labels (``pod-template-hash`` ...); without known labels, the whole namespace.
- Calico names Services directly (``destination.services``; ports then come from the
  Service, Calico refuses ``ports`` beside it). Kubernetes NetworkPolicy cannot: the ClusterIP
  is written as a /32 with a warning, because Calico and most implementations match egress
  after kube-proxy's DNAT (on the pod IP), so such a rule may never match. Ownership does not
  record Service selectors, so the backing pods cannot be derived here.
- Kubernetes NetworkPolicy names only TCP, UDP and SCTP: ICMP and other protocols become a
  rule without ports (every protocol to that destination), with a warning.
- External IPs are /32s unless the caller grouped them (a named range, or the announced prefix
  an ASN database gives); a group's rule lists the observed IPs it covers, and a prefix wider
  than /16 (IPv4) or /32 (IPv6) is allowed with a warning: it holds many of the provider's
  customers, not only the service observed.
- ``by_port``: broad egress no address list can hold (P2P) is allowed by port instead: any
  address outside the private and special-purpose ranges, on the ports observed, one rule per
  protocol and IP family. Pods, Services, nodes and unattributed private IPs keep exact rules.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import yaml
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.analysis.evidence import Peer
from pipeline.basics.timespec import rfc3339

FORMATS = ("calico", "k8s")
ANNOTATION = "egress-observatory"
NAMESPACE_LABEL = "kubernetes.io/metadata.name"
# Labels that differ between pods of one workload or between rollouts: never selectors.
VOLATILE_LABELS = frozenset({
    "pod-template-hash",
    "pod-template-generation",
    "controller-revision-hash",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "controller-uid",
    "job-name",
    "batch.kubernetes.io/controller-uid",
    "batch.kubernetes.io/job-name",
    "batch.kubernetes.io/job-completion-index",
})
_CALICO_PROTOCOLS = {"TCP": "TCP", "UDP": "UDP", "SCTP": "SCTP", "ICMP": "ICMP", "ICMPv6": "ICMPv6",
                     "UDPLITE": "UDPLite"}
_PORT_PROTOCOLS = frozenset({"TCP", "UDP", "SCTP"})
_CALICO_MAX_PORTS = 50  # CRD maxItems of destination.ports
_CALICO_MAX_NETS = 256  # CRD maxItems of destination.nets
_MAX_LISTED = 20  # addresses/destinations listed in one annotation
_WIDE_PREFIX = {4: 16, 6: 32}  # an announced prefix shorter than this gets a warning
# Ranges that are never a pipeline "external" destination (ipaddress.is_global is False):
# private, shared (CGNAT, often pod networks), loopback, link-local, documentation,
# benchmarking, reserved, IPv4-mapped and unique-local. A --by port rule excludes them.
_NOT_EXTERNAL = {
    4: ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/29", "192.0.0.170/31", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
        "203.0.113.0/24", "240.0.0.0/4"),
    6: ("::/128", "::1/128", "::ffff:0:0/96", "100::/64", "2001:db8::/32", "fc00::/7", "fe80::/10"),
}
_ANYWHERE = {4: "0.0.0.0/0", 6: "::/0"}


class PolicySettings(BaseSettings):
    """Policy naming and the cluster's DNS pods; every field maps to ``FLOWS_POLICY_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="FLOWS_POLICY_", extra="ignore")

    name: str = Field(default="flows-egress-allowlist", pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$",
                      description="metadata.name of the generated policy")
    dns_namespace: str = Field(default="kube-system", description="namespace of the cluster DNS pods")
    dns_labels: dict[str, str] = Field(default_factory=lambda: {"k8s-app": "kube-dns"},
                                       description="labels of the cluster DNS pods")


@dataclass(frozen=True)
class Inventory:
    """What ownership knows that a rule can select on."""

    workload_labels: Mapping[tuple[str, str], Mapping[str, str]] = field(default_factory=dict)
    service_ips: Mapping[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    node_ips: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Service -> labels its backing pods share, and the (protocol, port)s they serve it on (0: every
    # port), from the Service's endpoint claims (EndpointSlices).
    service_backends: Mapping[tuple[str, str], tuple[Mapping[str, str], tuple[tuple[str, int], ...]]] = field(
        default_factory=dict)


@dataclass(frozen=True)
class RenderedPolicy:
    text: str
    document: dict[str, Any]
    warnings: list[str]


def common_labels(label_sets: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """Labels every pod of a workload carries with the same value, minus volatile ones."""
    common: dict[str, str] | None = None
    for labels in label_sets:
        items = {k: v for k, v in labels.items() if k not in VOLATILE_LABELS}
        common = items if common is None else {k: v for k, v in common.items() if items.get(k) == v}
    return dict(sorted((common or {}).items()))


# -- rules, format-neutral -------------------------------------------------------------------


@dataclass(frozen=True)
class _Match:
    namespace: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    nets: tuple[str, ...] = ()
    not_nets: tuple[str, ...] = ()  # inside nets, not allowed
    service: tuple[str, str] | None = None


@dataclass
class _Rule:
    rank: int
    match: _Match
    proto: str | None  # None: any protocol
    ports: set[int] = field(default_factory=set)
    peers: list[Peer] = field(default_factory=list)
    note: str = ""

    def sort_key(self) -> tuple:
        m = self.match
        return self.rank, m.namespace, m.labels, m.nets, m.not_nets, m.service or ("", ""), self.proto or ""


_RANK = {"dns": 0, "pod": 1, "service": 2, "node": 3, "range": 4, "external": 5, "unknown": 6}


def _host_net(address: str) -> str:
    ip = ipaddress.ip_address(address)
    return f"{ip}/{ip.max_prefixlen}"


def _describe(peer: Peer) -> str:
    if peer.dst_kind == "pod":
        return f"pod {peer.dst_namespace}/{peer.name}" if peer.name else f"pod {peer.dst_namespace}"
    if peer.cidrs and peer.provider:
        return f"prefix {peer.dst} ({peer.provider})"
    if peer.cidrs:
        return f"range {peer.dst}"
    return f"{peer.dst_kind} {peer.dst}"


def _external_anywhere(address: str) -> _Match | None:
    """Every external address of ``address``'s family, or None when ``address`` lies in a
    range the rule excludes (it then keeps its /32, so observed traffic stays allowed)."""
    ip = ipaddress.ip_address(address)
    excluded = _NOT_EXTERNAL[ip.version]
    if any(ip in ipaddress.ip_network(net) for net in excluded):
        return None
    return _Match(nets=(_ANYWHERE[ip.version],), not_nets=excluded)


def _wide_prefixes(peer: Peer) -> list[str]:
    nets = [ipaddress.ip_network(net) for net in peer.cidrs]
    return [str(net) for net in nets if net.prefixlen < _WIDE_PREFIX[net.version]]


def _build_rules(peers: Iterable[Peer], inventory: Inventory, fmt: str, cfg: PolicySettings, by_port: bool
                 ) -> tuple[list[_Rule], list[str]]:
    dns_match = _Match(namespace=cfg.dns_namespace, labels=tuple(sorted(cfg.dns_labels.items())))
    dns = {proto: _Rule(_RANK["dns"], dns_match, proto, {53}) for proto in ("UDP", "TCP")}
    rules: dict[tuple, _Rule] = {}
    warnings: list[str] = []

    def add(rank: int, match: _Match, proto: str | None, ports: set[int], peer: Peer) -> None:
        rule = rules.setdefault((rank, match, proto), _Rule(rank, match, proto))
        rule.ports |= ports
        rule.peers.append(peer)

    for peer in peers:
        ports = set(peer.ports)
        if (peer.proto in ("UDP", "TCP") and 53 in ports and peer.dst_kind in ("pod", "service")
                and peer.dst_namespace == cfg.dns_namespace):
            dns[peer.proto].peers.append(peer)
            ports.discard(53)
            if not ports:
                continue
        what = _describe(peer)
        proto: str | None = peer.proto
        if fmt == "calico" and proto not in _CALICO_PROTOCOLS and not proto.isdigit():
            warnings.append(f"{what}: protocol {proto} has no Calico name; not allowed")
            continue
        if fmt == "k8s" and proto not in _PORT_PROTOCOLS and by_port and peer.dst_kind == "external":
            warnings.append(f"{what}: NetworkPolicy cannot match {proto}, and allowing every protocol to every "
                            "external address would undo the port restriction; not allowed (use --format calico)")
            continue
        if fmt == "k8s" and proto not in _PORT_PROTOCOLS:
            warnings.append(f"{what}: NetworkPolicy cannot match {proto}; the rule allows every protocol to it")
            proto, ports = None, set()
        elif proto not in _PORT_PROTOCOLS and ports:
            warnings.append(f"{what}: ports cannot be matched with {proto}; every {proto} port allowed")
            ports = set()

        if peer.dst_kind == "pod":
            labels = inventory.workload_labels.get((peer.dst_namespace, peer.name), {})
            if not labels:
                warnings.append(f"{what}: no pod labels known; the rule allows every pod of namespace "
                                f"{peer.dst_namespace}")
            add(_RANK["pod"], _Match(namespace=peer.dst_namespace, labels=tuple(sorted(labels.items()))),
                proto, ports, peer)
        elif peer.dst_kind == "service" and fmt == "calico":
            # Calico takes the Service's own ports and protocols; ports beside services are refused.
            add(_RANK["service"], _Match(service=(peer.dst_namespace, peer.name)), None, set(), peer)
        elif peer.dst_kind == "service" and (backend := inventory.service_backends.get(
                (peer.dst_namespace, peer.name))) and backend[0]:
            # NetworkPolicy meets Service traffic after DNAT: its backing pods, on the ports they serve it on.
            labels, served = backend
            by_proto: dict[str, set[int]] = {}
            for served_proto, port in served:
                by_proto.setdefault(served_proto, set()).add(port)
            for served_proto, served_ports in sorted(by_proto.items()):
                add(_RANK["service"], _Match(namespace=peer.dst_namespace, labels=tuple(sorted(labels.items()))),
                    served_proto, set() if 0 in served_ports else served_ports, peer)
        elif peer.dst_kind == "service":
            ips = inventory.service_ips.get((peer.dst_namespace, peer.name), ())
            if not ips:
                warnings.append(f"{what}: NetworkPolicy cannot name a Service and its ClusterIP is unknown; "
                                "not allowed (use --format calico, or add a rule for its pods)")
                continue
            warnings.append(f"{what}: written as its ClusterIP {', '.join(ips)}; egress is usually matched "
                            "after DNAT (on the pod IP), so replace it with the backing pods' selectors")
            add(_RANK["service"], _Match(nets=tuple(_host_net(ip) for ip in ips)), proto, ports, peer)
        elif peer.dst_kind == "node":
            ips = inventory.node_ips.get(peer.name, ())
            if not ips:
                warnings.append(f"{what}: node address unknown; not allowed")
                continue
            add(_RANK["node"], _Match(nets=tuple(_host_net(ip) for ip in ips)), proto, ports, peer)
        elif peer.cidrs:
            if peer.provider and (wide := _wide_prefixes(peer)):
                warnings.append(f"{what}: {', '.join(wide)} is wide; the rule allows every host of "
                                f"{peer.provider} in it, not only the ones observed")
            add(_RANK["range"], _Match(nets=peer.cidrs), proto, ports, peer)
        elif peer.dst_kind == "external" and by_port and (anywhere := _external_anywhere(peer.dst)):
            add(_RANK["external"], anywhere, proto, ports, peer)
        else:
            if peer.dst_kind == "unknown":
                warnings.append(f"{what}: unattributed address, allowed as such; find out what it is")
            add(_RANK[peer.dst_kind if peer.dst_kind == "unknown" else "external"],
                _Match(nets=(_host_net(peer.dst),)), proto, ports, peer)
    for rule in dns.values():
        if not rule.peers:
            rule.note = f"DNS over {rule.proto}: allowed whether seen or not"
    return [*dns.values(), *sorted(rules.values(), key=_Rule.sort_key)], warnings


def _evidence(rule: _Rule) -> dict[str, str]:
    if not rule.peers:
        return {f"{ANNOTATION}/evidence": rule.note or "none"}
    seen = sorted({_describe(p) for p in rule.peers})
    addresses = sorted({a for p in rule.peers if p.cidrs for a in p.addresses})
    providers = sorted({p.provider for p in rule.peers if p.provider})
    out = {
        f"{ANNOTATION}/destinations": _listing(seen),
        f"{ANNOTATION}/first-seen": rfc3339(min(p.first_seen for p in rule.peers)),
        f"{ANNOTATION}/last-seen": rfc3339(max(p.last_seen for p in rule.peers)),
        f"{ANNOTATION}/connections": str(sum(p.connections for p in rule.peers)),
        f"{ANNOTATION}/nodes": _listing(sorted({n for p in rule.peers for n in p.nodes})),
        f"{ANNOTATION}/observed-ports": _listing(
            [f"{p.proto}/{port}" for p in rule.peers for port in p.ports] or sorted({p.proto for p in rule.peers})),
    }
    if addresses:
        out[f"{ANNOTATION}/addresses"] = _listing(addresses)
    if providers:
        out[f"{ANNOTATION}/providers"] = _listing(providers)
    return out


def _listing(items: list[str]) -> str:
    items = list(dict.fromkeys(items))
    if len(items) > _MAX_LISTED:
        return ", ".join(items[:_MAX_LISTED]) + f" (+{len(items) - _MAX_LISTED} more)"
    return ", ".join(items)


def _port_runs(ports: set[int]) -> list[tuple[int, int]]:
    """Sorted ports as (first, last) runs of consecutive numbers."""
    runs: list[tuple[int, int]] = []
    for port in sorted(ports):
        if runs and port == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], port)
        else:
            runs.append((port, port))
    return runs


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)] or [[]]


# -- Calico ----------------------------------------------------------------------------------


def _calico_selector(labels: tuple[tuple[str, str], ...]) -> str:
    return " && ".join(f"{k} == '{v}'" for k, v in labels)


def _calico_rules(rule: _Rule) -> list[dict[str, Any]]:
    ports: list[int | str] = []
    for lo, hi in _port_runs(rule.ports):
        ports.extend([lo, hi] if hi == lo + 1 else [lo] if lo == hi else [f"{lo}:{hi}"])
    out = []
    for port_chunk in _chunks(ports, _CALICO_MAX_PORTS):
        for net_chunk in _chunks(list(rule.match.nets), _CALICO_MAX_NETS):
            dest: dict[str, Any] = {}
            if rule.match.service:
                dest["services"] = {"name": rule.match.service[1], "namespace": rule.match.service[0]}
            if rule.match.namespace:
                dest["namespaceSelector"] = f"{NAMESPACE_LABEL} == '{rule.match.namespace}'"
            if rule.match.labels:
                dest["selector"] = _calico_selector(rule.match.labels)
            if net_chunk:
                dest["nets"] = net_chunk
            if rule.match.not_nets:
                dest["notNets"] = list(rule.match.not_nets)
            if port_chunk:
                dest["ports"] = port_chunk
            item: dict[str, Any] = {"action": "Allow", "metadata": {"annotations": _evidence(rule)}}
            if rule.proto is not None:
                item["protocol"] = int(rule.proto) if rule.proto.isdigit() else _CALICO_PROTOCOLS[rule.proto]
            item["destination"] = dest
            out.append(item)
    return out


# -- Kubernetes ------------------------------------------------------------------------------


def _k8s_rule(rule: _Rule) -> dict[str, Any]:
    if rule.match.nets:
        to = []
        for net in rule.match.nets:
            block: dict[str, Any] = {"cidr": net}
            version = ipaddress.ip_network(net).version
            inner = [n for n in rule.match.not_nets if ipaddress.ip_network(n).version == version]
            if inner:
                block["except"] = inner
            to.append({"ipBlock": block})
    else:
        peer: dict[str, Any] = {"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: rule.match.namespace}}}
        if rule.match.labels:
            peer["podSelector"] = {"matchLabels": dict(rule.match.labels)}
        to = [peer]
    item: dict[str, Any] = {"to": to}
    if rule.proto is not None and rule.ports:
        ports = []
        for lo, hi in _port_runs(rule.ports):
            entry: dict[str, Any] = {"protocol": rule.proto, "port": lo}
            if hi > lo:
                entry["endPort"] = hi
            ports.append(entry)
        item["ports"] = ports
    elif rule.proto is not None:
        item["ports"] = [{"protocol": rule.proto}]
    return item


# -- document --------------------------------------------------------------------------------


def render_policy(
    namespace: str,
    peers: Iterable[Peer],
    inventory: Inventory,
    *,
    fmt: str = "calico",
    staged: bool = False,
    context: Mapping[str, str] | None = None,
    settings: PolicySettings | None = None,
    by_port: bool = False,
) -> RenderedPolicy:
    """The YAML for ``namespace`` allowing exactly ``peers`` (its allowlist rows); with
    ``by_port``, external ones by port only (any external address on the observed ports).

    ``context`` adds policy-level annotations (tier, stability) under the evidence prefix.
    Staged: Calico ``StagedNetworkPolicy`` / ``StagedKubernetesNetworkPolicy`` (reported by
    Calico, not enforced).
    """
    if fmt not in FORMATS:
        raise ValueError(f"policy format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    cfg = settings or PolicySettings()
    mine = [p for p in peers if p.namespace == namespace]
    if not mine:
        raise ValueError(f"no egress observed from namespace {namespace!r}: nothing to allow")
    rules, warnings = _build_rules(mine, inventory, fmt, cfg, by_port)
    first, last = min(p.first_seen for p in mine), max(p.last_seen for p in mine)
    annotations = {
        f"{ANNOTATION}/generated-by": "flows policy",
        f"{ANNOTATION}/observed": f"{rfc3339(first)}/{rfc3339(last)}",
        **{f"{ANNOTATION}/{k}": v for k, v in (context or {}).items()},
    }
    metadata = {"name": cfg.name, "namespace": namespace, "annotations": annotations}
    if fmt == "calico":
        egress = [item for rule in rules for item in _calico_rules(rule)]
        egress.append({"action": "Deny", "metadata": {"annotations": {
            f"{ANNOTATION}/evidence": "default deny: egress not observed"}}})
        spec: dict[str, Any] = {"selector": "all()", "types": ["Egress"], "egress": egress}
        kind = "StagedNetworkPolicy" if staged else "NetworkPolicy"
        api = "projectcalico.org/v3"
    else:
        egress = [_k8s_rule(rule) for rule in rules]
        annotations[f"{ANNOTATION}/evidence"] = json.dumps(
            [{"rule": i, **{k.split("/", 1)[1]: v for k, v in _evidence(rule).items()}}
             for i, rule in enumerate(rules)], separators=(",", ":"))
        spec = {"podSelector": {}, "policyTypes": ["Egress"], "egress": egress}
        kind = "StagedKubernetesNetworkPolicy" if staged else "NetworkPolicy"
        api = "projectcalico.org/v3" if staged else "networking.k8s.io/v1"
    if staged:
        spec["stagedAction"] = "Set"
    document = {"apiVersion": api, "kind": kind, "metadata": metadata, "spec": spec}
    header = _header(namespace, fmt, staged, first, last, warnings, by_port)
    body = yaml.safe_dump(document, sort_keys=False, default_flow_style=False, width=2**16, allow_unicode=True)
    return RenderedPolicy(header + body, document, warnings)


def _header(namespace: str, fmt: str, staged: bool, first: datetime, last: datetime, warnings: list[str],
            by_port: bool) -> str:
    lines = [
        f"Egress allowlist for namespace {namespace}, generated by `flows policy` from the egress observed",
        f"{rfc3339(first)} .. {rfc3339(last)}; evidence is in the annotations. Review before applying.",
        "Everything else is denied: the final Deny rule." if fmt == "calico"
        else "Everything else is denied once this policy selects the pods (policyTypes: [Egress]).",
    ]
    if by_port:
        lines.append("External destinations are allowed by port: any address outside the private and "
                     "special-purpose ranges, on the ports observed.")
    if staged:
        lines.append("Staged: Calico reports what it would allow and deny, and enforces nothing.")
    lines.extend(f"WARNING: {w}" for w in warnings)
    # one comment line each, whatever a warning quotes (a line break would end the comment)
    return "".join(f"# {' '.join(line.split())}\n" for line in lines)
