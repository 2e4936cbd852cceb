"""Kubernetes objects -> ownership claims, and the owners-topic codec against its schema."""

from __future__ import annotations

import contextlib
import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from pipeline.basics.timespec import parse_rfc3339_ns
from pipeline.core import claims as _claims
from pipeline.core.claims import (
    MAX_EVENT_BYTES,
    build_owners_index,
    event_from_json,
    event_to_json,
    stored_ip_text,
)
from pipeline.core.models import OwnerEvent
from tests.conftest import ROOT


def events_from_object(*args: Any, **kw: Any) -> list[OwnerEvent]:
    """IP claims only: a pod's identity claim (ip "") has tests of its own below."""
    return [ev for ev in _claims.events_from_object(*args, **kw) if ev.ip]


def events_from_list(*args: Any, **kw: Any) -> tuple[list[OwnerEvent], list[str]]:
    evs, warnings = _claims.events_from_list(*args, **kw)
    return [ev for ev in evs if ev.ip], warnings

SCHEMA = orjson.loads((ROOT / "schemas" / "k8s.owners.v1.json").read_bytes())
VALIDATOR = Draft202012Validator(SCHEMA)
OBSERVED = 1_795_000_000_000_000_000

START = "2026-11-26T10:00:00Z"
START_NS = 1_795_687_200 * 10**9  # 2026-11-26T10:00:00Z


def ns(text: str) -> int:
    return parse_rfc3339_ns(text)


def pod(
    name: str = "web-7d9f8b6c5d-x2x4k",
    namespace: str = "shop",
    ips: tuple[str, ...] = ("10.1.0.5",),
    phase: str = "Running",
    owner: tuple[str, str] | None = None,
    labels: dict[str, str] | None = None,
    **status: Any,
) -> dict:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": f"uid-{name}",
        "creationTimestamp": "2026-11-26T09:59:58Z",
        "labels": labels or {"app": "web"},
    }
    if owner:
        meta["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1], "uid": "x", "controller": True}
        ]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"nodeName": "node-1", "containers": [{"name": "app"}]},
        "status": {
            "phase": phase,
            "startTime": START,
            "podIP": ips[0] if ips else None,
            "podIPs": [{"ip": ip} for ip in ips],
            **status,
        },
    }


def terminated(finished: str) -> dict:
    return {"name": "c", "state": {"terminated": {"exitCode": 0, "finishedAt": finished}}}


def service(name: str = "api", namespace: str = "shop", **spec: Any) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}", "creationTimestamp": START},
        "spec": {"type": "ClusterIP", **spec},
    }


def node(name: str = "node-1", addresses: list[tuple[str, str]] | None = None) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "uid": f"uid-{name}", "creationTimestamp": START, "labels": {"zone": "a"}},
        "status": {"addresses": [{"type": t, "address": a} for t, a in (addresses or [])]},
    }


def events(obj: dict, **kw: Any) -> list[OwnerEvent]:
    return events_from_object(obj, OBSERVED, **kw)


def sample_event(**changes: Any) -> OwnerEvent:
    fields: dict[str, Any] = {
        "ip": "10.1.0.5",
        "kind": "pod",
        "namespace": "shop",
        "name": "web-7d9f8b6c5d-x2x4k",
        "uid": "0b7c6f0e-5b1e-4c1e-9a55-1f8f8e0d9c11",
        "valid_from_ns": START_NS,
        "valid_to_ns": None,
        "observed_ns": OBSERVED,
        "workload_kind": "Deployment",
        "workload": "web",
        "node": "node-1",
        "labels": {"app": "web", "pod-template-hash": "7d9f8b6c5d"},
        "source": "inventory",
    }
    fields.update(changes)
    return OwnerEvent(**fields)


# -- timestamps ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-26T10:00:00Z", START_NS),
        ("2026-11-26t10:00:00z", START_NS),
        ("2026-11-26T10:00:00.5Z", START_NS + 500_000_000),
        ("2026-11-26T10:00:00.123456789Z", START_NS + 123_456_789),
        ("2026-11-26T10:00:00.1234567891Z", START_NS + 123_456_789),
        ("2026-11-26T11:30:00+01:30", START_NS),
        ("2026-11-26T08:00:00-02:00", START_NS),
        ("1970-01-01T00:00:00Z", 0),
    ],
)
def test_parse_rfc3339_ns(text: str, expected: int) -> None:
    assert parse_rfc3339_ns(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "2026-11-26", "2026-11-26T10:00:00", "2026-02-30T10:00:00Z", "2026-11-26T24:00:00Z",
     "2026-11-26T10:00:00+25:00", "2026-11-26T10:00:00.Z", " 2026-11-26T10:00:00Z", "yesterday", None, 17],
)  # fmt: skip
def test_parse_rfc3339_ns_rejects(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339_ns(text)


@given(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)))
def test_parse_rfc3339_ns_matches_datetime(dt: datetime) -> None:
    expected = (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000
    assert parse_rfc3339_ns(dt.isoformat().replace("+00:00", "Z")) == expected


# -- pods ----------------------------------------------------------------------------------------


def test_dual_stack_pod_claims_every_ip_in_canonical_form() -> None:
    evs = events(pod(ips=("10.1.0.5", "FD00:0:0:0:0:0:1:5", "fd00::1:5")))
    assert [e.ip for e in evs] == ["10.1.0.5", "fd00::1:5"]
    for e in evs:
        assert (e.kind, e.namespace, e.name, e.node) == ("pod", "shop", "web-7d9f8b6c5d-x2x4k", "node-1")
        assert e.uid == "uid-web-7d9f8b6c5d-x2x4k"
        assert (e.valid_from_ns, e.valid_to_ns, e.observed_ns) == (START_NS, None, OBSERVED)
        assert e.labels == {"app": "web"} and e.source == "inventory"


def test_pod_ip_fallback_and_pending_pod_without_ip() -> None:
    obj = pod()
    del obj["status"]["podIPs"]
    assert [e.ip for e in events(obj)] == ["10.1.0.5"]
    pending = pod(ips=(), phase="Pending")
    del pending["status"]["startTime"]
    warnings: list[str] = []
    assert events(pending, warnings=warnings) == [] and warnings == []


def test_host_network_pod_claims_nothing() -> None:
    obj = pod(ips=("192.168.1.10",))
    obj["spec"]["hostNetwork"] = True
    assert events(obj) == []


def test_start_time_falls_back_to_creation() -> None:
    obj = pod()
    del obj["status"]["startTime"]
    assert events(obj)[0].valid_from_ns == ns("2026-11-26T09:59:58Z")


def test_terminating_pod_still_owns() -> None:
    obj = pod()
    obj["metadata"]["deletionTimestamp"] = "2026-11-26T10:05:00Z"
    assert events(obj)[0].valid_to_ns is None


def test_succeeded_job_pod_claim_closes_at_last_finish() -> None:
    obj = pod(
        name="backup-28735460-abcde",
        phase="Succeeded",
        owner=("Job", "backup-28735460"),
        containerStatuses=[terminated("2026-11-26T10:03:00Z"), terminated("2026-11-26T10:04:30Z")],
        initContainerStatuses=[terminated("2026-11-26T10:00:10Z")],
        conditions=[{"type": "Ready", "lastTransitionTime": "2026-11-26T10:09:00Z"}],
    )
    (e,) = events(obj)
    assert (e.valid_from_ns, e.valid_to_ns) == (START_NS, ns("2026-11-26T10:04:30Z"))
    assert (e.workload_kind, e.workload) == ("CronJob", "backup")


def test_failed_pod_without_finish_closes_at_last_condition() -> None:
    obj = pod(
        phase="Failed",
        containerStatuses=[{"name": "c", "state": {"waiting": {"reason": "x"}}}],
        conditions=[
            {"type": "Ready", "lastTransitionTime": "2026-11-26T10:07:00Z"},
            {"type": "PodScheduled", "lastTransitionTime": "2026-11-26T09:59:59Z"},
            {"type": "Custom"},
        ],
    )
    assert events(obj)[0].valid_to_ns == ns("2026-11-26T10:07:00Z")


def test_finished_pod_without_any_time_claims_nothing() -> None:
    assert events(pod(phase="Succeeded", containerStatuses=[{"name": "c", "state": {}}])) == []
    assert events(pod(phase="Failed")) == []


def test_pod_finished_before_it_started_is_malformed() -> None:
    obj = pod(phase="Succeeded", containerStatuses=[terminated("2026-11-26T09:00:00Z")])
    with pytest.raises(ValueError, match="finished before"):
        events(obj)


def test_unknown_phase_and_missing_uid() -> None:
    obj = pod(phase="Unknown")
    del obj["metadata"]["uid"]
    (e,) = events(obj)
    assert e.valid_to_ns is None and e.uid == "pod/shop/web-7d9f8b6c5d-x2x4k"


@pytest.mark.parametrize(
    ("name", "owner", "labels", "expected"),
    [
        ("web-7d9f8b6c5d-x2x4k", ("ReplicaSet", "web-7d9f8b6c5d"), {"pod-template-hash": "7d9f8b6c5d"},
         ("Deployment", "web")),
        ("api-v2-5f6b8c-q", ("ReplicaSet", "api-v2-5f6b8c"), None, ("Deployment", "api-v2")),
        ("legacy-3612413405-q", ("ReplicaSet", "legacy-3612413405"), None, ("Deployment", "legacy")),
        ("web-frontend-q", ("ReplicaSet", "web-frontend"), None, ("ReplicaSet", "web-frontend")),
        ("frontend-q", ("ReplicaSet", "frontend"), None, ("ReplicaSet", "frontend")),
        ("backup-28735460-x", ("Job", "backup-28735460"), None, ("CronJob", "backup")),
        ("migrate-x", ("Job", "migrate-db"), None, ("Job", "migrate-db")),
        ("import-x", ("Job", "import-1234"), None, ("Job", "import-1234")),
        ("db-0", ("StatefulSet", "db"), None, ("StatefulSet", "db")),
        ("agent-xk2p9", ("DaemonSet", "agent"), None, ("DaemonSet", "agent")),
        ("old-abcde", ("ReplicationController", "old"), None, ("ReplicationController", "old")),
        ("kube-proxy-node-1", ("Node", "node-1"), None, ("StaticPod", "kube-proxy-node-1")),
        ("debug", None, None, ("Pod", "debug")),
        ("runner-x", ("Workflow", "nightly"), None, ("Workflow", "nightly")),
    ],
)  # fmt: skip
def test_pod_workload(name: str, owner: tuple[str, str] | None, labels: dict | None, expected: tuple) -> None:
    (e,) = events(pod(name=name, owner=owner, labels=labels))
    assert (e.workload_kind, e.workload) == expected


def test_controller_reference_preferred() -> None:
    obj = pod(name="db-0", owner=("StatefulSet", "db"))
    obj["metadata"]["ownerReferences"].insert(0, {"kind": "ConfigMap", "name": "x", "uid": "y"})
    assert events(obj)[0].workload == "db"
    del obj["metadata"]["ownerReferences"][1]
    assert events(obj)[0].workload_kind == "ConfigMap"


def owned(kind: str, name: str, owner: tuple[str, str] | None, **meta: Any) -> dict:
    refs = [{"kind": owner[0], "name": owner[1], "uid": "u", "controller": True}] if owner else []
    return {"kind": kind, "metadata": {"name": name, "namespace": "shop", "ownerReferences": refs, **meta}}


def test_owner_objects_in_the_list_beat_name_heuristics() -> None:
    doc = {
        "kind": "List",
        "items": [
            pod(name="pay-canary-x", ips=("10.1.0.1",), owner=("ReplicaSet", "pay-canary")),
            pod(name="web-7d9f8b6c5d-x", ips=("10.1.0.2",), owner=("ReplicaSet", "web-7d9f8b6c5d")),
            pod(name="report-28735460-x", ips=("10.1.0.3",), owner=("Job", "report-28735460")),
            pod(name="sync-manual-x", ips=("10.1.0.4",), owner=("Job", "sync-manual")),
            pod(name="other-x", ips=("10.1.0.6",), owner=("ReplicaSet", "pay-canary")),
            owned("ReplicaSet", "pay-canary", ("Deployment", "pay")),
            owned("ReplicaSet", "web-7d9f8b6c5d", ("Rollout", "web")),
            owned("Job", "report-28735460", None),
            owned("Job", "sync-manual", ("CronJob", "sync")),
        ],
    }
    doc["items"][4]["metadata"]["namespace"] = "elsewhere"  # same RS name, other namespace: heuristics
    evs, warnings = events_from_list(doc, OBSERVED)
    assert warnings == []
    assert [(e.workload_kind, e.workload) for e in evs] == [
        ("Deployment", "pay"),
        ("Rollout", "web"),
        ("Job", "report-28735460"),
        ("CronJob", "sync"),
        ("ReplicaSet", "pay-canary"),
    ]
    index = build_owners_index(doc["items"])
    assert events(doc["items"][0], owners_index=index)[0].workload == "pay"
    junk = ["junk", {"metadata": {"name": "nameless-ns"}}, owned("Job", "k", None, ownerReferences="x")]
    typed = build_owners_index([{"metadata": {"name": "j", "namespace": "shop"}}, *junk], "Job")
    assert typed == {("Job", "shop", "j"): ("Job", "j")}


# -- services and nodes --------------------------------------------------------------------------


def test_dual_stack_service_with_external_ip() -> None:
    obj = service(clusterIP="10.96.0.10", clusterIPs=["10.96.0.10", "fd00:96::a"], externalIPs=["203.0.113.7"])
    evs = events(obj)
    assert [e.ip for e in evs] == ["10.96.0.10", "fd00:96::a", "203.0.113.7"]
    assert {(e.kind, e.namespace, e.name, e.workload_kind, e.workload, e.node) for e in evs} == {
        ("service", "shop", "api", "Service", "api", "")
    }
    assert evs[0].valid_from_ns == START_NS and evs[0].valid_to_ns is None


def test_headless_and_external_name_services_claim_nothing() -> None:
    assert events(service(clusterIP="None", clusterIPs=["None"])) == []
    assert events(service(type="ExternalName", externalName="db.example.com")) == []
    assert [e.ip for e in events(service(clusterIP="10.96.0.11"))] == ["10.96.0.11"]


def test_node_internal_and_external_ips() -> None:
    obj = node(
        addresses=[("InternalIP", "192.168.1.10"), ("InternalIP", "fd00:1::10"),
                   ("ExternalIP", "198.51.100.4"), ("Hostname", "node-1")],
    )  # fmt: skip
    evs = events(obj)
    assert [e.ip for e in evs] == ["192.168.1.10", "fd00:1::10", "198.51.100.4"]
    e = evs[0]
    assert (e.kind, e.namespace, e.name, e.node, e.workload_kind, e.workload) == (
        "node", "", "node-1", "node-1", "Node", "node-1",
    )  # fmt: skip
    assert e.labels == {"zone": "a"} and e.valid_from_ns == START_NS


@pytest.mark.parametrize("obj", [None, [], {"metadata": {"name": "x"}}, {"kind": 3}])
def test_events_from_object_needs_a_kind(obj: Any) -> None:
    with pytest.raises(ValueError):
        events_from_object(obj, OBSERVED)


def test_other_kinds_claim_nothing() -> None:
    assert events({"kind": "Namespace", "metadata": {"name": "shop"}}) == []
    assert events(owned("ReplicaSet", "web-1", None)) == []


# -- whole documents, malformed items ------------------------------------------------------------


def test_list_of_everything() -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"kind": "Namespace", "metadata": {"name": "shop"}},
            node(addresses=[("InternalIP", "192.168.1.10")]),
            pod(),
            service(clusterIP="10.96.0.10"),
        ],
    }
    evs, warnings = events_from_list(doc, OBSERVED, source="watch")
    assert [(e.kind, e.ip) for e in evs] == [
        ("node", "192.168.1.10"),
        ("pod", "10.1.0.5"),
        ("service", "10.96.0.10"),
    ]
    assert warnings == [] and {e.source for e in evs} == {"watch"}


def test_typed_list_and_single_object() -> None:
    item = pod()
    del item["kind"]
    evs, _ = events_from_list({"kind": "PodList", "items": [item]}, OBSERVED)
    assert [e.ip for e in evs] == ["10.1.0.5"]
    evs, _ = events_from_list(service(clusterIP="10.96.0.10"), OBSERVED)
    assert [e.ip for e in evs] == ["10.96.0.10"]
    assert events_from_list({"kind": "List", "items": []}, OBSERVED) == ([], [])


@pytest.mark.parametrize("doc", [[], "x", None, {}, {"items": "x"}, {"kind": "List"}, {"kind": ""}])
def test_not_a_document(doc: Any) -> None:
    with pytest.raises(ValueError):
        events_from_list(doc, OBSERVED)


def _break(path: str, value: Any, phase: str = "Running") -> dict:
    obj = pod(ips=("10.2.0.1",), phase=phase)
    *parents, last = path.split(".")
    target = obj
    for p in parents:
        target = target[p]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return obj


MALFORMED = [
    _break("metadata", KeyError),
    _break("metadata", ["x"]),
    _break("metadata.name", KeyError),
    _break("metadata.name", 7),
    _break("metadata.namespace", KeyError),
    _break("metadata.labels", {"app": 1}),
    _break("metadata.ownerReferences", "ReplicaSet/web"),
    _break("metadata.ownerReferences", [{"kind": "ReplicaSet"}]),
    _break("metadata.ownerReferences", ["ReplicaSet/web"]),
    _break("status.startTime", "2026-13-01T00:00:00Z"),
    _break("status.startTime", 1_795_687_200),
    _break("status.podIPs", "10.2.0.1"),
    _break("status.podIPs", ["10.2.0.1"]),
    _break("status.containerStatuses", {"c": 1}, phase="Succeeded"),
    _break("status.containerStatuses", ["terminated"], phase="Succeeded"),
    _break("status.conditions", [{"lastTransitionTime": "10:00"}], phase="Failed"),
    _break("status.conditions", [None], phase="Failed"),
    _break("spec", "x"),
    _break("spec.hostNetwork", "yes"),
    {**_break("status.startTime", KeyError), "metadata": {"name": "p", "namespace": "shop"}},
    {**service(), "metadata": {"name": "s", "namespace": "shop"}, "spec": {"clusterIP": "10.96.0.1"}},
    {**node(), "status": {"addresses": ["192.168.1.1"]}},
    {**service(), "spec": {"clusterIPs": "10.96.0.1"}},
    "a string",
    {"metadata": {"name": "no-kind"}},
]


def test_malformed_items_become_warnings() -> None:
    good = pod(name="good", ips=("10.9.9.9",))
    evs, warnings = events_from_list({"kind": "List", "items": [*MALFORMED, good]}, OBSERVED)
    assert [e.ip for e in evs] == ["10.9.9.9"]
    assert len(warnings) == len(MALFORMED)
    assert all(w.startswith(f"item {i}") for i, w in enumerate(warnings))


def test_bad_ip_skipped_with_warning_other_ips_kept() -> None:
    doc = {"kind": "List", "items": [pod(ips=("10.1.0.5", "10.1.0.300", "fe80::1%eth0", "fd00::5"))]}
    evs, warnings = events_from_list(doc, OBSERVED)
    assert [e.ip for e in evs] == ["10.1.0.5", "fd00::5"]
    assert len(warnings) == 2 and "10.1.0.300" in warnings[0] and "shop/web-7d9f8b6c5d-x2x4k" in warnings[0]
    only_bad = service(clusterIPs=["10.96.0.1.1"], externalIPs=[42])
    evs, warnings = events_from_list(only_bad, OBSERVED)
    assert evs == [] and len(warnings) == 2


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


def _finished_pod() -> dict:
    return pod(
        phase="Succeeded",
        owner=("ReplicaSet", "web-7d9f8b6c5d"),
        containerStatuses=[terminated("2026-11-26T10:04:30Z")],
        conditions=[{"type": "Ready", "lastTransitionTime": "2026-11-26T10:09:00Z"}],
    )


BASES = [_finished_pod(), service(clusterIPs=["10.96.0.1"], externalIPs=["1.2.3.4"]),
         node(addresses=[("InternalIP", "192.168.1.1")])]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_corruption_of_an_object_is_a_warning_or_a_valid_event(data: st.DataObject) -> None:
    obj = copy.deepcopy(data.draw(st.sampled_from(BASES)))
    path = data.draw(st.sampled_from(_paths(obj)[1:]))
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = data.draw(JSON)
    evs, _ = events_from_list({"kind": "List", "items": [obj]}, OBSERVED)
    for e in evs:
        VALIDATOR.validate(orjson.loads(event_to_json(e)))


# -- codec ---------------------------------------------------------------------------------------

TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=12)
IPS = st.ip_addresses().map(str)
NS_INT = st.integers(0, 2**63 - 1)


@st.composite
def owner_events(draw: st.DrawFn) -> OwnerEvent:
    kind = draw(st.sampled_from(["pod", "service", "node"]))
    valid_from = draw(NS_INT)
    return OwnerEvent(
        ip=draw(IPS),
        kind=kind,
        namespace="" if kind == "node" else draw(TEXT.filter(bool)),
        name=draw(TEXT.filter(bool)),
        uid=draw(TEXT.filter(bool)),
        valid_from_ns=valid_from,
        valid_to_ns=draw(st.none() | st.integers(valid_from, 2**63 - 1)),
        observed_ns=draw(NS_INT),
        workload_kind=draw(TEXT),
        workload=draw(TEXT),
        node=draw(TEXT),
        labels=draw(st.dictionaries(TEXT, TEXT, max_size=4)),
        source=draw(st.sampled_from(["inventory", "watch"])),
    )


@given(owner_events())
def test_round_trip_and_schema(ev: OwnerEvent) -> None:
    data = event_to_json(ev)
    doc = orjson.loads(data)
    VALIDATOR.validate(doc)
    assert list(doc) == [
        "ip", "kind", "namespace", "name", "uid", "workload_kind", "workload", "node", "labels",
        "valid_from_ns", "valid_to_ns", "observed_ns", "source",
    ]  # fmt: skip
    assert data == orjson.dumps(doc)  # compact
    assert event_from_json(data) == ev
    assert event_from_json(data.decode()) == ev


def test_every_object_event_validates() -> None:
    objs = [_finished_pod(), pod(ips=("10.1.0.5", "fd00::5")), service(clusterIPs=["10.96.0.1", "fd00::a"]),
            node(addresses=[("InternalIP", "192.168.1.1")])]  # fmt: skip
    for obj in objs:
        for e in events(obj):
            VALIDATOR.validate(orjson.loads(event_to_json(e)))


GOOD = orjson.loads(event_to_json(sample_event()))


def _variant(**changes: Any) -> bytes:
    doc = {**GOOD, **changes}
    return orjson.dumps({k: v for k, v in doc.items() if v is not KeyError})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1]", "not an object"),
        (b"null", "not an object"),
        (event_to_json(sample_event()) * 2, "not valid JSON"),
        (event_to_json(sample_event())[:-1], "not valid JSON"),
        (event_to_json(sample_event())[:-1] + b',"ip":"10.0.0.9"}', "duplicate key 'ip'"),
        (b" " * (MAX_EVENT_BYTES + 1), "bytes, more than"),
        (b'{"x":' + b"[" * 600 + b"]" * 600 + b"}", "lacks ip"),
        (b'{"x": ' + b"[" * 1000 + b"]" * 1000 + b"}", "nested too deeply|lacks ip"),
        (b'{"x":' + b"[" * 5000 + b"]" * 5000 + b"}", "not valid JSON"),
        (_variant(ip=KeyError), "lacks ip"),
        (_variant(valid_to_ns=KeyError, source=KeyError), "lacks valid_to_ns, source"),
        (_variant(ip="10.1.0.300"), "not an IP address"),
        (_variant(ip="fe80::1%eth0"), "not an IP address"),
        (_variant(ip="FD00::1"), "canonical form 'fd00::1'"),
        (_variant(ip=167837957), "ip must be a string, not an integer"),
        (_variant(kind="Pod"), "kind 'Pod'"),
        (_variant(name=""), "must not be empty"),
        (_variant(uid=None), "uid must be a string, not null"),
        (_variant(namespace=""), "kind pod with namespace ''"),
        (_variant(kind="node"), "kind node with namespace 'shop'"),
        (_variant(labels=["a"]), "labels must be an object"),
        (_variant(labels={"a": 1}), "labels must map strings"),
        (_variant(valid_from_ns=1.5), "valid_from_ns must be an integer, not a number"),
        (_variant(valid_from_ns=float(START_NS)), "valid_from_ns must be an integer"),
        (_variant(observed_ns=True), "observed_ns must be an integer, not a boolean"),
        (_variant(observed_ns="1"), "observed_ns must be an integer, not a string"),
        (_variant(valid_from_ns=-1), "outside"),
        (_variant(valid_to_ns=2**63), "outside"),
        (_variant(valid_to_ns=START_NS - 1), "before valid_from_ns"),
    ],
)
def test_event_from_json_rejects(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        event_from_json(data)


@settings(max_examples=300)
@given(st.binary(max_size=300) | JSON.map(lambda v: orjson.dumps(v, option=orjson.OPT_INDENT_2)))
def test_garbage_is_a_value_error(data: bytes) -> None:
    with contextlib.suppress(ValueError):
        event_from_json(data)


def test_every_truncation_is_rejected() -> None:
    data = event_to_json(sample_event())
    for i in range(len(data)):
        with pytest.raises(ValueError):
            event_from_json(data[:i])


def test_accepted_spellings() -> None:
    pretty = orjson.dumps(GOOD, option=orjson.OPT_INDENT_2)
    assert event_from_json(pretty) == sample_event()
    assert event_from_json(_variant(future_field={"x": 1})) == sample_event()
    escaped = event_to_json(sample_event()).replace(b'"shop"', b'"\\u0073hop"')
    assert event_from_json(escaped) == sample_event()
    assert event_from_json(bytearray(event_to_json(sample_event()))) == sample_event()


def test_event_to_json_refuses_what_cannot_be_read_back() -> None:
    for bad in (sample_event(ip="FD00::1"), sample_event(valid_to_ns=START_NS - 1), sample_event(kind="job"),
                sample_event(labels={"a": None})):  # fmt: skip
        with pytest.raises(ValueError):
            event_to_json(bad)


MUTATIONS = st.one_of(
    st.tuples(st.just("drop"), st.sampled_from(sorted(GOOD))),
    st.tuples(st.just("set"), st.sampled_from(sorted(GOOD)), JSON),
    st.tuples(st.just("set"), st.sampled_from(["valid_from_ns", "valid_to_ns", "observed_ns"]),
              st.integers(-(2**64), 2**64)),
    st.tuples(st.just("set"), st.sampled_from(["ip", "namespace", "name", "uid", "kind"]),
              st.sampled_from(["", "node", "pod", "service", "10.0.0.1", "::", "1.2.3", "fe80::1%0", "A::"])),
    st.tuples(st.just("set"), st.text(max_size=5), JSON),
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(MUTATIONS, min_size=1, max_size=3))
def test_event_from_json_rejects_what_the_schema_rejects(mutations: list[tuple]) -> None:
    doc = dict(GOOD)
    for op, key, *value in mutations:
        if op == "drop":
            doc.pop(key, None)
        else:
            doc[key] = value[0]
    try:
        data = orjson.dumps(doc)
    except TypeError:  # integers beyond 64 bits cannot even be written
        return
    schema_ok = VALIDATOR.is_valid(doc)
    try:
        accepted = event_from_json(data) is not None
    except ValueError:
        accepted = False
    assert schema_ok or not accepted, doc


# -- what the watcher keeps of an object -----------------------------------------------------------


def _outcome(obj: Any) -> Any:
    try:
        return _claims.events_from_object(obj, OBSERVED)
    except ValueError as exc:
        return f"ValueError: {exc}"


def test_slim_objects_make_the_same_claims_from_a_fraction_of_the_bytes() -> None:
    from pipeline.core.claims import slim_object
    from tests.standins.k8s_standin import make_node, make_pod, make_service

    pods = [make_pod("web-0", "shop", "10.1.0.5", owner=("ReplicaSet", "web-7d9f8b6c5d"), labels={"app": "web"}),
            make_pod("job-1", "batch", "10.1.0.6", phase="Succeeded", finished_ns=OBSERVED - 10**9),
            make_pod("pending", "shop", None, phase="Pending"), make_pod("host", "kube-system", "10.0.0.1",
                                                                          host_network=True)]
    for p in pods:  # what real pods carry besides: managed fields, container specs, env, volumes
        p["metadata"]["managedFields"] = [{"manager": "kubelet", "fieldsV1": {"f:status": {}}}] * 20
        p["spec"]["containers"] = [{"name": "main", "image": "registry/app:1.2.3", "env": [{"name": "X"}] * 30}]
    items = [*pods, make_service("web", "shop", "10.96.0.10"), make_node("node-1", "10.0.0.11")]
    for item in items:
        assert _outcome(slim_object(item)) == _outcome(item)
    full, slim = len(orjson.dumps(pods)), len(orjson.dumps([slim_object(p) for p in pods]))
    assert slim * 5 < full


_SHAPES = st.recursive(
    st.one_of(st.none(), st.integers(), st.text(max_size=3), st.sampled_from(["2026-11-24T12:00:00Z", "10.1.2.3"])),
    lambda inner: st.one_of(
        st.lists(inner, max_size=2),
        st.dictionaries(st.sampled_from(["state", "terminated", "finishedAt", "ip", "lastTransitionTime", "kind",
                                         "name", "controller"]), inner, max_size=3)),
    max_leaves=4)
_PATHS = [("metadata",), ("spec",), ("status",), ("status", "containerStatuses"), ("status", "conditions"),
          ("status", "podIPs"), ("metadata", "ownerReferences"), ("metadata", "labels"), ("status", "phase")]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(_PATHS), _SHAPES), min_size=1, max_size=3))
def test_slimming_never_changes_a_verdict_on_corrupted_objects(changes: list) -> None:
    from pipeline.core.claims import slim_object

    obj = copy.deepcopy(pod(phase="Succeeded"))
    for path, value in changes:
        target = obj
        for key in path[:-1]:
            target = target.get(key) if isinstance(target, dict) else None
        if isinstance(target, dict):
            target[path[-1]] = value
    assert _outcome(slim_object(obj)) == _outcome(obj)


@pytest.mark.parametrize(("stored", "key"), [
    ("10.1.2.3", "10.1.2.3"), ("::ffff:10.1.2.3", "10.1.2.3"),  # IPv4 comes back IPv4-mapped
    ("fd00:10:244:1::a", "fd00:10:244:1::a"), ("FD00:0:0:0::1", "fd00::1"), ("::1", "::1"),
])
def test_a_stored_address_reads_back_as_the_registry_keys_it(stored, key):
    """What repair and seeding read from ClickHouse names the claim keys the owners topic gave."""
    assert stored_ip_text(stored) == key
