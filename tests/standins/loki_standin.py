"""A faithful stand-in of Loki's query API, for tests (no Loki binary is installable here).

What it reproduces, from Loki's HTTP API documentation and source:

- ``GET /loki/api/v1/query_range``: ``start`` inclusive, ``end`` exclusive (defaults: an hour ago, now);
  ``direction`` backward by default; ``limit`` 100 by default, and above ``max_entries_limit_per_query``
  a 400 with Loki's text; a range longer than ``max_query_length`` a 400 with Loki's text; integers of up
  to 10 digits read as seconds, longer ones as nanoseconds, RFC3339 and float seconds accepted. The
  ``limit`` entries returned are the earliest (forward) or latest (backward) across all matching streams,
  entries on one nanosecond tie-broken at random on every query, grouped per stream, streams in random order.
- ``GET /loki/api/v1/series`` with ``match[]``: the label sets of matching streams with entries in range.
- ``/loki/api/v1/tail`` websocket: the last ``limit`` entries since ``start``, then entries as they are
  pushed (out-of-order writes included), ``dropped_entries`` for what it drops, closed by the server
  after ``tail_max_s`` (Loki: one hour), ``delay_for`` above 5 refused.
- LogQL: stream selectors with ``=``, ``!=``, ``=~``, ``!~`` (regexes anchored, ``name=""`` matching a
  missing label, at least one matcher that does not match empty) and line filters ``|=``, ``!=``,
  ``|~``, ``!~``; an identical (timestamp, line) in one stream is stored once.
- Tenancy and auth: ``X-Scope-OrgID`` required when ``org_id`` is set (401 ``no org id``), bearer or
  basic credentials checked when configured; HTTPS with a given ``ssl_context``.

Fault injection: queued ``Fault``s (HTTP status with Retry-After, slow answers, malformed JSON, malformed
entries), a fixed ``latency_s``, tail drops, tail closes and aborts, a garbled tail message.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import random
import re
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import orjson
from aiohttp import WSMsgType, web

from pipeline.basics.timespec import parse_rfc3339_ns

NS = 1_000_000_000
_STRING = r'("(?:[^"\\]|\\.)*"|`[^`]*`)'
_MATCHER = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*" + _STRING + r"\s*")
_FILTER = re.compile(r"\s*(\|=|!=|\|~|!~)\s*" + _STRING + r"\s*")


def _unquote(s: str) -> str:
    return s[1:-1] if s.startswith("`") else orjson.loads(s)


def parse_time(value: str | None, default: int) -> int:
    """Loki's parseTimestamp: float seconds, ≤10-digit integers as seconds, longer as ns, or RFC3339."""
    if not value:
        return default
    if "." in value:
        with contextlib.suppress(ValueError):
            return round(float(value) * 1000) * 1_000_000
    try:
        n = int(value)
    except ValueError:
        return parse_rfc3339_ns(value)
    return n * NS if len(value) <= 10 else n


def go_duration(ns: int) -> str:
    """Go's time.Duration.String() (for the query length Loki reports)."""
    s, frac = divmod(ns, NS)
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    secs = f"{sec}.{frac:09d}".rstrip("0").rstrip(".") if frac else str(sec)
    if h:
        return f"{h}h{m}m{secs}s"
    return f"{m}m{secs}s" if m else f"{secs}s"


def prom_duration(ns: int) -> str:
    """Prometheus model.Duration.String() (for the limit Loki reports, e.g. ``30d1h``)."""
    ms = ns // 1_000_000
    if ms == 0:
        return "0s"
    out = ""
    for unit, size in (("y", 365 * 86400_000), ("w", 7 * 86400_000), ("d", 86400_000), ("h", 3600_000),
                       ("m", 60_000), ("s", 1000), ("ms", 1)):
        n, ms = divmod(ms, size)
        if n:
            out += f"{n}{unit}"
    return out


def _syntax(text: str, pos: int) -> str:
    return f"parse error at line 1, col {pos + 1}: syntax error: unexpected {text[pos:pos + 8]!r}"


class Query:
    """A LogQL log query: stream matchers and line filters."""

    def __init__(self, text: str) -> None:
        text = text.strip()
        if not text.startswith("{"):
            raise ValueError("parse error at line 1, col 1: syntax error: unexpected IDENTIFIER")
        self.matchers: list[tuple[str, str, str]] = []
        pos = 1
        while True:
            m = _MATCHER.match(text, pos)
            if not m:
                raise ValueError(_syntax(text, pos))
            self.matchers.append((m.group(1), m.group(2), _unquote(m.group(3))))
            pos = m.end()
            if text.startswith(",", pos):
                pos += 1
            elif text.startswith("}", pos):
                pos += 1
                break
            else:
                raise ValueError(_syntax(text, pos))
        self.filters: list[tuple[str, str]] = []
        while pos < len(text):
            m = _FILTER.match(text, pos)
            if not m:
                raise ValueError(_syntax(text, pos))
            self.filters.append((m.group(1), _unquote(m.group(2))))
            pos = m.end()
        for _, op, value in self.matchers:
            if op in ("=~", "!~"):
                re.compile(value)
        if all(self._match(op, value, "") for _, op, value in self.matchers):
            raise ValueError('queries require at least one regexp or equality matcher that does not have an '
                             'empty-compatible value. For instance, app=~".*" does not meet this requirement, '
                             'but app=~".+" will')

    @staticmethod
    def _match(op: str, want: str, got: str) -> bool:
        if op == "=":
            return got == want
        if op == "!=":
            return got != want
        hit = re.fullmatch(want, got) is not None
        return hit if op == "=~" else not hit

    def selects(self, labels: dict[str, str]) -> bool:
        return all(self._match(op, value, labels.get(name, "")) for name, op, value in self.matchers)

    def keeps(self, line: str) -> bool:
        for op, value in self.filters:
            if op == "|=" and value not in line or op == "!=" and value in line:
                return False
            if op in ("|~", "!~") and (re.search(value, line) is not None) != (op == "|~"):
                return False
        return True


class _Stream:
    def __init__(self, labels: dict[str, str]) -> None:
        self.labels = labels
        self.ts: list[int] = []
        self.lines: list[str] = []
        self.keys: set[tuple[int, str]] = set()

    def add(self, ts: int, line: str) -> bool:
        if (ts, line) in self.keys:
            return False
        self.keys.add((ts, line))
        i = bisect.bisect_right(self.ts, ts)
        self.ts.insert(i, ts)
        self.lines.insert(i, line)
        return True

    def between(self, start: int, end: int) -> tuple[int, int]:
        return bisect.bisect_left(self.ts, start), bisect.bisect_left(self.ts, end)


@dataclass
class Fault:
    """The next matching request fails this way: ``status`` (with ``retry_after``), ``slow`` (``delay_s``),
    ``malformed`` (cut JSON) or ``bad_entries`` (a valid answer with undecodable values added)."""

    kind: str
    path: str = "query_range"
    status: int = 500
    retry_after: str | None = None
    delay_s: float = 0.0
    body: str = "internal error"


@dataclass
class _Tailer:
    query: Query
    queue: asyncio.Queue
    request: web.Request
    dropped: list[dict] = field(default_factory=list)


class LokiStandin:
    """In-memory Loki; runs its own event loop in a thread so that sync and async tests can both use it."""

    def __init__(self, *, max_entries: int = 5000, max_query_length_s: float = 721 * 3600,
                 tail_max_s: float = 3600.0, seed: int = 0, token: str | None = None,
                 basic: tuple[str, str] | None = None, org_id: str | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.ssl_context = ssl_context
        self.max_entries = max_entries
        self.max_query_length_ns = int(max_query_length_s * NS)
        self.tail_max_s = tail_max_s
        self.token = token
        self.basic = basic
        self.org_id = org_id
        self.latency_s = 0.0
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, dict[str, str], dict[str, str]]] = []
        self.tail_connections = 0
        self.url = ""
        self._rng = random.Random(seed)
        self._streams: dict[tuple[tuple[str, str], ...], _Stream] = {}
        self._lock = threading.Lock()
        self._tailers: list[_Tailer] = []
        self._drop_budget = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None

    # --- data -----------------------------------------------------------------
    def push(self, labels: dict[str, str], ts: int, line: str) -> bool:
        """Ingest one entry (any timestamp: late writes too); False when it is an exact duplicate."""
        return self.push_many([(labels, ts, line)]) == 1

    def push_many(self, entries: Iterable[tuple[dict[str, str], int, str]]) -> int:
        added: list[tuple[dict[str, str], int, str]] = []
        with self._lock:
            for labels, ts, line in entries:
                key = tuple(sorted(labels.items()))
                stream = self._streams.get(key)
                if stream is None:
                    stream = self._streams[key] = _Stream(dict(labels))
                if stream.add(ts, line):
                    added.append((stream.labels, ts, line))
        if added and self._loop is not None:
            self._loop.call_soon_threadsafe(self._dispatch, added)
        return len(added)

    def entries(self) -> set[tuple[tuple[tuple[str, str], ...], int, str]]:
        """Everything stored, as (sorted labels, ts, line): what a correct shipper ships."""
        with self._lock:
            return {(k, ts, line) for k, s in self._streams.items() for ts, line in zip(s.ts, s.lines, strict=True)}

    def _select(self, query: Query, start: int, end: int, limit: int, forward: bool) -> list[tuple]:
        picked: list[tuple[int, float, dict[str, str], str]] = []
        with self._lock:
            for stream in self._streams.values():
                if not query.selects(stream.labels):
                    continue
                lo, hi = stream.between(start, end)
                idx = range(lo, hi) if forward else range(hi - 1, lo - 1, -1)
                n = 0
                for i in idx:
                    if query.keeps(stream.lines[i]):
                        picked.append((stream.ts[i], self._rng.random(), stream.labels, stream.lines[i]))
                        n += 1
                        if n >= limit:
                            break
        picked.sort(key=lambda e: (e[0], e[1]) if forward else (-e[0], e[1]))
        return picked[:limit]

    def _streams_json(self, picked: list[tuple]) -> list[dict]:
        grouped: dict[int, tuple[dict[str, str], list[list[str]]]] = {}
        for ts, _, labels, line in picked:
            grouped.setdefault(id(labels), (labels, []))[1].append([str(ts), line])
        result = [{"stream": labels, "values": values} for labels, values in grouped.values()]
        self._rng.shuffle(result)
        return result

    # --- faults and control -------------------------------------------------------
    def drop_tail(self, n: int) -> None:
        """The next ``n`` entries bound for tail clients are dropped and reported as dropped_entries."""
        self._drop_budget += n

    def close_tails(self) -> None:
        """Close every tail websocket from the server side (Loki does so after an hour)."""
        self._call(self._close_tails())

    def abort_tails(self) -> None:
        """Cut every tail connection without a close frame (a network drop)."""
        self._call(self._abort_tails())

    def garble_tail(self) -> None:
        """Send every tail client one message that is not JSON."""
        self._call(self._garble_tails())

    def _call(self, coro) -> None:
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _close_tails(self) -> None:
        for t in list(self._tailers):
            t.queue.put_nowait(("close", None))

    async def _abort_tails(self) -> None:
        for t in list(self._tailers):
            if t.request.transport is not None:
                t.request.transport.abort()

    async def _garble_tails(self) -> None:
        for t in list(self._tailers):
            t.queue.put_nowait(("garbage", None))

    def _dispatch(self, added: list[tuple[dict[str, str], int, str]]) -> None:
        for t in self._tailers:
            for labels, ts, line in added:
                if t.query.selects(labels) and t.query.keeps(line):
                    if self._drop_budget > 0:
                        self._drop_budget -= 1
                        t.dropped.append({"labels": labels, "timestamp": str(ts)})
                    else:
                        t.queue.put_nowait(("entry", (labels, ts, line)))
            if t.dropped:
                t.queue.put_nowait(("wake", None))

    # --- HTTP -------------------------------------------------------------------
    def _check(self, request: web.Request) -> web.Response | None:
        self.requests.append((request.path, dict(request.query), {
            k: v for k, v in request.headers.items() if k in ("Authorization", "X-Scope-OrgID")}))
        auth = request.headers.get("Authorization", "")
        if self.token is not None and auth != f"Bearer {self.token}":
            return web.Response(status=401, text="Unauthorized\n")
        if self.basic is not None and auth != "Basic " + base64.b64encode(":".join(self.basic).encode()).decode():
            return web.Response(status=401, text="Unauthorized\n")
        if self.org_id is not None and not request.headers.get("X-Scope-OrgID"):
            return web.Response(status=401, text="no org id\n")
        return None

    def _tenant_ok(self, request: web.Request) -> bool:
        return self.org_id is None or request.headers.get("X-Scope-OrgID") == self.org_id

    async def _fault(self, request: web.Request) -> tuple[web.Response | None, Fault | None]:
        for i, f in enumerate(self.faults):
            if f.path in request.path:
                del self.faults[i]
                if f.kind == "slow":
                    await asyncio.sleep(f.delay_s)
                    return None, None
                if f.kind == "status":
                    headers = {"Retry-After": f.retry_after} if f.retry_after else {}
                    return web.Response(status=f.status, text=f.body + "\n", headers=headers), None
                if f.kind == "malformed":
                    return web.Response(status=200, text='{"status":"success","data":{"resultType":"stre',
                                        content_type="application/json"), None
                return None, f
        return None, None

    @staticmethod
    def _bad(text: str) -> web.Response:
        return web.Response(status=400, text=text + "\n")

    def _limits(self, params: dict[str, str], default_limit: int = 100) -> int:
        try:
            limit = int(params.get("limit", default_limit))
        except ValueError:
            raise ValueError(f'strconv.ParseInt: parsing "{params.get("limit")}": invalid syntax') from None
        if limit <= 0:
            raise ValueError("limit must be a positive value")
        if limit > self.max_entries:
            raise ValueError(f"max entries limit per query exceeded, limit > max_entries_limit ({limit} > "
                             f"{self.max_entries})")
        return limit

    async def query_range(self, request: web.Request) -> web.Response:
        if (refused := self._check(request)) is not None:
            return refused
        fault_response, fault = await self._fault(request)
        if fault_response is not None:
            return fault_response
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        params = dict(request.query)
        try:
            limit = self._limits(params)
            now = time.time_ns()
            end = parse_time(params.get("end"), now)
            start = parse_time(params.get("start"), end - 3600 * NS)
            direction = params.get("direction", "backward").lower()
            if direction not in ("forward", "backward"):
                raise ValueError(f"invalid direction '{params.get('direction')}'")
            if end <= start:
                raise ValueError("end timestamp must not be before or equal to start time")
            if self.max_query_length_ns and end - start > self.max_query_length_ns:
                raise ValueError(f"the query time range exceeds the limit (query length: {go_duration(end - start)}"
                                 f", limit: {prom_duration(self.max_query_length_ns)})")
            query = Query(params.get("query", ""))
        except ValueError as exc:
            return self._bad(str(exc))
        picked = self._select(query, start, end, limit, direction == "forward") if self._tenant_ok(request) else []
        result = self._streams_json(picked)
        if fault is not None:  # bad_entries
            result += [{"stream": {"job": "broken"}, "values": [["not-a-time", "x"], ["1", 5], "oops"]},
                       {"values": [[str(start), "no labels"]]}]
        body = {"status": "success", "data": {"resultType": "streams", "result": result,
                                              "stats": {"summary": {"totalEntriesReturned": len(picked)}}}}
        return web.json_response(body, dumps=lambda o: orjson.dumps(o).decode())

    async def series(self, request: web.Request) -> web.Response:
        if (refused := self._check(request)) is not None:
            return refused
        fault_response, _ = await self._fault(request)
        if fault_response is not None:
            return fault_response
        matches = request.query.getall("match[]", [])
        if not matches:
            return self._bad("at least one match[] argument must be provided")
        try:
            queries = [Query(m) for m in matches]
            now = time.time_ns()
            end = parse_time(request.query.get("end"), now)
            start = parse_time(request.query.get("start"), end - 3600 * NS)
        except ValueError as exc:
            return self._bad(str(exc))
        data = []
        with self._lock:
            for stream in self._streams.values() if self._tenant_ok(request) else []:
                lo, hi = bisect.bisect_left(stream.ts, start), bisect.bisect_right(stream.ts, end)
                if hi > lo and any(q.selects(stream.labels) for q in queries):
                    data.append(dict(stream.labels))
        return web.json_response({"status": "success", "data": data})

    async def tail(self, request: web.Request) -> web.StreamResponse:
        if (refused := self._check(request)) is not None:
            return refused
        fault_response, _ = await self._fault(request)
        if fault_response is not None:
            return fault_response
        params = dict(request.query)
        try:
            limit = self._limits(params)
            if int(params.get("delay_for", "0")) > 5:
                raise ValueError("delay_for can't be greater than 5")
            now = time.time_ns()
            start = parse_time(params.get("start"), now - 3600 * NS)
            query = Query(params.get("query", ""))
        except ValueError as exc:
            return self._bad(str(exc))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        tailer = _Tailer(query, asyncio.Queue(), request)
        history = self._select(query, start, now, limit, False)[::-1] if self._tenant_ok(request) else []
        if self._tenant_ok(request):
            self._tailers.append(tailer)
        self.tail_connections += 1  # counted once registered: a push seen after this reaches the tailer
        reader = asyncio.create_task(self._drain(ws, tailer))
        try:
            if history:
                await ws.send_str(orjson.dumps({"streams": self._streams_json(history)}).decode())
            await self._serve_tail(ws, tailer)
        finally:
            reader.cancel()
            if tailer in self._tailers:
                self._tailers.remove(tailer)
        return ws

    @staticmethod
    async def _drain(ws: web.WebSocketResponse, tailer: _Tailer) -> None:
        async for msg in ws:
            if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break
        tailer.queue.put_nowait(("gone", None))

    async def _serve_tail(self, ws: web.WebSocketResponse, tailer: _Tailer) -> None:
        with contextlib.suppress(ConnectionResetError):  # the client went away (or abort_tails cut it)
            await self._push_tail(ws, tailer)

    async def _push_tail(self, ws: web.WebSocketResponse, tailer: _Tailer) -> None:
        deadline = time.monotonic() + self.tail_max_s
        while not ws.closed:
            try:
                items = [await asyncio.wait_for(tailer.queue.get(), max(0.0, deadline - time.monotonic()))]
            except TimeoutError:
                items = [("close", None)]
            while not tailer.queue.empty():
                items.append(tailer.queue.get_nowait())
            batch = [(ts, 0.0, labels, line) for kind, (labels, ts, line) in
                     ((k, i) for k, i in items if k == "entry")]
            msg: dict[str, object] = {"streams": self._streams_json(batch)}
            if tailer.dropped:
                msg["dropped_entries"], tailer.dropped = tailer.dropped, []
            if batch or "dropped_entries" in msg:
                await ws.send_str(orjson.dumps(msg).decode())
            kinds = {k for k, _ in items}
            if "garbage" in kinds:
                await ws.send_str('{"streams": [{"stream": ')
            if kinds & {"close", "gone"}:
                await ws.close()
                return

    # --- lifecycle ------------------------------------------------------------------
    async def _start(self) -> str:
        app = web.Application()
        app.router.add_get("/loki/api/v1/query_range", self.query_range)
        app.router.add_get("/loki/api/v1/series", self.series)
        app.router.add_get("/loki/api/v1/tail", self.tail)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{port}"

    async def _stop(self) -> None:
        await self._close_tails()
        await asyncio.sleep(0.05)
        assert self._runner is not None
        await self._runner.cleanup()

    @contextlib.contextmanager
    def running(self) -> Iterator[LokiStandin]:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="loki-standin", daemon=True)
        thread.start()
        self._loop = loop
        try:
            self.url = asyncio.run_coroutine_threadsafe(self._start(), loop).result(10)
            yield self
        finally:
            asyncio.run_coroutine_threadsafe(self._stop(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)
            loop.close()
            self._loop = None
