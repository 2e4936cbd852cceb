"""The fixed world a synthetic cluster is drawn from: addresses, names, ports and kernel noise.

Kept apart from the generator so the tests can check their own assertions against the
same external, client and service addresses the corpus uses.
"""

from __future__ import annotations

from datetime import UTC, datetime

DEFAULT_START = datetime(2026, 11, 20, tzinfo=UTC)
"""Fixed default start so that a corpus is reproducible from its seed alone."""

NODES = 6
CALICO_PREFIX = "calico-packet: "
NFT_PREFIX = "calico-packet"  # Calico 3.30.0-3.30.5 / 3.31.0-3.31.3 nftables builds
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

NAMES = (
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
WORKLOADS = ("api", "worker", "web", "db", "cache", "sync", "consumer", "gateway", "exporter", "indexer")
CRONJOBS = ("backup", "nightly-report", "cleanup", "sync-job", "rotate-keys", "export")
PORTS = (8080, 8443, 9090, 5432, 6379, 3306, 9092, 50051, 80, 443)
SAFE = "bcdfghjklmnpqrstvwxz2456789"  # k8s rand.SafeEncodeString alphabet
KMSG = (
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

