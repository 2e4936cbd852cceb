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

Cost (docs/performance.md#registry-memory): 100k IPs each handed to a new pod every ~34 h
for a week (494k claims) take ~119 B per claim traced (``flows bench``'s
``registry_bytes_per_claim``), against ~530 B when each claim was an object with its own
Owner. Memory grows with claims, so a much busier cluster wants a shorter ``history_ns``.
``owner_of`` takes ~0.7 µs when the IP's Owner is cached and ~5 µs when it must be built
(a random one of 100k IPs); ``apply`` ~9 µs. Addresses are kept as numbers, not text: an
IPv6 address is one address however it is written. An endpoint claim
costs ~385 B traced (``pytest -s tests/system/test_endpoints.py -k memory``): 10,000 of them
(1,000 slices of 10 endpoints) ~3.9 MB.
"""

from __future__ import annotations

import socket
import sys
from array import array
from bisect import insort
from collections.abc import Sequence

from pipeline.core.calico_iface import DEFAULT_PREFIX, cali_iface_name
from pipeline.core.models import Owner, OwnerEvent
from pipeline.core.packed import IntMap, TextHeap

OPEN = 2**63 - 1  # valid_to of an open claim: keeps every comparison int-to-int
END = -1  # end of a timeline chain
# A claim's address as a number (``_ip``): an IPv4 address is its own value, an IPv6 one V6 plus
# its number in the registry's table of IPv6 addresses (held while a claim names it).
NO_IP, FREE, UNKNOWN = -1, -2, -3  # a pod's identity claim; a free claim number; text no claim names
V6 = 1 << 32
IFACE_DIGITS = 11  # hex digits after the prefix in a Calico interface name
_HEX = frozenset("0123456789abcdef")
# Owners answered recently, per generation: lines name the same live pods over and over,
# and building an Owner costs ~2 µs. Two generations keep the busy ones when one fills.
OWNER_CACHE = 1 << 12


class _EndpointClaim:
    """An endpoint claim: its owner is the Service; ``target`` the backing pod's name ("" if none)."""

    __slots__ = ("valid_from", "valid_to", "observed", "owner", "ip", "target")

    def __init__(self, valid_from: int, valid_to: int, observed: int, owner: Owner, ip: str, target: str):
        self.valid_from = valid_from
        self.valid_to = valid_to
        self.observed = observed
        self.owner = owner
        self.ip = ip
        self.target = target


# A key with a single claim, the common case, holds it bare: no list to pay for.
_Timeline = _EndpointClaim | list[_EndpointClaim]
_EndpointKey = tuple[str, int, str]  # (ip, port, protocol); port 0: every port


def _order(c: _EndpointClaim) -> tuple[int, str, str]:
    """Timelines are sorted by start; the rest makes equal starts resolve the same way every time."""
    return c.valid_from, c.owner.uid, c.ip


def _claims(entry: _Timeline) -> Sequence[_EndpointClaim]:
    return entry if type(entry) is list else (entry,)


def _add(index: dict, key: _EndpointKey, c: _EndpointClaim) -> None:
    entry = index.get(key)
    if entry is None:
        index[key] = c
    elif type(entry) is not list:
        index[key] = sorted((entry, c), key=_order)
    else:
        insort(entry, c, key=_order)


def _discard(index: dict, key: _EndpointKey, c: _EndpointClaim) -> None:
    entry = index[key]
    if entry is c:
        del index[key]
    else:
        entry.remove(c)
        if len(entry) == 1:
            index[key] = entry[0]


class OwnershipRegistry:
    """IP -> ownership intervals, and cali interface -> pod intervals.

    Claims live in parallel arrays indexed by a claim number; a freed number is reused.
    Each IP's claims, and each pod interface's, form a chain through ``_next_ip`` /
    ``_next_iface`` in descending ``(valid_from, kind, uid, ip)`` order, so the claim
    that started last is looked at first. A claim's name and uid are one ``TextHeap``
    entry (shared by a pod's claims of the same content); ``Owner`` objects are built
    when asked for and cached.
    """

    __slots__ = (
        "history_ns",
        "grace_ns",
        "iface_prefix",
        "_from",
        "_to",
        "_observed",
        "_text",
        "_context",
        "_node",
        "_ip",
        "_next_ip",
        "_next_iface",
        "_free",
        "_contexts",
        "_context_ids",
        "_nodes",
        "_node_ids",
        "_heap",
        "_ip_heads",
        "_v6_ids",
        "_v6",
        "_v6_free",
        "_numbers",
        "_iface_heads",
        "_iface_seen",
        "_owners",
        "_owners_old",
        "_by_endpoint",
        "_services",
        "_horizon",
        "_claims",
        "_open",
        "generation",
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
        self._from = array("q")
        self._to = array("q")
        self._observed = array("q")
        self._text = array("q")  # TextHeap ref of (name, uid)
        self._context = array("i")  # index into _contexts
        self._node = array("i")  # index into _nodes
        self._ip = array("q")  # the claimed address's number (NO_IP, FREE: above)
        self._next_ip = array("i")
        self._next_iface = array("i")
        self._free = array("i")
        # (kind, namespace, workload_kind, workload) and node: each shared by the many claims that agree on it
        # (apart: a workload's pods spread over nodes, a DaemonSet has one on each)
        self._contexts: list[tuple[str, str, str, str]] = []
        self._context_ids: dict[tuple[str, str, str, str], int] = {}
        self._nodes: list[str] = []
        self._node_ids: dict[str, int] = {}
        self._heap = TextHeap()
        self._ip_heads = IntMap()  # address number -> first claim
        self._v6_ids: dict[int, int] = {}  # IPv6 address (as an int) -> its number less V6
        self._v6: list[int] = []  # and back
        self._v6_free = array("i")
        self._numbers: dict[str, int] = {}  # address texts asked for recently -> their number
        self._iface_heads = IntMap()  # the interface name's hex digits -> first claim
        self._iface_seen: dict[str, int] = {}  # interface names asked for recently -> first claim (or END)
        self._owners: dict[int, Owner] = {}
        self._owners_old: dict[int, Owner] = {}
        self._by_endpoint: dict[_EndpointKey, _Timeline] = {}
        self._services: dict[tuple[str, str, str], Owner] = {}  # one Owner per slice, shared by its claims
        self._horizon = -1  # claims ending before this were pruned: do not take them back
        self._claims = 0
        self._open = 0
        # Counts the changes that may change an answer (``apply`` True, ``prune`` forgetting a claim):
        # answers kept under one generation still hold (the batch path keeps them for a whole batch).
        self.generation = 0

    def apply(self, ev: OwnerEvent) -> bool:
        """Record one claim; True if any answer may have changed.

        A claim already held under the same (kind, uid, ip) is replaced only by a newer
        observation, so replays, duplicates and out-of-order delivery are harmless. A
        newer observation of identical content only refreshes ``observed_ns`` (False).
        A pod's identity claim (``ip == ""``) is filed under its interface name only.
        """
        changed = self._apply_endpoint(ev) if ev.kind == "endpoint" else self._apply_claim(ev)
        if changed:
            self.generation += 1
        return changed

    def _apply_claim(self, ev: OwnerEvent) -> bool:
        """``apply`` for a claim of an address or an interface."""
        kind = ev.kind
        ip = self._address(ev.ip)
        iface = self._iface_key(ev.namespace, ev.name) if kind == "pod" else -1
        if ip != NO_IP:
            cid, nxt = self._ip_heads.get(ip) if ip >= 0 else END, self._next_ip
        else:  # a pod's identity claim (claims.py lets only pods claim no IP)
            cid, nxt = (self._iface_heads.get(iface) if iface >= 0 else END), self._next_iface
        while cid != END and not (self._ip[cid] == ip and self._contexts[self._context[cid]][0] == kind
                                  and self._heap.get(self._text[cid])[1] == ev.uid):
            cid = nxt[cid]
        valid_to = OPEN if ev.valid_to_ns is None else ev.valid_to_ns
        text = -1
        if cid != END:
            context = self._context_of(cid)
            name = self._heap.get(self._text[cid])[0]
            new = (ev.observed_ns, -valid_to, ev.valid_from_ns, ev.namespace, ev.name, ev.workload_kind,
                   ev.workload, ev.node)
            if new <= (self._observed[cid], -self._to[cid], self._from[cid], context[1], name, context[2],
                       context[3], context[4]):
                return False
            same_owner = (kind, ev.namespace, ev.workload_kind, ev.workload, ev.node) == context and ev.name == name
            if same_owner and (ev.valid_from_ns, valid_to) == (self._from[cid], self._to[cid]):
                self._observed[cid] = ev.observed_ns
                return False
            if same_owner:
                text = self._text[cid]
            same_iface = ev.name == name and ev.namespace == context[1]
            self._remove(cid, -1 if kind != "pod" else iface if same_iface else self._iface_key(context[1], name))
        if valid_to < self._horizon:
            return cid != END
        self._insert(ev, ip, iface, valid_to, text)
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
            self._count(old.valid_to, -1)
        if new.valid_to < self._horizon:
            return old is not None
        _add(self._by_endpoint, key, new)
        self._count(new.valid_to, 1)
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
        """Who held ``ip`` (an address's text) at ``ts_ns``."""
        cid = self._claim_at(self._ip_head(ip), self._next_ip, ts_ns)
        return None if cid == END else self._owner(cid)

    def holds(self, ip: str, ts_ns: int, kind: str, uid: str) -> bool:
        """Whether ``owner_of(ip, ts_ns)`` is the claim of (``kind``, ``uid``), answered without an Owner.

        For questions asked per owner event as it is applied: the Owners and address texts the
        lookup caches would be made among the event's short-lived objects, and each one kept
        alive keeps the interpreter's memory pool it sits in (docs/performance.md).
        """
        key = self._address(ip)
        cid = self._claim_at(self._ip_heads.get(key) if key >= 0 else END, self._next_ip, ts_ns)
        return cid != END and self._contexts[self._context[cid]][0] == kind and \
            self._heap.get(self._text[cid])[1] == uid

    def _address(self, ip: str, add: bool = False) -> int:
        """The number of the address ``ip`` names (NO_IP for ""); UNKNOWN for text that is no address,
        or an IPv6 address no claim names unless ``add``."""
        if not ip:
            return NO_IP
        try:
            if ":" not in ip:
                return int.from_bytes(socket.inet_pton(socket.AF_INET, ip))
            value = int.from_bytes(socket.inet_pton(socket.AF_INET6, ip))
        except (OSError, ValueError):  # ValueError: a NUL in the text
            return UNKNOWN
        found = self._v6_ids.get(value)
        if found is None:
            if not add:
                return UNKNOWN
            if self._v6_free:
                found = self._v6_free.pop()
                self._v6[found] = value
            else:
                found = len(self._v6)
                self._v6.append(value)
            self._v6_ids[value] = found
            self._numbers.clear()  # it may hold the address as UNKNOWN, or a freed number's old text
        return V6 + found

    def _ip_head(self, ip: str) -> int:
        """First claim of the address's chain (END: none); the text's number is cached, lines repeat addresses."""
        key = self._numbers.get(ip)
        if key is None:
            key = self._address(ip)
            if len(self._numbers) >= OWNER_CACHE:
                self._numbers.clear()
            self._numbers[ip] = key
        return self._ip_heads.get(key) if key >= 0 else END

    def _ip_order(self, key: int) -> int:
        """What orders a pod's claims of one start: the address's value (v4 first), not its number."""
        return key if key < V6 else V6 + self._v6[key - V6]

    def pod_by_iface(self, iface: str, ts_ns: int) -> Owner | None:
        """Which pod had the interface ``iface`` at ``ts_ns`` (StatefulSet pods reuse names)."""
        cid = self._claim_at(self._iface_head(iface), self._next_iface, ts_ns)
        return None if cid == END else self._owner(cid)

    def _iface_head(self, iface: str) -> int:
        """First claim of the interface's chain (END: none, or not a name of this prefix)."""
        head = self._iface_seen.get(iface)
        if head is None:
            prefix = self.iface_prefix
            digits = iface[len(prefix):]
            if len(digits) != IFACE_DIGITS or not iface.startswith(prefix) or not _HEX.issuperset(digits):
                return END
            head = self._iface_heads.get(int(digits, 16))
            if len(self._iface_seen) >= OWNER_CACHE:
                self._iface_seen.clear()
            self._iface_seen[iface] = head
        return head

    def prune(self, now_ns: int) -> int:
        """Forget claims that ended more than ``history_ns`` before ``now_ns``; return how many."""
        cutoff = now_ns - self.history_ns
        self._horizon = max(self._horizon, cutoff)
        to, ips = self._to, self._ip
        expired = [cid for cid in range(len(ips)) if ips[cid] != FREE and to[cid] < cutoff]
        for cid in expired:
            context = self._contexts[self._context[cid]]
            iface = self._iface_key(context[1], self._heap.get(self._text[cid])[0]) if context[0] == "pod" else -1
            self._remove(cid, iface)
        if expired:
            self._compact_text()
        gone = [(key, c) for key, entry in self._by_endpoint.items() for c in _claims(entry) if c.valid_to < cutoff]
        for key, c in gone:
            _discard(self._by_endpoint, key, c)
            self._count(c.valid_to, -1)
        if gone:
            live = {id(c.owner) for entry in self._by_endpoint.values() for c in _claims(entry)}
            self._services = {k: o for k, o in self._services.items() if id(o) in live}
        if expired or gone:
            self.generation += 1
        return len(expired) + len(gone)

    def stats(self) -> dict[str, int]:
        return {"ips": len(self._ip_heads), "claims": self._claims, "open_claims": self._open}

    def _count(self, valid_to: int, sign: int) -> None:
        self._claims += sign
        self._open += sign * (valid_to == OPEN)

    def _iface_key(self, namespace: str, name: str) -> int:
        """The pod's interface name as a number: its hex digits (the prefix is the registry's own)."""
        return int(cali_iface_name(namespace, name, self.iface_prefix)[len(self.iface_prefix):], 16)

    def _claim_at(self, cid: int, nxt: array, ts: int) -> int:
        """The claim that answers at ``ts`` on the chain starting at ``cid`` (rules: the module's docstring)."""
        starts, ends = self._from, self._to
        ended, ended_to = END, 0
        while cid != END:
            if starts[cid] <= ts:
                to = ends[cid]
                if ts < to:
                    return cid
                if ended == END or to > ended_to:
                    ended, ended_to = cid, to
            cid = nxt[cid]
        return ended if ended != END and ts < ended_to + self.grace_ns else END

    def _owner(self, cid: int) -> Owner:
        """The claim's Owner: one object per content while cached.

        A text entry is shared only by claims of the same content (a pod's identity and IP
        claims, a claim and its replacement), so it names the Owner.
        """
        key = self._text[cid]
        owner = self._owners.get(key)
        if owner is None:
            owner = self._owners_old.get(key)
            if owner is None:
                kind, namespace, workload_kind, workload, node = self._context_of(cid)
                name, uid = self._heap.get(self._text[cid])
                iface = cali_iface_name(namespace, name, self.iface_prefix) if kind == "pod" else ""
                owner = Owner(kind, namespace, name, uid, workload_kind, workload, node, iface)
            if len(self._owners) >= OWNER_CACHE:
                self._owners_old, self._owners = self._owners, {}
            self._owners[key] = owner
        return owner

    def _context_of(self, cid: int) -> tuple[str, str, str, str, str]:
        """(kind, namespace, workload_kind, workload, node) of a claim."""
        return *self._contexts[self._context[cid]], self._nodes[self._node[cid]]

    def _context_ids_of(self, ev: OwnerEvent) -> tuple[int, int]:
        context = (ev.kind, ev.namespace, ev.workload_kind, ev.workload)
        found = self._context_ids.get(context)
        if found is None:
            context = tuple(map(sys.intern, context))  # type: ignore[assignment]
            found = self._context_ids[context] = len(self._contexts)
            self._contexts.append(context)
        node = self._node_ids.get(ev.node)
        if node is None:
            name = sys.intern(ev.node)
            node = self._node_ids[name] = len(self._nodes)
            self._nodes.append(name)
        return found, node

    def _precedes(self, cid: int, start: int, kind: str, uid: str, ip: int) -> bool:
        """Whether claim ``cid`` stays ahead of a new claim with this order key in a chain."""
        if self._from[cid] != start:
            return self._from[cid] > start
        return (self._contexts[self._context[cid]][0], self._heap.get(self._text[cid])[1],
                self._ip_order(self._ip[cid])) > (kind, uid, self._ip_order(ip))

    def _link(self, head: int, nxt: array, cid: int, ip: int, kind: str, uid: str) -> int:
        """Insert ``cid`` into the chain at ``head`` keeping its order; return the chain's new head."""
        start = self._from[cid]
        if head == END or not self._precedes(head, start, kind, uid, ip):
            nxt[cid] = head
            return cid
        prev = head
        while nxt[prev] != END and self._precedes(nxt[prev], start, kind, uid, ip):
            prev = nxt[prev]
        nxt[cid], nxt[prev] = nxt[prev], cid
        return head

    @staticmethod
    def _unlink(head: int, nxt: array, cid: int) -> int:
        """Remove ``cid`` from the chain at ``head``; return the chain's new head (END if empty)."""
        if head == cid:
            return nxt[cid]
        prev = head
        while nxt[prev] != cid:
            prev = nxt[prev]
        nxt[prev] = nxt[cid]
        return head

    def _insert(self, ev: OwnerEvent, ip: int, iface: int, valid_to: int, text: int) -> None:
        if ip == UNKNOWN or ip >= V6:  # an IPv6 number is taken here: removing the replaced claim may free it
            ip = self._address(ev.ip, add=True)
        if ip == UNKNOWN:
            raise ValueError(f"not an IP address: {ev.ip!r}")
        context, node = self._context_ids_of(ev)
        if iface >= 0:
            sibling = self._iface_heads.get(iface)
            while text < 0 and sibling != END:  # a pod's identity and IP claims (one per family) share their text
                if (self._context[sibling], self._node[sibling]) == (context, node) and \
                        self._heap.get(self._text[sibling]) == (ev.name, ev.uid):
                    text = self._text[sibling]
                sibling = self._next_iface[sibling]
        if text < 0:
            text = self._heap.add(ev.name, ev.uid)
        values = (ev.valid_from_ns, valid_to, ev.observed_ns, text, context, node, END, END)
        columns = (self._from, self._to, self._observed, self._text, self._context, self._node, self._next_ip,
                   self._next_iface)
        if self._free:
            cid = self._free.pop()
            for column, value in zip(columns, values, strict=True):
                column[cid] = value
            self._ip[cid] = ip
        else:
            cid = len(self._ip)
            for column, value in zip(columns, values, strict=True):
                column.append(value)
            self._ip.append(ip)
        if iface >= 0:
            self._set_iface_head(iface, self._link(self._iface_heads.get(iface), self._next_iface, cid, ip, ev.kind,
                                                   ev.uid))
        if ip != NO_IP:
            self._ip_heads.put(ip, self._link(self._ip_heads.get(ip), self._next_ip, cid, ip, ev.kind, ev.uid))
        self._count(valid_to, 1)

    def _set_iface_head(self, iface: int, head: int) -> None:
        if head == END:
            self._iface_heads.delete(iface)
        else:
            self._iface_heads.put(iface, head)
        self._iface_seen.pop(f"{self.iface_prefix}{iface:0{IFACE_DIGITS}x}", None)

    def _remove(self, cid: int, iface: int) -> None:
        if iface >= 0:
            self._set_iface_head(iface, self._unlink(self._iface_heads.get(iface), self._next_iface, cid))
        ip = self._ip[cid]
        if ip != NO_IP:
            head = self._unlink(self._ip_heads.get(ip), self._next_ip, cid)
            if head != END:
                self._ip_heads.put(ip, head)
            else:
                self._ip_heads.delete(ip)
                if ip >= V6:  # no claim names the address any more: its number is free
                    self._v6_free.append(ip - V6)
                    del self._v6_ids[self._v6[ip - V6]]  # (a cached text still naming it finds no chain)
        self._ip[cid] = FREE
        self._free.append(cid)
        self._count(self._to[cid], -1)

    def _compact_text(self) -> None:
        """Copy the live names and uids into a new heap once freed ones take more room than they do."""
        live = [cid for cid, ip in enumerate(self._ip) if ip != FREE]
        texts = self._text
        if 2 * sum(self._heap.size(texts[cid]) for cid in live) >= len(self._heap):
            return
        moved = self._heap.compact(texts[cid] for cid in live)
        for cid in live:
            texts[cid] = moved[texts[cid]]
        self._owners, self._owners_old = {}, {}  # their keys name old heap places

    def steady_span(self, ts_ns: int, ips: Sequence[str] = (), ifaces: Sequence[str] = (),
                    endpoints: Sequence[_EndpointKey] = ()) -> tuple[int, int]:
        """[lo, hi) around ``ts_ns`` over which ``owner_of`` of ``ips``, ``pod_by_iface`` of ``ifaces`` and
        ``service_behind`` on ``endpoints`` answer as they do at ``ts_ns`` (the registry unchanged).

        Every answer depends on ``ts`` only through tests ``ts >= edge`` against each claim's start, end and
        end plus grace, so it holds between the nearest edges: a batch asks once per key, not per record.
        """
        lo, hi = -OPEN, OPEN + self.grace_ns + 1
        edges: list[int] = []
        starts, ends, grace = self._from, self._to, self.grace_ns
        for heads, nxt in (([self._ip_head(ip) for ip in ips], self._next_ip),
                           ([self._iface_head(iface) for iface in ifaces], self._next_iface)):
            for cid in heads:
                while cid != END:
                    edges += (starts[cid], ends[cid], ends[cid] + grace)
                    cid = nxt[cid]
        for key in endpoints:
            entry = self._by_endpoint.get(key)
            for c in _claims(entry) if entry is not None else ():
                edges += (c.valid_from, c.valid_to, c.valid_to + grace)
        for edge in edges:
            if edge <= ts_ns:
                lo = max(lo, edge)
            else:
                hi = min(hi, edge)
        return lo, hi
