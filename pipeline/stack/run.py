"""``flows up`` and ``flows worker``: broker (when embedded), migrations, topics, worker, control endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.abc
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

from pipeline.basics.config import Settings
from pipeline.store.baselines import save_baseline
from pipeline.store.clickhouse import migrate, open_client
from pipeline.store.faults import failing_batch_inserts
from pipeline.store.readonly import ReadOnlyQueries
from pipeline.transport.broker import EmbeddedBroker
from pipeline.transport.control import ControlServer, read_stack_file, write_stack_file
from pipeline.transport.kafka import ensure_topics
from pipeline.worker.consumer import Worker
from pipeline.worker.sink import ClickHouseSink

log = logging.getLogger("flows.stack")


def install_stop_signals(stop: asyncio.Event) -> None:
    """SIGINT/SIGTERM ask for a clean stop; a second one exits at once."""
    loop = asyncio.get_running_loop()

    def handler(signum: int) -> None:
        if stop.is_set():
            os._exit(128 + signum)
        log.info("signal %d: stopping", signum)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, handler, sig)


@contextlib.asynccontextmanager
async def embedded_broker(settings: Settings) -> AsyncIterator[Settings]:
    """Start the embedded broker when no bootstrap is configured; yields settings pointing at it."""
    if not settings.embedded_kafka:
        yield settings
        return
    broker = EmbeddedBroker(settings.embedded_kafka_port, settings.run_dir / "broker.log")
    await broker.start()
    try:
        yield settings.model_copy(update={"kafka_bootstrap": broker.bootstrap})
    finally:
        broker.stop()


class _WithoutPandas(importlib.abc.MetaPathFinder):
    """Nothing a running stack does needs pandas, yet pyarrow imports it at its first array (to ask
    whether the data is a pandas object): ~40 MB resident in every worker (docs/performance.md).
    Its import fails here, and pyarrow carries on without pandas as it would were it not installed."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.partition(".")[0] == "pandas":
            raise ModuleNotFoundError("pandas is not loaded in a running stack", name=name)


async def run_stack(settings: Settings, stop: asyncio.Event, *, with_broker: bool = True,
                    started: asyncio.Event | None = None) -> None:
    """Run until ``stop``: the whole pipeline on one machine, or just a worker."""
    if "pandas" not in sys.modules:
        sys.meta_path.insert(0, _WithoutPandas())
    running = read_stack_file(settings)
    if running is not None and running.get("pid") != os.getpid():
        raise RuntimeError(f"a stack is already running (pid {running['pid']}); stop it first")
    settings.home.mkdir(parents=True, exist_ok=True)
    ctx = embedded_broker(settings) if with_broker else contextlib.nullcontext(settings)
    async with ctx as live:
        failures = live.fault_insert_failures
        sink = ClickHouseSink(live, failing_batch_inserts(open_client, failures) if failures else open_client)
        queries = ReadOnlyQueries(live) if live.embedded_clickhouse else None
        control: ControlServer | None = None
        try:
            applied = await sink.call(lambda: migrate(sink.client(), ttl_days=live.ttl_days))
            if applied:
                log.info("migrations applied: %s", ", ".join(applied))
            created = await ensure_topics(live)
            if created:
                log.info("topics created: %s", ", ".join(created))
            worker = Worker(live, sink)
            # The CLI routes queries here only for the embedded store; a server is queried directly.
            query = queries if queries is not None else _server_queries

            async def reattribute(payload: dict[str, Any]) -> dict[str, int]:
                return await worker.repairs.run(int(payload["since_ns"]), int(payload["until_ns"]))

            async def baseline_save(payload: dict[str, Any]) -> dict[str, str]:
                # The query session is read-only; this one fixed write goes through the insert client.
                return await sink.call(lambda: save_baseline(sink.client(), payload))

            actions = {"reattribute": reattribute, **({"baseline_save": baseline_save} if queries else {})}
            control = ControlServer(live, worker.status, query, actions)
            url = await control.start()
            write_stack_file(live, {
                "pid": os.getpid(), "kafka_bootstrap": live.kafka_bootstrap, "control_url": url,
                "token": control.token, "embedded_kafka": settings.embedded_kafka,
                "clickhouse": "embedded" if live.embedded_clickhouse else "server", "started_at": time.time(),
            })
            task = asyncio.create_task(worker.run(stop))
            ready = asyncio.create_task(worker.ready.wait())
            await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
            if started is not None and worker.ready.is_set():
                started.set()
            ready.cancel()
            await task
        finally:
            with contextlib.suppress(FileNotFoundError):
                state = read_stack_file(live)
                if state is None or state.get("pid") == os.getpid():
                    live.stack_file.unlink()
            if control is not None:
                await control.stop()
            if queries is not None:
                queries.close()
            sink.close()


async def _server_queries(sql: str, params: dict[str, Any]) -> Any:
    raise RuntimeError("this worker writes to a ClickHouse server: query the server directly, as a read-only user")
