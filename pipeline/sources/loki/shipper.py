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

HTTP and websocket I/O live in ``client``; ``logql``, ``errors`` and ``streams`` are pure.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import aiohttp

from pipeline.basics.backoff import Backoff
from pipeline.core.envelopes import loki_labels_key
from pipeline.core.models import RawRecord
from pipeline.sources.checkpoint import Checkpoint
from pipeline.sources.loki.client import LokiClient, TailConnection
from pipeline.sources.loki.errors import (
    LokiError,
    LokiHTTPError,
    max_entries_allowed,
    max_query_length_ns,
)
from pipeline.sources.loki.logql import NS, LogQuery, iso
from pipeline.sources.loki.streams import Entry

log = logging.getLogger("flows.loki")

DEFAULT_LIMIT = 5000  # Loki's default max_entries_limit_per_query
DEFAULT_CHUNK = "720h"  # Loki's default max_query_length is 721h: keep an hour of margin
DEFAULT_CHUNK_NS = 720 * 3600 * NS
MAX_SEEN = 1_000_000  # entries remembered ahead of the position; beyond, a replay is possible (harmless)
T = TypeVar("T")


class Stopped(Exception):  # noqa: N818 - a control-flow signal, not an error
    """A stop was requested while waiting on the network."""


def instant_ranges(instants: Iterable[int], join_ns: int = NS) -> list[tuple[int, int]]:
    """Sorted instants as few ``[lo, hi)`` ranges, joining those closer than ``join_ns``."""
    out: list[tuple[int, int]] = []
    for ts in sorted(set(instants)):
        if out and ts - out[-1][1] < join_ns:
            out[-1] = (out[-1][0], ts + 1)
        else:
            out.append((ts, ts + 1))
    return out


Gap = tuple[int, int, set[tuple[str, int]] | None, bool]
"""A range the tail may have missed: [lo, hi), only these (labels key, ts) or all, clamp lo to the position."""


class RecordSink(Protocol):
    """Where records go: ``pipeline.sources.shipper.RecordProducer``.

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
