"""Time-aware IP ownership: who held an IP, or a pod's cali interface, at a given moment.

Pure, no I/O. Fed with ``OwnerEvent``s (inventory dumps, the k8s watcher, a replay of
the compacted owners topic), asked once per packet-log line. Claims are kept as
intervals ``[valid_from, valid_to)`` per IP rather than a last-writer-wins dict,
because IPs are reused: a late or backfilled line must resolve to whoever held the
IP *then* (ARCHITECTURE principle 3).

Resolution, per IP (and the same per interface name):

- the claim containing ``ts`` with the latest ``valid_from`` wins, so a finished pod
  that was never closed loses to the pod that took its IP after it;
- if none contains ``ts``, the claim that ended last still answers until ``grace_ns``
  after its end (a line logged just after its pod was deleted); once the IP is reused
  the new claim contains ``ts`` and wins;
- before the first claim, nothing.

Per (kind, uid, ip) only the event with the newest ``observed_ns`` counts, ties broken
on content, so any delivery order with any duplicates converges to the same state.
``prune`` forgets claims that ended before the history window and refuses them if
they are replayed later.

Endpoint claims ("ip:port/protocol backs Service S", from EndpointSlices) live in their own
index keyed (ip, port, protocol), with the same interval and grace rules, and answer
``service_behind``: which Service a destination pod IP was reached through. Two Services on
one endpoint resolve to the first by (namespace, name), so an answer never flips because an
unrelated Service was created later; a claim whose target pod is not the pod holding the IP
at that time (the IP was reused) does not count.

Cost, measured on the 2-vCPU build VM (``pytest -m bench tests/unit/test_registry.py -s``):
100k IPs each handed to a new pod every ~34 h for a week (500k claims, 400k closed)
take ~540 B per claim: 257 MiB traced, 313 MiB process RSS. Memory grows with claims,
so a much busier cluster (1M claims: 584 MiB RSS) wants a shorter ``history_ns``.
``owner_of`` takes ~0.3 µs when the IP's timeline is in cache and ~2-3 µs for a random
one of the 100k IPs, where a bare dict lookup alone costs ~1 µs (memory latency, not
code); ``apply`` ~9 µs. An endpoint claim costs ~385 B traced (``pytest -s tests/system/test_endpoints.py
-k memory``): 10,000 of them (1,000 slices of 10 endpoints) ~3.9 MB.
"""

from __future__ import annotations

import sys
from bisect import bisect_right, insort
from collections.abc import Sequence
from operator import attrgetter

from pipeline.core.calico_iface import DEFAULT_PREFIX, cali_iface_name
from pipeline.core.models import Owner, OwnerEvent

OPEN = 2**63 - 1  # valid_to of an open claim: keeps every comparison int-to-int


class _Claim:
    """One interval of one owner on one IP; a pod's claims are also filed under its iface."""

    __slots__ = ("valid_from", "valid_to", "observed", "owner", "ip")

    def __init__(self, valid_from: int, valid_to: int, observed: int, owner: Owner, ip: str):
        self.valid_from = valid_from
        self.valid_to = valid_to
        self.observed = observed
        self.owner = owner
        self.ip = ip


class _EndpointClaim(_Claim):
    """An endpoint claim: its owner is the Service; ``target`` the backing pod's name ("" if none)."""

    __slots__ = ("target",)

    def __init__(self, valid_from: int, valid_to: int, observed: int, owner: Owner, ip: str, target: str):
        super().__init__(valid_from, valid_to, observed, owner, ip)
        self.target = target


# A key with a single claim, the common case, holds it bare: no list to pay for.
_Timeline = _Claim | list[_Claim]
_EndpointKey = tuple[str, int, str]  # (ip, port, protocol); port 0: every port
_valid_from = attrgetter("valid_from")


def _order(c: _Claim) -> tuple[int, str, str, str]:
    """Timelines are sorted by start; the rest makes equal starts resolve the same way every time."""
    return c.valid_from, c.owner.kind, c.owner.uid, c.ip


def _rank(c: _Claim) -> tuple[int, int, int, str, str, str, str, str]:
    """Which of two claims with the same key wins: the newer observation; for equal ones the
    earlier end (a close beats a reopen), then the rest of the content."""
    o = c.owner
    return c.observed, -c.valid_to, c.valid_from, o.namespace, o.name, o.workload_kind, o.workload, o.node


def _claims(entry: _Timeline) -> Sequence[_Claim]:
    return entry if type(entry) is list else (entry,)


def _resolve(entry: _Timeline, ts: int, grace_ns: int) -> Owner | None:
    claims = _claims(entry)
    # Claims [0, i) started at or before ts; the common case (ts after the last start) skips bisect.
    i = len(claims) if claims[-1].valid_from <= ts else bisect_right(claims, ts, key=_valid_from)
    ended_last = None
    for j in range(i - 1, -1, -1):
        c = claims[j]
        if ts < c.valid_to:
            return c.owner
        if ended_last is None or c.valid_to > ended_last.valid_to:
            ended_last = c
    if ended_last is not None and ts < ended_last.valid_to + grace_ns:
        return ended_last.owner
    return None


def _add(index: dict, key: str | _EndpointKey, c: _Claim) -> None:
    entry = index.get(key)
    if entry is None:
        index[key] = c
    elif type(entry) is not list:
        index[key] = sorted((entry, c), key=_order)
    else:
        insort(entry, c, key=_order)


def _discard(index: dict, key: str | _EndpointKey, c: _Claim) -> None:
    entry = index[key]
    if entry is c:
        del index[key]
    else:
        entry.remove(c)
        if len(entry) == 1:
            index[key] = entry[0]


class OwnershipRegistry:
    """IP -> ownership intervals, and cali interface -> pod intervals."""

    __slots__ = (
        "history_ns",
        "grace_ns",
        "iface_prefix",
        "_by_ip",
        "_by_iface",
        "_by_endpoint",
        "_services",
        "_horizon",
        "_claims",
        "_open",
    )

    def __init__(
        self,
        history_ns: int = 35 * 86400 * 10**9,
        grace_ns: int = 30 * 10**9,
        iface_prefix: str = DEFAULT_PREFIX,
    ):
        self.history_ns = history_ns
        self.grace_ns = grace_ns
        self.iface_prefix = iface_prefix
        self._by_ip: dict[str, _Timeline] = {}
        self._by_iface: dict[str, _Timeline] = {}
        self._by_endpoint: dict[_EndpointKey, _Timeline] = {}
        self._services: dict[tuple[str, str, str], Owner] = {}  # one Owner per slice, shared by its claims
        self._horizon = -1  # claims ending before this were pruned: do not take them back
        self._claims = 0
        self._open = 0

    def apply(self, ev: OwnerEvent) -> bool:
        """Record one claim; True if any answer may have changed.

        A claim already held under the same (kind, uid, ip) is replaced only by a newer
        observation, so replays, duplicates and out-of-order delivery are harmless. A
        newer observation of identical content only refreshes ``observed_ns`` (False).
        A pod's identity claim (``ip == ""``) is filed under its interface name only.
        """
        if ev.kind == "endpoint":
            return self._apply_endpoint(ev)
        # Interned: namespaces, workloads and nodes repeat across thousands of claims, and
        # each IP's claims then share the dict key's string.
        namespace = sys.intern(ev.namespace)
        owner = Owner(
            kind=sys.intern(ev.kind),
            namespace=namespace,
            name=ev.name,
            uid=ev.uid,
            workload_kind=sys.intern(ev.workload_kind),
            workload=sys.intern(ev.workload),
            node=sys.intern(ev.node),
            iface=cali_iface_name(namespace, ev.name, self.iface_prefix) if ev.kind == "pod" else "",
        )
        valid_to = OPEN if ev.valid_to_ns is None else ev.valid_to_ns
        new = _Claim(ev.valid_from_ns, valid_to, ev.observed_ns, owner, sys.intern(ev.ip))
        entry = self._by_ip.get(new.ip) if new.ip else self._by_iface.get(owner.iface)
        held = _claims(entry) if entry is not None else ()
        old = next((c for c in held if c.owner.uid == owner.uid and c.owner.kind == owner.kind and c.ip == new.ip),
                   None)
        if old is not None:
            if _rank(new) <= _rank(old):
                return False
            if (new.valid_from, new.valid_to, new.owner) == (old.valid_from, old.valid_to, old.owner):
                old.observed = new.observed
                return False
            self._remove(old)
        if new.valid_to < self._horizon:
            return old is not None
        self._insert(new)
        return True

    def _apply_endpoint(self, ev: OwnerEvent) -> bool:
        """``apply`` for an endpoint claim: the same replacement rules, in the endpoint index."""
        ident = (sys.intern(ev.namespace), sys.intern(ev.name), ev.uid)
        owner = self._services.get(ident)
        if owner is None:
            owner = self._services[ident] = Owner(kind="service", namespace=ident[0], name=ident[1], uid=ev.uid,
                                                  workload_kind="Service", workload=ident[1])
        valid_to = OPEN if ev.valid_to_ns is None else ev.valid_to_ns
        new = _EndpointClaim(ev.valid_from_ns, valid_to, ev.observed_ns, owner, sys.intern(ev.ip), ev.target)
        key = (new.ip, ev.port, sys.intern(ev.protocol))
        entry = self._by_endpoint.get(key)
        held: Sequence[_EndpointClaim] = _claims(entry) if entry is not None else ()  # type: ignore[assignment]
        old = next((c for c in held if c.owner.uid == ev.uid), None)
        if old is not None:
            if (new.observed, -new.valid_to, new.valid_from, new.target) <= \
                    (old.observed, -old.valid_to, old.valid_from, old.target):
                return False
            _discard(self._by_endpoint, key, old)
            self._count(old, -1)
        if new.valid_to < self._horizon:
            return old is not None
        _add(self._by_endpoint, key, new)
        self._count(new, 1)
        return True

    def service_behind(self, ip: str, port: int | None, protocol: str, ts_ns: int,
                       holder: Owner | None) -> tuple[Owner, str] | None:
        """The Service (and backing pod name) that ``ip:port/protocol`` was an endpoint of at ``ts_ns``.

        ``holder`` is who held ``ip`` then (``owner_of``): a claim naming another pod is stale.
        """
        if not self._by_endpoint:
            return None
        for key in ((ip, port or 0, protocol), (ip, 0, protocol)):
            entry = self._by_endpoint.get(key)
            if entry is None:
                continue
            best: _EndpointClaim | None = None
            ended: _EndpointClaim | None = None
            claims: Sequence[_EndpointClaim] = _claims(entry)  # type: ignore[assignment]
            for c in claims:
                if c.valid_from > ts_ns or (holder is not None and holder.kind == "pod" and c.target and (
                        holder.name != c.target or holder.namespace != c.owner.namespace)):
                    continue
                if ts_ns < c.valid_to:
                    if best is None or (c.owner.namespace, c.owner.name) < (best.owner.namespace, best.owner.name):
                        best = c
                elif ts_ns < c.valid_to + self.grace_ns and (ended is None or c.valid_to > ended.valid_to):
                    ended = c
            found = best or ended
            if found is not None:
                return found.owner, found.target
        return None

    def owner_of(self, ip: str, ts_ns: int) -> Owner | None:
        """Who held ``ip`` (canonical text, as ``ipaddress`` prints it) at ``ts_ns``."""
        entry = self._by_ip.get(ip)
        return None if entry is None else _resolve(entry, ts_ns, self.grace_ns)

    def pod_by_iface(self, iface: str, ts_ns: int) -> Owner | None:
        """Which pod had the interface ``iface`` at ``ts_ns`` (StatefulSet pods reuse names)."""
        entry = self._by_iface.get(iface)
        return None if entry is None else _resolve(entry, ts_ns, self.grace_ns)

    def prune(self, now_ns: int) -> int:
        """Forget claims that ended more than ``history_ns`` before ``now_ns``; return how many."""
        cutoff = now_ns - self.history_ns
        self._horizon = max(self._horizon, cutoff)
        expired = [c for entry in self._by_ip.values() for c in _claims(entry) if c.valid_to < cutoff]
        expired += [c for entry in self._by_iface.values() for c in _claims(entry) if not c.ip and c.valid_to < cutoff]
        for c in expired:
            self._remove(c)
        gone = [(key, c) for key, entry in self._by_endpoint.items() for c in _claims(entry) if c.valid_to < cutoff]
        for key, c in gone:
            _discard(self._by_endpoint, key, c)
            self._count(c, -1)
        if gone:
            live = {id(c.owner) for entry in self._by_endpoint.values() for c in _claims(entry)}
            self._services = {k: o for k, o in self._services.items() if id(o) in live}
        return len(expired) + len(gone)

    def stats(self) -> dict[str, int]:
        return {"ips": len(self._by_ip), "claims": self._claims, "open_claims": self._open}

    def _count(self, c: _Claim, sign: int) -> None:
        self._claims += sign
        self._open += sign * (c.valid_to == OPEN)

    def _insert(self, c: _Claim) -> None:
        if c.owner.kind == "pod":
            iface = c.owner.iface
            siblings = self._by_iface.get(iface)
            if siblings is not None:  # a pod's identity and IP claims (one per family) share one Owner
                c.owner = next((s.owner for s in _claims(siblings) if s.owner == c.owner), c.owner)
            _add(self._by_iface, iface, c)
        if c.ip:
            _add(self._by_ip, c.ip, c)
        self._count(c, 1)

    def _remove(self, c: _Claim) -> None:
        if c.owner.kind == "pod":
            _discard(self._by_iface, c.owner.iface, c)
        if c.ip:
            _discard(self._by_ip, c.ip, c)
        self._count(c, -1)

    def steady_span(self, ts_ns: int, ips: Sequence[str] = (), ifaces: Sequence[str] = (),
                    endpoints: Sequence[_EndpointKey] = ()) -> tuple[int, int]:
        """[lo, hi) around ``ts_ns`` over which ``owner_of`` of ``ips``, ``pod_by_iface`` of ``ifaces`` and
        ``service_behind`` on ``endpoints`` answer as they do at ``ts_ns`` (the registry unchanged).

        Every answer depends on ``ts`` only through tests ``ts >= edge`` against each claim's start, end and
        end plus grace, so it holds between the nearest edges: a batch asks once per key, not per record.
        """
        lo, hi = -OPEN, OPEN + self.grace_ns + 1
        for index, keys in ((self._by_ip, ips), (self._by_iface, ifaces), (self._by_endpoint, endpoints)):
            for key in keys:
                entry = index.get(key)
                for c in _claims(entry) if entry is not None else ():
                    for edge in (c.valid_from, c.valid_to, c.valid_to + self.grace_ns):
                        if edge <= ts_ns:
                            lo = max(lo, edge)
                        else:
                            hi = min(hi, edge)
        return lo, hi
