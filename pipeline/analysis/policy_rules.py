"""Egress policy documents as matchers: Calico and Kubernetes rules, policies and tiers (pure).

Each rule becomes a function of a ``Target`` answering True, False or None (undecidable, with
the reason); every construct not evaluated is listed in ``PolicySet.unsupported`` and makes a
rule that reaches it undecidable. ``pipeline.analysis.replay`` evaluates the result in order.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import yaml

from pipeline.analysis.replay_facts import Facts, Target
from pipeline.analysis.selectors import (
    ALL,
    Selector,
    SelectorError,
    Truth,
    calico_selector,
    k8s_selector,
    t_all,
    t_and,
    t_not,
    t_or,
)

CALICO_API = "projectcalico.org/v3"
K8S_API = "networking.k8s.io/v1"
DEFAULT_TIER_ORDER = 1_000_000.0  # Calico's default tier: after every other tier
K8S_POLICY_ORDER = 1000.0  # where Calico places Kubernetes NetworkPolicies in the default tier
_PROTOCOL_NUMBERS = {"TCP": 6, "UDP": 17, "ICMP": 1, "ICMPV6": 58, "SCTP": 132, "UDPLITE": 136, "GRE": 47,
                     "ESP": 50, "AH": 51}
_ICMP = frozenset({"ICMP", "ICMPV6"})
# Fields of a Calico rule and its entity rules that replay evaluates; anything else is listed.
_RULE_KEYS = {"action", "protocol", "notProtocol", "icmp", "notICMP", "ipVersion", "destination", "source",
              "metadata"}
_DEST_KEYS = {"selector", "namespaceSelector", "nets", "notNets", "ports", "notPorts", "services",
              "notSelector"}
_SPEC_KEYS = {"order", "tier", "selector", "namespaceSelector", "types", "egress", "ingress", "stagedAction",
              "performanceHints"}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# -- rule matching ----------------------------------------------------------------------------


Match = tuple[Truth, str]  # (outcome, why it is undecidable when None)
Matcher = Callable[[Target, Facts], Match]


def _and(*parts: Match) -> Match:
    result: Truth = True
    why = ""
    for value, reason in parts:
        if value is None and not why:
            why = reason
        result = t_and(result, value)
    return result, why if result is None else ""


def _proto_key(value: Any) -> int | str:
    text = str(value).upper()
    if text.isdigit():
        return int(text)
    return _PROTOCOL_NUMBERS.get(text, text)


def _protocol_match(rule_proto: Any, proto: str) -> bool:
    return _proto_key(rule_proto) == _proto_key(proto)


@dataclass(frozen=True)
class _Ports:
    ranges: tuple[tuple[int, int], ...]
    named: tuple[str, ...]

    def match(self, port: int | None) -> Match:
        if port is None:
            return False, ""
        if any(lo <= port <= hi for lo, hi in self.ranges):
            return True, ""
        if self.named:
            return None, f"named port {', '.join(self.named)} (stored flows keep numbers only)"
        return False, ""


def _calico_ports(values: Any, where: str, unsupported: list[str]) -> _Ports:
    ranges: list[tuple[int, int]] = []
    named: list[str] = []
    for value in values or []:
        text = str(value)
        if isinstance(value, int) or text.isdigit():
            ranges.append((int(text), int(text)))
        elif ":" in text and all(part.isdigit() for part in text.split(":", 1)):
            lo, hi = text.split(":", 1)
            ranges.append((int(lo), int(hi)))
        else:
            named.append(text)
            unsupported.append(f"{where}: named port {text!r} cannot be matched against stored flows")
    return _Ports(tuple(ranges), tuple(named))


def _nets(values: Any, where: str) -> tuple[Network, ...]:
    try:
        return tuple(ipaddress.ip_network(str(v), strict=False) for v in values or [])
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


def _in_nets(ips: tuple[str, ...] | None, nets: tuple[Network, ...], what: str) -> Match:
    if ips is None:
        return None, f"addresses of {what} unknown"
    hits = []
    for ip in ips:
        addr = ipaddress.ip_address(ip)
        hits.append(any(addr.version == n.version and addr in n for n in nets))
    return t_all(hits), f"{what} has addresses both inside and outside the nets"


def _endpoint_match(target: Target, facts: Facts, pod_sel: Selector | None, ns_sel: Selector | None,
                    own_namespace: str | None) -> Match:
    """Selector-based destination: the namespace, then every pod behind ``target``, must agree."""
    d = target.dest
    if d.dst_kind not in ("pod", "service"):
        return False, ""

    def in_namespace(namespace: str) -> Truth:
        if ns_sel is not None:
            return ns_sel(facts.namespace_view(namespace))
        return True if own_namespace is None else namespace == own_namespace

    ns_truth = in_namespace(d.dst_namespace)
    ns_why = f"namespace labels of {d.dst_namespace} unknown (give an inventory with Namespaces: --inventory)"
    if pod_sel is None or pod_sel.selects_all or ns_truth is False:
        return ns_truth, ns_why if ns_truth is None else ""
    if target.pods is None:
        return None, target.pods_why
    value = t_all(t_and(in_namespace(p.namespace), pod_sel(p.label_view())) for p in target.pods)
    return value, ns_why if ns_truth is None else f"pods of {d.dst} differ for selector {pod_sel.text!r}"


def _per_address(inner: Matcher) -> Matcher:
    """A stored destination reached ONE of its addresses (a pod of the workload, one of a node's
    IPs): the rule matches when it matches whichever it was, so it is evaluated per address (with
    the pod owning that address) and the answers must agree."""
    def match(t: Target, f: Facts) -> Match:
        if t.ips is None or len(t.ips) < 2:
            return inner(t, f)
        results = []
        for ip in t.ips:
            pods = t.pods
            if t.dest.dst_kind == "pod" and pods:
                pods = tuple(p for p in pods if ip in p.ips)
            results.append(inner(replace(t, pods=pods, ips=(ip,)), f))
        value = t_all(r[0] for r in results)
        why = next((r[1] for r in results if r[0] is None), "") or (
            f"the rule matches some addresses of {t.dest.dst} only")
        return value, why if value is None else ""
    return match


@dataclass
class Rule:
    """One egress rule, ready to match; ``text`` names it in reports."""

    action: str
    text: str
    match: Matcher

    def __post_init__(self) -> None:
        self.match = _per_address(self.match)


def _calico_rule(raw: Any, where: str, own_namespace: str | None, unsupported: list[str]) -> Rule:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: a rule must be a mapping")
    action = raw.get("action")
    if action not in ("Allow", "Deny", "Pass", "Log"):
        raise ValueError(f"{where}: action {action!r} is not Allow, Deny, Pass or Log")
    parts: list[Matcher] = []
    blocked: list[str] = []  # constructs this rule uses that replay cannot evaluate
    for key in sorted(set(raw) - _RULE_KEYS):
        blocked.append(f"rule field {key!r}")
    if raw.get("source"):
        blocked.append("source match in an egress rule")
    if "protocol" in raw:
        proto = raw["protocol"]
        parts.append(lambda t, _f, p=proto: (_protocol_match(p, t.dest.proto), ""))
    if "notProtocol" in raw:
        proto = raw["notProtocol"]
        parts.append(lambda t, _f, p=proto: (not _protocol_match(p, t.dest.proto), ""))
    for key, negate in (("icmp", False), ("notICMP", True)):
        if raw.get(key):
            def icmp(t: Target, _f: Facts, negate: bool = negate, key: str = key) -> Match:
                if t.dest.proto.upper() in _ICMP:
                    return None, f"{key} type/code (stored flows keep no ICMP type)"
                return negate, ""
            parts.append(icmp)
    if "ipVersion" in raw:
        version = int(raw["ipVersion"])

        def ip_version(t: Target, _f: Facts, version: int = version) -> Match:
            if t.ips is None:
                return None, f"addresses of {t.dest.dst} unknown"
            return t_all(ipaddress.ip_address(ip).version == version for ip in t.ips), "mixed IP versions"
        parts.append(ip_version)
    dest = raw.get("destination") or {}
    if not isinstance(dest, Mapping):
        raise ValueError(f"{where}: destination must be a mapping")
    for key in sorted(set(dest) - _DEST_KEYS):
        blocked.append(f"destination.{key}")
    for key in ("ports", "notPorts"):
        if key in dest:
            ports = _calico_ports(dest[key], f"{where} destination.{key}", unsupported)
            if key == "ports":
                parts.append(lambda t, _f, p=ports: p.match(t.dest.port))
            else:
                parts.append(lambda t, _f, p=ports: (t_not(p.match(t.dest.port)[0]), p.match(t.dest.port)[1]))
    for key in ("nets", "notNets"):
        if key in dest:
            nets = _nets(dest[key], f"{where} destination.{key}")
            negate = key == "notNets"

            def net_match(t: Target, _f: Facts, nets: tuple[Network, ...] = nets, negate: bool = negate) -> Match:
                value, why = _in_nets(t.ips, nets, t.dest.dst)
                return (t_not(value) if negate else value), why
            parts.append(net_match)
    try:
        pod_sel = calico_selector(dest["selector"]) if "selector" in dest else None
        ns_sel = calico_selector(dest["namespaceSelector"]) if "namespaceSelector" in dest else None
        not_sel = calico_selector(dest["notSelector"]) if "notSelector" in dest else None
    except SelectorError as exc:
        blocked.append(str(exc))
        pod_sel = ns_sel = not_sel = None
    if pod_sel is not None or ns_sel is not None:
        parts.append(lambda t, f, ps=pod_sel, ns=ns_sel: _endpoint_match(t, f, ps, ns, own_namespace))
    if not_sel is not None:
        def not_selector(t: Target, f: Facts, sel: Selector = not_sel) -> Match:
            if t.dest.dst_kind not in ("pod", "service"):
                return True, ""
            value, why = _endpoint_match(t, f, sel, None, own_namespace)
            return t_not(value), why
        parts.append(not_selector)
    if "services" in dest:
        svc = dest["services"] or {}
        name, namespace = svc.get("name"), svc.get("namespace") or own_namespace
        if not isinstance(name, str) or not namespace:
            raise ValueError(f"{where}: destination.services needs a name (and a namespace in a global policy)")

        def service(t: Target, _f: Facts, name: str = name, namespace: str = namespace) -> Match:
            d = t.dest
            if d.dst_kind == "service":
                return (d.dst_namespace, d.dst_name) == (namespace, name), ""
            if d.dst_kind == "pod" and d.dst_namespace == namespace:
                return None, f"whether pods of {d.dst} back Service {namespace}/{name} on this port is not known"
            return False, ""
        parts.append(service)
    for what in blocked:
        unsupported.append(f"{where}: {what} is not evaluated")
    reason = f"{where}: uses {', '.join(blocked)}"

    def match(t: Target, f: Facts) -> Match:
        result = _and(*(part(t, f) for part in parts))
        if blocked and result[0] is not False:
            return None, reason
        return result

    return Rule(action, where, match)


def _k8s_rule(raw: Any, where: str, own_namespace: str, unsupported: list[str]) -> Rule:
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: a rule must be a mapping")
    peers: list[Matcher] = []
    for i, peer in enumerate(raw.get("to") or []):
        spot = f"{where} to[{i}]"
        if not isinstance(peer, Mapping):
            raise ValueError(f"{spot}: a peer must be a mapping")
        if "ipBlock" in peer:
            block = peer["ipBlock"] or {}
            cidr = _nets([block.get("cidr")], spot)
            excepted = _nets(block.get("except"), spot)

            def ip_block(t: Target, _f: Facts, cidr: tuple[Network, ...] = cidr,
                         excepted: tuple[Network, ...] = excepted) -> Match:
                inside, why = _in_nets(t.ips, cidr, t.dest.dst)
                if not excepted:
                    return inside, why
                out, why2 = _in_nets(t.ips, excepted, t.dest.dst)
                return t_and(inside, t_not(out)), why or why2
            peers.append(ip_block)
            continue
        try:
            pod_sel = k8s_selector(peer["podSelector"]) if "podSelector" in peer else ALL
            ns_sel = k8s_selector(peer["namespaceSelector"]) if "namespaceSelector" in peer else None
        except SelectorError as exc:
            unsupported.append(f"{spot}: {exc}")
            peers.append(lambda _t, _f, why=f"{spot}: {exc}": (None, why))
            continue
        peers.append(lambda t, f, ps=pod_sel, ns=ns_sel: _endpoint_match(t, f, ps, ns, own_namespace))
    ports: list[tuple[str, _Ports | None]] = []
    for entry in raw.get("ports") or []:
        proto = str(entry.get("protocol") or "TCP")
        port = entry.get("port")
        if port is None:
            ports.append((proto, None))
        elif isinstance(port, int) or str(port).isdigit():
            ports.append((proto, _Ports(((int(port), int(entry.get("endPort") or port)),), ())))
        else:
            unsupported.append(f"{where}: named port {port!r} cannot be matched against stored flows")
            ports.append((proto, _Ports((), (str(port),))))
    has_to, has_ports = bool(raw.get("to")), bool(raw.get("ports"))  # empty or missing: everything

    def match(t: Target, f: Facts) -> Match:
        to: Match = (True, "")
        if has_to:
            value: Truth = False
            why = ""
            for peer in peers:
                v, w = peer(t, f)
                why = why or (w if v is None else "")
                value = t_or(value, v)
            to = (value, why)
        on: Match = (True, "")
        if has_ports:
            value = False
            why = ""
            for proto, port_set in ports:
                v, w = (_protocol_match(proto, t.dest.proto), "")
                if v and port_set is not None:
                    v, w = port_set.match(t.dest.port)
                why = why or (w if v is None else "")
                value = t_or(value, v)
            on = (value, why)
        return _and(to, on)

    return Rule("Allow", where, match)


# -- policies ---------------------------------------------------------------------------------


@dataclass
class Policy:
    """One egress policy, normalised: Kubernetes policies become Allow rules in the default tier."""

    kind: str
    name: str
    namespace: str | None  # None: global
    tier: str
    order: float | None
    selector: Selector  # the pods it applies to (by their labels)
    namespace_selector: Selector | None  # global policies: the namespaces it applies to
    egress: bool  # applies to egress
    rules: list[Rule]

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace + '/' if self.namespace else ''}{self.name}"

    def applies(self, namespace: str, facts: Facts) -> Match:
        """Whether this policy selects the pods of ``namespace`` that sent the egress."""
        if not self.egress:
            return False, ""
        if self.namespace is not None and self.namespace != namespace:
            return False, ""
        in_ns: Truth = True
        if self.namespace_selector is not None:
            in_ns = self.namespace_selector(facts.namespace_view(namespace))
        if in_ns is False:
            return False, ""
        pods = facts.pods.get(namespace, ())
        if self.selector.selects_all:
            on_pods: Truth = True
        elif not pods:
            on_pods = None
        else:
            on_pods = t_all(self.selector(p.label_view()) for p in pods)
        value = t_and(in_ns, on_pods)
        why = (f"{self.ref}: whether it selects the pods of {namespace} is not known "
               "(it selects some of them, or their labels are unknown; replay is per namespace)")
        return value, why if value is None else ""


@dataclass(frozen=True)
class Tier:
    order: float  # infinity when unset: after every ordered tier
    default_action: str = "Deny"  # what a tier that selects the pod but decides nothing does: Deny or Pass


@dataclass
class PolicySet:
    policies: list[Policy]
    tiers: dict[str, Tier]  # a policy's tier missing here has an unknown order
    unsupported: list[str]


def load_policies(text: str, source: str = "policy file") -> PolicySet:
    """Parse YAML documents (``---``-separated or a ``List``) into policies; ValueError when unreadable."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: not YAML: {exc}") from None
    return parse_documents(docs, source)


def parse_documents(docs: Iterable[Any], source: str = "policy file") -> PolicySet:
    """Policies from already-parsed documents (a ``List`` is unpacked)."""
    flat: list[Any] = []
    for doc in docs:
        flat.extend(doc.get("items") or [] if isinstance(doc, Mapping) and doc.get("kind") == "List" else [doc])
    policies: list[Policy] = []
    unsupported: list[str] = []
    tiers: dict[str, Tier] = {"default": Tier(DEFAULT_TIER_ORDER)}
    for i, doc in enumerate(flat):
        if not isinstance(doc, Mapping):
            raise ValueError(f"{source}: document {i + 1} is not a mapping")
        api, kind = doc.get("apiVersion"), doc.get("kind")
        meta = doc.get("metadata") or {}
        name = str(meta.get("name") or f"document-{i + 1}")
        spec = doc.get("spec") or {}
        where = f"{kind} {name}"
        if api == CALICO_API and kind == "Tier":
            default_action = spec.get("defaultAction", "Deny")
            if default_action not in ("Deny", "Pass"):
                raise ValueError(f"{source}: {where}: defaultAction {default_action!r} is not Deny or Pass")
            order = float(spec["order"]) if spec.get("order") is not None else math.inf
            tiers[name] = Tier(order, default_action)
        elif api == CALICO_API and kind in ("NetworkPolicy", "GlobalNetworkPolicy", "StagedNetworkPolicy",
                                           "StagedGlobalNetworkPolicy"):
            if kind.startswith("Staged") and spec.get("stagedAction", "Set") != "Set":
                unsupported.append(f"{where}: stagedAction {spec.get('stagedAction')} (not replayed)")
                continue
            policy = _calico_policy(kind, name, meta, spec, where, unsupported)
            if policy is not None:
                policies.append(policy)
        elif (api == K8S_API and kind == "NetworkPolicy") or (
                api == CALICO_API and kind == "StagedKubernetesNetworkPolicy"):
            if kind.startswith("Staged") and spec.get("stagedAction", "Set") != "Set":
                unsupported.append(f"{where}: stagedAction {spec.get('stagedAction')} (not replayed)")
                continue
            policies.append(_k8s_policy(kind, name, meta, spec, where, unsupported))
        else:
            unsupported.append(f"{api}/{kind} {name}: not a policy replay evaluates (ignored)")
    for tier in sorted({p.tier for p in policies} - set(tiers)):
        unsupported.append(f"tier {tier!r}: order unknown (add its Tier document to the file)")
    return PolicySet(policies, tiers, unsupported)


def _calico_policy(kind: str, name: str, meta: Mapping[str, Any], spec: Mapping[str, Any], where: str,
                   unsupported: list[str]) -> Policy | None:
    is_global = "Global" in kind
    namespace = None if is_global else meta.get("namespace")
    if not is_global and not isinstance(namespace, str):
        raise ValueError(f"{where}: metadata.namespace is required to replay a namespaced policy")
    for key in sorted(set(spec) - _SPEC_KEYS):
        unsupported.append(f"{where}: spec.{key} is not evaluated")
    types = spec.get("types")
    egress_rules = spec.get("egress") or []
    egress = "Egress" in types if types is not None else bool(egress_rules)
    try:
        selector = calico_selector(spec.get("selector", "all()"))
        ns_selector = calico_selector(spec["namespaceSelector"]) if is_global and "namespaceSelector" in spec else None
    except SelectorError as exc:
        unsupported.append(f"{where}: {exc}; policy not replayed")
        return None
    tier = str(spec.get("tier") or "default")
    spot = f"{kind} {namespace}/{name}" if namespace else where
    rules = [_calico_rule(r, f"{spot} egress[{i}]", namespace, unsupported) for i, r in enumerate(egress_rules)]
    order = float(spec["order"]) if spec.get("order") is not None else None
    return Policy(kind, name, namespace, tier, order, selector, ns_selector, egress, rules)


def _k8s_policy(kind: str, name: str, meta: Mapping[str, Any], spec: Mapping[str, Any], where: str,
                unsupported: list[str]) -> Policy:
    namespace = meta.get("namespace")
    if not isinstance(namespace, str):
        raise ValueError(f"{where}: metadata.namespace is required to replay a namespaced policy")
    types = spec.get("policyTypes")
    egress_rules = spec.get("egress") or []
    egress = "Egress" in types if types is not None else bool(egress_rules)
    try:
        selector = k8s_selector(spec.get("podSelector") or {})
    except SelectorError as exc:
        unsupported.append(f"{where}: podSelector: {exc}")
        selector = Selector(str(spec.get("podSelector")), lambda _labels: None)
    rules = [_k8s_rule(r, f"{kind} {namespace}/{name} egress[{i}]", namespace, unsupported)
             for i, r in enumerate(egress_rules)]
    return Policy(kind, name, namespace, "default", K8S_POLICY_ORDER, selector, None, egress, rules)
