"""The ClickHouse side of the worker: one thread owns the client, the event loop never blocks.

chDB (and a blocking HTTP client) would stall the event loop, and chDB allows
one process per data directory, so every ClickHouse call of a process — batch
inserts and the queries ``flows report`` routes through a running stack — goes
through a single-thread executor here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pipeline import metrics
from pipeline.clickhouse import OWNERSHIP_COLUMNS, insert_columns, insert_new_rows
from pipeline.config import Settings
from pipeline.enrich import Batch
from pipeline.models import OwnerEvent

T = TypeVar("T")


def open_client(settings: Settings):
    """A clickhouse-connect client for the configured URL (credentials from settings only)."""
    from pipeline.clickhouse import connect

    return connect(
        settings.effective_clickhouse_url,
        username=settings.clickhouse_user,
        password=settings.clickhouse_password.get_secret_value() if settings.clickhouse_password else None,
        database=settings.clickhouse_database,
        secure_verify=settings.clickhouse_verify,
        ca_cert=str(settings.clickhouse_ca_cert) if settings.clickhouse_ca_cert else None,
    )


def owner_rows(events: list[OwnerEvent]) -> dict[str, list]:
    cols: dict[str, list] = {c: [] for c in OWNERSHIP_COLUMNS}
    for ev in events:
        cols["ip"].append(ev.ip)
        cols["kind"].append(ev.kind)
        cols["namespace"].append(ev.namespace)
        cols["name"].append(ev.name)
        cols["uid"].append(ev.uid)
        cols["workload_kind"].append(ev.workload_kind)
        cols["workload"].append(ev.workload)
        cols["node"].append(ev.node)
        cols["labels"].append(ev.labels)
        cols["valid_from"].append(ev.valid_from_ns // 1000)
        cols["valid_to"].append(None if ev.valid_to_ns is None else ev.valid_to_ns // 1000)
        cols["observed_at"].append(ev.observed_ns // 1000)
        cols["source"].append(ev.source)
    return cols


STORED_OWNERSHIP_SQL = """
SELECT toString(ip) AS ip, kind, uid, latest.1, latest.2, latest.3, latest.4, latest.5, latest.6,
       toUnixTimestamp64Micro(latest.7), if(latest.8 IS NULL, NULL, toUnixTimestamp64Micro(assumeNotNull(latest.8))),
       toUnixTimestamp64Micro(observed), latest.9
FROM (
    SELECT ip, kind, uid, max(observed_at) AS observed,
           argMax((namespace, name, workload_kind, workload, node, labels, valid_from, valid_to, source),
                  observed_at) AS latest
    FROM ownership GROUP BY ip, kind, uid
)
WHERE latest.8 IS NULL OR latest.8 >= now64(6) - toIntervalSecond({history_s:UInt64})
"""


def load_ownership(client: Any, history_ns: int) -> list[OwnerEvent]:
    """The latest state of every stored ownership claim still inside the history window."""
    rows = client.query(STORED_OWNERSHIP_SQL, parameters={"history_s": history_ns // 10**9}).result_rows
    events = []
    for ip, kind, uid, ns, name, wk, wl, node, labels, v_from, v_to, observed, source in rows:
        events.append(OwnerEvent(
            ip=ip[7:] if ip.startswith("::ffff:") and "." in ip else ip, kind=kind, namespace=ns, name=name,
            uid=uid, valid_from_ns=v_from * 1000, valid_to_ns=None if v_to is None else v_to * 1000,
            observed_ns=observed * 1000, workload_kind=wk, workload=wl, node=node, labels=dict(labels),
            source=source))
    return events


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
