"""``flows ship journal``: the journald shipper for hosts without fluent-bit.

Registered by ``pipeline.cli.app`` as ``ship_app.command("journal")(ship_journal)``; the CLI helpers are
imported inside the function so that registering it does not make an import cycle.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer


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
    from pipeline.cli.common import err, fail, load_settings, run, setup_logging
    from pipeline.sources import journal
    from pipeline.stack.run import install_stop_signals

    setup_logging(verbose)
    settings = load_settings()
    try:
        source = journal.JournalSource(tuple(file or ()), directory, follow, boot)
    except ValueError as exc:
        raise fail(str(exc)) from None
    path = checkpoint or journal.default_checkpoint(settings, source)

    async def main() -> journal.JournalStats:
        stop = asyncio.Event()
        install_stop_signals(stop)
        return await journal.ship_journal(settings, source, path, stop=stop, flush_records=flush_records,
                                          flush_interval_s=flush_interval, journalctl=journalctl)

    stats = run(main())
    err.print(f"shipped {stats.shipped} records from {stats.entries} journal entries "
              f"({stats.skipped} not Calico, skipped"
              + (f"; {stats.undecodable} undecodable, kept as rejects" if stats.undecodable else "")
              + f"); checkpoint {path}", highlight=False)
