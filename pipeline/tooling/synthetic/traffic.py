"""Calico packet-log lines from a cluster model, with the truth each line adds.

Every egress line records (source namespace, destination class, key) as it is written, so the
expected fan-out is what the model sent, never what a parser reads back.
"""

from __future__ import annotations

import ipaddress

from pipeline.core.calico_iface import cali_iface_name
from pipeline.tooling.synthetic.catalog import (
    CALICO_PREFIX,
    CLIENT_V6,
    CLIENTS_V4,
    EXTERNAL_V4,
    EXTERNAL_V6,
    KUBE_DNS_IP,
    KUBE_DNS_IP6,
    KUBERNETES_IP,
    NFT_PREFIX,
    PING_V4,
    PING_V6,
)
from pipeline.tooling.synthetic.cluster import Cluster
from pipeline.tooling.synthetic.model import Dest, Entry, Node, Pod, is_stable_target


class Traffic:
    """The packet-log entries one cluster's pods send, and the fan-out each namespace truly has."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.rng = cluster.rng
        self.entries: list[Entry] = []
        self.fan_sets: dict[str, dict[str, set[str]]] = {}
        self.fan_conn: dict[str, int] = {}

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

    def line(
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

    def add(self, ts: int, node: Node, body: str, kind: str = "calico") -> None:
        if node.nft:
            self.entries.append(Entry(ts, node, NFT_PREFIX + body, "6", kind))
            if kind == "calico":
                self.cluster.count("nft_prefix")
        else:
            self.entries.append(Entry(ts, node, CALICO_PREFIX + body, "5", kind))

    def _egress_body(
        self, src: Pod, ts: int, dest: Dest, want_v6: bool, proto: str | None = None
    ) -> tuple[str, str, str] | None:
        """Render one egress line from ``src``: (body, class, key), or None when ``dest`` is unreachable."""
        v6 = want_v6 and src.ip6x is not None
        node = src.node
        assert node is not None
        mac = f"ee:ee:ee:ee:ee:ee:{src.mac}"
        if dest.cls == "pod":
            cands = [
                p
                for p in self.cluster.pods_by_ns[dest.key]
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
        body = self.line(src.iface, out, mac, srcip, dst, proto or dest.proto, dest.port, v6, 63)
        return body, dest.cls, dest.key

    def emit_egress(
        self,
        src: Pod,
        ts: int,
        dest: Dest | None = None,
        want_v6: bool | None = None,
        proto: str | None = None,
    ) -> bool:
        rng = self.rng
        prof = self.cluster.profiles[src.namespace]
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
                self.add(ts, src.node, body)
                self._truth(src.namespace, cls, key)
                self.cluster.count("egress")
                if ":" in body.split("SRC=", 1)[1].split(" ", 1)[0]:
                    self.cluster.count("ipv6")
                if " DPT=53 " in body and key == "kube-system/kube-dns":
                    self.cluster.count("dns_kube_dns")
                if "PROTO=ICMP " in body:
                    self.cluster.count("icmp")
                if "PROTO=ICMPv6 " in body:
                    self.cluster.count("icmpv6")
                return True
            if dest is not None:
                return False
        return False

    def ts(self) -> int:
        return self.cluster.start_us + self.rng.randrange(self.cluster.dur_us)

    def ts_in(self, p: Pod) -> int:
        lo = max(p.live_from, self.cluster.start_us)
        hi = min(p.live_to, self.cluster.end_us)
        return lo + self.rng.randrange(max(1, hi - lo))

    def emit_records(self) -> None:
        rng, c = self.rng, self.cluster
        r_total = c.n_records

        # IP reuse: the Job's lines during its run, the new owner's after its start.
        assert c.job_pod is not None and c.reuse_pod is not None
        for p, name in ((c.job_pod, "ip_reuse_job"), (c.reuse_pod, "ip_reuse_running")):
            n = 0
            while n < 4:
                if self.emit_egress(p, self.ts_in(p), want_v6=False):
                    n += 1
            c.count(name, n)
        # Other finished Job pods talk only while they run.
        for p in c.pods:
            if p.phase in ("Succeeded", "Failed") and p is not c.job_pod and c.profiles[p.namespace]:
                for _ in range(rng.randint(3, 6)):
                    self.emit_egress(p, self.ts_in(p))
        senders = [
            p for p in c.pods if not p.host_network and p.phase == "Running" and c.profiles[p.namespace]
        ]
        v6_senders = [p for p in senders if p.ip6x is not None]
        always = [p for p in senders if p.live_from <= c.start_us and p.live_to >= c.end_us]
        # ICMP echo (v4), ICMPv6 echo, explicit IPv6 TCP and kube-dns lookups.
        for _ in range(max(3, r_total // 5000)):
            p = rng.choice(always)
            ip = rng.choice(PING_V4)
            self.emit_egress(p, self.ts_in(p), Dest("external", ip, ip, None, "ICMP", 0, 1), False, "ICMP")
        a6 = ipaddress.IPv6Address(PING_V6)
        for _ in range(2):
            p = rng.choice(v6_senders)
            self.emit_egress(
                p,
                self.ts_in(p),
                Dest("external", a6.compressed, None, a6.exploded, "ICMP", 0, 1),
                True,
                "ICMP",
            )
        for _ in range(3):
            p = rng.choice(v6_senders)
            ip, proto, port = EXTERNAL_V6[rng.randrange(3)]
            a = ipaddress.IPv6Address(ip)
            self.emit_egress(
                p, self.ts_in(p), Dest("external", a.compressed, None, a.exploded, proto, port, 1), True
            )
        kd = Dest(
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
            self.emit_egress(p, self.ts_in(p), kd, False)
        # Unowned sources: pods deleted before the inventory snapshot, addresses nobody in it holds.
        n_ghost = max(2, r_total * 3 // 1000)
        for i in range(n_ghost):
            ns, name, node, ip = c.ghosts[i % len(c.ghosts)]
            ext, proto, port = rng.choice(EXTERNAL_V4)
            body = self.line(
                cali_iface_name(ns, name),
                "eth0",
                f"ee:ee:ee:ee:ee:ee:{c.mac()}",
                ip,
                ext,
                proto,
                port,
                False,
                63,
            )
            self.add(self.ts(), node, body)
        c.count("unowned", n_ghost)
        # hostNetwork pods: SRC is the node IP, no cali IN interface, no MAC (locally generated).
        hostnet = [p for p in c.pods if p.host_network]
        n_host = max(2, r_total * 15 // 1000)
        for _ in range(n_host):
            p = rng.choice(hostnet)
            assert p.node is not None
            if rng.random() < 0.6:
                other = rng.choice([n for n in c.nodes if n is not p.node])
                dst, port = other.ip, 179
            else:
                dst, port = KUBERNETES_IP, 443
            self.add(
                self.ts_in(p), p.node, self.line("", "eth0", None, p.node.ip, dst, "TCP", port, False, 64)
            )
        c.count("hostnetwork", n_host)
        # Ingress: packets entering a pod (OUT=cali...), logged on the receiving node.
        n_in = max(2, r_total * 3 // 100)
        targets = [p for p in c.pods if is_stable_target(p)]
        for _ in range(n_in):
            p = rng.choice(targets)
            assert p.node is not None
            ts = self.ts_in(p)
            v6 = p.ip6x is not None and rng.random() < 0.1
            if v6:
                src = ipaddress.IPv6Address(CLIENT_V6).exploded
                body = self.line(
                    "eth0",
                    p.iface,
                    f"{p.node.mac}:{p.node.gw_mac}",
                    src,
                    p.ip6x or "",
                    "TCP",
                    c.ns_port[p.namespace],
                    True,
                    60,
                )
            elif rng.random() < 0.6:
                body = self.line(
                    "eth0",
                    p.iface,
                    f"{p.node.mac}:{p.node.gw_mac}",
                    rng.choice(CLIENTS_V4),
                    p.ip4 or "",
                    "TCP",
                    c.ns_port[p.namespace],
                    False,
                    60,
                )
            else:  # from a pod on another node, through the VXLAN tunnel
                peer = rng.choice(targets)
                assert peer.node is not None
                body = self.line(
                    "vxlan.calico",
                    p.iface,
                    f"{p.node.vxlan_mac}:{peer.node.vxlan_mac}",
                    peer.ip4 or "",
                    p.ip4 or "",
                    "TCP",
                    c.ns_port[p.namespace],
                    False,
                    63,
                )
            self.add(ts, p.node, body)
        c.count("ingress", n_in)
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
            if self.emit_egress(p, self.ts_in(p)):
                need -= 1

    def fanout(self) -> dict[str, dict[str, int]]:
        """Distinct destinations and connections per source namespace, from what was emitted."""
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
        return fan
