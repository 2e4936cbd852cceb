"""Time arguments: RFC3339 instants or durations back from now (``30h``, ``7d``, ``1w2d``)."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

from pipeline.envelopes import parse_rfc3339_ns

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(?:(\d+)([smhdw]))+")
_PART = re.compile(r"(\d+)([smhdw])")
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2105, 1, 1, tzinfo=UTC)


def parse_duration_s(value: str) -> int:
    if not _DURATION.fullmatch(value):
        raise ValueError(f"not a duration: {value!r} (use e.g. 30m, 30h, 7d, 2w)")
    return sum(int(n) * _UNITS[u] for n, u in _PART.findall(value))


def parse_time(value: str, now_ns: int | None = None) -> datetime:
    """An RFC3339 time, a date (YYYY-MM-DD, midnight UTC), or a duration meaning that long ago."""
    value = value.strip()
    now_ns = time.time_ns() if now_ns is None else now_ns
    if _DURATION.fullmatch(value):
        ns = now_ns - parse_duration_s(value) * 1_000_000_000
    elif re.fullmatch(r"\d{4}-\d\d-\d\d", value):
        ns = parse_rfc3339_ns(value + "T00:00:00Z")
    else:
        try:
            ns = parse_rfc3339_ns(value)
        except ValueError:
            raise ValueError(f"not a time: {value!r} (use RFC3339 like 2026-11-26T11:00:00Z, "
                             "a date, or a duration like 30h)") from None
    return datetime.fromtimestamp(ns // 1000 / 1e6, tz=UTC)


def time_range(since: str | None, until: str | None, now_ns: int | None = None) -> tuple[datetime, datetime]:
    """[since, until) with all-time defaults; refuses an inverted range."""
    lo = parse_time(since, now_ns) if since else EARLIEST
    hi = parse_time(until, now_ns) if until else LATEST
    if hi <= lo:
        raise ValueError(f"empty time range: --since {lo.isoformat()} is not before --until {hi.isoformat()}")
    return lo, hi


def ch_time(value: datetime) -> str:
    """A bound DateTime64(6,'UTC') parameter value."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
