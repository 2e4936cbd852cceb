"""Kubernetes object snapshots -> changes of ownership claims (pure state machine, no I/O).

The k8s watcher hands every watch event and every full list to an ``OwnershipTracker``;
what comes back is exactly what must be published on the owners topic for it to describe
the cluster: new or changed claims, and claims closed because their pod finished, lost
the IP, was deleted, or vanished between two lists. The per-object rules (hostNetwork,
finished pods, dual-stack, workload from ownerReferences) are ``owners.events_from_object``'s;
this module only remembers what it published per object and diffs.

Closing times:

- a finished pod's claim ends at its finish time (``events_from_object`` knows it);
- a DELETED object's open claims end when the deletion was observed;
- an IP an object no longer lists ends when that was observed (an EndpointSlice's endpoint that
  turned not-ready, or left the slice, alike);
- an endpoint that joins a slice already known (or one seen in a MODIFIED event) starts when
  that was observed, not at the slice's creation (endpoints carry no time of their own); the
  endpoints of a slice first seen in a list or an ADDED event start at its creation;
- an object that vanished between two lists (missed DELETED after ``410 Gone``, or deleted
  while no watcher ran) ends at the later list: an upper bound, since the real deletion is
  unobservable. Overlaps this creates are harmless: the registry prefers the claim that
  started last, so an IP already reused resolves to its new owner.

A new watcher process starts from the claims the previous one published (``restore``, read
back from the compacted owners topic), so its first list publishes only what changed while
no watcher ran, and never a window where known IPs resolve to nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from pipeline.core.claims import CLAIM_KIND, events_from_object
from pipeline.core.models import OwnerEvent

# (claim kind, uid): the object a claim belongs to.
Ident = tuple[str, str]


def _content(ev: OwnerEvent) -> OwnerEvent:
    """The part of a claim that matters to readers: who, which IP, when, labels."""
    return replace(ev, observed_ns=0, source="")


def _owns_ips(obj: object) -> bool:
    return isinstance(obj, dict) and obj.get("kind") in CLAIM_KIND


def _ident(obj: dict) -> Ident | None:
    """(claim kind, uid) of a pod, service, node or EndpointSlice; None without a uid (the API always sets one)."""
    meta = obj.get("metadata")
    uid = meta.get("uid") if isinstance(meta, dict) else None
    return (CLAIM_KIND[obj["kind"]], uid) if isinstance(uid, str) and uid else None


def _close(ev: OwnerEvent, at_ns: int, source: str) -> OwnerEvent:
    return replace(ev, valid_to_ns=max(at_ns, ev.valid_from_ns), observed_ns=at_ns, source=source)


def _newer(ev: OwnerEvent, old: OwnerEvent | None) -> OwnerEvent:
    """``ev``, observed after ``old``: readers keep the newest observation per key, and the one
    read back from the topic may come from a previous watcher whose clock ran ahead of ours."""
    if old is None or ev.observed_ns > old.observed_ns:
        return ev
    return replace(ev, observed_ns=old.observed_ns + 1000)  # a microsecond: what the ownership table keeps


def _endpoint_start(ev: OwnerEvent, old: OwnerEvent | None, now_ns: int) -> OwnerEvent:
    """An endpoint claim of a slice seen before: one still open keeps its start; one that is new,
    or back after a not-ready spell, starts now."""
    start = old.valid_from_ns if old is not None and old.valid_to_ns is None else max(ev.valid_from_ns, now_ns)
    if ev.valid_to_ns is not None and ev.valid_to_ns < start:
        return replace(ev, valid_from_ns=start, valid_to_ns=start)
    return replace(ev, valid_from_ns=start)


class OwnershipTracker:
    """What the owners topic says about each live object, and what to publish when it changes."""

    def __init__(self, source: str = "watch") -> None:
        self.source = source
        self.malformed = 0
        self._warnings: list[str] = []
        self._objects: dict[Ident, dict[str, OwnerEvent]] = {}  # live object -> claim key -> claim
        self._ended: dict[str, int] = {}  # claim key of a gone object -> valid_to_ns, until it expires

    # -- state read back from the owners topic -------------------------------------------------

    def restore(self, ev: OwnerEvent) -> None:
        """Take one claim read back from the owners topic (the newest observation of a key wins)."""
        claims = self._objects.setdefault((ev.kind, ev.uid), {})
        old = claims.get(ev.key)
        if old is None or old.observed_ns <= ev.observed_ns:
            claims[ev.key] = ev

    def forget(self, key: str) -> None:
        """A tombstone on the owners topic: the claim was expired and must not be republished."""
        self._ended.pop(key, None)
        kind, rest = key.split("/", 1)
        uid = rest.rsplit("/", 3 if kind == "endpoint" else 1)[0]  # endpoint keys end in ip/port/protocol
        claims = self._objects.get((kind, uid))
        if claims is not None:
            claims.pop(key, None)
            if not claims:
                del self._objects[(kind, uid)]

    # -- the cluster's changes -----------------------------------------------------------------

    def observe(self, event_type: str, obj: dict, now_ns: int) -> list[OwnerEvent]:
        """Claims to publish for one watch event (ADDED, MODIFIED or DELETED) seen at ``now_ns``."""
        if not _owns_ips(obj):
            return []
        ident = _ident(obj)
        if ident is None:
            return self._malformed(obj, "no metadata.uid")
        return self._update(ident, obj, now_ns, deleted=event_type == "DELETED", seen=event_type != "ADDED")

    def relist(self, kind: str, objects: Iterable[dict], now_ns: int, namespace: str | None = None) -> list[OwnerEvent]:
        """Claims to publish after a full list of ``kind`` (``namespace``: a namespaced list).

        Every listed object (items without a kind are ``kind``) is diffed as if MODIFIED; every
        known object of that kind (in that namespace) that the list lacks was deleted unseen,
        and its open claims end at ``now_ns``.
        """
        out: list[OwnerEvent] = []
        listed: set[Ident] = set()
        for obj in objects:
            if isinstance(obj, dict) and "kind" not in obj:
                obj = {**obj, "kind": kind}  # items of a list omit their kind
            if not _owns_ips(obj) or obj["kind"] != kind:
                continue
            ident = _ident(obj)
            if ident is None:
                out += self._malformed(obj, "no metadata.uid")
                continue
            listed.add(ident)
            out += self._update(ident, obj, now_ns, deleted=False, seen=False)
        claim_kind = CLAIM_KIND.get(kind, "")
        vanished = [
            ident for ident, claims in self._objects.items()
            if ident[0] == claim_kind and ident not in listed
            and (namespace is None or any(c.namespace == namespace for c in claims.values()))
        ]
        for ident in vanished:
            out += self._settle(ident, [], now_ns, gone=True)
        return out

    def expire(self, before_ns: int) -> list[str]:
        """Keys of claims of gone objects that ended before ``before_ns``: tombstone them."""
        keys = [key for key, valid_to in self._ended.items() if valid_to < before_ns]
        for key in keys:
            del self._ended[key]
        return keys

    def take_warnings(self) -> list[str]:
        """Why objects or IPs were skipped since the last call (the adapter logs them)."""
        warnings, self._warnings = self._warnings, []
        return warnings

    def stats(self) -> dict[str, int]:
        return {
            "objects": len(self._objects),
            "open_claims": sum(c.valid_to_ns is None for cs in self._objects.values() for c in cs.values()),
            "ended_claims": len(self._ended),
            "malformed": self.malformed,
        }

    # -- internals -----------------------------------------------------------------------------

    def _update(self, ident: Ident, obj: dict, now_ns: int, deleted: bool, seen: bool) -> list[OwnerEvent]:
        """``seen``: the object existed before this observation (a MODIFIED or DELETED event)."""
        warnings: list[str] = []
        try:
            claims = events_from_object(obj, now_ns, self.source, warnings=warnings)
        except ValueError as exc:
            # Keep what we knew: a garbled update is no evidence that the object let go of its IPs.
            out = self._malformed(obj, str(exc))
            return out + (self._settle(ident, [], now_ns, gone=True) if deleted else [])
        self._warn([f"{obj['kind']} {ident[1]}: {w}" for w in warnings])
        if deleted:
            claims = [c if c.valid_to_ns is not None else _close(c, now_ns, self.source) for c in claims]
        if seen or ident in self._objects:  # endpoints new to a slice seen before start now
            claims = [_endpoint_start(c, self._objects.get(ident, {}).get(c.key), now_ns) if c.kind == "endpoint"
                      else c for c in claims]
        return self._settle(ident, claims, now_ns, gone=deleted)

    def _settle(self, ident: Ident, claims: list[OwnerEvent], now_ns: int, gone: bool) -> list[OwnerEvent]:
        """Make ``claims`` the object's state; return what changed (new, changed and closed claims)."""
        known = self._objects.pop(ident, {})
        state: dict[str, OwnerEvent] = {}
        out: list[OwnerEvent] = []
        for c in claims:
            old = known.get(c.key)
            if old is not None and _content(old) == _content(c):
                state[c.key] = old
            else:
                state[c.key] = c = _newer(c, old)
                out.append(c)
        for key, old in known.items():
            if key in state:
                continue
            if old.valid_to_ns is None:
                old = _newer(_close(old, now_ns, self.source), old)
                out.append(old)
            state[key] = old
        if gone:
            for key, c in state.items():
                self._ended[key] = c.valid_to_ns if c.valid_to_ns is not None else now_ns
        elif state:
            self._objects[ident] = state
        return out

    def _malformed(self, obj: dict, reason: str) -> list[OwnerEvent]:
        self.malformed += 1
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        self._warn([f"{obj.get('kind', '?')} {meta.get('namespace', '')}/{meta.get('name', '?')} skipped: {reason}"])
        return []

    def _warn(self, warnings: list[str]) -> None:
        self._warnings = (self._warnings + warnings)[-100:]  # bounded when nobody drains them
