"""The running stack's control endpoint, and how the CLI finds and uses it.

chDB allows one process per data directory, so while ``flows up`` holds the
embedded store, ``flows report``/``flows sql``/``flows status`` send their
queries here and the stack runs them read-only and bounded, apart from its
inserts (pipeline/store/readonly.py). The endpoint listens on loopback unless
FLOWS_CONTROL_HOST says otherwise; queries need the token written (mode 0600)
to ``$FLOWS_HOME/run/stack.json``. ``/metrics``, ``/healthz`` and ``/readyz``
are open for Prometheus and probes.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import secrets
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import aiohttp
import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pipeline.basics import metrics
from pipeline.basics.config import Settings
from pipeline.basics.timespec import rfc3339

MAX_QUERY_BYTES = 1024 * 1024


def jsonable(value: Any) -> Any:
    """Query results as JSON values (128-bit ints as strings, times as RFC3339)."""
    if isinstance(value, bool) or value is None or isinstance(value, (str, float)):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else str(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None or not value.utcoffset():
            return rfc3339(value)
        return value.isoformat()  # a column in another zone keeps its offset: the query asked for that zone
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        mapped = getattr(value, "ipv4_mapped", None)
        return str(mapped or value)
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (Decimal, UUID)):
        return str(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def write_stack_file(settings: Settings, state: dict[str, Any]) -> Path:
    path = settings.stack_file
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(state, fh)
    os.replace(tmp, path)
    return path


def read_stack_file(settings: Settings) -> dict[str, Any] | None:
    """The running stack's state, or None when there is none (or its process is gone)."""
    try:
        state = json.loads(settings.stack_file.read_text())
    except (OSError, ValueError):
        return None
    pid = state.get("pid")
    if not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return state


class ControlServer:
    """aiohttp app exposing status, metrics and query for one running process."""

    def __init__(self, settings: Settings, status: Callable[[], dict[str, Any]],
                 query: Callable[[str, dict[str, Any]], Any],
                 actions: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] | None = None) -> None:
        self.settings = settings
        self.token = secrets.token_urlsafe(24)
        self._status, self._query = status, query
        self._actions = actions or {}
        self._runner: web.AppRunner | None = None
        self.url = ""

    def _authorized(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "")
        return secrets.compare_digest(given, f"Bearer {self.token}")

    async def _handle_status(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        return web.json_response(jsonable({**self._status(), "metrics": metrics.snapshot()}))

    async def _handle_query(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        try:
            body = orjson.loads(await request.read())
            sql, params = body["sql"], body.get("parameters") or {}
            if not isinstance(sql, str) or not isinstance(params, dict):
                raise TypeError("sql must be a string and parameters an object")
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            return web.json_response({"error": f"bad request: {exc}"}, status=400)
        try:
            columns, rows = await self._query(sql, params)
        except Exception as exc:  # report the ClickHouse error to the CLI, keep serving
            return web.json_response({"error": str(exc)[:4000]}, status=422)
        body = orjson.dumps({"columns": columns, "rows": jsonable(rows)})
        return web.Response(body=body, content_type="application/json")

    async def _handle_action(self, request: web.Request) -> web.Response:
        """Work the running process does on the CLI's behalf (``flows reattribute``)."""
        if not self._authorized(request):
            return web.json_response({"error": "unauthorized"}, status=401)
        action = self._actions.get(request.match_info["name"])
        if action is None:
            return web.json_response({"error": f"no action {request.match_info['name']!r} here"}, status=404)
        try:
            payload = orjson.loads(await request.read())
            if not isinstance(payload, dict):
                raise TypeError("the payload must be an object")
        except (orjson.JSONDecodeError, TypeError) as exc:
            return web.json_response({"error": f"bad request: {exc}"}, status=400)
        try:
            result = await action(payload)
        except Exception as exc:  # report it to the CLI, keep serving
            return web.json_response({"error": str(exc)[:4000]}, status=422)
        return web.json_response(jsonable(result))

    async def _handle_metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _handle_health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _handle_ready(self, request: web.Request) -> web.Response:
        ready = bool(self._status().get("ready"))
        return web.Response(text="ready" if ready else "not ready", status=200 if ready else 503)

    async def start(self) -> str:
        app = web.Application(client_max_size=MAX_QUERY_BYTES)
        app.router.add_get("/status", self._handle_status)
        app.router.add_post("/query", self._handle_query)
        app.router.add_post("/actions/{name}", self._handle_action)
        app.router.add_get("/metrics", self._handle_metrics)
        app.router.add_get("/healthz", self._handle_health)
        app.router.add_get("/readyz", self._handle_ready)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.control_host, self.settings.control_port)
        await site.start()
        host, port = site._server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


class StackClient:
    """What the CLI uses to talk to a running stack."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.url = state["control_url"]
        self._headers = {"Authorization": f"Bearer {state['token']}"}

    async def _request(self, method: str, path: str, payload: dict | None = None) -> Any:
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.request(
            method, self.url + path, json=payload, headers=self._headers
        ) as resp:
            body = await resp.json(content_type=None)
            if resp.status != 200:
                raise RuntimeError(body.get("error", f"HTTP {resp.status}"))
            return body

    async def status(self) -> dict[str, Any]:
        return await self._request("GET", "/status")

    async def action(self, name: str, payload: dict[str, Any]) -> Any:
        return await self._request("POST", f"/actions/{name}", payload)

    async def query(self, sql: str, parameters: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
        body = await self._request("POST", "/query", {"sql": sql, "parameters": parameters})
        return body["columns"], body["rows"]
