"""The row shapes the core produces: insert columns of ``flows``, ``rejects``, ``ownership`` and ``endpoint_claims``.

Declared here, in the pure core, because the core builds rows in exactly this order; the
store applies them (``sql/`` holds the tables, ``tests/system/test_sql.py`` checks both agree).
"""

from __future__ import annotations

# Insert column order of each table; must equal the table's columns minus server defaults
# (ingested_at). tests/system/test_sql.py compares them with system.columns.
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
# ClickHouse type of every insert column of the four tables (and of ``revision``, which repairs
# write): the one declaration every Arrow block is typed from (a name two tables use has one
# type). tests/system/test_sql.py compares it with system.columns.
COLUMN_TYPES: dict[str, str] = {
    "ts": "DateTime64(6, 'UTC')",  # int microseconds (or datetime)
    "record_id": "UInt128",  # Python int
    "host": "LowCardinality(String)",
    "source": "LowCardinality(String)",
    "direction": "LowCardinality(String)",
    "in_iface": "LowCardinality(String)",
    "out_iface": "LowCardinality(String)",
    "family": "UInt8",
    "proto": "LowCardinality(String)",
    "src_ip": "IPv6",  # text, IPv4 or IPv6; IPv4 is stored IPv4-mapped
    "src_port": "Nullable(UInt16)",
    "dst_ip": "IPv6",
    "dst_port": "Nullable(UInt16)",
    "length": "UInt32",
    "src_kind": "LowCardinality(String)",
    "src_namespace": "LowCardinality(String)",
    "src_workload_kind": "LowCardinality(String)",
    "src_workload": "String",
    "src_pod": "String",
    "src_match": "LowCardinality(String)",
    "dst_kind": "LowCardinality(String)",
    "dst_namespace": "LowCardinality(String)",
    "dst_workload_kind": "LowCardinality(String)",
    "dst_name": "String",
    "dst_pod": "String",
    "stage": "LowCardinality(String)",
    "reason": "LowCardinality(String)",
    "detail": "String",
    "raw": "String",
    "raw_len": "UInt64",
    "kafka_partition": "Int32",
    "kafka_offset": "Int64",
    "revision": "UInt8",
    "ip": "IPv6",
    "kind": "LowCardinality(String)",
    "namespace": "LowCardinality(String)",
    "name": "String",
    "uid": "String",
    "workload_kind": "LowCardinality(String)",
    "workload": "String",
    "node": "LowCardinality(String)",
    "labels": "Map(String, String)",
    "valid_from": "DateTime64(6, 'UTC')",
    "valid_to": "Nullable(DateTime64(6, 'UTC'))",  # None while open
    "observed_at": "DateTime64(6, 'UTC')",
    "port": "UInt16",
    "protocol": "LowCardinality(String)",
    "target": "String",
}
ENDPOINT_COLUMNS: tuple[str, ...] = (
    "ip",
    "port",
    "protocol",
    "uid",
    "namespace",
    "name",
    "target",
    "node",
    "valid_from",
    "valid_to",
    "observed_at",
    "source",
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
