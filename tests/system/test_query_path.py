"""The query path of a running stack cannot hurt ingestion (store/readonly.py), against chDB.

One data directory, as in ``flows up``: the insert client (the sink's) and the query session
side by side. Every refused statement is followed by an insert on the insert client, which
must still work, and by a query, which must answer right (no state left behind).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from pipeline.basics.config import Settings
from pipeline.core.enrich import Batch
from pipeline.core.rows import FLOW_COLUMNS
from pipeline.store import clickhouse as ch
from pipeline.store.readonly import QueryRefused, ReadOnlyQueries, lock_session
from pipeline.tooling.synthetic import generate
from tests.system.test_sink import batches


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("query-path")


@pytest.fixture(scope="module")
def writer(home: Path) -> Iterator[ch.Client]:
    client = ch.open_client(Settings(home=home))
    ch.migrate(client)
    yield client
    client.close()


@pytest.fixture(scope="module")
def queries(home: Path, writer: ch.Client) -> Iterator[ReadOnlyQueries]:
    q = ReadOnlyQueries(Settings(home=home, query_max_execution_s=1, query_max_result_rows=1000,
                                 query_max_memory_bytes=64 << 20))
    yield q
    q.close()


def ask(queries: ReadOnlyQueries, sql: str, **params: object) -> list[list]:
    return asyncio.run(queries(sql, params))[1]


@pytest.fixture(scope="module")
def slices() -> Iterator[Batch]:
    """Worker batches (the real parse + enrich path), a fresh one for each insert."""
    corpus = generate(seed=5, namespaces=4, records=3000)
    return iter(batches(corpus, *range(0, 3000, 40)))


def insert(writer: ch.Client, slices: Iterator[Batch]) -> int:
    """A batch through the insert client, as the sink writes it; returns the rows ``flows`` holds."""
    batch = next(slices)
    inserted, _ = ch.insert_new_rows(writer, "flows", batch.flows, min(batch.flow_ts), max(batch.flow_ts))
    assert inserted == len(batch.flow_ts) > 0
    return writer.query("SELECT count() FROM flows").result_rows[0][0]


REFUSED = [
    ("SET readonly = 1", "refused"),
    ("SET max_execution_time = 0", "refused"),
    ("SELECT 1 SETTINGS readonly = 0", "refused"),
    ("DROP TABLE flows", "refused: DROP"),
    ("TRUNCATE TABLE flows", "refused: TRUNCATE"),
    ("INSERT INTO flows (record_id) VALUES (1)", "refused: INSERT"),
    ("ALTER TABLE flows DELETE WHERE 1", "refused: ALTER"),
    ("KILL QUERY WHERE 1", "refused: KILL"),
    ("USE system", "refused: USE"),
    ("SYSTEM FLUSH LOGS", "refused: SYSTEM"),
    ("SELECT 1; DROP TABLE flows", "Multi-statements are not allowed"),
    ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "refused"),
    ("SELECT * FROM url('http://127.0.0.1:9/x', 'CSV', 'a String')", "refused"),
    ("SELECT file('/etc/passwd')", "local files"),
    ("select `file` ('/etc/passwd')", "local files"),
    ("DESCRIBE TABLE file('/etc/passwd', 'CSVWithNames')", "refused: DESCRIBE"),
    ("SELECT 1 INTO OUTFILE '{out}'", "local files"),
]


@pytest.mark.parametrize(("sql", "reason"), REFUSED, ids=[s for s, _ in REFUSED])
def test_refused_statements_leave_inserts_and_later_queries_intact(queries, writer, slices, tmp_path, sql, reason):
    before = insert(writer, slices)
    out = tmp_path / "out.txt"
    with pytest.raises(QueryRefused, match=reason) as refused:
        ask(queries, sql.format(out=out))
    assert "\n" not in str(refused.value)
    assert not out.exists()
    after = insert(writer, slices)
    assert after > before, "the insert client still writes"
    assert ask(queries, "SELECT count() FROM flows") == [[after]]
    assert ask(queries, "SELECT getSetting('readonly'), currentDatabase()") == [[1, "flows"]]


def test_reads_a_user_needs_still_work(queries):
    assert ask(queries, "SELECT {ns:String} AS ns, 'a;b file(x) INTO OUTFILE' AS s", ns="x';--") == [
        ["x';--", "a;b file(x) INTO OUTFILE"]]
    assert ask(queries, "WITH 2 AS k SELECT k * 3") == [[6]]
    assert ["flows"] in ask(queries, "SHOW TABLES")
    assert ask(queries, "EXISTS TABLE flows") == [[1]]
    assert ask(queries, "DESCRIBE TABLE flows.flows") == ask(queries, "DESCRIBE flows")
    assert ask(queries, "DESCRIBE flows")[0][0] == FLOW_COLUMNS[0]
    assert ask(queries, "-- a comment\nSELECT count() > 0 FROM flows;") == [[1]]


@pytest.mark.parametrize(("sql", "reason"), [
    ("SELECT count() FROM numbers(1000000000000)", "longer than FLOWS_QUERY_MAX_EXECUTION_S=1 s"),
    ("SELECT number FROM numbers(100000)", "more than FLOWS_QUERY_MAX_RESULT_ROWS=1000 rows"),
    ("SELECT length(groupArray(toString(number))) FROM numbers(50000000)", "FLOWS_QUERY_MAX_MEMORY_BYTES=67108864"),
])
def test_heavy_queries_are_cut_with_the_setting_to_raise(queries, sql, reason):
    with pytest.raises(QueryRefused, match=reason):
        ask(queries, sql)
    assert ask(queries, "SELECT count() FROM numbers(10)") == [[10]]


@pytest.mark.slow
def test_a_running_stack_keeps_ingesting_whatever_flows_sql_sends(stack_factory, tmp_path):
    """`flows sql` against `flows up`: hostile statements are refused in one line, inserts go on."""
    corpus = generate(seed=17, namespaces=4, records=2000)
    # No ownership is published here: lines nothing attributes wait FLOWS_HOLD_MAX_S before being stored.
    stack = stack_factory(FLOWS_QUERY_MAX_EXECUTION_S="2", FLOWS_HOLD_MAX_S="1").start()
    half, whole = tmp_path / "half.jsonl", tmp_path / "whole.jsonl"
    half.write_text("\n".join(corpus.journal[: len(corpus.journal) // 2]) + "\n")
    whole.write_text("\n".join(corpus.journal) + "\n")
    stack.run("ship", "file", str(half))
    stack.wait_for(lambda: stack.json("report", "summary")["records"] > 0, what="the first half stored")

    for sql, reason in [("SET readonly = 1", "refused"), ("DROP TABLE flows", "refused: DROP"),
                        ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "refused"),
                        ("SELECT file('/etc/passwd')", "refused"),
                        ("SELECT count() FROM numbers(1000000000000)", "query cut: it ran longer than "
                                                                       "FLOWS_QUERY_MAX_EXECUTION_S=2 s")]:
        proc = stack.run("sql", sql, check=False)
        message = proc.stderr.decode().strip()
        assert proc.returncode == 2 and reason in message and "\n" not in message, (sql, message)
        assert "Traceback" not in message

    stack.run("ship", "file", str(whole))  # the first half again (dropped as replays) and the rest
    exp = corpus.expected
    summary = stack.wait_for_stored(exp.records, exp.rejected)
    assert (summary["records"], summary["rejected"]) == (exp.records, exp.rejected)
    assert stack.json("sql", "SELECT getSetting('readonly') AS ro") == [{"ro": 1}]


def test_a_migrated_schema_starts_a_worker_that_may_not_run_ddl(home, writer):
    """The deployment's worker user has no DDL rights: on a current schema migrate() only reads."""
    settings = Settings(home=home)
    restricted = lock_session(ch.open_client(settings), settings)
    try:
        assert ch.migrate(restricted) == []
        with pytest.raises(DatabaseError, match="readonly"):
            ch.migrate(restricted, ttl_days=7)  # a change still needs the migrating user
    finally:
        restricted.close()
