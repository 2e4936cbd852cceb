"""The k8s watcher: list+watch of Pods, Services, Nodes and EndpointSlices -> claims on the owners topic.

A thin adapter around ``OwnershipTracker`` (the pure diffing core). kubernetes_asyncio is
used only for configuration (in-cluster service account or kubeconfig: credentials, CA,
client certificates) and its aiohttp session; the list/watch loop is ours, because the
Python clients neither re-list on ``410 Gone`` nor emit deletions for what vanished
meanwhile. Per resource:

- list in pages (``limit``/``continue``; an expired continue token restarts the list), diff
  the snapshot against the tracker (objects missing from it are closed), then
- watch from the list's resourceVersion with bookmarks, reading newline-delimited JSON from a
  chunked stream (an event may span chunks; a connection dropped mid-event loses only the
  partial line, and the watch resumes from the last event fully applied);
- ``410 Gone`` (an ERROR event or an HTTP 410): re-list; other failures: back off, re-watch.

Sessions. Only the Lease holder publishes (leader election, coordination.k8s.io/v1, as
client-go does it: expiry judged on the local clock from when the record last changed). Each
leadership term starts by reading the compacted owners topic back into a fresh tracker, so the
first list publishes only what changed while no watcher ran (deletions included) and a restart
never leaves known IPs unresolved. All claims leave through one producer (acks=all) keyed by
claim; a publish failure ends the term and the next one rebuilds from the topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge

from pipeline.basics.backoff import Backoff, sleep_or_stop
from pipeline.basics.config import Settings
from pipeline.basics.metrics import REGISTRY
from pipeline.basics.timespec import format_rfc3339_ns
from pipeline.core.claims import event_to_json, progress_to_json, slim_object
from pipeline.core.models import OwnerEvent, Progress
from pipeline.k8s.tracker import OwnershipTracker
from pipeline.transport import owners_topic
from pipeline.transport.control import ControlServer
from pipeline.transport.kafka import make_consumer, make_producer

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
PUBLISHED = Counter(
    "flows_owner_events_published_total", "Ownership events acknowledged by Kafka, by claim kind (tombstone: "
    "an expired claim removed from the compacted topic)", ["kind"], registry=REGISTRY)
LEADER = Gauge("flows_watch_leader", "1 while this watcher holds the Lease and publishes", registry=REGISTRY)

EXPIRE_EVERY_S = 600.0
PROGRESS_EVERY_S = 1.0  # how often the completeness watermark may advance on the owners topic
SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# An OwnerEvent to publish, or the key (str) of an expired claim to tombstone.
Publishable = OwnerEvent | Progress | str  # a claim, a watermark, or a key to tombstone
Emit = Callable[[list[Publishable]], Awaitable[None]]


class ApiError(Exception):
    """An HTTP error or ERROR event from the apiserver, with its Status code and reason."""

    def __init__(self, code: int, reason: str = "", message: str = "") -> None:
        super().__init__(f"HTTP {code} {reason}: {message}".strip())
        self.code, self.reason = code, reason

    @classmethod
    def from_status(cls, code: int, body: object) -> ApiError:
        doc = body if isinstance(body, dict) else {}
        return cls(doc.get("code") or code, str(doc.get("reason", "")), str(doc.get("message", ""))[:500])


class StreamBroken(Exception):
    """The watch stream ended mid-event or carried something that is not a watch event."""


@dataclass(frozen=True)
class Resource:
    kind: str
    plural: str
    namespaced: bool
    group: str = ""  # API group/version; "" for the core group (/api/v1)

    def path(self, namespace: str | None) -> str:
        root = f"/apis/{self.group}" if self.group else "/api/v1"
        return f"{root}/namespaces/{namespace}/{self.plural}" if namespace else f"{root}/{self.plural}"


RESOURCES = (Resource("Pod", "pods", True), Resource("Service", "services", True), Resource("Node", "nodes", False),
             Resource("EndpointSlice", "endpointslices", True, "discovery.k8s.io/v1"))


def _microtime(ns: int | None = None) -> str:
    """metav1.MicroTime text, as Leases carry it."""
    return format_rfc3339_ns(ns or time.time_ns(), digits=6)


class KubeClient:
    """Raw HTTP to the apiserver through the session and credentials kubernetes_asyncio set up."""

    def __init__(self, api_client: Any) -> None:
        self._api = api_client
        self._cfg = api_client.configuration
        self._session: aiohttp.ClientSession = api_client.rest_client.pool_manager
        self.base = self._cfg.host.rstrip("/")
        self._extra: dict[str, Any] = {}
        if self._cfg.tls_server_name:
            self._extra["server_hostname"] = self._cfg.tls_server_name
        if self._cfg.proxy:
            self._extra.update(proxy=self._cfg.proxy, proxy_headers=self._cfg.proxy_headers)

    @classmethod
    async def connect(cls, kubeconfig: str | None = None, context: str | None = None) -> KubeClient:
        """In-cluster service account when running in a pod with neither option, else the kubeconfig."""
        from kubernetes_asyncio import client, config

        cfg = client.Configuration()
        try:
            if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
                config.load_incluster_config(client_configuration=cfg)
            else:
                paths = kubeconfig or config.KUBE_CONFIG_DEFAULT_LOCATION  # $KUBECONFIG may list several
                if not any(Path(p).expanduser().is_file() for p in paths.split(os.pathsep)):
                    raise ValueError(f"no kubeconfig at {paths}, and not running in a pod (KUBERNETES_SERVICE_HOST "
                                     "is unset): pass --kubeconfig")
                await config.load_kube_config(config_file=paths, context=context, client_configuration=cfg,
                                              persist_config=False)
        except config.ConfigException as exc:
            raise ValueError(f"Kubernetes client configuration: {exc}") from None
        return cls(client.ApiClient(cfg))

    async def _headers(self) -> dict[str, str]:
        # auth_settings() runs the refresh hook: rotated service-account tokens are re-read.
        auth = await self._cfg.auth_settings()
        headers = {"Accept": "application/json"}
        headers.update({a["key"]: a["value"] for a in auth.values() if a.get("in") == "header" and a.get("value")})
        return headers

    async def request(self, method: str, path: str, params: dict[str, str] | None = None,
                      body: dict | None = None, timeout: float = 30) -> dict:
        """One JSON request; ApiError for any non-2xx answer."""
        headers = await self._headers()
        data = None
        if body is not None:
            data, headers["Content-Type"] = orjson.dumps(body), "application/json"
        async with self._session.request(method, self.base + path, params=params, data=data, headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=timeout), **self._extra) as resp:
            raw = await resp.read()
            doc = _loads(raw)
            if resp.status >= 300:
                raise ApiError.from_status(resp.status, doc)
            if not isinstance(doc, dict):
                raise ApiError(resp.status, "BadResponse", f"{method} {path} answered with no JSON object")
            return doc

    @contextlib.asynccontextmanager
    async def stream(self, path: str, params: dict[str, str], read_timeout: float) -> AsyncIterator[Any]:
        """A watch response body (aiohttp StreamReader); ApiError unless the answer is 200."""
        timeout = aiohttp.ClientTimeout(total=None, connect=15, sock_read=read_timeout)
        async with self._session.get(self.base + path, params=params, headers=await self._headers(),
                                     timeout=timeout, **self._extra) as resp:
            if resp.status != 200:
                raise ApiError.from_status(resp.status, _loads(await resp.read()))
            yield resp.content

    async def close(self) -> None:
        await self._api.close()


def _loads(raw: bytes) -> object:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


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
        event = _loads(line)
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


class LeaseElector:
    """Leader election on a coordination.k8s.io/v1 Lease, with optimistic concurrency on resourceVersion.

    A candidate takes the Lease when it is free or when its record has not changed for
    ``lease_s`` on the candidate's own clock (no comparison of clocks across machines). The
    holder renews every ``renew_s`` and steps down when it could not renew for
    ``lease_s - renew_s``, before anyone else may take over.
    """

    def __init__(self, kube: KubeClient, namespace: str, name: str, identity: str, lease_s: int = 15,
                 renew_s: float = 5) -> None:
        self.kube, self.identity = kube, identity
        self.lease_s, self.renew_s = lease_s, renew_s
        self.collection = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.path = f"{self.collection}/{name}"
        self.name, self.namespace = name, namespace
        self._observed: tuple[Any, ...] = ()
        self._observed_at = 0.0

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this process holds the Lease (True) or ``stop`` is set (False)."""
        while not stop.is_set():
            try:
                if await self.try_acquire_or_renew():
                    return True
            except (ApiError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.warning("lease %s/%s: %s", self.namespace, self.name, exc)
            if await sleep_or_stop(stop, self.renew_s):
                break
        return False

    async def hold(self) -> None:
        """Renew until leadership is lost; returns then."""
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.renew_s)
            try:
                if not await self.try_acquire_or_renew():
                    log.warning("lease %s/%s taken by another watcher", self.namespace, self.name)
                    return
                renewed = time.monotonic()
            except (ApiError, aiohttp.ClientError, TimeoutError, OSError) as exc:
                log.warning("lease %s/%s renewal failed: %s", self.namespace, self.name, exc)
                if time.monotonic() - renewed > self.lease_s - self.renew_s:
                    return

    async def try_acquire_or_renew(self) -> bool:
        now = _microtime()
        try:
            lease = await self.kube.request("GET", self.path, timeout=self.renew_s)
        except ApiError as exc:
            if exc.code != 404:
                raise
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace},
                    "spec": {"holderIdentity": self.identity, "leaseDurationSeconds": self.lease_s,
                             "acquireTime": now, "renewTime": now, "leaseTransitions": 0}}
            return await self._write("POST", self.collection, body)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        if holder and holder != self.identity:
            record = (holder, spec.get("renewTime"), spec.get("leaseDurationSeconds"))
            if record != self._observed:
                self._observed, self._observed_at = record, time.monotonic()
            if time.monotonic() < self._observed_at + (spec.get("leaseDurationSeconds") or self.lease_s):
                return False
        spec = {**spec, "holderIdentity": self.identity, "leaseDurationSeconds": self.lease_s, "renewTime": now}
        if holder != self.identity:
            spec.update(acquireTime=now, leaseTransitions=int(spec.get("leaseTransitions") or 0) + 1)
        return await self._write("PUT", self.path, {**lease, "spec": spec})

    async def release(self) -> None:
        """Hand the Lease back so that a standby takes over at once rather than after it expires."""
        try:
            lease = await self.kube.request("GET", self.path, timeout=self.renew_s)
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") == self.identity:
                spec = {**spec, "holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": _microtime()}
                await self._write("PUT", self.path, {**lease, "spec": spec})
        except (ApiError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("lease %s/%s not released: %s", self.namespace, self.name, exc)

    async def _write(self, method: str, path: str, body: dict) -> bool:
        try:
            await self.kube.request(method, path, body=body, timeout=self.renew_s)
            return True
        except ApiError as exc:
            if exc.code == 409:  # someone else wrote first: not ours this round
                return False
            raise


class OwnerPublisher:
    """The session's one producer: claims in the order the tracker made them, acks=all, keyed by claim."""

    def __init__(self, settings: Settings, max_pending: int = 10_000) -> None:
        self.settings = settings
        self.queue: asyncio.Queue[Publishable] = asyncio.Queue(max_pending)
        self.pending = 0  # emitted, not yet acknowledged by Kafka

    async def emit(self, items: list[Publishable]) -> None:
        self.pending += len(items)
        for item in items:
            await self.queue.put(item)

    async def run(self) -> None:
        producer = make_producer(self.settings, linger_ms=5)
        await producer.start()
        try:
            while True:
                # A watermark goes alone, after everything queued before it was acknowledged (claims
                # land on other partitions: a reader must never see the watermark before them).
                batch = [await self.queue.get()]
                mark = None
                if isinstance(batch[0], Progress):
                    mark, batch = batch[0], []
                while mark is None and len(batch) < 1000 and not self.queue.empty():
                    item = self.queue.get_nowait()
                    if isinstance(item, Progress):
                        mark = item
                    else:
                        batch.append(item)
                futures = []
                for item in batch:
                    if isinstance(item, str):
                        futures.append(await producer.send(self.settings.owners_topic, None, key=item.encode()))
                    else:
                        futures.append(await producer.send(self.settings.owners_topic, event_to_json(item),
                                                           key=item.key.encode()))
                await asyncio.gather(*futures)
                if mark is not None:
                    await (await producer.send(self.settings.owners_topic, progress_to_json(mark),
                                               key=mark.key.encode()))
                    PUBLISHED.labels("progress").inc()
                    self.queue.task_done()
                    self.pending -= 1
                for item in batch:
                    PUBLISHED.labels("tombstone" if isinstance(item, str) else item.kind).inc()
                    self.queue.task_done()
                self.pending -= len(batch)
        finally:
            try:
                await asyncio.wait_for(producer.stop(), 10)
            except (TimeoutError, KafkaError) as exc:
                log.warning("producer stop: %s", exc)


async def restore_from_topic(settings: Settings, tracker: OwnershipTracker) -> int:
    """Read the owners topic from the beginning to its end into ``tracker``; returns messages read.

    The topic must exist: the watcher creates none (its Kafka user may only use this one topic).
    """
    consumer = make_consumer(settings, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # loads cluster metadata so the partitions are known
        if not await owners_topic.rewind(consumer, settings.owners_topic):
            # publishing would let the broker auto-create it, without compaction
            raise RuntimeError(f"the owners topic {settings.owners_topic} does not exist: create it with "
                               "`flows topics create` (or run `flows up`)")

        def restore(msg: Any, item: OwnerEvent | Progress | None) -> None:
            if item is None:  # a tombstone: the claim under this key is gone
                if msg.key:
                    tracker.forget(msg.key.decode())
            elif isinstance(item, OwnerEvent):  # watermarks are the workers' business
                tracker.restore(item)

        return await owners_topic.read_to_end(consumer, restore)
    finally:
        await consumer.stop()


@dataclass
class WatchOptions:
    """What ``flows watch k8s`` was asked to do."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None  # pods, services and slices of one namespace; nodes then are not watched
    resync_s: float = 1800
    watch_timeout_s: int = 300
    page_size: int = 500
    leader_elect: bool = True
    lease_name: str = "flows-k8s-watcher"
    lease_namespace: str | None = None
    lease_s: int = 15
    renew_s: float = 5
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}")
    metrics_host: str = "0.0.0.0"  # noqa: S104 - runs in a pod: Prometheus scrapes the pod IP
    metrics_port: int = 9402  # 0: no endpoint

    def resources(self) -> tuple[Resource, ...]:
        return tuple(r for r in RESOURCES if r.namespaced or self.namespace is None)


class WatchSession:
    """One leadership term: rebuild the tracker from the topic, then list+watch and publish."""

    def __init__(self, kube: KubeClient, settings: Settings, opts: WatchOptions) -> None:
        self.settings, self.opts = settings, opts
        self.tracker = OwnershipTracker(source="watch")
        self.publisher = OwnerPublisher(settings)
        self.flush_on_exit = True
        self._synced = False
        self.watchers = [
            ResourceWatcher(kube, r, self.tracker, self.publisher.emit, namespace=opts.namespace,
                            page_size=opts.page_size, watch_timeout_s=opts.watch_timeout_s, resync_s=opts.resync_s)
            for r in opts.resources()
        ]

    @property
    def synced(self) -> bool:
        """Every resource listed and what the lists produced acknowledged by Kafka (then stays true)."""
        self._synced = self._synced or (all(w.synced for w in self.watchers) and self.publisher.pending == 0)
        return self._synced

    async def run(self) -> None:
        """Until cancelled or a task fails (the exception propagates); flushes what was queued on the way out."""
        read = await restore_from_topic(self.settings, self.tracker)
        log.info("owners topic read back: %d messages, %s", read, self.tracker.stats())
        publisher = asyncio.create_task(self.publisher.run(), name="publisher")
        tasks = [asyncio.create_task(w.run(), name=w.resource.plural) for w in self.watchers]
        tasks.append(asyncio.create_task(self._expire(), name="expire"))
        tasks.append(asyncio.create_task(self._progress(), name="progress"))
        try:
            done, _ = await asyncio.wait([publisher, *tasks], return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.flush_on_exit and not publisher.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self.publisher.queue.join()), 10)
            publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)

    async def _progress(self) -> None:
        """Publish how far ownership is complete: the oldest point every watched resource reached,
        once all are listed. Workers hold lines they cannot attribute until it passes them."""
        published = 0
        while True:
            await asyncio.sleep(PROGRESS_EVERY_S)
            if not all(w.synced for w in self.watchers):
                continue
            mark = min(w.seen_to_ns for w in self.watchers)
            if mark > published:
                await self.publisher.emit([Progress(self.progress_source, mark, time.time_ns())])
                published = mark

    @property
    def progress_source(self) -> str:
        """One watermark per scope: a namespaced watcher vouches for its namespace only, which workers
        cannot use (a line's namespace is what attribution finds), so they ignore it."""
        return "watch" if self.opts.namespace is None else f"watch/{self.opts.namespace}"

    async def _expire(self) -> None:
        """Tombstone claims of gone objects older than the history the registry keeps."""
        while True:
            await asyncio.sleep(EXPIRE_EVERY_S)
            keys = self.tracker.expire(time.time_ns() - self.settings.history_ns)
            if keys:
                log.info("tombstoning %d claims older than %d days", len(keys), self.settings.history_days)
                await self.publisher.emit(list(keys))

    def status(self) -> dict[str, Any]:
        return {"synced": self.synced, "tracker": self.tracker.stats(),
                "resources": {w.resource.plural: {"resource_version": w.rv, "synced": w.synced}
                              for w in self.watchers}}


def default_lease_namespace() -> str:
    """The pod's own namespace in a cluster, else ``default``."""
    try:
        return SA_NAMESPACE_FILE.read_text().strip() or "default"
    except OSError:
        return "default"


class Watcher:
    """The process: leader election around sessions, and the metrics endpoint."""

    def __init__(self, settings: Settings, opts: WatchOptions) -> None:
        self.settings, self.opts = settings, opts
        self.session: WatchSession | None = None
        self.leader = False
        self.standby = False

    def status(self) -> dict[str, Any]:
        session = self.session.status() if self.session is not None and self.leader else {}
        ready = (self.leader and session.get("synced", False)) or self.standby
        return {"ready": ready, "leader": self.leader, "identity": self.opts.identity, **session}

    async def run(self, stop: asyncio.Event) -> None:
        opts = self.opts
        kube = await KubeClient.connect(opts.kubeconfig, opts.context)
        control = None
        if opts.metrics_port:
            control = ControlServer(
                self.settings.model_copy(update={"control_host": opts.metrics_host, "control_port": opts.metrics_port}),
                self.status, _no_queries)
            log.info("metrics on %s/metrics", await control.start())
        elector = None
        if opts.leader_elect:
            elector = LeaseElector(kube, opts.lease_namespace or default_lease_namespace(), opts.lease_name,
                                   opts.identity, opts.lease_s, opts.renew_s)
        backoff = Backoff(first=1.0, cap=60.0)
        try:
            while not stop.is_set():
                if elector is not None:
                    self.standby = True
                    if not await elector.acquire(stop):
                        break
                    self.standby = False
                    log.info("leading as %s", opts.identity)
                started = time.monotonic()
                failure = await self._lead(kube, elector, stop)
                if failure is not None:
                    log.error("watch session failed: %s: %s", type(failure).__name__, failure)
                    if time.monotonic() - started > 60:
                        backoff.reset()
                    await backoff.wait()
        finally:
            if elector is not None:
                await elector.release()
            if control is not None:
                await control.stop()
            await kube.close()

    async def _lead(self, kube: KubeClient, elector: LeaseElector | None, stop: asyncio.Event) -> BaseException | None:
        """One session, until it fails (returns why), leadership is lost, or ``stop``."""
        session = self.session = WatchSession(kube, self.settings, self.opts)
        self.leader = True
        LEADER.set(1)
        run = asyncio.create_task(session.run())
        lost = asyncio.create_task(elector.hold() if elector is not None else asyncio.Event().wait())
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({run, lost, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Queued claims go out on a clean stop; after losing the Lease they are the new leader's to find.
            session.flush_on_exit = not lost.done()
            self.leader = False
            LEADER.set(0)
            for task in (run, lost, stopped):
                task.cancel()
            await asyncio.gather(run, lost, stopped, return_exceptions=True)
        return run.exception() if run.done() and not run.cancelled() else None


async def _no_queries(sql: str, params: dict[str, Any]) -> Any:
    raise RuntimeError("the k8s watcher holds no store; query the stack (`flows sql`)")
