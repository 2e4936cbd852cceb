"""Records waiting for ownership that covers their time (pure, no I/O).

Ownership and lines travel on different paths with different delays: the kubelet
reports a new pod's IP seconds after its first packets, a watcher may be down. A
record the ownership known now cannot attribute is held here until (a) ownership
that attributes it arrives, (b) the owners watermark, less the allowance, passes its
time (then what is known is final: it is stored, unattributed if need be), or (c) it
has waited ``max_age_s`` or the hold is full (stored unattributed; ``flows
reattribute`` and the worker's repair fix it when ownership arrives later).

Attributable records are never queued behind held ones; held records only keep
their partition's offset commit from passing them, which ``max_age_s`` bounds.
"""

from __future__ import annotations

from collections import deque

from pipeline.core.enrich import Batch, Parsed, add_parsed, settles
from pipeline.core.registry import OwnershipRegistry


class Hold:
    """Held records in arrival order, with what their release should count."""

    __slots__ = ("max_age_s", "max_records", "_queue", "released")

    def __init__(self, max_age_s: float, max_records: int) -> None:
        self.max_age_s = max_age_s
        self.max_records = max_records
        self._queue: deque[tuple[Parsed, float]] = deque()
        self.released = {"attributed": 0, "unattributed": 0}

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, parsed: Parsed, now_s: float) -> None:
        self._queue.append((parsed, now_s))

    def release(self, batch: Batch, registry: OwnershipRegistry, iface_prefix: str, settled_ns: int,
                now_s: float, rescan: bool) -> int:
        """Append to ``batch`` every held record that may go now; return how many went.

        ``rescan``: ownership or the watermark changed since the last call, so every held
        record is looked at; otherwise only the oldest ones, for age and size limits.
        """
        queue = self._queue
        went = 0
        while queue and (len(queue) > self.max_records or now_s - queue[0][1] >= self.max_age_s):
            went += self._go(batch, queue.popleft()[0], registry, iface_prefix)
        if rescan and queue:
            keep: deque[tuple[Parsed, float]] = deque()
            for item in queue:
                parsed = item[0]
                if parsed.rec.ts_ns <= settled_ns or settles(parsed, registry, iface_prefix):
                    went += self._go(batch, parsed, registry, iface_prefix)
                else:
                    keep.append(item)
            self._queue = keep
        return went

    def _go(self, batch: Batch, parsed: Parsed, registry: OwnershipRegistry, iface_prefix: str) -> int:
        attributed = add_parsed(batch, parsed, registry, iface_prefix)
        self.released["attributed" if attributed else "unattributed"] += 1
        return 1

    def first_offsets(self) -> dict[int, int]:
        """Partition -> offset of its earliest held record: commits must not pass it."""
        first: dict[int, int] = {}
        for parsed, _ in self._queue:
            p = parsed.partition
            if p not in first or parsed.offset < first[p]:
                first[p] = parsed.offset
        return first

    def drop_partitions(self, partitions: set[int]) -> int:
        """Forget records of partitions this worker no longer owns (their new owner replays them)."""
        before = len(self._queue)
        self._queue = deque(item for item in self._queue if item[0].partition not in partitions)
        return before - len(self._queue)
