-- rejects: malformed input kept with its reason (dead letters), so bad input never stops
-- the stream and can be inspected and replayed later.
CREATE TABLE IF NOT EXISTS rejects
(
    ts              DateTime64(6, 'UTC') CODEC(Delta, ZSTD(1)),
    record_id       UInt128,
    host            LowCardinality(String),
    source          LowCardinality(String),
    stage           LowCardinality(String),   -- line: Calico line does not parse; envelope: Kafka message/record undecodable
    reason          LowCardinality(String),
    detail          String CODEC(ZSTD(3)),
    raw             String CODEC(ZSTD(3)),    -- the input, truncated by the worker to 64 KiB
    raw_len         UInt64,                   -- length before truncation
    kafka_partition Int32,
    kafka_offset    Int64,
    ingested_at     DateTime('UTC') DEFAULT now()
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY (stage, ts, record_id)
-- Same retention rule as flows (migrate() keeps the two in step).
TTL ingested_at + INTERVAL 30 DAY
SETTINGS ttl_only_drop_parts = 1, non_replicated_deduplication_window = 1000;
