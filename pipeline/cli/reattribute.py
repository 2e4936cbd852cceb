"""``flows reattribute``: attribute stored rows again (unattributed sources, every destination) with the
ownership known now."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import orjson
import typer

from pipeline.cli import common as cli
from pipeline.cli.common import Format, check_format, fail, load_settings, out, run


@cli.app.command()
def reattribute(
    since: Annotated[str | None, typer.Option(help="from (RFC3339, date or duration back); default: the "
                                                   "ownership history (FLOWS_HISTORY_DAYS)")] = None,
    until: Annotated[str | None, typer.Option(help="until, exclusive; default: now")] = None,
    fmt: Format = "table",
) -> None:
    """Attribute stored rows again with the ownership known now: unattributed sources, and the
    destination of every egress row in the range (a late or stale owner).

    A running worker does this by itself when ownership arrives; this command does it on
    demand, through the running stack when it holds the embedded store.
    """
    from pipeline.analysis.reports import render
    from pipeline.basics.timespec import time_range

    check_format(fmt, ("table", "json"))
    settings = load_settings()
    now = time.time_ns()
    try:
        lo, hi = time_range(since or f"{settings.history_days}d", until, now)
    except ValueError as exc:
        raise fail(str(exc)) from None
    span = {"since_ns": int(lo.timestamp()) * 10**9 + lo.microsecond * 1000,
            "until_ns": int(hi.timestamp()) * 10**9 + hi.microsecond * 1000}
    try:
        result = run(_reattribute(settings, span))
    except RuntimeError as exc:
        raise fail(str(exc)) from None
    if fmt == "json":
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    else:
        render([result], fmt, "flows reattribute", console=out)


async def _reattribute(settings: Any, span: dict[str, int]) -> dict[str, int]:
    from pipeline.store.queries import StoreUnavailable
    from pipeline.transport.control import StackClient, read_stack_file

    if settings.embedded_clickhouse:
        state = read_stack_file(settings)
        if state is not None:
            return await StackClient(state).action("reattribute", span)
    try:
        return await asyncio.to_thread(_direct, settings, span)
    except StoreUnavailable as exc:
        raise RuntimeError(str(exc)) from None


def _direct(settings: Any, span: dict[str, int]) -> dict[str, int]:
    """No running stack holds the store: load ownership from ClickHouse and repair from here."""
    from pipeline.core.registry import OwnershipRegistry
    from pipeline.store.clickhouse import open_client
    from pipeline.store.ownership import load_ownership
    from pipeline.store.queries import StoreUnavailable, migrate_keeping_ttl
    from pipeline.store.repair import repair

    try:
        client = open_client(settings)
    except Exception as exc:  # chDB raises generic errors for a locked directory
        raise StoreUnavailable(f"cannot open ClickHouse at {settings.clickhouse_url_for_display}: {exc}") from None
    migrate_keeping_ttl(client, settings)
    registry = OwnershipRegistry(history_ns=settings.history_ns, grace_ns=settings.delete_grace_s * 10**9,
                                 iface_prefix=settings.iface_prefix)
    for ev in load_ownership(client, settings.history_ns):
        registry.apply(ev)
    return repair(client, registry, settings.iface_prefix, span["since_ns"], span["until_ns"])
