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

Each release costs what it releases, not what is held: records are indexed by
arrival (age, size), by time (the watermark) and by the addresses and interface
that can change their answer (ownership), so a busy cluster's ownership churn
does not rescan a full hold on every fetch.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable

from pipeline.core.calico_iface import cali_iface_name
from pipeline.core.enrich import Batch, Parsed, add_parsed, settles
from pipeline.core.models import OwnerEvent
from pipeline.core.registry import OwnershipRegistry


def ip_key(ip: str) -> str:
    return "ip:" + ip


def iface_key(iface: str) -> str:
    return "if:" + iface


def claim_keys(ev: OwnerEvent, iface_prefix: str) -> tuple[str, ...]:
    """What a claim can change the answer for: its address, and a pod's interface."""
    keys = (ip_key(ev.ip),) if ev.ip else ()
    if ev.kind == "pod":
        keys += (iface_key(cali_iface_name(ev.namespace, ev.name, iface_prefix)),)
    return keys


class _Held:
    __slots__ = ("parsed", "arrived_s", "done")

    def __init__(self, parsed: Parsed, arrived_s: float) -> None:
        self.parsed = parsed
        self.arrived_s = arrived_s
        self.done = False


def _keys(parsed: Parsed) -> tuple[str, ...]:
    """Every claim that can settle a held record is filed under one of these (see ``claim_keys``)."""
    pkt = parsed.pkt
    return ip_key(pkt.src), iface_key(pkt.in_iface), ip_key(pkt.dst)


class Hold:
    """Held records, indexed by arrival, time, partition and the keys that can settle them."""

    __slots__ = ("max_age_s", "max_records", "released", "_arrival", "_by_ts", "_by_key", "_by_partition",
                 "_live", "_seq")

    def __init__(self, max_age_s: float, max_records: int) -> None:
        self.max_age_s = max_age_s
        self.max_records = max_records
        self.released = {"attributed": 0, "unattributed": 0}
        self._arrival: deque[_Held] = deque()
        self._by_ts: list[tuple[int, int, _Held]] = []
        self._by_key: dict[str, list[_Held]] = {}
        self._by_partition: dict[int, deque[_Held]] = {}
        self._live = 0
        self._seq = 0

    def __len__(self) -> int:
        return self._live

    def add(self, parsed: Parsed, now_s: float) -> None:
        held = _Held(parsed, now_s)
        self._arrival.append(held)
        self._seq += 1
        heapq.heappush(self._by_ts, (parsed.rec.ts_ns, self._seq, held))
        for key in _keys(parsed):
            self._by_key.setdefault(key, []).append(held)
        self._by_partition.setdefault(parsed.partition, deque()).append(held)
        self._live += 1

    def release(self, batch: Batch, registry: OwnershipRegistry, iface_prefix: str, settled_ns: int,
                now_s: float, changed: Iterable[str] = ()) -> int:
        """Append to ``batch`` every held record that may go now; return how many went.

        ``changed``: keys (``claim_keys``) of the claims applied since the last call; only
        records filed under them are looked at again for ownership.
        """
        went = 0
        arrival = self._arrival
        while arrival and (arrival[0].done or self._live > self.max_records
                           or now_s - arrival[0].arrived_s >= self.max_age_s):
            held = arrival.popleft()
            if not held.done:
                went += self._go(batch, held, registry, iface_prefix)
        by_ts = self._by_ts
        while by_ts and by_ts[0][0] <= settled_ns:
            held = heapq.heappop(by_ts)[2]
            if not held.done:
                went += self._go(batch, held, registry, iface_prefix)
        for key in set(changed):
            waiting = self._by_key.pop(key, None)
            if not waiting:
                continue
            keep = []
            for held in waiting:
                if held.done:
                    continue
                if settles(held.parsed, registry, iface_prefix):
                    went += self._go(batch, held, registry, iface_prefix)
                else:
                    keep.append(held)
            if keep:
                self._by_key[key] = keep
        if len(by_ts) > 2 * self._live + 1024:  # released records linger in the indexes: compact
            self._compact()
        return went

    def _go(self, batch: Batch, held: _Held, registry: OwnershipRegistry, iface_prefix: str) -> int:
        held.done = True
        self._live -= 1
        attributed = add_parsed(batch, held.parsed, registry, iface_prefix)
        self.released["attributed" if attributed else "unattributed"] += 1
        return 1

    def _compact(self) -> None:
        live = [h for h in self._arrival if not h.done]
        self._arrival = deque(live)
        self._by_ts = [entry for entry in self._by_ts if not entry[2].done]
        heapq.heapify(self._by_ts)
        self._by_key = {}
        self._by_partition = {}
        for held in live:
            for key in _keys(held.parsed):
                self._by_key.setdefault(key, []).append(held)
            self._by_partition.setdefault(held.parsed.partition, deque()).append(held)

    def first_offsets(self) -> dict[int, int]:
        """Partition -> offset of its earliest held record: commits must not pass it.

        A partition's records are held in offset order, so its first live one is the earliest.
        """
        first: dict[int, int] = {}
        for partition, queue in list(self._by_partition.items()):
            while queue and queue[0].done:
                queue.popleft()
            if queue:
                first[partition] = queue[0].parsed.offset
            else:
                del self._by_partition[partition]
        return first

    def drop_partitions(self, partitions: set[int]) -> int:
        """Forget records of partitions this worker no longer owns (their new owner replays them)."""
        dropped = 0
        for partition in partitions:
            for held in self._by_partition.pop(partition, ()):
                if not held.done:
                    held.done = True
                    self._live -= 1
                    dropped += 1
        return dropped
