"""Where the CLI's queries go: the running stack when it holds the embedded store, else ClickHouse directly."""

from __future__ import annotations

import asyncio
from typing import Any

from pipeline.basics.config import Settings
from pipeline.transport.control import StackClient, jsonable, read_stack_file


class StoreUnavailable(RuntimeError):
    """The store cannot be opened (another process holds the embedded data directory, or no server)."""


def query_direct(client: Any, sql: str, parameters: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    result = client.query(sql, parameters=parameters or None)
    return list(result.column_names), [list(r) for r in result.result_rows]


def _direct(settings: Settings, sql: str, parameters: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    from pipeline.store.clickhouse import migrate, open_client

    try:
        client = open_client(settings)
    except Exception as exc:  # chDB raises generic errors for a locked directory
        reason = str(exc).replace(settings.effective_clickhouse_url, settings.clickhouse_url_for_display)
        raise StoreUnavailable(f"cannot open ClickHouse at {settings.clickhouse_url_for_display}: {reason}") from None
    if settings.embedded_clickhouse:
        migrate(client, ttl_days=settings.ttl_days)  # a fresh home answers with empty tables, not errors
    columns, rows = query_direct(client, sql, parameters)
    return columns, jsonable(rows)


async def run_query(settings: Settings, sql: str, parameters: dict[str, Any] | None = None
                    ) -> tuple[list[str], list[list[Any]]]:
    """Run SQL with bound parameters; results are JSON-friendly values."""
    parameters = parameters or {}
    if settings.embedded_clickhouse:
        state = read_stack_file(settings)
        if state is not None:
            return await StackClient(state).query(sql, parameters)
    return await asyncio.to_thread(_direct, settings, sql, parameters)
