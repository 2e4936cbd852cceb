"""The ClickHouse side of the worker: one thread owns the client, the event loop never blocks.

chDB (and a blocking HTTP client) would stall the event loop, and chDB allows
one process per data directory, so every ClickHouse write of a process goes
through a single-thread executor here (the queries ``flows report`` routes
through a running stack have a read-only client of their own: store/readonly.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pipeline.basics import metrics
from pipeline.basics.config import Settings
from pipeline.core.enrich import Batch
from pipeline.core.models import OwnerEvent
from pipeline.core.rows import OWNERSHIP_COLUMNS
from pipeline.store.clickhouse import insert_columns, insert_new_rows, open_client
from pipeline.store.ownership import owner_rows

T = TypeVar("T")


class ClickHouseSink:
    """Idempotent batch writes: rows whose record_id is already stored are dropped (insert_new_rows).

    Ownership rows are few and keyed by claim, so they keep the plain columnar insert.
    """

    def __init__(self, settings: Settings, client_factory: Callable[[Settings], Any] = open_client) -> None:
        self.settings = settings
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse")
        self._factory = client_factory
        self._client: Any = None
        self.fail_inserts = 0  # test hook: fail the next N insert attempts (simulates an outage)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def client(self) -> Any:
        if self._client is None:
            self._client = self._factory(self.settings)
        return self._client

    def _write(self, batch: Batch, owners: list[OwnerEvent]) -> dict[str, int]:
        if self.fail_inserts > 0:
            self.fail_inserts -= 1
            raise ConnectionError("injected insert failure")
        client = self.client()
        written = {"flows": 0, "rejects": 0, "ownership": 0, "replayed": 0}
        for table, cols, ts in (("flows", batch.flows, batch.flow_ts), ("rejects", batch.rejects, batch.reject_ts)):
            if ts:  # replays are dropped server-side, against the batch's ts span
                written[table], replayed = insert_new_rows(client, table, cols, min(ts), max(ts))
                written["replayed"] += replayed
        if owners:
            cols = owner_rows(owners)
            insert_columns(client, "ownership", OWNERSHIP_COLUMNS, [cols[c] for c in OWNERSHIP_COLUMNS])
            written["ownership"] = len(owners)
        return written

    async def write(self, batch: Batch, owners: list[OwnerEvent], stop: asyncio.Event) -> dict[str, int] | None:
        """Insert until ClickHouse confirms; retries with backoff and never gives up a batch.

        Returns None only when asked to stop before the insert succeeded: the
        caller then must not commit offsets (the batch will be replayed).
        """
        delay = 0.2
        while True:
            started = time.perf_counter()
            try:
                written = await self.call(self._write, batch, owners)
            except Exception as exc:  # any ClickHouse/driver error: keep the batch, back off, retry
                metrics.INSERT_FAILURES.inc()
                metrics.INSERT_BLOCKED.set(1)
                self.last_error = f"{type(exc).__name__}: {str(exc)[:300]}"
                self._client = None if not self.settings.embedded_clickhouse else self._client
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    return None
                except TimeoutError:
                    delay = min(delay * 2, self.settings.insert_retry_max_s)
                    continue
            metrics.INSERT_SECONDS.observe(time.perf_counter() - started)
            metrics.INSERT_BLOCKED.set(0)
            self.last_error = ""
            for table in ("flows", "rejects", "ownership"):
                metrics.ROWS_INSERTED.labels(table).inc(written[table])
            return written

    last_error: str = ""

    def close(self) -> None:
        self._executor.shutdown(wait=True)
