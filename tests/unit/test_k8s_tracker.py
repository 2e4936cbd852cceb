"""OwnershipTracker: every correctness rule of the live pod-IP cache, checked through the registry.

The tracker's output is what lands on the owners topic; applying it to an ``OwnershipRegistry``
answers the question that matters (who held this IP at that moment).
"""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core import claims
from pipeline.core.models import OwnerEvent
from pipeline.core.registry import OwnershipRegistry
from pipeline.k8s.tracker import OwnershipTracker as _Tracker
from tests.standins.k8s_standin import make_node, make_pod, make_service

S = 10**9
T0 = 1_790_000_000 * S  # a whole second, as Kubernetes timestamps are
IP = "10.244.3.7"


class OwnershipTracker(_Tracker):
    """IP claims only: a pod's identity claim (ip "") has tests of its own below."""

    def observe(self, *args, **kw) -> list[OwnerEvent]:
        return [ev for ev in super().observe(*args, **kw) if ev.ip]

    def relist(self, *args, **kw) -> list[OwnerEvent]:
        return [ev for ev in super().relist(*args, **kw) if ev.ip]


def ip_claims_of(*args, **kw) -> list[OwnerEvent]:
    return [ev for ev in claims.events_from_object(*args, **kw) if ev.ip]


def registry_of(events: list[OwnerEvent]) -> OwnershipRegistry:
    reg = OwnershipRegistry(grace_ns=0)
    for ev in events:
        reg.apply(ev)
    return reg


def ns_of(reg: OwnershipRegistry, ip: str, ts: int) -> str | None:
    owner = reg.owner_of(ip, ts)
    return None if owner is None else f"{owner.kind}:{owner.namespace}/{owner.name}"


def test_pod_owns_its_ip_from_start_and_first_sight_with_an_ip():
    t = OwnershipTracker()
    pending = make_pod("web", "a", None, start_ns=T0)
    assert t.observe("ADDED", pending, T0 + S) == []
    running = copy.deepcopy(pending)
    running["status"].update(podIP=IP, podIPs=[{"ip": IP}])
    (claim,) = t.observe("MODIFIED", running, T0 + 5 * S)
    assert (claim.ip, claim.valid_from_ns, claim.valid_to_ns, claim.source) == (IP, T0, None, "watch")
    assert t.observe("MODIFIED", running, T0 + 9 * S) == []  # nothing changed, nothing published
    reg = registry_of([claim])
    assert ns_of(reg, IP, T0 - S) is None
    assert ns_of(reg, IP, T0 + 3600 * S) == "pod:a/web"


def test_finished_pod_closes_at_its_finish_time_and_never_owns_an_ip():
    t = OwnershipTracker()
    pod = make_pod("job-x", "a", IP, start_ns=T0)
    (opened,) = t.observe("ADDED", pod, T0 + S)
    done = make_pod("job-x", "a", IP, start_ns=T0, uid=pod["metadata"]["uid"], phase="Succeeded",
                    finished_ns=T0 + 60 * S)
    (closed,) = t.observe("MODIFIED", done, T0 + 300 * S)
    assert closed.key == opened.key and closed.valid_to_ns == T0 + 60 * S  # the finish, not when we saw it
    assert t.observe("DELETED", done, T0 + 900 * S) == []  # already closed at its finish
    reg = registry_of([opened, closed])
    assert ns_of(reg, IP, T0 + 30 * S) == "pod:a/job-x"
    assert ns_of(reg, IP, T0 + 61 * S) is None

    # First seen already finished: a closed claim, never an open one; with no finish time known, none.
    late = OwnershipTracker()
    (claim,) = late.observe("ADDED", done, T0 + 300 * S)
    assert claim.valid_to_ns == T0 + 60 * S
    unknown_finish = make_pod("job-y", "a", "10.244.3.8", start_ns=T0, phase="Failed")
    assert late.observe("ADDED", unknown_finish, T0 + S) == []


def test_open_claim_of_a_pod_that_finished_without_a_finish_time_closes_when_seen():
    t = OwnershipTracker()
    pod = make_pod("w", "a", IP, start_ns=T0)
    t.observe("ADDED", pod, T0 + S)
    failed = copy.deepcopy(pod)
    failed["status"]["phase"] = "Failed"
    (closed,) = t.observe("MODIFIED", failed, T0 + 50 * S)
    assert closed.valid_to_ns == T0 + 50 * S


def test_deleted_pod_stays_resolvable_before_its_deletion_and_for_the_history():
    t = OwnershipTracker()
    pod = make_pod("api-0", "a", IP, start_ns=T0)
    (opened,) = t.observe("ADDED", pod, T0 + S)
    (closed,) = t.observe("DELETED", pod, T0 + 100 * S)
    assert closed.key == opened.key and closed.valid_to_ns == T0 + 100 * S and closed.observed_ns == T0 + 100 * S
    reg = registry_of([opened, closed])
    assert ns_of(reg, IP, T0 + 99 * S) == "pod:a/api-0"  # a backfilled line from before the deletion
    assert ns_of(reg, IP, T0 + 101 * S) is None
    # The tracker keeps the closed claim until it is older than the history, then asks for a tombstone.
    assert t.expire(T0 + 100 * S) == []
    assert t.expire(T0 + 101 * S) == [f"pod/{closed.uid}/", closed.key]  # identity and IP claims
    assert t.expire(T0 + 10**6 * S) == []


def test_ip_reuse_between_namespaces_resolves_by_time():
    t = OwnershipTracker()
    a = make_pod("a-0", "ns-a", IP, start_ns=T0)
    b = make_pod("b-0", "ns-b", IP, start_ns=T0 + 200 * S)
    out = t.observe("ADDED", a, T0 + S) + t.observe("DELETED", a, T0 + 190 * S) + t.observe("ADDED", b, T0 + 201 * S)
    reg = registry_of(out)
    assert ns_of(reg, IP, T0 + 100 * S) == "pod:ns-a/a-0"
    assert ns_of(reg, IP, T0 + 300 * S) == "pod:ns-b/b-0"
    # Deletion seen late (after B started): the overlap resolves to whoever started last.
    late = OwnershipTracker()
    out = late.observe("ADDED", a, T0 + S) + late.observe("ADDED", b, T0 + 201 * S)
    out += late.observe("DELETED", a, T0 + 400 * S)
    reg = registry_of(out)
    assert ns_of(reg, IP, T0 + 100 * S) == "pod:ns-a/a-0"
    assert ns_of(reg, IP, T0 + 300 * S) == "pod:ns-b/b-0"


def test_dual_stack_pod_claims_both_families_and_deletion_closes_both():
    t = OwnershipTracker()
    pod = make_pod("ds", "a", ips=["10.244.1.5", "fd00:10:244:1::5"], start_ns=T0)
    opened = t.observe("ADDED", pod, T0 + S)
    assert sorted(c.ip for c in opened) == ["10.244.1.5", "fd00:10:244:1::5"]
    closed = t.observe("DELETED", pod, T0 + 50 * S)
    assert sorted((c.ip, c.valid_to_ns) for c in closed) == [("10.244.1.5", T0 + 50 * S),
                                                             ("fd00:10:244:1::5", T0 + 50 * S)]


def test_host_network_pod_never_claims_the_node_ip():
    t = OwnershipTracker()
    node = make_node("node-1", "10.0.0.11", created_ns=T0 - 86400 * S)
    out = t.relist("Node", [node], T0)
    agent = make_pod("calico-node-x", "kube-system", "10.0.0.11", start_ns=T0, host_network=True)
    assert t.observe("ADDED", agent, T0 + S) == []
    assert t.observe("DELETED", agent, T0 + 2 * S) == []
    assert ns_of(registry_of(out), "10.0.0.11", T0 + 10 * S) == "node:/node-1"


def test_service_cluster_ip_changes_on_recreation():
    t = OwnershipTracker()
    old = make_service("db", "a", "10.96.0.20", created_ns=T0)
    new = make_service("db", "a", "10.96.0.30", created_ns=T0 + 100 * S)
    out = t.observe("ADDED", old, T0 + S) + t.observe("DELETED", old, T0 + 99 * S)
    out += t.observe("ADDED", new, T0 + 101 * S)
    assert [(c.ip, c.valid_to_ns is None) for c in out] == [("10.96.0.20", True), ("10.96.0.20", False),
                                                             ("10.96.0.30", True)]
    reg = registry_of(out)
    assert ns_of(reg, "10.96.0.20", T0 + 50 * S) == "service:a/db"
    assert ns_of(reg, "10.96.0.20", T0 + 150 * S) is None
    assert ns_of(reg, "10.96.0.30", T0 + 150 * S) == "service:a/db"


def test_workload_comes_from_owner_references():
    t = OwnershipTracker()
    cases = [
        (("ReplicaSet", "checkout-7d9f8b6c5d"), ("Deployment", "checkout")),
        (("StatefulSet", "redis"), ("StatefulSet", "redis")),
        (("DaemonSet", "exporter"), ("DaemonSet", "exporter")),
        (("Job", "backup-29170320"), ("CronJob", "backup")),
        (None, ("Pod", "bare")),
    ]
    for i, (owner, expected) in enumerate(cases):
        pod = make_pod("bare" if owner is None else f"{owner[1]}-x{i}", "a", f"10.244.5.{i + 1}", start_ns=T0,
                       owner=owner)
        (claim,) = t.observe("ADDED", pod, T0)
        assert (claim.workload_kind, claim.workload) == expected


def test_pod_whose_ip_changes_closes_the_old_claim():
    t = OwnershipTracker()
    pod = make_pod("w", "a", "10.244.1.1", start_ns=T0)
    t.observe("ADDED", pod, T0 + S)
    moved = copy.deepcopy(pod)
    moved["status"].update(podIP="10.244.1.2", podIPs=[{"ip": "10.244.1.2"}])
    out = t.observe("MODIFIED", moved, T0 + 40 * S)
    assert sorted((c.ip, c.valid_to_ns) for c in out) == [("10.244.1.1", T0 + 40 * S), ("10.244.1.2", None)]


def test_relist_closes_what_vanished_and_republishes_nothing_unchanged():
    t = OwnershipTracker()
    keep = make_pod("keep", "a", "10.244.0.1", start_ns=T0)
    gone = make_pod("gone", "a", "10.244.0.2", start_ns=T0)
    other_ns = make_pod("other", "b", "10.244.0.3", start_ns=T0)
    svc = make_service("s", "a", "10.96.0.5", created_ns=T0)
    assert len(t.relist("Pod", [keep, gone, other_ns], T0 + S)) == 3
    assert len(t.relist("Service", [svc], T0 + S)) == 1
    # A namespaced list of "a" after a 410: "gone" vanished; "b" is out of its sight; services are another kind.
    out = t.relist("Pod", [keep], T0 + 500 * S, namespace="a")
    assert [(c.name, c.valid_to_ns) for c in out] == [("gone", T0 + 500 * S)]
    assert t.relist("Pod", [keep, other_ns], T0 + 600 * S) == []
    assert t.stats()["open_claims"] == 5  # keep and other: identity + IP claim each; the service's


def test_malformed_objects_are_counted_and_never_close_what_was_known():
    t = OwnershipTracker()
    pod = make_pod("w", "a", IP, start_ns=T0)
    t.observe("ADDED", pod, T0)
    garbled = copy.deepcopy(pod)
    garbled["status"]["startTime"] = "yesterday"
    garbled["metadata"]["creationTimestamp"] = "yesterday"
    assert t.observe("MODIFIED", garbled, T0 + S) == []
    no_uid = make_pod("x", "a", "10.244.9.1", start_ns=T0)
    del no_uid["metadata"]["uid"]
    assert t.observe("ADDED", no_uid, T0) == []
    assert t.observe("ADDED", {"kind": "Namespace", "metadata": {"name": "a"}}, T0) == []  # not malformed
    assert t.stats()["malformed"] == 2 and len(t.take_warnings()) == 2 and t.take_warnings() == []
    (closed,) = t.observe("DELETED", garbled, T0 + 9 * S)  # deleted all the same: its claim ends
    assert closed.valid_to_ns == T0 + 9 * S


def test_restart_from_the_topic_publishes_only_what_changed_meanwhile():
    """A new watcher reads the topic back: its first list repeats nothing and closes what vanished."""
    first = OwnershipTracker()
    a = make_pod("a", "x", "10.244.0.1", start_ns=T0)
    b = make_pod("b", "x", "10.244.0.2", start_ns=T0)
    topic = first.relist("Pod", [a, b], T0 + S)
    topic += first.observe("MODIFIED", {**a, "metadata": {**a["metadata"], "labels": {"v": "2"}}}, T0 + 2 * S)

    second = OwnershipTracker()
    for ev in topic:
        second.restore(ev)
    c = make_pod("c", "x", "10.244.0.3", start_ns=T0 + 100 * S)
    a2 = {**a, "metadata": {**a["metadata"], "labels": {"v": "2"}}}
    out = second.relist("Pod", [a2, c], T0 + 300 * S)  # b was deleted while no watcher ran
    assert sorted((e.name, e.valid_to_ns) for e in out) == [("b", T0 + 300 * S), ("c", None)]
    reg = registry_of(topic + out)
    assert ns_of(reg, "10.244.0.1", T0 + 200 * S) == "pod:x/a"  # never unresolved across the restart
    assert ns_of(reg, "10.244.0.2", T0 + 200 * S) == "pod:x/b"


def test_changes_are_observed_after_what_a_previous_watcher_published_even_if_its_clock_ran_ahead():
    pod = make_pod("a", "x", IP, start_ns=T0)
    t = OwnershipTracker()
    for ev in ip_claims_of(pod, T0 + 500 * S, source="watch"):  # the old watcher's clock: 500 s ahead
        t.restore(ev)
    (closed,) = t.observe("DELETED", pod, T0 + 10 * S)
    assert closed.valid_to_ns == T0 + 10 * S and closed.observed_ns == T0 + 500 * S + 1000  # a µs, as stored
    assert registry_of([*ip_claims_of(pod, T0 + 500 * S), closed]).owner_of(IP, T0 + 20 * S) is None


def test_claims_from_an_inventory_dump_are_taken_over_not_duplicated():
    pod = make_pod("a", "x", IP, start_ns=T0)
    t = OwnershipTracker()
    for ev in ip_claims_of(pod, T0, source="inventory"):
        t.restore(ev)
    assert t.relist("Pod", [pod], T0 + S) == []
    t.forget(f"pod/{pod['metadata']['uid']}/{IP}")
    assert len(t.relist("Pod", [pod], T0 + 2 * S)) == 1  # a tombstoned claim is republished if still true


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["apply", "finish", "delete", "vanish", "relist"]), st.integers(0, 3),
                          st.integers(0, 2)), max_size=25))
def test_published_claims_always_describe_the_live_objects(ops):
    """Whatever happens (missed events included), after a re-list the latest published claim per key
    equals what the live objects claim."""
    t = OwnershipTracker()
    live: dict[int, dict] = {}
    uids = {i: f"uid-{i}-0" for i in range(4)}
    topic: dict[str, OwnerEvent] = {}
    now = T0
    for op, i, ipn in ops:
        now += 10 * S
        if op == "apply":
            pod = make_pod(f"p{i}", f"ns{i % 2}", f"10.244.0.{ipn}", uid=uids[i], start_ns=T0)
            out = t.observe("MODIFIED" if i in live else "ADDED", pod, now)
            live[i] = pod
        elif op == "finish" and i in live:
            pod = make_pod(f"p{i}", f"ns{i % 2}", live[i]["status"]["podIP"], uid=uids[i], start_ns=T0,
                           phase="Succeeded", finished_ns=now - 5 * S)
            out = t.observe("MODIFIED", pod, now)
            live[i] = pod
        elif op == "delete" and i in live:
            out = t.observe("DELETED", live.pop(i), now)
            uids[i] = f"uid-{i}-{now}"  # a re-created pod of the same name is another object
        elif op == "vanish" and i in live:  # deleted while the watch was down: no event
            del live[i]
            uids[i] = f"uid-{i}-{now}"
            out = []
        else:  # a re-list after missed events
            out = t.relist("Pod", list(live.values()), now)
        for ev in out:
            assert ev.observed_ns == now and (ev.key not in topic or topic[ev.key].observed_ns < now)
            topic[ev.key] = ev
    for ev in t.relist("Pod", list(live.values()), now + S):
        topic[ev.key] = ev
    expected = {ev.key: ev.valid_to_ns for pod in live.values() for ev in ip_claims_of(pod, 0)}
    open_keys = {k for k, ev in topic.items() if ev.valid_to_ns is None}
    assert open_keys == {k for k, v in expected.items() if v is None}
    for key, valid_to in expected.items():
        assert topic[key].valid_to_ns == valid_to
