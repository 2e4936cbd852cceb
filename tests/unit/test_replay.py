"""Pure replay: selectors in three-valued logic, and one golden case per policy construct.

Each case is a small policy YAML, a few stored destinations and the facts ownership would give;
the expected verdicts are written out by hand. The generated policies (tests/unit/test_policy.py's
PEERS) replay with zero denied, and forgetting one destination denies exactly that one.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
import yaml

from pipeline.analysis import coverage as cov
from pipeline.analysis.policy import render_policy
from pipeline.analysis.policy_rules import load_policies, parse_documents
from pipeline.analysis.replay import as_json, decide, replay
from pipeline.analysis.replay_facts import Destination, Facts, Pod, inventory_facts
from pipeline.analysis.selectors import Labels, SelectorError, calico_selector, k8s_selector
from tests.conftest import ROOT
from tests.unit.test_policy import INVENTORY, PEERS

T0 = datetime(2026, 11, 20, tzinfo=UTC)


def dest(kind: str, dst: str, port: int | None = 443, proto: str = "TCP", *, ns: str = "shop", dst_ns: str = "",
         name: str = "", connections: int = 1) -> Destination:
    return Destination(namespace=ns, dst_kind=kind, dst=dst, dst_namespace=dst_ns, dst_name=name, proto=proto,
                       port=port, connections=connections, first_seen=T0, last_seen=T0)


FACTS = Facts(
    pods={
        "shop": (Pod("shop", "web", {"app": "web"}, ("10.244.1.5",)),
                 Pod("shop", "cart", {"app": "cart"}, ("10.244.1.6",))),
        "db": (Pod("db", "postgres", {"app": "postgres", "tier": "db"}, ("10.244.2.9",)),
               Pod("db", "redis", {"app": "redis"}, ("10.244.2.10",)),
               # relabelled mid-range: one pod of "mixed" carries tier=db, the other not
               Pod("db", "mixed", {"app": "mixed", "tier": "db"}, ("10.244.2.11",)),
               Pod("db", "mixed", {"app": "mixed"}, ("10.244.2.12",))),
        "kube-system": (Pod("kube-system", "coredns", {"k8s-app": "kube-dns"}, ("10.244.0.2",)),),
    },
    service_ips={("kube-system", "kube-dns"): ("10.96.0.10",), ("payments", "gateway"): ("10.96.40.2",)},
    node_ips={"node-2": ("192.168.0.12",)},
)
WITH_INVENTORY = replace(FACTS, namespace_labels={"db": {"team": "data"}, "shop": {}, "kube-system": {}},
                         service_selectors={("kube-system", "kube-dns"): {"k8s-app": "kube-dns"},
                                            ("payments", "gateway"): {"app": "gateway"}})
POSTGRES = dest("pod", "db", 5432, dst_ns="db", name="postgres")
REDIS = dest("pod", "db", 6379, dst_ns="db", name="redis")
MIXED = dest("pod", "db", 5432, dst_ns="db", name="mixed")
GHOST = dest("pod", "db", 5432, dst_ns="db", name="gone")  # no pod known in the range
DNS = dest("service", "kube-system/kube-dns", 53, "UDP", dst_ns="kube-system", name="kube-dns")
GATEWAY = dest("service", "payments/gateway", 8443, dst_ns="payments", name="gateway")
NODE = dest("node", "node-2", 10250, name="node-2")
WEB = dest("external", "93.184.216.34", 443)
PING = dest("external", "8.8.8.8", None, "ICMP")


def calico(*rules: dict, spec: dict | None = None, ns: str = "shop", kind: str = "NetworkPolicy") -> str:
    meta = {"name": "p"} | ({"namespace": ns} if "Global" not in kind else {})
    return yaml.safe_dump({"apiVersion": "projectcalico.org/v3", "kind": kind, "metadata": meta,
                           "spec": {"selector": "all()", "types": ["Egress"], "egress": list(rules), **(spec or {})}})


def k8s(*rules: dict, spec: dict | None = None, ns: str = "shop") -> str:
    return yaml.safe_dump({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                           "metadata": {"name": "p", "namespace": ns},
                           "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": list(rules),
                                    **(spec or {})}})


def verdicts(text: str, *dests: Destination, facts: Facts = FACTS) -> list[str]:
    policies = load_policies(text)
    return [decide(policies, d, facts).action for d in dests]


# -- selectors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "full", "partial"),
    [
        ("app == 'x'", True, True),
        ("app == 'y'", False, False),
        ("app != 'y'", True, True),
        ("team != 'y'", True, None),  # absent is "not equal"; unknown when labels are partial
        ("has(app)", True, True),
        ("!has(team)", True, None),
        ("app in {'a', 'x'}", True, True),
        ("app not in {'x'}", False, False),
        ("team not in {'x'}", True, None),
        ("app == 'x' && team == 'a'", False, None),
        ("app == 'y' && team == 'a'", False, False),  # false whatever team is
        ("app == 'x' || team == 'a'", True, True),  # true whatever team is
        ("(app == 'y' || tier == 'db') && !(tier == 'web')", True, True),
        ("app starts with 'x' && tier ends with 'b' && tier contains 'd'", True, True),
        ("all()", True, True),
        ("", True, True),
    ],
)
def test_calico_selectors(expr: str, full: bool, partial: bool | None) -> None:
    labels = {"app": "x", "tier": "db"}
    assert calico_selector(expr)(Labels(labels)) is full
    assert calico_selector(expr)(Labels(labels, complete=False)) is partial


@pytest.mark.parametrize("expr", ["app = 'x'", "app == x'", "global()", "app == 'x' &&", "nope(app)", "(app == 'x'"])
def test_unreadable_selectors_are_errors(expr: str) -> None:
    with pytest.raises(SelectorError):
        calico_selector(expr)


def test_k8s_selectors() -> None:
    labels = Labels({"app": "x", "tier": "db"})
    assert k8s_selector({})(labels) is True and k8s_selector({}).selects_all
    assert k8s_selector({"matchLabels": {"app": "x"}})(labels) is True
    exprs = [{"key": "tier", "operator": "In", "values": ["db", "cache"]},
             {"key": "team", "operator": "DoesNotExist"},
             {"key": "app", "operator": "NotIn", "values": ["y"]},
             {"key": "app", "operator": "Exists"}]
    assert k8s_selector({"matchExpressions": exprs})(labels) is True
    assert k8s_selector({"matchExpressions": exprs})(Labels({"app": "x", "tier": "db"}, complete=False)) is None
    with pytest.raises(SelectorError, match="operator 'Gt'"):
        k8s_selector({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]})


# -- Calico constructs ---------------------------------------------------------------------------


def test_selectors_and_namespace_selectors() -> None:
    policy = calico(
        {"action": "Allow", "protocol": "TCP",
         "destination": {"namespaceSelector": "kubernetes.io/metadata.name == 'db'", "selector": "tier == 'db'"}})
    # postgres carries tier=db; redis does not; mixed pods disagree; gone has no pod known
    assert verdicts(policy, POSTGRES, REDIS, MIXED, GHOST) == ["allow", "deny", "undecidable", "undecidable"]
    by_label = calico({"action": "Allow", "destination": {"namespaceSelector": "team == 'data'"}})
    assert verdicts(by_label, POSTGRES) == ["undecidable"]  # namespace labels unknown without an inventory
    assert verdicts(by_label, POSTGRES, facts=WITH_INVENTORY) == ["allow"]
    # a selector without namespaceSelector selects pods of the policy's own namespace only
    own = calico({"action": "Allow", "destination": {"selector": "app == 'postgres'"}})
    assert verdicts(own, POSTGRES) == ["deny"]
    assert verdicts(own.replace("namespace: shop", "namespace: db"), replace(POSTGRES, namespace="db")) == ["allow"]
    # selectors never match addresses: nodes, external, unknown
    anything = calico({"action": "Allow", "destination": {"selector": "all()", "namespaceSelector": "all()"}})
    assert verdicts(anything, WEB, NODE, POSTGRES) == ["deny", "deny", "allow"]


def test_services_backing_pods_and_nets() -> None:
    svc = calico({"action": "Allow", "destination": {"services": {"name": "gateway", "namespace": "payments"}}})
    assert verdicts(svc, GATEWAY, DNS, WEB) == ["allow", "deny", "deny"]
    dns_rule = calico({"action": "Allow", "protocol": "UDP", "destination": {
        "namespaceSelector": "kubernetes.io/metadata.name == 'kube-system'", "selector": "k8s-app == 'kube-dns'",
        "ports": [53]}})
    # a Service meets a selector through its backing pods, known from the Services' selectors
    assert verdicts(dns_rule, DNS) == ["undecidable"]
    assert verdicts(dns_rule, DNS, facts=WITH_INVENTORY) == ["allow"]
    nets = calico({"action": "Allow", "destination": {"nets": ["10.96.0.0/12", "192.168.0.0/24"]}})
    assert verdicts(nets, DNS, NODE, WEB, POSTGRES) == ["allow", "allow", "deny", "deny"]
    not_nets = calico({"action": "Allow", "destination": {"notNets": ["10.0.0.0/8"]}})
    assert verdicts(not_nets, WEB, POSTGRES, replace(GHOST, dst_name="gone")) == ["allow", "deny", "undecidable"]


def test_ports_protocols_and_icmp() -> None:
    policy = calico({"action": "Allow", "protocol": "TCP", "destination": {"ports": [443, "5000:5500"]}},
                    {"action": "Allow", "protocol": 17, "destination": {"ports": [53]}},
                    {"action": "Allow", "protocol": "ICMP", "icmp": {"type": 8}})
    assert verdicts(policy, WEB, POSTGRES, REDIS, replace(WEB, proto="UDP"), DNS, PING) == [
        "allow", "allow", "deny", "deny", "allow", "undecidable"]  # ICMP type is not stored
    any_icmp = calico({"action": "Allow", "protocol": "ICMP"})
    assert verdicts(any_icmp, PING, WEB) == ["allow", "deny"]
    not_proto = calico({"action": "Allow", "notProtocol": "UDP", "destination": {"notPorts": [80]}})
    assert verdicts(not_proto, WEB, DNS, replace(WEB, port=80)) == ["allow", "deny", "deny"]
    named = calico({"action": "Allow", "protocol": "TCP", "destination": {"ports": ["https", 8443]}})
    policies = load_policies(named)
    assert [decide(policies, d, FACTS).action for d in (replace(WEB, port=8443), WEB, DNS)] == [
        "allow", "undecidable", "deny"]  # a named port might be 443; UDP never matches
    assert any("named port 'https'" in u for u in policies.unsupported)


def test_rule_order_actions_and_default_deny() -> None:
    policy = calico({"action": "Log"},
                    {"action": "Deny", "destination": {"nets": ["93.184.216.34/32"], "ports": [443]},
                     "protocol": "TCP"},
                    {"action": "Allow", "protocol": "TCP"})
    assert verdicts(policy, WEB, replace(WEB, port=80), DNS) == ["deny", "allow", "deny"]  # DNS: end of tier
    nothing = calico()  # selects the pods for egress, no rule: everything denied
    assert verdicts(nothing, WEB) == ["deny"]
    ingress_only = calico(spec={"types": ["Ingress"]})
    assert verdicts(ingress_only, WEB) == ["allow"]  # no egress policy: Calico's default allow
    some_pods = calico(spec={"selector": "app == 'cart'"})
    assert verdicts(some_pods, WEB) == ["undecidable"]  # it selects some pods of the namespace only
    other_pods = calico(spec={"selector": "app == 'nope'"})
    assert verdicts(other_pods, WEB) == ["allow"]


def tiered(tier: dict, *guard: dict) -> str:
    """A "security" tier with one policy of ``guard`` rules, then two policies in the default tier."""
    return "\n---\n".join([
        yaml.safe_dump({"apiVersion": "projectcalico.org/v3", "kind": "Tier", "metadata": {"name": "security"},
                        "spec": tier}),
        calico(*guard, spec={"tier": "security", "order": 1}).replace("name: p", "name: security.guard"),
        calico({"action": "Allow", "protocol": "UDP"}, spec={"order": 10}).replace("name: p", "name: second"),
        calico({"action": "Allow", "protocol": "TCP"}, spec={"order": 5}).replace("name: p", "name: first"),
    ])


def test_tiers_pass_and_order() -> None:
    deny_web = {"action": "Deny", "destination": {"nets": ["93.184.216.34/32"]}}
    docs = tiered({"order": 100}, deny_web, {"action": "Pass"})
    # security denies WEB before the default tier; everything else passes to it, where "first"
    # (order 5) allows TCP and "second" UDP; ICMP reaches the end of the default tier
    assert verdicts(docs, WEB, replace(WEB, dst="1.1.1.1"), DNS, PING) == ["deny", "allow", "allow", "deny"]
    # without the Pass rule the security tier denies what it does not decide...
    assert verdicts(tiered({"order": 100}, deny_web), replace(WEB, dst="1.1.1.1")) == ["deny"]
    # ...unless its defaultAction is Pass
    passing = tiered({"order": 100, "defaultAction": "Pass"}, deny_web)
    assert verdicts(passing, WEB, replace(WEB, dst="1.1.1.1"), DNS) == ["deny", "allow", "allow"]
    # a Tier without order comes after every ordered tier, here after "default"
    last = tiered({}, {"action": "Deny"})
    assert verdicts(last, WEB, PING) == ["allow", "deny"]
    unknown_tier = calico({"action": "Allow"}, spec={"tier": "platform"})
    policies = load_policies(unknown_tier)
    assert decide(policies, WEB, FACTS).action == "undecidable"
    assert any("tier 'platform': order unknown" in u for u in policies.unsupported)


def test_global_policies_and_staged() -> None:
    gnp = calico({"action": "Deny", "protocol": "UDP"}, kind="GlobalNetworkPolicy",
                 spec={"namespaceSelector": "kubernetes.io/metadata.name in {'shop', 'db'}", "order": 1})
    assert verdicts(gnp, DNS, replace(DNS, namespace="web")) == ["deny", "allow"]
    by_team = calico({"action": "Deny"}, kind="GlobalNetworkPolicy", spec={"namespaceSelector": "team == 'x'"})
    assert verdicts(by_team, WEB) == ["undecidable"]  # shop's labels are not known without an inventory
    assert verdicts(by_team, WEB, facts=WITH_INVENTORY) == ["allow"]
    staged = calico({"action": "Allow", "protocol": "TCP"}, kind="StagedNetworkPolicy")
    assert verdicts(staged, WEB, DNS) == ["allow", "deny"]  # replayed as if enforced
    deleted = calico(kind="StagedNetworkPolicy", spec={"stagedAction": "Delete"})
    policies = load_policies(deleted)
    assert policies.policies == [] and "stagedAction Delete" in policies.unsupported[0]


def test_unsupported_constructs_are_listed_and_never_guessed() -> None:
    text = "\n---\n".join([
        calico({"action": "Allow", "protocol": "TCP", "http": {"methods": ["GET"]}},
               {"action": "Allow", "source": {"selector": "app == 'web'"}},
               {"action": "Allow", "destination": {"serviceAccounts": {"names": ["x"]}}},
               {"action": "Allow", "destination": {"selector": "global()"}}),
        yaml.safe_dump({"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkSet",
                        "metadata": {"name": "cdn"}, "spec": {"nets": ["93.184.216.0/24"]}}),
    ])
    policies = load_policies(text)
    listed = "\n".join(policies.unsupported)
    for construct in ("rule field 'http'", "source match", "destination.serviceAccounts", "global()",
                      "GlobalNetworkSet cdn"):
        assert construct in listed
    # TCP reaches the http rule: undecidable; UDP skips it (protocol) and reaches the source rule
    assert [decide(policies, d, FACTS).action for d in (WEB, DNS)] == ["undecidable", "undecidable"]


# -- Kubernetes NetworkPolicy --------------------------------------------------------------------


def test_k8s_peers_ports_and_ip_blocks() -> None:
    policy = k8s(
        {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "db"}},
                 "podSelector": {"matchLabels": {"app": "postgres"}}}],
         "ports": [{"protocol": "TCP", "port": 5000, "endPort": 5500}]},
        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "192.168.0.0/16"]}}]},
        {"to": [{"podSelector": {"matchLabels": {"app": "cart"}}}], "ports": [{"port": 8080}]},
    )
    cart = dest("pod", "shop", 8080, dst_ns="shop", name="cart")
    assert verdicts(policy, POSTGRES, REDIS, WEB, PING, NODE, cart, replace(cart, proto="UDP")) == [
        "allow", "deny", "allow", "allow", "deny", "allow", "deny"]
    # several policies selecting the pod: the union of their rules
    union = k8s({"ports": [{"protocol": "UDP", "port": 53}]}) + "---\n" + k8s(
        {"to": [{"ipBlock": {"cidr": "93.184.216.34/32"}}]}).replace("name: p", "name: q")
    assert verdicts(union, DNS, WEB, replace(WEB, dst="1.1.1.1")) == ["allow", "allow", "deny"]


def test_k8s_policy_types() -> None:
    no_rules = k8s()
    assert verdicts(no_rules, WEB) == ["deny"]  # Egress type, no rule: deny all
    implied = k8s({"to": [{"ipBlock": {"cidr": "93.184.216.0/24"}}]}, spec={"policyTypes": None})
    assert verdicts(implied, WEB, DNS) == ["allow", "deny"]  # egress rules imply the Egress type
    empty_to = k8s({"to": [], "ports": [{"protocol": "UDP", "port": 53}]})
    assert verdicts(empty_to, DNS, WEB) == ["allow", "deny"]  # an empty `to` is every destination
    ingress = k8s(spec={"policyTypes": ["Ingress"]})
    assert verdicts(ingress, WEB) == ["allow"]
    named = k8s({"ports": [{"protocol": "TCP", "port": "https"}]})
    policies = load_policies(named)
    assert decide(policies, WEB, FACTS).action == "undecidable" and "named port 'https'" in policies.unsupported[0]


# -- the generated policies ----------------------------------------------------------------------


def _peer_destinations(peers: list) -> list[Destination]:
    out = []
    for p in peers:
        for port in p.ports or (None,):
            out.append(Destination(namespace=p.namespace, dst_kind=p.dst_kind,
                                   dst=p.addresses[0] if p.cidrs else p.dst, dst_namespace=p.dst_namespace,
                                   dst_name=p.name, proto=p.proto, port=port, connections=p.connections,
                                   first_seen=p.first_seen, last_seen=p.last_seen))
    return out


GENERATED_FACTS = Facts(
    pods={"db": (Pod("db", "postgres", {"app": "postgres", "tier": "db", "pod-template-hash": "1"}, ("10.244.2.9",)),
                 Pod("db", "redis", {"app": "redis"}, ("10.244.2.10",))),
          "shop": (Pod("shop", "cart", {"app": "cart"}, ("10.244.1.6",)),)},
    service_ips={("payments", "gateway"): ("10.96.40.2",), ("kube-system", "kube-dns"): ("10.96.0.10",)},
    node_ips={"node-2": ("192.168.0.12",)},
    namespace_labels={}, service_selectors={("kube-system", "kube-dns"): {"k8s-app": "kube-dns"}},
)
KUBE_DNS_POD = Pod("kube-system", "coredns", {"k8s-app": "kube-dns"}, ("10.244.0.2",))


def test_generated_calico_policy_replays_clean_and_a_forgotten_destination_is_listed() -> None:
    facts = replace(GENERATED_FACTS, pods={**GENERATED_FACTS.pods, "kube-system": (KUBE_DNS_POD,)})
    dests = [d for d in _peer_destinations(PEERS) if d.namespace == "shop"]
    doc = render_policy("shop", PEERS, INVENTORY).document
    [result] = replay(parse_documents([doc]), dests, facts)
    assert result.clean and len(result.allowed) == len(dests)
    # forget the IPv6 peer: the replay lists exactly it
    forgotten = [p for p in PEERS if p.dst != "2606:2800:220:1:248:1893:25c8:1946"]
    doc = render_policy("shop", forgotten, INVENTORY).document
    [obj] = as_json(replay(parse_documents([doc]), dests, facts), [])
    assert [(r["dst_kind"], r["dst"], r["proto"], r["port"], r["connections"]) for r in obj["denied"]] == [
        ("external", "2606:2800:220:1:248:1893:25c8:1946", "TCP", 443, 1)]
    assert obj["undecidable"] == [] and obj["denied"][0]["first_seen"] == "2026-11-20T00:00:00Z"
    assert obj["denied"][0]["reasons"] == ["Deny: NetworkPolicy shop/flows-egress-allowlist egress[11]"]


def test_generated_k8s_policy_replays() -> None:
    facts = replace(GENERATED_FACTS, pods={**GENERATED_FACTS.pods, "kube-system": (KUBE_DNS_POD,)})
    dests = [d for d in _peer_destinations(PEERS) if d.namespace == "shop"]
    doc = render_policy("shop", PEERS, INVENTORY, fmt="k8s").document
    [result] = replay(parse_documents([doc]), dests, facts)
    # the Service is written as its ClusterIP and the ICMP peer as an any-protocol rule: all allowed
    assert not result.denied and not result.undecidable


def test_inventory_facts() -> None:
    doc = {"kind": "List", "items": [
        {"kind": "Namespace", "metadata": {"name": "db", "labels": {"team": "data"}}},
        {"kind": "Service", "metadata": {"name": "pg", "namespace": "db"}, "spec": {"selector": {"app": "pg"}}},
        {"kind": "Pod", "metadata": {"name": "x", "namespace": "db"}},
        "garbage",
    ]}
    assert inventory_facts(doc) == ({"db": {"team": "data"}}, {("db", "pg"): {"app": "pg"}})
    with pytest.raises(ValueError, match="neither"):
        inventory_facts({"items": 3})


def test_bad_policy_files_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="not YAML"):
        load_policies("a: [", "p.yaml")
    with pytest.raises(ValueError, match="metadata.namespace is required"):
        load_policies(calico().replace("  namespace: shop\n", ""))
    with pytest.raises(ValueError, match="action 'Accept'"):
        load_policies(calico({"action": "Accept"}))
    with pytest.raises(ValueError, match="not a mapping"):
        load_policies("- 1\n")
    with pytest.raises(ValueError, match="defaultAction 'Allow' is not Deny or Pass"):
        load_policies(tiered({"order": 1, "defaultAction": "Allow"}))


# -- coverage ------------------------------------------------------------------------------------


def test_observation_selector_matches_the_deployed_policy() -> None:

    doc = yaml.safe_load((ROOT / "deploy/calico/observe-egress.yaml").read_text())
    assert cov.observation_selector(doc).text == cov.OBSERVE_SELECTOR
    with pytest.raises(ValueError, match="no spec.namespaceSelector"):
        cov.observation_selector({"spec": {}})


def test_coverage_tells_silent_namespaces_apart() -> None:
    labels = {ns: {"egress-flows/observe": "true"} for ns in ("shop", "empty", "scaled", "quiet")}
    labels["unobserved"] = {}
    selection = cov.select(None, labels, calico_selector(cov.OBSERVE_SELECTOR), [])
    assert selection.namespaces == ("empty", "quiet", "scaled", "shop")
    egress = [{"namespace": "shop", "dests": 3, "connections": 10, "first_seen": "a", "last_seen": "b"},
              {"namespace": "stray", "dests": 1, "connections": 1, "first_seen": "a", "last_seen": "b"}]
    pods = [{"namespace": "shop", "pods": 2, "pods_at_end": 2}, {"namespace": "scaled", "pods": 3, "pods_at_end": 0},
            {"namespace": "quiet", "pods": 1, "pods_at_end": 1}]
    rows = {r["namespace"]: r for r in cov.coverage_rows(selection, egress, pods)}
    assert {ns: r["status"] for ns, r in rows.items()} == {
        "shop": "egress", "empty": "silent: no pods", "scaled": "silent: zero now", "quiet": "silent: running",
        "stray": "egress (not selected)"}
    assert (rows["scaled"]["pods"], rows["scaled"]["pods_at_end"]) == (3, 0)
    assert cov.summary(selection, list(rows.values())) == (
        "1 of 4 selected namespaces sent egress; silent: 1 running, 1 scaled to zero, 1 without pods; "
        "1 namespaces sent egress but are not in the selection")
    explicit = cov.select(["b", "a", "a"], None, None, [])
    assert explicit.namespaces == ("a", "b")
    known = cov.select(None, None, None, ["x", "y", "x"])
    assert known.namespaces == ("x", "y") and "inventory of Namespace objects" in known.how
