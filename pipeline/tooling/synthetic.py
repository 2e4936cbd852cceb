"""Deterministic synthetic corpora with independently computed ground truth.

End-to-end tests, ``flows demo`` and benchmarks need journals that look like a
real cluster's (kernel nf_log lines, journald cursors, a kubectl inventory with
finished pods, reused IPs, hostNetwork pods, dual-stack) *and* the answer they
should produce. The answer is computed from the model that generated the lines
(which pod sent what, when), never by parsing them, so a parser or registry bug
cannot hide by agreeing with itself.

The model: ~6 nodes (the first three carry an IPv6 pool, one runs a Calico
nftables build that prints ``calico-packetIN=`` at priority 6), ``namespaces``
namespaces with Deployments/StatefulSets/DaemonSets/CronJobs, each namespace
with an egress profile (peer namespaces, Services, external IPs, maybe a node
IP, maybe an unknown private IP). Scenarios included on purpose are listed in
``Corpus.scenarios`` with their distinct-entry counts.
"""

from __future__ import annotations

import ipaddress
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from pipeline.basics.timespec import format_rfc3339_ns
from pipeline.core.calico_iface import cali_iface_name

DEFAULT_START = datetime(2026, 11, 20, tzinfo=UTC)
"""Fixed default start so that a corpus is reproducible from its seed alone."""

NODES = 6
CALICO_PREFIX = "calico-packet: "
NFT_PREFIX = "calico-packet"  # Calico 3.30.0-3.30.5 / 3.31.0-3.31.3 nftables builds
SERVICE_CIDR = "10.96.0.0/12"
SERVICE_CIDR6 = "fd00:10:96::/112"
KUBE_DNS_IP = "10.96.0.10"
KUBE_DNS_IP6 = "fd00:10:96::a"
KUBERNETES_IP = "10.96.0.1"

# (ip, proto, port): globally routable (``is_global``), never documentation ranges.
EXTERNAL_V4: tuple[tuple[str, str, int], ...] = (
    ("8.8.8.8", "UDP", 53),
    ("8.8.4.4", "UDP", 53),
    ("1.1.1.1", "UDP", 53),
    ("1.0.0.1", "TCP", 443),
    ("140.82.112.3", "TCP", 443),
    ("140.82.114.4", "TCP", 443),
    ("151.101.1.69", "TCP", 443),
    ("151.101.65.69", "TCP", 443),
    ("185.199.108.153", "TCP", 443),
    ("104.16.132.229", "TCP", 443),
    ("13.107.42.14", "TCP", 443),
    ("142.250.74.78", "TCP", 443),
    ("52.216.8.10", "TCP", 443),
    ("3.5.140.2", "TCP", 443),
    ("34.117.59.81", "TCP", 443),
    ("54.239.28.85", "TCP", 443),
    ("69.147.80.15", "TCP", 80),
    ("162.159.200.1", "UDP", 123),
    ("17.253.144.10", "UDP", 123),
    ("93.184.215.14", "TCP", 80),
)
EXTERNAL_V6: tuple[tuple[str, str, int], ...] = (
    ("2606:4700::6810:84e5", "TCP", 443),
    ("2a00:1450:4001:82b::200e", "TCP", 443),
    ("2620:1ec:c11::200", "TCP", 443),
    ("2606:4700:4700::1111", "UDP", 53),
    ("2001:4860:4860::8888", "UDP", 53),
)
PING_V4 = ("8.8.8.8", "1.1.1.1")
PING_V6 = "2606:4700:4700::1111"
# Clients that open connections *into* pods (ingress lines, never in fan-out).
CLIENTS_V4 = ("81.2.69.142", "89.160.20.112", "216.160.83.56", "2.125.160.216")
CLIENT_V6 = "2a02:6b8::2:242"
UNKNOWN_V6 = ("fd00:dead::1", "fd00:dead::beef")

_NAMES = (
    "payments",
    "checkout",
    "catalog",
    "search",
    "auth",
    "billing",
    "orders",
    "inventory",
    "shipping",
    "notifications",
    "analytics",
    "reporting",
    "ml-training",
    "data-ingest",
    "etl",
    "monitoring",
    "logging",
    "ingress-nginx",
    "cert-manager",
    "argocd",
    "vault",
    "redis",
    "postgres",
    "kafka",
    "web",
    "api-gateway",
    "frontend",
    "admin",
    "backoffice",
    "crm",
    "ledger",
    "fraud",
    "recommendations",
    "media",
    "uploads",
    "thumbnails",
    "mailer",
    "scheduler",
    "pricing",
    "tenants",
    "webhooks",
    "geo",
)
_WORKLOADS = ("api", "worker", "web", "db", "cache", "sync", "consumer", "gateway", "exporter", "indexer")
_CRONJOBS = ("backup", "nightly-report", "cleanup", "sync-job", "rotate-keys", "export")
_PORTS = (8080, 8443, 9090, 5432, 6379, 3306, 9092, 50051, 80, 443)
_SAFE = "bcdfghjklmnpqrstvwxz2456789"  # k8s rand.SafeEncodeString alphabet
_KMSG = (
    ("4", "nf_conntrack: nf_conntrack: table full, dropping packet"),
    ("6", "IPv6: ADDRCONF(NETDEV_CHANGE): {iface}: link becomes ready"),
    ("6", "eth0: renamed from tmp{hex}"),
    ("6", "{iface}: entered promiscuous mode"),
    ("3", "IPVS: rr: TCP 10.96.0.1:443 - no destination available"),
    (
        "4",
        "IPTables-Dropped: IN=eth0 OUT= MAC=0a:1b:2c:3d:4e:5f:0a:ff:ee:dd:cc:bb:08:00 SRC=81.2.69.142 "
        "DST=10.0.0.11 LEN=44 TOS=0x00 PREC=0x00 TTL=241 ID=54321 PROTO=TCP SPT=51234 DPT=22 "
        "WINDOW=1024 RES=0x00 SYN URGP=0 ",
    ),
    (
        "5",
        'audit: type=1400 audit({sec}.123:{n}): apparmor="STATUS" operation="profile_replace" '
        'name="cri-containerd.apparmor.d" pid={n} comm="apparmor_parser"',
    ),
    ("4", "TCP: request_sock_TCP: Possible SYN flooding on port 10250. Sending cookies."),
)


@dataclass
class Expected:
    """What a correct pipeline must report for a corpus."""

    fanout: dict[str, dict[str, int]]
    records: int
    rejected: int
    ignored: int
    unowned_sources: int


@dataclass
class Corpus:
    """A generated inventory + journal and the answer computed from the model."""

    inventory: dict
    journal: list[str]
    expected: Expected
    start_ns: int
    end_ns: int
    scenarios: dict[str, int] = field(default_factory=dict)
    """Distinct entries per deliberate scenario (``duplicates``: extra repeated lines)."""


@dataclass(slots=True)
class _Node:
    name: str
    idx: int
    ip: str
    external_ip: str | None
    v6: bool
    nft: bool
    mac: str
    gw_mac: str
    vxlan_mac: str
    boot_id: str
    machine_id: str
    seqnum_id: str
    boot_us: int
    uid: str
    created_us: int
    next_offset: int = 10
    seq: int = 0


@dataclass(slots=True)
class _Pod:
    namespace: str
    name: str
    uid: str
    node: _Node | None
    ip4: str | None
    ip6: str | None
    ip6x: str | None
    host_network: bool
    created_us: int
    start_us: int | None
    finish_us: int | None
    phase: str
    workload_kind: str
    workload: str
    owner_kind: str
    owner_name: str
    owner_uid: str
    labels: dict[str, str]
    image: str
    mac: str
    iface: str
    live_from: int = 0
    live_to: int = 1 << 62
    exit_code: int = 0

    def alive(self, ts_us: int) -> bool:
        return self.live_from <= ts_us < self.live_to


@dataclass(slots=True)
class _Service:
    namespace: str
    name: str
    uid: str
    kind: str  # ClusterIP | Headless | ExternalName
    ip4: str | None
    ip6: str | None
    port: int
    proto: str
    selector: dict[str, str]
    created_us: int


@dataclass(slots=True)
class _Dest:
    cls: str  # pod | svc | external | node | unknown
    key: str  # namespace for pod, ns/name for svc, normalized IP otherwise
    ip4: str | None
    ip6x: str | None
    proto: str
    port: int
    weight: float


@dataclass(slots=True)
class _Entry:
    ts_us: int
    node: _Node
    message: str
    priority: str
    kind: str  # calico | malformed | kernel | kubelet


def _rfc3339(us: int) -> str:
    return format_rfc3339_ns(us * 1000, digits=0)


class _Gen:
    """One generation run: the model, the emitted entries and the truth they imply."""

    def __init__(
        self,
        seed: int,
        namespaces: int,
        records: int,
        start: datetime,
        duration_s: int,
        nft_prefix_nodes: int,
    ) -> None:
        if namespaces < 4:
            raise ValueError("namespaces must be >= 4 (kube-system, default and two application namespaces)")
        if duration_s < 600:
            raise ValueError("duration_s must be >= 600")
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        self.rng = random.Random(seed)
        self.n_namespaces = namespaces
        self.n_records = records
        self.start_us = int(start.timestamp()) * 1_000_000
        self.dur_us = duration_s * 1_000_000
        self.end_us = self.start_us + self.dur_us
        self.nft_prefix_nodes = nft_prefix_nodes
        self.nodes: list[_Node] = []
        self.ns_names: list[str] = []
        self.ns_labels: dict[str, dict[str, str]] = {}
        self.ns_created: dict[str, int] = {}
        self.pods: list[_Pod] = []
        self.pods_by_ns: dict[str, list[_Pod]] = {}
        self.services: list[_Service] = []
        self.profiles: dict[str, list[_Dest]] = {}
        self.ns_port: dict[str, int] = {}
        self.used_svc_ips: set[int] = set()
        self.entries: list[_Entry] = []
        self.fan_sets: dict[str, dict[str, set[str]]] = {}
        self.fan_conn: dict[str, int] = {}
        self.scen: dict[str, int] = {}
        self.ghosts: list[tuple[str, str, _Node, str]] = []
        self.job_pod: _Pod | None = None
        self.reuse_pod: _Pod | None = None
        self._force_profile: tuple[str, ...] = ()

    # ---------------------------------------------------------------- helpers
    def _uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _hex(self, bits: int) -> str:
        return f"{self.rng.getrandbits(bits):0{bits // 4}x}"

    def _suffix(self, n: int) -> str:
        return "".join(self.rng.choices(_SAFE, k=n))

    def _mac(self) -> str:
        b = [0x02] + [self.rng.randrange(256) for _ in range(5)]
        return ":".join(f"{x:02x}" for x in b)

    def _count(self, name: str, n: int = 1) -> None:
        self.scen[name] = self.scen.get(name, 0) + n

    def _alloc_ip(self, node: _Node) -> tuple[str, str | None, str | None]:
        """Next pod address(es) from the node's block; ghosts use offsets >= 3500, never reached here."""
        node.next_offset += self.rng.randint(1, 2)
        if node.next_offset >= 3500:
            raise ValueError("too many pods for the synthetic address plan; lower `namespaces`")
        base = int(ipaddress.IPv4Address(f"10.244.{node.idx * 16}.0"))
        ip4 = str(ipaddress.IPv4Address(base + node.next_offset))
        if not node.v6:
            return ip4, None, None
        a6 = ipaddress.IPv6Address(f"fd00:10:244:{node.idx:x}::{node.next_offset:x}")
        return ip4, a6.compressed, a6.exploded

    def _svc_ip(self) -> str:
        base = int(ipaddress.IPv4Address("10.96.0.0"))
        while True:
            off = self.rng.randrange(16, (1 << 20) - 1)
            if off not in self.used_svc_ips:
                self.used_svc_ips.add(off)
                return str(ipaddress.IPv4Address(base + off))

    # ------------------------------------------------------------------ model
    def build_nodes(self) -> None:
        for i in range(NODES):
            boot_us = (
                self.start_us - self.rng.randint(2, 60) * 86_400_000_000 - self.rng.randrange(86_400_000_000)
            )
            self.nodes.append(
                _Node(
                    name=f"node{i + 1}",
                    idx=i + 1,
                    ip=f"10.0.0.{11 + i}",
                    external_ip=f"35.204.10.{21 + i}" if i % 2 == 0 else None,
                    v6=i < 3,
                    nft=i >= NODES - self.nft_prefix_nodes,
                    mac=self._mac(),
                    gw_mac=self._mac(),
                    vxlan_mac=self._mac(),
                    boot_id=self._hex(128),
                    machine_id=self._hex(128),
                    seqnum_id=self._hex(128),
                    boot_us=boot_us,
                    uid=self._uid(),
                    created_us=self.start_us - 200 * 86_400_000_000,
                )
            )

    def _add_ns(self, name: str, labels: dict[str, str]) -> None:
        self.ns_names.append(name)
        self.ns_labels[name] = {"kubernetes.io/metadata.name": name, **labels}
        self.ns_created[name] = self.start_us - self.rng.randint(30, 300) * 86_400_000_000
        self.pods_by_ns[name] = []
        self.ns_port[name] = self.rng.choice(_PORTS)

    def build_namespaces(self) -> list[str]:
        self._add_ns("kube-system", {})
        self._add_ns("default", {})
        pool = list(_NAMES)
        self.rng.shuffle(pool)
        apps: list[str] = []
        i = 0
        while len(apps) < self.n_namespaces - 2:
            name = pool[i] if i < len(pool) else f"{pool[i % len(pool)]}-{i // len(pool) + 1}"
            i += 1
            apps.append(name)
            self._add_ns(name, {"team": f"team-{self.rng.randint(1, 12):02d}"})
        return apps

    def _new_pod(
        self,
        ns: str,
        name: str,
        node: _Node | None,
        *,
        kind: str,
        workload: str,
        owner_kind: str,
        owner_name: str,
        owner_uid: str,
        labels: dict[str, str],
        created_us: int,
        start_us: int | None,
        finish_us: int | None = None,
        phase: str = "Running",
        host_network: bool = False,
        ips: tuple[str, str | None, str | None] | None = None,
    ) -> _Pod:
        if node is None:
            ip4 = ip6 = ip6x = None
        elif host_network:
            ip4, ip6, ip6x = node.ip, None, None
        else:
            ip4, ip6, ip6x = ips if ips is not None else self._alloc_ip(node)
        version = f"1.{self.rng.randint(0, 30)}.{self.rng.randint(0, 9)}"
        pod = _Pod(
            namespace=ns,
            name=name,
            uid=self._uid(),
            node=node,
            ip4=ip4,
            ip6=ip6,
            ip6x=ip6x,
            host_network=host_network,
            created_us=created_us,
            start_us=start_us,
            finish_us=finish_us,
            phase=phase,
            workload_kind=kind,
            workload=workload,
            owner_kind=owner_kind,
            owner_name=owner_name,
            owner_uid=owner_uid,
            labels=labels,
            image=f"registry.example.com/{ns}/{workload}:{version}",
            mac=self._mac(),
            iface=cali_iface_name(ns, name),
        )
        # Margins keep every line clearly inside the ownership interval (inventory times are whole seconds).
        if start_us is None or phase == "Pending":
            pod.live_from, pod.live_to = 1 << 62, 0
        else:
            pod.live_from = start_us + 5_000_000
            if finish_us is not None:
                pod.live_to = finish_us - 2_000_000
        self.pods.append(pod)
        self.pods_by_ns[ns].append(pod)
        return pod

    def _old_times(self) -> tuple[int, int]:
        created = (
            self.start_us - self.rng.randint(1, 40) * 86_400_000_000 - self.rng.randrange(86_400) * 1_000_000
        )
        return created, created + self.rng.randint(2, 10) * 1_000_000

    def _deployment(
        self, ns: str, name: str, replicas: int, late_ok: bool = True, nodes: list[_Node] | None = None,
        labels: dict[str, str] | None = None,
    ) -> list[_Pod]:
        rs_hash = self._suffix(10)
        rs, rs_uid = f"{name}-{rs_hash}", self._uid()
        out = []
        for r in range(replicas):
            created, started = self._old_times()
            if late_ok and r > 0 and self.rng.random() < 0.1:  # scaled up during the window
                started = (
                    self.start_us + int(self.dur_us * self.rng.uniform(0.05, 0.6)) // 1_000_000 * 1_000_000
                )
                created = started - 3_000_000
            out.append(
                self._new_pod(
                    ns,
                    f"{rs}-{self._suffix(5)}",
                    nodes[r] if nodes else self.rng.choice(self.nodes),
                    kind="Deployment",
                    workload=name,
                    owner_kind="ReplicaSet",
                    owner_name=rs,
                    owner_uid=rs_uid,
                    labels={"app": name, **(labels or {}), "pod-template-hash": rs_hash},
                    created_us=created,
                    start_us=started,
                )
            )
        return out

    def _statefulset(self, ns: str, name: str, replicas: int) -> None:
        uid, rev = self._uid(), f"{name}-{self._suffix(10)}"
        for r in range(replicas):
            created, started = self._old_times()
            pod = f"{name}-{r}"
            self._new_pod(
                ns,
                pod,
                self.rng.choice(self.nodes),
                kind="StatefulSet",
                workload=name,
                owner_kind="StatefulSet",
                owner_name=name,
                owner_uid=uid,
                labels={
                    "app": name,
                    "controller-revision-hash": rev,
                    "statefulset.kubernetes.io/pod-name": pod,
                },
                created_us=created,
                start_us=started,
            )

    def _daemonset(self, ns: str, name: str, host_network: bool) -> None:
        uid, rev = self._uid(), self._suffix(10)
        for node in self.nodes:
            created, started = self._old_times()
            self._new_pod(
                ns,
                f"{name}-{self._suffix(5)}",
                node,
                kind="DaemonSet",
                workload=name,
                owner_kind="DaemonSet",
                owner_name=name,
                owner_uid=uid,
                labels={"app": name, "controller-revision-hash": rev, "pod-template-generation": "1"},
                created_us=created,
                start_us=started,
                host_network=host_network,
            )

    def _job_pod(
        self,
        ns: str,
        cronjob: str,
        run_from: int,
        run_to: int,
        node: _Node | None = None,
        phase: str = "Succeeded",
    ) -> _Pod:
        run_from = run_from // 1_000_000 * 1_000_000
        run_to = run_to // 1_000_000 * 1_000_000
        job = f"{cronjob}-{run_from // 60_000_000}"
        job_uid = self._uid()
        pod = self._new_pod(
            ns,
            f"{job}-{self._suffix(5)}",
            node or self.rng.choice(self.nodes),
            kind="CronJob",
            workload=cronjob,
            owner_kind="Job",
            owner_name=job,
            owner_uid=job_uid,
            labels={
                "batch.kubernetes.io/controller-uid": job_uid,
                "batch.kubernetes.io/job-name": job,
                "controller-uid": job_uid,
                "job-name": job,
            },
            created_us=run_from - 1_000_000,
            start_us=run_from,
            finish_us=run_to,
            phase=phase,
        )
        pod.exit_code = 0 if phase == "Succeeded" else 1
        return pod

    def _cronjob(self, ns: str, name: str) -> None:
        for _ in range(self.rng.randint(1, 3)):
            t0 = self.start_us + int(self.dur_us * self.rng.uniform(0.02, 0.9))
            self._job_pod(ns, name, t0, t0 + int(self.dur_us * self.rng.uniform(0.01, 0.04)) + 30_000_000)

    def _service(
        self,
        ns: str,
        name: str,
        port: int,
        proto: str = "TCP",
        kind: str = "ClusterIP",
        ip4: str | None = None,
        ip6: str | None = None,
        dual: bool = False,
        app: str | None = None,
    ) -> _Service:
        if kind == "ClusterIP":
            ip4 = ip4 or self._svc_ip()
            if dual and ip6 is None:
                ip6 = str(
                    ipaddress.IPv6Address(
                        int(ipaddress.IPv6Address("fd00:10:96::"))
                        + int(ipaddress.IPv4Address(ip4))
                        - int(ipaddress.IPv4Address("10.96.0.0"))
                    )
                )
        svc = _Service(
            ns,
            name,
            self._uid(),
            kind,
            ip4,
            ip6,
            port,
            proto,
            {"app": app or name},
            self.start_us - self.rng.randint(1, 200) * 86_400_000_000,
        )
        self.services.append(svc)
        return svc

    def build_workloads(self, apps: list[str]) -> None:
        rng = self.rng
        # kube-system: hostNetwork DaemonSets sharing node IPs, CoreDNS behind kube-dns.
        self._daemonset("kube-system", "calico-node", host_network=True)
        self._daemonset("kube-system", "kube-proxy", host_network=True)
        # CoreDNS pods carry the label the kube-dns Service selects (and generated policies allow DNS by)
        self._deployment("kube-system", "coredns", 2, late_ok=False, nodes=[self.nodes[0], self.nodes[4]],
                         labels={"k8s-app": "kube-dns"})
        self._service("kube-system", "kube-dns", 53, "UDP", ip4=KUBE_DNS_IP, ip6=KUBE_DNS_IP6, dual=True)
        self._service("default", "kubernetes", 443, ip4=KUBERNETES_IP)
        for ns in apps:
            names = list(_WORKLOADS)
            rng.shuffle(names)
            for w in range(rng.randint(1, 3)):
                kind = rng.choices(("Deployment", "StatefulSet", "CronJob", "DaemonSet"), (60, 15, 15, 10))[0]
                if w == 0 and kind == "DaemonSet":
                    kind = "Deployment"  # every namespace keeps one ordinary workload
                name = names[w]
                if kind == "Deployment":
                    self._deployment(ns, name, rng.randint(1, 4))
                    if rng.random() < 0.7:
                        self._service(ns, name, self.ns_port[ns], dual=rng.random() < 0.3)
                elif kind == "StatefulSet":
                    self._statefulset(ns, name, rng.randint(1, 3))
                    self._service(ns, f"{name}-headless", self.ns_port[ns], kind="Headless", app=name)
                    if rng.random() < 0.5:
                        self._service(ns, name, self.ns_port[ns])
                elif kind == "CronJob":
                    self._cronjob(ns, rng.choice(_CRONJOBS))
                else:
                    self._daemonset(ns, f"{name}-agent", host_network=rng.random() < 0.5)
        self._service(apps[-1], "partner-api", 443, kind="ExternalName")

    def build_specials(self, apps: list[str]) -> None:
        """The IP-reuse pair, a Failed Job pod and a Pending pod without an IP."""
        a = next(
            (ns for ns in apps if any(p.workload_kind == "CronJob" for p in self.pods_by_ns[ns])), apps[0]
        )
        b = next(ns for ns in apps if ns != a)
        node = self.nodes[3]  # IPv4-only node: the reused address is a single-stack one
        t_job0 = self.start_us + int(self.dur_us * 0.20)
        t_job1 = self.start_us + int(self.dur_us * 0.30)
        t_reuse = (self.start_us + int(self.dur_us * 0.40)) // 1_000_000 * 1_000_000
        self.job_pod = self._job_pod(a, "db-migrate", t_job0, t_job1, node=node)
        rs_hash = self._suffix(10)
        rs = f"reporting-api-{rs_hash}"
        self.reuse_pod = self._new_pod(
            b,
            f"{rs}-{self._suffix(5)}",
            node,
            kind="Deployment",
            workload="reporting-api",
            owner_kind="ReplicaSet",
            owner_name=rs,
            owner_uid=self._uid(),
            labels={"app": "reporting-api", "pod-template-hash": rs_hash},
            created_us=t_reuse - 3_000_000,
            start_us=t_reuse,
            ips=(self.job_pod.ip4, None, None),
        )
        c = apps[len(apps) // 2]
        t0 = self.start_us + int(self.dur_us * 0.6)
        self._job_pod(c, "flaky-import", t0, t0 + int(self.dur_us * 0.03), phase="Failed")
        created = self.end_us - 600_000_000
        self._new_pod(
            c,
            f"pending-{self._suffix(5)}",
            None,
            kind="Deployment",
            workload="pending",
            owner_kind="ReplicaSet",
            owner_name=f"pending-{self._suffix(10)}",
            owner_uid=self._uid(),
            labels={"app": "pending"},
            created_us=created,
            start_us=None,
            phase="Pending",
        )
        for i, ns in enumerate(apps[:3]):
            gnode = self.rng.choice(self.nodes)
            base = int(ipaddress.IPv4Address(f"10.244.{gnode.idx * 16}.0"))
            gip = str(ipaddress.IPv4Address(base + 3500 + i))  # pod allocation never reaches offset 3500
            self.ghosts.append((ns, f"old-{self._suffix(10)}-{self._suffix(5)}", gnode, gip))
        self._force_profile = (a, b)

    def build_profiles(self, apps: list[str]) -> None:
        rng = self.rng
        stable = {ns for ns in self.ns_names if any(self._is_stable_target(p) for p in self.pods_by_ns[ns])}
        targets = [ns for ns in self.ns_names if ns in stable]
        clusterip = [s for s in self.services if s.kind == "ClusterIP" and s.name != "kube-dns"]
        kube_dns = next(s for s in self.services if s.name == "kube-dns")
        unknown_v4 = [f"10.250.{rng.randint(0, 255)}.{rng.randint(1, 254)}" for _ in range(4)] + [
            f"172.31.{rng.randint(0, 255)}.{rng.randint(1, 254)}" for _ in range(4)
        ]
        for ns in self.ns_names:
            dests: list[_Dest] = []
            if ns == "kube-system":
                for ip in ("1.1.1.1", "8.8.8.8"):
                    dests.append(_Dest("external", ip, ip, None, "UDP", 53, 3.0))
                k = next(s for s in self.services if s.name == "kubernetes")
                dests.append(_Dest("svc", "default/kubernetes", k.ip4, None, "TCP", 443, 1.0))
                self.profiles[ns] = dests
                continue
            if ns == "default":
                self.profiles[ns] = []
                continue
            forced = ns in self._force_profile
            if rng.random() < 0.15 and not forced:
                self.profiles[ns] = []  # a quiet namespace: no egress at all
                continue
            others = [t for t in targets if t != ns and t != "kube-system"]
            for t in rng.sample(others, min(len(others), rng.choice((0, 0, 1, 1, 2, 3)))):
                dests.append(_Dest("pod", t, None, None, "TCP", self.ns_port[t], rng.uniform(0.5, 3)))
            if ns in stable and rng.random() < 0.2:
                dests.append(_Dest("pod", ns, None, None, "TCP", self.ns_port[ns], 1.0))
            if rng.random() < 0.8:
                dests.append(
                    _Dest(
                        "svc",
                        "kube-system/kube-dns",
                        kube_dns.ip4,
                        ipaddress.IPv6Address(kube_dns.ip6).exploded if kube_dns.ip6 else None,
                        "UDP",
                        53,
                        4.0,
                    )
                )
            for s in rng.sample(clusterip, min(len(clusterip), rng.randint(0, 2))):
                dests.append(
                    _Dest(
                        "svc",
                        f"{s.namespace}/{s.name}",
                        s.ip4,
                        ipaddress.IPv6Address(s.ip6).exploded if s.ip6 else None,
                        s.proto,
                        s.port,
                        rng.uniform(0.5, 2),
                    )
                )
            n_ext = rng.randint(1 if forced else 0, 5)
            pool = list(EXTERNAL_V4) + list(EXTERNAL_V6)
            for ip, proto, port in rng.sample(pool, n_ext):
                a = ipaddress.ip_address(ip)
                v6 = a.version == 6
                dests.append(
                    _Dest(
                        "external",
                        a.compressed,
                        None if v6 else ip,
                        a.exploded if v6 else None,
                        proto,
                        port,
                        rng.uniform(0.3, 3),
                    )
                )
            if rng.random() < 0.25:
                node = rng.choice(self.nodes)
                dests.append(_Dest("node", node.ip, node.ip, None, "TCP", rng.choice((10250, 9100)), 0.5))
            if rng.random() < 0.15:
                if rng.random() < 0.3:
                    a6 = ipaddress.IPv6Address(rng.choice(UNKNOWN_V6))
                    dests.append(_Dest("unknown", a6.compressed, None, a6.exploded, "TCP", 443, 0.5))
                else:
                    ip = rng.choice(unknown_v4)
                    dests.append(_Dest("unknown", ip, ip, None, "TCP", rng.choice((443, 5432, 8443)), 0.5))
            self.profiles[ns] = dests

    @staticmethod
    def _is_stable_target(p: _Pod) -> bool:
        return p.phase == "Running" and not p.host_network and p.ip4 is not None

    # ------------------------------------------------------------------ lines
    def _truth(self, ns: str, cls: str, key: str) -> None:
        sets = self.fan_sets.get(ns)
        if sets is None:
            sets = self.fan_sets[ns] = {c: set() for c in ("pod", "svc", "external", "node", "unknown")}
            self.fan_conn[ns] = 0
        sets[cls].add(key)
        self.fan_conn[ns] += 1

    def _l4(self, proto: str, dport: int, v6: bool) -> tuple[int, str]:
        """Return (IP LEN, text from PROTO= on) for the first packet of a new flow."""
        rng = self.rng
        if proto == "TCP":
            win = rng.choice((64800, 65280)) if v6 else rng.choice((64240, 64860, 62727, 65535))
            return (80 if v6 else 60), (
                f"PROTO=TCP SPT={rng.randint(32768, 60999)} DPT={dport} WINDOW={win} RES=0x00 SYN URGP=0 "
            )
        if proto == "UDP":
            payload = rng.randint(28, 60)
            return (
                40 if v6 else 20
            ) + 8 + payload, f"PROTO=UDP SPT={rng.randint(32768, 60999)} DPT={dport} LEN={8 + payload} "
        if v6:
            return 104, f"PROTO=ICMPv6 TYPE=128 CODE=0 ID={rng.randint(1, 65535)} SEQ={rng.randint(1, 20)} "
        return 84, f"PROTO=ICMP TYPE=8 CODE=0 ID={rng.randint(1, 65535)} SEQ={rng.randint(1, 20)} "

    def _line(
        self,
        in_if: str,
        out_if: str,
        mac: str | None,
        src: str,
        dst: str,
        proto: str,
        dport: int,
        v6: bool,
        ttl: int,
    ) -> str:
        rng = self.rng
        length, tail = self._l4(proto, dport, v6)
        macp = f"MAC={mac}:{'86:dd' if v6 else '08:00'} " if mac else ""
        if v6:
            ip = f"SRC={src} DST={dst} LEN={length} TC=0 HOPLIMIT={ttl} FLOWLBL={rng.randrange(1 << 20)} "
        else:
            df = "DF " if proto == "TCP" or rng.random() < 0.7 else ""
            ident = rng.randrange(65536)
            ip = f"SRC={src} DST={dst} LEN={length} TOS=0x00 PREC=0x00 TTL={ttl} ID={ident} {df}"
        return f"IN={in_if} OUT={out_if} {macp}{ip}{tail}"

    def _add(self, ts: int, node: _Node, body: str, kind: str = "calico") -> None:
        if node.nft:
            self.entries.append(_Entry(ts, node, NFT_PREFIX + body, "6", kind))
            if kind == "calico":
                self._count("nft_prefix")
        else:
            self.entries.append(_Entry(ts, node, CALICO_PREFIX + body, "5", kind))

    def _egress_body(
        self, src: _Pod, ts: int, dest: _Dest, want_v6: bool, proto: str | None = None
    ) -> tuple[str, str, str] | None:
        """Render one egress line from ``src``: (body, class, key), or None when ``dest`` is unreachable."""
        v6 = want_v6 and src.ip6x is not None
        node = src.node
        assert node is not None
        mac = f"ee:ee:ee:ee:ee:ee:{src.mac}"
        if dest.cls == "pod":
            cands = [
                p
                for p in self.pods_by_ns[dest.key]
                if p is not src and not p.host_network and p.alive(ts) and (p.ip6x if v6 else p.ip4)
            ]
            if not cands:
                return None
            dp = self.rng.choice(cands)
            dst = dp.ip6x if v6 else dp.ip4
            out = dp.iface if dp.node is node else "vxlan-v6.calico" if v6 else "vxlan.calico"
        else:
            dst = dest.ip6x if v6 else dest.ip4
            if dst is None:
                return None
            out = "eth0"
        srcip = src.ip6x if v6 else src.ip4
        assert srcip is not None and dst is not None
        body = self._line(src.iface, out, mac, srcip, dst, proto or dest.proto, dest.port, v6, 63)
        return body, dest.cls, dest.key

    def emit_egress(
        self,
        src: _Pod,
        ts: int,
        dest: _Dest | None = None,
        want_v6: bool | None = None,
        proto: str | None = None,
    ) -> bool:
        rng = self.rng
        prof = self.profiles[src.namespace]
        if not prof and dest is None:
            return False
        if want_v6 is None:
            want_v6 = src.ip6x is not None and rng.random() < 0.15
        for _ in range(6):
            d = dest or rng.choices(prof, [x.weight for x in prof])[0]
            r = self._egress_body(src, ts, d, want_v6, proto)
            if r is None and want_v6:
                r = self._egress_body(src, ts, d, False, proto)
            if r is not None:
                body, cls, key = r
                assert src.node is not None
                self._add(ts, src.node, body)
                self._truth(src.namespace, cls, key)
                self._count("egress")
                if ":" in body.split("SRC=", 1)[1].split(" ", 1)[0]:
                    self._count("ipv6")
                if " DPT=53 " in body and key == "kube-system/kube-dns":
                    self._count("dns_kube_dns")
                if "PROTO=ICMP " in body:
                    self._count("icmp")
                if "PROTO=ICMPv6 " in body:
                    self._count("icmpv6")
                return True
            if dest is not None:
                return False
        return False

    def _ts(self) -> int:
        return self.start_us + self.rng.randrange(self.dur_us)

    def _ts_in(self, p: _Pod) -> int:
        lo = max(p.live_from, self.start_us)
        hi = min(p.live_to, self.end_us)
        return lo + self.rng.randrange(max(1, hi - lo))

    def emit_records(self) -> None:
        rng = self.rng
        r_total = self.n_records

        # IP reuse: the Job's lines during its run, the new owner's after its start.
        assert self.job_pod is not None and self.reuse_pod is not None
        for p, name in ((self.job_pod, "ip_reuse_job"), (self.reuse_pod, "ip_reuse_running")):
            n = 0
            while n < 4:
                if self.emit_egress(p, self._ts_in(p), want_v6=False):
                    n += 1
            self._count(name, n)
        # Other finished Job pods talk only while they run.
        for p in self.pods:
            if p.phase in ("Succeeded", "Failed") and p is not self.job_pod and self.profiles[p.namespace]:
                for _ in range(rng.randint(3, 6)):
                    self.emit_egress(p, self._ts_in(p))
        senders = [
            p for p in self.pods if not p.host_network and p.phase == "Running" and self.profiles[p.namespace]
        ]
        v6_senders = [p for p in senders if p.ip6x is not None]
        always = [p for p in senders if p.live_from <= self.start_us and p.live_to >= self.end_us]
        # ICMP echo (v4), ICMPv6 echo, explicit IPv6 TCP and kube-dns lookups.
        for _ in range(max(3, r_total // 5000)):
            p = rng.choice(always)
            ip = rng.choice(PING_V4)
            self.emit_egress(p, self._ts_in(p), _Dest("external", ip, ip, None, "ICMP", 0, 1), False, "ICMP")
        a6 = ipaddress.IPv6Address(PING_V6)
        for _ in range(2):
            p = rng.choice(v6_senders)
            self.emit_egress(
                p,
                self._ts_in(p),
                _Dest("external", a6.compressed, None, a6.exploded, "ICMP", 0, 1),
                True,
                "ICMP",
            )
        for _ in range(3):
            p = rng.choice(v6_senders)
            ip, proto, port = EXTERNAL_V6[rng.randrange(3)]
            a = ipaddress.IPv6Address(ip)
            self.emit_egress(
                p, self._ts_in(p), _Dest("external", a.compressed, None, a.exploded, proto, port, 1), True
            )
        kd = _Dest(
            "svc",
            "kube-system/kube-dns",
            KUBE_DNS_IP,
            ipaddress.IPv6Address(KUBE_DNS_IP6).exploded,
            "UDP",
            53,
            1,
        )
        for _ in range(3):
            p = rng.choice(always)
            self.emit_egress(p, self._ts_in(p), kd, False)
        # Unowned sources: pods deleted before the inventory snapshot, addresses nobody in it holds.
        n_ghost = max(2, r_total * 3 // 1000)
        for i in range(n_ghost):
            ns, name, node, ip = self.ghosts[i % len(self.ghosts)]
            ext, proto, port = rng.choice(EXTERNAL_V4)
            body = self._line(
                cali_iface_name(ns, name),
                "eth0",
                f"ee:ee:ee:ee:ee:ee:{self._mac()}",
                ip,
                ext,
                proto,
                port,
                False,
                63,
            )
            self._add(self._ts(), node, body)
        self._count("unowned", n_ghost)
        # hostNetwork pods: SRC is the node IP, no cali IN interface, no MAC (locally generated).
        hostnet = [p for p in self.pods if p.host_network]
        n_host = max(2, r_total * 15 // 1000)
        for _ in range(n_host):
            p = rng.choice(hostnet)
            assert p.node is not None
            if rng.random() < 0.6:
                other = rng.choice([n for n in self.nodes if n is not p.node])
                dst, port = other.ip, 179
            else:
                dst, port = KUBERNETES_IP, 443
            self._add(
                self._ts_in(p), p.node, self._line("", "eth0", None, p.node.ip, dst, "TCP", port, False, 64)
            )
        self._count("hostnetwork", n_host)
        # Ingress: packets entering a pod (OUT=cali...), logged on the receiving node.
        n_in = max(2, r_total * 3 // 100)
        targets = [p for p in self.pods if self._is_stable_target(p)]
        for _ in range(n_in):
            p = rng.choice(targets)
            assert p.node is not None
            ts = self._ts_in(p)
            v6 = p.ip6x is not None and rng.random() < 0.1
            if v6:
                src = ipaddress.IPv6Address(CLIENT_V6).exploded
                body = self._line(
                    "eth0",
                    p.iface,
                    f"{p.node.mac}:{p.node.gw_mac}",
                    src,
                    p.ip6x or "",
                    "TCP",
                    self.ns_port[p.namespace],
                    True,
                    60,
                )
            elif rng.random() < 0.6:
                body = self._line(
                    "eth0",
                    p.iface,
                    f"{p.node.mac}:{p.node.gw_mac}",
                    rng.choice(CLIENTS_V4),
                    p.ip4 or "",
                    "TCP",
                    self.ns_port[p.namespace],
                    False,
                    60,
                )
            else:  # from a pod on another node, through the VXLAN tunnel
                peer = rng.choice(targets)
                assert peer.node is not None
                body = self._line(
                    "vxlan.calico",
                    p.iface,
                    f"{p.node.vxlan_mac}:{peer.node.vxlan_mac}",
                    peer.ip4 or "",
                    p.ip4 or "",
                    "TCP",
                    self.ns_port[p.namespace],
                    False,
                    63,
                )
            self._add(ts, p.node, body)
        self._count("ingress", n_in)
        # Bulk egress up to the requested number of parseable records.
        have = sum(1 for e in self.entries if e.kind == "calico")
        if have > r_total:
            raise ValueError(f"records must be >= {have} for this namespace count")
        weights = [rng.lognormvariate(0, 1) for _ in senders]
        cum: list[float] = []
        acc = 0.0
        for w in weights:
            acc += w
            cum.append(acc)
        need = r_total - have
        budget = 50 * need + 1000
        while need > 0:
            budget -= 1
            if budget < 0:
                raise RuntimeError("synthetic model cannot produce enough egress records")
            p = rng.choices(senders, cum_weights=cum)[0]
            if self.emit_egress(p, self._ts_in(p)):
                need -= 1

    def emit_noise(self) -> None:
        """Malformed Calico lines (rejected) and non-Calico journal entries (ignored)."""
        rng = self.rng
        n_bad = max(3, self.n_records // 1000)
        senders = [p for p in self.pods if self._is_stable_target(p) and p.live_from <= self.start_us]
        kinds = ("truncated", "bad_address", "bad_port")
        for i in range(n_bad):
            p = rng.choice(senders)
            assert p.node is not None and p.ip4 is not None
            ext, _, _ = rng.choice(EXTERNAL_V4)
            body = self._line(
                p.iface, "eth0", f"ee:ee:ee:ee:ee:ee:{p.mac}", p.ip4, ext, "TCP", 443, False, 63
            )
            kind = kinds[i % 3]
            if kind == "truncated":
                cut = body.index("DST=") + 4
                cut = body.index(".", cut) + 1  # "DST=140." : address and everything after it lost
                body = body[:cut]
            elif kind == "bad_address":
                a, b, c, _ = p.ip4.split(".")
                body = body.replace(f"SRC={p.ip4} ", f"SRC={a}.{b}.{c}.999 " if i % 2 else "SRC=10.0.0.999 ")
            else:
                body = body.replace("DPT=443 ", "DPT=70000 ")
            self._add(self._ts(), p.node, body, kind="malformed")
            self._count(f"malformed_{kind}")
        n_ign = max(6, self.n_records // 100)
        for i in range(n_ign):
            node = rng.choice(self.nodes)
            ts = self._ts()
            if i % 3 == 2:
                pod = rng.choice(self.pods)
                t = datetime.fromtimestamp(ts / 1e6, UTC)
                msg = (
                    f'I{t:%m%d %H:%M:%S.%f}    {1000 + node.idx} kubelet.go:2437] "SyncLoop UPDATE" '
                    f'source="api" pods=["{pod.namespace}/{pod.name}"]'
                )
                self.entries.append(_Entry(ts, node, msg, "6", "kubelet"))
            else:
                prio, tmpl = rng.choice(_KMSG)
                msg = tmpl.format(
                    iface=cali_iface_name("x", self._suffix(6)),
                    hex=self._hex(24),
                    sec=ts // 1_000_000,
                    n=rng.randint(1000, 99999),
                )
                self.entries.append(_Entry(ts, node, msg, prio, "kernel"))
        self._count("non_calico", n_ign)

    # ------------------------------------------------------------ serialising
    def journal(self) -> list[str]:
        """journalctl -o json lines: per-node seqnums in time order, then shipped slightly out of order."""
        order = sorted(range(len(self.entries)), key=lambda i: self.entries[i].ts_us)
        lines: list[str] = []
        for i in order:
            e = self.entries[i]
            node = e.node
            node.seq += 1
            mono = e.ts_us - node.boot_us
            xor = ((node.seq * 0x9E3779B97F4A7C15) ^ (e.ts_us * 0xBF58476D1CE4E5B9)) & 0xFFFFFFFFFFFFFFFF
            d: dict[str, str] = {
                "__CURSOR": f"s={node.seqnum_id};i={node.seq + 0x3A000:x};b={node.boot_id};m={mono:x};"
                f"t={e.ts_us:x};x={xor:016x}",
                "__REALTIME_TIMESTAMP": str(e.ts_us),
                "__MONOTONIC_TIMESTAMP": str(mono),
                "_BOOT_ID": node.boot_id,
                "PRIORITY": e.priority,
            }
            if e.kind == "kubelet":
                pid = str(1000 + node.idx)
                d.update(
                    {
                        "SYSLOG_FACILITY": "3",
                        "_UID": "0",
                        "_GID": "0",
                        "_CAP_EFFECTIVE": "1ffffffffff",
                        "_SYSTEMD_SLICE": "system.slice",
                        "_TRANSPORT": "stdout",
                        "SYSLOG_IDENTIFIER": "kubelet",
                        "_PID": pid,
                        "_COMM": "kubelet",
                        "_EXE": "/usr/bin/kubelet",
                        "_SYSTEMD_UNIT": "kubelet.service",
                        "_MACHINE_ID": node.machine_id,
                        "_HOSTNAME": node.name,
                        "MESSAGE": e.message,
                    }
                )
            else:
                d.update(
                    {
                        "_TRANSPORT": "kernel",
                        "SYSLOG_FACILITY": "0",
                        "SYSLOG_IDENTIFIER": "kernel",
                        "_SOURCE_MONOTONIC_TIMESTAMP": str(mono - 7 - node.seq % 40),
                        "_MACHINE_ID": node.machine_id,
                        "_HOSTNAME": node.name,
                        "MESSAGE": e.message,
                    }
                )
            lines.append(orjson.dumps(d).decode())
        # A shipper's interleaving of several nodes is not perfectly ordered: a few entries arrive late.
        rng = self.rng
        n_ooo = max(2, len(lines) // 500) if len(lines) > 100 else 0
        for _ in range(n_ooo):
            i = rng.randrange(len(lines) - 45)
            lines.insert(i + rng.randint(2, 40), lines.pop(i))
        self._count("out_of_order", n_ooo)
        return lines

    def duplicate(self, lines: list[str]) -> list[str]:
        """Exact repeats: single adjacent ones and replayed blocks far from the original."""
        rng = self.rng
        n = len(lines)
        adj = set(rng.sample(range(n), max(2, n // 200)))
        replays: dict[int, list[str]] = {}
        block = max(5, min(40, n // 50))
        for _ in range(2):
            a = rng.randrange(0, n // 2)
            at = min(n - 1, a + block + rng.randint(n // 4, n // 2))
            replays.setdefault(at, []).extend(lines[a : a + block])
        out: list[str] = []
        for i, line in enumerate(lines):
            out.append(line)
            if i in adj:
                out.append(line)
            if i in replays:
                out.extend(replays[i])
        self._count("duplicates", len(out) - n)
        return out

    # -------------------------------------------------------------- inventory
    def inventory(self) -> dict:
        items: list[dict] = []
        for ns in self.ns_names:
            items.append(
                {
                    "apiVersion": "v1",
                    "kind": "Namespace",
                    "metadata": {
                        "name": ns,
                        "uid": self._uid(),
                        "resourceVersion": str(self.rng.randint(100, 9999)),
                        "creationTimestamp": _rfc3339(self.ns_created[ns]),
                        "labels": self.ns_labels[ns],
                    },
                    "spec": {"finalizers": ["kubernetes"]},
                    "status": {"phase": "Active"},
                }
            )
        for n in self.nodes:
            addrs = [{"type": "InternalIP", "address": n.ip}]
            if n.external_ip:
                addrs.append({"type": "ExternalIP", "address": n.external_ip})
            addrs.append({"type": "Hostname", "address": n.name})
            b = n.boot_id
            cidrs = [f"10.244.{n.idx * 16}.0/20"] + ([f"fd00:10:244:{n.idx:x}::/64"] if n.v6 else [])
            items.append(
                {
                    "apiVersion": "v1",
                    "kind": "Node",
                    "metadata": {
                        "name": n.name,
                        "uid": n.uid,
                        "creationTimestamp": _rfc3339(n.created_us),
                        "resourceVersion": str(self.rng.randint(10000, 99999)),
                        "labels": {
                            "kubernetes.io/hostname": n.name,
                            "kubernetes.io/os": "linux",
                            "kubernetes.io/arch": "amd64",
                            "node.kubernetes.io/instance-type": "m6i.xlarge",
                        },
                        "annotations": {
                            "projectcalico.org/IPv4Address": f"{n.ip}/24",
                            "projectcalico.org/IPv4VXLANTunnelAddr": f"10.244.{n.idx * 16}.1",
                        },
                    },
                    "spec": {"podCIDR": cidrs[0], "podCIDRs": cidrs},
                    "status": {
                        "addresses": addrs,
                        "conditions": [
                            {
                                "type": "Ready",
                                "status": "True",
                                "reason": "KubeletReady",
                                "lastTransitionTime": _rfc3339(n.boot_us + 60_000_000),
                            }
                        ],
                        "nodeInfo": {
                            "bootID": f"{b[:8]}-{b[8:12]}-{b[12:16]}-{b[16:20]}-{b[20:]}",
                            "machineID": n.machine_id,
                            "kernelVersion": "6.8.0-1019-aws",
                            "osImage": "Ubuntu 24.04.1 LTS",
                            "containerRuntimeVersion": "containerd://1.7.24",
                            "kubeletVersion": "v1.31.4",
                            "kubeProxyVersion": "v1.31.4",
                            "operatingSystem": "linux",
                            "architecture": "amd64",
                        },
                    },
                }
            )
        for p in self.pods:
            items.append(self._pod_json(p))
        for s in self.services:
            spec: dict = {"type": s.kind if s.kind == "ExternalName" else "ClusterIP"}
            if s.kind == "ExternalName":
                spec["externalName"] = "api.partner.example.com"
            else:
                ips = ["None"] if s.kind == "Headless" else [x for x in (s.ip4, s.ip6) if x]
                spec.update(
                    {
                        "clusterIP": ips[0],
                        "clusterIPs": ips,
                        "ipFamilies": ["IPv4", "IPv6"] if s.ip6 else ["IPv4"],
                        "ipFamilyPolicy": "PreferDualStack" if s.ip6 else "SingleStack",
                        "ports": [
                            {
                                "name": "dns" if s.port == 53 else "http",
                                "port": s.port,
                                "protocol": s.proto,
                                "targetPort": s.port,
                            }
                        ],
                        "selector": {"k8s-app": "kube-dns"} if s.name == "kube-dns" else s.selector,
                        "sessionAffinity": "None",
                        "internalTrafficPolicy": "Cluster",
                    }
                )
                if s.name == "kubernetes":
                    del spec["selector"]
            items.append(
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {
                        "name": s.name,
                        "namespace": s.namespace,
                        "uid": s.uid,
                        "resourceVersion": str(self.rng.randint(100, 99999)),
                        "creationTimestamp": _rfc3339(s.created_us),
                        "labels": {"app": s.name},
                    },
                    "spec": spec,
                    "status": {"loadBalancer": {}},
                }
            )
        return {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}

    def _pod_json(self, p: _Pod) -> dict:
        container = p.workload.split("-")[0]
        cid = f"containerd://{self._hex(256)}"
        image_id = f"{p.image.split(':')[0]}@sha256:{self._hex(256)}"
        meta = {
            "name": p.name,
            "namespace": p.namespace,
            "uid": p.uid,
            "labels": p.labels,
            "resourceVersion": str(self.rng.randint(1000, 999999)),
            "creationTimestamp": _rfc3339(p.created_us),
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1" if p.owner_kind == "Job" else "apps/v1",
                    "kind": p.owner_kind,
                    "name": p.owner_name,
                    "uid": p.owner_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        }
        if p.owner_kind in ("ReplicaSet", "Job", "DaemonSet"):
            meta["generateName"] = p.name[: p.name.rfind("-") + 1]
        spec: dict = {
            "containers": [{"name": container, "image": p.image, "imagePullPolicy": "IfNotPresent"}],
            "restartPolicy": "OnFailure" if p.owner_kind == "Job" else "Always",
            "serviceAccountName": "default",
            "schedulerName": "default-scheduler",
            "dnsPolicy": "ClusterFirstWithHostNet" if p.host_network else "ClusterFirst",
        }
        if p.node is not None:
            spec["nodeName"] = p.node.name
        if p.host_network:
            spec["hostNetwork"] = True
        status: dict = {"phase": p.phase, "qosClass": "BestEffort"}
        if p.phase == "Pending":
            status["conditions"] = [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "lastTransitionTime": _rfc3339(p.created_us),
                    "message": "0/6 nodes are available: 6 Insufficient memory.",
                }
            ]
            return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}
        assert p.node is not None and p.start_us is not None
        started = _rfc3339(p.start_us)
        running = p.phase == "Running"
        ready = "True" if running else "False"
        status["conditions"] = [
            {"type": "PodReadyToStartContainers", "status": ready, "lastTransitionTime": started},
            {
                "type": "Initialized",
                "status": "True",
                "lastTransitionTime": started,
                **({} if running else {"reason": "PodCompleted"}),
            },
            {
                "type": "Ready",
                "status": ready,
                "lastTransitionTime": _rfc3339(p.finish_us or p.start_us + 4_000_000),
                **({} if running else {"reason": "PodCompleted"}),
            },
            {
                "type": "ContainersReady",
                "status": ready,
                "lastTransitionTime": _rfc3339(p.finish_us or p.start_us + 4_000_000),
                **({} if running else {"reason": "PodCompleted"}),
            },
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": _rfc3339(p.created_us)},
        ]
        status.update({"hostIP": p.node.ip, "hostIPs": [{"ip": p.node.ip}], "startTime": started})
        status["podIP"] = p.ip4
        status["podIPs"] = [{"ip": x} for x in (p.ip4, p.ip6) if x]
        c_start = _rfc3339(p.start_us + 2_000_000)
        if running:
            state: dict = {"running": {"startedAt": c_start}}
        else:
            assert p.finish_us is not None
            state = {
                "terminated": {
                    "exitCode": p.exit_code,
                    "reason": "Completed" if p.exit_code == 0 else "Error",
                    "startedAt": c_start,
                    "finishedAt": _rfc3339(p.finish_us),
                    "containerID": cid,
                }
            }
        status["containerStatuses"] = [
            {
                "name": container,
                "image": p.image,
                "imageID": image_id,
                "containerID": cid,
                "ready": running,
                "started": running,
                "restartCount": 0,
                "state": state,
            }
        ]
        return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}

    def expected(self) -> Expected:
        fan: dict[str, dict[str, int]] = {}
        for ns in sorted(self.fan_sets):
            s = self.fan_sets[ns]
            fan[ns] = {
                "dests": len(s["pod"]) + len(s["svc"]) + len(s["external"]),
                "pod_ns": len(s["pod"]),
                "svc": len(s["svc"]),
                "external": len(s["external"]),
                "node": len(s["node"]),
                "unknown": len(s["unknown"]),
                "connections": self.fan_conn[ns],
            }
        kinds = [e.kind for e in self.entries]
        return Expected(
            fanout=fan,
            records=kinds.count("calico"),
            rejected=kinds.count("malformed"),
            ignored=kinds.count("kernel") + kinds.count("kubelet"),
            unowned_sources=self.scen.get("unowned", 0),
        )


def generate(
    seed: int = 1,
    namespaces: int = 40,
    records: int = 30_000,
    start: datetime | None = None,
    duration_s: int = 6 * 3600,
    *,
    nft_prefix_nodes: int = 1,
) -> Corpus:
    """Build a corpus: inventory snapshot at the end of the window, shipped journal, expected answer.

    ``records`` is the exact number of distinct parseable Calico records; malformed lines (~0.1 %),
    non-Calico entries (~1 %) and duplicates come on top. ``nft_prefix_nodes`` nodes print the
    nftables-mode ``calico-packetIN=`` variant at priority 6 (0 turns it off).
    """
    g = _Gen(seed, namespaces, records, start or DEFAULT_START, duration_s, nft_prefix_nodes)
    g.build_nodes()
    apps = g.build_namespaces()
    g.build_workloads(apps)
    g.build_specials(apps)
    g.build_profiles(apps)
    g.emit_records()
    g.emit_noise()
    lines = g.journal()
    journal = g.duplicate(lines)
    expected = g.expected()
    inventory = g.inventory()
    scen = dict(sorted(g.scen.items()))
    return Corpus(
        inventory=inventory,
        journal=journal,
        expected=expected,
        start_ns=g.start_us * 1000,
        end_ns=g.end_us * 1000,
        scenarios=scen,
    )


def to_syslog(journal_line: str) -> str:
    """Render a journal entry as rsyslog writes it to kern.log/syslog (for the file shipper's tests)."""
    d = orjson.loads(journal_line)
    t = datetime.fromtimestamp(int(d["__REALTIME_TIMESTAMP"]) / 1e6, UTC)
    stamp = f"{t:%b} {t.day:2d} {t:%H:%M:%S}"
    host = d.get("_HOSTNAME", "localhost")
    if d.get("_TRANSPORT") == "kernel":
        mono = int(d.get("_SOURCE_MONOTONIC_TIMESTAMP") or d["__MONOTONIC_TIMESTAMP"])
        return f"{stamp} {host} kernel: [{mono // 1_000_000:5d}.{mono % 1_000_000:06d}] {d['MESSAGE']}"
    ident = d.get("SYSLOG_IDENTIFIER", "unknown")
    pid = f"[{d['_PID']}]" if "_PID" in d else ""
    return f"{stamp} {host} {ident}{pid}: {d['MESSAGE']}"


def to_fluentbit(journal_line: str) -> dict:
    """Render a journal entry as fluent-bit's systemd input emits it through a JSON output.

    The input reads data fields only, so ``__CURSOR`` and the ``__*_TIMESTAMP`` fields are absent;
    the entry time becomes ``@timestamp`` in float seconds. ``_BOOT_ID`` + ``_SOURCE_MONOTONIC_TIMESTAMP``
    (or the realtime) + ``MESSAGE`` is what identifies the entry there.
    """
    d = orjson.loads(journal_line)
    out: dict = {k: v for k, v in d.items() if not k.startswith("__")}
    out["@timestamp"] = int(d["__REALTIME_TIMESTAMP"]) / 1e6
    return out
