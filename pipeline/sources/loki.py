"""Shipping from Loki: gap-free backfill through ``query_range`` and a live follow through ``tail``.

Loki answers a forward ``query_range`` with the ``limit`` earliest entries of
``[start, end)``, grouped per stream and not ordered across streams; any number
of entries may share one nanosecond, so a full page can cut an instant in the
middle. The pager therefore ships the entries *before* a full page's last
timestamp, then reads that last instant on its own (``[t, t+1)``), splitting it
by stream through ``/loki/api/v1/series`` when even the instant is over the
limit. ``position`` is always a timestamp below which everything is shipped;
it is what the checkpoint saves, and only after Kafka acknowledged it.

Following runs the tail websocket for latency, while ``position`` only moves
through a trailing ``query_range`` backfill a safety lag behind now, so
reconnects, dropped entries and writes up to the safety lag late cannot leave a
gap. Writes later than that are seen only by a connected tail (what it drops is
re-read at the reported timestamps). Entries the tail or a gap fill shipped
ahead of ``position`` are remembered (bounded) so the trailing backfill does
not ship them again; a kill can only cause re-sends, which the worker drops.

HTTP and websocket I/O live in ``LokiClient``; the helpers above it are pure.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
import logging
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

import aiohttp
import orjson
from pydantic import SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from yarl import URL

from pipeline.basics.backoff import Backoff
from pipeline.basics.config import _read_secret_file
from pipeline.basics.timespec import datetime_from_ns, format_rfc3339_ns, rfc3339
from pipeline.core.envelopes import HOST_LABELS, UNDECODABLE, EnvelopeError, from_loki_entry, loki_labels_key
from pipeline.core.models import RawRecord
from pipeline.sources.checkpoint import Checkpoint
from pipeline.sources.shipper import undecodable_record

log = logging.getLogger("flows.loki")

NS = 1_000_000_000
DEFAULT_LIMIT = 5000  # Loki's default max_entries_limit_per_query
DEFAULT_CHUNK = "720h"  # Loki's default max_query_length is 721h: keep an hour of margin
DEFAULT_CHUNK_NS = 720 * 3600 * NS
MAX_SEEN = 1_000_000  # entries remembered ahead of the position; beyond, a replay is possible (harmless)
MAX_RETRY_AFTER_S = 300.0
T = TypeVar("T")


class LokiError(RuntimeError):
    """A Loki failure the shipper cannot work around; the message carries Loki's own text."""


class LokiHTTPError(LokiError):
    """Loki refused a request (4xx other than 429): retrying the same request cannot help."""

    def __init__(self, status: int, path: str, message: str) -> None:
        what = "refused the credentials" if status in (401, 403) else "rejected the request"
        super().__init__(f"Loki {what} (HTTP {status} on {path}): {message}")
        self.status = status
        self.loki_message = message


class Stopped(Exception):  # noqa: N818 - a control-flow signal, not an error
    """A stop was requested while waiting on the network."""


# --- pure helpers ------------------------------------------------------------

def loki_time(ns: int) -> str:
    """A time parameter Loki reads as nanoseconds: it takes integers of up to 10 digits as seconds."""
    if ns >= 10**10:
        return str(ns)
    return format_rfc3339_ns(ns)


def iso(ns: int) -> str:
    """A position for humans (µs are enough to read it)."""
    return rfc3339(datetime_from_ns(ns))


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|y|w|d|h|m|s)")
_DURATION_NS = {"ns": 1, "us": 1000, "µs": 1000, "ms": 10**6, "s": NS, "m": 60 * NS, "h": 3600 * NS,
                "d": 86400 * NS, "w": 7 * 86400 * NS, "y": 365 * 86400 * NS}


def loki_duration_ns(text: str) -> int | None:
    """A duration as Loki prints it, Go style (``721h0m0s``) or Prometheus style (``30d1h``)."""
    text = text.strip()
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return int(sum(float(n) * _DURATION_NS[u] for n, u in parts))


_MAX_ENTRIES = re.compile(r"max entries limit per query exceeded, limit > max_entries_limit\w* \((\d+) > (\d+)\)")
_QUERY_TOO_LONG = re.compile(r"query time range exceeds the limit \(query length: ([^,]+), limit: ([^)]+)\)")


def max_entries_allowed(exc: LokiHTTPError) -> int | None:
    """The server's max_entries_limit_per_query when Loki refused our limit as too high."""
    m = _MAX_ENTRIES.search(exc.loki_message) if exc.status == 400 else None
    return int(m.group(2)) if m else None


def max_query_length_ns(exc: LokiHTTPError) -> int | None:
    """The server's max_query_length when Loki refused a range as too long."""
    m = _QUERY_TOO_LONG.search(exc.loki_message) if exc.status == 400 else None
    return loki_duration_ns(m.group(2)) if m else None


def retry_delay(backoff: Backoff, retry_after_s: float | None = None) -> float:
    """The backoff's next delay; the server's Retry-After wins when longer (up to a bound)."""
    delay = backoff.next()
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, MAX_RETRY_AFTER_S))
    return delay


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def loki_message(body: bytes) -> str:
    """Loki's error text: plain text, or ``error``/``message`` of a JSON body."""
    text = body.decode("utf-8", "replace").strip()
    with contextlib.suppress(orjson.JSONDecodeError):
        doc = orjson.loads(body)
        if isinstance(doc, dict):
            text = next((doc[k] for k in ("error", "message") if isinstance(doc.get(k), str)), text)
    return text[:500] or "(empty response)"


def _quote(value: str) -> str:
    """A LogQL string literal (Go's strconv.Unquote reads JSON escapes)."""
    return orjson.dumps(value).decode()


@dataclass(frozen=True)
class LogQuery:
    """A LogQL log query split into its stream selector and the pipeline after it."""

    selector: str
    pipeline: str = ""

    @classmethod
    def parse(cls, text: str) -> LogQuery:
        s = text.strip()
        if not s.startswith("{"):
            raise ValueError("the query must be a LogQL log query starting with a stream selector, like "
                             '{job="systemd-journal"} |= "calico-packet" (metric queries return no lines)')
        quote = ""
        i = 1
        while i < len(s):
            c = s[i]
            if quote:
                if c == "\\" and quote == '"':
                    i += 1
                elif c == quote:
                    quote = ""
            elif c in "\"`":
                quote = c
            elif c == "}":
                return cls(s[: i + 1], s[i + 1:].strip())
            i += 1
        raise ValueError(f"the query's stream selector is not closed: {text[:120]!r}")

    @property
    def text(self) -> str:
        return f"{self.selector} {self.pipeline}".strip()

    def for_stream(self, labels: dict[str, str], names: Iterable[str]) -> LogQuery:
        """This query restricted to exactly one stream: its labels, and absent for the other ``names``.

        ``name=""`` matches streams without that label, so a stream whose labels are a subset of
        another's is still selected alone.
        """
        matchers = [f"{k}={_quote(v)}" for k, v in sorted(labels.items())]
        matchers += [f'{n}=""' for n in sorted(set(names) - labels.keys())]
        return LogQuery("{" + ", ".join(matchers) + "}", self.pipeline)


class Entry(NamedTuple):
    """One Loki value as the pager sees it: its timestamp (-1 when unreadable) and the record to ship."""

    ts: int
    record: RawRecord

    @property
    def labels_key(self) -> str:
        return loki_labels_key(self.record.labels or {}) if not self.undecodable else ""

    @property
    def undecodable(self) -> bool:
        return self.record.source.startswith(UNDECODABLE)


def _bad(reason: str, detail: str, raw: object) -> RawRecord:
    """A value that does not decode travels as a marked record (kept as a reject), identified by its text."""
    return undecodable_record(EnvelopeError(reason, detail, orjson.dumps(raw).decode()), "loki")


def decode_result(result: object, host_labels: Sequence[str] = HOST_LABELS) -> list[Entry]:
    """The entries of ``data.result`` (streams); malformed streams or values become undecodable records.

    The pager needs every value's timestamp, including values that do not decode, to page past them;
    ``envelopes.from_loki_entry`` decodes each value (``host_labels``: which labels name the host).
    """
    if not isinstance(result, list):
        return [Entry(-1, _bad("bad_loki_response", "data.result is not a list", result))]
    entries: list[Entry] = []
    for stream in result:
        labels = stream.get("stream") if isinstance(stream, dict) else None
        values = stream.get("values") if isinstance(stream, dict) else None
        if not isinstance(labels, dict) or not isinstance(values, list):
            entries.append(Entry(-1, _bad("bad_loki_stream", "stream without labels or values", stream)))
            continue
        labels = {str(k): str(v) for k, v in labels.items()}
        for value in values:
            if not isinstance(value, list) or len(value) < 2:
                entries.append(Entry(-1, _bad("bad_entry", f"Loki value {str(value)[:80]}",
                                              {"stream": labels, "value": value})))
                continue
            try:
                rec = from_loki_entry(labels, value[0], value[1], host_labels)
            except EnvelopeError as exc:
                ts = int(value[0]) if isinstance(value[0], str) and value[0].isdigit() else -1
                entries.append(Entry(ts, _bad(exc.reason, exc.detail, {"stream": labels, "value": value})))
                continue
            entries.append(Entry(rec.ts_ns, rec))
    return entries


def decode_streams(doc: object, host_labels: Sequence[str] = HOST_LABELS) -> list[Entry]:
    """A ``query_range`` answer; a metric query or a body without data is an error, not entries."""
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, dict):
        raise LokiError("Loki answered without a data object")
    if data.get("resultType") != "streams":
        raise LokiError(f"the query returns {data.get('resultType')!r}, not log lines: ship a log query")
    return decode_result(data.get("result"), host_labels)


_LABEL_PAIR = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def _labels_of(value: object) -> dict[str, str] | None:
    """Dropped-entry labels: an object, or the ``{a="b"}`` text older Lokis send."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, str) and (pairs := _LABEL_PAIR.findall(value.strip().strip("{}"))):
        return {k: orjson.loads(f'"{v}"') for k, v in pairs}
    return None


@dataclass
class TailMessage:
    """One tail push: entries, and what Loki dropped for us (labels key or None, timestamp)."""

    entries: list[Entry] = field(default_factory=list)
    dropped: list[tuple[str | None, int]] = field(default_factory=list)
    malformed: bool = False


def decode_tail(data: str | bytes, host_labels: Sequence[str] = HOST_LABELS) -> TailMessage:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        return TailMessage(malformed=True)
    if not isinstance(doc, dict):
        return TailMessage(malformed=True)
    msg = TailMessage(entries=decode_result(doc.get("streams") or [], host_labels))
    for item in doc.get("dropped_entries") or []:
        try:
            ts = int(item["timestamp"])
        except (KeyError, TypeError, ValueError):
            msg.malformed = True
            continue
        labels = _labels_of(item.get("labels"))
        msg.dropped.append((loki_labels_key(labels) if labels is not None else None, ts))
    return msg


def instant_ranges(instants: Iterable[int], join_ns: int = NS) -> list[tuple[int, int]]:
    """Sorted instants as few ``[lo, hi)`` ranges, joining those closer than ``join_ns``."""
    out: list[tuple[int, int]] = []
    for ts in sorted(set(instants)):
        if out and ts - out[-1][1] < join_ns:
            out[-1] = (out[-1][0], ts + 1)
        else:
            out.append((ts, ts + 1))
    return out


# --- auth, TLS and HTTP --------------------------------------------------------

class LokiAuth(BaseSettings):
    """Loki credentials from ``FLOWS_LOKI_*`` (values or ``*_FILE``); SecretStr keeps them out of logs."""

    model_config = SettingsConfigDict(env_prefix="FLOWS_LOKI_", extra="ignore")

    token: SecretStr | None = None
    token_file: Path | None = None
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None

    @model_validator(mode="after")
    def _from_files(self) -> LokiAuth:
        if self.token is not None and not self.token.get_secret_value():
            self.token = None
        self.token = self.token or _read_secret_file(self.token_file)
        self.password = self.password or _read_secret_file(self.password_file)
        if self.token and self.username:
            raise ValueError("set a bearer token (FLOWS_LOKI_TOKEN[_FILE]) or basic auth "
                             "(FLOWS_LOKI_USERNAME + FLOWS_LOKI_PASSWORD[_FILE]), not both")
        if self.username and self.password is None:
            raise ValueError("FLOWS_LOKI_USERNAME needs FLOWS_LOKI_PASSWORD or FLOWS_LOKI_PASSWORD_FILE")
        return self

    def authorization(self) -> str | None:
        if self.token:
            return f"Bearer {self.token.get_secret_value()}"
        if self.username and self.password is not None:
            pair = f"{self.username}:{self.password.get_secret_value()}".encode()
            return "Basic " + base64.b64encode(pair).decode()
        return None


def ssl_option(ca_file: Path | None, insecure: bool) -> ssl.SSLContext | bool:
    """aiohttp's ``ssl``: default verification, a private CA, or none at all (``--insecure``)."""
    if insecure:
        return False
    if ca_file is None:
        return True
    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot use --ca-file {ca_file}: {exc}") from None


def display_url(url: str) -> str:
    """The URL without any user:password in it, for messages and checkpoints."""
    return str(URL(url).with_user(None))


class TailConnection:
    """One open ``/loki/api/v1/tail`` websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, host_labels: Sequence[str] = HOST_LABELS) -> None:
        self.ws = ws
        self.host_labels = host_labels

    async def receive(self) -> TailMessage | None:
        """The next push; None once the server closed the connection."""
        msg = await self.ws.receive()
        if msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
            return decode_tail(msg.data, self.host_labels)
        if msg.type == aiohttp.WSMsgType.ERROR:
            raise LokiError(f"tail connection failed: {self.ws.exception()}")
        return None

    async def close(self) -> None:
        await self.ws.close()


class LokiClient:
    """Loki's HTTP API with auth, tenancy, TLS, timeouts and bounded retries of transient failures."""

    def __init__(self, url: str, *, auth: LokiAuth | None = None, org_id: str | None = None,
                 ssl_opt: ssl.SSLContext | bool = True, timeout_s: float = 60.0, attempts: int = 8,
                 backoff_s: float = 0.5, backoff_cap_s: float = 30.0,
                 host_labels: Sequence[str] = HOST_LABELS) -> None:
        self.base = URL(url.rstrip("/"))
        self.host_labels = tuple(host_labels)
        self.display = display_url(url.rstrip("/"))
        self.headers: dict[str, str] = {}
        authorization = auth.authorization() if auth else None
        if authorization:
            self.headers["Authorization"] = authorization
        if org_id:
            self.headers["X-Scope-OrgID"] = org_id
        self.ssl = ssl_opt
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.backoff_cap_s = backoff_cap_s
        self.requests = 0
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> LokiClient:
        self._session = aiohttp.ClientSession(timeout=self.timeout, headers=self.headers)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("LokiClient used outside `async with`")
        return self._session

    async def get_json(self, path: str, params: dict[str, str]) -> object:
        """GET a JSON answer; 429/5xx/timeouts/garbled bodies are retried with backoff, other 4xx raise."""
        problem = ""
        backoff = Backoff(self.backoff_s, self.backoff_cap_s)
        for attempt in range(1, self.attempts + 1):
            retry_after = None
            self.requests += 1
            try:
                async with self.session.get(self.base / path.lstrip("/"), params=params, ssl=self.ssl) as resp:
                    body = await resp.read()
                    if resp.status == 200:
                        try:
                            return orjson.loads(body)
                        except orjson.JSONDecodeError as exc:
                            problem = f"malformed JSON ({exc})"
                    elif resp.status == 429 or resp.status >= 500:
                        problem = f"HTTP {resp.status}: {loki_message(body)}"
                        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                    else:
                        raise LokiHTTPError(resp.status, path, loki_message(body))
            except TimeoutError:
                problem = f"no answer within {self.timeout.total:g}s"
            except aiohttp.ClientSSLError as exc:
                raise LokiError(f"TLS with {self.display} failed ({exc}); pass --ca-file with the CA that "
                                "signed Loki's certificate (or --insecure)") from None
            except aiohttp.ClientError as exc:
                problem = str(exc) or type(exc).__name__
            if attempt == self.attempts:
                break
            delay = retry_delay(backoff, retry_after)
            log.warning("Loki %s: %s; retry %d/%d in %.1fs", path, problem, attempt, self.attempts - 1, delay)
            await asyncio.sleep(delay)
        raise LokiError(f"Loki at {self.display} failed {self.attempts} times on {path}; last: {problem}")

    async def query_range(self, query: str, start: int, end: int, limit: int) -> list[Entry]:
        doc = await self.get_json("/loki/api/v1/query_range", {
            "query": query, "start": loki_time(start), "end": loki_time(end), "limit": str(limit),
            "direction": "forward"})
        return decode_streams(doc, self.host_labels)

    async def series(self, selector: str, start: int, end: int) -> list[dict[str, str]]:
        doc = await self.get_json("/loki/api/v1/series",
                                  {"match[]": selector, "start": loki_time(start), "end": loki_time(end)})
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, list):
            raise LokiError("Loki's series answer has no data list")
        return [{str(k): str(v) for k, v in s.items()} for s in data if isinstance(s, dict)]

    async def tail(self, query: str, start: int, limit: int, delay_for_s: int) -> TailConnection:
        url = self.base.with_scheme("wss" if self.base.scheme == "https" else "ws") / "loki/api/v1/tail"
        params = {"query": query, "start": loki_time(start), "limit": str(limit), "delay_for": str(delay_for_s)}
        try:
            ws = await self.session.ws_connect(url, params=params, ssl=self.ssl, heartbeat=30)
        except aiohttp.WSServerHandshakeError as exc:
            raise LokiError(f"tail refused: HTTP {exc.status} {exc.message}") from None
        return TailConnection(ws, self.host_labels)


# --- shipping -------------------------------------------------------------------

Gap = tuple[int, int, set[tuple[str, int]] | None, bool]
"""A range the tail may have missed: [lo, hi), only these (labels key, ts) or all, clamp lo to the position."""


class RecordSink(Protocol):
    """Where records go: ``shipper.RecordProducer``.

    ``flush`` returns once Kafka acknowledged everything added; after a send that failed it
    raises, then and on every later call, so ``save`` never records a position past lost records.
    """

    async def add(self, rec: RawRecord) -> None: ...

    async def flush(self) -> None: ...


@dataclass
class LokiStats:
    """What one run did, for its summary line."""

    entries: int = 0  # shipped, all paths
    undecodable: int = 0  # of which kept as rejects
    queries: int = 0  # query_range calls, instants included
    splits: int = 0  # instants over the limit, split by stream
    incomplete: int = 0  # instants where one stream alone held the limit: possibly missing entries
    tail: int = 0
    gap: int = 0
    skipped: int = 0  # already shipped ahead of the position
    reconnects: int = 0
    dropped: int = 0  # entries Loki reported dropped from the tail
    late: int = 0  # tail entries behind the position (written later than the safety lag)


class LokiShipper:
    """Pages a query into a sink and owns the position (and its checkpoint)."""

    def __init__(self, client: LokiClient, query: LogQuery, sink: RecordSink, *, position: int,
                 limit: int = DEFAULT_LIMIT, chunk_ns: int = DEFAULT_CHUNK_NS,
                 checkpoint: Checkpoint | None = None, checkpoint_state: dict[str, Any] | None = None,
                 save_every_s: float = 1.0, on_progress: Callable[[LokiShipper], None] | None = None) -> None:
        self.client = client
        self.query = query
        self.sink = sink
        self.position = position
        self.limit = limit
        self.chunk_ns = chunk_ns
        self.checkpoint = checkpoint
        self.checkpoint_state = checkpoint_state or {}
        self.save_every_s = save_every_s
        self.on_progress = on_progress
        self.stats = LokiStats()
        self.stop = asyncio.Event()
        self._saved_at = time.monotonic()
        self._saved_position: int | None = None
        self._lock = asyncio.Lock()  # an add never interleaves with a flush that precedes a checkpoint
        self._seen: dict[str, int] = {}
        self._seen_heap: list[tuple[int, str]] = []

    async def _net(self, aw: Coroutine[Any, Any, T]) -> T:
        """Await network I/O, ending early (Stopped) on stop; shipping a record is never cut short."""
        task = asyncio.ensure_future(aw)
        stopper = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        finally:
            stopper.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise Stopped

    async def save(self) -> None:
        """Flush (Kafka acknowledged everything added so far), then record the position."""
        position = self.position
        async with self._lock:
            await self.sink.flush()
        if self.checkpoint is not None and position != self._saved_position:
            self.checkpoint.save({**self.checkpoint_state, "position_ns": position, "position": iso(position)})
            self._saved_position = position
        self._saved_at = time.monotonic()

    async def _advance(self, position: int) -> None:
        if position <= self.position:
            return
        self.position = position
        while self._seen_heap and self._seen_heap[0][0] < position:
            ts, rid = heapq.heappop(self._seen_heap)
            if self._seen.get(rid) == ts:
                del self._seen[rid]
        if self.checkpoint is not None and time.monotonic() - self._saved_at >= self.save_every_s:
            await self.save()
        if self.on_progress:
            self.on_progress(self)

    def _remember(self, rid: str, ts: int) -> None:
        self._seen[rid] = ts
        heapq.heappush(self._seen_heap, (ts, rid))
        if len(self._seen_heap) > MAX_SEEN:
            old_ts, old = heapq.heappop(self._seen_heap)
            if self._seen.get(old) == old_ts:
                del self._seen[old]

    async def _ship(self, entry: Entry, remember: bool = False) -> bool:
        rec = entry.record
        if rec.record_id in self._seen:
            self.stats.skipped += 1
            return False
        if remember and entry.ts >= self.position:
            self._remember(rec.record_id, entry.ts)
        async with self._lock:
            await self.sink.add(rec)
        self.stats.entries += 1
        self.stats.undecodable += entry.undecodable
        return True

    # --- paging ---

    async def _query(self, query: LogQuery, start: int, end: int) -> list[Entry]:
        """One forward page; a limit above the server's maximum is lowered to it, once, with a warning."""
        while True:
            try:
                self.stats.queries += 1
                return await self._net(self.client.query_range(query.text, start, end, self.limit))
            except LokiHTTPError as exc:
                allowed = max_entries_allowed(exc)
                if allowed is None or not 0 < allowed < self.limit:
                    raise
                log.warning("Loki allows at most %d entries per query (max_entries_limit_per_query): "
                            "paging with --limit %d", allowed, allowed)
                self.limit = allowed

    async def _instant(self, t: int) -> list[Entry]:
        """Every entry at exactly ``t``; split by stream when the instant alone holds the limit."""
        entries = await self._query(self.query, t, t + 1)
        if len(entries) < self.limit:
            return entries
        self.stats.splits += 1
        found = {e.record.record_id: e for e in entries}
        streams = await self._net(self.client.series(self.query.selector, t, t + 1))
        names = {n for s in streams for n in s}
        log.info("%d or more entries share the instant %s (%d ns): reading its %d streams one by one",
                 self.limit, iso(t), t, len(streams))
        for labels in streams:
            part = await self._query(self.query.for_stream(labels, names), t, t + 1)
            if len(part) >= self.limit:
                self.stats.incomplete += 1
                log.error("stream %s holds %d or more entries at the single instant %s (%d ns), the query "
                          "limit: Loki cannot page inside one stream's nanosecond, so entries may be missing. "
                          "Raise max_entries_limit_per_query and --limit, then re-ship this range.",
                          loki_labels_key(labels), len(part), iso(t), t)
            found.update((e.record.record_id, e) for e in part)
        return list(found.values())

    async def _window(self, start: int, end: int, emit: Callable[[Entry], Awaitable[object]],
                      advance: bool) -> None:
        cursor = start
        while cursor < end:
            entries = await self._query(self.query, cursor, end)
            if len(entries) < self.limit:
                for e in entries:
                    await emit(e)
                cursor = end
            else:
                # a full page holds every entry before its last timestamp, but maybe not all at it
                last = max((e.ts for e in entries if cursor <= e.ts < end), default=None)
                if last is None:
                    raise LokiError(f"a full page of {len(entries)} entries at {iso(cursor)} has no usable "
                                    "timestamp: cannot page past it")
                for e in entries:
                    if e.ts < last:
                        await emit(e)
                if advance:
                    await self._advance(last)
                for e in await self._instant(last):
                    await emit(e)
                cursor = last + 1
            if advance:
                await self._advance(cursor)

    async def _range(self, start: int, end: int, emit: Callable[[Entry], Awaitable[object]],
                     advance: bool) -> None:
        """``[start, end)`` in chunks Loki accepts; a max_query_length refusal shrinks the chunks."""
        lo = start
        while lo < end:
            hi = min(end, lo + self.chunk_ns)
            try:
                await self._window(lo, hi, emit, advance)
            except LokiHTTPError as exc:
                allowed = max_query_length_ns(exc)
                if allowed is None or allowed >= hi - lo:
                    raise
                self.chunk_ns = max(NS, allowed - allowed // 100)
                log.warning("Loki's max_query_length is %s: querying in chunks of %.0fs",
                            exc.loki_message.rsplit("limit: ", 1)[-1].rstrip(")"), self.chunk_ns / NS)
                lo = max(lo, self.position) if advance else lo
                continue
            lo = hi

    async def _ship_behind(self, entry: Entry) -> None:
        await self._ship(entry)

    async def backfill(self, end: int) -> None:
        """Ship ``[position, end)``; on stop or a Loki failure, what was acknowledged is checkpointed."""
        try:
            await self._range(self.position, end, self._ship_behind, advance=True)
        except Stopped:
            log.info("stopped at %s", iso(self.position))
        finally:
            await self.save()

    # --- following ---

    async def follow(self, *, safety_lag_ns: int, delay_for_s: int = 2, poll_s: float = 5.0,
                     gap_margin_ns: int = 5 * NS) -> None:
        """Tail for latency; a trailing backfill ``safety_lag_ns`` behind now moves (and saves) the position."""
        gaps: asyncio.Queue[Gap] = asyncio.Queue()
        tasks = [asyncio.create_task(self._trail(safety_lag_ns, poll_s), name="trail"),
                 asyncio.create_task(self._tail(gaps, delay_for_s, safety_lag_ns, gap_margin_ns), name="tail"),
                 asyncio.create_task(self._fill_gaps(gaps), name="gaps")]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            self.stop.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException) and not isinstance(result, Stopped):
                    raise result
        finally:
            await self.save()

    async def _trail(self, lag_ns: int, poll_s: float) -> None:
        while True:
            end = time.time_ns() - lag_ns
            if end > self.position:
                await self._range(self.position, end, self._ship_behind, advance=True)
            await self.save()
            await self._net(asyncio.sleep(poll_s))

    async def _ship_ahead(self, entry: Entry, counter: str, only: set[tuple[str, int]] | None = None) -> None:
        if only is not None and (entry.labels_key, entry.ts) not in only:
            return
        if await self._ship(entry, remember=True):
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)

    async def _fill_gaps(self, gaps: asyncio.Queue[Gap]) -> None:
        """Query what the tail may have missed right away, instead of waiting for the trailing backfill."""
        while True:
            lo, hi, only, clamp = await self._net(gaps.get())
            if clamp:
                lo = max(lo, self.position)  # below the position, the trailing backfill shipped it
            if lo < hi:
                log.info("filling a tail gap %s .. %s", iso(lo), iso(hi))

                async def emit(e: Entry, only: set[tuple[str, int]] | None = only) -> None:
                    await self._ship_ahead(e, "gap", only)

                await self._range(lo, hi, emit, advance=False)

    async def _tail(self, gaps: asyncio.Queue[Gap],
                    delay_for_s: int, lag_ns: int, margin_ns: int) -> None:
        """Never fatal: without the tail, following goes on at the safety lag's latency."""
        gap_from = time.time_ns() - lag_ns
        backoff = Backoff(0.5, 30.0)
        while True:
            connected_at = time.time_ns()
            try:  # limit only bounds the history since start, and start is now: 1 is always accepted
                conn = await self._net(self.client.tail(self.query.text, connected_at, 1, delay_for_s))
            except (LokiError, aiohttp.ClientError, TimeoutError) as exc:  # the trailing backfill still runs
                delay = backoff.next()
                log.warning("tail: cannot connect (%s); retrying in %.1fs", exc, delay)
                await self._net(asyncio.sleep(delay))
                continue
            gaps.put_nowait((gap_from, connected_at, None, True))
            received = 0
            try:
                received = await self._tail_messages(conn, gaps, margin_ns)
                log.info("tail closed by Loki; reconnecting")
            except (LokiError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("tail connection lost (%s); reconnecting", exc)
            finally:
                with contextlib.suppress(Exception):
                    await conn.close()
            self.stats.reconnects += 1
            gap_from = time.time_ns() - delay_for_s * NS - margin_ns
            if received:  # a connection that worked is no reason to back off more
                backoff.reset()
            await self._net(asyncio.sleep(backoff.next()))

    async def _tail_messages(self, conn: TailConnection,
                             gaps: asyncio.Queue[Gap],
                             margin_ns: int) -> int:
        """Ship what one connection pushes until it closes; returns how many messages it brought."""
        received = 0
        while (msg := await self._net(conn.receive())) is not None:
            received += 1
            for e in msg.entries:
                if 0 <= e.ts < self.position and e.record.record_id not in self._seen:
                    self.stats.late += 1
                await self._ship_ahead(e, "tail")
            if msg.malformed:
                now = time.time_ns()
                log.warning("tail: malformed message; re-reading the last %.0fs", margin_ns / NS)
                gaps.put_nowait((now - margin_ns, now, None, False))
            if msg.dropped:
                self.stats.dropped += len(msg.dropped)
                log.warning("tail: Loki dropped %d entries for this client; re-reading them", len(msg.dropped))
                for lo, hi in instant_ranges(ts for _, ts in msg.dropped):
                    inside = [(k, ts) for k, ts in msg.dropped if lo <= ts < hi]
                    only = None if any(k is None for k, _ in inside) else {(k, ts) for k, ts in inside if k}
                    gaps.put_nowait((lo, hi, only, False))
        return received
