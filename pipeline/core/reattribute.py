"""Attribution repair of stored rows (pure, no I/O): the same rule as at ingest, applied later.

A row stored unattributed (the watcher was down, the inventory came after the lines, the hold
limit was reached) is looked at again when ownership covering its time arrives. Only rows whose
*source* was unattributed are repaired: they never reached ``edges``, so inserting the
repaired row adds it there exactly once. The destination is classified again at the same time.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from pipeline.core.enrich import UNSETTLED_MATCHES, attribute_source, classify_ip
from pipeline.core.models import PacketLog
from pipeline.core.registry import OwnershipRegistry
from pipeline.core.rows import FLOW_COLUMNS

REPAIR_COLUMNS = (*FLOW_COLUMNS, "revision")
_AT = {name: i for i, name in enumerate(FLOW_COLUMNS)}
_SRC = _AT["src_kind"]  # src_kind .. src_match, then dst_kind .. dst_pod, are contiguous
_DST = _AT["dst_kind"]


def _ip_text(value: object) -> str:
    """An address as the registry keys it: IPv4-mapped IPv6 (as stored) back to IPv4."""
    ip = ipaddress.ip_address(value) if not isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address) \
        else value
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def reattribute(rows: Iterable[tuple], registry: OwnershipRegistry, iface_prefix: str) -> list[tuple]:
    """Repaired versions (REPAIR_COLUMNS order, revision 1) of the stored unattributed rows
    (FLOW_COLUMNS order, ``ts`` in µs) that ownership known now attributes."""
    out: list[tuple] = []
    for row in rows:
        ts_ns = int(row[_AT["ts"]]) * 1000
        src, dst = _ip_text(row[_AT["src_ip"]]), _ip_text(row[_AT["dst_ip"]])
        pkt = PacketLog(in_iface=row[_AT["in_iface"]], out_iface=row[_AT["out_iface"]], src=src, dst=dst,
                        family=row[_AT["family"]], proto=row[_AT["proto"]])
        owner, match = attribute_source(pkt, ts_ns, registry, iface_prefix)
        if match in UNSETTLED_MATCHES or not owner[1]:
            continue
        fixed = list(row)
        fixed[_AT["src_ip"]], fixed[_AT["dst_ip"]] = src, dst
        fixed[_SRC:_SRC + 6] = [*owner, match]
        fixed[_DST:_DST + 5] = classify_ip(dst, ts_ns, registry, row[_AT["dst_port"]], row[_AT["proto"]])
        out.append((*fixed, 1))
    return out
