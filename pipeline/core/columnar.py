"""The batch path: the records of a fetched batch parsed and attributed together (pure, no I/O).

Gives exactly what ``add_record`` gives record by record (rows, rejects, counts, held
records, in the same order), and is cheaper per line in the two places where the per-record
path spends its time (docs/performance.md):

- parsing: one strict pattern, matched whole, takes the kernel's usual TCP and UDP lines
  (IPv4 and IPv6). It only ever *accepts* (numbers are range-checked after it); every line it does
  not vouch for — ICMP, brackets, odd spacing, a missing or cut field, a duplicate,
  an undecodable record, a timestamp out of range, a line too long — goes through
  ``add_record`` itself, so the reference parser decides everything it could decide
  differently;
- attribution: the registry is asked once per distinct source (IP, interface) and
  destination (IP, port, protocol) of the batch, with the time span over which its answer
  cannot change (``OwnershipRegistry.steady_span``); a record outside that span asks again.

Measured on this machine (docs/performance.md): Python's ``re`` on the whole line beat
polars' regex engine (and pyarrow's RE2, measured in issue #16), which pay for capture
groups and for moving the strings in and out of Arrow.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from pipeline.core.calico_line import MAX_IP_LEN, MAX_LINE, kernel_address
from pipeline.core.enrich import (
    MATCH_KEYS,
    MIN_TS_NS,
    UNSETTLED_MATCHES,
    Batch,
    Parsed,
    add_record,
    attribute_source,
    classify_ip,
)
from pipeline.core.envelopes import UNDECODABLE
from pipeline.core.flow_rows import FlowRows
from pipeline.core.models import PacketLog, RawRecord, RecordColumns
from pipeline.core.registry import OwnershipRegistry

_FLAG = "(?:CWR|ECE|URG|ACK|PSH|RST|SYN|FIN) "
_QUAD = r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}"  # both checked by the reference's kernel_address
_HEXTETS = r"[0-9a-fA-F:]{2,39}"
_Who = tuple[str, str, str, str, str]
# A flow as the line prints it: (SRC, IN, DST, DPT, proto), texts as matched.
_Key = tuple[str, str, str, str, str]
# Valid for ts in [lo, hi): (lo, hi, the flow's index in the batch's FlowRows, src_match, egress (IN is a
# workload's interface), unattributed (egress with no source namespace), may_hold (egress whose source
# match is unsettled or whose destination is unknown), src, dst (normalised), family, dst_port).
_Flow = tuple[int, int, int, str, bool, bool, bool, str, str, int, int]
_NEVER = 2**63 - 1  # settled_ns None: no record is after it
# Registry answers (sources, destinations, addresses) a batch hands to the next at most: ~250 bytes each.
MAX_KEPT = 20_000


@lru_cache(maxsize=8)
def _strict_line(prefix: str) -> re.Pattern[str]:
    """The well-formed IPv4 or IPv6 TCP/UDP line as nf_log prints it, fields in the kernel's order, nothing else.

    Each field is the first of its name in the line, as the reference parser takes it; no
    ``[`` anywhere (the reference cuts bracket groups); the line ends with the kernel's space.
    Groups: IN OUT, IPv4 SRC DST LEN or IPv6 SRC DST LEN, then TCP SPT DPT flags or UDP SPT DPT.
    """
    return re.compile(
        re.escape(prefix)
        + r"(?:: |:| )?IN=([^ \[]*+) OUT=([^ \[]*+) (?:MAC=[^ \[]*+ )?"
        + rf"(?:SRC=({_QUAD}) DST=({_QUAD}) LEN=([0-9]{{1,5}}) "
        + r"(?:(?:TOS|PREC|TTL|ID|FRAG)=[0-9A-Fa-fx]++ |(?:CE|DF|MF) )*+"
        + rf"|SRC=({_HEXTETS}) DST=({_HEXTETS}) LEN=([0-9]{{1,5}}) TC=[0-9]++ HOPLIMIT=[0-9]++ FLOWLBL=[0-9]++ )"
        + r"PROTO=(?:"
        + r"TCP SPT=([0-9]{1,5}) DPT=([0-9]{1,5}) (?:SEQ=[0-9]++ ACK=[0-9]++ )?WINDOW=[0-9]++ RES=0x[0-9a-fA-F]{2} "
        + rf"((?:{_FLAG})*+)URGP=[0-9]++ "
        + r"|UDP SPT=([0-9]{1,5}) DPT=([0-9]{1,5}) LEN=[0-9]++ )"
    )


class _Attribution:
    """Registry answers for the batch, each kept with the time span over which it holds.

    ``flow`` answers for a line's (source, interface, destination, port, protocol) at once from the
    source's and the destination's answers, so a record that repeats a flow costs one lookup;
    the answer names the flow's values in ``rows`` (the batch's flows rows).
    """

    __slots__ = ("registry", "generation", "iface_prefix", "rows", "sources", "destinations", "flows", "addresses")

    def __init__(self, registry: OwnershipRegistry, iface_prefix: str, rows: FlowRows) -> None:
        self.registry = registry
        self.generation = registry.generation
        self.iface_prefix = iface_prefix
        self.rows = rows
        self.sources: dict[tuple[str, str], tuple[int, int, _Who, str]] = {}
        self.destinations: dict[tuple[str, int, str], tuple[int, int, _Who]] = {}
        self.flows: dict[_Key, _Flow] = {}
        self.addresses: dict[str, tuple[str, int] | None] = {}  # text -> kernel_address(text)

    def flow(self, key: _Key, ts: int) -> _Flow | None:
        """The attribution of the line's ``key`` at ``ts``; None when its addresses or port are not
        what the kernel prints (the reference parser decides such a line)."""
        src_text, in_iface, dst_text, port_text, proto = key
        src_addr, dst_addr, port = self._address(src_text), self._address(dst_text), int(port_text)
        if src_addr is None or dst_addr is None or src_addr[1] != dst_addr[1] or port > 65535:
            return None
        (src, family), dst = src_addr, dst_addr[0]
        s_lo, s_hi, who, match = self._source(src, in_iface, ts)
        d_lo, d_hi, dest = self._destination(dst, port, proto, ts)
        index = self.rows.flow_index((in_iface, family, proto, src, dst, port, *who, match, *dest))
        egress = in_iface.startswith(self.iface_prefix)
        flow = self.flows[key] = (max(s_lo, d_lo), min(s_hi, d_hi), index, match, egress, egress and not who[1],
                                  egress and (match in UNSETTLED_MATCHES or dest[0] == "unknown"), src, dst, family,
                                  port)
        return flow

    @classmethod
    def of(cls, batch: Batch, registry: OwnershipRegistry, iface_prefix: str) -> _Attribution:
        """The batch's answers, while they still hold (same registry, unchanged since): else new ones.

        A batch may start with the answers of the one before it (``Batch.answers``): their flows are
        that batch's, but their sources, destinations and addresses are kept, up to ``MAX_KEPT`` of them.
        """
        known = batch.answers
        holds = isinstance(known, cls) and known.registry is registry and known.generation == registry.generation \
            and known.iface_prefix == iface_prefix
        if holds and known.rows is batch.flow_data:
            return known
        fresh = batch.answers = cls(registry, iface_prefix, batch.flow_data)
        if holds and len(known.sources) + len(known.destinations) + len(known.addresses) <= MAX_KEPT:
            fresh.sources, fresh.destinations, fresh.addresses = known.sources, known.destinations, known.addresses
        return fresh

    def handed_on(self) -> _Attribution:
        """These answers as the next batch may start with them: not this batch's rows, nor its flows
        (an idle worker would otherwise keep the stored batch's rows alive)."""
        kept = _Attribution(self.registry, self.iface_prefix, FlowRows())
        kept.generation = self.generation  # when they were asked: a change since then drops them
        kept.sources, kept.destinations, kept.addresses = self.sources, self.destinations, self.addresses
        return kept

    def _address(self, text: str) -> tuple[str, int] | None:
        known = self.addresses.get(text, ())
        if known == ():
            known = self.addresses[text] = kernel_address(text)
        return known

    def _source(self, src: str, in_iface: str, ts: int) -> tuple[int, int, _Who, str]:
        """``attribute_source`` of a packet from ``src`` on ``in_iface`` at ``ts``, with its span."""
        known = self.sources.get((src, in_iface))
        if known is None or not known[0] <= ts < known[1]:
            pkt = PacketLog(in_iface, "", src, "", 4, "")
            who, match = attribute_source(pkt, ts, self.registry, self.iface_prefix)
            ifaces = (in_iface,) if in_iface.startswith(self.iface_prefix) else ()
            lo, hi = self.registry.steady_span(ts, ips=(src,), ifaces=ifaces)
            known = self.sources[(src, in_iface)] = (lo, hi, who, match)
        return known

    def _destination(self, dst: str, port: int, proto: str, ts: int) -> tuple[int, int, _Who]:
        """``classify_ip`` of ``dst`` reached on ``port``/``proto`` at ``ts``, with its span."""
        key = (dst, port, proto)
        known = self.destinations.get(key)
        if known is None or not known[0] <= ts < known[1]:
            who = classify_ip(dst, ts, self.registry, port, proto)
            lo, hi = self.registry.steady_span(ts, ips=(dst,), endpoints=((dst, port, proto), (dst, 0, proto)))
            known = self.destinations[key] = (lo, hi, who)
        return known


def next_batch(batch: Batch) -> Batch:
    """An empty batch that starts with ``batch``'s registry answers (``_Attribution.of``)."""
    known = batch.answers
    return Batch(answers=known.handed_on() if isinstance(known, _Attribution) else None)


def add_records(
    batch: Batch, records: Sequence[RawRecord] | RecordColumns, offsets: Sequence[int], registry: OwnershipRegistry,
    prefix: str, iface_prefix: str, partition: int = -1, settled_ns: int | None = None,
) -> list[Parsed]:
    """``add_record`` for every record in order (``offsets[i]`` is record i's Kafka offset).

    Returns the records to hold, in order, as ``add_record`` would have returned them.
    ``records`` may come as columns (``decode_columns``): a record taken here then never
    becomes an object.
    """
    cols = records if isinstance(records, RecordColumns) else RecordColumns.of(records)
    if not prefix:  # as parse_message: an empty prefix would make every message a Calico line
        raise ValueError("prefix must not be empty")
    strict = _strict_line(prefix).fullmatch
    seen, counts = batch.seen, batch.counts
    rows = batch.flow_data
    add_ts, add_id, add_host, add_source, add_direction, add_out, add_spt, add_len, add_flow = rows.appenders()
    max_ts = batch.max_ts_ns
    lookup = _Attribution.of(batch, registry, iface_prefix)
    flows = lookup.flows
    settled = _NEVER if settled_ns is None else settled_ns
    held: list[Parsed] = []
    matches: dict[str, int] = {}  # added to the batch's counts at the end: cheaper than per record
    unattributed = 0
    orig_lens = cols.orig_len
    for i, (rid, ts, host, message, source, offset) in enumerate(
            zip(cols.record_id, cols.ts_ns, cols.host, cols.message, cols.source, offsets, strict=True)):
        m = flow = None
        if ((orig_lens is None or orig_lens[i] is None) and MIN_TS_NS <= ts <= max_ts and len(message) <= MAX_LINE
                and rid not in seen and not source.startswith(UNDECODABLE)):
            m = strict(message)
        if m is not None:
            in_if, out_if, src4, dst4, len4, src6, dst6, len6, t_spt, t_dpt, flags, u_spt, u_dpt = m.groups()
            if t_spt is None:
                proto, spt, dpt = "UDP", int(u_spt), u_dpt
            else:
                proto, spt, dpt = "TCP", int(t_spt), t_dpt
            if len6 is None:
                key, size = (src4, in_if, dst4, dpt, proto), int(len4)
            else:
                key, size = (src6, in_if, dst6, dpt, proto), int(len6)
            flow = flows.get(key)
            if flow is None or not flow[0] <= ts < flow[1]:
                flow = lookup.flow(key, ts)
            if spt > 65535 or size > MAX_IP_LEN:
                flow = None
        if flow is None:  # the reference decides
            parsed = add_record(batch, cols.record(i), registry, prefix, iface_prefix, partition, offset, settled_ns)
            if parsed is not None:
                held.append(parsed)
            continue
        seen.add(rid)
        _, _, index, match, egress, no_source, may_hold, *_ = flow
        if egress:
            if may_hold and ts > settled:
                _, _, _, _, _, _, _, src, dst, family, port = flow
                pkt = PacketLog(in_if, out_if, src, dst, family, proto, spt, port, size,
                                tcp_flags="" if flags is None else flags[:-1])
                held.append(Parsed(cols.record(i), pkt, partition, offset))
                continue
            direction = "egress"
            if no_source:
                unattributed += 1
        else:
            direction = "ingress" if out_if.startswith(iface_prefix) else "other"
        matches[match] = matches.get(match, 0) + 1
        add_ts(ts)
        add_id(int(rid, 16))
        add_host(host)
        add_source(source)
        add_direction(direction)
        add_out(out_if)
        add_spt(spt)
        add_len(size)
        add_flow(index)
    for match, n in matches.items():
        counts["parsed"] += n
        counts[MATCH_KEYS[match]] += n
    if unattributed:
        counts["unattributed"] += unattributed
    return held
