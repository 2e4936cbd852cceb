"""LogQL as the shipper speaks it: time parameters, durations, and a log query split at its selector.

Pure: no I/O, so the pager's arithmetic is testable without a Loki.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import orjson

from pipeline.basics.timespec import datetime_from_ns, format_rfc3339_ns, rfc3339

NS = 1_000_000_000


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
