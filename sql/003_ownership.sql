-- ownership: history of IP ownership claims (pods, services, nodes), as published on
-- k8s.owners.v1. A claim is keyed by (ip, kind, uid); a later observation of the same claim
-- (e.g. the one that closes it with valid_to) supersedes earlier ones.
CREATE TABLE IF NOT EXISTS ownership
(
    ip            IPv6,                     -- IPv4 stored IPv4-mapped
    kind          LowCardinality(String),   -- pod | service | node
    namespace     LowCardinality(String),
    name          String,
    uid           String,
    workload_kind LowCardinality(String),
    workload      String,
    node          LowCardinality(String),
    labels        Map(String, String) CODEC(ZSTD(1)),
    valid_from    DateTime64(6, 'UTC'),
    valid_to      Nullable(DateTime64(6, 'UTC')),   -- NULL while the claim is open
    observed_at   DateTime64(6, 'UTC'),
    source        LowCardinality(String)
)
-- Backstop only: owner_at below is correct without FINAL (argMax by observed_at).
ENGINE = ReplacingMergeTree(observed_at)
ORDER BY (ip, kind, uid);

-- owner_at(ip, at): who held an IP at a moment, for ad-hoc questions such as
--   SELECT * FROM owner_at(ip='10.244.3.7', at='2026-11-24 14:00:00')
-- ip is text (IPv4 or IPv6) converted with toIPv6. The latest observation of each claim wins
-- (one tuple so every field comes from the same row; a bare argMax would skip a NULL
-- valid_to and resurrect an older closing time), then the claim must cover `at`:
-- valid_from <= at < valid_to (NULL = still open).
CREATE OR REPLACE VIEW owner_at AS
SELECT
    ip,
    kind,
    uid,
    latest.1 AS namespace,
    latest.2 AS name,
    latest.3 AS workload_kind,
    latest.4 AS workload,
    latest.5 AS node,
    latest.6 AS labels,
    latest.7 AS valid_from,
    latest.8 AS valid_to,
    latest.9 AS source,
    last_observed AS observed_at
FROM
(
    SELECT
        ip,
        kind,
        uid,
        argMax(
            (namespace, name, workload_kind, workload, node, labels, valid_from, valid_to, source),
            observed_at
        ) AS latest,
        max(observed_at) AS last_observed
    FROM ownership
    WHERE ip = toIPv6({ip:String})
    GROUP BY ip, kind, uid
)
WHERE latest.7 <= {at:DateTime64(6, 'UTC')}
  AND (latest.8 IS NULL OR {at:DateTime64(6, 'UTC')} < assumeNotNull(latest.8))
ORDER BY kind, valid_from;
