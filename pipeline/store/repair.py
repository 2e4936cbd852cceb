"""Attribution repair in ClickHouse: stored rows whose attribution ownership learned later changes.

A pass looks, in a time range, at the current version of every egress row whose source was stored
unattributed, and of every egress row to a destination whose owner may have changed (``Dests``:
addresses, each from a time on; or every egress row, when ``flows reattribute`` asks for a range).
``core.reattribute`` applies the ingest rule with the ownership known now and returns only the rows
whose attribution changed, as the next revision of their record.

Revisions: a row is stored at revision 0; a repair of a row at revision r writes revision r + 1 with
the same record_id. The current version of a record is its highest revision, and a row whose
(record_id, revision + 1) is stored is superseded: it is removed with a lightweight DELETE.

Crash-safe without a delete window: the insert comes first, and every pass starts by deleting
superseded rows, so a pass killed between the two is finished by the next; until then readers
count a record once wherever they count record_ids (``edges``: uniqExact(record_id) per edge, so a
record whose destination moved counts in both edges for that moment, and the sealer seals the day
again once the delete changed its parts). A retried insert of the same rows carries the same
deduplication token. Several workers split the rows by ``record_id % shards`` (their assigned raw
partitions), so two workers never repair the same row.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.core.reattribute import MAX_REVISION, REPAIR_COLUMNS, reattribute
from pipeline.core.registry import OwnershipRegistry
from pipeline.store.clickhouse import Client, insert_columns

PAGE_ROWS = 10_000
MAX_DAYS_PER_INSERT = 90  # ClickHouse refuses blocks touching more than 100 partitions (days)
NEVER = 2**62  # µs: a bound no row reaches
LAST_BATCH = 2**32 - 1  # attributed_batch is a UInt32: no row is after it
_RANGE = ("ts >= fromUnixTimestamp64Micro({lo:Int64}, 'UTC') AND ts < fromUnixTimestamp64Micro({hi:Int64}, 'UTC')")
# Addresses come back as text: the driver's IPv6 objects cost more than the repair itself (core.reattribute
# turns the text into the registry's keys, once per distinct address).
_SELECT = ", ".join("toUnixTimestamp64Micro(ts)" if c == "ts" else f"toString({c})" if c in ("src_ip", "dst_ip")
                    else c for c in REPAIR_COLUMNS)
# A row is superseded once the next revision of its record is stored (a repaired row keeps its ts).
_SUPERSEDED_ROWS = (f"{_RANGE} AND (record_id, revision + 1) IN"
                    f" (SELECT record_id, revision FROM flows WHERE revision > 0 AND {_RANGE})")
_CANDIDATES = (
    f"SELECT {_SELECT} FROM flows"  # noqa: S608 - column names are ours; every value is bound
    f" WHERE direction = 'egress' AND revision < {MAX_REVISION} AND " + _RANGE +
    " AND (src_namespace = '' OR toUnixTimestamp64Micro(ts) >= {every_from:Int64} OR (has({ips:Array(IPv6)}, dst_ip)"
    " AND toUnixTimestamp64Micro(ts) >= {froms:Array(Int64)}[indexOf({ips:Array(IPv6)}, dst_ip)]))"
    " AND has({shards:Array(UInt16)}, toUInt16(record_id % {n:UInt16}))"
    " AND NOT (attributed_by = {skip_by:UInt64} AND attributed_batch > {skip_after:UInt32})"
    " AND (toUnixTimestamp64Micro(ts), record_id) > ({after_ts:Int64}, {after_id:UInt128})"
    f" AND NOT ({_SUPERSEDED_ROWS})"
    " ORDER BY ts, record_id LIMIT {page:UInt32}"
)
_SUPERSEDED = f"SELECT count() FROM flows WHERE {_SUPERSEDED_ROWS}"  # noqa: S608
_DELETE_SUPERSEDED = f"DELETE FROM flows WHERE {_SUPERSEDED_ROWS}"  # noqa: S608


Call = Callable[..., Awaitable[Any]]  # runs a blocking ClickHouse call (the worker: on its sink thread)


@dataclass
class Dests:
    """Destinations to classify again: each address (text) from a time on (ns), and every egress row
    from ``every_from_ns`` on (``flows reattribute``, or too many addresses to list)."""

    since_ns: dict[str, int] = field(default_factory=dict)
    every_from_ns: int | None = None

    def add(self, ip: str, at_ns: int, max_ips: int) -> None:
        """``ip`` from ``at_ns`` on; past ``max_ips`` addresses, every row from the earliest time."""
        if self.every_from_ns is None and (ip in self.since_ns or len(self.since_ns) < max_ips):
            self.since_ns[ip] = min(at_ns, self.since_ns.get(ip, at_ns))
        else:
            self.every_from(at_ns)

    def every_from(self, at_ns: int) -> None:
        """Every egress row from ``at_ns`` on (and from each listed address's time: one bound for all)."""
        held = () if self.every_from_ns is None else (self.every_from_ns,)
        self.every_from_ns, self.since_ns = min(at_ns, *held, *self.since_ns.values()), {}

    def merge(self, other: Dests, max_ips: int) -> None:
        for ip, at_ns in other.since_ns.items():
            self.add(ip, at_ns, max_ips)
        if other.every_from_ns is not None:
            self.every_from(other.every_from_ns)


@dataclass
class RepairPass:
    """A pass over [lo, hi) for one share of the rows (``record_id % total`` in ``mine``).

    ``step`` does one page, so a worker can interleave a long pass with consuming;
    ClickHouse work goes through ``call``, while the registry is read by the caller's thread.
    ``skip`` = (worker id, batch): that worker's rows of later batches were attributed with every
    claim this pass repairs with, and are not looked at (sql/011_attribution_marks.sql).
    """

    lo_ns: int
    hi_ns: int
    mine: tuple[int, ...] = (0,)
    total: int = 1
    dests: Dests = field(default_factory=Dests)
    skip: tuple[int, int] = (0, LAST_BATCH)
    after: tuple[int, int] = (-1, 0)
    started: bool = False
    finished: bool = False
    done: dict[str, int] = field(default_factory=lambda: {"examined": 0, "repaired": 0, "superseded_deleted": 0})

    def restart(self, mine: tuple[int, ...], total: int) -> None:
        """Go over the range again for another share (the worker's partitions moved)."""
        self.mine, self.total, self.after, self.finished = mine, total, (-1, 0), False

    async def step(self, call: Call, client: Client, registry: OwnershipRegistry, iface_prefix: str) -> None:
        bounds = range_bounds(self.lo_ns, self.hi_ns)
        if not self.started:  # first finish what a pass killed between its insert and its delete left
            self.done["superseded_deleted"] += await call(delete_superseded, client, bounds)
            self.started = True
            return
        rows = await call(candidates, client, bounds, self.mine, self.total, self.after, self.dests, self.skip)
        if rows:
            self.done["examined"] += len(rows)
            self.after = (rows[-1][0], rows[-1][1])
            fixed = reattribute(rows, registry, iface_prefix)
            await call(insert_repaired, client, fixed)
            self.done["repaired"] += len(fixed)
        if len(rows) < PAGE_ROWS:
            if self.done["repaired"]:
                self.done["superseded_deleted"] += await call(delete_superseded, client, bounds)
            self.finished = True


async def _here(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def repair(client: Client, registry: OwnershipRegistry, iface_prefix: str, lo_ns: int, hi_ns: int) -> dict[str, int]:
    """Repair every egress row with ``lo_ns <= ts < hi_ns`` (unattributed sources, and every
    destination: the user asked for that range), from a process that owns its registry
    (``flows reattribute`` with no running stack)."""
    run = RepairPass(lo_ns, hi_ns, dests=Dests(every_from_ns=0))

    async def whole() -> None:
        while not run.finished:
            await run.step(_here, client, registry, iface_prefix)

    asyncio.run(whole())
    return run.done


def range_bounds(lo_ns: int, hi_ns: int) -> dict[str, int]:
    """Bound parameters of a [lo, hi) ns range, widened to whole microseconds as ts is stored."""
    return {"lo": lo_ns // 1000, "hi": -(-hi_ns // 1000)}


def _stored_ip(ip: str) -> str:
    """An address as flows stores it: IPv4 as IPv4-mapped IPv6."""
    return f"::ffff:{ip}" if ":" not in ip else ip


def candidates(client: Client, bounds: dict[str, int], shards: tuple[int, ...], n_shards: int,
               after: tuple[int, int], dests: Dests, skip: tuple[int, int] = (0, LAST_BATCH)) -> list[tuple]:
    """The next page after ``after`` of current egress rows (REPAIR_COLUMNS order, ts in µs) whose
    source is unattributed or whose destination is in ``dests``, but for those ``skip`` names
    (``RepairPass``)."""
    params = {**bounds, "shards": list(shards), "n": n_shards, "after_ts": after[0], "after_id": after[1],
              "skip_by": skip[0], "skip_after": skip[1],
              "page": PAGE_ROWS, "every_from": NEVER if dests.every_from_ns is None else dests.every_from_ns // 1000,
               "ips": [_stored_ip(ip) for ip in dests.since_ns],
              "froms": [ns // 1000 for ns in dests.since_ns.values()]}
    return [tuple(r) for r in client.query(_CANDIDATES, parameters=params).result_rows]


def insert_repaired(client: Client, rows: list[tuple]) -> None:
    """Insert repaired rows (REPAIR_COLUMNS order), at most MAX_DAYS_PER_INSERT day partitions a block."""
    if not rows:
        return
    ts_at, id_at, rev_at = (REPAIR_COLUMNS.index(c) for c in ("ts", "record_id", "revision"))
    by_day: dict[Any, list[tuple]] = {}
    for row in rows:
        by_day.setdefault(datetime.fromtimestamp(row[ts_at] // 1_000_000, UTC).date(), []).append(row)
    days = sorted(by_day)
    for i in range(0, len(days), MAX_DAYS_PER_INSERT):
        chunk = [row for day in days[i:i + MAX_DAYS_PER_INSERT] for row in by_day[day]]
        # (record_id, revision): a retried insert is skipped, a later correction of the same rows is not
        ids = b"".join(int(r[id_at]).to_bytes(16, "big") + bytes([r[rev_at]]) for r in chunk)
        token = "repair:" + hashlib.sha256(ids).hexdigest()
        insert_columns(client, "flows", REPAIR_COLUMNS, [list(col) for col in zip(*chunk, strict=True)], token)


def delete_superseded(client: Client, bounds: dict[str, int]) -> int:
    """Remove rows whose next revision is stored (only when there are any: a DELETE is a mutation)."""
    n = int(client.query(_SUPERSEDED, parameters=bounds).result_rows[0][0])
    if n:
        client.command(_DELETE_SUPERSEDED, parameters=bounds)
    return n
