"""Attribution that does not depend on timing: interface identity, the hold and its watermark, repair.

Pure tests of the core rules the worker applies; the end-to-end cases with real processes are in
tests/system/test_attribution_e2e.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.calico_iface import cali_iface_name
from pipeline.core.calico_line import parse_message
from pipeline.core.claims import events_from_object
from pipeline.core.enrich import Batch, add_record, attribute_source
from pipeline.core.envelopes import record_id
from pipeline.core.hold import Hold, claim_keys
from pipeline.core.models import OwnerEvent, RawRecord
from pipeline.core.reattribute import REPAIR_COLUMNS, reattribute
from pipeline.core.registry import OwnershipRegistry
from pipeline.core.rows import FLOW_COLUMNS
from tests.standins.k8s_standin import make_pod

S = 10**9
T0 = 1_790_000_000 * S
ALLOWANCE = 30 * S
PREFIX = "calico-packet"


def line(iface: str, src: str, dst: str = "8.8.8.8", seq: int = 0) -> str:
    return (f"calico-packet: IN={iface} OUT=eth0 MAC=ee:ee:ee:ee:ee:ee:1e:0a:36:33:f5:09:08:00 SRC={src} "
            f"DST={dst} LEN=60 TOS=0x00 PREC=0x00 TTL=63 ID={seq} DF PROTO=TCP SPT={40000 + seq % 20000} DPT=443 "
            "WINDOW=64860 RES=0x00 SYN URGP=0 ")


def record(ts: int, iface: str, src: str, seq: int = 0, dst: str = "8.8.8.8") -> RawRecord:
    return RawRecord(record_id=record_id("t", ts, seq), ts_ns=ts, host="node-1",
                     message=line(iface, src, dst, seq), source="journal")


def row(batch: Batch, i: int = -1) -> dict:
    return dict(zip(FLOW_COLUMNS, batch.flow_data.row(i), strict=True))


def keys(events: list[OwnerEvent]) -> set[str]:
    return {k for ev in events for k in claim_keys(ev, "cali")}


def apply_all(registry: OwnershipRegistry, events: list[OwnerEvent]) -> OwnershipRegistry:
    for ev in events:
        registry.apply(ev)
    return registry


# -- interface identity from creation ---------------------------------------------------------------


def test_a_pending_pod_without_ip_is_known_by_its_interface():
    pending = make_pod("job-x", "batch", None, start_ns=T0, phase="Pending")
    del pending["status"]["startTime"]
    events = events_from_object(pending, T0)
    assert [(ev.ip, ev.valid_from_ns, ev.valid_to_ns) for ev in events] == [("", T0 - 2 * S, None)]
    reg = apply_all(OwnershipRegistry(), events)
    batch = Batch()
    # The sandbox is up and talking; the kubelet has not reported the IP yet.
    add_record(batch, record(T0, cali_iface_name("batch", "job-x"), "10.244.1.5"), reg, PREFIX, "cali")
    r = row(batch)
    assert (r["src_namespace"], r["src_pod"], r["src_match"]) == ("batch", "job-x", "iface")


def test_an_ip_owner_with_another_interface_never_wins():
    old = make_pod("old-0", "a", "10.244.1.5", start_ns=T0 - 3600 * S)  # vanished unseen: its claim is open
    reg = apply_all(OwnershipRegistry(), events_from_object(old, T0 - 3600 * S))
    iface_b = cali_iface_name("b", "new-0")
    batch = Batch()
    add_record(batch, record(T0, iface_b, "10.244.1.5"), reg, PREFIX, "cali")
    r = row(batch)
    assert (r["src_namespace"], r["src_pod"], r["src_match"]) == ("", "", "iface_mismatch")
    assert batch.counts["unattributed"] == 1
    # The IP index learned nothing from the line: the old pod still holds the IP for other lines.
    assert reg.owner_of("10.244.1.5", T0).name == "old-0"
    # Once the pod the interface names is known (its IP not reported yet), it wins over the IP's stale owner.
    new = make_pod("new-0", "b", None, start_ns=T0 - 5 * S)
    apply_all(reg, events_from_object(new, T0 + S))
    add_record(batch, record(T0, iface_b, "10.244.1.5", seq=1), reg, PREFIX, "cali")
    r = row(batch)
    assert (r["src_namespace"], r["src_pod"], r["src_match"]) == ("b", "new-0", "conflict")


def test_the_interface_prefix_is_honoured_everywhere():
    pod = make_pod("web-0", "shop", "10.244.2.2", start_ns=T0 - 60 * S)
    reg = apply_all(OwnershipRegistry(iface_prefix="tap"), events_from_object(pod, T0))
    batch = Batch()
    add_record(batch, record(T0, cali_iface_name("shop", "web-0", "tap"), "10.244.2.2"), reg, PREFIX, "tap")
    r = row(batch)
    assert (r["direction"], r["src_namespace"], r["src_match"]) == ("egress", "shop", "ip+iface")


def test_a_statefulset_pod_recreated_under_its_name_is_told_apart_by_time():
    first = make_pod("db-0", "data", "10.244.3.3", start_ns=T0 - 600 * S, uid="uid-1")
    reg = apply_all(OwnershipRegistry(grace_ns=0), events_from_object(first, T0 - 600 * S))
    deleted = [ev for ev in events_from_object(first, T0 - 300 * S)]
    for ev in deleted:
        ev.valid_to_ns, ev.observed_ns = T0 - 300 * S, T0 - 300 * S
    second = make_pod("db-0", "data", "10.244.3.9", start_ns=T0 - 100 * S, uid="uid-2")
    apply_all(reg, deleted + events_from_object(second, T0 - 100 * S))
    iface = cali_iface_name("data", "db-0")
    assert reg.pod_by_iface(iface, T0 - 400 * S).uid == "uid-1"
    assert reg.pod_by_iface(iface, T0).uid == "uid-2"


# -- the hold ---------------------------------------------------------------------------------------


def test_records_wait_for_ownership_and_attributable_ones_do_not_wait_behind_them():
    reg = OwnershipRegistry()
    known = make_pod("web-0", "shop", "10.244.2.2", start_ns=T0 - 60 * S)
    apply_all(reg, events_from_object(known, T0 - 60 * S))
    hold, batch = Hold(max_age_s=600, max_records=1000), Batch()
    settled = T0 - ALLOWANCE  # the watermark is at T0
    fresh = cali_iface_name("shop", "fresh-0")
    waiting = add_record(batch, record(T0, fresh, "10.244.2.7", seq=1), reg, PREFIX, "cali", 0, 5, settled)
    assert waiting is not None and waiting.offset == 5
    hold.add(waiting, 0.0)
    assert add_record(batch, record(T0, cali_iface_name("shop", "web-0"), "10.244.2.2", seq=2), reg, PREFIX,
                      "cali", 0, 6, settled) is None
    assert batch.flow_rows == 1 and hold.first_offsets() == {0: 5}
    # Nothing changed: nothing goes.
    assert hold.release(batch, reg, "cali", settled, 1.0) == 0
    # Another pod's claims do not look at it again; the pod's own identity claim (before its IP is
    # reported) releases it, attributed.
    other = events_from_object(make_pod("other-0", "shop", "10.244.2.8", start_ns=T0 - S), T0 + S)
    apply_all(reg, other)
    assert hold.release(batch, reg, "cali", settled, 1.5, keys(other)) == 0
    pod = make_pod("fresh-0", "shop", None, start_ns=T0 - S, phase="Pending")
    arrived = events_from_object(pod, T0 + 2 * S)
    apply_all(reg, arrived)
    assert hold.release(batch, reg, "cali", settled, 2.0, keys(arrived)) == 1
    assert row(batch)["src_pod"] == "fresh-0" and hold.released == {"attributed": 1, "unattributed": 0}
    assert hold.first_offsets() == {}


def test_the_watermark_settles_what_nothing_will_attribute_and_limits_bound_the_hold():
    reg = OwnershipRegistry()
    hold, batch = Hold(max_age_s=120, max_records=2), Batch()
    for i in range(3):
        waiting = add_record(batch, record(T0 + i * S, "cali0123456789a", f"10.9.9.{i}", seq=i), reg, PREFIX,
                             "cali", 1, 10 + i, T0 - ALLOWANCE)
        assert waiting is not None
        hold.add(waiting, float(i))
    # Size: the oldest goes first, unattributed (it will be repaired if ownership arrives later).
    assert hold.release(batch, reg, "cali", T0 - ALLOWANCE, 3.0) == 1
    assert row(batch)["src_ip"] == "10.9.9.0" and hold.first_offsets() == {1: 11}
    # The watermark passes the second record's time plus the allowance: ownership is complete for it.
    assert hold.release(batch, reg, "cali", T0 + S, 4.0) == 1
    # Age.
    assert hold.release(batch, reg, "cali", T0 + S, 122.0) == 1
    assert len(hold) == 0 and hold.released == {"attributed": 0, "unattributed": 3}
    assert batch.counts["unattributed"] == 3


def test_a_claim_looks_again_only_at_the_records_it_can_settle(monkeypatch):
    import pipeline.core.hold as hold_module

    looked: list[str] = []
    real = hold_module.settles
    monkeypatch.setattr(hold_module, "settles", lambda p, r, i: looked.append(p.pkt.src) or real(p, r, i))
    reg, hold, batch = OwnershipRegistry(), Hold(600, 10_000), Batch()
    for i in range(2_000):
        iface = cali_iface_name("shop", f"new-{i}")
        hold.add(add_record(batch, record(T0, iface, f"10.244.{i // 250}.{i % 250}", seq=i), reg, PREFIX, "cali",
                            0, i, T0 - ALLOWANCE), 0.0)
    arrived = events_from_object(make_pod("new-7", "shop", "10.244.0.7", start_ns=T0 - S), T0 + S)
    apply_all(reg, arrived)
    assert hold.release(batch, reg, "cali", T0 - ALLOWANCE, 1.0, keys(arrived)) == 1
    assert looked == ["10.244.0.7"] and len(hold) == 1_999 and hold.first_offsets() == {0: 0}
    assert row(batch)["src_pod"] == "new-7"


def test_held_records_of_a_revoked_partition_are_left_to_its_next_owner():
    hold, batch, reg = Hold(600, 100), Batch(), OwnershipRegistry()
    for p in (0, 1):
        hold.add(add_record(batch, record(T0, "cali0123456789a", "10.9.9.9", seq=p), reg, PREFIX, "cali", p, 7,
                            0), 0.0)
    assert hold.drop_partitions({0}) == 1 and hold.first_offsets() == {1: 7}


# -- any interleaving within the allowance gives the answer of complete knowledge --------------------


@dataclass
class _Pod:
    namespace: str
    name: str
    ip: str
    created: int
    started: int
    ended: int | None


def _claims(pod: _Pod, uid: str) -> list[tuple[int, OwnerEvent]]:
    """(when the change happened, claim) for a pod's identity and IP claims, opened then closed."""
    out = []
    for ip, start in (("", pod.created), (pod.ip, pod.started)):
        ev = OwnerEvent(ip=ip, kind="pod", namespace=pod.namespace, name=pod.name, uid=uid, valid_from_ns=start,
                        valid_to_ns=None, observed_ns=start, workload_kind="Pod", workload=pod.name)
        out.append((start, ev))
        if pod.ended is not None:
            out.append((pod.ended, replace(ev, valid_to_ns=pod.ended, observed_ns=pod.ended)))
    return out


@st.composite
def _cluster(draw):
    """Pods on a small IP pool (each IP reused in turn), their lines, and every delay."""
    pods: list[_Pod] = []
    for slot in range(draw(st.integers(1, 3))):
        t = T0
        for k in range(draw(st.integers(1, 3))):
            created = t + draw(st.integers(0, 20)) * S
            started = created + draw(st.integers(0, 10)) * S
            ended = started + draw(st.integers(5, 120)) * S if draw(st.booleans()) or k < 2 else None
            pods.append(_Pod(f"ns{slot % 2}", f"p{slot}-{k}", f"10.244.0.{slot + 1}", created, started, ended))
            if ended is None:
                break
            t = ended + draw(st.integers(0, 40)) * S
    lines = []
    for i, pod in enumerate(pods):
        end = pod.ended if pod.ended is not None else pod.started + 200 * S
        for j in range(draw(st.integers(1, 4))):
            ts = draw(st.integers(pod.created, end - 1))
            lines.append((ts, pod, i * 10 + j, draw(st.integers(0, 90)) * S))  # ..., shipping delay
    lags = draw(st.lists(st.integers(0, ALLOWANCE // S), min_size=4 * len(pods), max_size=4 * len(pods)))
    return pods, lines, [lag * S for lag in lags]


@settings(max_examples=150, deadline=None)
@given(_cluster(), st.integers(1, 20))
def test_any_interleaving_within_the_allowance_gives_the_complete_answer(cluster, progress_every_s):
    pods, lines, lags = cluster
    changes: list[tuple[int, int, OwnerEvent]] = []  # (published at, order, claim)
    for i, pod in enumerate(pods):
        for j, (happened, ev) in enumerate(_claims(pod, f"uid-{i}")):
            changes.append((happened + lags[4 * i + j], len(changes), ev))
    complete = apply_all(OwnershipRegistry(grace_ns=0), [ev for _, _, ev in changes])
    horizon = max(t for t, _, _ in changes) + 300 * S
    # The watcher vouches for T once everything published by T went out; records reach the worker late.
    timeline = [(t, 0, n, ev) for t, n, ev in changes]
    timeline += [(t, 1, 0, t) for t in range(T0, horizon, progress_every_s * S)]
    timeline += [(ts + delay, 2, seq, (ts, pod, seq)) for ts, pod, seq, delay in lines]
    timeline.sort(key=lambda item: item[:3])

    reg, hold, batch, watermark = OwnershipRegistry(grace_ns=0), Hold(10**9, 10**9), Batch(), 0
    changed: set[str] = set()
    for now, what, _, item in timeline:
        if what == 0:
            if reg.apply(item):
                changed.update(claim_keys(item, "cali"))
        elif what == 1:
            watermark = item
        else:
            ts, pod, seq = item
            waiting = add_record(batch, record(ts, cali_iface_name(pod.namespace, pod.name), pod.ip, seq), reg,
                                 PREFIX, "cali", 0, seq, watermark - ALLOWANCE)
            if waiting is not None:
                hold.add(waiting, now / S)
        hold.release(batch, reg, "cali", watermark - ALLOWANCE, now / S, changed)
        changed.clear()
    hold.release(batch, reg, "cali", horizon, horizon / S)
    assert len(hold) == 0 and hold.released["unattributed"] == 0

    stored = sorted((r[FLOW_COLUMNS.index("ts")], r[FLOW_COLUMNS.index("src_namespace")],
                     r[FLOW_COLUMNS.index("src_pod")]) for r in batch.flow_data.rows())
    expected = []
    for ts, pod, seq in ((ts, pod, seq) for ts, pod, seq, _ in lines):
        rec = record(ts, cali_iface_name(pod.namespace, pod.name), pod.ip, seq)

        (kind, ns, _wk, _wl, name), _ = attribute_source(parse_message(rec.message), ts, complete, "cali")
        expected.append((ts // 1000, ns, name))
    assert stored == sorted(expected)
    assert all(ns for _, ns, _ in stored)  # every line's pod is in the cluster: none stays unattributed


# -- repair -----------------------------------------------------------------------------------------


def test_reattribute_repairs_only_what_ownership_now_attributes():
    reg, batch = OwnershipRegistry(), Batch()
    iface = cali_iface_name("shop", "late-0")
    add_record(batch, record(T0, iface, "10.244.5.5"), reg, PREFIX, "cali")
    add_record(batch, record(T0, "cali0123456789a", "10.244.5.6", seq=1), reg, PREFIX, "cali")
    stored = [(*r, 0) for r in batch.flow_data.rows()]  # as the pass reads them: with their revision
    assert reattribute(stored, reg, "cali") == []
    apply_all(reg, events_from_object(make_pod("late-0", "shop", "10.244.5.5", start_ns=T0 - 10 * S), T0 + 600 * S))
    (fixed,) = reattribute(stored, reg, "cali")
    got = dict(zip(REPAIR_COLUMNS, fixed, strict=True))
    assert (got["record_id"], got["src_namespace"], got["src_pod"], got["src_match"], got["revision"]) == (
        stored[0][1], "shop", "late-0", "ip+iface", 1)
    assert got["dst_kind"] == "external"
