"""When the worker repairs attribution, a page at a time (the pass itself: pipeline/store/repair.py).

A pass over a long range (an inventory loaded with old start times, a week of
unattributed rows) would hold up the consume loop for as long as it runs, long
enough to leave the consumer group. So the automatic pass advances one page per
turn of the loop, and every page runs under a lock the revoke handler takes: a
page started before a rebalance is stored before the partitions move, and the
pass then starts again over the same range with the worker's new share, so two
workers never repair the same row.

What a pass looks at is what the claims learned since the last one may change: unattributed
sources from the earliest claim start, and destinations: each address a claim names, from the
moment its answer may have changed (``destination_change``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from pipeline.basics import metrics
from pipeline.core.models import OwnerEvent
from pipeline.core.registry import OwnershipRegistry
from pipeline.store.repair import Dests, RepairPass
from pipeline.worker.sink import ClickHouseSink

log = logging.getLogger("flows.worker")
Shards = tuple[tuple[int, ...], int]  # (this worker's raw partitions, of how many)
# More addresses than this waiting for a pass (an inventory loaded into an empty store, a watcher
# back after a long outage): the pass classifies every egress row from the earliest of their times.
MAX_DEST_IPS = 1_000


def destination_change(registry: OwnershipRegistry, ev: OwnerEvent) -> tuple[str, int] | None:
    """(address, from when) the destination answer for ``ev.ip`` may change once ``ev`` is applied:
    read BEFORE applying it. A close of a claim the registry already held changes answers from the
    claim's end on; any other claim (new, or closed before this worker saw it open) from its start.
    None for a pod's identity claim, which names no address."""
    if not ev.ip:
        return None
    if ev.valid_to_ns is not None:
        at = ev.valid_from_ns
        if ev.kind == "endpoint":
            behind = registry.service_behind(ev.ip, ev.port, ev.protocol, at, registry.owner_of(ev.ip, at))
            held = behind is not None and behind[0].uid == ev.uid
        else:
            held = registry.holds(ev.ip, at, ev.kind, ev.uid)
        if held:
            return ev.ip, ev.valid_to_ns
    return ev.ip, ev.valid_from_ns


class Repairs:
    """What ownership learned and not yet repaired, the pass under way, and what was repaired."""

    def __init__(self, sink: ClickHouseSink, registry: OwnershipRegistry, iface_prefix: str,
                 interval_s: float, shards: Callable[[], Shards], worker_id: int) -> None:
        self.sink, self.registry, self.iface_prefix = sink, registry, iface_prefix
        self.worker_id = worker_id  # the id this worker's rows carry in attributed_by
        self.interval_s = interval_s
        self.shards = shards
        self.since_ns: int | None = None  # earliest start of ownership learned and not yet repaired
        self.dests = Dests()  # destinations to classify again, and from when
        self.after_seq = 0  # ... learned while this batch was being built
        self.next_due = 0.0
        self.repaired = 0
        self.current: RepairPass | None = None
        self.lock = asyncio.Lock()

    def learned(self, start_ns: int, batch_seq: int, dest: tuple[str, int] | None = None) -> None:
        """Ownership starting at ``start_ns`` arrived while batch ``batch_seq`` was being built; with
        ``dest``, the destination answer of an address may have changed from a time on."""
        if dest is not None:
            self.dests.add(*dest, MAX_DEST_IPS)
            start_ns = min(start_ns, dest[1])
        self.since_ns = start_ns if self.since_ns is None else min(self.since_ns, start_ns)
        self.after_seq = batch_seq

    def _again(self, run: RepairPass) -> None:
        """A pass that did not finish (failed, or its partitions moved): what it covered is learned again."""
        self.dests.merge(run.dests, MAX_DEST_IPS)
        self.learned(run.lo_ns, self.after_seq)

    async def step_if_due(self, stored_seq: int, now_ns: int) -> None:
        """One page of the pass under way, or start one: once the batch that was being built
        when the ownership arrived is stored, at most every ``interval_s``."""
        if self.current is None:
            if self.since_ns is None or stored_seq < self.after_seq or time.monotonic() < self.next_due:
                return
            mine, total = self.shards()
            if not mine:
                return
            # This worker's rows of the batches after the one being built when the last of these claims
            # arrived were attributed with all of them: not looked at again.
            self.current = RepairPass(self.since_ns, now_ns, mine, total, self.dests,
                                      skip=(self.worker_id, self.after_seq))
            self.since_ns, self.dests = None, Dests()
            self.next_due = time.monotonic() + self.interval_s
        async with self.lock:
            run = self.current
            if run is None:  # abandoned at a revoke while this waited for the lock
                return
            try:
                await self._step(run)
            except Exception as exc:  # the rows stay unattributed and are tried again with the next pass
                log.warning("attribution repair failed: %s", exc)
                self._again(run)
                self.current = None
                return
            if run.finished:
                self.current = None

    async def abandon(self) -> None:
        """At a revoke: let the page in progress finish, then leave the range to a pass over the new share."""
        async with self.lock:
            if self.current is not None:
                self._again(self.current)
                self.next_due = 0.0
                self.current = None

    async def run(self, lo_ns: int, hi_ns: int) -> dict[str, int]:
        """A whole pass now (``flows reattribute`` through the running stack: every destination of
        the range, the user asked for it), gone over again with the new share whenever the partitions
        move meanwhile."""
        run = RepairPass(lo_ns, hi_ns, *self.shards(), dests=Dests(every_from_ns=0))
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
