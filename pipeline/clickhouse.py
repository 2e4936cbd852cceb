"""ClickHouse adapter: client factory, migration runner and the few queries the worker needs.

The schema itself lives in ``sql/*.sql`` (one definition, read by the CLI, Grafana and
ad-hoc users alike); this module only applies it and talks to the tables. The same code
drives chDB in-process (``chdb:///path``) and a ClickHouse server (``http(s)://host:port``).
Every value that comes from outside is sent as a bound parameter; table names are checked
against fixed allowlists because identifiers cannot be bound.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client

__all__ = [
    "FLOW_COLUMNS",
    "OWNERSHIP_COLUMNS",
    "REJECT_COLUMNS",
    "Client",
    "connect",
    "existing_ids",
    "insert_columns",
    "migrate",
    "sql_dir",
]

# Insert column order of each table; must equal the table's columns minus server defaults
# (ingested_at). tests/test_sql.py compares them with system.columns.
FLOW_COLUMNS: tuple[str, ...] = (
    "ts",
    "record_id",
    "host",
    "source",
    "direction",
    "in_iface",
    "out_iface",
    "family",
    "proto",
    "src_ip",
    "src_port",
    "dst_ip",
    "dst_port",
    "length",
    "src_kind",
    "src_namespace",
    "src_workload_kind",
    "src_workload",
    "src_pod",
    "src_match",
    "dst_kind",
    "dst_namespace",
    "dst_workload_kind",
    "dst_name",
    "dst_pod",
)
REJECT_COLUMNS: tuple[str, ...] = (
    "ts",
    "record_id",
    "host",
    "source",
    "stage",
    "reason",
    "detail",
    "raw",
    "raw_len",
    "kafka_partition",
    "kafka_offset",
)
OWNERSHIP_COLUMNS: tuple[str, ...] = (
    "ip",
    "kind",
    "namespace",
    "name",
    "uid",
    "workload_kind",
    "workload",
    "node",
    "labels",
    "valid_from",
    "valid_to",
    "observed_at",
    "source",
)

# Tables the helpers may name (identifiers cannot be bound parameters).
_INSERT_TABLES: dict[str, frozenset[str]] = {
    "flows": frozenset(FLOW_COLUMNS),
    "rejects": frozenset(REJECT_COLUMNS),
    "ownership": frozenset(OWNERSHIP_COLUMNS),
}
_ID_TABLES = frozenset({"flows", "rejects"})
# Tables whose TTL follows migrate(ttl_days=...).
_TTL_TABLES = ("flows", "rejects")
_TTL_RE = re.compile(r"\bTTL ingested_at \+ toIntervalDay\((\d+)\)")

_DATABASE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_MIGRATIONS_TABLE = "schema_migrations"
# Ids per existing_ids query: keeps the bound array (sent in the URL to a server) small.
_ID_CHUNK = 2000
# Synchronous inserts: the worker batches itself and acks offsets only after the insert
# (ClickHouse >= 26.2 turns async_insert on by default). A retried identical block is
# skipped by flows and by the edges view alike (explicit for servers where it defaults to 0).
_INSERT_SETTINGS = {"async_insert": 0, "deduplicate_blocks_in_dependent_materialized_views": 1}


def sql_dir() -> Path:
    """The repository's ``sql/`` directory (numbered migrations)."""
    return Path(__file__).resolve().parent.parent / "sql"


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
        client = clickhouse_connect.get_client(dsn=f"chdb://{path}")
    elif scheme in ("http", "https"):
        if parts.username is not None or parts.password is not None or "@" in parts.netloc:
            raise ValueError("credentials must not be embedded in the ClickHouse URL: pass username/password")
        if not parts.hostname:
            raise ValueError("ClickHouse URL has no host: expected http(s)://host:port")
        secure = scheme == "https"
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
        )
    else:
        raise ValueError(
            f"unsupported ClickHouse URL scheme {scheme!r}: use chdb:///path, http:// or https://"
        )
    client.database = database
    return client


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
    schema was already current.
    """
    if isinstance(ttl_days, bool) or not isinstance(ttl_days, int) or not 1 <= ttl_days <= 3650:
        raise ValueError("ttl_days must be an integer between 1 and 3650")
    database = client.database
    if not database or not _DATABASE_RE.match(database):
        raise ValueError("client has no valid current database: use connect()")
    client.command(
        "CREATE DATABASE IF NOT EXISTS {db:Identifier}", parameters={"db": database}, use_database=False
    )
    client.command(
        f"CREATE TABLE IF NOT EXISTS {_MIGRATIONS_TABLE} ("
        " name String, sha256 String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3)"
        ") ENGINE = ReplacingMergeTree(applied_at) ORDER BY name"
    )
    # argMax: correct without FINAL if the same file was recorded more than once.
    applied = dict(
        client.query(
            f"SELECT name, argMax(sha256, applied_at) FROM {_MIGRATIONS_TABLE} GROUP BY name"
        ).result_rows
    )
    changed: list[str] = []
    for path in _migration_files():
        text = path.read_text(encoding="utf-8")
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if applied.get(path.name) == digest:
            continue
        for statement in _statements(text):
            client.command(statement)
        client.insert(
            _MIGRATIONS_TABLE,
            [[path.name, digest]],
            column_names=["name", "sha256"],
            settings=_INSERT_SETTINGS,
        )
        changed.append(path.name)
    changed.extend(_apply_ttl(client, ttl_days))
    return changed


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


def insert_columns(client: Client, table: str, columns: tuple[str, ...], data: list[list]) -> None:
    """Columnar insert (``data`` holds one list per column, in ``columns`` order)."""
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
    client.insert(
        table,
        data,
        column_names=list(columns),
        column_oriented=True,
        settings=_INSERT_SETTINGS,
    )


def existing_ids(client: Client, table: str, ids: list[int], lo_ns: int, hi_ns: int) -> set[int]:
    """Which of ``ids`` are already stored in ``table`` with ts in [lo_ns, hi_ns].

    The worker calls this with a batch's ids and time span to drop replays before
    inserting. ts is stored in microseconds, so the bounds are widened to whole
    microseconds (floor/ceil) so that a record at the edge of the span is still found.
    """
    if table not in _ID_TABLES:
        raise ValueError(f"existing_ids on unknown table {table!r}")
    if not ids:
        return set()
    lo_us = int(lo_ns) // 1000
    hi_us = -(-int(hi_ns) // 1000)
    query = (
        f"SELECT DISTINCT record_id FROM {table}"
        " WHERE ts >= fromUnixTimestamp64Micro({lo:Int64}, 'UTC')"
        " AND ts <= fromUnixTimestamp64Micro({hi:Int64}, 'UTC')"
        " AND record_id IN {ids:Array(UInt128)}"
    )
    unique = sorted({int(i) for i in ids})
    found: set[int] = set()
    for start in range(0, len(unique), _ID_CHUNK):
        params: dict[str, Any] = {"lo": lo_us, "hi": hi_us, "ids": unique[start : start + _ID_CHUNK]}
        found.update(int(row[0]) for row in client.query(query, parameters=params).result_rows)
    return found
