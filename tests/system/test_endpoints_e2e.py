"""Services behind pod IPs, end to end: `flows up`, `flows inventory load` with EndpointSlices, shipped lines.

The same cluster twice: once as IPVS shows it (lines to ClusterIPs), once as kube-proxy's
iptables/nftables modes and Calico eBPF show it (lines to the backend pods, after DNAT). The
fan-out must be the same.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import orjson
import pytest
import yaml

from pipeline.core.calico_iface import cali_iface_name
from tests.standins.k8s_standin import (
    ThreadedStandIn,
    make_endpoint_slice,
    make_node,
    make_pod,
    make_service,
    write_kubeconfig,
)
from tests.system.test_attribution_e2e import fanout
from tests.system.test_attribution_e2e import ship_lines as ship
from tests.system.test_k8s_watch import WatcherProcess

pytestmark = pytest.mark.slow
HOUR = 3600 * 10**9
CLIENTS = {"a": "10.244.9.1", "b": "10.244.9.2"}


def inventory(path: Path) -> Path:
    start = time.time_ns() - HOUR
    items = [make_node("node-1", "10.0.0.11")]
    items += [make_pod(f"client-{ns}", ns, ip, start_ns=start) for ns, ip in CLIENTS.items()]
    items += [make_pod("coredns-a", "kube-system", "10.244.1.5", start_ns=start,
                       owner=("ReplicaSet", "coredns-5d78c9869d"), labels={"k8s-app": "kube-dns"}),
              make_pod("web-1", "shop", "10.244.3.3", start_ns=start, owner=("ReplicaSet", "web-7d9f8b6c5d"),
                       labels={"app": "web"}),
              make_pod("web-2", "shop", "10.244.3.4", start_ns=start, owner=("ReplicaSet", "web-7d9f8b6c5d"),
                       labels={"app": "web"})]
    items += [make_service("kube-dns", "kube-system", "10.96.0.10", created_ns=start),
              make_service("web", "shop", "10.96.5.5", created_ns=start),
              make_service("canary", "shop", "10.96.5.6", created_ns=start)]
    items += [
        make_endpoint_slice("kube-dns", "kube-system", [("10.244.1.5", "coredns-a", True)],
                            [("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")], created_ns=start),
        # web-2 fails its readiness probe: not an endpoint of web.
        make_endpoint_slice("web", "shop", [("10.244.3.3", "web-1", True), ("10.244.3.4", "web-2", False)],
                            [("http", 8080, "TCP")], created_ns=start),
        # canary selects web-1 too: two Services on one endpoint.
        make_endpoint_slice("canary", "shop", [("10.244.3.3", "web-1", True)], [("http", 8080, "TCP")],
                            created_ns=start),
    ]
    path.write_bytes(orjson.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    return path


def line(seq: int, ns: str, dst: str, dport: int, proto: str = "TCP", after_ns: int = 0) -> str:
    ts = time.time_ns() + after_ns
    iface, src = cali_iface_name(ns, f"client-{ns}"), CLIENTS[ns]
    message = (f"calico-packet: IN={iface} OUT=eth0 MAC=ee:ee:ee:ee:ee:ee:1e:0a:36:33:f5:09:08:00 SRC={src} "
               f"DST={dst} LEN=60 TOS=0x00 PREC=0x00 TTL=63 ID={seq} DF PROTO={proto} SPT={40000 + seq} "
               f"DPT={dport} LEN=40 ")
    if proto == "TCP":
        message = message.replace(f"DPT={dport} LEN=40 ", f"DPT={dport} WINDOW=64860 RES=0x00 SYN URGP=0 ")
    return json.dumps({"__CURSOR": f"s=svc;i={seq:x};b=boot;m=1;t={ts // 1000:x};x=0",
                       "__REALTIME_TIMESTAMP": str(ts // 1000), "_HOSTNAME": "node-1", "MESSAGE": message})


# (namespace, destination as IPVS shows it, as iptables/nftables/eBPF show it, protocol)
TRAFFIC = [
    ("a", ("10.96.0.10", 53), ("10.244.1.5", 53), "UDP"),  # kube-dns
    ("b", ("10.96.0.10", 53), ("10.244.1.5", 53), "UDP"),
    ("b", ("10.96.0.10", 53), ("10.244.1.5", 53), "TCP"),
    ("a", ("10.96.5.5", 80), ("10.244.3.3", 8080), "TCP"),  # the app Service (port 80 -> targetPort 8080)
    ("b", ("10.96.5.5", 80), ("10.244.3.3", 8080), "TCP"),
    ("a", ("10.244.3.4", 8080), ("10.244.3.4", 8080), "TCP"),  # a not-ready endpoint reached directly: a pod
    ("b", ("10.244.3.3", 9090), ("10.244.3.3", 9090), "TCP"),  # a port no Service exposes: a pod
]


def k8s_rules(stack, namespace: str) -> list[dict]:
    """The egress rules of the NetworkPolicy `flows policy` writes for ``namespace``."""
    return yaml.safe_load(stack.run("policy", namespace, "--format", "k8s", "--force").stdout)["spec"]["egress"]


def run_cluster(stack, tmp_path: Path, dnat: bool) -> list[dict]:
    stack.start()
    stack.run("inventory", "load", str(inventory(tmp_path / f"inventory-{dnat}.json")))
    lines = [line(i, ns, *(after if dnat else before), proto) for i, (ns, before, after, proto) in enumerate(TRAFFIC)]
    ship(stack, tmp_path, f"journal-{dnat}", lines)
    stack.wait_for_stored(len(TRAFFIC), 0)
    return stack.json("sql", "SELECT src_namespace AS ns, toString(dst_ip) AS ip, dst_port AS port, dst_kind AS kind, "
                             "dst_namespace AS dns, dst_name AS name, dst_pod AS pod FROM flows ORDER BY src_port")


def test_services_reached_through_their_pods_count_as_through_their_cluster_ips(stack_factory, tmp_path):
    ipvs = stack_factory("ipvs")
    via_cluster_ips = run_cluster(ipvs, tmp_path, dnat=False)
    expected = fanout(ipvs)
    policy = k8s_rules(ipvs, "a")
    ipvs.stop()
    iptables = stack_factory("iptables")
    via_pods = run_cluster(iptables, tmp_path, dnat=True)
    assert fanout(iptables) == expected
    # NetworkPolicy meets Service traffic after DNAT: either way the rule selects web's pods on 8080.
    assert k8s_rules(iptables, "a") == policy
    assert {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}},
                    "podSelector": {"matchLabels": {"app": "web"}}}],
            "ports": [{"protocol": "TCP", "port": 8080}]} in policy
    # Its replay decides the Service's backing pods from the endpoint claims (no inventory given).
    for fmt in ("k8s", "calico"):
        (replayed,) = iptables.json("replay", "--namespace", "a", "--policy-format", fmt)
        assert replayed["denied"] == [] and replayed.get("undecidable", []) == [], (fmt, replayed)
    assert expected["a"]["svc"] == 2 and expected["b"]["svc"] == 2 and expected["a"]["pod_ns"] == 1

    by_dst = {(r["ns"], r["ip"], r["port"]): r for r in via_pods}
    dns = by_dst[("a", "::ffff:10.244.1.5", 53)]
    assert (dns["kind"], dns["dns"], dns["name"], dns["pod"]) == ("service", "kube-system", "kube-dns", "coredns-a")
    # web-1 backs web and canary: the first by name is reported, the backing pod kept.
    app = by_dst[("a", "::ffff:10.244.3.3", 8080)]
    assert (app["kind"], app["name"], app["pod"]) == ("service", "canary", "web-1")
    assert (by_dst[("a", "::ffff:10.244.3.4", 8080)]["kind"], by_dst[("b", "::ffff:10.244.3.3", 9090)]["kind"]) == (
        "pod", "pod")
    assert [r["kind"] for r in via_cluster_ips] == [r["kind"] for r in via_pods]


def test_watched_endpoint_turning_not_ready_stops_backing_the_service(stack_factory, tmp_path):
    stack = stack_factory(FLOWS_DELETE_GRACE_S="1").start()
    start = time.time_ns() - HOUR
    ready = make_endpoint_slice("kube-dns", "kube-system", [("10.244.1.5", "coredns-a", True)],
                                [("dns", 53, "UDP")], created_ns=start)
    with ThreadedStandIn(bookmark_interval=1.0) as k8s:
        for plural, obj in (("nodes", make_node("node-1", "10.0.0.11")),
                            ("pods", make_pod("client-a", "a", CLIENTS["a"], start_ns=start)),
                            ("pods", make_pod("coredns-a", "kube-system", "10.244.1.5", start_ns=start)),
                            ("services", make_service("kube-dns", "kube-system", "10.96.0.10", created_ns=start)),
                            ("endpointslices", ready)):
            k8s.call(k8s.server.apply, plural, obj)
        watcher = WatcherProcess(stack, write_kubeconfig(tmp_path / "kubeconfig", k8s.server.url, k8s.server.token))
        try:
            watcher.start()
            stack.wait_for(lambda: watcher.metric("flows_owner_events_published_total", "endpoint") == 1,
                           what="the endpoint claim published")
            stack.wait_for(lambda: stack.status()["registry"]["open_claims"] == 7, what="7 open claims applied")
            ship(stack, tmp_path, "ready", [line(1, "a", "10.244.1.5", 53, "UDP")])
            stack.wait_for_stored(1, 0)
            not_ready = json.loads(json.dumps(ready))
            not_ready["endpoints"][0]["conditions"] = {"ready": False, "serving": False, "terminating": False}
            k8s.call(k8s.server.apply, "endpointslices", not_ready)
            stack.wait_for(lambda: stack.status()["registry"]["open_claims"] == 6, what="the endpoint claim closed")
            ship(stack, tmp_path, "not-ready", [line(2, "a", "10.244.1.5", 53, "UDP", after_ns=2 * 10**9)])
            stack.wait_for_stored(2, 0)
        finally:
            watcher.stop()
    assert stack.json("sql", "SELECT dst_kind AS kind, dst_name AS name, dst_pod AS pod FROM flows ORDER BY ts") == [
        {"kind": "service", "name": "kube-dns", "pod": "coredns-a"},
        {"kind": "pod", "name": "coredns-a", "pod": "coredns-a"}]
