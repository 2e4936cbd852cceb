"""Loki's HTTP API: credentials, TLS, tenancy, bounded retries, and the tail websocket.

The only module here that does network I/O; it returns decoded entries, never raw JSON.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import orjson
from pydantic import SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from yarl import URL

from pipeline.basics.backoff import Backoff
from pipeline.basics.config import _read_secret_file
from pipeline.core.envelopes import HOST_LABELS
from pipeline.sources.loki.errors import (
    LokiError,
    LokiHTTPError,
    loki_message,
    parse_retry_after,
    retry_delay,
)
from pipeline.sources.loki.logql import loki_time
from pipeline.sources.loki.streams import Entry, TailMessage, decode_streams, decode_tail

log = logging.getLogger("flows.loki")


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
