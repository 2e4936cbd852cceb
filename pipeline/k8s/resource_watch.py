"""List-then-watch of one resource: paged lists diffed against the tracker, bookmarked watches, 410 re-lists.

The Python clients neither re-list on ``410 Gone`` nor emit deletions for what vanished
meanwhile, so the loop is ours. It also tracks how far the resource is known (``seen_to_ns``),
which the session turns into the completeness watermark.
"""

from __future__ import annotations

import logging
import time

import aiohttp
from prometheus_client import Counter, Gauge

from pipeline.basics.backoff import Backoff
from pipeline.basics.metrics import REGISTRY
from pipeline.core.claims import slim_object
from pipeline.k8s.apiserver import ApiError, KubeClient, Resource, StreamBroken, json_or_none
from pipeline.k8s.publisher import Emit
from pipeline.k8s.tracker import OwnershipTracker

log = logging.getLogger("flows.watch")

WATCH_EVENTS = Counter(
    "flows_watch_events_total", "Watch events received, by resource and type (ADDED, MODIFIED, DELETED, "
    "BOOKMARK, ERROR)", ["resource", "type"], registry=REGISTRY)
RELISTS = Counter(
    "flows_watch_relists_total", "Full lists, by resource and reason (initial, expired: after 410 Gone, resync)",
    ["resource", "reason"], registry=REGISTRY)
RESTARTS = Counter(
    "flows_watch_restarts_total", "Lists or watches that failed (connection dropped, HTTP error) and were retried",
    ["resource"], registry=REGISTRY)
NEWEST_EVENT = Gauge(
    "flows_watch_newest_event_timestamp_seconds", "When the newest watch event or list of a resource arrived "
    "(bookmarks count: they prove the stream is alive)", ["resource"], registry=REGISTRY)


class ResourceWatcher:
    """List-then-watch of one resource, feeding the tracker and handing its changes to ``emit``."""

    def __init__(self, kube: KubeClient, resource: Resource, tracker: OwnershipTracker, emit: Emit, *,
                 namespace: str | None = None, page_size: int = 500, watch_timeout_s: int = 300,
                 resync_s: float = 1800) -> None:
        self.kube, self.resource, self.tracker, self.emit = kube, resource, tracker, emit
        self.namespace = namespace if resource.namespaced else None
        self.page_size, self.watch_timeout_s, self.resync_s = page_size, watch_timeout_s, resync_s
        self.rv = ""
        self.synced = False
        # Every change of this resource before this time was handed to emit: a list's start, or
        # the arrival of a watch event or bookmark (the stream is in resourceVersion order).
        self.seen_to_ns = 0
        self._next_resync = 0.0
        self.path = resource.path(self.namespace)

    async def run(self) -> None:
        """Forever: list, then watch; re-list on 410 Gone or when a resync is due; back off on errors."""
        backoff = Backoff(first=0.2, cap=30.0)
        reason = "initial"
        while True:
            try:
                if reason:
                    await self.relist(reason)
                    reason = ""
                if self.resync_s and time.monotonic() >= self._next_resync:
                    reason = "resync"
                    continue
                started = time.monotonic()
                await self.watch_once()
                if time.monotonic() - started < 1:  # a server that ends watches at once must not make us spin
                    await backoff.wait()
                else:
                    backoff.reset()
            except ApiError as exc:
                if exc.code == 410 and not reason:  # the watch's resourceVersion is gone: list again
                    log.info("%s: %s; re-listing", self.resource.plural, exc)
                    reason = "expired"
                    continue
                await self._failed(exc, backoff)
            except (StreamBroken, aiohttp.ClientError, TimeoutError, OSError) as exc:
                await self._failed(exc, backoff)

    async def _failed(self, exc: Exception, backoff: Backoff) -> None:
        RESTARTS.labels(self.resource.plural).inc()
        log.warning("%s: %s: %s; retrying from resourceVersion %s", self.resource.plural, type(exc).__name__,
                    exc, self.rv or "(list)")
        await backoff.wait()

    async def relist(self, reason: str) -> None:
        """A full, consistent list; whatever the tracker knew and the list lacks was deleted meanwhile."""
        started = time.time_ns()
        items, rv = await self._list_pages()
        changes = self.tracker.relist(self.resource.kind, items, started, self.namespace)
        self._log_warnings()
        await self.emit(changes)
        self.rv, self.synced = rv, True
        self.seen_to_ns = max(self.seen_to_ns, started)
        self._next_resync = time.monotonic() + self.resync_s
        RELISTS.labels(self.resource.plural, reason).inc()
        NEWEST_EVENT.labels(self.resource.plural).set(time.time())
        log.info("%s: listed %d objects at resourceVersion %s (%s), %d changes", self.resource.plural, len(items),
                 rv, reason, len(changes))

    async def _list_pages(self) -> tuple[list[dict], str]:
        while True:
            items: list[dict] = []
            token = ""
            try:
                while True:
                    params = {"limit": str(self.page_size)}
                    if token:
                        params["continue"] = token
                    doc = await self.kube.request("GET", self.path, params, timeout=120)
                    meta = doc.get("metadata") or {}
                    items.extend(slim_object(i) for i in doc.get("items") or [] if isinstance(i, dict))
                    del doc  # the page's full objects go now: a re-list holds only what the claims read
                    token = meta.get("continue") or ""
                    if not token:
                        return items, str(meta.get("resourceVersion", ""))
            except ApiError as exc:
                if exc.code != 410 or not token:
                    raise
                log.info("%s: continue token expired mid-list; listing again", self.resource.plural)

    async def watch_once(self) -> None:
        """One watch request, until the server ends it; raises on 410, errors and broken streams."""
        timeout = self.watch_timeout_s
        if self.resync_s:
            timeout = max(1, min(timeout, int(self._next_resync - time.monotonic()) + 1))
        params = {"watch": "1", "allowWatchBookmarks": "true", "resourceVersion": self.rv,
                  "timeoutSeconds": str(timeout)}
        async with self.kube.stream(self.path, params, read_timeout=timeout + 30) as body:
            buf = bytearray()
            async for chunk in body.iter_any():
                buf += chunk
                while (end := buf.find(b"\n")) >= 0:
                    line = bytes(buf[:end])
                    del buf[: end + 1]
                    if line.strip():
                        await self._handle(line)
            if buf.strip():
                raise StreamBroken(f"connection closed mid-event ({len(buf)} bytes of a partial line dropped)")

    async def _handle(self, line: bytes) -> None:
        event = json_or_none(line)
        obj = event.get("object") if isinstance(event, dict) else None
        typ = event.get("type") if isinstance(event, dict) else None
        if not isinstance(obj, dict) or typ not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"):
            raise StreamBroken(f"not a watch event: {line[:200]!r}")
        plural = self.resource.plural
        WATCH_EVENTS.labels(plural, typ).inc()
        if typ == "ERROR":
            raise ApiError.from_status(500, obj)
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        now = time.time_ns()
        if typ != "BOOKMARK":
            await self.emit(self.tracker.observe(typ, obj, now))
            self._log_warnings()
        if rv:
            self.rv = str(rv)
        self.seen_to_ns = max(self.seen_to_ns, now)
        NEWEST_EVENT.labels(plural).set(time.time())

    def _log_warnings(self) -> None:
        for warning in self.tracker.take_warnings():
            log.warning("%s: %s", self.resource.plural, warning)
