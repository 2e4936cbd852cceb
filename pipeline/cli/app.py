"""The ``flows`` command line."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.analysis import reports
from pipeline.cli.common import Format, check_format, err, fail, load_settings, out, run, setup_logging
from pipeline.core.envelopes import FILE_FORMATS, iter_file_records, sniff_format
from pipeline.transport.control import StackClient, read_stack_file

app = typer.Typer(help="Egress observatory: Calico packet logs -> Kafka -> ClickHouse.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
report_app = typer.Typer(help="Reports over the SQL views.", no_args_is_help=True)
ship_app = typer.Typer(help="Ship log records to the raw topic.", no_args_is_help=True)
inventory_app = typer.Typer(help="Load cluster inventory (ownership of IPs).", no_args_is_help=True)
topics_app = typer.Typer(help="Kafka topics.", no_args_is_help=True)
app.add_typer(report_app, name="report")
app.add_typer(ship_app, name="ship")
app.add_typer(inventory_app, name="inventory")
app.add_typer(topics_app, name="topics")
baseline_app = typer.Typer(help="Frozen allowlists to compute drift against.", no_args_is_help=True)
app.add_typer(baseline_app, name="baseline")
watch_app = typer.Typer(help="Follow live sources of ownership.", no_args_is_help=True)
app.add_typer(watch_app, name="watch")

@app.command()
def up(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Run the whole pipeline in the foreground (embedded broker unless FLOWS_KAFKA_BOOTSTRAP is set)."""
    from pipeline.stack.run import install_stop_signals, run_stack

    setup_logging(verbose)
    settings = load_settings()

    async def main() -> None:
        stop, started = asyncio.Event(), asyncio.Event()
        install_stop_signals(stop)

        async def announce() -> None:
            await started.wait()
            err.print(f"[green]ready[/green]: ship with `flows ship file …`, query with `flows report fanout`; "
                      f"home {settings.home}")

        notice = asyncio.create_task(announce())
        try:
            await run_stack(settings, stop, with_broker=True, started=started)
        finally:
            notice.cancel()

    run(main())


@app.command()
def worker(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    """Run one worker against FLOWS_KAFKA_BOOTSTRAP and FLOWS_CLICKHOUSE_URL (scale out with more)."""
    from pipeline.stack.run import install_stop_signals, run_stack

    setup_logging(verbose)
    settings = load_settings()
    if settings.embedded_kafka:
        raise fail("`flows worker` needs FLOWS_KAFKA_BOOTSTRAP; for everything on one machine use `flows up`")

    async def main() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        await run_stack(settings, stop, with_broker=False)

    run(main())


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Exit 0 when a running stack is ready to accept records; show lag and counters."""
    settings = load_settings()
    state = read_stack_file(settings)
    if state is None:
        raise fail(f"no running stack found under {settings.home} (start one with `flows up`)", 1)
    try:
        info = run(StackClient(state).status())
    except typer.Exit:
        raise fail("the stack's control endpoint does not answer", 1) from None
    info["kafka_bootstrap"] = state.get("kafka_bootstrap")
    if as_json:
        out.print_json(orjson.dumps(info).decode())
    else:
        totals = info.get("totals", {})
        out.print(f"{'[green]ready' if info.get('ready') else '[yellow]starting'}[/] · kafka "
                  f"{info['kafka_bootstrap']} · lag {sum(info.get('lag', {}).values())} · stored "
                  f"{totals.get('stored', 0)} · rejected {totals.get('rejected', 0)} · ignored "
                  f"{totals.get('ignored', 0)} · duplicates {totals.get('duplicate', 0) + totals.get('replayed', 0)}"
                  f" · owned IPs {info.get('registry', {}).get('ips', 0)}", highlight=False)
        c = info.get("conservation", {})
        out.print(f"received {c.get('received', 0)} = stored {totals.get('stored', 0)} + replayed "
                  f"{totals.get('replayed', 0)} + rejected {totals.get('rejected', 0)} + ignored "
                  f"{totals.get('ignored', 0)} + duplicates {totals.get('duplicate', 0)} + undecodable "
                  f"{totals.get('envelope_rejected', 0)} + in flight {c.get('pending', 0)}", highlight=False)
        if info.get("last_insert_error"):
            out.print(f"[red]inserts failing, retrying:[/red] {info['last_insert_error']}", highlight=False)
    raise typer.Exit(0 if info.get("ready") else 1)


@app.command()
def migrate() -> None:
    """Apply sql/ migrations to FLOWS_CLICKHOUSE_URL (idempotent)."""
    from pipeline.store.clickhouse import migrate as apply
    from pipeline.store.clickhouse import open_client
    from pipeline.store.edge_seals import seal_edges

    settings = load_settings()
    if settings.embedded_clickhouse and read_stack_file(settings):
        out.print("the running stack applied migrations at start; nothing to do")
        return
    client = open_client(settings)
    applied = apply(client, ttl_days=settings.ttl_days)
    seal_edges(client)  # history of days no worker sealed yet (e.g. right after an upgrade)
    out.print(f"applied: {', '.join(applied)}" if applied else "schema is up to date")


@topics_app.command("create")
def topics_create() -> None:
    """Create the raw and owners topics with the configured partitions."""
    from pipeline.transport.kafka import ensure_topics

    created = run(ensure_topics(load_settings()))
    out.print(f"created: {', '.join(created)}" if created else "topics exist")


def _read_lines(paths: list[str]) -> Iterator[tuple[str, Iterator[str]]]:
    for p in paths:
        if p == "-":
            yield "-", iter(io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace"))
        else:
            try:
                fh = open(p, encoding="utf-8", errors="replace")  # noqa: SIM115 - closed by generator
            except OSError as exc:
                raise fail(f"cannot read {p}: {exc.strerror}") from None
            yield p, (line for line in fh)


@inventory_app.command("load")
def inventory_load(
    file: Annotated[str, typer.Argument(help="kubectl get ... -o json output, or -")],
    snapshot_time: Annotated[str | None, typer.Option(
        help="When the dump was taken (RFC3339); default: the file's modification time, or now for stdin. "
             "Ownership is declared complete up to then.")] = None,
) -> None:
    """Publish ownership events from `kubectl get namespaces,nodes,pods,services -A -o json`."""
    from pipeline.basics.timespec import parse_rfc3339_ns
    from pipeline.core.claims import events_from_list
    from pipeline.core.models import Progress
    from pipeline.sources.shipper import publish_owner_events

    settings = load_settings()
    now = time.time_ns()
    try:
        taken = None if snapshot_time is None else parse_rfc3339_ns(snapshot_time)
    except ValueError as exc:
        raise fail(f"--snapshot-time: {exc}") from None
    try:
        data = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
        if taken is None:
            taken = now if file == "-" else min(now, Path(file).stat().st_mtime_ns)
        doc = orjson.loads(data)
    except OSError as exc:
        raise fail(f"cannot read {file}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise fail(f"{file} is not JSON: {exc}") from None
    try:
        events, warnings = events_from_list(doc, time.time_ns())
    except ValueError as exc:
        raise fail(str(exc)) from None
    for w in warnings[:20]:
        err.print(f"[yellow]skipped:[/yellow] {w}", highlight=False)
    if len(warnings) > 20:
        err.print(f"[yellow]… {len(warnings) - 20} more skipped[/yellow]")
    n = run(publish_owner_events(settings, events, Progress("inventory", taken, now)))
    kinds: dict[str, int] = {}
    for ev in events:
        kinds[ev.kind] = kinds.get(ev.kind, 0) + 1
    out.print(f"published {n} ownership events ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))})")


@ship_app.command("file")
def ship_file(
    files: Annotated[list[str], typer.Argument(help="files to ship, or - for stdin")],
    fmt: Annotated[str, typer.Option("--format", "-f", help=f"one of {', '.join(FILE_FORMATS)}; "
                                     "guessed from the first line when omitted")] = "",
    host: Annotated[str, typer.Option(help="node name for raw lines")] = "",
) -> None:
    """Ship records from files; returns once the broker acknowledged every one.

    Raw lines carry no time: they are stamped with their file's modification time (the shipping
    time for stdin), so shipping an unchanged file again is recognised as a replay.
    """
    from pipeline.sources.shipper import ShipStats, ship_records

    if fmt and fmt not in FILE_FORMATS:
        raise fail(f"--format must be one of {', '.join(FILE_FORMATS)}, not {fmt!r}")
    settings = load_settings()
    total = ShipStats()
    for name, lines in _read_lines(files):
        first: list[str] = []
        for line in lines:
            first.append(line)
            if line.strip():
                break
        file_fmt = fmt or sniff_format(first[-1] if first else "")

        def chained(first: list[str] = first, lines: Iterator[str] = lines) -> Iterator[str]:
            yield from first
            yield from lines

        raw_time_ns = None if name == "-" else os.stat(name).st_mtime_ns // 1000 * 1000  # µs, as stored
        items = iter_file_records(file_fmt, chained(), host, raw_time_ns)
        with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed} records"),
                      TimeElapsedColumn(), console=err, disable=not err.is_terminal) as progress:
            task = progress.add_task(f"{name} ({file_fmt})", total=None)
            stats = run(ship_records(settings, items, file_fmt,
                                     lambda s, task=task: progress.update(task, completed=s.records)))
        total.records += stats.records
        total.undecodable += stats.undecodable
        total.messages += stats.messages
    err.print(f"shipped {total.records} records in {total.messages} messages"
              + (f" ({total.undecodable} undecodable, kept as rejects)" if total.undecodable else ""),
              highlight=False)


@report_app.command("fanout")
def report_fanout(
    since: Annotated[str | None, typer.Option(help="RFC3339 time or a duration like 30h")] = None,
    until: Annotated[str | None, typer.Option(help="RFC3339 time or a duration like 1h (exclusive)")] = None,
    fmt: Format = "table",
) -> None:
    """Per-namespace egress fan-out: dests = pod_ns + svc + external."""
    check_format(fmt)
    settings = load_settings()
    rows = run(reports.fanout(settings, since, until))
    if fmt == "table":
        rows = reports.fanout_table_rows(rows)
    text = reports.render(rows, fmt, "Egress fan-out per namespace", console=out if fmt == "table" else None)
    if text is not None:
        print(text)


@report_app.command("summary")
def report_summary(fmt: Format = "table") -> None:
    """Distinct records stored, rejected lines, unattributed sources."""
    check_format(fmt)
    settings = load_settings()
    row = run(reports.summary(settings))
    if fmt == "json":
        print(orjson.dumps(row).decode())
    else:
        text = reports.render([row], fmt, "Summary", console=out if fmt == "table" else None)
        if text is not None:
            print(text)


@app.command()
def sql(query: Annotated[str, typer.Argument(help="ClickHouse SQL")], fmt: Format = "table") -> None:
    """Run ad-hoc SQL (through the running stack when it holds the embedded store)."""
    from pipeline.store.queries import run_query

    check_format(fmt)
    settings = load_settings()
    columns, rows = run(run_query(settings, query, {}))
    text = reports.render(reports.as_dicts(columns, rows), fmt, console=out if fmt == "table" else None)
    if text is not None:
        print(text)


@app.command()
def demo(
    records: Annotated[int, typer.Option(min=100, max=1_000_000)] = 20_000,
    namespaces: Annotated[int, typer.Option(min=2, max=500)] = 40,
    home: Annotated[Path | None, typer.Option(help="keep the demo's data here (default: a temp dir)")] = None,
) -> None:
    """Bundled sample data through the real pipeline (broker, worker, ClickHouse), then the fan-out."""
    from pipeline.tooling.demo import run_demo

    setup_logging(False)
    logging.getLogger("flows").setLevel(logging.WARNING)
    rows, summary_row, expected = run(run_demo(records, namespaces, home, err))
    reports.render(reports.fanout_table_rows(rows), "table", "Egress fan-out per namespace (demo)", console=out)
    out.print(f"records {summary_row.get('records')} · rejected {summary_row.get('rejected')} · "
              f"unattributed {summary_row.get('unattributed')} · expected records {expected.records}, "
              f"rejected {expected.rejected}", highlight=False)


@app.command()
def bench(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    quick: Annotated[bool, typer.Option("--quick", help="small sizes, for a smoke run")] = False,
) -> None:
    """Throughput, latency, query time and memory, beside ceilings measured in the same run."""
    from pipeline.tooling.bench import run_bench, verdicts

    result = run(run_bench(quick, lambda step: err.print(f"[dim]bench:[/dim] {step}", highlight=False)))
    if as_json:
        print(orjson.dumps(result).decode())
        return
    checks = verdicts(result)
    rows = [{"measure": k, "value": f"{v:,.3f}" if isinstance(v, float) else str(v), "target": checks.get(k, "")}
            for k, v in result.items()]
    reports.render(rows, "table", "flows bench", console=out)


def _register_feature_commands() -> None:
    """Commands that live beside their feature in ``pipeline.cli``."""
    from pipeline.cli import analysis, html, journal, loki, reattribute, watch

    report_app.command("drift")(analysis.report_drift)
    report_app.command("stability")(analysis.report_stability)
    report_app.command("tiers")(analysis.report_tiers)
    report_app.command("allowlist")(analysis.report_allowlist)
    report_app.command("html")(html.report_html)
    app.command()(analysis.policy)
    baseline_app.command("save")(analysis.baseline_save)
    baseline_app.command("list")(analysis.baseline_list)
    watch_app.command("k8s")(watch.watch_k8s)
    app.command()(reattribute.reattribute)
    ship_app.command("journal")(journal.ship_journal)
    ship_app.command("loki")(loki.ship_loki)


_register_feature_commands()
