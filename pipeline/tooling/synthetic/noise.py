"""Hostile input mixed into the journal: malformed Calico lines and entries that are not Calico's.

The pipeline must reject the first and ignore the second without losing a good line; the
corpus counts both so a test can check the totals.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pipeline.core.calico_iface import cali_iface_name
from pipeline.tooling.synthetic.catalog import EXTERNAL_V4, KMSG
from pipeline.tooling.synthetic.model import Entry, is_stable_target
from pipeline.tooling.synthetic.traffic import Traffic


def emit_noise(traffic: Traffic) -> None:
    """Malformed Calico lines (rejected) and non-Calico journal entries (ignored)."""
    rng = traffic.rng
    n_bad = max(3, traffic.cluster.n_records // 1000)
    senders = [p for p in traffic.cluster.pods if is_stable_target(p) and p.live_from <= traffic.cluster.start_us]
    kinds = ("truncated", "bad_address", "bad_port")
    for i in range(n_bad):
        p = rng.choice(senders)
        assert p.node is not None and p.ip4 is not None
        ext, _, _ = rng.choice(EXTERNAL_V4)
        body = traffic.line(
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
        traffic.add(traffic.ts(), p.node, body, kind="malformed")
        traffic.cluster.count(f"malformed_{kind}")
    n_ign = max(6, traffic.cluster.n_records // 100)
    for i in range(n_ign):
        node = rng.choice(traffic.cluster.nodes)
        ts = traffic.ts()
        if i % 3 == 2:
            pod = rng.choice(traffic.cluster.pods)
            t = datetime.fromtimestamp(ts / 1e6, UTC)
            msg = (
                f'I{t:%m%d %H:%M:%S.%f}    {1000 + node.idx} kubelet.go:2437] "SyncLoop UPDATE" '
                f'source="api" pods=["{pod.namespace}/{pod.name}"]'
            )
            traffic.entries.append(Entry(ts, node, msg, "6", "kubelet"))
        else:
            prio, tmpl = rng.choice(KMSG)
            msg = tmpl.format(
                iface=cali_iface_name("x", traffic.cluster.suffix(6)),
                hex=traffic.cluster.hex_id(24),
                sec=ts // 1_000_000,
                n=rng.randint(1000, 99999),
            )
            traffic.entries.append(Entry(ts, node, msg, prio, "kernel"))
    traffic.cluster.count("non_calico", n_ign)
