"""`flows report html`: the page built from chDB demo data, then opened in headless Chromium.

The command runs in-process on a throwaway Typer app, its queries routed to the module's chDB
client the way a running stack runs them (query_direct, then JSON-friendly values). Chromium
(Debian's ``chromium``, which scripts/test installs) dumps the rendered DOM, whose tables must
match the report's embedded JSON, and takes a screenshot kept in test-artifacts/.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pipeline.analysis.html_report import (
    DESTINATION_COLUMNS,
    DRIFT_COLUMNS,
    FANOUT_COLUMNS,
    Report,
    cell,
    connection_series,
    render,
)
from pipeline.analysis.reports import FANOUT_SQL
from pipeline.basics.timespec import parse_instant
from pipeline.cli import report as report_commands
from pipeline.cli.app import app as APP
from pipeline.store import clickhouse as ch
from pipeline.store.queries import query_direct
from pipeline.transport.control import jsonable
from tests.conftest import ROOT
from tests.standins.asn_db import CDN, write_mmdb
from tests.system.test_grafana import load_demo

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
T = "DateTime64(6, 'UTC')"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ch.Client]:
    c = ch.connect(f"chdb://{tmp_path_factory.mktemp('chdb') / 'data'}", database="h_demo")
    ch.migrate(c)
    load_demo(c)
    yield c
    c.close()


def query(client: ch.Client, sql: str, **params: Any) -> list[dict[str, Any]]:
    columns, rows = query_direct(client, sql, params)
    return [dict(zip(columns, row, strict=True)) for row in jsonable(rows)]


def flows_report_html(client: ch.Client, home: Path, *args: str) -> tuple[Path, str]:
    """Run `flows report html ARGS` against the client; the page's path and the command's stderr."""

    async def run_query(settings: Any, sql: str, parameters: dict[str, Any] | None = None):
        columns, rows = query_direct(client, sql, parameters or {})
        return columns, jsonable(rows)

    output = home / "report.html"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(report_commands, "run_query", run_query)
        for var in ("FLOWS_CLICKHOUSE_URL", "FLOWS_KAFKA_BOOTSTRAP"):
            mp.delenv(var, raising=False)
        mp.setenv("FLOWS_HOME", str(home))
        result = CliRunner().invoke(APP, ["report", "html", "-o", str(output), *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return output, " ".join(result.output.split())  # the console wraps long lines


@pytest.fixture(scope="module")
def page(client: ch.Client, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, out = flows_report_html(client, tmp_path_factory.mktemp("home"))
    assert "wrote" in out and "11 namespaces" in out
    return path


def embedded(html_text: str) -> dict[str, Any]:
    (data,) = re.findall(r'<script type="application/json" id="report-data">(.*?)</script>', html_text, re.S)
    return json.loads(data)


# -- a small DOM from Chromium's --dump-dom ------------------------------------------------------


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def find_all(self, tag: str, **attrs: str) -> list[Node]:
        found = []
        for c in self.children:
            if isinstance(c, Node):
                if c.tag == tag and all(a in c.attrs.get(k.rstrip("_"), "").split() for k, a in attrs.items()):
                    found.append(c)
                found += c.find_all(tag, **attrs)
        return found

    def rows(self) -> list[list[str]]:
        """A table's body as the text of its cells."""
        (body,) = self.find_all("tbody")
        return [[td.text() for td in tr.find_all("td")] for tr in body.find_all("tr")]


class _Builder(HTMLParser):
    VOID = {"meta", "link", "br", "img", "input", "hr"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.VOID or tag not in [n.tag for n in self.stack]:
            return
        while self.stack[-1].tag != tag:
            self.stack.pop()
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse(html_text: str) -> Node:
    builder = _Builder()
    builder.feed(html_text)
    return builder.root


def chromium(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=90, check=True)


# -- tests ---------------------------------------------------------------------------------------


def test_report_data_is_what_the_views_answer(client: ch.Client, page: Path) -> None:
    data = embedded(page.read_text(encoding="utf-8"))
    lo, hi = "1970-01-01 00:00:00", "2105-01-01 00:00:00"
    assert data["fanout"] == query(client, FANOUT_SQL, since=lo, until=hi)
    allowlist = query(client, f"SELECT * FROM allowlist(since = {{s:{T}}}, until = {{u:{T}}}) "
                              "ORDER BY namespace, dst_kind, dst, name, proto", s=lo, u=hi)
    assert data["destinations"] == allowlist
    per_ns: dict[str, int] = {}
    for row in data["connections"]:
        per_ns[row["namespace"]] = per_ns.get(row["namespace"], 0) + row["connections"]
    assert per_ns == {r["namespace"]: r["connections"] for r in data["fanout"]}
    identities = query(client, f"SELECT count() AS n FROM peers(since = {{s:{T}}}, until = {{u:{T}}})", s=lo, u=hi)
    assert sum(r["new_destinations"] for r in data["new_destinations"]) == identities[0]["n"]
    last = max(parse_instant(r["last_seen"]) for r in data["fanout"])
    assert parse_instant(data["drift_since"]) == last - dt.timedelta(days=7)
    assert {r["tier"] for r in data["tiers"].values()} <= {"A", "B", "C", "D"}
    assert set(data["tiers"]) == {r["namespace"] for r in data["fanout"]}


def test_page_needs_no_network(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"<(link|img|iframe)\b|<script\b(?![^>]*application/json)|@import|url\(", text)
    assert set(re.findall(r"https?://[^\s\"'<>]+", text)) == {"http://www.w3.org/2000/svg"}  # SVG namespace


def test_every_value_is_escaped() -> None:
    hostile = '<script>alert(1)</script>"\'&'
    row = {"namespace": hostile, "dests": 1, "pod_ns": 0, "svc": 0, "external": 1, "node": 0, "unknown": 0,
           "connections": 2, "first_seen": "2026-11-20T09:00:00Z", "last_seen": "2026-11-20T10:00:00Z"}
    destination = {"namespace": hostile, "dst_kind": "external", "dst": "</table><b>x", "dst_namespace": "",
                   "name": "", "proto": "TCP", "ports": [443], "first_seen": "2026-11-20T09:00:00Z",
                   "last_seen": "2026-11-20T10:00:00Z", "connections": 2, "nodes": ["n<1>"]}
    report = Report(since="1970-01-01T00:00:00Z", until="2105-01-01T00:00:00Z", generated_at="2026-11-26T00:00:00Z",
                    summary={"records": 2}, fanout=[row], tiers={hostile: {"tier": "B", "reason": "<i>why</i>"}},
                    destinations=[destination], drift_since="2026-11-19T00:00:00Z",
                    drift=[{**destination, "port": 443}], step_s=3600,
                    connections=[{"bucket": "2026-11-20T09:00:00Z", "namespace": hostile, "connections": 2}],
                    new_destinations=[{"bucket": "2026-11-20T09:00:00Z", "new_destinations": 1}])
    text = render(report)
    assert "<script>alert" not in text and "</table><b>" not in text and "<i>why" not in text
    assert text.count("</script>") == 1  # only the data block's own end
    dom = parse(text)
    (fanout,) = dom.find_all("table", id="fanout-table")
    assert fanout.rows()[0][0] == hostile
    assert dom.find_all("table", class_="destinations")[0].rows()[0][1] == "</table><b>x"
    assert embedded(text) == report.as_json()


def test_empty_store_renders(client: ch.Client, tmp_path: Path) -> None:
    client.database = "h_empty"
    ch.migrate(client)
    try:
        path, out = flows_report_html(client, tmp_path, "--since", "7d")
    finally:
        client.database = "h_demo"
    dom = parse(path.read_text(encoding="utf-8"))
    assert "0 namespaces" in out and dom.find_all("table", id="fanout-table")[0].rows() == []
    assert "No connections" in dom.find_all("p", id="chart-connections")[0].text()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/test installs Debian's chromium)")
def test_page_renders_in_chromium(page: Path) -> None:
    html_text = page.read_text(encoding="utf-8")
    data = embedded(html_text)
    dom = parse(chromium("--dump-dom", page.as_uri()).stdout)
    assert dom.find_all("h1")[0].text() == "Egress observatory report"

    (fanout,) = dom.find_all("table", id="fanout-table")
    expected = [[cell({**r, "tier": data["tiers"][r["namespace"]]["tier"]}[c]) for c in FANOUT_COLUMNS]
                for r in data["fanout"]]
    assert fanout.rows() == expected and len(expected) == 11
    (drift,) = dom.find_all("table", id="drift-table")
    assert drift.rows() == [[cell(r[c]) for c in DRIFT_COLUMNS] for r in data["drift"]] and data["drift"]
    tables = {t.attrs["data-namespace"]: t for t in dom.find_all("table", class_="destinations")}
    assert list(tables) == [r["namespace"] for r in data["fanout"]]
    for ns, table in tables.items():
        rows = [r for r in data["destinations"] if r["namespace"] == ns]
        assert table.rows() == [[cell(r[c]) for c in DESTINATION_COLUMNS] for r in rows] and rows, ns

    (connections,) = dom.find_all("figure", id="chart-connections")
    series = connection_series(data["connections"], data["step_s"])
    assert [p.attrs["data-series"] for p in connections.find_all("polyline")] == [name for name, _ in series]
    (new,) = dom.find_all("figure", id="chart-new")
    assert len(new.find_all("rect", class_="bar")) == len(data["new_destinations"])

    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copyfile(page, ARTIFACTS / "flows-report.html")
    screenshot = ARTIFACTS / "flows-report.png"
    screenshot.unlink(missing_ok=True)
    chromium(f"--screenshot={screenshot}", "--window-size=1400,2000", page.as_uri())
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 20_000


def test_report_reads_a_time_range(client: ch.Client, tmp_path: Path) -> None:
    """--since/--until narrow every part of the page to [since, until)."""
    path, _ = flows_report_html(client, tmp_path, "--since", "2026-11-21T00:00:00Z", "--until", "2026-11-22",
                                "--drift-days", "0.5")
    data = embedded(path.read_text(encoding="utf-8"))
    lo, hi = dt.datetime(2026, 11, 21, tzinfo=dt.UTC), dt.datetime(2026, 11, 22, tzinfo=dt.UTC)
    assert data["fanout"] == query(client, FANOUT_SQL, since="2026-11-21 00:00:00", until="2026-11-22 00:00:00")
    assert all(lo <= parse_instant(r["bucket"]) < hi for r in data["connections"])
    drift_since = parse_instant(data["drift_since"])
    assert drift_since > lo and all(drift_since <= parse_instant(r["first_seen"]) < hi for r in data["drift"])


def test_providers_from_an_asn_database(client: ch.Client, page: Path, tmp_path: Path) -> None:
    """Every external IP of the demo is put in its /16 of one provider: each destination names it,
    and each external drift row is a known provider exactly when its namespace reached one before."""
    data = embedded(page.read_text(encoding="utf-8"))
    external = {r["dst"] for r in data["destinations"] if r["dst_kind"] == "external"}
    nets = {str(ipaddress.ip_network(f"{ip}/{16 if ':' not in ip else 32}", strict=False)) for ip in external}
    mmdb = write_mmdb(tmp_path / "asn.mmdb", dict.fromkeys(nets, CDN))
    path, out = flows_report_html(client, tmp_path, "--asn-db", str(mmdb), "--drift-days", "2")
    text = path.read_text(encoding="utf-8")
    with_asn = embedded(text)
    assert with_asn["asn_db"].startswith("asn.mmdb (GeoLite2-ASN, built ")
    assert {r["asn"] for r in with_asn["destinations"] if r["dst_kind"] == "external"} == {64500}
    assert {r["asn"] for r in with_asn["destinations"] if r["dst_kind"] != "external"} <= {None}
    before = query(client, f"SELECT DISTINCT namespace FROM peers(since = '1970-01-01 00:00:00', until = {{u:{T}}}) "
                           "WHERE dst_kind = 'external'", u=with_asn["drift_since"].replace("T", " ").rstrip("Z"))
    reached = {r["namespace"] for r in before}
    drifted = [r for r in with_asn["drift"] if r["dst_kind"] == "external"]
    assert drifted, "the demo has external drift"
    for r in drifted:
        assert (r["provider"] != "new-provider") == (r["namespace"] in reached), r
    assert any(r["provider"].startswith("known-") for r in drifted)  # the demo's IPs rotate inside providers
    dom = parse(text)
    (drift_table,) = dom.find_all("table", id="drift-table")
    assert [th.text() for th in drift_table.find_all("th")][-4:] == ["provider", "asn", "as_org", "prefix"]
    assert any("Example CDN" in t.text() for t in dom.find_all("table", class_="destinations"))
    assert "Providers from asn.mmdb" in dom.find_all("p", id="asn-db")[0].text()
