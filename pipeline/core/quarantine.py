"""Rows ClickHouse refused on their own, turned into ``rejects`` rows (stage ``insert``).

A flows row no longer has its input line (parsing keeps only the fields), so its ``raw`` is
rebuilt from the fields it kept, in the kernel's ``KEY=value`` form, followed by how it was
attributed: enough to read, grep and re-ship by hand. A refused rejects row keeps its raw
text with anything outside ASCII escaped (``\\xe9``, ``\\ud800``), in case the text itself
was what the server refused.
"""

from __future__ import annotations

from pipeline.core.enrich import Batch
from pipeline.core.rows import FLOW_COLUMNS, REJECT_COLUMNS

STAGE = "insert"


def flow_line(row: tuple) -> str:
    """A flows row as a Calico-like line: the packet fields it kept, then its attribution."""
    f = dict(zip(FLOW_COLUMNS, row, strict=True))
    ports = "" if f["src_port"] is None else f"SPT={f['src_port']} DPT={f['dst_port']} "
    src = _who(f["src_kind"], f["src_namespace"], f["src_workload"], f["src_pod"])
    dst = _who(f["dst_kind"], f["dst_namespace"], f["dst_name"])
    return (f"IN={f['in_iface']} OUT={f['out_iface']} SRC={f['src_ip']} DST={f['dst_ip']} LEN={f['length']} "
            f"PROTO={f['proto']} {ports}| src={src} ({f['src_match']}) dst={dst}")


def _who(kind: str, *names: str) -> str:
    named = "/".join(n for n in names if n)
    return f"{kind}:{named}" if named else kind


def quarantine(into: Batch, table: str, row: tuple, reason: str, message: str) -> None:
    """Add ``row`` of ``table`` (flows or rejects, insert-column order) to ``into`` as a reject of stage insert."""
    if table == "flows":
        f = dict(zip(FLOW_COLUMNS, row, strict=True))
        raw = flow_line(row)
        into.add_reject(f"{f['record_id']:032x}", f["ts"] * 1000, f["host"], f["source"], STAGE, reason, message,
                        raw, len(raw))
        return
    r = dict(zip(REJECT_COLUMNS, row, strict=True))
    raw = r["raw"].encode("ascii", "backslashreplace").decode("ascii")
    was = f" (was {r['stage']}/{r['reason']}: {r['detail']})"[:300]
    into.add_reject(f"{r['record_id']:032x}", r["ts"] * 1000, r["host"], r["source"], STAGE, reason,
                    message[: 1024 - len(was)] + was, raw, r["raw_len"], r["kafka_partition"], r["kafka_offset"])
