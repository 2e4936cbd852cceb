"""Pure rollout logic: tier rules, named CIDR ranges, allowlist grouping and policy YAML.

Generated policies are compared with golden files (``UPDATE_GOLDEN=1`` rewrites them) and
validated against resource schemas: Kubernetes NetworkPolicy against the official OpenAPI
schema bundled by ``kubernetes-validate``; Calico resources against
``tests/schemas/calico-networkpolicy.schema.json``, derived from Calico's CRDs.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import os
import re
from datetime import UTC, datetime
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from pipeline.analysis.evidence import (
    AnalysisSettings,
    Peer,
    assign_tier,
    group_by_ranges,
    ip_peer_counts,
    parse_ranges,
    policy_refusals,
    range_of,
)
from pipeline.analysis.policy import Inventory, PolicySettings, common_labels, render_policy
from tests.conftest import ROOT

GOLDEN = ROOT / "tests" / "golden"
CALICO_SCHEMA = json.loads((ROOT / "tests" / "schemas" / "calico-networkpolicy.schema.json").read_text())
K8S_VERSION = "1.32"  # the kubectl on our machines
_SELECTOR = re.compile(r"^[A-Za-z0-9./_-]+ == '[A-Za-z0-9._-]*'( && [A-Za-z0-9./_-]+ == '[A-Za-z0-9._-]*')*$")


def t(day: int, hour: int = 0) -> datetime:
    return datetime(2026, 11, day, hour, tzinfo=UTC)


# -- schema validation helpers (also used by tests/system/test_analysis_sql.py) --------------


def validate_calico(doc: dict[str, Any]) -> None:
    """Calico NetworkPolicy/StagedNetworkPolicy: CRD-derived schema plus value checks the
    schema cannot express (CIDRs parse, selectors are simple label equalities)."""
    jsonschema.Draft202012Validator(CALICO_SCHEMA).validate(doc)
    for rule in doc["spec"]["egress"]:
        dest = rule.get("destination", {})
        for net in dest.get("nets", []):
            ipaddress.ip_network(net, strict=True)
        for key in ("selector", "namespaceSelector"):
            if key in dest:
                assert _SELECTOR.match(dest[key]), dest[key]


def validate_k8s(doc: dict[str, Any]) -> None:
    """networking.k8s.io/v1 NetworkPolicy against the official schema (strict: no unknown fields).
    A StagedKubernetesNetworkPolicy is a NetworkPolicy spec plus stagedAction (Calico's CRD)."""
    doc = copy.deepcopy(doc)
    if doc["kind"] == "StagedKubernetesNetworkPolicy":
        assert doc["apiVersion"] == "projectcalico.org/v3"
        assert doc["spec"].pop("stagedAction") in ("Set", "Delete", "Learn", "Ignore")
        doc.update(apiVersion="networking.k8s.io/v1", kind="NetworkPolicy")
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    for rule in doc["spec"]["egress"]:
        for peer in rule["to"]:
            if "ipBlock" in peer:
                ipaddress.ip_network(peer["ipBlock"]["cidr"], strict=True)


def validate(doc: dict[str, Any]) -> None:
    (validate_calico if doc["kind"] in ("NetworkPolicy", "StagedNetworkPolicy")
     and doc["apiVersion"] == "projectcalico.org/v3" else validate_k8s)(doc)


def test_validators_catch_bad_documents() -> None:
    good = render_policy("shop", PEERS, INVENTORY).document
    validate_calico(good)
    for mutate in (
        lambda d: d["spec"]["egress"][0].update(protocl="UDP"),  # unknown field
        lambda d: d["spec"]["egress"][0].update(action="Accept"),
        lambda d: d["spec"].update(stagedAction="Set"),  # only on StagedNetworkPolicy
        lambda d: d["spec"]["egress"].append({"action": "Allow", "destination": {"ports": [80]}}),  # no protocol
        lambda d: d["spec"]["egress"].append(
            {"action": "Allow", "destination": {"services": {"name": "x", "namespace": "y"}, "ports": [80]}}),
    ):
        bad = copy.deepcopy(good)
        mutate(bad)
        with pytest.raises(jsonschema.ValidationError):
            validate_calico(bad)
    k8s = render_policy("shop", PEERS, INVENTORY, fmt="k8s").document
    validate_k8s(k8s)
    bad = copy.deepcopy(k8s)
    bad["spec"]["egress"][0]["ports"][0]["proto"] = "TCP"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(bad)


# -- tiers -------------------------------------------------------------------------------------


def profile(ns: str = "ns", ip_peers: int = 0, internal: int = 1, high_ports: int = 0, unknown: int = 0
            ) -> dict[str, Any]:
    return {"namespace": ns, "ip_peers": ip_peers, "internal": internal, "high_ports": high_ports,
            "unknown": unknown}


STABLE = {"meets_horizon": True, "stable": True, "horizon_days": 9.0, "days_since_new": 5.0}
FRESH = {"meets_horizon": False, "stable": False, "horizon_days": 2.0, "days_since_new": 0.5}


@pytest.mark.parametrize(
    ("prof", "stability", "tier", "reason"),
    [
        (profile(internal=2), STABLE, "A", "pilot candidate"),
        (profile(internal=3), STABLE, "A", "0 external, 3 internal"),
        (profile(internal=2), FRESH, "B", "under the minimum"),
        (profile(internal=2), None, "B", "no stability data"),
        (profile(ip_peers=1, internal=2), STABLE, "B", "1 external > 0"),
        (profile(internal=2, unknown=0, ip_peers=3), STABLE, "B", "3 external"),
        (profile(internal=2, unknown=1, ip_peers=1), STABLE, "B", "1 unattributed"),
        (profile(internal=4), STABLE, "B", "4 internal > 3"),
        (profile(internal=5), STABLE, "B", "small egress"),
        (profile(internal=6), STABLE, "C", "internal fan-out above 5"),
        (profile(ip_peers=4), STABLE, "C", "moderate external fan-out"),
        (profile(ip_peers=19), STABLE, "C", "19 external"),
        (profile(ip_peers=20), STABLE, "D", "20 external IPs >= 20"),
        (profile(ip_peers=2, high_ports=10), STABLE, "D", "scattered high ports"),
        (profile(ip_peers=2, high_ports=9), STABLE, "B", "small egress"),
    ],
)
def test_tier_rules(prof: dict, stability: dict | None, tier: str, reason: str) -> None:
    result = assign_tier(prof, stability, AnalysisSettings())
    assert (result.tier, result.namespace) == (tier, "ns")
    assert reason in result.reason
    assert result.advice


def test_tier_ip_peers_override_and_d_advice() -> None:
    cfg = AnalysisSettings()
    assert assign_tier(profile(ip_peers=30), STABLE, cfg).tier == "D"
    grouped = assign_tier(profile(ip_peers=30), STABLE, cfg, ip_peers=2)  # 30 IPs, all in 2 named ranges
    assert (grouped.tier, grouped.ip_peers) == ("B", 2)
    d = assign_tier(profile(ip_peers=25), STABLE, cfg)
    assert "egress gateway" in d.advice and "port" in d.advice


def test_tier_thresholds_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWS_TIER_B_MAX_EXTERNAL", "6")
    monkeypatch.setenv("FLOWS_TIER_MIN_DAYS", "14")
    cfg = AnalysisSettings()
    assert (cfg.b_max_external, cfg.min_days) == (6, 14)
    assert assign_tier(profile(ip_peers=5), STABLE, cfg).tier == "B"
    monkeypatch.setenv("FLOWS_TIER_D_MIN_EXTERNAL", "4")
    with pytest.raises(ValidationError, match="B_MAX_EXTERNAL < D_MIN_EXTERNAL"):
        AnalysisSettings()


def test_policy_refusals() -> None:
    cfg = AnalysisSettings()
    assert policy_refusals(assign_tier(profile(), STABLE, cfg), STABLE) == []
    unstable = policy_refusals(assign_tier(profile(), FRESH, cfg), FRESH)
    assert len(unstable) == 2 and "unstable" in unstable[1] and "under the minimum" in unstable[0]
    broad = policy_refusals(assign_tier(profile(ip_peers=40), STABLE, cfg), STABLE)
    assert len(broad) == 1 and broad[0].startswith("tier D")


# -- named ranges ------------------------------------------------------------------------------


RANGES_YAML = """
messaging-api: [147.92.128.0/17]
cdn:
  - 203.0.113.0/24
  - 2001:db8:cd::/48
cdn-edge: 203.0.113.128/25
"""


def test_parse_ranges_and_most_specific_match() -> None:
    ranges = parse_ranges(RANGES_YAML)
    assert [str(n) for n in ranges["cdn"]] == ["203.0.113.0/24", "2001:db8:cd::/48"]
    assert range_of("147.92.200.1", ranges) == "messaging-api"
    assert range_of("203.0.113.5", ranges) == "cdn"
    assert range_of("203.0.113.200", ranges) == "cdn-edge"  # the /25 beats the /24
    assert range_of("2001:db8:cd::7", ranges) == "cdn"
    assert range_of("::ffff:147.92.200.1", ranges) is None  # written as IPv6: not the IPv4 range
    assert range_of("8.8.8.8", ranges) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("api: [10.0.0.0/33]", "'10.0.0.0/33' is not a valid CIDR"),
        ("api: [147.92.128.1/17]", "host bits set"),
        ("api: [not-an-ip]", "not a valid CIDR"),
        ("- 10.0.0.0/8", "expected a mapping"),
        ("", "expected a mapping"),
        ("api: []", "needs a CIDR"),
        ("api: 42", "needs a CIDR"),
        ("'bad name!': [10.0.0.0/8]", "range name"),
        ("api: [10.0.0.0/8\n", "not YAML"),
    ],
)
def test_parse_ranges_errors_are_clear(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as info:
        parse_ranges(text, "ranges.yaml")
    assert str(info.value).startswith("ranges.yaml")


def peer(kind: str, dst: str, proto: str = "TCP", ports: tuple[int, ...] = (443,), *, ns: str = "shop",
         dst_ns: str = "", name: str = "", day: int = 20, connections: int = 1, nodes: tuple[str, ...] = ("node-1",)
         ) -> Peer:
    return Peer(namespace=ns, dst_kind=kind, dst=dst, dst_namespace=dst_ns, name=name, proto=proto, ports=ports,
                first_seen=t(day), last_seen=t(day, 12), connections=connections, nodes=nodes,
                addresses=(dst,) if kind in ("external", "unknown") else ())


def test_group_by_ranges() -> None:
    ranges = parse_ranges(RANGES_YAML)
    peers = [
        peer("external", "147.92.130.1", ports=(443,), day=20, connections=2),
        peer("external", "147.92.140.9", ports=(443, 8443), day=18, nodes=("node-2",)),
        peer("external", "147.92.140.9", proto="ICMP", ports=()),
        peer("external", "2001:db8:cd::9"),
        peer("external", "8.8.8.8", proto="UDP", ports=(53,)),
        peer("unknown", "147.92.130.2"),  # unknown (in-cluster) addresses are not grouped
        peer("pod", "db", ports=(5432,), dst_ns="db", name="postgres"),
    ]
    grouped, outside = group_by_ranges(peers, ranges)
    by = {(p.dst_kind, p.dst, p.proto): p for p in grouped}
    api = by[("external", "messaging-api", "TCP")]
    assert api.ports == (443, 8443) and api.addresses == ("147.92.130.1", "147.92.140.9")
    assert (api.first_seen, api.last_seen, api.connections, api.nodes) == (t(18), t(20, 12), 3, ("node-1", "node-2"))
    assert api.cidrs == ("147.92.128.0/17",)
    assert by[("external", "messaging-api", "ICMP")].ports == ()
    assert by[("external", "cdn", "TCP")].cidrs == ("203.0.113.0/24", "2001:db8:cd::/48")
    assert ("unknown", "147.92.130.2", "TCP") in by and ("pod", "db", "TCP") in by
    assert outside == ["8.8.8.8"]
    assert ip_peer_counts(grouped) == {"shop": 4}  # messaging-api, cdn, 8.8.8.8, the unknown IP
    assert ip_peer_counts(peers) == {"shop": 5}


# -- policy rendering --------------------------------------------------------------------------


def test_common_labels() -> None:
    pods = [
        {"app": "postgres", "tier": "db", "pod-template-hash": "7d9f", "version": "1"},
        {"app": "postgres", "tier": "db", "pod-template-hash": "55bc", "version": "2"},
    ]
    assert common_labels(pods) == {"app": "postgres", "tier": "db"}
    assert common_labels([{"statefulset.kubernetes.io/pod-name": "pg-0", "app": "pg"}]) == {"app": "pg"}
    assert common_labels([]) == {}


RANGED = group_by_ranges([
    peer("external", "147.92.130.1", day=21),
    peer("external", "147.92.140.9", ports=(443, 8443), day=19),
], parse_ranges(RANGES_YAML))[0]
PEERS: list[Peer] = [
    peer("service", "kube-system/kube-dns", "UDP", (53,), dst_ns="kube-system", name="kube-dns", connections=40,
         nodes=("node-1", "node-2")),
    peer("pod", "db", ports=(5432,), dst_ns="db", name="postgres", day=17, connections=12),
    peer("pod", "db", ports=(6379,), dst_ns="db", name="redis", day=18),  # labels unknown
    peer("pod", "shop", ports=(8080,), dst_ns="shop", name="cart", day=19),
    peer("service", "payments/gateway", ports=(8443,), dst_ns="payments", name="gateway", day=19),
    peer("node", "node-2", ports=(10250,), name="node-2"),
    peer("external", "93.184.216.34", ports=(443,) + tuple(range(8000, 8006)) + (9000, 9001)),
    peer("external", "2606:2800:220:1:248:1893:25c8:1946"),
    peer("external", "8.8.8.8", "ICMP", ()),
    peer("unknown", "10.99.0.5", ports=(8080,)),
    *RANGED,
    peer("external", "1.1.1.1", ns="other"),  # another namespace: not in shop's policy
]
INVENTORY = Inventory(
    workload_labels={("db", "postgres"): {"app": "postgres", "tier": "db"}, ("shop", "cart"): {"app": "cart"}},
    service_ips={("payments", "gateway"): ("10.96.40.2",)},
    node_ips={"node-2": ("192.168.0.12",)},
)
CONTEXT = {"tier": "B: 4 external, 5 internal: small egress", "stability": "horizon 9.5 d"}
CASES = {
    "shop.calico.yaml": {"fmt": "calico", "staged": False},
    "shop.calico-staged.yaml": {"fmt": "calico", "staged": True},
    "shop.k8s.yaml": {"fmt": "k8s", "staged": False},
    "shop.k8s-staged.yaml": {"fmt": "k8s", "staged": True},
}


@pytest.mark.parametrize("golden", sorted(CASES))
def test_policy_golden_and_valid(golden: str) -> None:
    rendered = render_policy("shop", PEERS, INVENTORY, context=CONTEXT, **CASES[golden])
    path = GOLDEN / golden
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(rendered.text)
    assert rendered.text == path.read_text(), f"{golden} changed; UPDATE_GOLDEN=1 rewrites it after review"
    doc = yaml.safe_load(rendered.text)
    assert doc == rendered.document  # the comments are comments, the YAML is the document
    validate(doc)


def egress_of(fmt: str) -> list[dict[str, Any]]:
    return render_policy("shop", PEERS, INVENTORY, fmt=fmt).document["spec"]["egress"]


def test_calico_rules() -> None:
    egress = egress_of("calico")
    dns = egress[:2]
    assert [(r["protocol"], r["destination"]["ports"]) for r in dns] == [("UDP", [53]), ("TCP", [53])]
    assert dns[0]["destination"]["selector"] == "k8s-app == 'kube-dns'"
    assert dns[0]["destination"]["namespaceSelector"] == "kubernetes.io/metadata.name == 'kube-system'"
    assert dns[0]["metadata"]["annotations"]["egress-observatory/connections"] == "40"  # the observed DNS
    assert "whether seen or not" in dns[1]["metadata"]["annotations"]["egress-observatory/evidence"]
    pods = [r for r in egress if "namespaceSelector" in r.get("destination", {})][2:]
    assert [(r["destination"].get("selector"), r["destination"]["ports"]) for r in pods] == [
        (None, [6379]),  # redis: labels unknown, whole namespace db
        ("app == 'postgres' && tier == 'db'", [5432]),
        ("app == 'cart'", [8080]),
    ]
    service = next(r for r in egress if "services" in r.get("destination", {}))
    assert service["destination"] == {"services": {"name": "gateway", "namespace": "payments"}}
    assert "protocol" not in service  # the Service's own ports and protocols apply
    nets = {tuple(r["destination"]["nets"]): r for r in egress if "nets" in r.get("destination", {})}
    assert nets[("192.168.0.12/32",)]["destination"]["ports"] == [10250]
    assert nets[("2606:2800:220:1:248:1893:25c8:1946/128",)]["protocol"] == "TCP"
    assert nets[("93.184.216.34/32",)]["destination"]["ports"] == [443, "8000:8005", 9000, 9001]
    assert nets[("8.8.8.8/32",)]["protocol"] == "ICMP" and "ports" not in nets[("8.8.8.8/32",)]["destination"]
    api = nets[("147.92.128.0/17",)]
    assert api["destination"]["ports"] == [443, 8443]
    assert api["metadata"]["annotations"]["egress-observatory/addresses"] == "147.92.130.1, 147.92.140.9"
    assert nets[("10.99.0.5/32",)]["destination"]["ports"] == [8080]
    assert "1.1.1.1/32" not in str(egress)
    assert egress[-1] == {"action": "Deny", "metadata": {"annotations": {
        "egress-observatory/evidence": "default deny: egress not observed"}}}


def test_k8s_rules_and_warnings() -> None:
    rendered = render_policy("shop", PEERS, INVENTORY, fmt="k8s")
    egress = rendered.document["spec"]["egress"]
    to = {json.dumps(r["to"], sort_keys=True): r for r in egress}
    gateway = to[json.dumps([{"ipBlock": {"cidr": "10.96.40.2/32"}}])]
    assert gateway["ports"] == [{"protocol": "TCP", "port": 8443}]
    ping = to[json.dumps([{"ipBlock": {"cidr": "8.8.8.8/32"}}])]
    assert "ports" not in ping  # NetworkPolicy cannot name ICMP: every protocol to that address
    web = to[json.dumps([{"ipBlock": {"cidr": "93.184.216.34/32"}}])]
    assert {"protocol": "TCP", "port": 8000, "endPort": 8005} in web["ports"]
    postgres = next(r for r in egress if r["to"][0].get("podSelector", {}).get("matchLabels", {}).get("app")
                    == "postgres")
    assert postgres["to"][0]["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "db"}}
    evidence = json.loads(rendered.document["metadata"]["annotations"]["egress-observatory/evidence"])
    assert len(evidence) == len(egress) and evidence[0]["connections"] == "40"
    text = "\n".join(rendered.warnings)
    assert "payments/gateway: written as its ClusterIP 10.96.40.2" in text
    assert "8.8.8.8: NetworkPolicy cannot match ICMP" in text
    assert "pod db/redis: no pod labels known" in text
    assert "10.99.0.5: unattributed" in text
    assert all(f"# WARNING: {w}" in rendered.text for w in rendered.warnings)


def test_k8s_service_rule_selects_the_backing_pods_on_the_ports_they_serve() -> None:
    # NetworkPolicy meets Service traffic after DNAT: the ClusterIP would never match.
    peers = [peer("service", "payments/gateway", ports=(80,), dst_ns="payments", name="gateway")]
    inventory = Inventory(service_ips={("payments", "gateway"): ("10.96.40.2",)},
                          service_backends={("payments", "gateway"): ({"app": "gateway"}, (("TCP", 8080),))})
    k8s = render_policy("shop", peers, inventory, fmt="k8s")
    rule = k8s.document["spec"]["egress"][-1]
    assert rule == {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "payments"}},
                            "podSelector": {"matchLabels": {"app": "gateway"}}}],
                    "ports": [{"protocol": "TCP", "port": 8080}]}
    assert not any("ClusterIP" in w for w in k8s.warnings)
    validate(k8s.document)
    calico = render_policy("shop", peers, inventory)  # Calico names the Service itself
    assert calico.document["spec"]["egress"][-2]["destination"]["services"] == {"name": "gateway",
                                                                                "namespace": "payments"}


def test_unresolvable_destinations_are_left_out_with_a_warning() -> None:
    peers = [peer("service", "payments/gateway", dst_ns="payments", name="gateway"),
             peer("node", "node-9", ports=(22,), name="node-9"),
             peer("external", "192.0.2.1", proto="GRE", ports=())]
    calico = render_policy("shop", peers, Inventory())
    assert "node node-9: node address unknown; not allowed" in calico.warnings
    assert "external 192.0.2.1: protocol GRE has no Calico name; not allowed" in calico.warnings
    k8s = render_policy("shop", peers, Inventory(), fmt="k8s")
    assert any("ClusterIP is unknown; not allowed" in w for w in k8s.warnings)
    assert len(k8s.document["spec"]["egress"]) == 3  # DNS x2 + GRE as an any-protocol rule
    validate(calico.document)
    validate(k8s.document)
    numbered = render_policy("shop", [peer("external", "192.0.2.1", proto="47", ports=())], Inventory())
    assert numbered.document["spec"]["egress"][2]["protocol"] == 47


def test_large_port_and_net_lists_are_split_within_calico_limits() -> None:
    scattered = tuple(range(20000, 20240, 2))  # 120 ports, no runs
    many_nets = tuple(f"10.{i // 256}.{i % 256}.0/24" for i in range(300))
    peers = [peer("external", "192.0.2.1", ports=scattered),
             Peer(**{**peer("external", "big", ports=(443,)).__dict__, "cidrs": many_nets})]
    doc = render_policy("shop", peers, Inventory()).document
    validate(doc)
    chunks = [r["destination"] for r in doc["spec"]["egress"] if "nets" in r.get("destination", {})]
    assert sorted(len(c["ports"]) for c in chunks if c["nets"] == ["192.0.2.1/32"]) == [20, 50, 50]
    assert sorted(len(c["nets"]) for c in chunks if c["nets"] != ["192.0.2.1/32"]) == [44, 256]


def test_policy_settings_and_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWS_POLICY_DNS_NAMESPACE", "openshift-dns")
    monkeypatch.setenv("FLOWS_POLICY_DNS_LABELS", '{"dns.operator.openshift.io/daemonset-dns": "default"}')
    monkeypatch.setenv("FLOWS_POLICY_NAME", "egress-v2")
    cfg = PolicySettings()
    doc = render_policy("shop", [peer("service", "openshift-dns/dns-default", "UDP", (53,),
                                      dst_ns="openshift-dns", name="dns-default")], Inventory(), settings=cfg).document
    assert doc["metadata"]["name"] == "egress-v2"
    assert doc["spec"]["egress"][0]["destination"]["selector"] == "dns.operator.openshift.io/daemonset-dns == 'default'"
    assert len(doc["spec"]["egress"]) == 3  # the DNS service is covered by the DNS rules
    validate(doc)
    with pytest.raises(ValueError, match="no egress observed from namespace 'nope'"):
        render_policy("nope", PEERS, INVENTORY)
    with pytest.raises(ValueError, match="calico, k8s"):
        render_policy("shop", PEERS, INVENTORY, fmt="cilium")
    monkeypatch.setenv("FLOWS_POLICY_NAME", "Not_A_Name")
    with pytest.raises(ValidationError):
        PolicySettings()
