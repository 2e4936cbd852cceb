"""``flows inventory load``: who owns which IP, from a ``kubectl get … -o json`` dump (clusters without the watcher)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import orjson
import typer

from pipeline.cli import common as cli

inventory_app = typer.Typer(help="Load cluster inventory (ownership of IPs).", no_args_is_help=True)
cli.app.add_typer(inventory_app, name="inventory")


@inventory_app.command("load")
def inventory_load(
    file: Annotated[str, typer.Argument(help="kubectl get ... -o json output, or -")],
    snapshot_time: Annotated[str | None, typer.Option(
        help="When the dump was taken (RFC3339); default: the file's modification time, or now for stdin. "
             "Ownership is declared complete up to then.")] = None,
) -> None:
    """Publish ownership events from `kubectl get namespaces,nodes,pods,services,endpointslices -A -o json`."""
    from pipeline.basics.timespec import parse_rfc3339_ns
    from pipeline.core.claims import events_from_list
    from pipeline.core.models import Progress
    from pipeline.sources.shipper import publish_owner_events

    settings = cli.load_settings()
    now = time.time_ns()
    try:
        taken = None if snapshot_time is None else parse_rfc3339_ns(snapshot_time)
    except ValueError as exc:
        raise cli.fail(f"--snapshot-time: {exc}") from None
    try:
        data = sys.stdin.buffer.read() if file == "-" else Path(file).read_bytes()
        if taken is None:
            taken = now if file == "-" else min(now, Path(file).stat().st_mtime_ns)
        doc = orjson.loads(data)
    except OSError as exc:
        raise cli.fail(f"cannot read {file}: {exc.strerror}") from None
    except orjson.JSONDecodeError as exc:
        raise cli.fail(f"{file} is not JSON: {exc}") from None
    try:
        events, warnings = events_from_list(doc, now)
    except ValueError as exc:
        raise cli.fail(str(exc)) from None
    for w in warnings[:20]:
        cli.err.print(f"[yellow]skipped:[/yellow] {w}", highlight=False)
    if len(warnings) > 20:
        cli.err.print(f"[yellow]… {len(warnings) - 20} more skipped[/yellow]")
    n = cli.run(publish_owner_events(settings, events, Progress("inventory", taken, now)))
    kinds: dict[str, int] = {}
    for ev in events:
        kinds[ev.kind] = kinds.get(ev.kind, 0) + 1
    cli.out.print(f"published {n} ownership events ({', '.join(f'{v} {k}' for k, v in sorted(kinds.items()))})")
