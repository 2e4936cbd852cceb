"""``flows baseline save|list``: frozen allowlists that ``flows report drift --baseline`` compares with."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

import typer

from pipeline.basics.config import Settings
from pipeline.basics.timespec import ch_time, parse_instant, rfc3339
from pipeline.cli import common as cli
from pipeline.cli.common import Format
from pipeline.cli.report import BASELINE_LIST_SQL, Since, T, _emit, _now, _rows, _window
from pipeline.store.baselines import BASELINE_SAVE_SQL
from pipeline.transport.control import StackClient, read_stack_file

baseline_app = typer.Typer(help="Frozen allowlists to compute drift against.", no_args_is_help=True)
cli.app.add_typer(baseline_app, name="baseline")

_BASELINE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
BASELINE_COUNT_SQL = f"SELECT count() AS n FROM peers(since = {{since:{T}}}, until = {{until:{T}}})"


@baseline_app.command("save")
def baseline_save(
    name: Annotated[str, typer.Argument(help="baseline name (letters, digits, '.', '_', '-')")],
    since: Since = None,
    until: Annotated[str | None, typer.Option(help="end of the window to freeze (default now)")] = None,
    replace: Annotated[bool, typer.Option("--replace", help="supersede an existing baseline of that name")]
    = False,
) -> None:
    """Freeze the current allowlists (every destination identity) under NAME, for `report drift --baseline`."""
    if not _BASELINE_NAME.match(name):
        raise cli.fail("baseline name must be letters, digits, '.', '_' or '-' (max 63), starting alphanumeric")
    settings = cli.load_settings()
    now = _now()
    lo, hi = _window(since, until or rfc3339(now))

    async def main() -> dict[str, Any]:
        saved_at = now
        existing = await _rows(settings, BASELINE_LIST_SQL, name=name)
        if existing and not replace:
            raise ValueError(f"baseline {name!r} exists; pass --replace to save a newer snapshot over it")
        if existing:  # the newest snapshot wins: never tie with the one replaced
            saved_at = max(now, parse_instant(existing[0]["saved_at"]) + timedelta(microseconds=1))
        if not (await _rows(settings, BASELINE_COUNT_SQL, since=lo, until=hi))[0]["n"]:
            raise ValueError("no egress observed in that window: nothing to freeze")
        await _save(settings, name=name, saved_at=ch_time(saved_at), since=ch_time(lo), until=ch_time(hi))
        return (await _rows(settings, BASELINE_LIST_SQL, name=name))[0]

    row = cli.run(main())
    cli.out.print(f"saved baseline {name}: {row['destinations']} destinations of {row['namespaces']} namespaces "
                  f"({lo.isoformat()} .. {hi.isoformat()})", highlight=False)


async def _save(settings: Settings, **params: str) -> None:
    """Run the save where the store is: through a running stack holding chDB (its query session
    is read-only, so it has an action for this one write), else straight into ClickHouse."""
    state = read_stack_file(settings) if settings.embedded_clickhouse else None
    if state is not None:
        await StackClient(state).action("baseline_save", params)
    else:
        await _rows(settings, BASELINE_SAVE_SQL, **params)


@baseline_app.command("list")
def baseline_list(fmt: Format = "table") -> None:
    """Saved baselines (newest snapshot of each)."""
    cli.check_format(fmt)
    settings = cli.load_settings()
    _emit(cli.run(_rows(settings, BASELINE_LIST_SQL, name="")), fmt, "Baselines")
