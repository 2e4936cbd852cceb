"""Where the CLI's queries go: the running stack when it holds the embedded store, else ClickHouse directly."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from pipeline.basics.config import Settings
from pipeline.transport.control import StackClient, jsonable, read_stack_file

_SERVER_REASON = re.compile(r"Code: \d+\. DB::Exception: ")
# the server's version ("(version 25.3.2.39 (official build))") and the driver's "(for url …)"
_DRIVER_TRAILERS = re.compile(r"\s*\((?:version|for url) [^()]*(?:\([^()]*\))?[^()]*\)")


class StoreUnavailable(RuntimeError):
    """The store cannot be opened (another process holds the embedded data directory, or no server)."""


class QueryError(RuntimeError):
    """ClickHouse refused a query; the message is its own reason, on one line."""


def server_reason(message: str) -> str:
    """ClickHouse's reason in a driver's error text, on one line: from ``Code: N. DB::Exception:`` on.

    The driver prefixes it ("Received ClickHouse exception, code: 47, server response: …") and
    appends the server version and URL; a server set to send stack traces adds one after
    "Stack trace:". A person fixing their SQL needs none of that. Line breaks inside the reason
    come from the quoted query (a syntax error shows the SQL after the failing position).
    """
    found = _SERVER_REASON.search(message)
    reason = (message[found.start():] if found else message).split("Stack trace:", 1)[0]
    return _DRIVER_TRAILERS.sub("", " ".join(reason.split())) or "ClickHouse refused the query without a reason"


def query_direct(client: Any, sql: str, parameters: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """Run SQL on a clickhouse-connect client (chDB or HTTP); a refused query raises ``QueryError``."""
    from clickhouse_connect.driver.exceptions import DatabaseError

    try:
        result = client.query(sql, parameters=parameters or None)
    except DatabaseError as exc:
        raise QueryError(server_reason(str(exc))) from None
    return list(result.column_names), [list(r) for r in result.result_rows]


def migrate_keeping_ttl(client: Any, settings: Settings) -> None:
    """Bring an embedded store's schema up to date before a command uses it, at the TTL it has.

    Only ``flows migrate``, ``flows up`` and ``flows worker`` apply ``FLOWS_TTL_DAYS``: a report or
    ``flows sql`` run without the variable must not put the default back (a shorter TTL deletes
    rows). The variable applies to a fresh home, which has no TTL yet.
    """
    from clickhouse_connect.driver.exceptions import DatabaseError

    from pipeline.store.clickhouse import migrate

    try:
        stored = client.query("SELECT toInt64OrNull(argMax(value, updated_at)) FROM runtime_settings "
                              "WHERE name = 'ttl_days'").result_rows[0][0]
    except DatabaseError:  # a fresh home: no runtime_settings yet
        stored = None
    migrate(client, ttl_days=int(stored) if stored else settings.ttl_days)


def _direct(settings: Settings, sql: str, parameters: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    from pipeline.store.clickhouse import open_client

    try:
        client = open_client(settings)
    except Exception as exc:  # chDB raises generic errors for a locked directory
        reason = str(exc).replace(settings.effective_clickhouse_url, settings.clickhouse_url_for_display)
        raise StoreUnavailable(f"cannot open ClickHouse at {settings.clickhouse_url_for_display}: {reason}") from None
    if settings.embedded_clickhouse:
        migrate_keeping_ttl(client, settings)  # a fresh home answers with empty tables, not errors
    columns, rows = query_direct(client, sql, parameters)
    return columns, jsonable(rows)


async def run_query(settings: Settings, sql: str, parameters: dict[str, Any] | None = None
                    ) -> tuple[list[str], list[list[Any]]]:
    """Run SQL with bound parameters; results are JSON-friendly values."""
    parameters = parameters or {}
    if settings.embedded_clickhouse:
        state = read_stack_file(settings)
        if state is not None:
            try:
                return await StackClient(state).query(sql, parameters)
            except RuntimeError as exc:  # the endpoint answers with the error text it caught
                raise QueryError(server_reason(str(exc))) from None
    return await asyncio.to_thread(_direct, settings, sql, parameters)
