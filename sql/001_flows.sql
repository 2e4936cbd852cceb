-- flows: one row per Calico packet-log record (a new connection seen by a Log rule),
-- enriched at ingest with who owned each IP *when the packet was seen*.
-- Column order here is the insert order: pipeline.clickhouse.FLOW_COLUMNS must match it
-- (ingested_at excepted, it is filled by the server); tests/system/test_sql.py checks that.
CREATE TABLE IF NOT EXISTS flows
(
    -- packet time from the journal/Loki record; Delta suits values sorted within a namespace
    ts                DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    -- stable record identity: replays carry the same id (random bits: nothing to compress)
    record_id         UInt128,
    host              LowCardinality(String),
    source            LowCardinality(String),   -- journal | loki | fluent-bit | syslog | raw
    direction         LowCardinality(String),   -- egress | ingress | other
    in_iface          LowCardinality(String),
    out_iface         LowCardinality(String),
    family            UInt8,
    proto             LowCardinality(String),
    src_ip            IPv6 CODEC(ZSTD(1)),      -- IPv4 stored IPv4-mapped (::ffff:a.b.c.d)
    src_port          Nullable(UInt16) CODEC(ZSTD(1)),
    dst_ip            IPv6 CODEC(ZSTD(1)),
    dst_port          Nullable(UInt16) CODEC(ZSTD(1)),   -- NULL for protocols without ports (ICMP)
    length            UInt32 CODEC(T64, ZSTD(1)),        -- 0 when the line had no LEN=
    src_kind          LowCardinality(String),   -- pod | service | node | external | unknown
    src_namespace     LowCardinality(String),   -- '' when the source could not be attributed
    src_workload_kind LowCardinality(String),
    src_workload      String CODEC(ZSTD(1)),
    src_pod           String CODEC(ZSTD(1)),
    src_match         LowCardinality(String),   -- ip+iface | ip | iface | conflict | none
    dst_kind          LowCardinality(String),   -- pod | service | node | external | unknown
    dst_namespace     LowCardinality(String),
    dst_workload_kind LowCardinality(String),
    dst_name          String CODEC(ZSTD(1)),    -- pod: workload; service: name; node: node; else ''
    dst_pod           String CODEC(ZSTD(1)),
    ingested_at       DateTime('UTC') DEFAULT now(),
    -- 0 as ingested; 1 when attribution repair replaced an unattributed row (same record_id)
    revision          UInt8 DEFAULT 0,
    -- replays are dropped by the worker (insert_new_rows); this index keeps that lookup cheap
    INDEX idx_record_id record_id TYPE bloom_filter(0.01) GRANULARITY 4
)
-- ReplacingMergeTree is only a backstop for duplicates that slip past the worker; every
-- query is written to be right WITHOUT FINAL (uniqExact(record_id), LIMIT 1 BY).
ENGINE = ReplacingMergeTree
-- Daily partitions: 30 partitions at the default retention is cheap, the partial-day reads of
-- the destinations view touch only the one or two end days, and each part then holds rows
-- ingested within about a day of each other, which is what makes ttl_only_drop_parts safe.
-- Queries over weeks for one namespace still use the primary key inside every partition.
PARTITION BY toYYYYMMDD(ts)
-- Namespace first: every question is "what does namespace X talk to, over time".
ORDER BY (src_namespace, ts, record_id)
-- TTL on ingested_at, not ts: backfilled lines older than the retention must not vanish at
-- insert (their days are sealed into edge_seals, which keeps them long after). migrate() rewrites the interval
-- from its ttl_days argument.
TTL ingested_at + INTERVAL 30 DAY
-- ttl_only_drop_parts: whole parts are dropped once all their rows expired, instead of
-- rewriting parts row by row.
-- With TTL on ingested_at this only fits because parts of one ts-day are ingested together
-- (live data); a late backfill merged into a live day keeps that day a little longer, never
-- shorter, and sealed edges hold the day anyway.
-- non_replicated_deduplication_window: a retried insert of the very same block (same rows)
-- is skipped; rows carry unique record_ids, so identical block = replay.
SETTINGS ttl_only_drop_parts = 1, non_replicated_deduplication_window = 1000;

-- Tables created before attribution repair existed get the column too.
ALTER TABLE flows ADD COLUMN IF NOT EXISTS revision UInt8 DEFAULT 0 AFTER ingested_at;
