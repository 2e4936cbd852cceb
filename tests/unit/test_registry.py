"""The time-aware ownership registry: reuse, finished pods, grace, ordering, history."""

from __future__ import annotations

import gc
import random
import time
import tracemalloc
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core import registry as registry_module
from pipeline.core.calico_iface import cali_iface_name
from pipeline.core.claims import event_from_json, event_to_json, events_from_list
from pipeline.core.models import Owner, OwnerEvent
from pipeline.core.registry import OwnershipRegistry

S = 10**9
T = 1_795_687_200 * S  # 2026-11-26T10:00:00Z
GRACE = 30 * S


def claim(
    ip: str,
    name: str,
    start: int,
    end: int | None = None,
    *,
    ns: str = "shop",
    uid: str | None = None,
    observed: int | None = None,
    kind: str = "pod",
    **extra: Any,
) -> OwnerEvent:
    return OwnerEvent(
        ip=ip,
        kind=kind,
        namespace="" if kind == "node" else ns,
        name=name,
        uid=uid or f"uid-{ns}-{name}",
        valid_from_ns=start,
        valid_to_ns=end,
        observed_ns=observed if observed is not None else (end if end is not None else start),
        **extra,
    )


def who(reg: OwnershipRegistry, ip: str, ts: int) -> str | None:
    owner = reg.owner_of(ip, ts)
    return None if owner is None else f"{owner.namespace}/{owner.name}"


def registry(*events: OwnerEvent, **kw: Any) -> OwnershipRegistry:
    reg = OwnershipRegistry(**kw)
    for ev in events:
        reg.apply(ev)
    return reg


def test_ip_reused_across_namespaces_resolves_by_time_on_both_sides() -> None:
    reg = registry(
        claim("10.1.0.5", "a", T, T + 100 * S, ns="alpha"),
        claim("10.1.0.5", "b", T + 200 * S, ns="beta"),
    )
    assert who(reg, "10.1.0.5", T - 1) is None
    assert who(reg, "10.1.0.5", T) == "alpha/a"
    assert who(reg, "10.1.0.5", T + 100 * S - 1) == "alpha/a"
    assert who(reg, "10.1.0.5", T + 100 * S) == "alpha/a"  # deleted, within grace
    assert who(reg, "10.1.0.5", T + 100 * S + GRACE - 1) == "alpha/a"
    assert who(reg, "10.1.0.5", T + 100 * S + GRACE) is None
    assert who(reg, "10.1.0.5", T + 200 * S - 1) is None
    assert who(reg, "10.1.0.5", T + 200 * S) == "beta/b"
    assert who(reg, "10.1.0.5", T + 10**6 * S) == "beta/b"
    assert who(reg, "10.9.9.9", T) is None


def test_deleted_pod_resolves_within_grace_until_its_ip_is_reused() -> None:
    reg = registry(
        claim("10.1.0.5", "old", T, T + 100 * S),
        claim("10.1.0.5", "new", T + 110 * S),
    )
    assert who(reg, "10.1.0.5", T + 105 * S) == "shop/old"
    assert who(reg, "10.1.0.5", T + 110 * S) == "shop/new"
    assert who(reg, "10.1.0.5", T + 115 * S) == "shop/new"
    short = registry(claim("10.1.0.5", "old", T, T + 100 * S), grace_ns=0)
    assert who(short, "10.1.0.5", T + 100 * S) is None


def _job_and_web(finished: str, web_start: str) -> dict:
    def pod(name: str, phase: str, start: str, **status: Any) -> dict:
        meta = {"name": name, "namespace": "shop", "uid": f"uid-{name}", "creationTimestamp": start}
        status = {"phase": phase, "startTime": start, "podIPs": [{"ip": "10.1.0.5"}], **status}
        return {"kind": "Pod", "metadata": meta, "spec": {"nodeName": "n1"}, "status": status}

    job = pod("report-28735460-x", "Succeeded", "2026-11-26T10:00:00Z",
              containerStatuses=[{"state": {"terminated": {"finishedAt": finished}}}])  # fmt: skip
    return {"kind": "List", "items": [job, pod("web-0", "Running", web_start)]}


@pytest.mark.parametrize(
    ("finished", "web_start"),
    [("2026-11-26T10:01:00Z", "2026-11-26T10:05:00Z"), ("2026-11-26T10:05:01Z", "2026-11-26T10:05:00Z")],
    ids=["sequential", "finish-logged-after-reuse"],
)
def test_completed_job_pod_still_listing_the_ip(finished: str, web_start: str) -> None:
    evs, warnings = events_from_list(_job_and_web(finished, web_start), T + 3600 * S)
    assert warnings == []
    reg = registry(*(event_from_json(event_to_json(e)) for e in evs))
    assert who(reg, "10.1.0.5", T + 30 * S) == "shop/report-28735460-x"
    assert who(reg, "10.1.0.5", T + 300 * S) == "shop/web-0"
    assert who(reg, "10.1.0.5", T + 3000 * S) == "shop/web-0"


def test_grace_goes_to_the_claim_that_ended_last() -> None:
    reg = registry(claim("10.1.0.5", "long", T, T + 100 * S), claim("10.1.0.5", "short", T + 10 * S, T + 20 * S))
    assert who(reg, "10.1.0.5", T + 15 * S) == "shop/short"
    assert who(reg, "10.1.0.5", T + 105 * S) == "shop/long"


def test_grace_between_equal_ends_goes_to_the_later_start() -> None:
    reg = registry(claim("10.1.0.5", "early", T, T + 50 * S), claim("10.1.0.5", "late", T + 10 * S, T + 50 * S))
    assert who(reg, "10.1.0.5", T + 55 * S) == "shop/late"


def test_stale_open_claim_loses_to_the_newer_pod() -> None:
    reg = registry(claim("10.1.0.5", "never-closed", T), claim("10.1.0.5", "current", T + 50 * S))
    assert who(reg, "10.1.0.5", T + 10 * S) == "shop/never-closed"
    assert who(reg, "10.1.0.5", T + 50 * S) == "shop/current"


def test_dual_stack_pod() -> None:
    reg = registry(claim("10.1.0.5", "web-0", T), claim("fd00::5", "web-0", T), claim("10.1.0.6", "web-1", T))
    v4, v6 = reg.owner_of("10.1.0.5", T), reg.owner_of("fd00::5", T)
    assert v4 == v6 == Owner(kind="pod", namespace="shop", name="web-0", uid="uid-shop-web-0")
    assert v4 is v6  # one Owner per pod, whatever its address count
    assert reg.pod_by_iface(cali_iface_name("shop", "web-0"), T) is v4
    assert reg.stats() == {"ips": 3, "claims": 3, "open_claims": 3}


def test_late_lines_resolve_to_the_owner_of_their_moment() -> None:
    # One IP handed from pod to pod every 10 minutes for a week: any moment still resolves.
    step = 600 * S
    events = [claim("10.1.0.5", f"job-{i}", T + i * step, T + (i + 1) * step - S) for i in range(1008)]
    random.Random(7).shuffle(events)
    reg = registry(*events, claim("10.1.0.6", "other", T))
    for i in (0, 1, 500, 1006, 1007):
        assert who(reg, "10.1.0.5", T + i * step + step // 2) == f"shop/job-{i}"
        assert who(reg, "10.1.0.5", T + (i + 1) * step - S // 2) == f"shop/job-{i}"  # in grace, not reused
    assert who(reg, "10.1.0.5", T + 1008 * step + GRACE) is None
    assert reg.stats() == {"ips": 2, "claims": 1009, "open_claims": 1}


def test_out_of_order_and_duplicate_events() -> None:
    opened = claim("10.1.0.5", "web-0", T, observed=T + S)
    closed = claim("10.1.0.5", "web-0", T, T + 60 * S, observed=T + 61 * S)
    reg = OwnershipRegistry()
    assert reg.apply(closed) is True
    assert reg.apply(opened) is False  # older observation: ignored
    assert reg.apply(closed) is False  # duplicate
    assert who(reg, "10.1.0.5", T + 100 * S) is None
    assert reg.stats()["open_claims"] == 0

    reg = registry(opened)
    assert reg.apply(claim("10.1.0.5", "web-0", T, observed=T + 90 * S)) is False  # same claim, seen later
    late_close = claim("10.1.0.5", "web-0", T, T + 60 * S, observed=T + 80 * S)
    assert reg.apply(late_close) is False  # older than the last observation of the open claim
    assert who(reg, "10.1.0.5", T + 100 * S) == "shop/web-0"


def test_equal_observations_resolve_the_same_in_any_order() -> None:
    a = claim("10.1.0.5", "web-0", T, T + 60 * S, observed=T)
    b = claim("10.1.0.5", "web-0", T, None, observed=T)
    c = claim("10.1.0.5", "web-0", T, None, observed=T, node="n2")
    for order in ([a, b, c], [c, b, a], [b, a, c]):
        reg = registry(*order)
        assert who(reg, "10.1.0.5", T + 100 * S) is None  # the close wins a tie
        assert reg.owner_of("10.1.0.5", T).node == ""


def test_changed_claim_moves_its_interface() -> None:
    reg = registry(claim("10.1.0.5", "web-0", T, uid="u1"))
    reg.apply(claim("10.1.0.5", "web-1", T, uid="u1", observed=T + S))
    assert reg.pod_by_iface(cali_iface_name("shop", "web-0"), T) is None
    assert reg.pod_by_iface(cali_iface_name("shop", "web-1"), T).name == "web-1"
    assert reg.stats() == {"ips": 1, "claims": 1, "open_claims": 1}


IPS = ["10.0.0.1", "10.0.0.2", "fd00::1", "fd00::2"]  # two IPv6: a pruned one's number goes to the other
NAMES = ["web-0", "web-1", "job-1"]


@st.composite
def events(draw: st.DrawFn) -> OwnerEvent:
    start = draw(st.integers(0, 20)) * 10 * S
    end = draw(st.none() | st.integers(0, 10).map(lambda d: start + d * 10 * S))
    kind = draw(st.sampled_from(["pod", "pod", "service", "node"]))
    return claim(
        draw(st.sampled_from(IPS)),
        draw(st.sampled_from(NAMES)),
        T + start,
        None if end is None else T + end,
        ns=draw(st.sampled_from(["a", "b"])),
        uid=draw(st.sampled_from(["u1", "u2", "u3", "u4"])),
        observed=T + draw(st.integers(0, 3)),
        kind=kind,
        node=draw(st.sampled_from(["n1", "n2"])),
    )


def _answers(reg: OwnershipRegistry) -> tuple:
    moments = [T + k * 5 * S for k in range(-1, 70)]
    ifaces = [cali_iface_name(ns, n) for ns in ("a", "b") for n in NAMES]
    return (
        [reg.owner_of(ip, ts) for ip in IPS for ts in moments],
        [reg.pod_by_iface(i, ts) for i in ifaces for ts in moments],
        reg.stats(),
    )


@settings(max_examples=150, deadline=None)
@given(st.lists(events(), min_size=1, max_size=12), st.randoms(use_true_random=False))
def test_any_order_with_duplicates_converges(evs: list[OwnerEvent], rnd: random.Random) -> None:
    expected = _answers(registry(*evs))
    shuffled = evs + [rnd.choice(evs) for _ in range(len(evs))]
    rnd.shuffle(shuffled)
    assert _answers(registry(*shuffled)) == expected
    shuffled.reverse()
    assert _answers(registry(*shuffled)) == expected


class Reference:
    """The registry's rules over a plain dict of claims: what its compact representation must answer."""

    def __init__(self, grace_ns: int, history_ns: int) -> None:
        self.grace_ns, self.history_ns = grace_ns, history_ns
        self.claims: dict[tuple[str, str, str], OwnerEvent] = {}
        self.horizon = -1

    @staticmethod
    def _end(ev: OwnerEvent) -> int:
        return 2**63 - 1 if ev.valid_to_ns is None else ev.valid_to_ns

    def apply(self, ev: OwnerEvent) -> None:
        key = (ev.kind, ev.uid, ev.ip)
        old = self.claims.get(key)
        if old is not None:
            def rank(e: OwnerEvent) -> tuple:
                return (e.observed_ns, -self._end(e), e.valid_from_ns, e.namespace, e.name, e.workload_kind,
                        e.workload, e.node)
            if rank(ev) <= rank(old):
                return
            del self.claims[key]
        if self._end(ev) >= self.horizon:
            self.claims[key] = ev

    def prune(self, now: int) -> None:
        self.horizon = max(self.horizon, now - self.history_ns)
        self.claims = {k: ev for k, ev in self.claims.items() if self._end(ev) >= now - self.history_ns}

    def _resolve(self, claims: list[OwnerEvent], ts: int) -> Owner | None:
        started = sorted((ev for ev in claims if ev.valid_from_ns <= ts),
                         key=lambda ev: (ev.valid_from_ns, ev.kind, ev.uid, ev.ip), reverse=True)
        found = next((ev for ev in started if ts < self._end(ev)), None)
        if found is None and started:
            last = max(started, key=self._end)  # the first of equal ends, in that order
            found = last if ts < self._end(last) + self.grace_ns else None
        if found is None:
            return None
        return Owner(found.kind, found.namespace, found.name, found.uid, found.workload_kind, found.workload,
                     found.node, cali_iface_name(found.namespace, found.name) if found.kind == "pod" else "")

    def owner_of(self, ip: str, ts: int) -> Owner | None:
        return self._resolve([ev for ev in self.claims.values() if ev.ip == ip], ts)

    def pod_by_iface(self, iface: str, ts: int) -> Owner | None:
        return self._resolve([ev for ev in self.claims.values()
                              if ev.kind == "pod" and cali_iface_name(ev.namespace, ev.name) == iface], ts)

    def stats(self) -> dict[str, int]:
        return {"ips": len({ev.ip for ev in self.claims.values() if ev.ip}), "claims": len(self.claims),
                "open_claims": sum(ev.valid_to_ns is None for ev in self.claims.values())}


@st.composite
def churn(draw: st.DrawFn) -> OwnerEvent | int:
    """An ownership event (identity claims included: a pod's name follows its uid there) or a prune time."""
    if draw(st.integers(0, 9)) == 0:
        return T + draw(st.integers(0, 40)) * 10 * S
    ev = draw(events())
    if ev.kind == "pod" and draw(st.booleans()):
        return replace(ev, ip="", name=f"pod-of-{ev.uid}", namespace="a")
    return ev


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(churn(), min_size=1, max_size=30))
def test_answers_what_the_rules_say(monkeypatch: pytest.MonkeyPatch, steps: list[OwnerEvent | int]) -> None:
    """Random churn with prunes (freed claim numbers reused, names compacted), tiny Owner caches."""
    monkeypatch.setattr(registry_module, "OWNER_CACHE", 2)
    reg = OwnershipRegistry(grace_ns=GRACE, history_ns=100 * S)
    ref = Reference(GRACE, 100 * S)
    ifaces = [cali_iface_name(ns, n) for ns in ("a", "b") for n in [*NAMES, *(f"pod-of-u{i}" for i in range(1, 5))]]
    moments = [T + k * 5 * S for k in range(-1, 70)]
    for step in steps:
        if isinstance(step, int):
            reg.prune(step)
            ref.prune(step)
            continue
        reg.apply(step)
        ref.apply(step)
        assert reg.stats() == ref.stats()
    assert [reg.owner_of(ip, ts) for ip in IPS for ts in moments] == \
        [ref.owner_of(ip, ts) for ip in IPS for ts in moments]
    assert [reg.pod_by_iface(i, ts) for i in ifaces for ts in moments] == \
        [ref.pod_by_iface(i, ts) for i in ifaces for ts in moments]
    holders = [(kind, f"u{i}") for kind in ("pod", "service", "node") for i in range(1, 5)]
    assert [[reg.holds(ip, ts, kind, uid) for kind, uid in holders] for ip in IPS for ts in moments] == \
        [[(o is not None and (o.kind, o.uid) == h) for h in holders]
         for o in (ref.owner_of(ip, ts) for ip in IPS for ts in moments)]


def test_prune_respects_history() -> None:
    day = 86400 * S
    reg = OwnershipRegistry(history_ns=7 * day)
    now = T + 30 * day
    expired = claim("10.1.0.5", "old", T, now - 7 * day - 1)
    kept = claim("10.1.0.5", "recent", now - 7 * day, now - 7 * day)
    ancient_open = claim("10.1.0.6", "forever", T)
    for ev in (expired, kept, ancient_open):
        reg.apply(ev)
    assert reg.prune(now) == 1
    assert reg.stats() == {"ips": 2, "claims": 2, "open_claims": 1}
    assert who(reg, "10.1.0.5", T + S) is None
    assert reg.pod_by_iface(cali_iface_name("shop", "old"), T + S) is None
    assert who(reg, "10.1.0.5", now - 7 * day) == "shop/recent"
    assert reg.apply(expired) is False  # a replay does not bring it back
    assert reg.apply(claim("10.1.0.6", "forever", T, T + day, observed=now)) is True  # closed long ago
    assert reg.stats() == {"ips": 1, "claims": 1, "open_claims": 0}
    assert reg.prune(now) == 0


def test_pod_by_iface() -> None:
    web0 = cali_iface_name("db", "web-0")
    reg = registry(
        claim("10.1.0.5", "web-0", T, T + 100 * S, ns="db", uid="first"),
        claim("10.1.0.9", "web-0", T + 200 * S, ns="db", uid="second"),
        claim("10.96.0.1", "web-0", T, ns="db", kind="service"),
        claim("192.168.1.1", "node-1", T, kind="node"),
    )
    assert web0.startswith("cali") and len(web0) == 15
    assert reg.pod_by_iface(web0, T - 1) is None
    assert reg.pod_by_iface(web0, T + 50 * S).uid == "first"
    assert reg.pod_by_iface(web0, T + 110 * S).uid == "first"  # grace
    assert reg.pod_by_iface(web0, T + 150 * S) is None
    assert reg.pod_by_iface(web0, T + 250 * S).uid == "second"
    assert reg.pod_by_iface(cali_iface_name("", "node-1"), T) is None
    assert reg.pod_by_iface("eth0", T) is None

    eni = registry(claim("10.1.0.5", "web-0", T, ns="db"), iface_prefix="eni")
    assert eni.pod_by_iface(cali_iface_name("db", "web-0", "eni"), T).name == "web-0"
    assert eni.pod_by_iface(web0, T) is None


def test_the_generation_counts_every_change_that_may_change_an_answer() -> None:
    """The batch path keeps answers for a whole batch while the generation stands: an apply that
    changes nothing leaves it, a claim, a close, an endpoint or a prune that forgets moves it."""
    day = 86400 * S
    reg = OwnershipRegistry(history_ns=7 * day)
    seen = [reg.generation]

    def moved(changed: bool) -> bool:
        seen.append(reg.generation)
        return changed and seen[-1] == seen[-2] + 1 or not changed and seen[-1] == seen[-2]

    opened = claim("10.1.0.5", "web", T)
    assert moved(reg.apply(opened)) and seen[-1] == 1
    assert reg.apply(opened) is False and moved(False)  # a replay
    assert reg.apply(replace(opened, valid_to_ns=T + S, observed_ns=T + S)) and moved(True)  # closed
    endpoint = claim("10.96.0.1", "api", T, kind="endpoint", port=443, protocol="TCP", target="web")
    assert reg.apply(endpoint) and moved(True)
    assert reg.prune(T + 7 * day + 2 * S) == 1 and moved(True)
    assert reg.prune(T + 7 * day + 2 * S) == 0 and moved(False)


def test_ipv6_numbers_follow_their_addresses_through_prunes() -> None:
    """An IPv6 address is a number in the registry while claimed; a freed number goes to the next address."""
    reg = OwnershipRegistry(history_ns=100 * S)
    assert reg.owner_of("fd00::a", T + S) is None  # asked before any claim names it
    reg.apply(claim("fd00::a", "web-0", T, T + 10 * S))
    assert who(reg, "fd00::a", T + S) == "shop/web-0"
    assert who(reg, "FD00:0::A", T + S) == "shop/web-0"  # one address however it is written
    assert reg.prune(T + 200 * S) == 1  # fd00::a forgotten, its number free
    reg.apply(claim("fd00::b", "web-1", T + 300 * S))  # and taken by another address
    assert reg.owner_of("fd00::a", T + S) is None
    assert reg.owner_of("fd00::a", T + 301 * S) is None
    assert who(reg, "fd00::b", T + 301 * S) == "shop/web-1"
    assert reg.stats() == {"ips": 1, "claims": 1, "open_claims": 1}


def test_holds_answers_without_building_owners(monkeypatch: pytest.MonkeyPatch) -> None:
    """Asked per owner event as it is applied: what it would cache would outlive the event's garbage."""
    reg = registry(claim("10.1.0.5", "web-0", T, T + 10 * S, uid="a"), claim("10.1.0.5", "web-1", T + 20 * S, uid="b"))
    monkeypatch.setattr(OwnershipRegistry, "_owner", lambda *_: pytest.fail("an Owner was built"))
    assert reg.holds("10.1.0.5", T + S, "pod", "a")
    assert reg.holds("10.1.0.5", T + 15 * S, "pod", "a")  # within grace
    assert not reg.holds("10.1.0.5", T + 15 * S, "service", "a")
    assert reg.holds("10.1.0.5", T + 21 * S, "pod", "b") and not reg.holds("10.1.0.5", T + 21 * S, "pod", "a")
    assert not reg.holds("10.1.0.6", T + S, "pod", "a") and not reg.holds("web-0", T + S, "pod", "a")


def test_text_that_is_no_address_is_owned_by_nobody() -> None:
    reg = registry(claim("10.1.0.5", "web-0", T))
    for text in ("", "10.1.0.05", "10.1.0.5\x00", "10.1.0", "web-0", "::ffff:10.1.0.5"):
        assert reg.owner_of(text, T + S) is None, text
    with pytest.raises(ValueError, match="not an IP address"):
        reg.apply(claim("10.1.0.256", "web-1", T))
    assert reg.stats() == {"ips": 1, "claims": 1, "open_claims": 1}


def test_services_and_nodes() -> None:
    reg = registry(
        claim("10.96.0.10", "dns", T, ns="kube-system", kind="service", workload_kind="Service", workload="dns"),
        claim("192.168.1.10", "node-1", T, kind="node", node="node-1"),
    )
    assert reg.owner_of("10.96.0.10", T + S) == Owner(
        kind="service", namespace="kube-system", name="dns", uid="uid-kube-system-dns",
        workload_kind="Service", workload="dns",
    )  # fmt: skip
    assert reg.owner_of("192.168.1.10", T + S).kind == "node"


@pytest.mark.bench
def test_bench_memory_and_speed() -> None:
    """100k IPs, each handed to a new pod every ~34 h for a week: 500k pods, 400k of them gone."""
    rng = random.Random(1)
    day, per_ip, n_ips = 86400 * S, 5, 100_000
    workloads = [(f"team-{rng.randrange(200):03d}", f"service-{i:04d}-api") for i in range(5000)]
    nodes = [f"ip-10-0-{i // 250}-{i % 250}.ec2.internal" for i in range(1000)]

    def churn() -> Any:
        for k in range(n_ips):
            ip = f"10.{k >> 16}.{(k >> 8) & 255}.{k & 255}"
            for j in range(per_ip):
                ns, wl = rng.choice(workloads)
                start = T + j * 7 * day // per_ip
                end = None if j == per_ip - 1 else T + (j + 1) * 7 * day // per_ip - S
                yield claim(ip, f"{wl}-{rng.getrandbits(40):010x}-{rng.getrandbits(25):05x}", start, end,
                            ns=ns, uid=f"{rng.getrandbits(128):032x}", workload_kind="Deployment",
                            workload=wl, node=rng.choice(nodes), labels={"app": wl})  # fmt: skip

    gc.collect()
    tracemalloc.start()
    reg = OwnershipRegistry()
    for ev in churn():
        reg.apply(ev)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    claims = reg.stats()["claims"]

    sample = [f"10.{k >> 16}.{(k >> 8) & 255}.{k & 255}" for k in rng.sample(range(n_ips), 20_000)]
    now = T + 7 * day
    timings = {}
    for label, ips, ts in (("hot, now", sample[:1] * 20_000, now), ("random, now", sample, now),
                           ("random, 3 days ago", sample, now - 3 * day)):  # fmt: skip
        t0 = time.perf_counter()
        for ip in ips:
            reg.owner_of(ip, ts)
        timings[label] = (time.perf_counter() - t0) / len(ips) * 1e9
    events = list(churn())[:100_000]
    t0 = time.perf_counter()
    fresh = OwnershipRegistry()
    for ev in events:
        fresh.apply(ev)
    apply_us = (time.perf_counter() - t0) / len(events) * 1e6
    print(f"\n{claims} claims: {used / 2**20:.0f} MiB traced ({used / claims:.0f} B/claim); apply {apply_us:.1f} µs")
    print("owner_of: " + ", ".join(f"{k} {v:.0f} ns" for k, v in timings.items()))
    assert used < 400 * 2**20
