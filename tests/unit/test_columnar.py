"""The batch path against the reference: ``add_records`` must equal ``add_record`` record by record.

Fuzzed batches mix well-formed lines with mutated and malformed ones, duplicates, timestamps
out of range, lines too long, undecodable records, owned/unowned/held sources and ownership
that changes inside the batch's time range; rows, rejects (reasons and details), counts, the
records held and their order must come out identical.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core import columnar
from pipeline.core.calico_iface import cali_iface_name
from pipeline.core.calico_line import MAX_LINE
from pipeline.core.columnar import add_records, next_batch
from pipeline.core.enrich import Batch, add_record
from pipeline.core.envelopes import UNDECODABLE, record_id
from pipeline.core.models import OwnerEvent, RawRecord
from pipeline.core.registry import OwnershipRegistry
from pipeline.core.rows import FLOW_COLUMNS

S = 10**9
T0 = 1_790_000_000 * S
PREFIX, IFACE = "calico-packet", "cali"
PODS = [("shop", "web-1"), ("shop", "web-2"), ("pay", "api-1"), ("batch", "job-1")]
POD_IPS = ["10.244.1.5", "10.244.1.6", "10.244.2.7", "fd00:10:244::5"]
OTHER_IPS = ["8.8.8.8", "10.96.0.10", "10.0.0.11", "192.0.2.1", "10.250.0.1", "2606:4700::1", "1.1.1.1"]
# IPv6 as the kernel prints it (every hextet, leading zeros): stored compressed, as the registry knows it
FULL_V6 = ["fd00:0010:0244:0000:0000:0000:0000:0005", "2606:4700:0000:0000:0000:0000:0000:0001"]
BAD_IPS = ["256.1.1.1", "10.244.01.5", "1.2.3", "1.2.3.4.5", "999.999.999.999", "fd00::1::2"]
IFACES = [cali_iface_name(ns, name) for ns, name in PODS] + ["cali0123456789a", "eth0", "vxlan.calico", ""]
FLAGS = ["SYN", "ACK", "FIN", "RST", "PSH", "URG", "ECE", "CWR"]


@st.composite
def ownership(draw: st.DrawFn) -> list[OwnerEvent]:
    """Pods whose IPs change hands inside the batch's time range, a Service with endpoints, a node."""
    events = []
    for i, (ns, name) in enumerate(PODS):
        start = T0 + draw(st.integers(-20, 20)) * S
        end = draw(st.one_of(st.none(), st.integers(start, T0 + 30 * S)))
        ip = draw(st.sampled_from(POD_IPS + [""]))
        uid = f"u{i}"
        common = dict(kind="pod", namespace=ns, name=name, uid=uid, valid_from_ns=start, valid_to_ns=end,
                      observed_ns=T0, workload=name.split("-")[0], workload_kind="Deployment", node="n1")
        events.append(OwnerEvent(ip="", **common))
        if ip:
            events.append(OwnerEvent(ip=ip, **common))
    events.append(OwnerEvent(ip="10.96.0.10", kind="service", namespace="kube-system", name="kube-dns", uid="s1",
                             valid_from_ns=T0 - 100 * S, valid_to_ns=None, observed_ns=T0))
    events.append(OwnerEvent(ip="10.0.0.11", kind="node", namespace="", name="n1", uid="n1",
                             valid_from_ns=T0 - 100 * S, valid_to_ns=None, observed_ns=T0))
    for port in draw(st.lists(st.sampled_from([0, 53, 443, 8080]), max_size=2, unique=True)):
        start = T0 + draw(st.integers(-10, 10)) * S
        events.append(OwnerEvent(ip=draw(st.sampled_from(POD_IPS)), kind="endpoint", namespace="shop", name="web",
                                 uid=f"es{port}", valid_from_ns=start,
                                 valid_to_ns=draw(st.one_of(st.none(), st.just(start + 5 * S))), observed_ns=T0,
                                 port=port, protocol=draw(st.sampled_from(["TCP", "UDP"])),
                                 target=draw(st.sampled_from(["", "web-1", "api-1"]))))
    return events


def number(lo: int, hi: int) -> st.SearchStrategy[str]:
    """A field's digits, often at or just past its limits (or with leading zeros)."""
    edges = [str(lo), str(hi), str(hi + 1), "99999", "100000", "0" + str(hi), "007"]
    return st.integers(lo, hi).map(str) | st.sampled_from(edges)


def moment() -> st.SearchStrategy[int]:
    """A time in the batch's range, often exactly on (or 1 ns beside) a whole second, where claims start and end."""
    return st.integers(-25 * S, 35 * S).map(lambda d: T0 + d) | st.builds(
        lambda s, d: T0 + s * S + d, st.integers(-25, 35), st.sampled_from([-1, 0, 1]))


@st.composite
def palette(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """A batch's few addresses and interfaces, so that its flows repeat at different times."""
    ips = draw(st.lists(st.sampled_from(POD_IPS + OTHER_IPS + FULL_V6), min_size=2, max_size=4, unique=True))
    return ips + ["10.244.1.5", "fd00:10:244::5"], draw(st.lists(st.sampled_from(IFACES), min_size=1, max_size=3))


@st.composite
def good_line(draw: st.DrawFn, ips: list[str], ifaces: list[str]) -> str:
    """A line as nf_log prints it (IPv4 mostly, IPv6 and ICMP too)."""
    v6 = draw(st.booleans()) and draw(st.booleans())
    ips = [ip for ip in ips if (":" in ip) == v6]
    src, dst = draw(st.sampled_from(ips)), draw(st.sampled_from(ips))
    if draw(st.integers(0, 9)) == 0:  # one address the kernel would not print
        bad = draw(st.sampled_from(BAD_IPS))
        src, dst = (bad, dst) if draw(st.booleans()) else (src, bad)
    start = draw(st.sampled_from([": ", "", ":", " "]))
    head = f"{PREFIX}{start}IN={draw(st.sampled_from(ifaces))} OUT={draw(st.sampled_from(IFACES))} "
    if draw(st.booleans()):
        head += "MAC=ee:ee:ee:ee:ee:ee:02:f0:ce:32:44:67:08:00 "
    head += f"SRC={src} DST={dst} LEN={draw(number(20, 65535 + 40))} "
    if v6:
        head += "TC=0 HOPLIMIT=63 FLOWLBL=5 "
    else:
        head += f"TOS=0x00 PREC=0x00 TTL=63 ID={draw(st.integers(0, 65535))} "
        head += "".join(f"{f} " for f in draw(st.lists(st.sampled_from(["CE", "DF", "MF"]), max_size=2)))
    proto = draw(st.sampled_from(["TCP", "UDP", "ICMP"]))
    ports = f"SPT={draw(number(0, 65535))} DPT={draw(st.sampled_from(['0', '53', '443', '8080']) | number(0, 65535))} "
    if proto == "TCP":
        seq = f"SEQ={draw(st.integers(0, 2**32))} ACK=0 " if draw(st.booleans()) else ""
        flags = "".join(f"{f} " for f in draw(st.lists(st.sampled_from(FLAGS), max_size=3)))
        return f"{head}PROTO=TCP {ports}{seq}WINDOW=64240 RES=0x00 {flags}URGP=0 "
    if proto == "UDP":
        return f"{head}PROTO=UDP {ports}LEN={draw(st.integers(8, 70000))} "
    return f"{head}PROTO=ICMP TYPE=8 CODE=0 ID=1 SEQ=1 "


NOISE = st.sampled_from([" ", "  ", "=", "[", "]", "0", "9", "99999", "256", "01", ":", "\n", "\r\n", "é", "٣",
                         "PROTO=", "LEN=", "SRC=", "IN=", "SPT=", "ACK ", "1_0", "\x00"])


@st.composite
def mutated(draw: st.DrawFn, line: str) -> str:
    """The line with a few characters inserted, removed or replaced, or cut short."""
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(line)))
        how = draw(st.sampled_from(["insert", "delete", "replace", "cut"]))
        if how == "cut":
            line = line[:at]
        elif how == "delete":
            line = line[:at] + line[at + draw(st.integers(1, 8)):]
        else:
            noise = draw(NOISE)
            line = line[:at] + noise + line[at + (len(noise) if how == "replace" else 0):]
    return line


@st.composite
def message(draw: st.DrawFn, ips: list[str], ifaces: list[str]) -> str:
    base = draw(good_line(ips, ifaces))
    kind = draw(st.sampled_from(["good"] * 6 + ["mutated"] * 3 + ["junk", "long"]))
    if kind == "mutated":
        return draw(mutated(base))
    if kind == "junk":
        return draw(st.sampled_from(["", "kernel: hello", PREFIX, f"{PREFIX}: IN", f"x {base}", base + base]))
    if kind == "long":
        return base.replace("MAC=", "MAC=" + "a" * MAX_LINE, 1) if "MAC=" in base else base + "x " * MAX_LINE
    return base


@st.composite
def batch_records(draw: st.DrawFn) -> list[RawRecord]:
    ips, ifaces = draw(palette())
    records: list[RawRecord] = []
    for i in range(draw(st.integers(5, 40))):
        if records and draw(st.integers(0, 9)) == 0:  # a duplicate, or another record under a used id
            again = draw(st.sampled_from(records))
            other = RawRecord(again.record_id, T0, "h", draw(message(ips, ifaces)), "journal")
            records.append(again if draw(st.booleans()) else other)
            continue
        ts = draw(moment())
        odd = draw(st.integers(0, 19))
        if odd == 0:
            ts = draw(st.sampled_from([0, 2**62, T0 * 10]))
        msg = draw(message(ips, ifaces))
        source = f"{UNDECODABLE}bad_json" if odd == 1 else "journal"
        orig_len = len(msg) + 10 if odd == 2 else None
        records.append(RawRecord(record_id("t", i, msg), ts, f"node-{i % 2}", msg, source,
                                 {"error": "e"} if odd == 1 else None, orig_len))
    return records


def reference(records: list[RawRecord], registry: OwnershipRegistry, settled: int | None) -> tuple[Batch, list]:
    batch, held = Batch(max_ts_ns=T0 + 40 * S), []
    for offset, rec in enumerate(records):
        parsed = add_record(batch, rec, registry, PREFIX, IFACE, 3, 100 + offset, settled)
        if parsed is not None:
            held.append(parsed)
    return batch, held


def outcome(batch: Batch) -> tuple:
    return (batch.flow_data.rows(), batch.flow_ts, batch.reject_tuples, batch.reject_ts, batch.counts, batch.seen,
            batch.reject_bytes)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(events=ownership(), records=batch_records(), data=st.data())
def test_batch_path_equals_the_reference(events, records, data):
    registry = OwnershipRegistry(grace_ns=10 * S)  # a sixth of the batch's range
    for ev in events:
        registry.apply(ev)
    settled = {"none": None, "any": data.draw(moment()), "a record's": data.draw(st.sampled_from(records)).ts_ns}[
        data.draw(st.sampled_from(["none", "any", "a record's"]))]
    expected, expected_held = reference(records, registry, settled)
    batch = Batch(max_ts_ns=T0 + 40 * S)
    held = add_records(batch, records, [100 + i for i in range(len(records))], registry, PREFIX, IFACE, 3, settled)
    assert outcome(batch) == outcome(expected)
    assert held == expected_held


@st.composite
def claims_between(draw: st.DrawFn) -> list[OwnerEvent]:
    """Claims that arrive between two fetches: pods taking the batch's addresses inside its range."""
    events = []
    for i in range(draw(st.integers(1, 3))):
        ns, name = draw(st.sampled_from(PODS))
        start = T0 + draw(st.integers(-20, 20)) * S
        events.append(OwnerEvent(ip=draw(st.sampled_from(POD_IPS + OTHER_IPS[2:4])), kind="pod", namespace=ns,
                                 name=name, uid=f"later{i}", valid_from_ns=start,
                                 valid_to_ns=draw(st.one_of(st.none(), st.just(start + 15 * S))), observed_ns=T0 + S,
                                 workload=name.split("-")[0], workload_kind="Deployment", node="n1"))
    return events


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(events=ownership(), records=batch_records(), data=st.data())
def test_fetches_of_one_batch_are_each_attributed_with_the_ownership_of_their_time(events, records, data):
    """A batch built over several fetches, with claims applied between them, or a new batch started with
    the answers of the last (as the worker starts one): the answers the batch path keeps from one fetch
    to the next must not outlive a change of the registry, nor name another batch's flows."""
    registries = OwnershipRegistry(grace_ns=10 * S), OwnershipRegistry(grace_ns=10 * S)
    for registry in registries:
        for ev in events:
            registry.apply(ev)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(records)), min_size=1, max_size=3))))
    later = [data.draw(st.one_of(st.just([]), claims_between())) for _ in cuts]
    flushed = [data.draw(st.booleans()) for _ in cuts]
    settled = data.draw(st.one_of(st.none(), moment()))
    expected, expected_held = [Batch(max_ts_ns=T0 + 40 * S)], []
    batches, held = [Batch(max_ts_ns=T0 + 40 * S)], []
    for lo, hi, claims, flush in zip([0, *cuts], [*cuts, len(records)], [*later, []], [*flushed, False],
                                     strict=True):
        for offset in range(lo, hi):
            parsed = add_record(expected[-1], records[offset], registries[0], PREFIX, IFACE, 3, 100 + offset,
                                settled)
            if parsed is not None:
                expected_held.append(parsed)
        held += add_records(batches[-1], records[lo:hi], [100 + i for i in range(lo, hi)], registries[1], PREFIX,
                            IFACE, 3, settled)
        for registry in registries:
            for ev in claims:
                registry.apply(ev)
        if flush:
            expected.append(Batch(max_ts_ns=T0 + 40 * S))
            batches.append(next_batch(batches[-1]))
            batches[-1].max_ts_ns = T0 + 40 * S
    assert [outcome(b) for b in batches] == [outcome(b) for b in expected]
    assert held == expected_held


def test_the_fast_path_takes_the_usual_lines(monkeypatch):
    """A guard for the test above: well-formed IPv4 TCP/UDP lines do not all fall back to the reference."""
    calls = []
    monkeypatch.setattr(columnar, "add_record", lambda *a, **k: calls.append(a) or add_record(*a, **k))
    line = (f"{PREFIX}: IN={IFACES[0]} OUT=eth0 MAC=ee:ee:ee:ee:ee:ee:02:f0:ce:32:44:67:08:00 SRC=10.244.1.5 "
            "DST=8.8.8.8 LEN=60 TOS=0x00 PREC=0x00 TTL=63 ID=1 DF PROTO=TCP SPT=40000 DPT=443 WINDOW=1 "
            "RES=0x00 SYN URGP=0 ")
    records = [RawRecord(record_id(i), T0, "h", line.replace("ID=1", f"ID={i}"), "journal") for i in range(3)]
    batch = Batch(max_ts_ns=T0 + S)
    assert columnar.add_records(batch, records, [0, 1, 2], OwnershipRegistry(), PREFIX, IFACE) == []
    assert calls == [] and batch.flow_rows == 3


@settings(max_examples=300, deadline=None)
@given(claims=st.lists(st.tuples(st.sampled_from(PODS), st.integers(-20, 20), st.one_of(st.none(), st.integers(0, 20)),
                                 st.sampled_from([0, 443])), max_size=6),
       ts=st.integers(-30, 40), later=st.lists(st.integers(-30, 40), max_size=8), nudge=st.sampled_from([-1, 0, 1]))
def test_steady_span_holds_every_answer(claims, ts, later, nudge):
    """Inside ``steady_span`` every answer the batch path caches is the answer at the time it was asked."""
    registry = OwnershipRegistry(grace_ns=5 * S)
    ip = "10.244.1.5"
    iface = cali_iface_name(*PODS[0])
    for i, ((ns, name), start, length, port) in enumerate(claims):
        kind = "endpoint" if port else "pod"
        registry.apply(OwnerEvent(ip=ip, kind=kind, namespace=ns, name=name, uid=f"u{i}", valid_from_ns=T0 + start * S,
                                  valid_to_ns=None if length is None else T0 + (start + length) * S, observed_ns=T0,
                                  port=port, protocol="TCP" if port else "", target=name if port else ""))

    def answers(t: int) -> tuple:
        holder = registry.owner_of(ip, t)
        return holder, registry.pod_by_iface(iface, t), registry.service_behind(ip, 443, "TCP", t, holder)

    at = T0 + ts * S + nudge
    lo, hi = registry.steady_span(at, ips=(ip,), ifaces=(iface,), endpoints=((ip, 443, "TCP"), (ip, 0, "TCP")))
    assert lo <= at < hi
    for t in [lo, hi - 1] + [T0 + s * S + d for s in later for d in (-1, 0, 1)]:
        if lo <= t < hi:
            assert answers(t) == answers(at)


def test_a_batch_started_with_the_last_ones_answers_names_its_own_flows():
    """The worker starts each batch with the last one's answers: sources and destinations are kept, the
    flows (indexes into the last batch's rows) are not; a change of the registry drops them all."""
    line = (f"{PREFIX}: IN={IFACES[0]} OUT=eth0 SRC=10.244.1.5 DST=8.8.8.8 LEN=60 TOS=0x00 PREC=0x00 TTL=63 ID=1 DF "
            "PROTO=TCP SPT=40000 DPT=443 WINDOW=1 RES=0x00 SYN URGP=0 ")
    records = [RawRecord(record_id(i), T0, "h", line.replace("ID=1", f"ID={i}"), "journal") for i in range(6)]
    registry = OwnershipRegistry()
    first = Batch(max_ts_ns=T0 + S)
    add_records(first, records[:2], [0, 1], registry, PREFIX, IFACE)
    second = next_batch(first)
    assert second.answers.rows is not first.flow_data  # the stored batch's rows are not kept alive
    second.max_ts_ns = T0 + S
    add_records(second, records[2:4], [2, 3], registry, PREFIX, IFACE)
    assert second.flow_data.rows() == [first.flow_data.row(0)[:1] + (int(r.record_id, 16),) + first.flow_data.row(0)[2:]
                                       for r in records[2:4]]
    assert second.answers.sources is first.answers.sources and second.answers.flows is not first.answers.flows
    registry.apply(OwnerEvent(ip="10.244.1.5", kind="pod", namespace="shop", name="web-1", uid="u1",
                              valid_from_ns=T0 - S, valid_to_ns=None, observed_ns=T0, workload="web",
                              workload_kind="Deployment", node="n1"))
    third = next_batch(second)
    third.max_ts_ns = T0 + S
    add_records(third, records[4:], [4, 5], registry, PREFIX, IFACE)
    assert [row[FLOW_COLUMNS.index("src_namespace")] for row in third.flow_data.rows()] == ["shop", "shop"]
    assert third.answers.sources is not second.answers.sources


def test_an_empty_prefix_is_refused_as_by_the_parser():
    record = RawRecord(record_id(1), T0, "h", "IN=x OUT=y", "journal")
    with pytest.raises(ValueError, match="prefix"):
        add_records(Batch(), [record], [0], OwnershipRegistry(), "", IFACE)
