"""When the worker repairs attribution, a page at a time (the pass itself: pipeline/store/repair.py).

A pass over a long range (an inventory loaded with old start times, a week of
unattributed rows) would hold up the consume loop for as long as it runs, long
enough to leave the consumer group. So the automatic pass advances one page per
turn of the loop, and every page runs under a lock the revoke handler takes: a
page started before a rebalance is stored before the partitions move, and the
pass then starts again over the same range with the worker's new share, so two
workers never repair the same row.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from pipeline.basics import metrics
from pipeline.core.registry import OwnershipRegistry
from pipeline.store.repair import RepairPass
from pipeline.worker.sink import ClickHouseSink

log = logging.getLogger("flows.worker")
Shards = tuple[tuple[int, ...], int]  # (this worker's raw partitions, of how many)


class Repairs:
    """What ownership learned and not yet repaired, the pass under way, and what was repaired."""

    def __init__(self, sink: ClickHouseSink, registry: OwnershipRegistry, iface_prefix: str,
                 interval_s: float, shards: Callable[[], Shards]) -> None:
        self.sink, self.registry, self.iface_prefix = sink, registry, iface_prefix
        self.interval_s = interval_s
        self.shards = shards
        self.since_ns: int | None = None  # earliest start of ownership learned and not yet repaired
        self.after_seq = 0  # ... learned while this batch was being built
        self.next_due = 0.0
        self.repaired = 0
        self.current: RepairPass | None = None
        self.lock = asyncio.Lock()

    def learned(self, start_ns: int, batch_seq: int) -> None:
        """Ownership starting at ``start_ns`` arrived while batch ``batch_seq`` was being built."""
        self.since_ns = start_ns if self.since_ns is None else min(self.since_ns, start_ns)
        self.after_seq = batch_seq

    async def step_if_due(self, stored_seq: int, now_ns: int) -> None:
        """One page of the pass under way, or start one: once the batch that was being built
        when the ownership arrived is stored, at most every ``interval_s``."""
        if self.current is None:
            if self.since_ns is None or stored_seq < self.after_seq or time.monotonic() < self.next_due:
                return
            mine, total = self.shards()
            if not mine:
                return
            self.current = RepairPass(self.since_ns, now_ns, mine, total)
            self.since_ns = None
            self.next_due = time.monotonic() + self.interval_s
        async with self.lock:
            run = self.current
            if run is None:  # abandoned at a revoke while this waited for the lock
                return
            try:
                await self._step(run)
            except Exception as exc:  # the rows stay unattributed and are tried again with the next pass
                log.warning("attribution repair failed: %s", exc)
                self.learned(run.lo_ns, self.after_seq)
                self.current = None
                return
            if run.finished:
                self.current = None

    async def abandon(self) -> None:
        """At a revoke: let the page in progress finish, then leave the range to a pass over the new share."""
        async with self.lock:
            if self.current is not None:
                self.learned(self.current.lo_ns, self.after_seq)
                self.next_due = 0.0
                self.current = None

    async def run(self, lo_ns: int, hi_ns: int) -> dict[str, int]:
        """A whole pass now (``flows reattribute`` through the running stack), gone over again
        with the new share whenever the partitions move meanwhile."""
        run = RepairPass(lo_ns, hi_ns, *self.shards())
        while not run.finished:
            async with self.lock:
                mine, total = self.shards()
                if not mine:
                    break
                if (mine, total) != (run.mine, run.total):
                    run.restart(mine, total)
                await self._step(run)
        return run.done

    async def _step(self, run: RepairPass) -> None:
        before = run.done["repaired"]
        await run.step(self.sink.call, self.sink.client(), self.registry, self.iface_prefix)
        if new := run.done["repaired"] - before:
            self.repaired += new
            metrics.ROWS_REPAIRED.inc(new)
            log.info("repaired the attribution of %d stored rows", new)
