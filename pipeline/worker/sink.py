"""The ClickHouse side of the worker: one thread owns the client, the event loop never blocks.

chDB (and a blocking HTTP client) would stall the event loop, and chDB allows
one process per data directory, so every ClickHouse write of a process goes
through a single-thread executor here (the queries ``flows report`` routes
through a running stack have a read-only client of their own: store/readonly.py).

No batch can stall the stream: an error a retry can cure (store.errors) is retried with
backoff; on one that the same rows meet every time, the batch is split in halves until the
rows refused on their own are found, and those are stored in ``rejects`` (stage ``insert``,
the server's error as reason and detail) so the offsets move on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pipeline.basics import metrics
from pipeline.basics.backoff import Backoff
from pipeline.basics.config import Settings
from pipeline.core.enrich import Batch, row_columns
from pipeline.core.flow_rows import FlowRows
from pipeline.core.models import OwnerEvent
from pipeline.core.quarantine import quarantine
from pipeline.core.rows import REJECT_COLUMNS
from pipeline.store.clickhouse import insert_columns, insert_new_rows, open_client
from pipeline.store.errors import InsertError, classify
from pipeline.store.ownership import claim_rows

T = TypeVar("T")
log = logging.getLogger("flows.sink")
# Claims go to ClickHouse this many at a time. A burst (an inventory, the owners topic read again) once
# went as one block of ~500 000 rows: chDB and the driver kept ~110 MB of the worker's memory after it,
# trimmed or not; blocks of 20 000 leave ~12 MB (docs/performance.md).
CLAIMS_PER_INSERT = 20_000


class ClickHouseSink:
    """Idempotent batch writes: rows whose record_id is already stored are dropped (insert_new_rows).

    Ownership rows are keyed by claim, so they keep the plain columnar insert, in blocks of at most
    CLAIMS_PER_INSERT.
    """

    def __init__(self, settings: Settings, client_factory: Callable[[Settings], Any] = open_client) -> None:
        self.settings = settings
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self._factory = client_factory
        self._client: Any = None
        self.last_error = ""
        self._blocked_since: float | None = None

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def client(self) -> Any:
        if self._client is None:
            self._client = self._factory(self.settings)
        return self._client

    def blocked_s(self) -> float:
        """How long inserts have been failing without a success (0 when the last one succeeded)."""
        return 0.0 if self._blocked_since is None else time.monotonic() - self._blocked_since

    def _write(self, batch: Batch, owners: list[OwnerEvent]) -> dict[str, int]:
        client = self.client()
        written = {"flows": 0, "rejects": 0, "ownership": 0, "replayed": 0, "quarantined": 0}
        refused = Batch()  # flows rows the server refused on their own, as rejects
        if batch.flow_ts:
            written["flows"], written["replayed"] = self._isolate(client, "flows", batch.flow_data, batch.flow_ts,
                                                                  refused)
        rows, ts = batch.reject_tuples + refused.reject_tuples, batch.reject_ts + refused.reject_ts
        again = Batch()  # rejects rows refused on their own, with their raw text escaped
        if ts:
            written["rejects"], replayed = self._isolate(client, "rejects", rows, ts, again)
            written["replayed"] += replayed
        if again.reject_ts:  # the last resort: a failure here is retried like an outage
            inserted, replayed = insert_new_rows(client, "rejects", again.rejects, min(again.reject_ts),
                                                 max(again.reject_ts))
            written["rejects"] += inserted
            written["replayed"] += replayed
        written["quarantined"] = refused.reject_rows + again.reject_rows
        for start in range(0, len(owners), CLAIMS_PER_INSERT):
            for table, columns, cols in claim_rows(owners[start:start + CLAIMS_PER_INSERT]):
                insert_columns(client, table, columns, [cols[c] for c in columns])
        written["ownership"] = len(owners)
        return written

    def _isolate(self, client: Any, table: str, rows: FlowRows | list[tuple], ts: list[int],
                 refused: Batch) -> tuple[int, int]:
        """insert_new_rows of ``rows`` (flows: the batch's FlowRows; rejects: row tuples); on a
        deterministic error, the halves alone, down to single rows.

        Returns (inserted, replayed); rows refused on their own go to ``refused``. A transient error
        is raised: the whole batch is retried, and what was stored meanwhile counts as replayed.
        """
        try:
            columns = rows if isinstance(rows, FlowRows) else row_columns(REJECT_COLUMNS, rows)
            return insert_new_rows(client, table, columns, min(ts), max(ts))
        except Exception as exc:  # classified: re-raised unless the rows are to blame
            error = classify(exc)
            if not error.deterministic:
                raise
        if len(rows) == 1 or not error.per_row:
            self._refuse(table, rows, error, refused)
            return 0, 0
        mid = len(rows) // 2
        halves = (rows.slice(0, mid), rows.slice(mid, len(rows))) if isinstance(rows, FlowRows) \
            else (rows[:mid], rows[mid:])
        first = self._isolate(client, table, halves[0], ts[:mid], refused)
        second = self._isolate(client, table, halves[1], ts[mid:], refused)
        return first[0] + second[0], first[1] + second[1]

    @staticmethod
    def _refuse(table: str, rows: FlowRows | list[tuple], error: InsertError, refused: Batch) -> None:
        log.warning("ClickHouse refused %d %s row(s) on their own: %s; stored in rejects (stage insert)",
                    len(rows), table, error.message[:300])
        for row in (rows.rows() if isinstance(rows, FlowRows) else rows):
            quarantine(refused, table, row, error.reason, error.message)

    async def write(self, batch: Batch, owners: list[OwnerEvent], stop: asyncio.Event,
                    abandon: asyncio.Event | None = None) -> dict[str, int] | None:
        """Insert until ClickHouse confirms; transient errors are retried with backoff, forever.

        Returns None only when asked to stop (or to ``abandon`` this batch: its partitions are
        being handed on) before the insert succeeded: no attempt starts after that, and the
        caller must not commit offsets (the batch will be replayed).
        """
        also = () if abandon is None else (abandon,)
        backoff = Backoff(first=0.2, cap=self.settings.insert_retry_max_s, jitter=0.0)  # a few workers: no herd
        while True:
            started = time.perf_counter()
            try:
                written = await self.call(self._write, batch, owners)
            except Exception as exc:  # an outage (or a refusal even rejects cannot take): keep the batch, retry
                metrics.INSERT_FAILURES.inc()
                metrics.INSERT_BLOCKED.set(1)
                if self._blocked_since is None:
                    self._blocked_since = time.monotonic()
                self.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
                self._client = None if not self.settings.embedded_clickhouse else self._client
                if await backoff.wait(stop, *also):
                    return None
                continue
            metrics.INSERT_SECONDS.observe(time.perf_counter() - started)
            metrics.INSERT_BLOCKED.set(0)
            self._blocked_since = None
            self.last_error = ""
            for table in ("flows", "rejects", "ownership"):
                metrics.ROWS_INSERTED.labels(table).inc(written[table])
            metrics.QUARANTINED.inc(written["quarantined"])
            return written

    def close(self) -> None:
        """Wait for the attempt running, then close the client: the embedded engine ends with its
        last connection, and only then may this process open a store at another path."""
        self._executor.shutdown(wait=True)
        if self._client is not None:
            self._client.close()
            self._client = None
