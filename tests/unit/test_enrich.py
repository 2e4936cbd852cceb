"""Enrichment: source attribution (IP and cali interface), destination kinds, batch bookkeeping."""

from __future__ import annotations

from pipeline.core.calico_iface import cali_iface_name
from pipeline.core.enrich import Batch, add_record, attribute_source, classify_ip
from pipeline.core.envelopes import EnvelopeError, record_id
from pipeline.core.models import OwnerEvent, PacketLog, RawRecord
from pipeline.core.quarantine import quarantine
from pipeline.core.registry import OwnershipRegistry
from pipeline.core.rows import REJECT_COLUMNS

S = 10**9
T0 = 1_700_000_000 * S


def ev(ip, kind, ns, name, uid, start, end=None, workload="", wk="") -> OwnerEvent:
    return OwnerEvent(ip=ip, kind=kind, namespace=ns, name=name, uid=uid, valid_from_ns=start, valid_to_ns=end,
                      observed_ns=T0 + 10**6 * S, workload=workload, workload_kind=wk, node="n1")


def registry() -> OwnershipRegistry:
    r = OwnershipRegistry()
    for e in [
        ev("10.244.1.5", "pod", "shop", "web-abc", "u1", T0, workload="web", wk="Deployment"),
        ev("10.244.1.6", "pod", "batch", "job-1", "u2", T0, T0 + 100 * S, workload="nightly", wk="CronJob"),
        ev("10.244.1.6", "pod", "pay", "api-1", "u3", T0 + 200 * S, workload="api", wk="Deployment"),
        ev("fd00:10:244:1::5", "pod", "shop", "web-abc", "u1", T0, workload="web", wk="Deployment"),
        ev("10.96.0.10", "service", "kube-system", "kube-dns", "s1", T0),
        ev("10.0.0.11", "node", "", "node1", "n1", T0),
    ]:
        r.apply(e)
    return r


def pkt(src, dst, in_iface="", out_iface="eth0", family=4, proto="TCP", dport=443) -> PacketLog:
    return PacketLog(in_iface, out_iface, src, dst, family, proto, 40000, dport, 60)


def test_destination_kinds():
    r = registry()
    t = T0 + 10 * S
    assert classify_ip("10.244.1.5", t, r) == ("pod", "shop", "Deployment", "web", "web-abc")
    assert classify_ip("10.96.0.10", t, r) == ("service", "kube-system", "Service", "kube-dns", "")
    assert classify_ip("10.0.0.11", t, r) == ("node", "", "Node", "node1", "")
    assert classify_ip("140.82.112.3", t, r)[0] == "external"
    assert classify_ip("2606:4700::6810:84e5", t, r)[0] == "external"
    assert classify_ip("10.250.0.1", t, r)[0] == "unknown"
    assert classify_ip("192.0.2.1", t, r)[0] == "unknown"  # documentation range is not globally routable
    assert classify_ip("10.244.1.5", T0 - S, r)[0] == "unknown"  # before the pod existed


def test_source_attribution_by_ip_iface_and_time():
    r = registry()
    web_if = cali_iface_name("shop", "web-abc")
    (kind, ns, *_), match = attribute_source(pkt("10.244.1.5", "1.1.1.1", web_if), T0 + S, r, "cali")
    assert (kind, ns, match) == ("pod", "shop", "ip+iface")
    # IPv6 of the same pod
    assert attribute_source(pkt("fd00:10:244:1::5", "2606:4700::1", web_if, family=6), T0 + S, r, "cali")[1] == \
        "ip+iface"
    # Reused IP: the Job pod during its run, the new pod after it started.
    assert attribute_source(pkt("10.244.1.6", "1.1.1.1"), T0 + 50 * S, r, "cali")[0][1] == "batch"
    assert attribute_source(pkt("10.244.1.6", "1.1.1.1"), T0 + 300 * S, r, "cali")[0][1] == "pay"
    # Interface known, IP not: the interface names the pod.
    assert attribute_source(pkt("10.244.7.7", "1.1.1.1", web_if), T0 + S, r, "cali")[1] == "iface"
    # IP says one pod, the interface another: the interface the packet came from wins.
    (_, ns, *_), match = attribute_source(pkt("10.244.1.6", "1.1.1.1", web_if), T0 + 300 * S, r, "cali")
    assert (ns, match) == ("shop", "conflict")
    # Nobody: unknown private source, no namespace.
    (kind, ns, *_), match = attribute_source(pkt("10.244.9.9", "1.1.1.1", "cali0123456789a"), T0, r, "cali")
    assert (kind, ns, match) == ("unknown", "", "none")


def line(src, dst, iface, proto="TCP") -> str:
    ports = "SPT=40000 DPT=443 WINDOW=1 RES=0x00 SYN URGP=0 " if proto == "TCP" else "TYPE=8 CODE=0 ID=1 SEQ=1 "
    return (f"calico-packet: IN={iface} OUT=eth0 SRC={src} DST={dst} LEN=60 TOS=0x00 PREC=0x00 TTL=63 ID=1 DF "
            f"PROTO={proto} {ports}")


def rec(message, n=0, ts=T0 + S) -> RawRecord:
    return RawRecord(record_id("t", n, message), ts, "node1", message, "journal")


def test_batch_counts_every_outcome():
    r = registry()
    web_if = cali_iface_name("shop", "web-abc")
    b = Batch()
    good = rec(line("10.244.1.5", "140.82.112.3", web_if))
    for item in [good, good, rec(line("10.244.1.5", "10.96.0.10", web_if, "ICMP"), 1),
                 rec("some other kernel message", 2), rec(line("10.244.1.5", "10.0.0.999", web_if), 3),
                 rec(line("10.99.0.1", "8.8.8.8", "cali0123456789a"), 4)]:
        add_record(b, item, r, "calico-packet", "cali")
    long = rec("calico-packet: " + "x" * 100, 5)
    long.orig_len = 10_000_000
    add_record(b, long, r, "calico-packet", "cali")
    undecodable = RawRecord(record_id("u"), T0, "", "{bad json", "undecodable:bad_json", {"error": "e"})
    add_record(b, undecodable, r, "calico-packet", "cali")
    b.add_envelope_error(EnvelopeError("bad_json", "x", "{"), T0, 0, 7)
    b.add_envelope_error(EnvelopeError("bad_json", "x", "{"), T0, 0, 7)  # same message seen twice
    c = b.counts
    assert (c["parsed"], c["duplicate"], c["ignored"], c["rejected"], c["envelope_rejected"], c["unattributed"]) \
        == (3, 1, 1, 2, 2, 1)
    assert b.flow_rows == 3 and b.reject_rows == 4
    assert b.flows["dst_port"][1] is None and b.flows["dst_kind"] == ["external", "service", "external"]
    assert sorted(b.rejects["reason"]) == ["bad_dst_addr", "bad_json", "bad_json", "too_long"]
    assert b.rejects["raw_len"][b.rejects["reason"].index("too_long")] == 10_000_000
    assert all(len(v) == b.flow_rows for v in b.flows.values())


def test_timestamps_out_of_range_are_rejected_at_receipt_time():
    r = registry()
    web_if = cali_iface_name("shop", "web-abc")
    b = Batch()
    msg = line("10.244.1.5", "140.82.112.3", web_if)
    for n, ts in enumerate([0, -5, 10**18 * 9, T0 + S]):
        add_record(b, rec(msg, n, ts), r, "calico-packet", "cali")
    assert b.counts["rejected"] == 3 and b.counts["parsed"] == 1
    assert set(b.rejects["reason"]) == {"timestamp_out_of_range"}
    assert all(abs(ts * 1000 - (b.max_ts_ns - 86_400 * S)) < 60 * S for ts in b.rejects["ts"])


def test_batch_bytes_follow_the_raw_text_of_rejects():
    """The worker flushes on Batch.approx_bytes: 64 KiB rejects must weigh what they hold."""
    r = registry()
    batch = Batch()
    line = "calico-packet: IN=cali0123456789a OUT=eth0 SRC=10.244.1.5 DST=1.1.1.1 PROTO=TCP SPT=1 DPT=443 "
    add_record(batch, RawRecord("a" * 32, T0, "n1", line, "journal"), r, "calico-packet", "cali")
    small = batch.approx_bytes
    assert 0 < small < 4096
    for i in range(10):
        add_record(batch, RawRecord(f"{i:032x}", T0, "n1", "calico-packet: IN=" + "x" * 60_000, "journal"), r,
                   "calico-packet", "cali")
    assert batch.reject_rows == 10
    assert 600_000 < batch.approx_bytes - small < 700_000


def test_quarantined_rows_become_insert_rejects():
    r = registry()
    batch = Batch()
    iface = cali_iface_name("shop", "web-abc")
    line = f"calico-packet: IN={iface} OUT=eth0 SRC=10.244.1.5 DST=1.1.1.1 LEN=60 PROTO=TCP SPT=1 DPT=443 "
    add_record(batch, RawRecord("a" * 32, T0, "n1", line, "journal"), r, "calico-packet", "cali")
    batch.add_reject("b" * 32, T0, "n1", "journal", "line", "bad_port", "DPT=x", "caf\u00e9 \ud800", 7, 2, 9)
    out = Batch()
    quarantine(out, "flows", batch.flow_data.row(0), "VIOLATED_CONSTRAINT", "Constraint `c` is violated")
    quarantine(out, "rejects", batch.reject_tuples[0], "CANNOT_PARSE_TEXT", "bad")
    flow, rej = (dict(zip(REJECT_COLUMNS, row, strict=True)) for row in out.reject_tuples)
    assert (flow["record_id"], flow["ts"], flow["stage"], flow["reason"], flow["detail"]) == (
        int("a" * 32, 16), T0 // 1000, "insert", "VIOLATED_CONSTRAINT", "Constraint `c` is violated")
    assert flow["raw"] == (f"IN={iface} OUT=eth0 SRC=10.244.1.5 DST=1.1.1.1 LEN=60 PROTO=TCP SPT=1 DPT=443 "
                           "| src=pod:shop/web/web-abc (ip+iface) dst=external")
    assert flow["raw_len"] == len(flow["raw"]) and out.reject_ts[0] == T0
    assert (rej["stage"], rej["reason"], rej["raw"], rej["raw_len"], rej["kafka_partition"], rej["kafka_offset"]) == (
        "insert", "CANNOT_PARSE_TEXT", "caf\\xe9 \\ud800", 7, 2, 9)
    assert rej["detail"] == "bad (was line/bad_port: DPT=x)"
