"""``flows up|worker|status|migrate|sql``: run the pipeline, ask it how it is, and query its store."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import aiohttp
import orjson
import typer

from pipeline.analysis.reports import as_dicts, render
from pipeline.basics.config import Settings
from pipeline.cli import common as cli
from pipeline.cli.common import Format
from pipeline.transport.control import StackClient, read_stack_file


@cli.app.command()
def up(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Run the whole pipeline in the foreground (embedded broker unless FLOWS_KAFKA_BOOTSTRAP is set)."""
    from pipeline.stack.run import install_stop_signals, run_stack

    cli.setup_logging(verbose)
    settings = cli.load_settings()

    async def main() -> None:
        stop, started = asyncio.Event(), asyncio.Event()
        install_stop_signals(stop)

        async def announce() -> None:
            await started.wait()
            cli.err.print(f"[green]ready[/green]: ship with `flows ship file …`, query with `flows report fanout`; "
                          f"home {settings.home}")

        notice = asyncio.create_task(announce())
        try:
            await run_stack(settings, stop, with_broker=True, started=started)
        finally:
            notice.cancel()

    cli.run(main())


@cli.app.command()
def worker(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Run one worker against FLOWS_KAFKA_BOOTSTRAP and FLOWS_CLICKHOUSE_URL (scale out with more)."""
    from pipeline.stack.run import install_stop_signals, run_stack

    cli.setup_logging(verbose)
    settings = cli.load_settings()
    if settings.embedded_kafka:
        raise cli.fail("`flows worker` needs FLOWS_KAFKA_BOOTSTRAP; for everything on one machine use `flows up`")

    async def main() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        await run_stack(settings, stop, with_broker=False)

    cli.run(main())


@cli.app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    wait: Annotated[float, typer.Option(min=0, help="seconds to wait for a starting stack to be ready "
                                                    "(e.g. right after `flows up &`)")] = 0,
) -> None:
    """Exit 0 when a running stack is ready to accept records; show lag and counters."""
    settings = cli.load_settings()
    deadline = time.monotonic() + wait
    while True:
        state, info = _stack_status(settings)
        if info.get("ready") or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    if state is None:
        raise cli.fail(f"no running stack found under {settings.home} (start one with `flows up`)", 1)
    if not info:
        raise cli.fail("the stack's control endpoint does not answer", 1)
    info["kafka_bootstrap"] = state.get("kafka_bootstrap")
    if as_json:
        cli.out.print_json(orjson.dumps(info).decode())
    else:
        totals = info.get("totals", {})
        blocked = info.get("insert_blocked")
        state = "[green]ready" if info.get("ready") else "[red]blocked" if blocked else "[yellow]starting"
        cli.out.print(f"{state}[/] · kafka "
                      f"{info['kafka_bootstrap']} · lag {sum(info.get('lag', {}).values())} · stored "
                      f"{totals.get('stored', 0)} · rejected {totals.get('rejected', 0)} · ignored "
                      f"{totals.get('ignored', 0)} · duplicates "
                      f"{totals.get('duplicate', 0) + totals.get('replayed', 0)} · owned IPs "
                      f"{info.get('registry', {}).get('ips', 0)}", highlight=False)
        c = info.get("conservation", {})
        cli.out.print(f"received {c.get('received', 0)} = stored {totals.get('stored', 0)} + replayed "
                      f"{totals.get('replayed', 0)} + refused by ClickHouse {totals.get('quarantined', 0)} + rejected "
                      f"{totals.get('rejected', 0)} + ignored {totals.get('ignored', 0)} + duplicates "
                      f"{totals.get('duplicate', 0)} + undecodable {totals.get('envelope_rejected', 0)} + in flight "
                      f"{c.get('pending', 0)}", highlight=False)
        released = info.get("hold_released", {})
        watermark = info.get("owners_watermark_ns", 0)
        behind = f"{max(0, time.time_ns() - watermark) / 1e9:.0f} s behind now" if watermark else "none yet"
        cli.out.print(f"attribution: held {info.get('held_records', 0)} (released attributed "
                      f"{released.get('attributed', 0)}, unattributed {released.get('unattributed', 0)}) · "
                      f"repaired {info.get('repaired_rows', 0)} · ownership watermark {behind}", highlight=False)
        if info.get("last_insert_error"):
            cli.out.print(f"[red]inserts failing, retrying:[/red] {info['last_insert_error']}", highlight=False)
    raise typer.Exit(0 if info.get("ready") else 1)


def _stack_status(settings: Settings) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The stack file and what its control endpoint says ({} when it does not answer)."""
    state = read_stack_file(settings)
    if state is None:
        return None, {}
    try:
        return state, asyncio.run(StackClient(state).status())
    except (TimeoutError, OSError, ValueError, RuntimeError, aiohttp.ClientError):
        return state, {}


@cli.app.command()
def migrate() -> None:
    """Apply sql/ migrations to FLOWS_CLICKHOUSE_URL (idempotent)."""
    from pipeline.store.clickhouse import migrate as apply
    from pipeline.store.clickhouse import open_client
    from pipeline.store.edge_seals import seal_edges

    settings = cli.load_settings()
    if settings.embedded_clickhouse and read_stack_file(settings):
        cli.out.print("the running stack applied migrations at start; nothing to do")
        return
    client = open_client(settings)
    applied = apply(client, ttl_days=settings.ttl_days)
    seal_edges(client)  # history of days no worker sealed yet (e.g. right after an upgrade)
    cli.out.print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


@cli.app.command()
def sql(query: Annotated[str, typer.Argument(help="ClickHouse SQL")], fmt: Format = "table") -> None:
    """Run ad-hoc SQL (through the running stack when it holds the embedded store)."""
    from pipeline.store.queries import run_query

    cli.check_format(fmt)
    settings = cli.load_settings()
    columns, rows = cli.run(run_query(settings, query, {}))
    text = render(as_dicts(columns, rows), fmt, console=cli.out if fmt == "table" else None)
    if text is not None:
        print(text)
