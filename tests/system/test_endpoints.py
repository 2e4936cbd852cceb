"""Services behind pod IPs: EndpointSlices -> endpoint claims -> the registry -> enrichment.

kube-proxy's iptables/nftables modes and Calico eBPF DNAT Service traffic before Calico logs it, so
a line names the backend pod. These tests pin what an EndpointSlice claims, how the tracker diffs
slices, how the registry resolves (ip, port, protocol), and how a destination is classified; the
watcher is tested against the API stand-in, the whole path end to end in test_endpoints_e2e.py.
"""

from __future__ import annotations

import time
import tracemalloc

import orjson
import pytest
from jsonschema import Draft202012Validator

from pipeline.core.calico_iface import cali_iface_name
from pipeline.core.claims import event_from_json, event_to_json, events_from_list, events_from_object, slim_object
from pipeline.core.enrich import classify_ip
from pipeline.core.models import OwnerEvent
from pipeline.core.registry import OwnershipRegistry
from pipeline.k8s.apiserver import RESOURCES
from pipeline.k8s.tracker import OwnershipTracker
from tests.conftest import ROOT
from tests.standins.k8s_standin import make_endpoint_slice, make_service
from tests.system.test_k8s_watch import Harness, api, harness, kube, until  # noqa: F401 - fixtures

S = 10**9
T0 = 1_795_687_200 * S
SLICES = next(r for r in RESOURCES if r.plural == "endpointslices")
VALIDATOR = Draft202012Validator(orjson.loads((ROOT / "schemas" / "k8s.owners.v1.json").read_bytes()))


def dns_slice(endpoints: list[tuple[str, str, bool]], **kw) -> dict:
    return make_endpoint_slice("kube-dns", "kube-system", endpoints,
                               [("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("metrics", 9153, "TCP")],
                               uid="slice-dns", created_ns=T0, **kw)


def pod_claim(name: str, namespace: str, ip: str, start: int = T0) -> OwnerEvent:
    return OwnerEvent(ip=ip, kind="pod", namespace=namespace, name=name, uid=f"uid-{name}", valid_from_ns=start,
                      valid_to_ns=None, observed_ns=start, workload_kind="Deployment", workload=name.rsplit("-", 1)[0])


# -- claims -------------------------------------------------------------------------------------


def test_a_slice_claims_each_ready_address_per_port():
    obj = dns_slice([("10.244.1.5", "coredns-a", True), ("10.244.2.6", "coredns-b", False)])
    evs = events_from_object(obj, T0 + 5 * S, "watch")
    assert sorted((e.ip, e.port, e.protocol) for e in evs) == [
        ("10.244.1.5", 53, "TCP"), ("10.244.1.5", 53, "UDP"), ("10.244.1.5", 9153, "TCP")]
    e = evs[0]
    assert (e.kind, e.namespace, e.name, e.uid, e.target, e.node) == (
        "endpoint", "kube-system", "kube-dns", "slice-dns", "coredns-a", "node-1")
    assert (e.valid_from_ns, e.valid_to_ns, e.workload_kind) == (T0, None, "Service")
    assert {ev.key for ev in evs} == {f"endpoint/slice-dns/10.244.1.5/{p}" for p in ("53/UDP", "53/TCP", "9153/TCP")}
    assert events_from_object(slim_object(obj), T0 + 5 * S, "watch") == evs


@pytest.mark.parametrize(("conditions", "backs"), [
    ({}, True),  # unset: ready
    ({"ready": True}, True),
    ({"ready": False, "serving": False, "terminating": True}, False),
    ({"ready": False, "serving": True, "terminating": True}, True),  # draining: kube-proxy still sends
    ({"ready": False, "serving": True, "terminating": False}, False),  # failing its readiness probe
])
def test_which_conditions_back_the_service(conditions, backs):
    obj = dns_slice([("10.244.1.5", "coredns-a", True)])
    obj["endpoints"][0]["conditions"] = conditions
    assert bool(events_from_object(obj, T0)) is backs


def test_slices_that_are_no_services_and_malformed_ones():
    other = dns_slice([("10.244.1.5", "coredns-a", True)])
    del other["metadata"]["labels"]["kubernetes.io/service-name"]
    fqdn = {**dns_slice([("10.244.1.5", "coredns-a", True)]), "addressType": "FQDN"}
    assert events_from_object(other, T0) == [] and events_from_object(fqdn, T0) == []
    all_ports = make_endpoint_slice("ext", "a", [("10.244.1.5", "x", True)], [("", 0, "TCP")], created_ns=T0)
    all_ports["ports"][0].pop("port")
    assert [e.port for e in events_from_object(all_ports, T0)] == [0]  # no port: every port
    bad = dns_slice([("10.244.1.5", "coredns-a", True)])
    bad["endpoints"] = "nope"
    with pytest.raises(ValueError, match="endpoints"):
        events_from_object(bad, T0)


def test_inventory_load_accepts_kubectl_get_endpointslices():
    doc = {"apiVersion": "v1", "kind": "List", "items": [
        dns_slice([("10.244.1.5", "coredns-a", True)]),
        {**dns_slice([]), "endpoints": [{"addresses": ["nope"], "conditions": {"ready": True}}]},
        make_service("kube-dns", "kube-system", "10.96.0.10", created_ns=T0)]}
    evs, warnings = events_from_list(doc, T0)
    assert sorted(e.kind for e in evs) == ["endpoint"] * 3 + ["service"]
    assert len(warnings) == 1 and "'nope' is not an IP address" in warnings[0]
    typed = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList",
             "items": [{k: v for k, v in dns_slice([("10.244.1.5", "coredns-a", True)]).items() if k != "kind"}]}
    assert len(events_from_list(typed, T0)[0]) == 3


def test_endpoint_claims_round_trip_and_match_the_schema():
    for ev in events_from_object(dns_slice([("10.244.1.5", "coredns-a", True)]), T0):
        raw = event_to_json(ev)
        assert event_from_json(raw) == ev
        assert not list(VALIDATOR.iter_errors(orjson.loads(raw)))
    pod = pod_claim("web-1", "shop", "10.244.1.9")
    assert b"port" not in event_to_json(pod)  # other claims are encoded as before
    assert event_from_json(event_to_json(pod)) == pod
    bad = orjson.loads(event_to_json(events_from_object(dns_slice([("10.244.1.5", "c", True)]), T0)[0]))
    for field, value in (("port", 70000), ("protocol", "ICMP"), ("ip", "")):
        with pytest.raises(ValueError):
            event_from_json(orjson.dumps({**bad, field: value}))
        assert list(VALIDATOR.iter_errors({**bad, field: value}))
    with pytest.raises(ValueError, match="port, protocol or target"):
        event_from_json(orjson.dumps({**orjson.loads(event_to_json(pod)), "port": 80}))


# -- tracker ------------------------------------------------------------------------------------


def test_tracker_diffs_slices_endpoints_joining_turning_not_ready_and_the_slice_deleted():
    t = OwnershipTracker()
    added = t.observe("ADDED", dns_slice([("10.244.1.5", "coredns-a", True)]), T0 + S)
    assert len(added) == 3 and all(e.valid_from_ns == T0 for e in added)
    joined = t.observe("MODIFIED", dns_slice([("10.244.1.5", "coredns-a", True), ("10.244.2.6", "coredns-b", True)]),
                       T0 + 10 * S)
    assert {e.ip for e in joined} == {"10.244.2.6"} and all(e.valid_from_ns == T0 + 10 * S for e in joined)
    assert t.observe("MODIFIED", dns_slice([("10.244.1.5", "coredns-a", True), ("10.244.2.6", "coredns-b", True)]),
                     T0 + 11 * S) == []
    not_ready = t.observe("MODIFIED", dns_slice([("10.244.1.5", "coredns-a", False),
                                                 ("10.244.2.6", "coredns-b", True)]), T0 + 20 * S)
    assert {(e.ip, e.valid_to_ns) for e in not_ready} == {("10.244.1.5", T0 + 20 * S)}
    back = t.observe("MODIFIED", dns_slice([("10.244.1.5", "coredns-a", True), ("10.244.2.6", "coredns-b", True)]),
                     T0 + 30 * S)
    assert {(e.ip, e.valid_from_ns, e.valid_to_ns) for e in back} == {("10.244.1.5", T0 + 30 * S, None)}
    gone = t.observe("DELETED", dns_slice([("10.244.1.5", "coredns-a", True), ("10.244.2.6", "coredns-b", True)]),
                     T0 + 40 * S)
    assert len(gone) == 6 and all(e.valid_to_ns == T0 + 40 * S for e in gone)
    keys = t.expire(T0 + 41 * S)
    assert len(keys) == 6 and all(k.startswith("endpoint/slice-dns/") for k in keys)


def test_an_endpoint_of_a_slice_that_had_none_ready_starts_when_it_turns_ready():
    t = OwnershipTracker()
    assert t.observe("ADDED", dns_slice([("10.244.1.5", "coredns-a", False)]), T0 + S) == []
    ready = t.observe("MODIFIED", dns_slice([("10.244.1.5", "coredns-a", True)]), T0 + 9 * S)
    assert len(ready) == 3 and {e.valid_from_ns for e in ready} == {T0 + 9 * S}


def test_tracker_forgets_an_endpoint_tombstone_and_relist_closes_a_vanished_slice():
    t = OwnershipTracker()
    evs = t.relist("EndpointSlice", [dns_slice([("10.244.1.5", "coredns-a", True)])], T0 + S)
    t.forget(evs[0].key)
    assert t.stats()["open_claims"] == 2
    closed = t.relist("EndpointSlice", [], T0 + 5 * S, namespace="kube-system")
    assert len(closed) == 2 and all(e.valid_to_ns == T0 + 5 * S for e in closed)


# -- registry and enrichment ---------------------------------------------------------------------


def registry(*slices: dict) -> OwnershipRegistry:
    reg = OwnershipRegistry(grace_ns=30 * S)
    for ev in (pod_claim("coredns-a", "kube-system", "10.244.1.5"), pod_claim("web-1", "shop", "10.244.3.3"),
               pod_claim("client-1", "a", "10.244.9.9")):
        reg.apply(ev)
    for obj in slices:
        for ev in events_from_object(obj, T0):
            reg.apply(ev)
    return reg


def test_a_backend_pod_on_a_service_port_is_the_service_the_backing_pod_kept():
    reg = registry(dns_slice([("10.244.1.5", "coredns-a", True)]))
    assert classify_ip("10.244.1.5", T0 + S, reg, 53, "UDP") == ("service", "kube-system", "Service", "kube-dns",
                                                                 "coredns-a")
    # A port or protocol no Service exposes, ICMP, or no port given: still the pod.
    pod = ("pod", "kube-system", "Deployment", "coredns", "coredns-a")
    assert classify_ip("10.244.1.5", T0 + S, reg, 8080, "TCP") == pod
    assert classify_ip("10.244.1.5", T0 + S, reg, 9153, "UDP") == pod
    assert classify_ip("10.244.1.5", T0 + S, reg, None, "ICMP") == pod
    assert classify_ip("10.244.1.5", T0 + S, reg) == pod
    assert classify_ip("10.244.1.5", T0 - S, reg, 53, "UDP")[0] == "unknown"  # before the slice and the pod


def test_a_claim_naming_another_pod_than_the_ip_holder_is_stale():
    reg = registry(dns_slice([("10.244.1.5", "coredns-a", True)]))
    reg.apply(OwnerEvent(ip="10.244.1.5", kind="pod", namespace="b", name="reuser", uid="uid-reuser",
                         valid_from_ns=T0 + 50 * S, valid_to_ns=None, observed_ns=T0 + 50 * S))
    assert classify_ip("10.244.1.5", T0 + 60 * S, reg, 53, "UDP")[:4] == ("pod", "b", "", "reuser")


def test_two_services_on_one_endpoint_resolve_to_the_first_by_namespace_and_name():
    web = make_endpoint_slice("web", "shop", [("10.244.3.3", "web-1", True)], [("http", 8080, "TCP")],
                              uid="slice-web", created_ns=T0)
    canary = make_endpoint_slice("canary", "shop", [("10.244.3.3", "web-1", True)], [("http", 8080, "TCP")],
                                 uid="slice-canary", created_ns=T0 + 5 * S)
    for order in ((web, canary), (canary, web)):
        reg = registry(*order)
        assert classify_ip("10.244.3.3", T0 + 2 * S, reg, 8080, "TCP")[3] == "web"  # canary not there yet
        assert classify_ip("10.244.3.3", T0 + 9 * S, reg, 8080, "TCP")[3] == "canary"


def test_an_ended_endpoint_answers_for_the_grace_then_the_pod_does():
    reg = registry()
    ev = events_from_object(dns_slice([("10.244.1.5", "coredns-a", True)]), T0)[0]
    reg.apply(ev)
    reg.apply(OwnerEvent(**{**{f: getattr(ev, f) for f in ev.__slots__}, "valid_to_ns": T0 + 10 * S,
                            "observed_ns": T0 + 10 * S}))
    port, proto = ev.port, ev.protocol
    assert classify_ip("10.244.1.5", T0 + 20 * S, reg, port, proto)[0] == "service"  # within the grace
    assert classify_ip("10.244.1.5", T0 + 41 * S, reg, port, proto)[0] == "pod"
    assert reg.prune(T0 + reg.history_ns + 11 * S) == 1
    assert classify_ip("10.244.1.5", T0 + 20 * S, reg, port, proto)[0] == "pod"


def test_repair_classifies_the_destination_as_ingest_does():
    from pipeline.core.enrich import Batch, add_record
    from pipeline.core.models import RawRecord
    from pipeline.core.reattribute import reattribute
    from pipeline.core.rows import FLOW_COLUMNS

    message = (f"calico-packet: IN={cali_iface_name('a', 'client-1')} OUT=eth0 SRC=10.244.9.9 DST=10.244.1.5 "
               "LEN=60 TOS=0x00 PREC=0x00 TTL=63 ID=1 PROTO=UDP SPT=40000 DPT=53 LEN=40 ")
    batch = Batch()
    add_record(batch, RawRecord("a" * 32, T0 + S, "n1", message, "journal"), OwnershipRegistry(), "calico-packet",
               "cali")
    stored = batch.flow_data.row(0)
    assert stored[FLOW_COLUMNS.index("dst_kind")] == "unknown"  # nothing known at ingest
    reg = registry(dns_slice([("10.244.1.5", "coredns-a", True)]))
    (fixed,) = reattribute([(*stored, 0)], reg, "cali")
    dst = FLOW_COLUMNS.index("dst_kind")
    assert fixed[FLOW_COLUMNS.index("src_namespace")] == "a"
    assert fixed[dst:dst + 5] == ("service", "kube-system", "Service", "kube-dns", "coredns-a")
    again = Batch()
    add_record(again, RawRecord("a" * 32, T0 + S, "n1", message, "journal"), reg, "calico-packet", "cali")
    assert again.flow_data.row(0)[dst:dst + 5] == fixed[dst:dst + 5]


def test_a_clusterip_destination_is_unchanged():
    reg = registry(dns_slice([("10.244.1.5", "coredns-a", True)]))
    for ev in events_from_object(make_service("kube-dns", "kube-system", "10.96.0.10", created_ns=T0), T0):
        reg.apply(ev)
    assert classify_ip("10.96.0.10", T0 + S, reg, 53, "UDP") == ("service", "kube-system", "Service", "kube-dns", "")


def test_endpoint_claim_memory_is_bounded_per_endpoint():
    """Measured, not a speed target: what one endpoint claim costs in the registry (docs/design.md)."""
    slices = [make_endpoint_slice(f"svc{i}", f"ns{i % 50}", [(f"10.{i // 250}.{i % 250}.{j}", f"p{i}-{j}", True)
                                                             for j in range(10)], [("http", 8080, "TCP")],
                                  created_ns=T0) for i in range(1000)]
    events = [ev for obj in slices for ev in events_from_object(obj, T0)]
    reg = OwnershipRegistry()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for ev in events:
        reg.apply(ev)
    per_claim = (tracemalloc.get_traced_memory()[0] - before) / len(events)
    tracemalloc.stop()
    print(f"\n{per_claim:.0f} B per endpoint claim ({len(events)} claims)")
    assert reg.stats()["claims"] == len(events) == 10_000
    assert per_claim < 512


# -- stored: what a registry seeded from ClickHouse knows ----------------------------------------


def test_stored_endpoint_claims_load_back_latest_observation_and_never_as_ip_owners(tmp_path):
    from pipeline.store import clickhouse as ch
    from pipeline.store.ownership import claim_rows, load_ownership

    client = ch.connect(f"chdb://{tmp_path / 'data'}", database="endpoints")
    try:
        ch.migrate(client)
        now = time.time_ns() // 1000 * 1000
        opened = [ev for ev in events_from_object(dns_slice([("10.244.1.5", "coredns-a", True)]), now) if ev.port == 53]
        closed = [OwnerEvent(**{**{f: getattr(ev, f) for f in ev.__slots__}, "valid_to_ns": now + S,
                                "observed_ns": now + S}) for ev in opened]
        pod = pod_claim("coredns-a", "kube-system", "10.244.1.5", start=now)
        for batch in ([pod, *opened], closed, opened):  # the close, then a stale replay of the open claims
            for table, columns, cols in claim_rows(batch):
                ch.insert_columns(client, table, columns, [cols[c] for c in columns])
        loaded = load_ownership(client, 86400 * S)
        assert sorted(loaded, key=lambda e: e.key) == sorted([pod, *closed], key=lambda e: e.key)
        assert client.query("SELECT kind, name FROM owner_at(ip='10.244.1.5', at=now64(6))").result_rows == [
            ("pod", "coredns-a")]
    finally:
        client.close()


# -- watcher against the API stand-in ------------------------------------------------------------


async def test_watcher_lists_and_watches_endpointslices_of_the_discovery_group(api, harness):  # noqa: F811
    api.apply("endpointslices", dns_slice([("10.244.1.5", "coredns-a", True)]))
    h = await harness(resource=SLICES, page_size=1).start()
    assert any(path == "/apis/discovery.k8s.io/v1/endpointslices" for _, path, _ in api.requests)
    assert len(h.published) == 3
    await until(lambda: api.open_watches == 1, what="the watch")
    api.apply("endpointslices", dns_slice([("10.244.1.5", "coredns-a", False)]))
    await until(lambda: len(h.published) == 6, what="the not-ready endpoint's claims closed")
    assert all(e.valid_to_ns is not None for e in h.published[3:])
    api.apply("endpointslices", make_endpoint_slice("web", "shop", [("10.244.3.3", "web-1", True)],
                                                    [("http", 8080, "TCP")]))
    api.compact()
    api.disconnect_watches()  # 410 on the re-watch: a re-list, nothing lost
    await until(lambda: any(e.name == "web" for e in h.published), what="the slice added across a 410")
    assert [e.key for e in h.published if e.name == "web"] == [h.published[-1].key]


async def test_namespaced_watcher_follows_the_namespaces_slices(api, harness):  # noqa: F811
    api.apply("endpointslices", dns_slice([("10.244.1.5", "coredns-a", True)]))
    api.apply("endpointslices", make_endpoint_slice("web", "shop", [("10.244.3.3", "web-1", True)],
                                                    [("http", 8080, "TCP")]))
    h = await harness(resource=SLICES, namespace="shop").start()
    assert any(path == "/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices" for _, path, _ in api.requests)
    assert {e.name for e in h.published} == {"web"}

