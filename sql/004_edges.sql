-- edges: per-day aggregate of EGRESS flows from attributed sources, one row per
-- (day, source workload, destination, proto, port). It is tiny (distinct edges per day, not
-- connections) and has no TTL: it is what answers fan-out and drift for weeks and months after
-- flows' rows expired.
CREATE TABLE IF NOT EXISTS edges
(
    day               Date,
    src_namespace     LowCardinality(String),
    src_workload_kind LowCardinality(String),
    src_workload      String,
    dst_kind          LowCardinality(String),
    dst_namespace     LowCardinality(String),
    dst_workload_kind LowCardinality(String),
    dst_name          String,
    dst_ip            IPv6,                     -- only for external/unknown, '::' otherwise
    proto             LowCardinality(String),
    dst_port          UInt16,                   -- 0 when the protocol has no port
    -- min/max/union are idempotent: replayed rows cannot move them
    first_seen        SimpleAggregateFunction(min, DateTime64(6, 'UTC')),
    last_seen         SimpleAggregateFunction(max, DateTime64(6, 'UTC')),
    -- not idempotent by itself: exact as long as each record reaches flows once, which the
    -- worker's replay check (insert_new_rows) and insert-block deduplication (below) ensure
    connections       SimpleAggregateFunction(sum, UInt64),
    nodes             SimpleAggregateFunction(groupUniqArrayArray, Array(String))
)
ENGINE = AggregatingMergeTree
-- Monthly: the table is small, months keep the part count low for multi-month scans.
PARTITION BY toYYYYMM(day)
-- Namespace and day first (fan-out per namespace over a time range), then the destination
-- identity. dst_workload_kind is last so that it is part of the key rather than an arbitrary
-- pick when rows merge.
ORDER BY (src_namespace, day, dst_kind, dst_namespace, dst_name, dst_ip, proto, dst_port,
          src_workload_kind, src_workload, dst_workload_kind)
-- A replayed insert block is skipped in flows (same setting there); with the window here the
-- rows this view derived from it are skipped too, so a retried batch cannot double `connections`.
SETTINGS non_replicated_deduplication_window = 1000;

-- Feeds edges from every insert into flows. uniqExact(record_id) rather than count() makes
-- a record duplicated inside one insert block count once.
CREATE MATERIALIZED VIEW IF NOT EXISTS edges_mv TO edges AS
SELECT
    toDate(ts) AS day,
    src_namespace,
    src_workload_kind,
    src_workload,
    dst_kind,
    dst_namespace,
    dst_workload_kind,
    dst_name,
    if(dst_kind IN ('external', 'unknown'), flows.dst_ip, toIPv6('::')) AS dst_ip,
    proto,
    ifNull(flows.dst_port, 0) AS dst_port,
    min(ts) AS first_seen,
    max(ts) AS last_seen,
    toUInt64(uniqExact(record_id)) AS connections,
    groupUniqArray(host) AS nodes
FROM flows
WHERE direction = 'egress' AND src_namespace != ''
GROUP BY day, src_namespace, src_workload_kind, src_workload, dst_kind, dst_namespace,
         dst_workload_kind, dst_name, dst_ip, proto, dst_port;
