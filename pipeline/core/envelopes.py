"""Decoding the shapes log records arrive in, and the raw topic's message codec.

Inputs: ``journalctl -o json`` lines, Loki ``query_range`` responses, fluent-bit's
Kafka JSON records, syslog/kern.log text and bare lines. Each becomes a
``RawRecord`` with a stable ``record_id``. A packet is one record whatever path
brought it, so where the source carries them the identity is the line itself:
(host, time to the microsecond, message), ``line_record_id``. The same kernel
line read from the journal, shipped by fluent-bit or backfilled from Loki
(promtail and alloy keep the journal's µs time and MESSAGE) is then one row.
Without a host the source's own identity is kept (journal cursor; Loki
timestamp, labels and line); bare lines have no time and are identified by
(host, text). README.md, "Getting lines in", lists the rule per source.

On the raw topic our shippers send several records per Kafka message (the
per-message framework cost is the throughput ceiling, see ARCHITECTURE.md);
fluent-bit sends one JSON record per message. ``decode_message`` accepts both;
``decode_columns`` reads a whole fetch of our envelopes at once, into columns.
Pure code: no I/O.
"""

from __future__ import annotations

import functools
import hashlib
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from pipeline.basics.timespec import parse_rfc3339_ns
from pipeline.core.models import RawRecord, RecordColumns

ENVELOPE_VERSION = 1
MAX_MESSAGE_CHARS = 64 * 1024  # longer messages travel truncated; the worker rejects them as too_long
MAX_JSON_BYTES = 16 * 1024 * 1024
FILE_FORMATS = ("journal-json", "loki-json", "fluentbit-json", "syslog", "raw")
UNDECODABLE = "undecodable:"  # source prefix of input a shipper could not decode, shipped to be kept as a reject
HOST_LABELS = ("hostname", "host", "node", "node_name", "nodename", "instance")
"""Loki stream labels read as the host, the first present wins (``flows ship loki --host-label``)."""


class EnvelopeError(ValueError):
    """A record or message that cannot be decoded; kept with its reason, never fatal."""

    def __init__(self, reason: str, detail: str = "", raw: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.raw = raw


def record_id(*parts: object) -> str:
    """Stable 128-bit identity (hex) of a record from what identifies it at its source."""
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(str(part).encode("utf-8", "surrogatepass"))
        h.update(b"\x1f")
    return h.hexdigest()


def line_record_id(host: str, ts_ns: int, message: str) -> str:
    """Identity of a logged line whatever path brought it: (host, time in µs, message).

    Microseconds because journald keeps µs: Loki's ns from promtail/alloy are those µs * 1000
    and fluent-bit's double rounds back to them. The host is compared case-insensitively and
    the message without surrounding whitespace (some shippers drop the kernel's trailing space).
    """
    return record_id("line", host.lower(), ts_ns // 1000, message.strip())


def _clip(message: str) -> tuple[str, int | None]:
    if len(message) > MAX_MESSAGE_CHARS:
        return message[:MAX_MESSAGE_CHARS], len(message)
    return message, None


def _journal_message(value: object) -> str:
    """journalctl prints MESSAGE as a byte array when it is not valid UTF-8."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(b, int) and 0 <= b < 256 for b in value):
        return bytes(value).decode("utf-8", "replace")
    raise EnvelopeError("bad_message", f"MESSAGE is {type(value).__name__}")


def _loads(line: str | bytes) -> object:
    if len(line) > MAX_JSON_BYTES:
        raise EnvelopeError("too_large", f"{len(line)} bytes of JSON")
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise EnvelopeError("bad_json", str(exc)) from None


def from_journal_entry(entry: object) -> RawRecord:
    """A ``journalctl -o json`` object (or a fluent-bit record carrying ``__CURSOR``)."""
    if not isinstance(entry, dict):
        raise EnvelopeError("bad_entry", "journal entry is not a JSON object")
    if "MESSAGE" not in entry:
        raise EnvelopeError("missing_field", "journal entry has no MESSAGE")
    message = _journal_message(entry["MESSAGE"])
    try:
        ts_ns = int(entry["__REALTIME_TIMESTAMP"]) * 1000
    except (KeyError, TypeError, ValueError):
        raise EnvelopeError("bad_timestamp", "journal entry has no valid __REALTIME_TIMESTAMP") from None
    host = str(entry.get("_HOSTNAME", ""))
    cursor = entry.get("__CURSOR")
    if not host and isinstance(cursor, str) and cursor:
        rid = record_id("journal", cursor)  # no host to match other paths: the cursor is unique
    else:
        rid = line_record_id(host, ts_ns, message)
    return RawRecord(rid, ts_ns, host, message, "journal")


def _fluentbit_ts(entry: dict) -> int:
    for key in ("@timestamp", "timestamp", "date", "time"):
        if key in entry:
            value = entry[key]
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                # a double carries about µs precision: round there instead of inventing ns digits
                return round(value * 1_000_000) * 1000 if value < 1e11 else int(value)
            if isinstance(value, str):
                return parse_rfc3339_ns(value, zone_required=False)
    if "__REALTIME_TIMESTAMP" in entry or "_SOURCE_REALTIME_TIMESTAMP" in entry:
        raw = entry.get("_SOURCE_REALTIME_TIMESTAMP") or entry.get("__REALTIME_TIMESTAMP")
        try:
            return int(raw) * 1000
        except (TypeError, ValueError):
            pass
    raise EnvelopeError("bad_timestamp", "fluent-bit record has no usable timestamp key")


def from_fluentbit(entry: object) -> RawRecord:
    """fluent-bit systemd input through its Kafka output (``format json``)."""
    if not isinstance(entry, dict) or "MESSAGE" not in entry:
        raise EnvelopeError("bad_entry", "fluent-bit record is not an object with MESSAGE")
    if isinstance(entry.get("__CURSOR"), str) and "__REALTIME_TIMESTAMP" in entry:
        rec = from_journal_entry(entry)
        rec.source = "fluent-bit"
        return rec
    message = _journal_message(entry["MESSAGE"])
    try:
        ts_ns = _fluentbit_ts(entry)
    except ValueError as exc:
        raise EnvelopeError("bad_timestamp", str(exc)) from None
    host = str(entry.get("_HOSTNAME", entry.get("hostname", "")))
    rid = line_record_id(host, ts_ns, message) if host else record_id(
        "fluent-bit", host, entry.get("_BOOT_ID", ""), ts_ns, message)
    return RawRecord(rid, ts_ns, host, message, "fluent-bit")


def loki_host(labels: dict[str, str], host_labels: Sequence[str] = HOST_LABELS) -> str:
    for key in host_labels:
        if labels.get(key):
            return labels[key]
    return ""


def loki_labels_key(labels: dict[str, str]) -> str:
    """Canonical text of a stream's label set (order-independent)."""
    return ",".join(f"{k}={v!r}" for k, v in sorted(labels.items()))


def from_loki_entry(labels: dict[str, str], ts: object, line: object,
                    host_labels: Sequence[str] = HOST_LABELS) -> RawRecord:
    """One Loki stream value, identified as the line it carries (host, time, message).

    The line is the journal's MESSAGE (promtail and alloy ship journald that way, at the
    entry's realtime), or the whole entry as JSON (promtail ``json: true``), whose MESSAGE
    and _HOSTNAME are then used. Without a host, the identity is the Loki entry's own:
    (timestamp, stream labels, line).
    """
    if not isinstance(line, str):
        raise EnvelopeError("bad_entry", "Loki line is not a string")
    try:
        ts_ns = int(ts)  # 19-digit nanoseconds as a string
    except (TypeError, ValueError):
        raise EnvelopeError("bad_timestamp", f"Loki timestamp {ts!r}") from None
    message, host = line, ""
    if line.startswith("{") and '"MESSAGE"' in line:
        try:
            inner = orjson.loads(line)
            if isinstance(inner, dict) and isinstance(inner.get("MESSAGE"), str):
                message = inner["MESSAGE"]
                host = inner["_HOSTNAME"] if isinstance(inner.get("_HOSTNAME"), str) else ""
        except orjson.JSONDecodeError:
            pass
    host = host or loki_host(labels, host_labels)
    rid = line_record_id(host, ts_ns, message) if host else record_id("loki", ts_ns, loki_labels_key(labels), line)
    return RawRecord(rid, ts_ns, host, message, "loki", dict(labels))


def iter_loki_response(doc: object) -> Iterator[RawRecord | EnvelopeError]:
    """Records of a ``query_range``/``query`` response with resultType streams."""
    data = doc.get("data") if isinstance(doc, dict) else None
    if not isinstance(data, dict) or data.get("resultType") != "streams":
        yield EnvelopeError("bad_loki_response", "not a Loki streams response")
        return
    result = data.get("result")
    if not isinstance(result, list):
        yield EnvelopeError("bad_loki_response", "data.result is not a list")
        return
    for stream in result:
        labels = stream.get("stream") if isinstance(stream, dict) else None
        values = stream.get("values") if isinstance(stream, dict) else None
        if not isinstance(labels, dict) or not isinstance(values, list):
            yield EnvelopeError("bad_loki_stream", "stream without labels or values")
            continue
        labels = {str(k): str(v) for k, v in labels.items()}
        for value in values:
            if not isinstance(value, list) or len(value) < 2:
                yield EnvelopeError("bad_entry", f"Loki value {str(value)[:80]}")
                continue
            try:
                yield from_loki_entry(labels, value[0], value[1])
            except EnvelopeError as exc:
                yield exc


_MONTHS = {m: i for i, m in enumerate(
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), start=1)}
_BSD_SYSLOG = re.compile(r"^([A-Z][a-z]{2}) +(\d{1,2}) (\d\d):(\d\d):(\d\d) (\S+) (.*)$", re.S)
_RFC3339_SYSLOG = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)) (\S+) (.*)$", re.S)
_TAG = re.compile(r"^kernel(?:\[\d+\])?: ?")


def from_syslog_line(line: str, now: datetime | None = None) -> RawRecord:
    """kern.log/syslog text: BSD form (no year: the latest not in the future) or RFC3339 form."""
    line = line.rstrip("\r\n")
    m = _RFC3339_SYSLOG.match(line)
    if m:
        try:
            ts_ns = parse_rfc3339_ns(m.group(1), zone_required=False)
        except ValueError as exc:
            raise EnvelopeError("bad_timestamp", str(exc), line) from None
        host, rest = m.group(2), m.group(3)
    else:
        m = _BSD_SYSLOG.match(line)
        if not m or m.group(1) not in _MONTHS:
            raise EnvelopeError("bad_syslog", "no syslog timestamp and host", line)
        now = now or datetime.now(UTC)
        mon, day, hh, mm, ss = _MONTHS[m.group(1)], int(m.group(2)), *map(int, m.group(3, 4, 5))
        try:
            dt = datetime(now.year, mon, day, hh, mm, ss, tzinfo=UTC)
            if (dt - now).days >= 1:
                dt = dt.replace(year=now.year - 1)
        except ValueError as exc:
            raise EnvelopeError("bad_timestamp", str(exc), line) from None
        ts_ns = int(dt.timestamp()) * 1_000_000_000
        host, rest = m.group(6), m.group(7)
    message = _TAG.sub("", rest, count=1)
    return RawRecord(line_record_id(host, ts_ns, message), ts_ns, host, message, "syslog")


def from_raw_line(line: str, host: str = "", received_ns: int | None = None) -> RawRecord:
    """A bare message: no time of its own, so identity is (host, text) and identical lines are one record.

    ``received_ns`` (default: now) is its time; a replay is recognised only when it carries the
    same time again (the worker looks for stored ids around the batch's times).
    """
    line = line.rstrip("\r\n")
    ts_ns = received_ns if received_ns is not None else time.time_ns()
    return RawRecord(record_id("raw", host, line), ts_ns, host, line, "raw")


def iter_file_records(fmt: str, lines: Iterable[str], host: str = "",
                      raw_time_ns: int | None = None) -> Iterator[RawRecord | EnvelopeError]:
    """Decode the lines of an input file in one of ``FILE_FORMATS``; raw lines get ``raw_time_ns``."""
    if fmt == "loki-json":
        buffered = list(lines)
        text = "".join(buffered)
        try:
            docs: list[object] = [_loads(text)]
        except EnvelopeError:
            docs = []
            for line in buffered:
                if line.strip():
                    try:
                        docs.append(_loads(line))
                    except EnvelopeError as exc:
                        exc.raw = line
                        yield exc
        for doc in docs:
            yield from iter_loki_response(doc)
        return
    now = datetime.now(UTC)
    for line in lines:
        if not line.strip():
            continue
        try:
            if fmt == "journal-json":
                yield from_journal_entry(_loads(line))
            elif fmt == "fluentbit-json":
                yield from_fluentbit(_loads(line))
            elif fmt == "syslog":
                yield from_syslog_line(line, now)
            elif fmt == "raw":
                yield from_raw_line(line, host, raw_time_ns)
            else:
                raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FILE_FORMATS)}")
        except EnvelopeError as exc:
            exc.raw = exc.raw or line
            yield exc


def sniff_format(first_line: str) -> str:
    """Guess a file's format from its first non-empty line."""
    s = first_line.lstrip()
    if s.startswith("{"):
        if '"__CURSOR"' in s or '"__REALTIME_TIMESTAMP"' in s:
            return "journal-json"
        if '"resultType"' in s or '"data"' in s or s.strip() == "{":
            return "loki-json"
        if '"MESSAGE"' in s:
            return "fluentbit-json"
        return "loki-json"
    if _RFC3339_SYSLOG.match(s) or _BSD_SYSLOG.match(s):
        return "syslog"
    return "raw"


# --- raw topic codec -------------------------------------------------------

def encode_batch(records: list[RawRecord]) -> bytes:
    """One Kafka message carrying several records (schemas/calico.raw.v1.json)."""
    out = []
    for r in records:
        msg, clipped_len = _clip(r.message)
        orig_len = r.orig_len or clipped_len
        item: dict[str, object] = {"id": r.record_id, "ts": r.ts_ns, "host": r.host, "msg": msg, "src": r.source}
        if r.labels:
            item["labels"] = r.labels
        if orig_len is not None:
            item["len"] = orig_len
        out.append(item)
    return orjson.dumps({"v": ENVELOPE_VERSION, "records": out})


_HEX32 = re.compile(r"[0-9a-f]{32}")


def _from_item(item: object) -> RawRecord:
    if not isinstance(item, dict):
        raise EnvelopeError("bad_record", "record is not an object")
    msg, ts, host = item.get("msg"), item.get("ts"), item.get("host", "")
    if not isinstance(msg, str) or not isinstance(ts, int) or isinstance(ts, bool) or not isinstance(host, str):
        raise EnvelopeError("bad_record", "record needs msg (string), ts (integer ns), host (string)")
    rid = item.get("id")
    if not isinstance(rid, str) or not _HEX32.fullmatch(rid):
        rid = record_id("unkeyed", host, ts, msg)
    labels = item.get("labels")
    labels = {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else None
    orig_len = item.get("len")
    orig_len = orig_len if isinstance(orig_len, int) and orig_len > len(msg) else None
    return RawRecord(rid, ts, host, msg, str(item.get("src", "unknown"))[:32], labels, orig_len)


def decode_message(value: bytes | None, kafka_ts_ms: int = 0) -> tuple[list[RawRecord], list[EnvelopeError]]:
    """Decode one raw-topic message: our batch envelope, a fluent-bit record, or a bare text line."""
    if value is None:
        return [], [EnvelopeError("empty_message", "Kafka message without a value")]
    if len(value) > MAX_JSON_BYTES:
        return [], [EnvelopeError("too_large", f"{len(value)} bytes", value[:MAX_MESSAGE_CHARS].decode(
            "utf-8", "replace"))]
    stripped = value.lstrip()
    if not stripped.startswith(b"{"):
        text = value.decode("utf-8", "replace")
        try:
            return [from_raw_line(text, received_ns=kafka_ts_ms * 1_000_000)], []
        except EnvelopeError as exc:
            return [], [exc]
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return [], [EnvelopeError("bad_json", str(exc), value[:MAX_MESSAGE_CHARS].decode("utf-8", "replace"))]
    if isinstance(doc, dict) and "records" in doc:
        if doc.get("v") != ENVELOPE_VERSION or not isinstance(doc["records"], list):
            return [], [EnvelopeError("bad_envelope", f"unsupported envelope version {doc.get('v')!r}")]
        records: list[RawRecord] = []
        errors: list[EnvelopeError] = []
        for item in doc["records"]:
            try:
                records.append(_from_item(item))
            except EnvelopeError as exc:
                exc.raw = exc.raw or orjson.dumps(item).decode()[:MAX_MESSAGE_CHARS]
                errors.append(exc)
        return records, errors
    try:
        return [from_fluentbit(doc)], []
    except EnvelopeError as exc:
        exc.raw = value[:MAX_MESSAGE_CHARS].decode("utf-8", "replace")
        return [], [exc]


# --- a fetch of envelopes at once ------------------------------------------

_ENVELOPE_START = b'{"v":%d,"records":[' % ENVELOPE_VERSION  # how encode_batch begins every message


@functools.cache
def _envelope_reader() -> tuple[Any, Any, Any, Any]:
    """pyarrow's JSON reader under the envelope's exact schema (imported on first use, as the insert path does)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.json as pj

    item = pa.struct([("id", pa.string()), ("ts", pa.int64()), ("host", pa.string()), ("msg", pa.string()),
                      ("src", pa.string())])
    schema = pa.schema([("v", pa.int64()), ("records", pa.list_(item))])
    return pa, pc, pj, pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")


def decode_columns(values: Sequence[bytes | None]) -> tuple[RecordColumns, list[int]] | None:
    """The records of a fetch's messages decoded at once, and how many each message holds.

    Only when every message is an envelope as our shippers write it (``encode_batch``: version,
    then records of id, ts, host, msg and src; no labels, no ``len``) and pyarrow's JSON reader
    takes the lot under that exact schema; otherwise None, and the caller decodes message by
    message: ``decode_message`` decides everything this does not vouch for. Where this answers,
    it answers as ``decode_message`` would (tests/unit/test_envelopes.py, fuzzed): the reader
    refuses what orjson would read otherwise (a repeated key, a number where text belongs, an
    integer past 64 bits, a fraction, a bad escape), and every field must be present, the id 32
    lowercase hex digits and the source at most 32 characters, as ``_from_item`` keeps them.
    Measured (docs/performance.md): one-record messages 3.3 -> 1.8 µs a record, 500-record
    messages 1.6 -> 1.3, and no ``RawRecord`` is built for a record the batch path takes.
    """
    # (No scan for labels or len, the fields outside the schema: the reader stops at the first one, and
    # two substring scans of every 500-record message were 7 % of the worker's main thread.)
    if not values or not all(type(v) is bytes and v.startswith(_ENVELOPE_START) and len(v) <= MAX_JSON_BYTES
                             for v in values):
        return None
    data = b"\n".join(values)  # one message a line: none may hold a line break of its own
    if data.count(b"\n") != len(values) - 1 or b"\r" in data:
        return None
    pa, pc, pj, parse = _envelope_reader()
    try:
        table = pj.read_json(pa.BufferReader(data), parse_options=parse,
                             read_options=pj.ReadOptions(use_threads=False, block_size=len(data) + 1))
        versions = table.column("v")
        if table.num_rows != len(values) or versions.null_count or not pc.all(
                pc.equal(versions, ENVELOPE_VERSION)).as_py():
            return None
        lists = table.column("records").combine_chunks()
        items = lists.flatten()
        if lists.null_count or items.null_count:
            return None
        fields = [items.field(i) for i in range(5)]
        if any(f.null_count for f in fields) or not _vouched(pc, fields[0], fields[4]):
            return None
        ids, ts, hosts, msgs, sources = (f.to_pylist() for f in fields)
    except (pa.ArrowException, ValueError):  # UnicodeDecodeError included: orjson refuses those bytes too
        return None
    return RecordColumns(ids, ts, hosts, msgs, sources), lists.value_lengths().to_pylist()


def prepare_columns() -> None:
    """Load pyarrow's JSON reader and compute kernels now: their first use costs ~0.2 s, which would
    otherwise fall on a worker's first fetch."""
    decode_columns([encode_batch([RawRecord("0" * 32, 0, "", "", "journal")])])


def _vouched(pc: Any, ids: Any, sources: Any) -> bool:
    """Ids that ``_from_item`` keeps as they are, sources it does not cut."""
    if not len(ids):
        return True
    return bool(pc.all(pc.match_substring_regex(ids, "^[0-9a-f]{32}$")).as_py()) and \
        pc.max(pc.utf8_length(sources)).as_py() <= 32
