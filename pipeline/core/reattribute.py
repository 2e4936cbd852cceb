"""Attribution repair of stored rows (pure, no I/O): the same rule as at ingest, applied later.

A stored row is looked at again when ownership that may change its answer arrives:

- a row whose *source* was stored unattributed (the watcher was down, the inventory came after the
  lines, the hold limit was reached) gets its source, when ownership now settles it;
- any egress row gets its *destination* classified again: a private destination stored ``unknown``
  because its owner's claim came after the hold let the row go, or credited to a stale owner (an
  older claim of the IP still open when the row was stored, closed or outranked later).

An attributed source is never touched: the interface named the pod, and that cannot get better.
Only rows whose attribution changed are emitted, as the next revision of the record (see
``store/repair.py`` for how revisions supersede each other).
"""

from __future__ import annotations

from collections.abc import Iterable

from pipeline.core.claims import stored_ip_text
from pipeline.core.enrich import UNSETTLED_MATCHES, attribute_source, classify_ip
from pipeline.core.models import PacketLog
from pipeline.core.registry import OwnershipRegistry
from pipeline.core.rows import FLOW_COLUMNS

REPAIR_COLUMNS = (*FLOW_COLUMNS, "revision")
# revision is a UInt8 (sql/001_flows.sql): a row at the last revision is left as it is. 255
# corrections of one record would take 255 ownership changes of its destination IP around its time.
MAX_REVISION = 255
_AT = {name: i for i, name in enumerate(REPAIR_COLUMNS)}
_SRC = _AT["src_kind"]  # src_kind .. src_match, then dst_kind .. dst_pod, are contiguous
_DST = _AT["dst_kind"]


def reattribute(rows: Iterable[tuple], registry: OwnershipRegistry, iface_prefix: str) -> list[tuple]:
    """The next revision (REPAIR_COLUMNS order) of each stored row (REPAIR_COLUMNS order, ``ts`` in
    µs) whose attribution ownership known now changes; one per record_id."""
    out: list[tuple] = []
    seen: set[int] = set()
    for row in rows:
        if row[_AT["revision"]] >= MAX_REVISION or row[_AT["record_id"]] in seen:
            continue
        ts_ns = int(row[_AT["ts"]]) * 1000
        src, dst = stored_ip_text(row[_AT["src_ip"]]), stored_ip_text(row[_AT["dst_ip"]])
        fixed = list(row)
        if not row[_AT["src_namespace"]]:
            pkt = PacketLog(in_iface=row[_AT["in_iface"]], out_iface=row[_AT["out_iface"]], src=src, dst=dst,
                            family=row[_AT["family"]], proto=row[_AT["proto"]])
            owner, match = attribute_source(pkt, ts_ns, registry, iface_prefix)
            if match not in UNSETTLED_MATCHES and owner[1]:
                fixed[_SRC:_SRC + 6] = [*owner, match]
        fixed[_DST:_DST + 5] = classify_ip(dst, ts_ns, registry, row[_AT["dst_port"]], row[_AT["proto"]])
        if fixed[_SRC:_DST + 5] == list(row[_SRC:_DST + 5]):
            continue
        seen.add(row[_AT["record_id"]])
        fixed[_AT["src_ip"]], fixed[_AT["dst_ip"]] = src, dst
        fixed[_AT["revision"]] = row[_AT["revision"]] + 1
        out.append(tuple(fixed))
    return out
