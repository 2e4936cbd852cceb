"""Prometheus metrics: everything that moves gets a counter.

Names say "records" for log records and "connections" where a Calico line is
meant: Calico's Log rule fires once per new connection.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

RECORDS = Counter(
    "flows_records_total", "Records taken from the raw topic (received), and by outcome "
    "(parsed, rejected, ignored, duplicate, replayed)", ["outcome"], registry=REGISTRY)
ENVELOPE_REJECTS = Counter(
    "flows_envelope_rejects_total", "Kafka messages or records that could not be decoded", registry=REGISTRY)
SOURCE_MATCH = Counter(
    "flows_source_attribution_total",
    "How sources were attributed (ip+iface, ip, iface, conflict, iface_mismatch, none)",
    ["match"], registry=REGISTRY)
UNATTRIBUTED = Counter(
    "flows_unattributed_connections_total", "Egress connections whose source no pod owned", registry=REGISTRY)
ROWS_INSERTED = Counter(
    "flows_rows_inserted_total", "Rows confirmed by ClickHouse, by table", ["table"], registry=REGISTRY)
INSERT_SECONDS = Histogram(
    "flows_insert_seconds", "Time to insert one batch into ClickHouse", registry=REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
INSERT_FAILURES = Counter(
    "flows_insert_failures_total", "Failed insert attempts (retried with backoff)", registry=REGISTRY)
INSERT_BLOCKED = Gauge(
    "flows_insert_blocked", "1 while the worker is retrying a failed insert and not consuming", registry=REGISTRY)
QUARANTINED = Counter(
    "flows_quarantined_rows_total", "Rows ClickHouse refused on their own, stored in rejects (stage insert) "
    "instead of their table", registry=REGISTRY)
OWNER_EVENTS = Counter(
    "flows_owner_events_total", "Ownership events applied to the registry", ["kind"], registry=REGISTRY)
OWNED_IPS = Gauge("flows_registry_ips", "IPs with at least one ownership claim", registry=REGISTRY)
CONSUMER_LAG = Gauge(
    "flows_consumer_lag_messages", "Raw-topic messages not yet confirmed in ClickHouse (end - committed offset)",
    ["partition"],
    registry=REGISTRY)
NEWEST_RECORD = Gauge(
    "flows_newest_record_timestamp_seconds", "Timestamp of the newest record stored", registry=REGISTRY)
HELD = Gauge(
    "flows_held_records", "Records waiting for ownership that covers their time", registry=REGISTRY)
HOLD_RELEASED = Counter(
    "flows_hold_released_total", "Held records released: attributed (ownership arrived) or unattributed "
    "(watermark passed without it, or the hold limit was reached)", ["outcome"], registry=REGISTRY)
OWNERS_WATERMARK = Gauge(
    "flows_owners_watermark_timestamp_seconds", "Time up to which ownership publishers declared themselves "
    "complete (the newest watermark on the owners topic)", registry=REGISTRY)
ROWS_REPAIRED = Counter(
    "flows_rows_repaired_total", "Stored rows attributed again (an unattributed source, a late or stale "
    "destination owner), when ownership covering their time arrived", registry=REGISTRY)
OFFSETS_COMMITTED = Counter(
    "flows_offset_commits_total", "Offset commits after a confirmed insert", registry=REGISTRY)


def snapshot() -> dict[str, float]:
    """Flat name -> value map of our counters, for ``flows status``."""
    out: dict[str, float] = {}
    for metric in REGISTRY.collect():
        for sample in metric.samples:
            if sample.name.endswith(("_created", "_bucket")):
                continue
            label = ",".join(f"{v}" for v in sample.labels.values())
            out[f"{sample.name}{'{' + label + '}' if label else ''}"] = sample.value
    return out
