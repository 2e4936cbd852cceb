"""Providers instead of rotating IPs: ASN lookups from an MMDB the test writes, drift's provider
verdict, policies by announced prefix and by port (pure; the commands are in test_analysis_sql)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.analysis.asn import (
    KNOWN_PREFIX,
    KNOWN_PROVIDER,
    NEW_PROVIDER,
    NO_ASN,
    Asn,
    AsnDb,
    prefix_grouping,
    provider_drift,
    with_asn,
)
from pipeline.analysis.evidence import (
    AnalysisSettings,
    assign_tier,
    group_external,
    ip_peer_counts,
    parse_ranges,
    policy_refusals,
    ranges_grouping,
)
from pipeline.analysis.policy import Inventory, render_policy
from tests.standins.asn_db import CDN_A, CDN_B, CLOUD_NET, TWO_PROVIDERS, write_mmdb
from tests.unit.test_policy import STABLE, peer, profile, validate_calico, validate_k8s

A = "egress-observatory"


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> AsnDb:
    with AsnDb.open(write_mmdb(tmp_path_factory.mktemp("asn") / "asn.mmdb", TWO_PROVIDERS)) as opened:
        yield opened


# -- lookups -----------------------------------------------------------------------------------


def test_lookup_names_provider_and_announced_prefix(db: AsnDb) -> None:
    assert db.lookup("151.101.1.1") == Asn(64500, "Example CDN", CDN_A)
    assert db.lookup("199.232.9.9") == Asn(64500, "Example CDN", CDN_B)
    assert db.lookup("34.100.0.1") == Asn(64501, "Other Cloud", CLOUD_NET)
    assert db.lookup("2a04:4e42::44") == Asn(64500, "Example CDN", "2a04:4e42::/32")
    assert db.lookup("::ffff:151.101.7.7") == Asn(64500, "Example CDN", CDN_A)  # IPv4-mapped: the IPv4 record
    assert db.lookup("52.1.1.1") is None
    assert db.lookup("151.101.1.1").label == "AS64500 Example CDN"  # type: ignore[union-attr]
    assert db.describe().startswith("asn.mmdb (GeoLite2-ASN, built ")


def test_lookups_are_cached_per_ip(tmp_path: Path) -> None:
    opened = AsnDb.open(write_mmdb(tmp_path / "asn.mmdb", TWO_PROVIDERS))
    assert opened.lookup("151.101.1.1") is not None
    opened.close()
    assert opened.lookup("151.101.1.1") == Asn(64500, "Example CDN", CDN_A)  # answered without the file
    with pytest.raises(ValueError, match="closed"):
        opened.lookup("151.101.1.2")


def test_ipinfo_records_and_route(tmp_path: Path) -> None:
    path = write_mmdb(tmp_path / "ipinfo.mmdb", {
        "45.60.1.0/24": {"asn": "AS64502", "name": "Info Net", "route": "45.60.0.0/16", "type": "hosting"},
        "45.61.0.0/24": {"asn": "AS64503", "as_name": "Lite Net", "as_domain": "lite.example"},
    }, database_type="ipinfo asn.mmdb")
    with AsnDb.open(path) as ipinfo:
        assert ipinfo.lookup("45.60.1.9") == Asn(64502, "Info Net", "45.60.0.0/16")  # the announced route
        assert ipinfo.lookup("45.61.0.9") == Asn(64503, "Lite Net", "45.61.0.0/24")


def test_an_ipv4_only_database_knows_no_ipv6(tmp_path: Path) -> None:
    with AsnDb.open(write_mmdb(tmp_path / "v4.mmdb", {CDN_A: TWO_PROVIDERS[CDN_A]}, ip_version=4)) as v4:
        assert v4.lookup("151.101.1.1") == Asn(64500, "Example CDN", CDN_A)
        assert v4.lookup("2a04:4e42::44") is None


def test_an_organisation_name_cannot_break_the_policy_yaml(tmp_path: Path) -> None:
    hostile = {"autonomous_system_number": 64509, "autonomous_system_organization": "Evil\nspec: {}\u2028x"}
    with AsnDb.open(write_mmdb(tmp_path / "evil.mmdb", {"8.0.0.0/9": hostile})) as evil:
        assert evil.lookup("8.8.8.8") == Asn(64509, "Evil spec: {} x", "8.0.0.0/9")  # wide: quoted in a warning
        rendered = render_policy("shop", group_external([peer("external", "8.8.8.8")], prefix_grouping(evil))[0],
                                 Inventory())
    assert any("AS64509 Evil spec" in w for w in rendered.warnings)
    assert yaml.safe_load(rendered.text) == rendered.document


def test_bad_databases_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nope.mmdb: no such file"):
        AsnDb.open(tmp_path / "nope.mmdb")
    garbage = tmp_path / "garbage.mmdb"
    garbage.write_bytes(b"not a database at all" * 10)
    with pytest.raises(ValueError, match="garbage.mmdb: not a MaxMind DB"):
        AsnDb.open(garbage)
    city = write_mmdb(tmp_path / "city.mmdb", {"151.101.0.0/16": {"country": {"iso_code": "US"}}},
                      database_type="GeoLite2-City")
    with AsnDb.open(city) as wrong, pytest.raises(ValueError, match="has no AS number.*is it an ASN database"):
        wrong.lookup("151.101.1.1")


# -- report rows and drift ---------------------------------------------------------------------


def row(dst: str, kind: str = "external", ns: str = "web", port: int | None = 443) -> dict[str, Any]:
    return {"namespace": ns, "dst_kind": kind, "dst": dst, "proto": "TCP", "port": port}


def test_with_asn_enriches_external_ips_only(db: AsnDb) -> None:
    rows = with_asn([row("151.101.1.1"), row("db", "pod"), row("52.1.1.1"), row("cdn-range")], db)
    assert [(r["asn"], r["as_org"], r["prefix"]) for r in rows] == [
        (64500, "Example CDN", CDN_A), (None, "", ""), (None, "", ""), (None, "", "")]
    assert rows[1]["dst"] == "db"  # the row's own columns stay


def test_drift_tells_a_rotating_provider_from_a_new_one(db: AsnDb) -> None:
    known = [{"namespace": "web", "dst": "151.101.1.1"}, {"namespace": "api", "dst": "34.64.0.1"}]
    drift = [
        row("151.101.2.2"),  # another IP of a prefix web already reached
        row("199.232.5.5"),  # the same CDN through another prefix
        row("34.100.0.1"),  # a provider web never reached (api did: per namespace)
        row("52.1.1.1"),  # not in the database
        row("151.101.1.1", port=8443),  # a new port to a known IP: its prefix is known
        row("db", "pod", port=6379),
        row("34.100.0.1", ns="api"),
    ]
    verdicts = [(r["namespace"], r["dst"], r["provider"]) for r in provider_drift(drift, known, db)]
    assert verdicts == [
        ("web", "151.101.2.2", KNOWN_PREFIX),
        ("web", "199.232.5.5", KNOWN_PROVIDER),
        ("web", "34.100.0.1", NEW_PROVIDER),
        ("web", "52.1.1.1", NO_ASN),
        ("web", "151.101.1.1", KNOWN_PREFIX),
        ("web", "db", ""),
        ("api", "34.100.0.1", KNOWN_PREFIX),
    ]
    assert provider_drift([row("151.101.2.2")], [], db)[0]["provider"] == NEW_PROVIDER


# -- policy by prefix --------------------------------------------------------------------------


CDN_PEERS = [
    peer("external", "151.101.1.1", day=18, connections=3),
    peer("external", "151.101.2.2", ports=(443, 8443), day=19),
    peer("external", "199.232.5.5", day=20),
    peer("external", "34.100.0.1", day=20),
    peer("external", "52.1.1.1", day=20),
    peer("pod", "db", ports=(5432,), dst_ns="db", name="postgres"),
]


def test_prefix_grouping_covers_the_observed_ips(db: AsnDb) -> None:
    grouped, outside = group_external(CDN_PEERS, prefix_grouping(db))
    by = {p.dst: p for p in grouped}
    assert by[CDN_A].addresses == ("151.101.1.1", "151.101.2.2") and by[CDN_A].ports == (443, 8443)
    assert by[CDN_A].cidrs == (CDN_A,) and by[CDN_A].provider == "AS64500 Example CDN"
    assert by[CDN_A].connections == 4
    assert by[CLOUD_NET].provider == "AS64501 Other Cloud"
    assert outside == ["52.1.1.1"]
    assert ip_peer_counts(grouped) == {"shop": 4}  # two CDN prefixes, the cloud, one lone IP
    # named ranges, the user's own knowledge, first; prefixes for the rest
    ranges = ranges_grouping(parse_ranges("cdn-edge: [151.101.0.0/17]\n"))
    mixed, _ = group_external(CDN_PEERS, lambda ip: ranges(ip) or prefix_grouping(db)(ip))
    assert {p.dst for p in mixed if p.dst_kind == "external"} == {"cdn-edge", CDN_B, CLOUD_NET, "52.1.1.1"}


def egress(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["spec"]["egress"]


def test_policy_by_prefix_annotates_the_ips_each_rule_covers(db: AsnDb) -> None:
    grouped, _ = group_external(CDN_PEERS, prefix_grouping(db))
    rendered = render_policy("shop", grouped, Inventory())
    validate_calico(rendered.document)
    rules = {tuple(r.get("destination", {}).get("nets", ())): r for r in egress(rendered.document)}
    cdn = rules[(CDN_A,)]
    notes = cdn["metadata"]["annotations"]
    assert cdn["destination"]["ports"] == [443, 8443]
    assert notes[f"{A}/addresses"] == "151.101.1.1, 151.101.2.2"
    assert notes[f"{A}/providers"] == "AS64500 Example CDN"
    assert notes[f"{A}/destinations"] == f"prefix {CDN_A} (AS64500 Example CDN)"
    assert rules[(CDN_B,)]["metadata"]["annotations"][f"{A}/addresses"] == "199.232.5.5"
    assert ("52.1.1.1/32",) in rules  # outside every prefix: still its /32
    assert [w for w in rendered.warnings if "is wide" in w] == [
        f"prefix {CLOUD_NET} (AS64501 Other Cloud): {CLOUD_NET} is wide; the rule allows every host of "
        "AS64501 Other Cloud in it, not only the ones observed"]
    assert f"WARNING: prefix {CLOUD_NET}" in rendered.text
    k8s = render_policy("shop", grouped, Inventory(), fmt="k8s").document
    validate_k8s(k8s)
    assert {"ipBlock": {"cidr": CDN_A}} in [to for r in egress(k8s) for to in r["to"]]
    assert '"addresses":"151.101.1.1, 151.101.2.2"' in k8s["metadata"]["annotations"][f"{A}/evidence"]


# -- policy by port ----------------------------------------------------------------------------


P2P = [peer("external", f"81.{i}.7.9", ports=(6881 + i % 3,), ns="p2p") for i in range(25)] + [
    peer("external", "81.99.0.1", "UDP", (51413,), ns="p2p"),
    peer("external", "2a01:4f8::7", ports=(6881,), ns="p2p"),
    peer("external", "81.98.0.1", "ICMP", (), ns="p2p"),
    peer("external", "203.0.113.9", ports=(6881,), ns="p2p"),  # stored as external, inside an excluded range
    peer("unknown", "10.9.9.9", ports=(6881,), ns="p2p"),
    peer("pod", "db", ports=(5432,), ns="p2p", dst_ns="db", name="postgres"),
]


def _inside(address: str, nets: list[str], not_nets: list[str]) -> bool:
    ip = ipaddress.ip_address(address)
    return (any(ip in ipaddress.ip_network(n) for n in nets)
            and not any(ip in ipaddress.ip_network(n) for n in not_nets))


def test_policy_by_port_allows_external_addresses_on_the_observed_ports() -> None:
    rendered = render_policy("p2p", P2P, Inventory(), by_port=True)
    doc = rendered.document
    validate_calico(doc)
    assert "allowed by port" in rendered.text
    by_port = [r for r in egress(doc) if r.get("destination", {}).get("notNets")]
    shapes = sorted((r["protocol"], r["destination"]["nets"][0], r["destination"].get("ports", []))
                    for r in by_port)
    assert shapes == [("ICMP", "0.0.0.0/0", []), ("TCP", "0.0.0.0/0", ["6881:6883"]),
                      ("TCP", "::/0", [6881]), ("UDP", "0.0.0.0/0", [51413])]
    tcp4 = next(r for r in by_port if r["protocol"] == "TCP" and r["destination"]["nets"] == ["0.0.0.0/0"])
    assert tcp4["metadata"]["annotations"][f"{A}/destinations"].endswith("(+5 more)")  # 25 IPs, 20 listed
    # every observed external IP is inside its rule; nothing private or in-cluster is
    for p in P2P:
        if p.dst_kind == "external" and p.dst != "203.0.113.9":
            assert any(_inside(p.dst, r["destination"]["nets"], r["destination"]["notNets"]) for r in by_port), p.dst
    for private in ("10.9.9.9", "192.168.1.1", "172.16.0.1", "100.64.0.1", "127.0.0.1", "169.254.1.1",
                    "203.0.113.9", "fd00::1", "fe80::1", "::1"):
        assert not any(_inside(private, r["destination"]["nets"], r["destination"]["notNets"]) for r in by_port)
    exact = {tuple(d.get("nets", ())) for d in (r.get("destination", {}) for r in egress(doc)) if "notNets" not in d}
    assert ("203.0.113.9/32",) in exact and ("10.9.9.9/32",) in exact  # kept exact, still allowed
    k8s_rendered = render_policy("p2p", P2P, Inventory(), fmt="k8s", by_port=True)
    k8s = k8s_rendered.document
    validate_k8s(k8s)
    blocks = [to["ipBlock"] for r in egress(k8s) for to in r["to"] if "except" in to.get("ipBlock", {})]
    assert {b["cidr"] for b in blocks} == {"0.0.0.0/0", "::/0"}
    # ICMP cannot be named in NetworkPolicy: a port-less rule to every external address would allow it all
    assert all("ports" in r for r in egress(k8s) if any("except" in to.get("ipBlock", {}) for to in r["to"]))
    assert any("81.98.0.1: NetworkPolicy cannot match ICMP" in w and "undo the port restriction" in w
               for w in k8s_rendered.warnings)
    assert all("10.0.0.0/8" in b["except"] for b in blocks if b["cidr"] == "0.0.0.0/0")
    assert all("fc00::/7" in b["except"] for b in blocks if b["cidr"] == "::/0")


def test_port_policy_lifts_only_the_breadth_refusal() -> None:
    broad = assign_tier(profile(ip_peers=40), STABLE, AnalysisSettings())
    assert "--by port" in policy_refusals(broad, STABLE)[0]
    assert policy_refusals(broad, STABLE, by_port=True) == []
    assert policy_refusals(broad, None, by_port=True) == ["no stability data"]
