"""``flows ship file|journal|loki``: records from files, the kernel journal or Loki onto the raw topic.

Every shipper returns (or checkpoints) only once the broker acknowledged what it sent; the
journal and Loki shippers resume from their checkpoint.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import os
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from pipeline.basics.config import Settings
from pipeline.basics.timespec import parse_duration_s, parse_time
from pipeline.cli import common as cli
from pipeline.core.envelopes import FILE_FORMATS, HOST_LABELS, iter_file_records, sniff_format
from pipeline.sources.checkpoint import Checkpoint
from pipeline.sources.loki.client import LokiAuth, LokiClient, display_url, ssl_option
from pipeline.sources.loki.errors import LokiError
from pipeline.sources.loki.logql import NS, LogQuery, iso
from pipeline.sources.loki.shipper import DEFAULT_CHUNK, DEFAULT_LIMIT, LokiShipper

ship_app = typer.Typer(help="Ship log records to the raw topic.", no_args_is_help=True)
cli.app.add_typer(ship_app, name="ship")

log = logging.getLogger("flows.loki")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# -- files -------------------------------------------------------------------------------------


def _read_lines(paths: list[str]) -> Iterator[tuple[str, Iterator[str]]]:
    for p in paths:
        if p == "-":
            yield "-", iter(io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace"))
        else:
            try:
                fh = open(p, encoding="utf-8", errors="replace")  # noqa: SIM115 - closed by generator
            except OSError as exc:
                raise cli.fail(f"cannot read {p}: {exc.strerror}") from None
            yield p, (line for line in fh)


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
        raise cli.fail(f"--format must be one of {', '.join(FILE_FORMATS)}, not {fmt!r}")
    settings = cli.load_settings()
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
                      TimeElapsedColumn(), console=cli.err, disable=not cli.err.is_terminal) as progress:
            task = progress.add_task(f"{name} ({file_fmt})", total=None)
            stats = cli.run(ship_records(settings, items, file_fmt,
                                         lambda s, task=task: progress.update(task, completed=s.records)))
        total.records += stats.records
        total.undecodable += stats.undecodable
        total.messages += stats.messages
    cli.err.print(f"shipped {total.records} records in {total.messages} messages"
                  + (f" ({total.undecodable} undecodable, kept as rejects)" if total.undecodable else ""),
                  highlight=False)


# -- the kernel journal ------------------------------------------------------------------------


@ship_app.command("journal")
def ship_journal(
    file: Annotated[list[str] | None, typer.Option(
        "--file", help="journal file or glob (repeatable), e.g. exported or copied journals")] = None,
    directory: Annotated[Path | None, typer.Option(
        "--directory", "-D", help="directory of journal files, e.g. a copy of /var/log/journal")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep shipping new entries until stopped")] = False,
    boot: Annotated[bool, typer.Option("--boot", help="only the current boot")] = False,
    checkpoint: Annotated[Path | None, typer.Option(
        help="where the cursor is saved; default FLOWS_HOME/checkpoints/journal-<hash of the source>.json")] = None,
    flush_records: Annotated[int, typer.Option(
        min=1, max=1_000_000, help="save the cursor after this many records (once Kafka acknowledged)")] = 5000,
    flush_interval: Annotated[float, typer.Option(
        min=0.05, max=3600, help="…or after this many seconds, whichever comes first")] = 1.0,
    journalctl: Annotated[str, typer.Option(help="journalctl binary to run")] = "journalctl",
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Ship Calico packet-log entries of the kernel journal; resumes after the last acknowledged entry."""
    from pipeline.sources import journal
    from pipeline.stack.run import install_stop_signals

    cli.setup_logging(verbose)
    settings = cli.load_settings()
    try:
        source = journal.JournalSource(tuple(file or ()), directory, follow, boot)
    except ValueError as exc:
        raise cli.fail(str(exc)) from None
    path = checkpoint or journal.default_checkpoint(settings, source)

    async def main() -> journal.JournalStats:
        stop = asyncio.Event()
        install_stop_signals(stop)
        return await journal.ship_journal(settings, source, path, stop=stop, flush_records=flush_records,
                                          flush_interval_s=flush_interval, journalctl=journalctl)

    stats = cli.run(main())
    cli.err.print(f"shipped {stats.shipped} records from {stats.entries} journal entries "
                  f"({stats.skipped} not Calico, skipped"
                  + (f"; {stats.undecodable} undecodable, kept as rejects" if stats.undecodable else "")
                  + f"); checkpoint {path}", highlight=False)


# -- Loki --------------------------------------------------------------------------------------


def default_checkpoint(settings: Settings, identity: dict[str, str]) -> Path:
    """One checkpoint per source: URL (without credentials), query and tenant."""
    digest = hashlib.sha256("\x1f".join((identity["url"], identity["query"], identity["org_id"])).encode())
    return settings.home / "checkpoints" / f"loki-{digest.hexdigest()[:16]}.json"


def resolve_start(state: dict[str, Any] | None, since_ns: int | None, identity: dict[str, str], follow: bool,
                  now_ns: int, path: Path) -> tuple[int, str | None]:
    """Where shipping starts, and a line that says so when a checkpoint decides it."""
    if state is not None:
        if any(state.get(k, "") != v for k, v in identity.items()):
            raise ValueError(f"checkpoint {path} was written for {state.get('url')} {state.get('query')!r} "
                             f"(tenant {state.get('org_id') or '-'}); pass another --checkpoint, or --restart")
        pos = state.get("position_ns")
        if not isinstance(pos, int) or isinstance(pos, bool) or pos < 0:
            raise ValueError(f"checkpoint {path} has no valid position_ns; move it away or pass --restart")
        if since_ns is None:
            return pos, f"resuming from checkpoint {path} at {iso(pos)}"
        if since_ns > pos:
            return since_ns, f"checkpoint {path} is at {iso(pos)}, before --since: starting at {iso(since_ns)}"
        return pos, (f"checkpoint {path} is at {iso(pos)}: resuming there, not at --since {iso(since_ns)} "
                     "(--restart starts over from --since)")
    if since_ns is not None:
        return since_ns, None
    if follow:
        return now_ns, None
    raise ValueError(f"--since is needed: there is no checkpoint at {path} to resume from")


class Reporter:
    """A progress bar with entries/s and ETA on a terminal; a log line every few seconds otherwise."""

    def __init__(self, start: int, end: int | None, *, terminal: bool, every_s: float) -> None:
        self.start = start
        self.end = end
        self.every_s = every_s
        self.t0 = self.logged = time.monotonic()
        self.progress: Progress | None = None
        if terminal and end is not None:

            self.progress = Progress(
                TextColumn("loki"), BarColumn(), TaskProgressColumn(),
                TextColumn("{task.fields[entries]} entries · {task.fields[rate]:.0f}/s · at {task.fields[at]}"),
                TimeRemainingColumn(), console=cli.err, transient=False)
            self.task = self.progress.add_task("loki", total=max(1, end - start) / NS, entries=0, rate=0.0,
                                               at=iso(start))

    def __enter__(self) -> Reporter:
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress:
            self.progress.stop()

    def __call__(self, shipper: LokiShipper) -> None:
        elapsed = max(1e-9, time.monotonic() - self.t0)
        s = shipper.stats
        rate = s.entries / elapsed
        if self.progress:
            self.progress.update(self.task, completed=(shipper.position - self.start) / NS, entries=s.entries,
                                 rate=rate, at=iso(shipper.position))
            return
        if time.monotonic() - self.logged < self.every_s:
            return
        self.logged = time.monotonic()
        if self.end is None:
            log.info("following: %d entries (tail %d, gap fills %d), position %s (%.0fs behind now), "
                     "reconnects %d, dropped by Loki %d", s.entries, s.tail, s.gap, iso(shipper.position),
                     (time.time_ns() - shipper.position) / NS, s.reconnects, s.dropped)
            return
        done = (shipper.position - self.start) / max(1, self.end - self.start)
        eta = f"{elapsed * (1 - done) / done:.0f}s" if done > 0 else "?"
        log.info("%d entries (%.0f/s), at %s, %.0f%% of the range, ETA %s", s.entries, rate,
                 iso(shipper.position), 100 * done, eta)


def _ns(value: str, now_ns: int) -> int:
    """A --since/--until argument as ns (exactly: no float on the way)."""
    return (parse_time(value, now_ns) - _EPOCH) // timedelta(microseconds=1) * 1000


async def _explain_empty(client: LokiClient, query: LogQuery, start: int, end: int) -> str:
    """Say whether no stream matched, or streams matched and the filters kept no line."""
    base = f"the query matched no entries in [{iso(start)}, {iso(end)})"
    try:
        streams = await client.series(query.selector, start, end)
    except LokiError:
        return base
    if not streams:
        return f"{base}: no stream matches {query.selector} there"
    return f"{base}: {len(streams)} streams match {query.selector}, but no line passed the rest of the query"


async def _ship(settings: Settings, client: LokiClient, query: LogQuery, path: Path, identity: dict[str, str], *,
                since_ns: int | None, until_ns: int, follow: bool, restart: bool, limit: int, chunk_ns: int,
                lag_ns: int, delay_for: int) -> None:
    from pipeline.sources.shipper import RecordProducer
    from pipeline.stack.run import install_stop_signals

    with Checkpoint(path, "loki") as cp:
        state = None if restart else cp.load()
        start, note = resolve_start(state, since_ns, identity, follow, time.time_ns(), path)
        if note:
            cli.err.print(note, highlight=False)
        if not follow and start >= until_ns:
            if note is None:
                raise ValueError(f"empty time range: --since {iso(start)} is not before the end {iso(until_ns)}")
            cli.err.print(f"nothing to ship: already at {iso(start)}, the end is {iso(until_ns)}", highlight=False)
            return
        with Reporter(start, None if follow else until_ns, terminal=cli.err.is_terminal,
                      every_s=30.0 if follow else 5.0) as reporter:
            async with client, RecordProducer(settings) as producer:
                shipper = LokiShipper(client, query, producer, position=start, limit=limit, chunk_ns=chunk_ns,
                                      checkpoint=cp, checkpoint_state=identity, on_progress=reporter)
                install_stop_signals(shipper.stop)
                if follow:
                    await shipper.follow(safety_lag_ns=lag_ns, delay_for_s=delay_for,
                                         poll_s=min(10.0, max(0.5, lag_ns / NS / 4)))
                else:
                    await shipper.backfill(until_ns)
                empty = "" if follow or shipper.stats.entries or shipper.stop.is_set() else await _explain_empty(
                    client, query, start, until_ns)
        s = shipper.stats
        cli.err.print(
            f"shipped {s.entries} entries from {client.display} in {client.requests} requests"
            + (f" ({s.undecodable} undecodable, kept as rejects)" if s.undecodable else "")
            + (f"; tail {s.tail}, gap fills {s.gap}, reconnects {s.reconnects}, dropped by Loki {s.dropped}, "
               f"tail entries behind the checkpoint {s.late}" if follow else "")
            + f"; shipped up to {iso(shipper.position)}; checkpoint {path}", highlight=False)
        if empty:
            cli.err.print(empty, highlight=False)
        if s.incomplete:
            cli.err.print(f"[red]warning:[/red] {s.incomplete} instants held more entries in one stream than the "
                          "query limit: entries may be missing there (see the errors above)", highlight=False)


@ship_app.command("loki")
def ship_loki(
    url: Annotated[str, typer.Option("--url", envvar="FLOWS_LOKI_URL", show_default=False,
                                     help="Loki base URL, e.g. https://loki.example:3100")],
    query: Annotated[str, typer.Option("--query", "-q", show_default=False,
                                       help='LogQL log query, e.g. {job="systemd-journal"} |= "calico-packet"')],
    since: Annotated[str | None, typer.Option(
        help="start (inclusive): RFC3339, a date, or a duration back from now (7d); "
             "needed for a backfill without a checkpoint")] = None,
    until: Annotated[str | None, typer.Option(
        help="end of a backfill (exclusive); default: now minus --safety-lag")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-F",
                                         help="ship live: tail websocket + trailing backfill")] = False,
    limit: Annotated[int, typer.Option(min=1, help="entries per query; lowered to Loki's "
                                       "max_entries_limit_per_query when Loki refuses it")] = DEFAULT_LIMIT,
    max_query_length: Annotated[str, typer.Option(
        help="longest range per query (Loki's max_query_length is 721h; lowered when Loki refuses it)",
    )] = DEFAULT_CHUNK,
    safety_lag: Annotated[str, typer.Option(
        help="the checkpoint stays this far behind now, so out-of-order writes are not missed")] = "2m",
    delay_for: Annotated[int, typer.Option(min=0, max=5, help="tail delay_for in seconds")] = 2,
    checkpoint: Annotated[Path | None, typer.Option(
        help="checkpoint file; default FLOWS_HOME/checkpoints/loki-<hash of url, query, tenant>.json")] = None,
    restart: Annotated[bool, typer.Option("--restart", help="ignore the checkpoint and start at --since")] = False,
    org_id: Annotated[str | None, typer.Option("--org-id", envvar="FLOWS_LOKI_ORG_ID",
                                               help="tenant, sent as X-Scope-OrgID")] = None,
    ca_file: Annotated[Path | None, typer.Option(help="CA bundle that signs Loki's TLS certificate")] = None,
    insecure: Annotated[bool, typer.Option("--insecure", help="do not verify Loki's TLS certificate")] = False,
    timeout: Annotated[float, typer.Option(min=1, help="seconds per request")] = 60.0,
    retries: Annotated[int, typer.Option(min=0, help="retries of 429/5xx/timeouts before giving up")] = 8,
    host_label: Annotated[list[str] | None, typer.Option(
        "--host-label", envvar="FLOWS_LOKI_HOST_LABELS",
        help="stream label naming the node (repeatable, first present wins); with the line's time and "
             f"text it identifies the packet across paths. Default: {', '.join(HOST_LABELS)}")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Ship Loki entries to the raw topic, each exactly once; credentials from FLOWS_LOKI_TOKEN[_FILE] or
    FLOWS_LOKI_USERNAME + FLOWS_LOKI_PASSWORD[_FILE]."""

    cli.setup_logging(verbose)
    settings = cli.load_settings()
    if follow and until:
        raise cli.fail("--until does not go with --follow (following has no end)")
    try:
        log_query = LogQuery.parse(query)
        chunk_ns = parse_duration_s(max_query_length) * NS
        lag_ns = parse_duration_s(safety_lag) * NS
        if chunk_ns <= 0:
            raise ValueError("--max-query-length must be longer than 0s")
        now = time.time_ns()
        since_ns = _ns(since, now) if since else None
        until_ns = _ns(until, now) if until else now - lag_ns
        auth = LokiAuth()
        ssl_opt = ssl_option(ca_file, insecure)
    except ValidationError as exc:
        raise cli.fail("invalid Loki credentials: " + "; ".join(e["msg"] for e in exc.errors())) from None
    except ValueError as exc:
        raise cli.fail(str(exc)) from None
    if insecure:
        cli.err.print("[yellow]warning:[/yellow] --insecure: Loki's TLS certificate is not verified", highlight=False)
    identity = {"url": display_url(url), "query": log_query.text, "org_id": org_id or ""}
    path = checkpoint or default_checkpoint(settings, identity)
    client = LokiClient(url, auth=auth, org_id=org_id, ssl_opt=ssl_opt, timeout_s=timeout, attempts=retries + 1,
                        host_labels=host_label or HOST_LABELS)
    cli.run(_ship(settings, client, log_query, path, identity, since_ns=since_ns, until_ns=until_ns, follow=follow,
                  restart=restart, limit=limit, chunk_ns=chunk_ns, lag_ns=lag_ns, delay_for=delay_for))
