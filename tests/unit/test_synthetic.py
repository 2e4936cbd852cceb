"""Invariants of the synthetic corpus generator.

The consistency check re-derives the expected answer from the generated
inventory and journal with a deliberately small reference resolver written
here (not the package's parser or registry): the generator's model-based truth
and what its own output says must agree.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import subprocess
import sys
import time
from datetime import UTC, datetime

import orjson
import pytest

from pipeline.core.calico_iface import cali_iface_name
from pipeline.tooling.synthetic import (
    CLIENTS_V4,
    EXTERNAL_V4,
    EXTERNAL_V6,
    Corpus,
    generate,
    to_fluentbit,
    to_syslog,
)
from tests.conftest import ROOT

CURSOR_RE = re.compile(r"s=[0-9a-f]{32};i=[0-9a-f]+;b=[0-9a-f]{32};m=[0-9a-f]+;t=[0-9a-f]+;x=[0-9a-f]{16}")
REQUIRED = (
    "__CURSOR",
    "__REALTIME_TIMESTAMP",
    "__MONOTONIC_TIMESTAMP",
    "_BOOT_ID",
    "_TRANSPORT",
    "PRIORITY",
    "SYSLOG_FACILITY",
    "SYSLOG_IDENTIFIER",
    "_HOSTNAME",
    "_MACHINE_ID",
    "MESSAGE",
)
DOC_NETS = [
    ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
]

_timings: dict[str, float] = {}


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    t0 = time.perf_counter()
    c = generate()
    _timings["default"] = time.perf_counter() - t0
    return c


@pytest.fixture(scope="module")
def small() -> Corpus:
    return generate(seed=3, namespaces=12, records=3000)


def _distinct(c: Corpus) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for line in c.journal:
        d = orjson.loads(line)
        out.setdefault(d["__CURSOR"], d)
    return out


def _ts(s: str) -> int:
    return int(datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp() * 1_000_000)


# ----------------------------------------------------------------- reference


def _fields(message: str) -> dict[str, str] | str:
    """Tiny reference parse: 'ignored', 'rejected' or the first value of each KEY=."""
    if message.startswith("calico-packet: "):
        body = message[len("calico-packet: ") :]
    elif message.startswith("calico-packetIN="):
        body = message[len("calico-packet") :]
    else:
        return "ignored"
    if not body.endswith(" "):
        return "rejected"
    f: dict[str, str] = {}
    for tok in body.split(" "):
        if "=" in tok:
            k, v = tok.split("=", 1)
            f.setdefault(k, v)
    try:
        ipaddress.ip_address(f["SRC"])
        ipaddress.ip_address(f["DST"])
        f["PROTO"]  # noqa: B018
    except (KeyError, ValueError):
        return "rejected"
    for k in ("SPT", "DPT"):
        if k in f and not 0 <= int(f[k]) <= 65535:
            return "rejected"
    return f


class _Owners:
    """Time-aware owners from the inventory: finished pods stop owning at finishedAt."""

    def __init__(self, inventory: dict) -> None:
        self.pods: dict[str, list[tuple[int, float, str, str]]] = {}
        self.svcs: dict[str, str] = {}
        self.nodes: dict[str, str] = {}
        self.ifaces: set[str] = set()
        for it in inventory["items"]:
            kind, meta = it["kind"], it["metadata"]
            if kind == "Pod":
                self.ifaces.add(cali_iface_name(meta["namespace"], meta["name"]))
                st = it["status"]
                if it["spec"].get("hostNetwork") or "startTime" not in st:
                    continue
                end: float = float("inf")
                if st["phase"] in ("Succeeded", "Failed"):
                    end = max(_ts(c["state"]["terminated"]["finishedAt"]) for c in st["containerStatuses"])
                for ip in st.get("podIPs", []):
                    key = ipaddress.ip_address(ip["ip"]).compressed
                    self.pods.setdefault(key, []).append(
                        (_ts(st["startTime"]), end, meta["namespace"], meta["name"])
                    )
            elif kind == "Service":
                for ip in it["spec"].get("clusterIPs", []):
                    if ip != "None":
                        self.svcs[ipaddress.ip_address(ip).compressed] = f"{meta['namespace']}/{meta['name']}"
            elif kind == "Node":
                for a in it["status"]["addresses"]:
                    if a["type"] in ("InternalIP", "ExternalIP"):
                        self.nodes[a["address"]] = meta["name"]

    def pod(self, ip: str, ts: int) -> tuple[str, str] | None:
        hits = [(ns, name) for lo, hi, ns, name in self.pods.get(ip, []) if lo <= ts < hi]
        assert len(hits) <= 1, f"{ip} owned twice at {ts}"
        return hits[0] if hits else None


def _reference(c: Corpus) -> tuple[dict, dict[str, int]]:
    owners = _Owners(c.inventory)
    sets: dict[str, dict[str, set[str]]] = {}
    conns: dict[str, int] = {}
    counts = {"records": 0, "rejected": 0, "ignored": 0, "unowned": 0}
    for d in _distinct(c).values():
        f = _fields(d["MESSAGE"])
        if f == "ignored":
            counts["ignored"] += 1
            continue
        if f == "rejected":
            counts["rejected"] += 1
            continue
        assert isinstance(f, dict)
        counts["records"] += 1
        if not f["IN"].startswith("cali"):
            continue
        ts = int(d["__REALTIME_TIMESTAMP"])
        src = owners.pod(ipaddress.ip_address(f["SRC"]).compressed, ts)
        if src is None:
            counts["unowned"] += 1
            assert f["IN"] not in owners.ifaces
            continue
        assert f["IN"] == cali_iface_name(*src), "IN interface and SRC owner disagree"
        dst = ipaddress.ip_address(f["DST"]).compressed
        owner = owners.pod(dst, ts)
        if owner is not None:
            cls, key = "pod", owner[0]
        elif dst in owners.svcs:
            cls, key = "svc", owners.svcs[dst]
        elif dst in owners.nodes:
            cls, key = "node", dst
        elif ipaddress.ip_address(dst).is_global:
            cls, key = "external", dst
        else:
            cls, key = "unknown", dst
        s = sets.setdefault(src[0], {k: set() for k in ("pod", "svc", "external", "node", "unknown")})
        s[cls].add(key)
        conns[src[0]] = conns.get(src[0], 0) + 1
    fan = {
        ns: {
            "dests": len(s["pod"]) + len(s["svc"]) + len(s["external"]),
            "pod_ns": len(s["pod"]),
            "svc": len(s["svc"]),
            "external": len(s["external"]),
            "node": len(s["node"]),
            "unknown": len(s["unknown"]),
            "connections": conns[ns],
        }
        for ns, s in sorted(sets.items())
    }
    return fan, counts


# --------------------------------------------------------------------- tests


def test_deterministic_same_seed_and_different_seed() -> None:
    a = generate(seed=7, namespaces=10, records=2000)
    b = generate(seed=7, namespaces=10, records=2000)
    assert a.journal == b.journal
    assert a.inventory == b.inventory
    assert a.expected == b.expected
    c = generate(seed=8, namespaces=10, records=2000)
    assert c.journal != a.journal
    assert c.inventory != a.inventory


def test_deterministic_across_processes() -> None:
    """String hashing is randomised per process; output must not depend on it."""
    code = (
        "import hashlib;from pipeline.tooling.synthetic import generate;"
        "c=generate(seed=5,namespaces=10,records=1500);"
        "print(hashlib.sha256('\\n'.join(c.journal).encode()+repr(c.expected).encode()).hexdigest())"
    )
    root = ROOT
    digests = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=root,
            env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for seed in ("1", "2")
    }
    here = generate(seed=5, namespaces=10, records=1500)
    digests.add(hashlib.sha256("\n".join(here.journal).encode() + repr(here.expected).encode()).hexdigest())
    assert len(digests) == 1


def test_journal_lines_are_journalctl_json(corpus: Corpus) -> None:
    for line in corpus.journal:
        d = orjson.loads(line)
        for k in REQUIRED:
            assert isinstance(d.get(k), str), (k, line)
        assert CURSOR_RE.fullmatch(d["__CURSOR"]), d["__CURSOR"]
        ts_us = int(d["__REALTIME_TIMESTAMP"])
        assert corpus.start_ns <= ts_us * 1000 < corpus.end_ns
        assert int(d["__MONOTONIC_TIMESTAMP"]) > 0
        assert f"b={d['_BOOT_ID']};" in d["__CURSOR"]
        assert f"t={ts_us:x};" in d["__CURSOR"]
        assert d["PRIORITY"] in {"3", "4", "5", "6"}
        if d["_TRANSPORT"] == "kernel":
            assert d["SYSLOG_IDENTIFIER"] == "kernel" and d["SYSLOG_FACILITY"] == "0"
            assert not d["MESSAGE"].startswith("kernel:")


def test_cursors_unique_and_duplicates_exact(corpus: Corpus) -> None:
    by_cursor: dict[str, str] = {}
    positions: dict[str, list[int]] = {}
    for i, line in enumerate(corpus.journal):
        cur = orjson.loads(line)["__CURSOR"]
        assert by_cursor.setdefault(cur, line) == line, "a repeated cursor must repeat the exact line"
        positions.setdefault(cur, []).append(i)
    repeats = [p for p in positions.values() if len(p) > 1]
    assert repeats, "duplicates expected"
    gaps = [p[1] - p[0] for p in repeats]
    assert min(gaps) == 1, "some duplicates are adjacent"
    assert max(gaps) > 1000, "some duplicates are far apart (replay)"
    assert len(corpus.journal) - len(by_cursor) == corpus.scenarios["duplicates"]
    # (s, i) identifies an entry in journald too: distinct entries never share it.
    si = {tuple(c.split(";")[:2]) for c in by_cursor}
    assert len(si) == len(by_cursor)


def test_counts_add_up(corpus: Corpus) -> None:
    e = corpus.expected
    assert e.records == 30_000
    assert e.records + e.rejected + e.ignored == len(_distinct(corpus))
    assert e.rejected > 0 and e.ignored > 0 and e.unowned_sources > 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"seed": 3, "namespaces": 12, "records": 3000},
        {"seed": 11, "namespaces": 4, "records": 400, "duration_s": 900},
        {"seed": 2, "namespaces": 150, "records": 8000, "nft_prefix_nodes": 0},
    ],
)
def test_ground_truth_matches_reference(kwargs: dict, corpus: Corpus) -> None:
    c = corpus if not kwargs else generate(**kwargs)
    fan, counts = _reference(c)
    assert counts["records"] == c.expected.records
    assert counts["rejected"] == c.expected.rejected
    assert counts["ignored"] == c.expected.ignored
    assert counts["unowned"] == c.expected.unowned_sources
    assert fan == c.expected.fanout


def test_ip_reuse_job_pod_in_inventory(corpus: Corpus) -> None:
    pods = [it for it in corpus.inventory["items"] if it["kind"] == "Pod"]
    done = [p for p in pods if p["status"]["phase"] == "Succeeded"]
    running = [p for p in pods if p["status"]["phase"] == "Running" and not p["spec"].get("hostNetwork")]
    pairs = [
        (d, r)
        for d in done
        for r in running
        if d["status"]["podIP"] == r["status"]["podIP"]
        and d["metadata"]["namespace"] != r["metadata"]["namespace"]
    ]
    assert len(pairs) == 1
    d, r = pairs[0]
    assert d["metadata"]["ownerReferences"][0]["kind"] == "Job"
    finished = d["status"]["containerStatuses"][0]["state"]["terminated"]["finishedAt"]
    assert _ts(finished) <= _ts(r["status"]["startTime"])
    assert _ts(r["metadata"]["creationTimestamp"]) >= _ts(finished)
    # Lines from that IP exist both during the Job's run and after the new pod started.
    ip = d["status"]["podIP"]
    stamps = [
        int(x["__REALTIME_TIMESTAMP"])
        for x in _distinct(corpus).values()
        if f"SRC={ip} " in x["MESSAGE"] and "IN=cali" in x["MESSAGE"]
    ]
    assert any(_ts(d["status"]["startTime"]) <= t < _ts(finished) for t in stamps)
    assert any(t >= _ts(r["status"]["startTime"]) for t in stamps)
    assert corpus.scenarios["ip_reuse_job"] > 0 and corpus.scenarios["ip_reuse_running"] > 0


def test_scenarios_present(corpus: Corpus) -> None:
    entries = list(_distinct(corpus).values())
    msgs = [d["MESSAGE"] for d in entries]
    owners = _Owners(corpus.inventory)
    node_ips = set(owners.nodes)
    assert any("SRC=fd00:0010:0244:" in m for m in msgs), "uncompressed IPv6 pod source"
    assert any("PROTO=ICMP TYPE=8 CODE=0 ID=" in m and " SPT=" not in m for m in msgs)
    assert any("PROTO=ICMPv6 TYPE=128 " in m for m in msgs)
    assert any(" DST=10.96.0.10 " in m and "PROTO=UDP " in m and " DPT=53 " in m for m in msgs)
    assert any(m.startswith("calico-packet: IN=eth0 OUT=cali") for m in msgs), "ingress"
    hostnet = [m for m in msgs if "IN= OUT=eth0 " in m]
    assert hostnet and all(m.split("SRC=")[1].split(" ")[0] in node_ips for m in hostnet)
    pods = [it for it in corpus.inventory["items"] if it["kind"] == "Pod"]
    host_pods = [p for p in pods if p["spec"].get("hostNetwork")]
    assert host_pods and all(p["status"]["podIP"] in node_ips for p in host_pods)
    unowned = [m for m in msgs if "IN=cali" in m and m.split("IN=")[1].split(" ")[0] not in owners.ifaces]
    assert len(unowned) == corpus.expected.unowned_sources
    assert any("SRC=10.0.0.999 " in m for m in msgs)
    assert any(" DPT=70000 " in m for m in msgs)
    assert any(m.startswith("calico-packet") and not m.endswith(" ") for m in msgs), "truncated"
    assert any(not m.startswith("calico-packet") for m in msgs)
    assert any(d["_TRANSPORT"] != "kernel" for d in entries)
    nft = [d for d in entries if d["MESSAGE"].startswith("calico-packetIN=")]
    assert nft and all(d["PRIORITY"] == "6" for d in nft)
    dual = [p for p in pods if len(p["status"].get("podIPs", [])) == 2]
    assert dual
    assert any(p["status"]["phase"] == "Pending" and "podIP" not in p["status"] for p in pods)
    svcs = [it for it in corpus.inventory["items"] if it["kind"] == "Service"]
    assert any(
        s["metadata"]["name"] == "kube-dns" and s["metadata"]["namespace"] == "kube-system" for s in svcs
    )
    assert any(s["spec"].get("clusterIP") == "None" for s in svcs)
    for s in svcs:
        for ip in s["spec"].get("clusterIPs", []):
            if ip != "None" and ipaddress.ip_address(ip).version == 4:
                assert ipaddress.ip_address(ip) in ipaddress.ip_network("10.96.0.0/12")
    for name in ("ipv6", "icmp", "icmpv6", "ingress", "unowned", "hostnetwork", "non_calico", "out_of_order"):
        assert corpus.scenarios[name] > 0, name
    # Quiet namespaces exist: in the inventory, absent from the fan-out.
    namespaces = {it["metadata"]["name"] for it in corpus.inventory["items"] if it["kind"] == "Namespace"}
    assert len(namespaces) == 40
    assert set(corpus.expected.fanout) < namespaces


def test_kernel_line_format(corpus: Corpus) -> None:
    """Every field ends with a space; IPv6 lines carry TC/HOPLIMIT/FLOWLBL, IPv4 ones TOS/PREC/TTL/ID."""
    for d in _distinct(corpus).values():
        f = _fields(d["MESSAGE"])
        if not isinstance(f, dict):
            continue
        m = d["MESSAGE"]
        assert m.endswith(" ") and "  " not in m
        if ":" in f["SRC"]:
            assert len(f["SRC"]) == 39 and len(f["DST"]) == 39, "kernel prints IPv6 uncompressed"
            assert " TC=0 HOPLIMIT=" in m and " FLOWLBL=" in m and " TTL=" not in m
        else:
            assert " TOS=0x00 PREC=0x00 TTL=" in m
        if f["PROTO"] == "TCP":
            assert m.endswith(" RES=0x00 SYN URGP=0 ")
        elif f["PROTO"] == "UDP":
            assert re.search(r" PROTO=UDP SPT=\d+ DPT=\d+ LEN=\d+ $", m)


def test_external_ips_are_global(corpus: Corpus) -> None:
    for ip, _, _ in EXTERNAL_V4 + EXTERNAL_V6:
        assert ipaddress.ip_address(ip).is_global, ip
    for ip in CLIENTS_V4:
        assert ipaddress.ip_address(ip).is_global, ip
    owners = _Owners(corpus.inventory)
    for d in _distinct(corpus).values():
        f = _fields(d["MESSAGE"])
        if not isinstance(f, dict):
            continue
        for k in ("SRC", "DST"):
            a = ipaddress.ip_address(f[k])
            assert not any(a in n for n in DOC_NETS), a
            c = a.compressed
            if c not in owners.pods and c not in owners.svcs and c not in owners.nodes and not a.is_private:
                assert a.is_global, a


def test_timestamps_spread_and_a_few_out_of_order(corpus: Corpus) -> None:
    stamps = [int(orjson.loads(x)["__REALTIME_TIMESTAMP"]) for x in corpus.journal]
    back = sum(1 for a, b in zip(stamps, stamps[1:], strict=False) if b < a)
    assert 0 < back < len(stamps) // 20
    span = (max(stamps) - min(stamps)) * 1000
    assert span > 0.95 * (corpus.end_ns - corpus.start_ns)


def test_to_syslog_shape(corpus: Corpus) -> None:
    kern = next(x for x in corpus.journal if '"MESSAGE":"calico-packet: ' in x)
    line = to_syslog(kern)
    d = orjson.loads(kern)
    assert re.fullmatch(
        r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d node\d kernel: \[ *\d+\.\d{6}\] calico-packet: IN=.* ", line
    ), line
    assert line.endswith(d["MESSAGE"])
    assert line.startswith("Nov 20 ")
    other = next(x for x in corpus.journal if '"_TRANSPORT":"stdout"' in x)
    assert re.fullmatch(r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d node\d kubelet\[\d+\]: .+", to_syslog(other))


def test_to_fluentbit_shape(corpus: Corpus) -> None:
    for x in corpus.journal[:200]:
        d = orjson.loads(x)
        r = to_fluentbit(x)
        for k in ("MESSAGE", "_HOSTNAME", "_TRANSPORT", "PRIORITY", "_BOOT_ID", "@timestamp"):
            assert k in r
        assert not any(k.startswith("__") for k in r)
        assert r["MESSAGE"] == d["MESSAGE"]
        assert isinstance(r["@timestamp"], float)
        assert round(r["@timestamp"] * 1e6) == int(d["__REALTIME_TIMESTAMP"])
        orjson.dumps(r)


def test_start_and_validation() -> None:
    c = generate(seed=1, namespaces=4, records=400, start=datetime(2027, 1, 2, 3, 4, 5), duration_s=900)
    assert c.start_ns == int(datetime(2027, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()) * 10**9
    assert c.end_ns - c.start_ns == 900 * 10**9
    assert c.expected.records == 400
    assert not any("calico-packetIN=" in x for x in generate(records=1000, nft_prefix_nodes=0).journal)
    with pytest.raises(ValueError):
        generate(namespaces=3)
    with pytest.raises(ValueError):
        generate(records=10)


def test_fast(corpus: Corpus) -> None:
    assert _timings["default"] < 3.0, f"30k records took {_timings['default']:.2f}s"
