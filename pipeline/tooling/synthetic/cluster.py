"""The cluster model of a synthetic corpus: who exists, where, with which address, talking to whom.

~6 nodes (the first three carry an IPv6 pool, the last ``nft_prefix_nodes`` run a Calico nftables
build), namespaces with Deployments/StatefulSets/DaemonSets/CronJobs and Services, the deliberate
special cases (a reused IP, a Failed Job, a Pending pod, pods deleted before the snapshot) and each
namespace's egress profile. Nothing here renders a line; the ground truth comes from this model.
"""

from __future__ import annotations

import ipaddress
import random
import uuid
from datetime import UTC, datetime

from pipeline.core.calico_iface import cali_iface_name
from pipeline.tooling.synthetic.catalog import (
    CRONJOBS,
    EXTERNAL_V4,
    EXTERNAL_V6,
    KUBE_DNS_IP,
    KUBE_DNS_IP6,
    KUBERNETES_IP,
    NAMES,
    NODES,
    PORTS,
    SAFE,
    UNKNOWN_V6,
    WORKLOADS,
)
from pipeline.tooling.synthetic.model import Dest, Node, Pod, Service, is_stable_target


class Cluster:
    """One run's cluster: nodes, namespaces, workloads and egress profiles, all drawn from one seeded RNG.

    The traffic writer, the serialisers and the inventory draw from the same RNG in a fixed order,
    so a seed alone reproduces the whole corpus.
    """

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
        self.nodes: list[Node] = []
        self.ns_names: list[str] = []
        self.ns_labels: dict[str, dict[str, str]] = {}
        self.ns_created: dict[str, int] = {}
        self.pods: list[Pod] = []
        self.pods_by_ns: dict[str, list[Pod]] = {}
        self.services: list[Service] = []
        self.profiles: dict[str, list[Dest]] = {}
        self.ns_port: dict[str, int] = {}
        self.used_svc_ips: set[int] = set()
        self.scen: dict[str, int] = {}
        self.ghosts: list[tuple[str, str, Node, str]] = []
        self.job_pod: Pod | None = None
        self.reuse_pod: Pod | None = None
        self._force_profile: tuple[str, ...] = ()

    # ---------------------------------------------------------------- draws
    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def hex_id(self, bits: int) -> str:
        return f"{self.rng.getrandbits(bits):0{bits // 4}x}"

    def suffix(self, n: int) -> str:
        return "".join(self.rng.choices(SAFE, k=n))

    def mac(self) -> str:
        b = [0x02] + [self.rng.randrange(256) for _ in range(5)]
        return ":".join(f"{x:02x}" for x in b)

    def count(self, name: str, n: int = 1) -> None:
        """Tally a deliberate scenario (reported as ``Corpus.scenarios``)."""
        self.scen[name] = self.scen.get(name, 0) + n

    def _alloc_ip(self, node: Node) -> tuple[str, str | None, str | None]:
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
                Node(
                    name=f"node{i + 1}",
                    idx=i + 1,
                    ip=f"10.0.0.{11 + i}",
                    external_ip=f"35.204.10.{21 + i}" if i % 2 == 0 else None,
                    v6=i < 3,
                    nft=i >= NODES - self.nft_prefix_nodes,
                    mac=self.mac(),
                    gw_mac=self.mac(),
                    vxlan_mac=self.mac(),
                    boot_id=self.hex_id(128),
                    machine_id=self.hex_id(128),
                    seqnum_id=self.hex_id(128),
                    boot_us=boot_us,
                    uid=self.uid(),
                    created_us=self.start_us - 200 * 86_400_000_000,
                )
            )

    def _add_ns(self, name: str, labels: dict[str, str]) -> None:
        self.ns_names.append(name)
        self.ns_labels[name] = {"kubernetes.io/metadata.name": name, **labels}
        self.ns_created[name] = self.start_us - self.rng.randint(30, 300) * 86_400_000_000
        self.pods_by_ns[name] = []
        self.ns_port[name] = self.rng.choice(PORTS)

    def build_namespaces(self) -> list[str]:
        self._add_ns("kube-system", {})
        self._add_ns("default", {})
        pool = list(NAMES)
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
        node: Node | None,
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
    ) -> Pod:
        if node is None:
            ip4 = ip6 = ip6x = None
        elif host_network:
            ip4, ip6, ip6x = node.ip, None, None
        else:
            ip4, ip6, ip6x = ips if ips is not None else self._alloc_ip(node)
        version = f"1.{self.rng.randint(0, 30)}.{self.rng.randint(0, 9)}"
        pod = Pod(
            namespace=ns,
            name=name,
            uid=self.uid(),
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
            mac=self.mac(),
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
        self, ns: str, name: str, replicas: int, late_ok: bool = True, nodes: list[Node] | None = None,
        labels: dict[str, str] | None = None,
    ) -> list[Pod]:
        rs_hash = self.suffix(10)
        rs, rs_uid = f"{name}-{rs_hash}", self.uid()
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
                    f"{rs}-{self.suffix(5)}",
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
        uid, rev = self.uid(), f"{name}-{self.suffix(10)}"
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
        uid, rev = self.uid(), self.suffix(10)
        for node in self.nodes:
            created, started = self._old_times()
            self._new_pod(
                ns,
                f"{name}-{self.suffix(5)}",
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
        node: Node | None = None,
        phase: str = "Succeeded",
    ) -> Pod:
        run_from = run_from // 1_000_000 * 1_000_000
        run_to = run_to // 1_000_000 * 1_000_000
        job = f"{cronjob}-{run_from // 60_000_000}"
        job_uid = self.uid()
        pod = self._new_pod(
            ns,
            f"{job}-{self.suffix(5)}",
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
    ) -> Service:
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
        svc = Service(
            ns,
            name,
            self.uid(),
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
            names = list(WORKLOADS)
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
                    self._cronjob(ns, rng.choice(CRONJOBS))
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
        rs_hash = self.suffix(10)
        rs = f"reporting-api-{rs_hash}"
        self.reuse_pod = self._new_pod(
            b,
            f"{rs}-{self.suffix(5)}",
            node,
            kind="Deployment",
            workload="reporting-api",
            owner_kind="ReplicaSet",
            owner_name=rs,
            owner_uid=self.uid(),
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
            f"pending-{self.suffix(5)}",
            None,
            kind="Deployment",
            workload="pending",
            owner_kind="ReplicaSet",
            owner_name=f"pending-{self.suffix(10)}",
            owner_uid=self.uid(),
            labels={"app": "pending"},
            created_us=created,
            start_us=None,
            phase="Pending",
        )
        for i, ns in enumerate(apps[:3]):
            gnode = self.rng.choice(self.nodes)
            base = int(ipaddress.IPv4Address(f"10.244.{gnode.idx * 16}.0"))
            gip = str(ipaddress.IPv4Address(base + 3500 + i))  # pod allocation never reaches offset 3500
            self.ghosts.append((ns, f"old-{self.suffix(10)}-{self.suffix(5)}", gnode, gip))
        self._force_profile = (a, b)

    def build_profiles(self, apps: list[str]) -> None:
        rng = self.rng
        stable = {ns for ns in self.ns_names if any(is_stable_target(p) for p in self.pods_by_ns[ns])}
        targets = [ns for ns in self.ns_names if ns in stable]
        clusterip = [s for s in self.services if s.kind == "ClusterIP" and s.name != "kube-dns"]
        kube_dns = next(s for s in self.services if s.name == "kube-dns")
        unknown_v4 = [f"10.250.{rng.randint(0, 255)}.{rng.randint(1, 254)}" for _ in range(4)] + [
            f"172.31.{rng.randint(0, 255)}.{rng.randint(1, 254)}" for _ in range(4)
        ]
        for ns in self.ns_names:
            dests: list[Dest] = []
            if ns == "kube-system":
                for ip in ("1.1.1.1", "8.8.8.8"):
                    dests.append(Dest("external", ip, ip, None, "UDP", 53, 3.0))
                k = next(s for s in self.services if s.name == "kubernetes")
                dests.append(Dest("svc", "default/kubernetes", k.ip4, None, "TCP", 443, 1.0))
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
                dests.append(Dest("pod", t, None, None, "TCP", self.ns_port[t], rng.uniform(0.5, 3)))
            if ns in stable and rng.random() < 0.2:
                dests.append(Dest("pod", ns, None, None, "TCP", self.ns_port[ns], 1.0))
            if rng.random() < 0.8:
                dests.append(
                    Dest(
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
                    Dest(
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
                    Dest(
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
                dests.append(Dest("node", node.ip, node.ip, None, "TCP", rng.choice((10250, 9100)), 0.5))
            if rng.random() < 0.15:
                if rng.random() < 0.3:
                    a6 = ipaddress.IPv6Address(rng.choice(UNKNOWN_V6))
                    dests.append(Dest("unknown", a6.compressed, None, a6.exploded, "TCP", 443, 0.5))
                else:
                    ip = rng.choice(unknown_v4)
                    dests.append(Dest("unknown", ip, ip, None, "TCP", rng.choice((443, 5432, 8443)), 0.5))
            self.profiles[ns] = dests
