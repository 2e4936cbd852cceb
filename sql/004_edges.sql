-- Long-term history of egress edges: one row per (day, source workload, destination, proto, port).
--
-- The rule: flows is the truth while it holds a day; sealed snapshots answer after.
-- flows keeps every row for FLOWS_TTL_DAYS after its ingestion, and a row of day D is ingested at
-- the earliest a day before D (enrich's future slack), so the days from today - (ttl_days - 2) on
-- are complete in flows, counted with uniqExact(record_id): replays, retried blocks and repaired
-- rows count once, whatever the batches were. The sealer (pipeline/store/edge_seals.py: every
-- worker every few minutes, and `flows migrate`) copies the edges of each day whose flows parts
-- changed since its last seal into `edge_seals`. `edges` reads a day from its seal when its flows
-- parts are still the ones the seal read (the cheap path, most days), else from flows; a day older
-- than the flows window combines its seal with what flows still holds of it. Nothing is ever
-- summed across writes or deleted: a seal is a whole snapshot under a newer version, so sealing
-- again, several workers sealing at once, or a crash at any point leave the same answer.

-- edge_seals: snapshots of edges, newest sealed_at wins per (day, edge): the sorting key is the
-- whole edge identity, so ReplacingMergeTree's FINAL (edges_sealed) picks exactly that row.
CREATE TABLE IF NOT EXISTS edge_seals
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
    first_seen        DateTime64(6, 'UTC'),
    last_seen         DateTime64(6, 'UTC'),
    connections       UInt64,
    nodes             Array(String),
    sealed_at         DateTime64(6, 'UTC')      -- the version: when the snapshot was read
)
ENGINE = ReplacingMergeTree(sealed_at)
-- Monthly: the table is small, months keep the part count low for multi-month scans.
PARTITION BY toYYYYMM(day)
ORDER BY (src_namespace, day, dst_kind, dst_namespace, dst_name, dst_ip, proto, dst_port,
          src_workload_kind, src_workload, dst_workload_kind);

-- edge_sealed_days: every seal of a day, with the flows parts it read (a day with no edges has a
-- seal too). Written after the seal's rows: a crash between the two leaves the day unsealed.
CREATE TABLE IF NOT EXISTS edge_sealed_days
(
    day        Date,
    sealed_at  DateTime64(6, 'UTC'),
    parts_hash UInt64                        -- flows_day_parts.parts_hash when the seal began
)
ENGINE = ReplacingMergeTree(sealed_at)
ORDER BY day;

-- flows_day_parts: per day (flows partition), a hash of the names of its active parts. Parts are
-- never changed in place: an insert, a merge, a mutation (repair's delete) or a TTL drop each
-- gives the day another set of names. From the part list: nothing is scanned.
CREATE OR REPLACE VIEW flows_day_parts AS
SELECT
    makeDate(intDiv(toUInt32(partition_id), 10000), intDiv(toUInt32(partition_id), 100) % 100,
             toUInt32(partition_id) % 100) AS day,
    cityHash64(arraySort(groupArray(name))) AS parts_hash
FROM system.parts
-- partition ids are toYYYYMMDD(ts) (sql/001_flows.sql)
WHERE database = currentDatabase() AND table = 'flows' AND active AND match(partition_id, '^[0-9]{8}$')
GROUP BY day;

-- unsealed_days: days of flows whose parts are not the ones their newest seal began with. The
-- sealer takes the hash before it reads, so an equal hash means nothing changed from before that
-- read until now: the seal is exactly what flows holds. A merge makes a day unsealed too; it is
-- read from flows until the next pass seals it again, which is only slower.
CREATE OR REPLACE VIEW unsealed_days AS
SELECT day
FROM flows_day_parts
WHERE (day, parts_hash) NOT IN (SELECT day, argMax(parts_hash, sealed_at) FROM edge_sealed_days GROUP BY day);

-- The summing materialized view of earlier versions (replaced by the rule above).
DROP VIEW IF EXISTS edges_mv;

-- edges_from_flows: per-day edges computed from flows (uniqExact(record_id): each record once).
CREATE OR REPLACE VIEW edges_from_flows AS
SELECT
    toDate(ts) AS day,
    src_namespace, src_workload_kind, src_workload, dst_kind, dst_namespace, dst_workload_kind, dst_name,
    if(dst_kind IN ('external', 'unknown'), flows.dst_ip, toIPv6('::')) AS dst_ip,
    proto,
    ifNull(flows.dst_port, 0) AS dst_port,
    min(ts) AS first_seen,
    max(ts) AS last_seen,
    toUInt64(uniqExact(record_id)) AS connections,
    arraySort(groupUniqArray(toString(host))) AS nodes
FROM flows
WHERE direction = 'egress' AND src_namespace != ''
GROUP BY day, src_namespace, src_workload_kind, src_workload, dst_kind, dst_namespace, dst_workload_kind,
         dst_name, dst_ip, proto, dst_port;

-- edges_sealed: per-day edges from the newest seal of each (day, edge). FINAL applies the table's
-- own rule (the highest sealed_at of a key) at read time, merged or not; measured four times
-- cheaper here than the equivalent argMax over the row.
CREATE OR REPLACE VIEW edges_sealed AS
SELECT
    day, src_namespace, src_workload_kind, src_workload, dst_kind, dst_namespace, dst_workload_kind,
    dst_name, dst_ip, proto, dst_port, first_seen, last_seen, connections, nodes
FROM edge_seals FINAL;

-- edges: the per-day edges, same columns as the table of earlier versions: the newest seal of each
-- edge, and for unsealed days what flows holds. Inside the flows window flows' count is the answer
-- (a seal can only be an older, smaller snapshot of it). Older than the window, flows holds at most
-- part of the day (a backfill, or a record shipped again after its row expired): connections are
-- the larger of the two counts, so a partial flows day can never shrink sealed history nor count a
-- re-shipped record twice (new records backfilled into an old, already sealed and expired day count
-- as the larger part, not added). First/last sighting and nodes are unions everywhere.
-- One pass over both (unsealed_days is read once): the cheapest shape measured.
CREATE OR REPLACE VIEW edges AS
WITH
    today() - (ifNull((SELECT toInt64OrNull(argMax(value, updated_at)) FROM runtime_settings
                       WHERE name = 'ttl_days'), 30) - 2) AS flows_window_from
SELECT
    day, src_namespace, src_workload_kind, src_workload, dst_kind, dst_namespace, dst_workload_kind,
    dst_name, dst_ip, proto, dst_port,
    min(first_seen) AS first_seen,
    max(last_seen) AS last_seen,
    if(day >= flows_window_from AND max(from_flows), maxIf(connections, from_flows), max(connections))
        AS connections,
    arraySort(groupUniqArrayArray(nodes)) AS nodes
FROM
(
    SELECT *, true AS from_flows FROM edges_from_flows WHERE day IN (SELECT day FROM unsealed_days)
    UNION ALL
    SELECT *, false AS from_flows FROM edges_sealed
)
GROUP BY day, src_namespace, src_workload_kind, src_workload, dst_kind, dst_namespace, dst_workload_kind,
         dst_name, dst_ip, proto, dst_port;
