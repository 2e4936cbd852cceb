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

-- runtime_settings: the worker's settings that SQL must follow to answer as it does
-- (delete_grace_s for owner_at). Written by each worker at start; the newest wins.
CREATE TABLE IF NOT EXISTS runtime_settings
(
    name       String,
    value      String,
    updated_at DateTime64(6, 'UTC') DEFAULT now64(6)
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY name;

-- claims: the latest observation of every claim (ip, kind, uid), chosen exactly as the worker's
-- registry chooses (pipeline/core/registry.py, _rank): the newest observed_at; for equal ones the
-- earlier end (a close beats a reopen: NULL = open = latest), then the content. One tuple, so every
-- field comes from the same row (a bare argMax would skip a NULL valid_to and resurrect an older
-- closing time). A pod's identity claim (no IP: its interface) is stored under '::'.
-- Correct without FINAL. owner_at, current_claims and the worker's seeding read this view.
CREATE OR REPLACE VIEW claims AS
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
            (observed_at, -ifNull(toUnixTimestamp64Micro(valid_to), 9223372036854775807), valid_from,
             namespace, name, workload_kind, workload, node)
        ) AS latest,
        max(observed_at) AS last_observed
    FROM ownership
    GROUP BY ip, kind, uid
);

-- owner_at(ip, at): who held an IP at a moment — the one owner the worker's registry gives, e.g.
--   SELECT * FROM owner_at(ip='10.244.3.7', at='2026-11-24 14:00:00')
-- ip is text (IPv4 or IPv6) converted with toIPv6. The rule, as in pipeline/core/registry.py:
-- of the claims that contain `at` (valid_from <= at < valid_to, NULL = open), the one that started
-- last wins (a finished pod never closed loses to the pod that took its IP after it); if none
-- contains it, the claim that ended last still answers until FLOWS_DELETE_GRACE_S after its end
-- (a line logged just after its pod was deleted); ties are broken on (kind, uid). hostNetwork pods
-- claim nothing (the Node owns the address); a dual-stack pod has one claim per address.
CREATE OR REPLACE VIEW owner_at AS
SELECT
    ip, kind, uid, namespace, name, workload_kind, workload, node, labels, valid_from, valid_to, source,
    observed_at
FROM claims
WHERE ip = toIPv6({ip:String}) AND ip != toIPv6('::')
  AND valid_from <= {at:DateTime64(6, 'UTC')}
  AND (valid_to IS NULL OR {at:DateTime64(6, 'UTC')} < assumeNotNull(valid_to) + toIntervalSecond(
        ifNull((SELECT toInt64OrNull(argMax(value, updated_at)) FROM runtime_settings
                WHERE name = 'delete_grace_s'), 30)))
ORDER BY
    (valid_to IS NULL OR {at:DateTime64(6, 'UTC')} < assumeNotNull(valid_to)) DESC,
    if(valid_to IS NULL OR {at:DateTime64(6, 'UTC')} < assumeNotNull(valid_to), valid_from,
       assumeNotNull(valid_to)) DESC,
    valid_from DESC, kind DESC, uid DESC
LIMIT 1;
