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

Modules: ``apiserver`` (requests and streams), ``resource_watch`` (the list/watch loop),
``lease`` (leader election), ``publisher`` (owners topic out and back in), ``session`` (one
leadership term); this module runs sessions under the Lease, with the metrics endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from prometheus_client import Gauge

from pipeline.basics.backoff import Backoff
from pipeline.basics.config import Settings
from pipeline.basics.metrics import REGISTRY
from pipeline.k8s.apiserver import KubeClient
from pipeline.k8s.lease import LeaseElector, default_lease_namespace
from pipeline.k8s.session import WatchOptions, WatchSession
from pipeline.transport.control import ControlServer

log = logging.getLogger("flows.watch")

LEADER = Gauge("flows_watch_leader", "1 while this watcher holds the Lease and publishes", registry=REGISTRY)


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
