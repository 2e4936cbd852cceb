"""Rollout analysis over the SQL measures: tier rules, named CIDR ranges and allowlist peers.

The measures themselves (fan-out, ports, first sightings, stability) are defined once, in
``sql/006_analysis.sql``; this module only reads their rows and decides, so it is pure and
unit-tested without a database. Thresholds come from ``AnalysisSettings`` (``FLOWS_TIER_*``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import yaml
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.analysis import tier_rule
from pipeline.basics.timespec import parse_instant, rfc3339

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
NamedRanges = dict[str, tuple[Network, ...]]

_RANGE_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")


class AnalysisSettings(BaseSettings):
    """Rollout thresholds; every field maps to ``FLOWS_TIER_<NAME>``.

    Defaults follow the rollout method: observe at least a week, wait until nothing new has
    appeared for a few days, pilot the namespaces that only talk inside the cluster (A), then
    the small ones (B: at most 3 external and 5 internal destinations), investigate moderate
    external fan-out per IP/CIDR (C) and keep logging the broad ones (D).
    """

    model_config = SettingsConfigDict(env_prefix="FLOWS_TIER_", extra="ignore")

    min_days: float = Field(default=7.0, ge=0, description="observation horizon needed before enforcement")
    stable_days: float = Field(default=3.0, ge=0, description="days without a new destination to count as stable")
    a_max_external: int = Field(default=0, ge=0, description="tier A (pilot): at most this many external IPs")
    a_max_internal: int = Field(default=3, ge=0, description="tier A: at most this many internal destinations")
    b_max_external: int = Field(default=3, ge=0, description="tier B (small): at most this many external IPs")
    b_max_internal: int = Field(default=5, ge=0, description="tier B: at most this many internal destinations")
    d_min_external: int = Field(default=20, ge=1, description="this many external IPs: no static allowlist")
    d_min_high_ports: int = Field(default=10, ge=1, description="this many distinct external ports >= 1024")

    @model_validator(mode="after")
    def _ordered(self) -> AnalysisSettings:
        if not (self.a_max_external <= self.b_max_external < self.d_min_external):
            raise ValueError("tier thresholds must satisfy A_MAX_EXTERNAL <= B_MAX_EXTERNAL < D_MIN_EXTERNAL")
        if self.a_max_internal > self.b_max_internal:
            raise ValueError("tier thresholds must satisfy A_MAX_INTERNAL <= B_MAX_INTERNAL")
        return self


# -- tiers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TierResult:
    namespace: str
    tier: str
    reason: str
    advice: str
    ip_peers: int  # external/unknown destinations the rules counted (named ranges once each)


def assign_tier(
    profile: Mapping[str, Any],
    stability: Mapping[str, Any] | None,
    cfg: AnalysisSettings,
    ip_peers: int | None = None,
) -> TierResult:
    """Tier of one namespace from its ``profile`` and ``stability`` rows, with the reason.

    ``ip_peers`` overrides the profile's count of external/unknown IPs when a named-CIDR file
    grouped them (one published provider range is one destination for a static rule).
    """
    ns = str(profile["namespace"])
    measures = {name: int(profile[name]) for name in tier_rule.PROFILE_MEASURES}
    if ip_peers is not None:
        measures["ip_peers"] = int(ip_peers)
    ips = measures["ip_peers"]
    values = {**measures, **cfg.model_dump(), "size": f"{ips} external, {measures['internal']} internal"}
    for rule in tier_rule.BROAD:
        if rule.check.holds(measures, cfg):
            return TierResult(ns, rule.tier, rule.reason.format(**values), rule.advice, ips)
    blockers = pilot_blockers(stability) + tier_rule.unmet(tier_rule.PILOT_SIZE, measures, cfg)
    if not blockers:
        return TierResult(ns, "A", tier_rule.A_REASON.format(**values), tier_rule.A_ADVICE, ips)
    return TierResult(ns, "B", tier_rule.B_REASON.format(**values, blockers=", ".join(blockers)),
                      tier_rule.B_ADVICE, ips)


def pilot_blockers(stability: Mapping[str, Any] | None) -> list[str]:
    """Why a namespace is not ready for enforcement yet (empty when it is)."""
    if stability is None:
        return [tier_rule.NO_STABILITY]
    return tier_rule.unmet(tier_rule.PILOT_STABILITY, stability, None)


def policy_refusals(tier: TierResult, stability: Mapping[str, Any] | None, by_port: bool = False) -> list[str]:
    """Reasons not to generate an enforcing policy: tier D, under-observed or unstable.

    ``by_port``: external destinations are allowed by port, not by address, so the breadth
    that makes tier D (no static address list holds it) is no reason to refuse.
    """
    reasons = [] if tier.tier != "D" or by_port else [
        f"tier D ({tier.reason}); {tier.advice} (--by port writes a port-based policy)"]
    return reasons + pilot_blockers(stability)


# -- named CIDR ranges -----------------------------------------------------------------------


def parse_ranges(text: str, source: str = "ranges file") -> NamedRanges:
    """Named CIDRs from YAML/JSON: ``name: [cidr, ...]`` (or one cidr string per name).

    Errors name the file, the entry and the bad value; a CIDR with host bits set is refused
    (``147.92.128.1/17`` is a typo for something, and guessing which would widen a rule).
    """
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"{source}: not YAML: {exc}") from None
    if not isinstance(doc, dict) or not doc:
        raise ValueError(f"{source}: expected a mapping of range name to a list of CIDRs")
    ranges: NamedRanges = {}
    for name, value in doc.items():
        if not isinstance(name, str) or not _RANGE_NAME.match(name):
            raise ValueError(f"{source}: range name {name!r} must be letters, digits, '.', '_' or '-' (max 63)")
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not items:
            raise ValueError(f"{source}: range {name!r} needs a CIDR or a non-empty list of CIDRs")
        nets = []
        for item in items:
            try:
                nets.append(ipaddress.ip_network(str(item).strip(), strict=True))
            except ValueError as exc:
                raise ValueError(f"{source}: range {name!r}: {item!r} is not a valid CIDR ({exc})") from None
        ranges[name] = tuple(nets)
    return ranges


def range_of(address: str, ranges: NamedRanges) -> str | None:
    """The most specific named range holding ``address`` (ties: first name in sort order)."""
    ip = ipaddress.ip_address(address)
    best: tuple[int, str] | None = None
    for name in sorted(ranges):
        for net in ranges[name]:
            if ip.version == net.version and ip in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, name)
    return best[1] if best else None


# -- allowlist peers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """One allowlist row: a destination, one protocol, the ports seen and the evidence."""

    namespace: str
    dst_kind: str  # pod | service | node | external | unknown
    dst: str  # destinations' text; a named range's name once grouped
    dst_namespace: str
    name: str  # pod: workload; service: service name; node: node name
    proto: str
    ports: tuple[int, ...]
    first_seen: datetime
    last_seen: datetime
    connections: int
    nodes: tuple[str, ...]
    addresses: tuple[str, ...] = ()  # external/unknown: the IPs this row covers
    cidrs: tuple[str, ...] = ()  # the group's networks (named range or announced prefix), when grouped
    provider: str = ""  # an announced prefix's AS ("AS64500 Example CDN"), when grouped by prefix

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Peer:
        """From an ``allowlist`` view row."""
        kind = str(row["dst_kind"])
        return cls(
            namespace=str(row["namespace"]),
            dst_kind=kind,
            dst=str(row["dst"]),
            dst_namespace=str(row["dst_namespace"]),
            name=str(row["name"]),
            proto=str(row["proto"]),
            ports=tuple(sorted(int(p) for p in row["ports"])),
            first_seen=parse_instant(row["first_seen"]),
            last_seen=parse_instant(row["last_seen"]),
            connections=int(row["connections"]),
            nodes=tuple(sorted(row["nodes"])),
            addresses=(str(row["dst"]),) if kind in ("external", "unknown") else (),
        )

    def as_row(self, ranges: bool = False) -> dict[str, Any]:
        """For reports: JSON-friendly, lists kept as lists; with ``ranges``, the named range's
        networks and the observed addresses behind it (empty for an IP outside every range)."""
        row: dict[str, Any] = {
            "namespace": self.namespace,
            "dst_kind": self.dst_kind,
            "dst": self.dst,
            "name": self.name,
            "proto": self.proto,
            "ports": list(self.ports),
            "first_seen": rfc3339(self.first_seen),
            "last_seen": rfc3339(self.last_seen),
            "connections": self.connections,
            "nodes": list(self.nodes),
        }
        if ranges:
            row["cidrs"] = list(self.cidrs)
            row["addresses"] = list(self.addresses) if self.cidrs else []
        return row


def merge_peers(peers: Iterable[Peer], **identity: Any) -> Peer:
    """One peer holding the union of the ports and evidence of ``peers`` (identity fields from kwargs)."""
    items = list(peers)
    return replace(
        items[0],
        ports=tuple(sorted({p for peer in items for p in peer.ports})),
        first_seen=min(p.first_seen for p in items),
        last_seen=max(p.last_seen for p in items),
        connections=sum(p.connections for p in items),
        nodes=tuple(sorted({n for p in items for n in p.nodes})),
        addresses=tuple(sorted({a for p in items for a in p.addresses}, key=_address_key)),
        **identity,
    )


def _address_key(address: str) -> tuple[int, int]:
    ip = ipaddress.ip_address(address)
    return ip.version, int(ip)


@dataclass(frozen=True)
class Group:
    """Where an external IP belongs for a static rule: a named range or an announced prefix."""

    name: str  # the grouped peer's dst
    cidrs: tuple[str, ...]
    provider: str = ""


def ranges_grouping(ranges: NamedRanges) -> Callable[[str], Group | None]:
    """For ``group_external``: an IP's group is the most specific named range holding it."""

    def group_of(address: str) -> Group | None:
        name = range_of(address, ranges)
        return Group(name, tuple(str(n) for n in ranges[name])) if name else None

    return group_of


def group_external(peers: Iterable[Peer], group_of: Callable[[str], Group | None]
                   ) -> tuple[list[Peer], list[str]]:
    """External peers of one group become one peer per (namespace, group, protocol), so one
    rule covers a provider's rotating IPs (the peer keeps the observed IPs it covers); returns
    them with the external IPs outside every group (sorted), which still need a look one by one."""
    grouped: dict[tuple[str, Group, str], list[Peer]] = {}
    out: list[Peer] = []
    outside: set[str] = set()
    for peer in peers:
        group = group_of(peer.dst) if peer.dst_kind == "external" else None
        if group is None:
            if peer.dst_kind == "external":
                outside.add(peer.dst)
            out.append(peer)
        else:
            grouped.setdefault((peer.namespace, group, peer.proto), []).append(peer)
    for (_, group, _), members in grouped.items():
        out.append(merge_peers(members, dst=group.name, cidrs=group.cidrs, provider=group.provider))
    out.sort(key=lambda p: (p.namespace, p.dst_kind, p.dst, p.name, p.proto))
    return out, sorted(outside, key=_address_key)


def group_by_ranges(peers: Iterable[Peer], ranges: NamedRanges) -> tuple[list[Peer], list[str]]:
    """External peers inside a named range grouped per range (``group_external``)."""
    return group_external(peers, ranges_grouping(ranges))


def ip_peer_counts(peers: Iterable[Peer]) -> dict[str, int]:
    """Per namespace, the destinations needing IP rules: each named range counts once."""
    seen: dict[str, set[str]] = {}
    for peer in peers:
        if peer.dst_kind in ("external", "unknown"):
            seen.setdefault(peer.namespace, set()).add(peer.dst)
    return {ns: len(dsts) for ns, dsts in seen.items()}
