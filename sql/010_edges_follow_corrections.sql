-- edges follow a correction of attribution (docs/attribution.md, "Repair"), and summary counts its rows.
--
-- Repair may move a stored row to another destination (its owner's claim came late, or a stale owner
-- answered when it was stored). 004/009 answered a day from the newest seal row of each (day, edge):
-- an edge a correction removed from a day (the old destination) stayed in the older seal rows forever,
-- sealed again or not, so the generated policy kept allowing it. Now:
--   * a sealed day answers with ITS LATEST SEAL's rows only: the rows whose version is at least the
--     day's newest version in edge_sealed_days (a seal's rows are written before its edge_sealed_days
--     row, so that row says the seal completed). An edge missing from the latest seal has only older
--     rows, and does not count.
--     ">=", not "=": edge_seals is a ReplacingMergeTree on (day, edge), so a merge may have replaced a
--     row of the latest completed seal by the same edge's row of a later seal that never completed (a
--     crash between its rows and its edge_sealed_days row). Such a seal began after the completed one;
--     while the day still answers from its seal its flows parts are those the completed seal began with
--     (part names never repeat), so the later seal read the same day and its rows are the same counts.
--     Otherwise the day is unsealed, read as below, and sealed again by the next pass.
--     A day with no completed seal at all (version 0 rows of a migrated summed table) reads every row;
--   * an unsealed day inside the flows window is answered by flows alone. flows holds the whole day
--     there (004: the TTL counts from ingestion, and no row of such a day is old enough to go), so a
--     seal can only be an older snapshot of it, and a seal row of an edge flows no longer has is a
--     correction's old destination. 004/009 still counted such rows;
--   * an unsealed day older than the window combines its latest seal with what flows still holds,
--     the larger count per edge, as 004 did: flows may hold only part of it (expiry, a backfill), so
--     that combination never shrinks history, and the sealer, which writes the answer of this view,
--     never seals a smaller day from partially expired flows.
-- Everything else is 009's: same columns, unsealed_days read once per query, no regrouping of a
-- sealed day. No path deletes aggregate history: older seal rows stay, they only stop answering.
CREATE OR REPLACE VIEW edges AS
SELECT
    day, src_namespace, src_workload_kind, src_workload, dst_kind, dst_namespace, dst_workload_kind,
    dst_name, dst_ip, proto, dst_port, first_seen, last_seen, connections,
    arraySort(arrayDistinct(nodes)) AS nodes
FROM edge_seals FINAL
WHERE NOT has((SELECT groupArray(day) FROM unsealed_days), day)
  AND sealed_at >= (SELECT CAST((groupArray(day), groupArray(v)) AS Map(Date, DateTime64(6, 'UTC')))
                    FROM (SELECT day, max(sealed_at) AS v FROM edge_sealed_days GROUP BY day))[day]
UNION ALL
SELECT
    day, src_namespace, src_workload_kind, src_workload, dst_kind, dst_namespace, dst_workload_kind,
    dst_name, dst_ip, proto, dst_port,
    min(first_seen) AS first_seen,
    max(last_seen) AS last_seen,
    max(connections) AS connections,
    arraySort(groupUniqArrayArray(nodes)) AS nodes
FROM
(
    -- per-day edges of the unsealed days from flows (uniqExact(record_id): each record once)
    SELECT
        toDate(ts) AS day,
        src_namespace, src_workload_kind, src_workload, dst_kind, dst_namespace, dst_workload_kind, dst_name,
        if(dst_kind IN ('external', 'unknown'), flows.dst_ip, toIPv6('::')) AS dst_ip,
        proto,
        ifNull(flows.dst_port, 0) AS dst_port,
        min(ts) AS first_seen,
        max(ts) AS last_seen,
        toUInt64(uniqExact(record_id)) AS connections,
        groupUniqArray(toString(host)) AS nodes
    FROM flows
    WHERE has((SELECT groupArray(day) FROM unsealed_days), toDate(ts))
      AND direction = 'egress' AND src_namespace != ''
    GROUP BY day, src_namespace, src_workload_kind, src_workload, dst_kind, dst_namespace, dst_workload_kind,
             dst_name, dst_ip, proto, dst_port

    UNION ALL

    -- and the latest seals of those older than the flows window
    SELECT
        day, src_namespace, src_workload_kind, src_workload, dst_kind, dst_namespace, dst_workload_kind,
        dst_name, dst_ip, proto, dst_port, first_seen, last_seen, connections, nodes
    FROM edge_seals FINAL
    WHERE has((SELECT groupArray(day) FROM unsealed_days), day)
      AND day < today() - (ifNull((SELECT toInt64OrNull(argMax(value, updated_at)) FROM runtime_settings
                                   WHERE name = 'ttl_days'), 30) - 2)
      AND sealed_at >= (SELECT CAST((groupArray(day), groupArray(v)) AS Map(Date, DateTime64(6, 'UTC')))
                        FROM (SELECT day, max(sealed_at) AS v FROM edge_sealed_days GROUP BY day))[day]
)
GROUP BY day, src_namespace, src_workload_kind, src_workload, dst_kind, dst_namespace, dst_workload_kind,
         dst_name, dst_ip, proto, dst_port;

-- summary: 005's, but a row whose destination was corrected while its source stayed unattributed
-- (revision > 0) is still unattributed; repaired counts records corrected in source or destination.
CREATE OR REPLACE VIEW summary AS
SELECT
    f.records,
    r.rejected,
    r.envelope_rejects,
    f.unattributed,
    f.repaired,
    f.first_ts,
    f.last_ts
FROM
(
    SELECT
        uniqExact(record_id) AS records,
        uniqExactIf(record_id, direction = 'egress' AND src_namespace = '') AS unattributed,
        uniqExactIf(record_id, revision > 0) AS repaired,
        min(ts) AS first_ts,
        max(ts) AS last_ts
    FROM flows
) AS f
CROSS JOIN
(
    SELECT
        uniqExactIf(record_id, stage = 'line') AS rejected,
        uniqExactIf((record_id, kafka_partition, kafka_offset), stage = 'envelope') AS envelope_rejects
    FROM rejects
) AS r;
