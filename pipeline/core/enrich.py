"""Turning decoded records into ``flows`` and ``rejects`` rows (pure, no I/O).

For each record: parse the Calico line, attribute the source to the pod that
owned SRC at the record's time (cross-checked with the ``cali…`` interface,
which names the sending pod whatever its IP), classify the destination as
exactly one of pod/service/node/external/unknown, and append the row column by
column so the sink can insert it columnar. Duplicates inside a batch are
dropped here; replays across batches are dropped by the sink.
"""

from __future__ import annotations

import ipaddress
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache

from pipeline.core.calico_line import LineRejected, parse_message
from pipeline.core.envelopes import MAX_MESSAGE_CHARS, UNDECODABLE, EnvelopeError, record_id
from pipeline.core.flow_rows import FlowRows
from pipeline.core.models import Owner, PacketLog, RawRecord
from pipeline.core.registry import OwnershipRegistry
from pipeline.core.rows import REJECT_COLUMNS


@lru_cache(maxsize=200_000)
def is_external(ip: str) -> bool:
    """Globally routable (cached: destinations repeat far more than they vary)."""
    return ipaddress.ip_address(ip).is_global


def _owner_fields(owner: Owner) -> tuple[str, str, str, str, str]:
    """(kind, namespace, workload_kind, name, pod) for a resolved owner."""
    if owner.kind == "pod":
        return "pod", owner.namespace, owner.workload_kind, owner.workload or owner.name, owner.name
    if owner.kind == "service":
        return "service", owner.namespace, "Service", owner.name, ""
    return owner.kind, "", "Node" if owner.kind == "node" else "", owner.name, ""


def classify_ip(ip: str, ts_ns: int, registry: OwnershipRegistry, port: int | None = None,
                proto: str = "") -> tuple[str, str, str, str, str]:
    """Destination (or unattributed source) classification: exactly one of the five kinds.

    With the destination's ``port`` and ``proto``: an address that was a ready endpoint of a Service
    on that port then is that Service (kube-proxy's iptables/nftables modes and Calico eBPF DNAT
    Service traffic before Calico logs it), the backing pod kept as ``dst_pod``. A pod reached on a
    port no Service of it exposes stays a pod.
    """
    owner = registry.owner_of(ip, ts_ns)
    if proto and (owner is None or owner.kind != "service"):
        behind = registry.service_behind(ip, port, proto, ts_ns, owner)
        if behind is not None:
            service, pod = behind
            return "service", service.namespace, "Service", service.name, pod
    return _unowned(ip) if owner is None else _owner_fields(owner)


def attribute_source(
    pkt: PacketLog, ts_ns: int, registry: OwnershipRegistry, iface_prefix: str
) -> tuple[tuple[str, str, str, str, str], str]:
    """Source owner and how it was found: ip+iface, ip, iface, conflict, iface_mismatch or none.

    On egress the interface (``IN=`` + FLOWS_IFACE_PREFIX) is the pod the packet came from,
    whatever its IP: when it names a known pod, that pod is the sender (``conflict`` when
    the IP's owner is another pod: a stale or reused IP). When it names no known pod, an IP
    owner that is a pod with another interface is not the sender either: the row stays
    unattributed (``iface_mismatch``) until the pod the interface names is known.
    """
    by_ip = registry.owner_of(pkt.src, ts_ns)
    if pkt.in_iface.startswith(iface_prefix):
        by_iface = registry.pod_by_iface(pkt.in_iface, ts_ns)
        if by_iface is not None:
            if by_ip is None:
                return _owner_fields(by_iface), "iface"
            if by_ip.uid == by_iface.uid:
                return _owner_fields(by_ip), "ip+iface"
            return _owner_fields(by_iface), "conflict"
        if by_ip is not None and by_ip.kind == "pod" and by_ip.iface != pkt.in_iface:
            return _unowned(pkt.src), "iface_mismatch"
    if by_ip is not None:
        return _owner_fields(by_ip), "ip"
    return _unowned(pkt.src), "none"


def _unowned(ip: str) -> tuple[str, str, str, str, str]:
    return ("external" if is_external(ip) else "unknown"), "", "", "", ""


# Source matches that ownership arriving later may still change: such records are held.
UNSETTLED_MATCHES = frozenset({"none", "iface_mismatch"})
MATCH_KEYS = {m: f"source_{m}" for m in ("ip+iface", "ip", "iface", "conflict", "iface_mismatch", "none")}
MIN_TS_NS = 946_684_800 * 10**9  # 2000-01-01: older timestamps are clock or input errors
FUTURE_SLACK_NS = 86_400 * 10**9  # a day ahead of the worker's clock at most
# Approximate Python memory of one flows row, for Batch.approx_bytes: 344 bytes measured (tracemalloc,
# 20 000 of the bench's rows through the batch path, the row's id in ``seen`` included; 607 as tuples).
FLOW_ROW_BYTES = 400
REJECT_ROW_BYTES = 400


def row_columns(names: tuple[str, ...], rows: list[tuple]) -> dict[str, list]:
    """Row tuples (in ``names`` order) as one list per column, for a columnar insert."""
    if not rows:
        return {name: [] for name in names}
    return dict(zip(names, map(list, zip(*rows, strict=True)), strict=True))


@dataclass
class Batch:
    """Rows ready for a columnar insert, plus what happened to every record.

    Flows rows are kept by record and by flow (``FlowRows``); rejects rows as tuples in
    insert-column order, transposed once when the batch is flushed.
    """

    flow_data: FlowRows = field(default_factory=FlowRows)
    reject_tuples: list[tuple] = field(default_factory=list)
    reject_ts: list[int] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    seen: set[str] = field(default_factory=set)
    max_ts_ns: int = field(default_factory=lambda: time.time_ns() + FUTURE_SLACK_NS)
    reject_bytes: int = 0
    # The batch path's registry answers for this batch's flows (core/columnar.py), kept from one fetch to
    # the next while the registry is unchanged: each fetch asked for every flow again. The next batch may
    # start with them (``columnar.next_batch``), less this batch's rows and flows.
    answers: object = field(default=None, compare=False, repr=False)

    @property
    def flows(self) -> dict[str, list]:
        """Columns of the flows rows (FLOW_COLUMNS order)."""
        return self.flow_data.columns()

    @property
    def flow_ts(self) -> list[int]:
        """The flows rows' times in nanoseconds, in row order."""
        return self.flow_data.ts_ns

    @property
    def rejects(self) -> dict[str, list]:
        return row_columns(REJECT_COLUMNS, self.reject_tuples)

    @property
    def flow_rows(self) -> int:
        return len(self.flow_data)

    @property
    def reject_rows(self) -> int:
        return len(self.reject_ts)

    @property
    def approx_bytes(self) -> int:
        """Memory the rows hold, roughly: a flows row is a tuple of short values, a reject carries its raw input."""
        return len(self.flow_ts) * FLOW_ROW_BYTES + self.reject_bytes

    def add_reject(
        self, rid: str, ts_ns: int, host: str, source: str, stage: str, reason: str, detail: str, raw: str,
        raw_len: int, partition: int = -1, offset: int = -1,
    ) -> None:
        # REJECT_COLUMNS order; ts in DateTime64(6) ticks
        self.reject_tuples.append((ts_ns // 1000, int(rid, 16), host, source, stage, reason, detail[:1024],
                                   raw[:MAX_MESSAGE_CHARS], raw_len, partition, offset))
        self.reject_ts.append(ts_ns)
        self.reject_bytes += REJECT_ROW_BYTES + min(len(raw), MAX_MESSAGE_CHARS) + min(len(detail), 1024)

    def add_envelope_error(self, err: EnvelopeError, ts_ns: int, partition: int, offset: int) -> None:
        rid = record_id("envelope", partition, offset, err.reason, err.raw[:4096])
        if rid in self.seen:
            return
        self.seen.add(rid)
        self.counts["envelope_rejected"] += 1
        self.add_reject(rid, ts_ns, "", "kafka", "envelope", err.reason, err.detail, err.raw, len(err.raw),
                        partition, offset)


def add_record(
    batch: Batch, rec: RawRecord, registry: OwnershipRegistry, prefix: str, iface_prefix: str,
    partition: int = -1, offset: int = -1, settled_ns: int | None = None,
) -> Parsed | None:
    """Parse, enrich and append one record (or count it ignored/rejected/duplicate).

    ``settled_ns``: ownership is complete up to that time (the owners watermark less the
    allowance). A record after it that the ownership known now cannot attribute is not
    appended but returned, for the caller to hold until ownership covers it
    (``add_parsed``). None attributes everything now.
    """
    if rec.record_id in batch.seen:
        batch.counts["duplicate"] += 1
        return None
    batch.seen.add(rec.record_id)
    counts = batch.counts
    if rec.source.startswith(UNDECODABLE):
        counts["envelope_rejected"] += 1
        detail = (rec.labels or {}).get("error", "")
        batch.add_reject(rec.record_id, rec.ts_ns, rec.host, (rec.labels or {}).get("format", ""), "envelope",
                         rec.source[len(UNDECODABLE):], detail, rec.message, len(rec.message), partition, offset)
        return None
    if not MIN_TS_NS <= rec.ts_ns <= batch.max_ts_ns:
        # Stored at receipt time: a timestamp from year 1 or 9999 must not create partitions or break inserts.
        counts["rejected"] += 1
        batch.add_reject(rec.record_id, batch.max_ts_ns - FUTURE_SLACK_NS, rec.host, rec.source, "line",
                         "timestamp_out_of_range", f"record timestamp {rec.ts_ns} ns", rec.message,
                         rec.orig_len or len(rec.message), partition, offset)
        return None
    if rec.orig_len is not None:
        if prefix not in rec.message:
            counts["ignored"] += 1
            return None
        counts["rejected"] += 1
        batch.add_reject(rec.record_id, rec.ts_ns, rec.host, rec.source, "line", "too_long",
                         f"message of {rec.orig_len} characters", rec.message, rec.orig_len, partition, offset)
        return None
    try:
        pkt = parse_message(rec.message, prefix)
    except LineRejected as exc:
        counts["rejected"] += 1
        batch.add_reject(rec.record_id, rec.ts_ns, rec.host, rec.source, "line", exc.reason,
                         getattr(exc, "detail", ""), rec.message, len(rec.message), partition, offset)
        return None
    if pkt is None:
        counts["ignored"] += 1
        return None
    ts = rec.ts_ns
    direction = pkt.direction(iface_prefix)
    src, match = attribute_source(pkt, ts, registry, iface_prefix)
    dst = classify_ip(pkt.dst, ts, registry, pkt.dst_port, pkt.proto)
    if settled_ns is not None and ts > settled_ns and direction == "egress" and (
            match in UNSETTLED_MATCHES or dst[0] == "unknown"):
        return Parsed(rec, pkt, partition, offset)
    _append(batch, rec, pkt, direction, src, match, dst)
    return None


@dataclass(slots=True)
class Parsed:
    """A parsed record waiting for ownership that covers its time (see ``add_record``)."""

    rec: RawRecord
    pkt: PacketLog
    partition: int
    offset: int


def add_parsed(batch: Batch, parsed: Parsed, registry: OwnershipRegistry, iface_prefix: str) -> bool:
    """Attribute and append a held record with the ownership known now (final).

    True when its source was attributed.
    """
    rec, pkt = parsed.rec, parsed.pkt
    src, match = attribute_source(pkt, rec.ts_ns, registry, iface_prefix)
    _append(batch, rec, pkt, pkt.direction(iface_prefix), src, match,
            classify_ip(pkt.dst, rec.ts_ns, registry, pkt.dst_port, pkt.proto))
    return match not in UNSETTLED_MATCHES


def settles(parsed: Parsed, registry: OwnershipRegistry, iface_prefix: str) -> bool:
    """Whether ownership known now attributes a held record fully (source and destination)."""
    pkt, ts = parsed.pkt, parsed.rec.ts_ns
    if attribute_source(pkt, ts, registry, iface_prefix)[1] in UNSETTLED_MATCHES:
        return False
    return classify_ip(pkt.dst, ts, registry, pkt.dst_port, pkt.proto)[0] != "unknown"


def _append(batch: Batch, rec: RawRecord, pkt: PacketLog, direction: str, src: tuple[str, str, str, str, str],
            match: str, dst: tuple[str, str, str, str, str]) -> None:
    counts = batch.counts
    counts["parsed"] += 1
    counts[MATCH_KEYS[match]] += 1
    if direction == "egress" and not src[1]:
        counts["unattributed"] += 1
    rows = batch.flow_data
    flow = rows.flow_index((pkt.in_iface, pkt.family, pkt.proto, pkt.src, pkt.dst, pkt.dst_port, *src, match, *dst))
    rows.append(rec.ts_ns, int(rec.record_id, 16), rec.host, rec.source, direction, pkt.out_iface, pkt.src_port,
                pkt.length or 0, flow)
