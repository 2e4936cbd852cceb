"""Loki's failures and what their text tells the shipper: server limits, Retry-After, the message.

Loki states its limits only in a 400's message; reading them lets the pager lower its page
size or shrink its chunks once instead of failing the run.
"""

from __future__ import annotations

import contextlib
import re
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import orjson

from pipeline.basics.backoff import Backoff
from pipeline.sources.loki.logql import loki_duration_ns

MAX_RETRY_AFTER_S = 300.0


class LokiError(RuntimeError):
    """A Loki failure the shipper cannot work around; the message carries Loki's own text."""


class LokiHTTPError(LokiError):
    """Loki refused a request (4xx other than 429): retrying the same request cannot help."""

    def __init__(self, status: int, path: str, message: str) -> None:
        what = "refused the credentials" if status in (401, 403) else "rejected the request"
        super().__init__(f"Loki {what} (HTTP {status} on {path}): {message}")
        self.status = status
        self.loki_message = message


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
