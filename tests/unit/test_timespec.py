"""Query-result times read back through the one RFC3339 home, and written out by the control endpoint."""

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from pipeline.basics.timespec import datetime_from_ns, parse_instant, rfc3339, utc
from pipeline.transport.control import jsonable

UTC_TIMES = st.datetimes(min_value=dt.datetime(1970, 1, 1), max_value=dt.datetime(2100, 1, 1),
                         timezones=st.just(dt.UTC))


@given(UTC_TIMES)
def test_rfc3339_text_reads_back_to_the_same_instant(moment: dt.datetime) -> None:
    assert parse_instant(rfc3339(moment)) == moment
    assert parse_instant(moment.replace(tzinfo=None).isoformat(sep=" ")) == moment  # ClickHouse text: no zone


@given(UTC_TIMES, st.integers(-14 * 60, 14 * 60))
def test_any_offset_becomes_utc(moment: dt.datetime, minutes: int) -> None:
    zoned = moment.astimezone(dt.timezone(dt.timedelta(minutes=minutes)))
    assert parse_instant(zoned) == parse_instant(zoned.isoformat()) == moment
    assert utc(moment.replace(tzinfo=None)) == moment  # naive is UTC, whatever the host's zone


def test_nanoseconds_truncate_to_the_microsecond() -> None:
    assert datetime_from_ns(1_795_000_000_123_456_789) == dt.datetime(2026, 11, 18, 11, 6, 40, 123456, dt.UTC)
    assert parse_instant("2026-11-18T11:06:40.123456789Z") == datetime_from_ns(1_795_000_000_123_456_789)


def test_control_endpoint_times() -> None:
    moment = dt.datetime(2026, 11, 18, 11, 6, 40, 5, dt.UTC)
    assert jsonable(moment) == jsonable(moment.replace(tzinfo=None)) == "2026-11-18T11:06:40.000005Z"
    tokyo = moment.astimezone(dt.timezone(dt.timedelta(hours=9)))
    assert jsonable(tokyo) == "2026-11-18T20:06:40.000005+09:00"  # a column in another zone keeps it
