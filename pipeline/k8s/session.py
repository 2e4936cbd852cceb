"""One leadership term: rebuild the tracker from the topic, run a watcher per resource, publish.

Also the term's periodic duties: the completeness watermark and tombstones for expired claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from pipeline.basics.config import Settings
from pipeline.core.models import Progress
from pipeline.k8s.apiserver import RESOURCES, KubeClient, Resource
from pipeline.k8s.publisher import OwnerPublisher, restore_from_topic
from pipeline.k8s.resource_watch import ResourceWatcher
from pipeline.k8s.tracker import OwnershipTracker

log = logging.getLogger("flows.watch")

EXPIRE_EVERY_S = 600.0
PROGRESS_EVERY_S = 1.0  # how often the completeness watermark may advance on the owners topic


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
