"""ClickHouse adapter: client factory, migration runner and the few queries the worker needs.

The schema itself lives in ``sql/*.sql`` (one definition, read by the CLI, Grafana and
ad-hoc users alike); this module only applies it and talks to the tables. The same code
drives chDB in-process (``chdb:///path``) and a ClickHouse server (``http(s)://host:port``).
Every value that comes from outside is sent as a bound parameter; table names are checked
against fixed allowlists because identifiers cannot be bound.

Batches of flows and rejects go through ``insert_new_rows``: Arrow to a session-private staging
table, the replay check and the insert itself run server-side (see its docstring for why).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from pipeline.basics.config import Settings
from pipeline.basics.resources import contract_dir
from pipeline.core.flow_rows import FLOW_VALUE_COLUMNS, RECORD_COLUMNS, FlowRows
from pipeline.core.rows import COLUMN_TYPES, ENDPOINT_COLUMNS, FLOW_COLUMNS, OWNERSHIP_COLUMNS, REJECT_COLUMNS

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "COLUMN_TYPES",
    "FLOW_COLUMNS",
    "OWNERSHIP_COLUMNS",
    "ENDPOINT_COLUMNS",
    "REJECT_COLUMNS",
    "Client",
    "connect",
    "insert_columns",
    "insert_new_rows",
    "migrate",
    "record_runtime_settings",
    "sql_dir",
]

log = logging.getLogger("flows.clickhouse")

_MIGRATIONS_TABLE = "schema_migrations"
# Tables the helpers may name (identifiers cannot be bound parameters).
_INSERT_TABLES: dict[str, frozenset[str]] = {
    "flows": frozenset((*FLOW_COLUMNS, "revision")),  # revision: written by attribution repair only
    "rejects": frozenset(REJECT_COLUMNS),
    "ownership": frozenset(OWNERSHIP_COLUMNS),
    "endpoint_claims": frozenset(ENDPOINT_COLUMNS),
    _MIGRATIONS_TABLE: frozenset({"name", "sha256"}),
    "runtime_settings": frozenset({"name", "value"}),
}
# Types of every column an insert may name: the data tables' (COLUMN_TYPES) and the store's own.
_TYPES: dict[str, str] = {**COLUMN_TYPES, "sha256": "String", "value": "String"}
# Tables insert_new_rows stages, with their insert columns and the session's staging table.
_STAGED_TABLES: dict[str, tuple[tuple[str, ...], str]] = {
    "flows": (FLOW_COLUMNS, "flows_staging"),
    "rejects": (REJECT_COLUMNS, "rejects_staging"),
}
STAGING_TABLES = frozenset(staging for _, staging in _STAGED_TABLES.values())
# Tables whose TTL follows migrate(ttl_days=...).
_TTL_TABLES = ("flows", "rejects")
_TTL_RE = re.compile(r"\bTTL ingested_at \+ toIntervalDay\((\d+)\)")

# Days (= partitions of flows and rejects) one INSERT may touch: the server's default
# max_partitions_per_insert_block is 100; 31 keeps a margin for servers set lower, and the
# edges view's block touches at most as many (monthly) partitions.
DAYS_PER_INSERT = 31
_US_PER_DAY = 86_400 * 10**6

_DATABASE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# Synchronous inserts: the worker batches itself and acks offsets only after the insert
# (ClickHouse >= 26.2 turns async_insert on by default). A retried identical block is
# skipped by flows; an INSERT ... SELECT needs a deduplication token for that (see insert_new_rows).
# max_execution_time bounds one attempt on the server itself, so an insert whose client gave up
# cannot land minutes later: a revoked worker counts on it (worker/consumer.py REVOKE_FLUSH_S).
INSERT_ATTEMPT_S = 60
_INSERT_SETTINGS = {"async_insert": 0, "max_execution_time": INSERT_ATTEMPT_S}
# Claim tables: their blocks are not collapsed as they are written, so two observations of one claim
# that tie on observed_at both stay for the readers to rank as the registry does (a close beats a
# reopen), instead of the last row in the block winning. flows and rejects keep the collapse: a row
# twice in one block is stored once.
_CLAIM_INSERT_SETTINGS = {**_INSERT_SETTINGS, "optimize_on_insert": 0}
_CLAIM_TABLES = frozenset({"ownership", "endpoint_claims"})


def sql_dir() -> Path:
    """The ``sql/`` directory (numbered migrations) of this installation."""
    return contract_dir("sql")


def connect(
    url: str,
    *,
    username: str | None = None,
    password: str | None = None,
    database: str = "flows",
    secure_verify: bool = True,
    ca_cert: str | None = None,
) -> Client:
    """Open a client on ``chdb:///abs/path`` (embedded, directory created) or ``http(s)://host:port``.

    The database is made current but not required to exist yet: ``migrate`` creates it.
    An HTTP client always gets a session id (insert_new_rows' staging table lives in it).
    Credentials are taken only as arguments, never from the URL, and no error message
    repeats the URL.
    """
    if not isinstance(database, str) or not _DATABASE_RE.match(database):
        raise ValueError("invalid ClickHouse database name: use letters, digits and '_'")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "chdb":
        if parts.netloc or not parts.path.startswith("/"):
            raise ValueError("chdb URL must be chdb:///absolute/path (an absolute data directory)")
        path = Path(parts.path)
        path.mkdir(parents=True, exist_ok=True)
        if "chdb" not in sys.modules:  # read once, when the library loads
            os.environ.setdefault("JE_MALLOC_CONF", EMBEDDED_MALLOC_CONF)
        client = clickhouse_connect.get_client(dsn=f"chdb://{path}")
    elif scheme in ("http", "https"):
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise ValueError("credentials must not be embedded in the ClickHouse URL: pass username/password")
        if not parts.hostname:
            raise ValueError("ClickHouse URL has no host: expected http(s)://host:port")
        secure = scheme == "https"
        if secure and not secure_verify:
            _warn_unverified()
        try:
            port = parts.port
        except ValueError:
            raise ValueError("ClickHouse URL has an invalid port") from None
        client = clickhouse_connect.get_client(
            host=parts.hostname,
            port=port or (8443 if secure else 8123),
            username=username or "default",
            password=password or "",
            secure=secure,
            verify=secure_verify,
            ca_cert=ca_cert,
            # insert_new_rows stages batches in a temporary table, which lives in the session: never
            # rely on the driver-wide default for it. One client = one session, so the client must
            # stay on one thread (the sink's executor).
            autogenerate_session_id=True,
        )
    else:
        raise ValueError(
            f"unsupported ClickHouse URL scheme {scheme!r}: use chdb:///path, http:// or https://"
        )
    client.database = database
    return client


# chDB's own allocator (jemalloc, inside the library) keeps pages the engine freed until more
# allocation in the same arena decays them, so an idle worker kept what its last inserts used.
# With a background thread they go back after a second (an operator's JE_MALLOC_CONF wins).
EMBEDDED_MALLOC_CONF = "background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0"


@functools.cache
def _warn_unverified() -> None:
    """Once per process (the sink reconnects after every failed insert)."""
    log.warning("FLOWS_CLICKHOUSE_VERIFY=false: the ClickHouse server's TLS certificate is not checked, so "
                "anyone on the network path can read and change what this process sends and receives")


def _statements(text: str) -> list[str]:
    """Split a migration file into statements: a ``;`` ending a line's code (before any
    ``--`` comment) ends a statement. Chunks holding only comments are skipped."""
    statements: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        code = _code_part(line).rstrip()
        if code.endswith(";"):
            current.append(code[:-1])
            statements.append("\n".join(current))
            current = []
        else:
            current.append(line)
    statements.append("\n".join(current))
    return [s.strip() for s in statements if any(_code_part(line).strip() for line in s.splitlines())]


def _code_part(line: str) -> str:
    """The line without its ``--`` comment (a ``--`` inside a quoted literal is kept)."""
    quote = ""
    i = 0
    while i < len(line):
        ch = line[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'`\"":
            quote = ch
        elif line.startswith("--", i):
            return line[:i]
        i += 1
    return line


def _migration_files() -> list[Path]:
    return sorted(sql_dir().glob("*.sql"), key=lambda p: p.name)


def migrate(client: Client, *, ttl_days: int = 30) -> list[str]:
    """Apply ``sql/*.sql`` in order, then set the flows/rejects TTL to ``ttl_days``.

    Each file is recorded with its sha256 in ``schema_migrations``; a file is applied when it
    is new or its content changed (statements are idempotent, so re-applying an edited file
    replaces views and leaves existing tables alone: table changes go in a new file).
    Returns the names of the files applied and of the TTL changes made; ``[]`` when the
    schema was already current. ``ttl_days`` is also stored in ``runtime_settings``: the
    ``edges`` view reads it to know which days flows still holds whole.
    """
    if isinstance(ttl_days, bool) or not isinstance(ttl_days, int) or not 1 <= ttl_days <= 3650:
        raise ValueError("ttl_days must be an integer between 1 and 3650")
    database = client.database
    if not database or not _DATABASE_RE.match(database):
        raise ValueError("client has no valid current database: use connect()")
    if _schema_is_current(client, ttl_days):
        return []
    client.command(
        "CREATE DATABASE IF NOT EXISTS {db:Identifier}", parameters={"db": database}, use_database=False
    )
    client.command(
        f"CREATE TABLE IF NOT EXISTS {_MIGRATIONS_TABLE} ("
        " name String, sha256 String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)"
        ") ENGINE = ReplacingMergeTree(applied_at) ORDER BY name"
    )
    applied = _applied(client)
    changed: list[str] = []
    if _set_aside_summed_edges(client):
        applied = {}  # whatever was recorded, the files must now build edges as a view
    for path, text, digest in _migrations():
        if applied.get(path.name) == digest:
            continue
        for statement in _statements(text):
            client.command(statement)
        insert_columns(client, _MIGRATIONS_TABLE, ("name", "sha256"), [[path.name], [digest]])
        changed.append(path.name)
    _seal_summed_edges(client)
    changed.extend(_apply_ttl(client, ttl_days))
    record_runtime_settings(client, {"ttl_days": ttl_days})
    return changed


def _migrations() -> list[tuple[Path, str, str]]:
    """Each migration file with its text and sha256."""
    return [(p, t, hashlib.sha256(t.encode("utf-8")).hexdigest())
            for p in _migration_files() for t in [p.read_text(encoding="utf-8")]]


def _applied(client: Client) -> dict[str, str]:
    """Recorded file name -> sha256 (argMax: correct without FINAL if a file was recorded twice)."""
    return dict(client.query(
        f"SELECT name, argMax(sha256, applied_at) FROM {_MIGRATIONS_TABLE} GROUP BY name").result_rows)


def _schema_is_current(client: Client, ttl_days: int) -> bool:
    """Every file applied as it is and the TTL as asked, found with reads only: a worker whose
    ClickHouse user may not run DDL (the deployment migrates with another user) starts on it."""
    try:
        applied = _applied(client)
    except DatabaseError:  # no database or no schema_migrations yet
        return False
    engines = dict(client.query(
        "SELECT name, engine FROM system.tables WHERE database = currentDatabase() AND name IN {names:Array(String)}",
        parameters={"names": ["edges", _SUMMED_EDGES]}).result_rows)
    if engines.get("edges", "View") != "View" or _SUMMED_EDGES in engines:  # an old summed edges to convert
        return False
    return all(applied.get(path.name) == digest for path, _, digest in _migrations()) and all(
        _current_ttl_days(client, table) == ttl_days for table in _TTL_TABLES)


# Earlier versions kept ``edges`` as a table summed by the materialized view edges_mv; it becomes
# the view of sql/004_edges.sql, and its rows become the oldest seal (version 0) of their days.
_SUMMED_EDGES = "edges_summed"


def _set_aside_summed_edges(client: Client) -> bool:
    """Stop edges_mv and rename the summed table out of the view's way (before 004 runs); True if done."""
    rows = client.query(
        "SELECT engine FROM system.tables WHERE database = currentDatabase() AND name = 'edges'"
    ).result_rows
    if rows and rows[0][0] != "View":
        client.command("DROP VIEW IF EXISTS edges_mv")
        client.command(f"RENAME TABLE edges TO {_SUMMED_EDGES}")
        return True
    return False


def _seal_summed_edges(client: Client) -> None:
    """Copy the set-aside summed table into edge_seals as version 0, then drop it.

    Killed between the two, the next migrate copies it again: identical rows under the same
    version, either of which is the newest. Any later seal of a day (a newer version) replaces it.
    """
    rows = client.query(
        "SELECT 1 FROM system.tables WHERE database = currentDatabase() AND name = {t:String}",
        parameters={"t": _SUMMED_EDGES},
    ).result_rows
    if not rows:
        return
    keys = ("day, src_namespace, src_workload_kind, src_workload, dst_kind, dst_namespace, dst_workload_kind,"
            " dst_name, dst_ip, proto, dst_port")
    client.command(
        f"INSERT INTO edge_seals ({keys}, first_seen, last_seen, connections, nodes, sealed_at)"  # noqa: S608
        f" SELECT {keys}, min(first_seen), max(last_seen), sum(connections),"
        f" arraySort(groupUniqArrayArray(nodes)), toDateTime64(0, 6, 'UTC') FROM {_SUMMED_EDGES} GROUP BY {keys}",
        settings={"async_insert": 0, "insert_deduplicate": 0},
    )
    client.command(f"DROP TABLE {_SUMMED_EDGES}")


def record_runtime_settings(client: Client, values: dict[str, int]) -> None:
    """Store settings the SQL views must follow (``runtime_settings``: the newest row per name
    wins); a value already current is not written again."""
    current = dict(client.query(
        "SELECT name, argMax(value, updated_at) FROM runtime_settings WHERE name IN {names:Array(String)}"
        " GROUP BY name", parameters={"names": list(values)}).result_rows)
    changed = {name: str(value) for name, value in values.items() if current.get(name) != str(value)}
    insert_columns(client, "runtime_settings", ("name", "value"), [list(changed), list(changed.values())])


def _current_ttl_days(client: Client, table: str) -> int | None:
    rows = client.query(
        "SELECT engine_full FROM system.tables WHERE database = currentDatabase() AND name = {t:String}",
        parameters={"t": table},
    ).result_rows
    if not rows:
        return None
    match = _TTL_RE.search(rows[0][0])
    return int(match.group(1)) if match else None


def _apply_ttl(client: Client, ttl_days: int) -> list[str]:
    """Make the ingested_at TTL of flows and rejects ``ttl_days``; only ALTER what differs."""
    changes: list[str] = []
    for table in _TTL_TABLES:
        current = _current_ttl_days(client, table)
        if current == ttl_days:
            continue
        # ttl_days is a validated int (1..3650) and table a constant: DDL cannot bind them.
        client.command(f"ALTER TABLE {table} MODIFY TTL ingested_at + INTERVAL {int(ttl_days)} DAY")
        changes.append(f"{table} TTL {ttl_days}d")
    return changes


def insert_columns(client: Client, table: str, columns: tuple[str, ...], data: list[list],
                   token: str | None = None) -> None:
    """Columnar insert (``data`` holds one list per column, in ``columns`` order), sent as Arrow.

    ``token``: an insert_deduplication_token, so that a retry of the very same rows is skipped.

    Not the driver's Native ``insert``: its insert context refers to itself, so it outlived every
    call as cyclic garbage holding the columns it was given (each block of claims stayed resident
    until a rare full collection), and it imports pandas to ask whether the data is a DataFrame
    (stack/run.py keeps pandas out of a worker). Arrow is built in C, as for every other insert.
    """
    allowed = _INSERT_TABLES.get(table)
    if allowed is None:
        raise ValueError(f"insert into unknown table {table!r}")
    unknown = [c for c in columns if c not in allowed]
    if unknown:
        raise ValueError(f"unknown columns for {table}: {unknown}")
    if len(data) != len(columns):
        raise ValueError(f"{len(columns)} columns but {len(data)} data columns")
    if not data or not len(data[0]):
        return
    settings = _CLAIM_INSERT_SETTINGS if table in _CLAIM_TABLES else _INSERT_SETTINGS
    client.insert_arrow(table, _to_arrow(tuple(columns), data)[0],
                        settings=settings if token is None else {**settings, "insert_deduplication_token": token})


def _arrow_type(ch_type: str) -> pa.DataType:
    import pyarrow as pa

    inner = ch_type.removeprefix("Nullable(").removesuffix(")") if ch_type.startswith("Nullable(") else ch_type
    return {
        "DateTime64(6, 'UTC')": pa.timestamp("us", tz="UTC"),  # int microseconds
        "UInt128": pa.binary(16),  # little-endian, as ClickHouse stores it
        "IPv6": pa.binary(16),  # the stored bytes (ipv6_bytes), never text: see there
        "UInt8": pa.uint8(),
        "UInt16": pa.uint16(),
        "UInt32": pa.uint32(),
        "UInt64": pa.uint64(),
        "Int32": pa.int32(),
        "Int64": pa.int64(),
        "String": pa.string(),
        "LowCardinality(String)": pa.string(),
        "Map(String, String)": pa.map_(pa.string(), pa.string()),  # a dict per row
    }[inner]


@functools.cache
def _arrow_schema(columns: tuple[str, ...]) -> pa.Schema:
    """Arrow schema of insert columns, derived from their ClickHouse types (built on first use:
    importing pyarrow costs ~0.2 s that CLI commands which never insert should not pay)."""
    import pyarrow as pa

    return pa.schema([pa.field(c, _arrow_type(_TYPES[c]), nullable=_TYPES[c].startswith("Nullable(")) for c in columns])


def _has_session(client: Client) -> bool:
    """chDB: each client is its own connection handle (a session); HTTP: only with a session id."""
    return str(getattr(client, "uri", "")).startswith("chdb://") or bool(client.get_client_setting("session_id"))


def _staged_arrow(table: str, columns: dict[str, list] | FlowRows) -> tuple[pa.Table, list[bytes]]:
    """``columns`` (name -> list, or a batch's FlowRows for flows) of a staged table as Arrow (_to_arrow)."""
    staged = _STAGED_TABLES.get(table)
    if staged is None:
        raise ValueError(f"staged insert into unknown table {table!r}")
    order, _ = staged
    if isinstance(columns, FlowRows):
        if table != "flows":
            raise ValueError(f"FlowRows are rows of flows, not of {table!r}")
        return _flow_arrow(columns)
    if set(columns) != set(order):
        raise ValueError(f"columns for {table} must be exactly {list(order)}; got {sorted(columns)}")
    if any(len(columns[c]) != len(columns["record_id"]) for c in order):
        raise ValueError(f"columns for {table} have different lengths")
    return _to_arrow(order, [columns[c] for c in order])


def _to_arrow(columns: tuple[str, ...], data: list[list]) -> tuple[pa.Table, list[bytes]]:
    """``data`` (one list per column, in ``columns`` order) as an Arrow table, plus the record ids as
    the 16 bytes it sent when there is a record_id column (reused for the dedup token).

    pyarrow builds each column in C; the driver's Native insert converts value by value in
    Python (``ip_address()`` per IP, LowCardinality dictionaries), which was the insert's main
    cost. Values that do not fit the type (a 129-bit id, a port > 65535) raise here, before
    anything is sent.
    """
    import pyarrow as pa

    schema = _arrow_schema(columns)
    id_bytes = [int(i).to_bytes(16, "little") for i in data[columns.index("record_id")]] \
        if "record_id" in columns else []
    arrays = [
        pa.array(id_bytes if field.name == "record_id"
                 else list(map(ipv6_bytes, values)) if _TYPES[field.name] == "IPv6"
                 else values, type=field.type)
        for field, values in zip(schema, data, strict=True)
    ]
    return pa.Table.from_arrays(arrays, schema=schema), id_bytes


def _flow_arrow(rows: FlowRows) -> tuple[pa.Table, list[bytes]]:
    """A batch's flows rows as the Arrow table ``_to_arrow`` builds from their columns, plus their ids' bytes.

    Each flow's values are converted once and repeated by Arrow (``take``), so a row costs the
    conversion of what its record brings. Only the flows the rows use are converted: one the batch
    path looked up for a record it then held must not fail the rows.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    flows_used = pa.array(rows.flow, type=pa.int32())
    flows = rows.flows
    used = pc.unique(flows_used)
    if len(used) < len(flows):
        flows = [flows[i] for i in used.to_pylist()]
        flows_used = pc.index_in(flows_used, value_set=used)
    per_flow = _to_arrow(FLOW_VALUE_COLUMNS, [list(c) for c in zip(*flows, strict=True)])[0] if flows \
        else _arrow_schema(FLOW_VALUE_COLUMNS).empty_table()
    schema = _arrow_schema(FLOW_COLUMNS)
    ts_us = pc.divide(pa.array(rows.ts_ns, type=pa.int64()), 1000)  # the stored µs (a flows row's ts is > 0)
    per_record, id_bytes = _to_arrow(RECORD_COLUMNS[1:], list(rows.record_columns()[1:]))
    repeated = per_flow.take(flows_used)
    columns = [ts_us.cast(schema.field("ts").type) if c == "ts" else per_record.column(c) if c in RECORD_COLUMNS
               else repeated.column(c) for c in FLOW_COLUMNS]
    return pa.Table.from_arrays(columns, schema=schema), id_bytes


_V4_MAPPED = bytes(10) + b"\xff\xff"


@functools.lru_cache(maxsize=1 << 14)
def ipv6_bytes(text: str) -> bytes:
    """The 16 bytes an IPv6 column stores for an address's text; IPv4 becomes IPv4-mapped.

    Sent as bytes because ClickHouse reads an Arrow string column into IPv6 as raw bytes when every
    value in it is 16 bytes long: a batch whose addresses were all 16-character IPv6 texts
    (``fd00:10:244:1::a``) was stored as ``6664:3030:3a31:...``, the text's own bytes. A value that
    is not an address raises ArrowInvalid, which the sink treats as a refusal of that row.
    """
    import pyarrow as pa

    try:
        if ":" in text:
            return socket.inet_pton(socket.AF_INET6, text)
        return _V4_MAPPED + socket.inet_pton(socket.AF_INET, text)
    except (OSError, TypeError):
        raise pa.ArrowInvalid(f"{text!r} is not an IP address") from None


def insert_new_rows(client: Client, table: str, columns: dict[str, list] | FlowRows, lo_ns: int,
                    hi_ns: int) -> tuple[int, int]:
    """Insert the rows of ``columns`` whose record_id is not stored yet; returns (inserted, replayed).

    ``lo_ns``/``hi_ns`` span the rows' ts in nanoseconds (widened to whole microseconds, as ts
    is stored); only stored rows inside that span count. ``replayed`` is the number of rows
    dropped because their record_id was already stored; duplicates *within* one call are
    inserted as given (enrich.Batch drops those before).

    Why this shape: sending the ids to check them and converting rows in the driver cost more
    than the insert itself. Here the batch goes once, as Arrow, to a staging table; the replay
    check is a join on the server (usually empty) and the new rows are copied with one
    INSERT ... SELECT, so flows gets one block per batch.

    Rows of any time range insert: flows and rejects are partitioned by day and the server
    refuses a block that touches more than ``max_partitions_per_insert_block`` (100 by
    default) partitions, so the copy runs once per run of at most ``DAYS_PER_INSERT`` days
    (one copy for an ordinary batch), each with its own deduplication token.

    The staging table is ``CREATE TEMPORARY TABLE ... AS <table> ENGINE = Memory``: temporary
    tables belong to the session (the HTTP session id connect() always sets, or the chDB
    connection handle), so workers sharing a server never see each other's batches, and
    IF NOT EXISTS recreates it after a session expired. It is emptied at the start of every
    call, so a call that failed midway leaves nothing behind for its retry.

    An INSERT ... SELECT from a Memory table is not block-deduplicated by default
    (``deduplicate_insert_select``: its SELECT is not "stable"), so it carries a token derived
    from the inserted record ids: a retry of the very same rows that slipped past the check
    (the first insert not yet visible) is skipped by ``table``. Nothing else depends on it:
    ``edges`` counts distinct record ids (sql/004_edges.sql).
    """
    data, id_bytes = _staged_arrow(table, columns)  # validates table and columns before any statement
    attributed = columns.attributed if isinstance(columns, FlowRows) else None
    n = data.num_rows
    if n == 0:
        return 0, 0
    if not _has_session(client):
        raise ValueError("insert_new_rows needs a client with a session (staging is a temporary table): use connect()")
    order, staging = _STAGED_TABLES[table]
    # table and staging come from _STAGED_TABLES only; every value is bound.
    client.command(f"CREATE TEMPORARY TABLE IF NOT EXISTS {staging} AS {table} ENGINE = Memory")
    try:
        client.command(f"TRUNCATE TABLE {staging}")
        client.insert_arrow(staging, data, settings={"async_insert": 0})
        bounds = {"lo": int(lo_ns) // 1000, "hi": -(-int(hi_ns) // 1000)}
        stored = (
            f"SELECT record_id FROM {table}"
            " WHERE ts >= fromUnixTimestamp64Micro({lo:Int64}, 'UTC')"
            " AND ts <= fromUnixTimestamp64Micro({hi:Int64}, 'UTC')"
            f" AND record_id IN (SELECT record_id FROM {staging})"
        )
        rows = client.query(f"SELECT DISTINCT record_id FROM ({stored})", parameters=bounds).result_rows
        found = {int(row[0]).to_bytes(16, "little") for row in rows}  # as sent (id_bytes)
        new_ids = id_bytes  # the new rows' ids as sent: their hash is a copy's deduplication token
        if found:
            new_ids = [b for b in id_bytes if b not in found]
        names = ", ".join(order)
        # Who attributed flows rows, as constants of the copy (sql/011_attribution_marks.sql).
        into, select, marks = names, names, {}
        if attributed is not None:
            into += ", attributed_by, attributed_batch"
            select += ", {attributed_by:UInt64}, {attributed_batch:UInt32}"
            marks = {"attributed_by": attributed[0], "attributed_batch": attributed[1]}
        # The replayed ids are filtered on the server: binding them could exceed a URL's size.
        where, params = (f" WHERE record_id NOT IN ({stored})", bounds) if found else ("", {})
        copies = [(where, params, new_ids)] if new_ids else []
        if bounds["hi"] // _US_PER_DAY - bounds["lo"] // _US_PER_DAY >= DAYS_PER_INSERT:
            is_new = [b not in found for b in id_bytes]
            copies = _copies_by_days(data.column("ts").cast("int64").to_pylist(), id_bytes, is_new, where, params)
        for copy_where, copy_params, ids in copies:
            token = hashlib.sha256(b"".join(ids)).hexdigest()
            client.command(
                f"INSERT INTO {table} ({into}) SELECT {select} FROM {staging}{copy_where}",
                parameters={**(copy_params or {}), **marks} or None,
                settings={**_INSERT_SETTINGS, "insert_deduplication_token": f"{table}:{token}"},
            )
    finally:
        # Frees the batch; best effort, as the next call truncates first anyway.
        with contextlib.suppress(Exception):
            client.command(f"TRUNCATE TABLE {staging}")
    return len(new_ids), n - len(new_ids)


def _copies_by_days(
    micros: list[int], id_bytes: list[bytes], is_new: list[bool], where: str, params: dict[str, int]
) -> list[tuple[str, dict[str, int], list[bytes]]]:
    """One copy per run of at most DAYS_PER_INSERT consecutive UTC days present among the new rows:
    (WHERE clause, its parameters, the run's record ids) each, ``where``/``params`` kept in every one."""
    by_day: dict[int, list[bytes]] = {}
    for us, rid, keep in zip(micros, id_bytes, is_new, strict=True):
        if keep:
            by_day.setdefault(us // _US_PER_DAY, []).append(rid)
    days = sorted(by_day)
    span = (" AND " if where else " WHERE ") + (
        "ts >= fromUnixTimestamp64Micro({d0:Int64}, 'UTC') AND ts < fromUnixTimestamp64Micro({d1:Int64}, 'UTC')")
    copies = []
    for i in range(0, len(days), DAYS_PER_INSERT):
        run = days[i : i + DAYS_PER_INSERT]
        copies.append((where + span, {**params, "d0": run[0] * _US_PER_DAY, "d1": (run[-1] + 1) * _US_PER_DAY},
                       [rid for day in run for rid in by_day[day]]))
    return copies


def open_client(settings: Settings) -> Client:
    """A clickhouse-connect client for the configured URL (credentials from settings only)."""
    return connect(
        settings.effective_clickhouse_url,
        username=settings.clickhouse_user,
        password=settings.clickhouse_password.get_secret_value() if settings.clickhouse_password else None,
        database=settings.clickhouse_database,
        secure_verify=settings.clickhouse_verify,
        ca_cert=str(settings.clickhouse_ca_cert) if settings.clickhouse_ca_cert else None,
    )
