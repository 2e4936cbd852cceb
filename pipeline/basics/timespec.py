"""Time, one home: RFC3339 parsing and formatting, and CLI time arguments.

RFC3339 arrives from Kubernetes objects, journal and fluent-bit envelopes, Loki and
the command line; it is parsed here only, exactly to the nanosecond (integer maths,
no float), and printed here only.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(?:(\d+)([smhdw]))+")
_PART = re.compile(r"(\d+)([smhdw])")
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):?(\d{2}))?")
_EPOCH = datetime(1970, 1, 1)
_ONE_SECOND = timedelta(seconds=1)
NS = 1_000_000_000


def parse_rfc3339_ns(value: str, *, zone_required: bool = True) -> int:
    """An RFC3339 timestamp as ns since the epoch (UTC), keeping all 9 fractional digits.

    ``zone_required=False`` reads a time without offset as UTC (log envelopes that omit it).
    """
    m = _RFC3339.fullmatch(value if zone_required else value.strip()) if isinstance(value, str) else None
    if m is None or (zone_required and not (m.group(8) or m.group(9))):
        raise ValueError(f"not an RFC3339 timestamp: {str(value)[:64]!r}")
    year, month, day, hour, minute, second, frac, _z, sign, off_h, off_m = m.groups()
    try:
        naive = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
    except ValueError as exc:
        raise ValueError(f"not an RFC3339 timestamp: {value!r} ({exc})") from None
    seconds = (naive - _EPOCH) // _ONE_SECOND
    if sign:
        if int(off_h) > 23 or int(off_m) > 59:
            raise ValueError(f"not an RFC3339 timestamp: {value!r} (bad offset)")
        offset = int(off_h) * 3600 + int(off_m) * 60
        seconds -= offset if sign == "+" else -offset
    return seconds * NS + (int(frac[:9].ljust(9, "0")) if frac else 0)


def format_rfc3339_ns(ns: int, digits: int = 9) -> str:
    """ns since the epoch as RFC3339 UTC with ``digits`` fractional digits (0 drops the fraction)."""
    text = datetime.fromtimestamp(ns // NS, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return text + (f".{ns % NS:09d}"[: digits + 1] if digits else "") + "Z"


def rfc3339(moment: datetime) -> str:
    """A datetime as RFC3339 UTC (microseconds when it has them); a naive one is read as UTC."""
    return utc(moment).isoformat().replace("+00:00", "Z")


def utc(moment: datetime) -> datetime:
    """Aware UTC; a naive datetime is read as UTC, as ClickHouse's DateTime64(…, 'UTC') values come."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def datetime_from_ns(ns: int) -> datetime:
    """ns since the epoch as an aware UTC datetime, truncated to the microsecond (exact: no float)."""
    return EARLIEST + timedelta(microseconds=ns // 1000)


def parse_instant(value: str | datetime) -> datetime:
    """A query result time as aware UTC: RFC3339 text (an offset-less one is UTC) or a datetime."""
    return utc(value) if isinstance(value, datetime) else datetime_from_ns(
        parse_rfc3339_ns(str(value), zone_required=False))
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
    return datetime_from_ns(ns)


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
