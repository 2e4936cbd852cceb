"""Reports over the SQL views in ``sql/`` (the same views Grafana and ad-hoc SQL use)."""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

from pipeline.basics.config import Settings
from pipeline.basics.timespec import ch_time, time_range
from pipeline.store.queries import run_query

FANOUT_SQL = (
    "SELECT namespace, dests, pod_ns, svc, external, node, unknown, connections, first_seen, last_seen "
    "FROM fanout(since={since:DateTime64(6,'UTC')}, until={until:DateTime64(6,'UTC')})"
)
SUMMARY_SQL = "SELECT * FROM summary"
FANOUT_TABLE_COLUMNS = ("namespace", "dests", "pod_ns", "svc", "external", "node", "unknown", "connections")


def fanout_table_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The columns that fit a terminal; json and csv keep first/last seen too."""
    return [{k: r[k] for k in FANOUT_TABLE_COLUMNS} for r in rows]


def as_dicts(columns: list[str], rows: list[list[Any]]) -> list[dict[str, Any]]:
    return [dict(zip(columns, row, strict=True)) for row in rows]


async def fanout(settings: Settings, since: str | None, until: str | None) -> list[dict[str, Any]]:
    lo, hi = time_range(since, until)
    columns, rows = await run_query(settings, FANOUT_SQL, {"since": ch_time(lo), "until": ch_time(hi)})
    return as_dicts(columns, rows)


async def summary(settings: Settings) -> dict[str, Any]:
    columns, rows = await run_query(settings, SUMMARY_SQL, {})
    return as_dicts(columns, rows)[0] if rows else {}


def render(rows: list[dict[str, Any]], fmt: str, title: str = "", console: Console | None = None) -> str | None:
    """json/csv return text; table prints to the console (or returns text without one)."""
    if fmt == "json":
        return orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode()
    if fmt == "csv":
        out = io.StringIO()
        if rows:
            writer = csv.DictWriter(out, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        return out.getvalue()
    # An empty table is one narrow column, which wraps its title a word a line: say it in a line.
    table: Table | str = f"{title}: no rows" if title else "no rows"
    if rows:
        table = _table(rows, title)
    if console is None:
        buf = Console(file=io.StringIO(), width=160)
        buf.print(table, highlight=False)
        return buf.file.getvalue()  # type: ignore[attr-defined]
    console.print(table, highlight=False)
    return None


def _table(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title or None, show_lines=False, min_width=len(title) or None)  # title on one line
    for col in rows[0]:
        numeric = isinstance(rows[0][col], (int, float))
        table.add_column(col, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row.values()))
    return table
