-- What Grafana (grafana/), its alert rules and `flows report html` read besides 005/006:
-- the namespaces whose drift is alerted on more strictly, and per-bucket series of the
-- measures 005 defines as totals. Fan-out, drift and stability themselves stay in 005/006.

-- watched_namespaces: namespaces whose new destinations page (grafana/provisioning/alerting:
-- "New destination in a watched namespace"). mode: 'enforced' (an egress policy is in force:
-- anything new is probably being denied) or 'watched' (enforcement is being prepared).
--   INSERT INTO watched_namespaces (namespace, mode) VALUES ('payments', 'enforced')
--   DELETE FROM watched_namespaces WHERE namespace = 'payments'
-- Inserting a namespace again with another mode supersedes the older row (see `watched`).
CREATE TABLE IF NOT EXISTS watched_namespaces
(
    namespace String,
    mode      LowCardinality(String),
    added_at  DateTime64(6, 'UTC') DEFAULT now64(6),
    note      String DEFAULT '',
    CONSTRAINT mode_known CHECK mode IN ('enforced', 'watched')
)
-- Backstop only: `watched` is correct without FINAL.
ENGINE = ReplacingMergeTree(added_at)
ORDER BY namespace;

-- watched: every watched namespace with its current mode (its newest row) and since when.
CREATE OR REPLACE VIEW watched AS
SELECT namespace, argMax(mode, added_at) AS current_mode, max(added_at) AS since
FROM watched_namespaces
GROUP BY namespace;

-- connections_over_time(since, until, step_s): egress connections per source namespace and
-- time bucket of step_s seconds (UTC, aligned to the epoch), over [since, until), counted as
-- destinations (005) counts them: attributed egress records, distinct record ids. flows answers
-- wherever it still holds rows (every bucket size); days before its oldest row (expired by its
-- TTL) come from edges, one point per whole day at the start of the day's bucket.
CREATE OR REPLACE VIEW connections_over_time AS
WITH
    {since:DateTime64(6, 'UTC')} AS p_since,
    {until:DateTime64(6, 'UTC')} AS p_until,
    toIntervalSecond(greatest({step_s:UInt32}, 1)) AS step,
    (SELECT if(count() = 0, toDate('2149-06-06'), toDate(min(ts))) FROM flows) AS flows_from
SELECT bucket, namespace, sum(part_connections) AS connections
FROM
(
    SELECT
        toDateTime(toStartOfInterval(toDateTime(day, 'UTC'), step), 'UTC') AS bucket,
        src_namespace AS namespace,
        sum(connections) AS part_connections
    FROM edges
    WHERE day < flows_from AND day >= toDate(p_since) AND toDateTime(day, 'UTC') < p_until
    GROUP BY bucket, namespace

    UNION ALL

    SELECT
        toDateTime(toStartOfInterval(ts, step), 'UTC') AS bucket,
        src_namespace AS namespace,
        toUInt64(uniqExact(record_id)) AS part_connections
    FROM flows
    WHERE ts >= p_since AND ts < p_until AND direction = 'egress' AND src_namespace != ''
    GROUP BY bucket, namespace
)
GROUP BY bucket, namespace
ORDER BY bucket, namespace;

-- pipeline_series(since, until, step_s): the totals of `summary` (005) per time bucket of the
-- records' own time, same definitions: records, egress records, unattributed egress records
-- (no pod owned the source), rejected Calico lines, undecodable messages/records.
CREATE OR REPLACE VIEW pipeline_series AS
WITH
    {since:DateTime64(6, 'UTC')} AS p_since,
    {until:DateTime64(6, 'UTC')} AS p_until,
    toIntervalSecond(greatest({step_s:UInt32}, 1)) AS step
SELECT
    bucket,
    sum(f_records) AS records,
    sum(f_egress) AS egress,
    sum(f_unattributed) AS unattributed,
    sum(r_rejected) AS rejected,
    sum(r_envelope) AS envelope_rejects
FROM
(
    SELECT
        toDateTime(toStartOfInterval(ts, step), 'UTC') AS bucket,
        toUInt64(uniqExact(record_id)) AS f_records,
        toUInt64(uniqExactIf(record_id, direction = 'egress')) AS f_egress,
        toUInt64(uniqExactIf(record_id, direction = 'egress' AND src_namespace = '')) AS f_unattributed,
        toUInt64(0) AS r_rejected,
        toUInt64(0) AS r_envelope
    FROM flows
    WHERE ts >= p_since AND ts < p_until
    GROUP BY bucket

    UNION ALL

    SELECT
        toDateTime(toStartOfInterval(ts, step), 'UTC') AS bucket,
        toUInt64(0),
        toUInt64(0),
        toUInt64(0),
        toUInt64(uniqExactIf(record_id, stage = 'line')),
        toUInt64(uniqExactIf((record_id, kafka_partition, kafka_offset), stage = 'envelope'))
    FROM rejects
    WHERE ts >= p_since AND ts < p_until
    GROUP BY bucket
)
GROUP BY bucket
ORDER BY bucket;

-- freshness: when rows last arrived, for "ingestion stalled". Only rows whose own time lies
-- in the last two days are read (daily partitions: one or two are touched); a backfill of old
-- lines does not count as live ingestion. With nothing recent, last_insert is the epoch and
-- seconds_since_insert is huge, which is what an alert on it should see.
CREATE OR REPLACE VIEW freshness AS
SELECT
    max(part_insert) AS last_insert,
    max(part_newest) AS newest_record,
    dateDiff('second', last_insert, now()) AS seconds_since_insert
FROM
(
    SELECT max(ingested_at) AS part_insert, max(ts) AS part_newest
    FROM flows
    WHERE ts >= now() - INTERVAL 2 DAY
    UNION ALL
    SELECT max(ingested_at), max(ts)
    FROM rejects
    WHERE ts >= now() - INTERVAL 2 DAY
);
