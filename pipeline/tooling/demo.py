"""``flows demo``: a generated cluster's journal through the real pipeline, end to end."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from pipeline.analysis.reports import fanout, summary
from pipeline.basics.config import Settings
from pipeline.core.claims import events_from_list
from pipeline.core.envelopes import iter_file_records
from pipeline.core.models import Progress
from pipeline.sources.shipper import publish_owner_events, ship_records
from pipeline.stack.run import run_stack
from pipeline.tooling.synthetic import Expected, generate
from pipeline.transport.broker import free_port
from pipeline.transport.control import StackClient, read_stack_file


async def wait_for_records(settings: Settings, want: int, timeout: float = 120.0) -> dict[str, Any]:
    """Poll the summary view until ``want`` distinct records and rejects are stored."""
    deadline = time.monotonic() + timeout
    row: dict[str, Any] = {}
    while time.monotonic() < deadline:
        row = await summary(settings)
        if int(row.get("records", 0)) + int(row.get("rejected", 0)) >= want:
            return row
        await asyncio.sleep(0.3)
    raise RuntimeError(f"timed out waiting for {want} records; summary so far: {row}")


async def wait_for_owners(settings: Settings, claims: int, timeout: float = 60.0) -> None:
    """Wait until the worker's registry holds the published claims, so records resolve."""
    state = read_stack_file(settings)
    if state is None:
        raise RuntimeError("no running stack")
    client = StackClient(state)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (await client.status()).get("registry", {}).get("claims", 0) >= claims:
            return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the worker did not apply {claims} ownership claims within {timeout}s")


async def run_demo(records: int, namespaces: int, home: Path | None, console: Console
                   ) -> tuple[list[dict[str, Any]], dict[str, Any], Expected]:
    with contextlib.ExitStack() as stack:
        if home is None:
            home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flows-demo-")))
        settings = Settings(home=home, kafka_bootstrap=None, clickhouse_url=None,
                            embedded_kafka_port=free_port(), batch_max_s=0.3)
        console.print(f"generating a {namespaces}-namespace cluster with {records} journal records …")
        corpus = generate(seed=7, namespaces=namespaces, records=records)
        stop, started = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(run_stack(settings, stop, started=started))
        waiter = asyncio.create_task(started.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises the startup error
        try:
            console.print("stack up (embedded broker + worker + chDB); loading inventory and shipping …")
            from pipeline.transport.kafka import bootstrap

            live = settings.model_copy(update={"kafka_bootstrap": bootstrap(settings)})
            now = time.time_ns()
            events, _ = events_from_list(corpus.inventory, now)
            await publish_owner_events(live, events, Progress("inventory", now, now))  # a complete snapshot
            await wait_for_owners(settings, len({ev.key for ev in events}))
            await ship_records(live, iter_file_records("journal-json", iter(corpus.journal)), "journal-json")
            want = corpus.expected.records + corpus.expected.rejected
            summary_row = await wait_for_records(settings, want)
            rows = await fanout(settings, None, None)
            return rows, summary_row, corpus.expected
        finally:
            stop.set()
            await task
