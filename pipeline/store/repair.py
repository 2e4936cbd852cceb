"""Attribution repair in ClickHouse: stored unattributed rows that ownership now covers.

For each page of unattributed egress rows in a time range, ``core.reattribute`` applies the
ingest rule with the ownership known now; the repaired rows are inserted with the same
record_id and ``revision = 1`` (``edges`` counts each record_id once, and the unattributed
originals never counted there), then the superseded originals are removed with a lightweight DELETE.

Crash-safe without a delete window: the insert comes first, and every pass starts by deleting
originals that already have a repaired twin, so a pass killed between the two is finished by
the next. A retried insert of the same rows carries the same deduplication token. Several
workers split the rows by ``record_id % shards`` (their assigned raw partitions), so two
workers never repair the same row.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.core.reattribute import REPAIR_COLUMNS, reattribute
from pipeline.core.registry import OwnershipRegistry
from pipeline.core.rows import FLOW_COLUMNS
from pipeline.store.clickhouse import Client, insert_columns

PAGE_ROWS = 10_000
MAX_DAYS_PER_INSERT = 90  # ClickHouse refuses blocks touching more than 100 partitions (days)
_RANGE = ("ts >= fromUnixTimestamp64Micro({lo:Int64}, 'UTC') AND ts < fromUnixTimestamp64Micro({hi:Int64}, 'UTC')")
_SELECT = ", ".join("toUnixTimestamp64Micro(ts)" if c == "ts" else c for c in FLOW_COLUMNS)
_CANDIDATES = (
    f"SELECT {_SELECT} FROM flows"  # noqa: S608 - column names are ours; every value is bound
    " WHERE src_namespace = '' AND direction = 'egress' AND revision = 0 AND " + _RANGE +
    " AND has({shards:Array(UInt16)}, toUInt16(record_id % {n:UInt16}))"
    " AND (toUnixTimestamp64Micro(ts), record_id) > ({after_ts:Int64}, {after_id:UInt128})"
    " AND record_id NOT IN (SELECT record_id FROM flows WHERE revision > 0 AND " + _RANGE + ")"
    " ORDER BY ts, record_id LIMIT {page:UInt32}"
)
_REPAIRED_IDS = "SELECT record_id FROM flows WHERE revision > 0 AND " + _RANGE
_SUPERSEDED = f"SELECT count() FROM flows WHERE revision = 0 AND {_RANGE} AND record_id IN ({_REPAIRED_IDS})"
_DELETE_SUPERSEDED = f"DELETE FROM flows WHERE revision = 0 AND {_RANGE} AND record_id IN ({_REPAIRED_IDS})"


Call = Callable[..., Awaitable[Any]]  # runs a blocking ClickHouse call (the worker: on its sink thread)


@dataclass
class RepairPass:
    """A pass over [lo, hi) for one share of the rows (``record_id % total`` in ``mine``).

    ``step`` does one page, so a worker can interleave a long pass with consuming;
    ClickHouse work goes through ``call``, while the registry is read by the caller's thread.
    """

    lo_ns: int
    hi_ns: int
    mine: tuple[int, ...] = (0,)
    total: int = 1
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
        rows = await call(candidates, client, bounds, self.mine, self.total, self.after)
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
    """Repair unattributed rows with ``lo_ns <= ts < hi_ns``, all of them, from a process that owns
    its registry (``flows reattribute`` with no running stack)."""
    run = RepairPass(lo_ns, hi_ns)

    async def whole() -> None:
        while not run.finished:
            await run.step(_here, client, registry, iface_prefix)

    asyncio.run(whole())
    return run.done


def range_bounds(lo_ns: int, hi_ns: int) -> dict[str, int]:
    """Bound parameters of a [lo, hi) ns range, widened to whole microseconds as ts is stored."""
    return {"lo": lo_ns // 1000, "hi": -(-hi_ns // 1000)}


def candidates(client: Client, bounds: dict[str, int], shards: tuple[int, ...], n_shards: int,
               after: tuple[int, int]) -> list[tuple]:
    """The next page of unattributed egress rows (FLOW_COLUMNS order, ts in µs) after ``after``."""
    params = {**bounds, "shards": list(shards), "n": n_shards, "after_ts": after[0], "after_id": after[1],
              "page": PAGE_ROWS}
    return [tuple(r) for r in client.query(_CANDIDATES, parameters=params).result_rows]


def insert_repaired(client: Client, rows: list[tuple]) -> None:
    """Insert repaired rows (REPAIR_COLUMNS order), at most MAX_DAYS_PER_INSERT day partitions a block."""
    if not rows:
        return
    ts_at = REPAIR_COLUMNS.index("ts")
    by_day: dict[Any, list[tuple]] = {}
    for row in rows:
        by_day.setdefault(datetime.fromtimestamp(row[ts_at] // 1_000_000, UTC).date(), []).append(row)
    days = sorted(by_day)
    for i in range(0, len(days), MAX_DAYS_PER_INSERT):
        chunk = [row for day in days[i:i + MAX_DAYS_PER_INSERT] for row in by_day[day]]
        ids = b"".join(int(r[REPAIR_COLUMNS.index("record_id")]).to_bytes(16, "big") for r in chunk)
        token = "repair:" + hashlib.sha256(ids).hexdigest()
        insert_columns(client, "flows", REPAIR_COLUMNS, [list(col) for col in zip(*chunk, strict=True)], token)


def delete_superseded(client: Client, bounds: dict[str, int]) -> int:
    """Remove originals whose repaired row is stored (only when there are any: a DELETE is a mutation)."""
    n = int(client.query(_SUPERSEDED, parameters=bounds).result_rows[0][0])
    if n:
        client.command(_DELETE_SUPERSEDED, parameters=bounds)
    return n
