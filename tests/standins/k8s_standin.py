"""A stand-in for the kube-apiserver's list/watch protocol (no apiserver can be installed here).

What it reproduces, after the Kubernetes API concepts documentation ("Efficient detection of
changes", "Watch bookmarks", "Retrieving large results sets in chunks"):

- one resourceVersion counter for the whole store (etcd's revision): every write bumps it and
  stamps the object; clients must treat it as opaque, we only compare for the retained window;
- list: the snapshot's ``metadata.resourceVersion``; ``limit`` + ``continue`` pages of one
  consistent snapshot, whatever is written meanwhile; items without ``kind``/``apiVersion``
  (only the list names its kind); a continue token older than the compaction point is a
  ``410 Gone`` (reason Expired);
- watch (``watch=1&resourceVersion=RV``): chunked newline-delimited JSON events strictly after
  RV; ``allowWatchBookmarks=true`` adds BOOKMARK events carrying only the current RV (also
  just before a ``timeoutSeconds`` ends the stream cleanly); an RV older than the retained
  window is ``410`` either as an ERROR Status event in a 200 stream (the watch cache) or as an
  HTTP 410 (etcd), selectable; RV "0" or none starts with synthetic ADDED events;
- bearer-token authentication; Leases (coordination.k8s.io/v1) with get/create/update and
  optimistic concurrency on ``metadata.resourceVersion`` (409 Conflict).

Faults on demand: every event split over several chunks, a connection dropped halfway through
an event, a hook between list pages (writes while a client lists), compaction, dropping every
open watch.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

KINDS = {"pods": "Pod", "services": "Service", "nodes": "Node", "endpointslices": "EndpointSlice"}
NAMESPACED = {"pods", "services", "endpointslices"}
# The API group of each resource: the core group (/api/v1) unless named here.
GROUPS = {"endpointslices": "discovery.k8s.io/v1"}
LEASES = "/apis/coordination.k8s.io/v1/namespaces/"


def rfc3339(ns: int) -> str:
    """Kubernetes' metav1.Time text (seconds) for a time in ns."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns // 10**9))


def status(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


def _abort(request: web.Request) -> None:
    """Close the connection without finishing the chunked body: the client sees a cut stream."""
    if request.transport is not None:
        request.transport.abort()


class ApiServerStandIn:
    """In-memory objects, an event log with a retained window, and the HTTP API over them.

    Mutating methods are synchronous and must run on the server's event loop (``ThreadedStandIn``
    marshals them from other threads).
    """

    def __init__(self, token: str = "standin-token", gone_as: str = "event", chunk_pieces: int = 3,  # noqa: S107
                 bookmark_interval: float = 0.5) -> None:
        self.token = token
        self.gone_as = gone_as  # "event": ERROR in a 200 stream, "http": HTTP 410
        self.chunk_pieces = chunk_pieces
        self.bookmark_interval = bookmark_interval
        self.rv = 1000
        self.oldest_rv = self.rv  # watches and continue tokens from before this are gone
        self.store: dict[str, dict[tuple[str, str], dict]] = {p: {} for p in KINDS}
        self.log: list[tuple[int, str, str, dict]] = []  # (rv, plural, type, object)
        self.leases: dict[tuple[str, str], dict] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.drop_mid_event: dict[str, int] = {}  # plural -> upcoming events to cut in half, closing the stream
        self.on_list_page: Callable[[str, int], None] | None = None  # (plural, page number) before a page leaves
        self.open_watches = 0
        self._snapshots: dict[tuple[int, str, str], list[dict]] = {}
        self._changed = asyncio.Event()
        self._generation = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- writes ------------------------------------------------------------------------------

    def apply(self, plural: str, obj: dict) -> dict:
        """Create or update an object (ADDED or MODIFIED); returns the stored copy."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        key = (meta.get("namespace", ""), meta["name"])
        existed = key in self.store[plural]
        meta.setdefault("uid", str(uuid.uuid4()))
        self.rv += 1
        meta["resourceVersion"] = str(self.rv)
        obj["kind"], obj["apiVersion"] = KINDS[plural], GROUPS.get(plural, "v1")
        self.store[plural][key] = obj
        self._record(plural, "MODIFIED" if existed else "ADDED", obj)
        return obj

    def delete(self, plural: str, namespace: str, name: str) -> None:
        obj = self.store[plural].pop((namespace, name))
        self.rv += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self._record(plural, "DELETED", obj)

    def compact(self) -> None:
        """Forget history up to now, as etcd compaction does: older RVs and continue tokens are gone."""
        self.oldest_rv = self.rv
        self.log = [e for e in self.log if e[0] > self.rv]
        self._snapshots = {k: v for k, v in self._snapshots.items() if k[0] >= self.oldest_rv}
        self._notify()

    def disconnect_watches(self) -> None:
        """Drop every open watch connection (an apiserver restart or a load balancer reset)."""
        self._generation += 1
        self._notify()

    def _record(self, plural: str, typ: str, obj: dict) -> None:
        self.log.append((self.rv, plural, typ, copy.deepcopy(obj)))
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- HTTP ----------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        sock_host, sock_port = site._server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
        self.url = f"http://{sock_host}:{sock_port}"
        return self.url

    async def stop(self) -> None:
        self.disconnect_watches()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        params = dict(request.query)
        self.requests.append((request.method, request.path, params))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response(status(401, "Unauthorized", "Unauthorized"), status=401)
        path = request.path
        if path.startswith(LEASES):
            return await self._lease(request, path[len(LEASES):].split("/"))
        parts = path.strip("/").split("/")
        namespace = ""
        group = "v1"
        if parts[:1] == ["apis"] and len(parts) >= 4:
            group, parts = f"{parts[1]}/{parts[2]}", ["api", "v1", *parts[3:]]
        if parts[:3] == ["api", "v1", "namespaces"] and len(parts) == 5:
            namespace, plural = parts[3], parts[4]
        elif parts[:2] == ["api", "v1"] and len(parts) == 3:
            plural = parts[2]
        else:
            return web.json_response(status(404, "NotFound", f"no route {path}"), status=404)
        if plural not in KINDS or GROUPS.get(plural, "v1") != group or (namespace and plural not in NAMESPACED) \
                or request.method != "GET":
            return web.json_response(status(404, "NotFound", f"no route {request.method} {path}"), status=404)
        if params.get("watch") in ("1", "true"):
            return await self._watch(request, plural, namespace, params)
        return self._list(plural, namespace, params)

    def _visible(self, plural: str, namespace: str) -> list[dict]:
        objs = [o for (ns, _), o in sorted(self.store[plural].items()) if not namespace or ns == namespace]
        return copy.deepcopy(objs)

    def _list(self, plural: str, namespace: str, params: dict[str, str]) -> web.Response:
        limit = int(params.get("limit") or 0)
        token = params.get("continue")
        if token:
            state = orjson.loads(base64.urlsafe_b64decode(token))
            snap_rv, start = state["rv"], state["start"]
            items = self._snapshots.get((snap_rv, plural, namespace))
            if items is None or snap_rv < self.oldest_rv:
                return web.json_response(status(
                    410, "Expired", "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter."), status=410)
        else:
            snap_rv, start = self.rv, 0
            items = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")}
                     for o in self._visible(plural, namespace)]
            self._snapshots[(snap_rv, plural, namespace)] = items
        end = start + limit if limit else len(items)
        meta: dict[str, Any] = {"resourceVersion": str(snap_rv)}
        if end < len(items):
            meta["continue"] = base64.urlsafe_b64encode(orjson.dumps({"rv": snap_rv, "start": end})).decode()
            meta["remainingItemCount"] = len(items) - end
        body = {"kind": KINDS[plural] + "List", "apiVersion": GROUPS.get(plural, "v1"), "metadata": meta,
                "items": items[start:end]}
        if self.on_list_page is not None:
            self.on_list_page(plural, start // limit if limit else 0)
        return web.json_response(body)

    async def _watch(self, request: web.Request, plural: str, namespace: str,
                     params: dict[str, str]) -> web.StreamResponse:
        since = params.get("resourceVersion", "")
        gone = since not in ("", "0") and int(since) < self.oldest_rv
        if gone and self.gone_as == "http":
            return web.json_response(status(410, "Expired", f"too old resource version: {since} ({self.oldest_rv})"),
                                     status=410)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        self.open_watches += 1
        try:
            if gone:
                await self._send(resp, "ERROR", status(410, "Expired",
                                                       f"too old resource version: {since} ({self.oldest_rv})"))
                await resp.write_eof()
                return resp
            await self._stream(request, resp, plural, namespace, params, since)
        except (ConnectionResetError, ConnectionError):
            pass
        finally:
            self.open_watches -= 1
        return resp

    async def _stream(self, request: web.Request, resp: web.StreamResponse, plural: str, namespace: str,
                      params: dict[str, str], since: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(params.get("timeoutSeconds") or 1800)
        bookmarks = params.get("allowWatchBookmarks") == "true"
        generation = self._generation
        if since in ("", "0"):
            for obj in self._visible(plural, namespace):
                await self._send(resp, "ADDED", obj)
            cursor = self.rv
        else:
            cursor = int(since)
        last_bookmark = loop.time()
        while True:
            if generation != self._generation:
                _abort(request)
                return
            if cursor < self.oldest_rv:  # compacted past a slow watcher
                await self._send(resp, "ERROR", status(410, "Expired", f"too old resource version: {cursor}"))
                await resp.write_eof()
                return
            upto, changed = self.rv, self._changed
            for _, _, typ, obj in [e for e in self.log if cursor < e[0] <= upto and e[1] == plural]:
                if namespace and obj["metadata"].get("namespace") != namespace:
                    continue
                if self.drop_mid_event.get(plural, 0) > 0:
                    self.drop_mid_event[plural] -= 1
                    line = orjson.dumps({"type": typ, "object": obj}) + b"\n"
                    await resp.write(line[: len(line) // 2])
                    await asyncio.sleep(0.05)
                    _abort(request)
                    return
                await self._send(resp, typ, obj)
                if generation != self._generation:
                    break
            else:
                cursor = upto
            now = loop.time()
            if bookmarks and (now - last_bookmark >= self.bookmark_interval or now >= deadline):
                await self._send(resp, "BOOKMARK", {"kind": KINDS[plural], "apiVersion": GROUPS.get(plural, "v1"),
                                                    "metadata": {"resourceVersion": str(cursor)}})
                last_bookmark = now
            if now >= deadline:
                await resp.write_eof()
                return
            wait = min(deadline - now, self.bookmark_interval if bookmarks else deadline - now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), wait)

    async def _send(self, resp: web.StreamResponse, typ: str, obj: dict) -> None:
        """One event as one JSON line, written over several chunks like a slow proxy would."""
        line = orjson.dumps({"type": typ, "object": obj}) + b"\n"
        step = max(1, -(-len(line) // self.chunk_pieces))
        for i in range(0, len(line), step):
            await resp.write(line[i:i + step])
            if i + step < len(line):
                await asyncio.sleep(0.001)

    async def _lease(self, request: web.Request, parts: list[str]) -> web.Response:
        if len(parts) == 2 and parts[1] == "leases" and request.method == "POST":
            body = await request.json()
            key = (parts[0], body["metadata"]["name"])
            if key in self.leases:
                return web.json_response(status(409, "AlreadyExists", "lease exists"), status=409)
            return web.json_response(self._store_lease(key, body), status=201)
        if len(parts) != 3 or parts[1] != "leases":
            return web.json_response(status(404, "NotFound", "no such lease route"), status=404)
        key = (parts[0], parts[2])
        if request.method == "GET":
            if key not in self.leases:
                return web.json_response(status(404, "NotFound", f"lease {key[1]} not found"), status=404)
            return web.json_response(self.leases[key])
        if request.method == "PUT":
            body = await request.json()
            current = self.leases.get(key)
            if current is None:
                return web.json_response(status(404, "NotFound", f"lease {key[1]} not found"), status=404)
            if body.get("metadata", {}).get("resourceVersion") != current["metadata"]["resourceVersion"]:
                return web.json_response(status(409, "Conflict", "the object has been modified"), status=409)
            return web.json_response(self._store_lease(key, body))
        return web.json_response(status(405, "MethodNotAllowed", request.method), status=405)

    def _store_lease(self, key: tuple[str, str], body: dict) -> dict:
        self.rv += 1
        meta = body.setdefault("metadata", {})
        meta.update({"namespace": key[0], "name": key[1], "resourceVersion": str(self.rv)})
        meta.setdefault("uid", str(uuid.uuid4()))
        body.update({"kind": "Lease", "apiVersion": "coordination.k8s.io/v1"})
        self.leases[key] = body
        return body


class ThreadedStandIn:
    """The stand-in on its own thread and loop, for tests that drive a watcher in another process."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: ApiServerStandIn

    def __enter__(self) -> ThreadedStandIn:
        self._thread.start()

        async def start() -> ApiServerStandIn:
            server = ApiServerStandIn(**self._kwargs)
            await server.start()
            return server

        self.server = asyncio.run_coroutine_threadsafe(start(), self.loop).result(10)
        return self

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the server's loop (mutations must) and return its result."""

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def write_kubeconfig(path: Path, url: str, token: str, context: str = "standin") -> Path:
    """A kubeconfig (JSON is YAML) pointing at the stand-in with a bearer token."""
    path.write_bytes(orjson.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": context,
        "clusters": [{"name": "standin", "cluster": {"server": url}}],
        "users": [{"name": "standin", "user": {"token": token}}],
        "contexts": [{"name": context, "context": {"cluster": "standin", "user": "standin"}}],
    }))
    return path


# -- objects as the API returns them ------------------------------------------------------------


def make_pod(name: str, namespace: str, ip: str | None = None, *, ips: list[str] | None = None,
             uid: str | None = None, start_ns: int | None = None, phase: str = "Running",
             finished_ns: int | None = None, host_network: bool = False, node: str = "node-1",
             owner: tuple[str, str] | None = None, labels: dict[str, str] | None = None) -> dict:
    start_ns = start_ns if start_ns is not None else time.time_ns() - 3600 * 10**9
    ips = ips if ips is not None else [ip] if ip else []
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid or str(uuid.uuid4()),
                            "creationTimestamp": rfc3339(start_ns - 2 * 10**9), "labels": labels or {}}
    if owner is not None:
        meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": owner[0], "name": owner[1],
                                    "uid": str(uuid.uuid4()), "controller": True}]
    status_: dict[str, Any] = {"phase": phase, "startTime": rfc3339(start_ns), "hostIP": "10.0.0.11"}
    if ips:
        status_["podIP"], status_["podIPs"] = ips[0], [{"ip": i} for i in ips]
    if finished_ns is not None:
        status_["containerStatuses"] = [{"name": "main", "state": {"terminated": {
            "exitCode": 0, "startedAt": rfc3339(start_ns), "finishedAt": rfc3339(finished_ns)}}}]
    return {"kind": "Pod", "apiVersion": "v1", "metadata": meta,
            "spec": {"nodeName": node, "hostNetwork": host_network, "containers": [{"name": "main"}]},
            "status": status_}


def make_service(name: str, namespace: str, cluster_ip: str, *, uid: str | None = None,
                 created_ns: int | None = None) -> dict:
    created = created_ns if created_ns is not None else time.time_ns() - 3600 * 10**9
    return {"kind": "Service", "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace, "uid": uid or str(uuid.uuid4()),
                         "creationTimestamp": rfc3339(created)},
            "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip],
                     "ports": [{"port": 80, "protocol": "TCP"}]}}


def make_node(name: str, internal_ip: str, *, uid: str | None = None, created_ns: int | None = None) -> dict:
    created = created_ns if created_ns is not None else time.time_ns() - 86400 * 10**9
    return {"kind": "Node", "apiVersion": "v1",
            "metadata": {"name": name, "uid": uid or str(uuid.uuid4()), "creationTimestamp": rfc3339(created)},
            "status": {"addresses": [{"type": "InternalIP", "address": internal_ip},
                                     {"type": "Hostname", "address": name}]}}


def make_endpoint_slice(service: str, namespace: str, endpoints: list[tuple[str, str, bool]],
                        ports: list[tuple[str, int, str]], *, name: str | None = None, uid: str | None = None,
                        created_ns: int | None = None) -> dict:
    """A Service's EndpointSlice: ``endpoints`` as (ip, pod name, ready), ``ports`` as (name, port, protocol)."""
    created = created_ns if created_ns is not None else time.time_ns() - 3600 * 10**9
    return {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1", "addressType": "IPv4",
            "metadata": {"name": name or f"{service}-abcde", "namespace": namespace, "uid": uid or str(uuid.uuid4()),
                         "creationTimestamp": rfc3339(created),
                         "labels": {"kubernetes.io/service-name": service,
                                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
            "endpoints": [{"addresses": [ip], "conditions": {"ready": ready, "serving": ready, "terminating": False},
                           "targetRef": {"kind": "Pod", "name": pod, "namespace": namespace}, "nodeName": "node-1"}
                          for ip, pod, ready in endpoints],
            "ports": [{"name": n, "port": port, "protocol": proto} for n, port, proto in ports]}
