"""`flows replay`, the replay check of `flows policy`, and `flows report coverage`, against chDB.

The demo corpus (tooling.synthetic) goes through the worker's enrichment into a chDB database;
every namespace's generated policy then replays over the same range with nothing denied. Small
hand-made databases cover the refusal of `flows policy` and the three kinds of silent namespace.
Commands run in-process on a throwaway Typer app, their queries routed to the module's client.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import baseline
from pipeline.cli import report as commands
from pipeline.cli.app import app as APP
from pipeline.store import clickhouse as ch
from pipeline.store.queries import query_direct
from pipeline.transport.control import jsonable
from tests.system.test_analysis_sql import NOW, claim, dns, ext, pod
from tests.system.test_grafana import load_demo
from tests.system.test_sql import at, flow, insert_flows

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

    monkeypatch.setattr(commands, "run_query", run_query)  # policy, replay and coverage query through it too
    for module in (commands, baseline):
        monkeypatch.setattr(module, "_now", lambda: NOW)
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


def test_html_report_shows_replay_and_coverage(client: ch.Client, demo: tuple[str, Path], cli,
                                               tmp_path: Path) -> None:
    db, inventory = demo
    client.database = db
    pages = {}
    for name, extra in (("bare", ()), ("inventory", ("--inventory", str(inventory)))):
        out = tmp_path / f"{name}.html"
        cli("report", "html", "-o", str(out), *extra)
        text = out.read_text(encoding="utf-8")
        (data,) = re.findall(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S)
        pages[name] = (text, json.loads(data))
    text, data = pages["inventory"]
    assert set(data["replays"]) == {r["namespace"] for r in data["fanout"]}
    assert {r["replay"] for r in data["replays"].values()} == {"clean"}
    assert 'id="replay-table"' in text and 'id="coverage-table"' in text
    # the demo labels no namespace for observation: every one is outside the selection
    assert data["coverage"]["summary"].startswith("0 of 0 selected namespaces")
    _, bare = pages["bare"]
    # without the inventory, DNS through the kube-dns Service cannot be decided (backing pods unknown)
    states = {r["replay"] for r in bare["replays"].values()}
    assert states <= {"clean", "undecidable"} and "undecidable" in states
    # every namespace that had pods also sent egress ("default" had neither: only an inventory shows it)
    assert {(r["namespace"], r["status"]) for r in bare["coverage"]["namespaces"]} == {
        (r["namespace"], "egress") for r in bare["fanout"]}
    assert {r["status"] for r in data["coverage"]["namespaces"]} == {"egress (not selected)"}


# -- a small database: replay of a file, the policy refusal, coverage ---------------------------

rid = itertools.count(1)
ROWS = (
    # edge: stable for eleven days (tier A), DNS, postgres, an external IP and a node nobody owns
    [dns(at(d, 6), next(rid), "edge") for d in (1, 12)]
    + [pod(at(d, 7), next(rid), "postgres", 5432, ns="edge") for d in (1, 12)]
    + [ext(at(d, 8), next(rid), "1.2.3.4", ns="edge") for d in (1, 12)]
    + [flow(at(d, 9), next(rid), ns_="edge", dst_kind="node", dst_ip="192.168.7.7", dst_port=10250,
            dst_name="node-9") for d in (1, 12)]
    + [ext(at(2, 9), next(rid), "5.6.7.8", ns="busy")]
)
CLAIMS = [
    claim("10.244.2.9", "pod", "db", "postgres-a", "postgres", {"app": "postgres"}, "u1"),
    claim("10.96.0.10", "service", "kube-system", "kube-dns", "", {}, "u2"),
    claim("10.244.0.2", "pod", "kube-system", "coredns-a", "coredns", {"k8s-app": "kube-dns"}, "u3"),
    claim("10.244.5.1", "pod", "quiet", "idle-a", "idle", {"app": "idle"}, "u4"),  # running, silent
    claim("10.244.5.2", "pod", "scaled", "batch-a", "batch", {"app": "batch"}, "u5"),  # scaled to zero below
    claim("10.244.5.3", "pod", "busy", "web-a", "web", {"app": "web"}, "u6"),
]
CLAIMS[4][10] = at(5)  # the scaled pod's claim ends on Nov 5
INVENTORY = {"kind": "List", "items": [
    *({"kind": "Namespace", "metadata": {"name": ns, "labels": {"egress-flows/observe": "true"}}}
      for ns in ("edge", "busy", "quiet", "scaled", "empty")),
    {"kind": "Namespace", "metadata": {"name": "db", "labels": {}}},
    {"kind": "Service", "metadata": {"name": "kube-dns", "namespace": "kube-system"},
     "spec": {"selector": {"k8s-app": "kube-dns"}}},
]}


@pytest.fixture(scope="module")
def small(client: ch.Client, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    db = fresh(client)
    insert_flows(client, ROWS)
    # no claim of node-9: the policy cannot name its address
    ch.insert_columns(client, "ownership", ch.OWNERSHIP_COLUMNS, [list(c) for c in zip(*CLAIMS, strict=True)])
    inventory = tmp_path_factory.mktemp("inv") / "inventory.json"
    inventory.write_bytes(orjson.dumps(INVENTORY))
    return db, inventory


def test_replay_of_a_file_lists_exactly_the_forgotten_destination(client: ch.Client, small: tuple[str, Path], cli,
                                                                   tmp_path: Path) -> None:
    db, inventory = small
    client.database = db
    policy = yaml.safe_load(cli("policy", "edge", "--force", "--until", "2026-11-13").stdout)
    policy["spec"]["egress"] = [r for r in policy["spec"]["egress"]
                                if r.get("destination", {}).get("nets") != ["1.2.3.4/32"]]
    path = tmp_path / "edge.yaml"
    path.write_text(yaml.safe_dump(policy))
    [obj] = json.loads(cli("replay", str(path), "--inventory", str(inventory), "--until", "2026-11-13",
                           "-f", "json").stdout)
    assert obj["namespace"] == "edge" and obj["undecidable"] == []
    # the node's address is unknown, so `flows policy` left it out (with a warning): denied too
    assert [(r["dst_kind"], r["dst"], r["proto"], r["port"], r["connections"]) for r in obj["denied"]] == [
        ("external", "1.2.3.4", "TCP", 443, 2), ("node", "node-9", "TCP", 10250, 2)]
    assert (obj["denied"][0]["first_seen"], obj["denied"][0]["last_seen"]) == (
        "2026-11-01T08:00:00Z", "2026-11-12T08:00:00Z")
    assert obj["allowed"] == 2  # DNS (through the kube-dns pods) and postgres
    table = words(cli("replay", str(path), "--until", "2026-11-13").stdout)  # exit 0 although it denies
    assert "edge: 1 destinations allowed" in table and "2 denied, 1 undecidable" in table
    assert "would be DENIED" in table and "1.2.3.4" in table and "cannot be decided" in table
    # without the inventory the kube-dns Service's backing pods are unknown: undecidable, not allowed
    [bare] = json.loads(cli("replay", str(path), "--until", "2026-11-13", "-f", "json").stdout)
    assert [r["dst"] for r in bare["undecidable"]] == ["kube-system/kube-dns"]
    assert "--inventory" in bare["undecidable"][0]["reasons"][0]


def test_policy_refuses_what_its_replay_denies(client: ch.Client, small: tuple[str, Path], cli,
                                               tmp_path: Path) -> None:
    client.database = small[0]
    refused = words(cli("policy", "edge", "--until", "2026-11-13", code=2).stderr)
    assert "refusing to write a policy for edge" in refused
    assert "denies observed egress: node node-9 TCP/10250 (2 connections)" in refused
    out = tmp_path / "edge.yaml"
    forced = words(cli("policy", "edge", "--until", "2026-11-13", "--force", "-o", str(out)).stderr)
    assert "this policy denies observed egress: node node-9 TCP/10250" in forced
    assert "replay cannot decide 1 observed destinations" in forced and out.exists()
    decided = words(cli("policy", "edge", "--until", "2026-11-13", "--force", "--inventory", str(small[1])).stderr)
    assert "denies observed egress: node node-9" in decided and "cannot decide" not in decided
    # the generated policy is what `flows replay --namespace` replays
    [obj] = json.loads(cli("replay", "--namespace", "edge", "--until", "2026-11-13", "-f", "json").stdout)
    assert [r["dst"] for r in obj["denied"]] == ["node-9"]


def test_coverage_tells_silent_namespaces_apart(client: ch.Client, small: tuple[str, Path], cli) -> None:
    db, inventory = small
    client.database = db
    result = cli("report", "coverage", "--inventory", str(inventory), "--since", "2026-11-01", "--until",
                 "2026-11-15", "-f", "json")
    data = json.loads(result.stdout)
    rows = {r["namespace"]: r for r in data["namespaces"]}
    assert {ns: (r["status"], r["pods"], r["pods_at_end"]) for ns, r in rows.items()} == {
        "busy": ("egress", 1, 1), "edge": ("egress", 0, 0), "empty": ("silent: no pods", 0, 0),
        "quiet": ("silent: running", 1, 1), "scaled": ("silent: zero now", 1, 0)}
    assert data["summary"].startswith("2 of 5 selected namespaces sent egress; silent: 1 running, 1 scaled to "
                                      "zero, 1 without pods")
    # a given list; and without either, every namespace ownership or egress knows
    given = json.loads(cli("report", "coverage", "--namespaces", "quiet,db", "-f", "json").stdout)
    assert [(r["namespace"], r["status"]) for r in given["namespaces"]] == [
        ("busy", "egress (not selected)"), ("db", "silent: running"), ("edge", "egress (not selected)"),
        ("quiet", "silent: running")]
    known = json.loads(cli("report", "coverage", "--since", "2026-11-06", "-f", "json").stdout)
    assert {r["namespace"]: r["status"] for r in known["namespaces"]} == {
        "busy": "silent: running", "db": "silent: running", "edge": "egress", "kube-system": "silent: running",
        "quiet": "silent: running", "scaled": "silent: no pods"}
    assert "Namespace objects" in known["selection"]
    table = words(cli("report", "coverage", "--inventory", str(inventory), "--since", "2026-11-01").stderr)
    assert "selected namespaces sent egress" in table


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("replay",), "give a policy FILE, or --namespace NS"),
        (("replay", "/nonexistent.yaml"), "cannot read /nonexistent.yaml"),
        (("replay", "--namespace", "nope"), "unknown namespace 'nope'"),
        (("replay", "--namespace", "edge", "--policy-format", "cilium"), "--policy-format must be one of"),
        (("replay", "--namespace", "edge", "-f", "csv"), "--format must be one of table, json"),
        (("report", "coverage", "--observe-policy", "x.yaml"), "--observe-policy needs --inventory"),
        (("report", "coverage", "--inventory", "/nonexistent.json"), "cannot read /nonexistent.json"),
    ],
)
def test_bad_inputs_give_clear_errors(client: ch.Client, small: tuple[str, Path], cli, args: tuple[str, ...],
                                      message: str) -> None:
    client.database = small[0]
    assert message in words(cli(*args, code=2).stderr)


def test_bad_policy_file(client: ch.Client, small: tuple[str, Path], cli, tmp_path: Path) -> None:
    client.database = small[0]
    bad = tmp_path / "bad.yaml"
    bad.write_text("just a string\n")  # YAML, but not a policy
    assert "document 1 is not a mapping" in words(cli("replay", str(bad), code=2).stderr)
