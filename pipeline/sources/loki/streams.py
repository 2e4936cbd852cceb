"""Decoding Loki's answers: ``query_range`` streams and tail pushes into records to ship.

A value that does not decode still becomes an entry (an undecodable record, kept as a reject)
with its timestamp when readable, so the pager can page past it and nothing is lost silently.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import orjson

from pipeline.core.envelopes import HOST_LABELS, UNDECODABLE, EnvelopeError, from_loki_entry, loki_labels_key
from pipeline.core.models import RawRecord
from pipeline.sources.loki.errors import (
    LokiError,
)
from pipeline.sources.shipper import undecodable_record


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
