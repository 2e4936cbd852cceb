"""`flows replay`, the replay check of `flows policy`, and `flows report coverage`, against chDB.

The demo corpus (tooling.synthetic) goes through the worker's enrichment into a chDB database;
every namespace's generated policy then replays over the same range with nothing denied. Small
hand-made databases cover the refusal of `flows policy` and the three kinds of silent namespace.
Commands run in-process on a throwaway Typer app, their queries routed to the module's client.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import typer
import yaml
from typer.testing import CliRunner

from pipeline.analysis.policy import render_policy
from pipeline.cli import analysis as commands
from pipeline.cli import coverage, replay
from pipeline.store import clickhouse as ch
from pipeline.store.queries import query_direct
from pipeline.transport.control import jsonable
from tests.test_analysis_sql import NOW, claim, dns, ext, pod
from tests.test_grafana import load_demo
from tests.test_sql import at, insert_flows

APP = typer.Typer()
_report = typer.Typer()
APP.add_typer(_report, name="report")
_report.command("coverage")(coverage.report_coverage)
APP.command()(commands.policy)
APP.command("replay")(replay.replay)
_db = itertools.count()


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ch.Client]:
    c = ch.connect(f"chdb://{tmp_path_factory.mktemp('chdb') / 'data'}", database="r_setup")
    yield c
    c.close()


def fresh(client: ch.Client) -> str:
    client.database = f"r_{next(_db)}"
    assert ch.migrate(client)
    return client.database


@pytest.fixture(scope="module")
def demo(client: ch.Client, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    db = fresh(client)
    corpus = load_demo(client)
    inventory = tmp_path_factory.mktemp("inv") / "inventory.json"
    inventory.write_bytes(orjson.dumps(corpus.inventory))
    return db, inventory


@pytest.fixture
def cli(client: ch.Client, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    async def run_query(settings: Any, sql: str, parameters: dict[str, Any] | None = None):
        columns, rows = query_direct(client, sql, parameters or {})
        return columns, jsonable(rows)

    monkeypatch.setattr(commands, "run_query", run_query)
    monkeypatch.setattr(commands, "_now", lambda: NOW)
    for var in ("FLOWS_CLICKHOUSE_URL", "FLOWS_KAFKA_BOOTSTRAP"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("FLOWS_HOME", str(tmp_path / "home"))

    def invoke(*args: str, code: int = 0):
        result = CliRunner().invoke(APP, list(args))
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        assert result.exit_code == code, (args, result.output)
        return result

    return invoke


def words(text: str) -> str:
    return " ".join(text.split())


# -- round trip on the demo corpus ---------------------------------------------------------------


def test_generated_policies_replay_clean_on_the_demo(client: ch.Client, demo: tuple[str, Path], cli) -> None:
    db, inventory = demo
    client.database = db
    fanout = {r[0] for r in client.query("SELECT namespace FROM fanout(since = '1970-01-01 00:00:00', "
                                         "until = '2100-01-01 00:00:00')").result_rows}
    for fmt in ("calico", "k8s"):
        for ns in sorted(fanout):
            [obj] = json.loads(cli("replay", "--namespace", ns, "--inventory", str(inventory),
                                   "--policy-format", fmt, "-f", "json").stdout)
            assert obj["namespace"] == ns and obj["allowed"] > 0
            assert obj["denied"] == [], (fmt, obj)
            assert obj["undecidable"] == [], (fmt, obj)
