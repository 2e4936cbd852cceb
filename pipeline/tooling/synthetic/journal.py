"""The corpus as shippers read it: journalctl JSON with cursors, late and repeated entries.

Also the same entries as rsyslog and fluent-bit render them, for the file and HTTP shippers' tests.
"""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from pipeline.tooling.synthetic.cluster import Cluster
from pipeline.tooling.synthetic.model import Entry


def journal(c: Cluster, entries: list[Entry]) -> list[str]:
    """journalctl -o json lines: per-node seqnums in time order, then shipped slightly out of order."""
    order = sorted(range(len(entries)), key=lambda i: entries[i].ts_us)
    lines: list[str] = []
    for i in order:
        e = entries[i]
        node = e.node
        node.seq += 1
        mono = e.ts_us - node.boot_us
        xor = ((node.seq * 0x9E3779B97F4A7C15) ^ (e.ts_us * 0xBF58476D1CE4E5B9)) & 0xFFFFFFFFFFFFFFFF
        d: dict[str, str] = {
            "__CURSOR": f"s={node.seqnum_id};i={node.seq + 0x3A000:x};b={node.boot_id};m={mono:x};"
            f"t={e.ts_us:x};x={xor:016x}",
            "__REALTIME_TIMESTAMP": str(e.ts_us),
            "__MONOTONIC_TIMESTAMP": str(mono),
            "_BOOT_ID": node.boot_id,
            "PRIORITY": e.priority,
        }
        if e.kind == "kubelet":
            pid = str(1000 + node.idx)
            d.update(
                {
                    "SYSLOG_FACILITY": "3",
                    "_UID": "0",
                    "_GID": "0",
                    "_CAP_EFFECTIVE": "1ffffffffff",
                    "_SYSTEMD_SLICE": "system.slice",
                    "_TRANSPORT": "stdout",
                    "SYSLOG_IDENTIFIER": "kubelet",
                    "_PID": pid,
                    "_COMM": "kubelet",
                    "_EXE": "/usr/bin/kubelet",
                    "_SYSTEMD_UNIT": "kubelet.service",
                    "_MACHINE_ID": node.machine_id,
                    "_HOSTNAME": node.name,
                    "MESSAGE": e.message,
                }
            )
        else:
            d.update(
                {
                    "_TRANSPORT": "kernel",
                    "SYSLOG_FACILITY": "0",
                    "SYSLOG_IDENTIFIER": "kernel",
                    "_SOURCE_MONOTONIC_TIMESTAMP": str(mono - 7 - node.seq % 40),
                    "_MACHINE_ID": node.machine_id,
                    "_HOSTNAME": node.name,
                    "MESSAGE": e.message,
                }
            )
        lines.append(orjson.dumps(d).decode())
    # A shipper's interleaving of several nodes is not perfectly ordered: a few entries arrive late.
    rng = c.rng
    n_ooo = max(2, len(lines) // 500) if len(lines) > 100 else 0
    for _ in range(n_ooo):
        i = rng.randrange(len(lines) - 45)
        lines.insert(i + rng.randint(2, 40), lines.pop(i))
    c.count("out_of_order", n_ooo)
    return lines

def duplicate(c: Cluster, lines: list[str]) -> list[str]:
    """Exact repeats: single adjacent ones and replayed blocks far from the original."""
    rng = c.rng
    n = len(lines)
    adj = set(rng.sample(range(n), max(2, n // 200)))
    replays: dict[int, list[str]] = {}
    block = max(5, min(40, n // 50))
    for _ in range(2):
        a = rng.randrange(0, n // 2)
        at = min(n - 1, a + block + rng.randint(n // 4, n // 2))
        replays.setdefault(at, []).extend(lines[a : a + block])
    out: list[str] = []
    for i, line in enumerate(lines):
        out.append(line)
        if i in adj:
            out.append(line)
        if i in replays:
            out.extend(replays[i])
    c.count("duplicates", len(out) - n)
    return out


def to_syslog(journal_line: str) -> str:
    """Render a journal entry as rsyslog writes it to kern.log/syslog (for the file shipper's tests)."""
    d = orjson.loads(journal_line)
    t = datetime.fromtimestamp(int(d["__REALTIME_TIMESTAMP"]) / 1e6, UTC)
    stamp = f"{t:%b} {t.day:2d} {t:%H:%M:%S}"
    host = d.get("_HOSTNAME", "localhost")
    if d.get("_TRANSPORT") == "kernel":
        mono = int(d.get("_SOURCE_MONOTONIC_TIMESTAMP") or d["__MONOTONIC_TIMESTAMP"])
        return f"{stamp} {host} kernel: [{mono // 1_000_000:5d}.{mono % 1_000_000:06d}] {d['MESSAGE']}"
    ident = d.get("SYSLOG_IDENTIFIER", "unknown")
    pid = f"[{d['_PID']}]" if "_PID" in d else ""
    return f"{stamp} {host} {ident}{pid}: {d['MESSAGE']}"


def to_fluentbit(journal_line: str) -> dict:
    """Render a journal entry as fluent-bit's systemd input emits it through a JSON output.

    The input reads data fields only, so ``__CURSOR`` and the ``__*_TIMESTAMP`` fields are absent;
    the entry time becomes ``@timestamp`` in float seconds. ``_BOOT_ID`` + ``_SOURCE_MONOTONIC_TIMESTAMP``
    (or the realtime) + ``MESSAGE`` is what identifies the entry there.
    """
    d = orjson.loads(journal_line)
    out: dict = {k: v for k, v in d.items() if not k.startswith("__")}
    out["@timestamp"] = int(d["__REALTIME_TIMESTAMP"]) / 1e6
    return out
