"""Leader election on a coordination.k8s.io/v1 Lease, so that one watcher publishes at a time."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp

from pipeline.basics.backoff import sleep_or_stop
from pipeline.basics.timespec import format_rfc3339_ns
from pipeline.k8s.apiserver import ApiError, KubeClient

log = logging.getLogger("flows.watch")

SA_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _microtime(ns: int | None = None) -> str:
    """metav1.MicroTime text, as Leases carry it."""
    return format_rfc3339_ns(ns or time.time_ns(), digits=6)


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


def default_lease_namespace() -> str:
    """The pod's own namespace in a cluster, else ``default``."""
    try:
        return SA_NAMESPACE_FILE.read_text().strip() or "default"
    except OSError:
        return "default"
