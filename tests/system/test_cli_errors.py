"""A refused query is one line of ClickHouse's own reason and a non-zero exit, never a traceback.

Both ways a query travels are run as real processes: straight into chDB when no stack is running,
and through a running stack's control endpoint (where the CLI sees the endpoint's error text).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pipeline.store.queries import server_reason
from pipeline.transport.broker import free_port
from tests.conftest import flows, flows_env

UNKNOWN_X = "error: Code: 47. DB::Exception: Unknown expression identifier `x`"


def one_line_error(proc: subprocess.CompletedProcess, starts: str) -> str:
    assert proc.returncode != 0, proc.stdout.decode()
    err = proc.stderr.decode()
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(starts), err
    return lines[0]


def test_server_reason_drops_driver_prefix_trailers_and_stack_trace() -> None:
    text = ("Received ClickHouse exception, code: 47, server response: Code: 47. DB::Exception: Unknown expression "
            "identifier `x` in scope SELECT x. (UNKNOWN_IDENTIFIER) (version 25.3.2.39 (official build))\n\n"
            "Stack trace:\n\n0. DB::Exception::Exception(DB::Exception::MessageMasked&&, int, bool) @ 0x000c\n"
            " (for url http://clickhouse:8123)")
    assert server_reason(text) == ("Code: 47. DB::Exception: Unknown expression identifier `x` in scope SELECT x. "
                                   "(UNKNOWN_IDENTIFIER)")


def test_server_reason_keeps_a_multi_line_reason_on_one_line() -> None:
    text = "Code: 62. DB::Exception: Syntax error: failed at position 20 (BY): BY 1\nLIMIT 5\n. Expected one of: FROM"
    assert server_reason(text) == "Code: 62. DB::Exception: Syntax error: failed at position 20 (BY): BY 1 LIMIT 5 " \
                                  ". Expected one of: FROM"
    assert server_reason("connection refused\n") == "connection refused"


def test_query_errors_straight_into_chdb(tmp_path: Path) -> None:
    env = flows_env(tmp_path / "home", free_port())
    line = one_line_error(flows(env, "sql", "SELECT x", check=False), UNKNOWN_X)
    assert line.endswith("(UNKNOWN_IDENTIFIER)")
    one_line_error(flows(env, "sql", "SELEC 1", check=False), "error: Code: 62. DB::Exception: Syntax error")
    flows(env, "sql", "DROP VIEW fanout")  # a store whose views are missing: the report says so
    one_line_error(flows(env, "report", "fanout", check=False),
                   "error: Code: 46. DB::Exception: Unknown table function fanout")


@pytest.mark.slow
def test_query_errors_through_a_running_stack(stack_factory) -> None:
    stack = stack_factory().start()
    one_line_error(stack.run("sql", "SELECT x", check=False), UNKNOWN_X)
    # The stack's query session is read-only (a view cannot be dropped through it): a missing table instead.
    one_line_error(stack.run("sql", "SELECT * FROM nowhere", check=False), "error: Code: 60. DB::Exception:")
    one_line_error(stack.run("sql", "DROP VIEW fanout", check=False), "error: refused: DROP is not a read")
    assert stack.status()["ready"], "a refused query does not disturb the running stack"


def test_a_read_keeps_the_ttl_flows_migrate_applied(tmp_path: Path) -> None:
    """docs/operations.md: `flows migrate` applies FLOWS_TTL_DAYS. A report or reattribute run
    later without the variable migrates the embedded store too, and must not put 30 days back."""
    ttl_sql = ("SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = 'flows'")
    env = flows_env(tmp_path / "home", free_port())
    flows({**env, "FLOWS_TTL_DAYS": "45"}, "migrate")
    flows(env, "report", "summary")
    flows(env, "reattribute")
    (row,) = json.loads(flows(env, "sql", ttl_sql, "--format", "json").stdout)
    assert "TTL ingested_at + toIntervalDay(45)" in row["engine_full"]
    fresh = flows_env(tmp_path / "fresh", free_port(), FLOWS_TTL_DAYS="12")  # a fresh home takes the variable
    (row,) = json.loads(flows(fresh, "sql", ttl_sql, "--format", "json").stdout)
    assert "TTL ingested_at + toIntervalDay(12)" in row["engine_full"]
