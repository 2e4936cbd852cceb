"""The queries a running stack answers for the CLI: read-only, bounded, never on the insert session.

chDB allows one process per data directory, so while ``flows up`` holds the embedded store,
``flows sql``/``flows report`` send their SQL to its control endpoint (transport/control.py).
That SQL must not be able to hurt ingestion, so it runs on a second client of its own: its own
chDB session (settings, current database and temporary tables are per client) on its own thread,
so a slow query does not hold up an insert. The session gets its limits first and then
``readonly=1``, after which nothing in it can change a setting again (not even per query).

``readonly=1`` alone is not enough on chDB (26.9, measured): it refuses writes, DDL, ``SET``,
``SYSTEM`` and the table functions that reach files or the network, but still lets through the
``file()`` *function*, ``DESCRIBE`` of a table function (which reads the file or URL to infer a
schema), ``INTO OUTFILE``, ``KILL`` (every chDB session is the same user, so it could kill an
insert) and ``USE``; and a multi-statement string leaves a stale result that corrupts the next
answer. So each statement is first parsed by ClickHouse itself (``formatQuerySingleLine``: one
statement only) and its canonical text checked against what a reader needs.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeline.basics.config import Settings
from pipeline.store.clickhouse import Client, open_client
from pipeline.store.queries import query_direct

# Statements a reader needs, as ClickHouse formats them; DESCRIBE only of a named table.
_NAME = r"(?:`(?:[^`\\]|\\.)+`|[A-Za-z_]\w*)"
_ALLOWED = re.compile(rf"(?:SELECT|WITH|SHOW|EXISTS|EXPLAIN)\b.*|DESCRIBE TABLE {_NAME}(?:\.{_NAME})?", re.S)
_LITERAL = re.compile(r"'(?:[^'\\]|\\.)*'")
# Reach the filesystem under readonly=1 on chDB; matched outside string literals, any case.
_FILE_ACCESS = re.compile(r"\bINTO\s+OUTFILE\b|\b(?:file|catboostEvaluate)\s*\(", re.I)
_CODE = re.compile(r"Code: (\d+)\.")

READ_ONLY_HINT = "SELECT, WITH, SHOW, EXISTS, EXPLAIN or DESCRIBE TABLE; no writes, settings, files or URLs"


class QueryRefused(RuntimeError):
    """A query the stack will not run, or one it cut at a limit; the message is one line."""


def limits(settings: Settings) -> dict[str, int | str]:
    """The query session's bounds (ClickHouse setting -> value); a result too long fails, not truncates."""
    return {
        "max_execution_time": settings.query_max_execution_s,
        "max_result_rows": settings.query_max_result_rows,
        "result_overflow_mode": "throw",
        "max_memory_usage": settings.query_max_memory_bytes,
    }


def lock_session(client: Client, settings: Settings) -> Client:
    """Set the limits on the client's session, then make it read-only (which freezes them)."""
    for name, value in limits(settings).items():
        # Names are the constants above and values validated ints or a constant word: SET cannot bind them.
        literal = f"'{value}'" if isinstance(value, str) else str(int(value))
        client.command(f"SET {name} = {literal}")
    client.command("SET readonly = 1")
    return client


def check_statement(client: Client, sql: str) -> None:
    """Refuse anything but one reading statement that touches no file (parsed by ClickHouse itself)."""
    try:
        canonical = client.query("SELECT formatQuerySingleLine({q:String})", parameters={"q": sql}).result_rows[0][0]
    except Exception as exc:  # a syntax error, or more than one statement: ClickHouse's words, not our wrapper
        message = one_line(exc).partition(" In scope SELECT formatQuerySingleLine(")[0].rstrip(" :")
        raise QueryRefused(message) from None
    if not _ALLOWED.fullmatch(canonical):
        raise QueryRefused(f"refused: {canonical.split(' ', 1)[0]} is not a read (the stack answers {READ_ONLY_HINT})")
    if _FILE_ACCESS.search(_LITERAL.sub("''", canonical)):
        raise QueryRefused(f"refused: the query reads or writes local files (the stack answers {READ_ONLY_HINT})")


def one_line(exc: BaseException) -> str:
    """ClickHouse's message on one line, without the driver's repetition."""
    return " ".join(str(exc).split())[:1000]


def refusal(exc: BaseException, settings: Settings) -> QueryRefused:
    """A failed query as one clear line; the limits say which setting to raise."""
    match = _CODE.search(str(exc))
    code = int(match.group(1)) if match else None
    reasons = {
        164: f"refused: the stack answers only read-only queries ({READ_ONLY_HINT})",
        159: f"query cut: it ran longer than FLOWS_QUERY_MAX_EXECUTION_S={settings.query_max_execution_s} s",
        396: (f"query cut: its result has more than FLOWS_QUERY_MAX_RESULT_ROWS={settings.query_max_result_rows}"
              " rows (aggregate or add a LIMIT)"),
        241: f"query cut: it needed more than FLOWS_QUERY_MAX_MEMORY_BYTES={settings.query_max_memory_bytes} bytes",
    }
    return QueryRefused(reasons.get(code, one_line(exc)) if code is not None else one_line(exc))


class ReadOnlyQueries:
    """``/query`` of a running stack: one locked client on one thread of its own, opened on first use."""

    def __init__(self, settings: Settings, client_factory: Callable[[Settings], Client] = open_client) -> None:
        self.settings = settings
        self._factory = client_factory
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clickhouse-query")
        self._client: Client | None = None

    def _run(self, sql: str, parameters: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
        if self._client is None:
            self._client = lock_session(self._factory(self.settings), self.settings)
        check_statement(self._client, sql)
        try:
            return query_direct(self._client, sql, parameters)
        except Exception as exc:
            raise refusal(exc, self.settings) from None

    async def __call__(self, sql: str, parameters: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._run, sql, parameters)

    def close(self) -> None:
        """Waits for a running query (bounded by its time limit), then closes the session."""
        if self._client is not None:
            self._executor.submit(self._client.close).result()
        self._executor.shutdown(wait=True)
