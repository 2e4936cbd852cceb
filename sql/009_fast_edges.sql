-- edges and destinations with the same answers as 004/005, cheaper to read (issue 16).
--
-- Measured on the bench's 30 days x 100 namespaces x 3 M flows rows (docs/performance.md): most of a
-- fan-out was not scanning but fixed costs, each table read or view layer a few ms, and 004's edges
-- regrouped every sealed row (15 300, with their node arrays) although a sealed day has exactly one
-- row per edge. So:
--   * a day whose seal is current (not in unsealed_days) is answered by its seal rows as they are:
--     FINAL leaves one row per (day, edge), which is what 004's GROUP BY over seal rows alone gave
--     (nodes were written sorted and distinct; arraySort(arrayDistinct()) keeps that exact anyway);
--   * only the unsealed days take 004's rule, flows and seal rows grouped together;
--   * unsealed_days is read once per query, as a scalar array shared by every branch (identical scalar
--     subqueries are evaluated once per query), so all branches see the same split of days, and the
--     per-day rule of flows and the seal read are written here instead of in views of their own
--     (edges_from_flows, edges_sealed: dropped below, nothing else read them);
--   * destinations' partial days compare ts with the days' starts instead of evaluating toDate(ts).
-- The rule itself is 004's; see there for why a seal, flows, or the larger count answers.
-- unsealed_days still reads system.parts: readers need SELECT on the database and on system.parts
-- (docs/performance.md, "Fan-out and drift queries").
CREATE OR REPLACE VIEW edges AS
SELECT
    day, src_namespace, src_workload_kind, src_workload, dst_kind, dst_namespace, dst_workload_kind,
    dst_name, dst_ip, proto, dst_port, first_seen, last_seen, connections,
    arraySort(arrayDistinct(nodes)) AS nodes
FROM edge_seals FINAL
WHERE NOT has((SELECT groupArray(day) FROM unsealed_days), day)
UNION ALL
SELECT
    day, src_namespace, src_workload_kind, src_workload, dst_kind, dst_namespace, dst_workload_kind,
    dst_name, dst_ip, proto, dst_port,
    min(first_seen) AS first_seen,
    max(last_seen) AS last_seen,
    if(day >= today() - (ifNull((SELECT toInt64OrNull(argMax(value, updated_at)) FROM runtime_settings
                                 WHERE name = 'ttl_days'), 30) - 2)
           AND max(from_flows),
       maxIf(connections, from_flows), max(connections)) AS connections,
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
        groupUniqArray(toString(host)) AS nodes,
        true AS from_flows
    FROM flows
    WHERE has((SELECT groupArray(day) FROM unsealed_days), toDate(ts))
      AND direction = 'egress' AND src_namespace != ''
    GROUP BY day, src_namespace, src_workload_kind, src_workload, dst_kind, dst_namespace, dst_workload_kind,
             dst_name, dst_ip, proto, dst_port

    UNION ALL

    -- and their newest seals
    SELECT
        day, src_namespace, src_workload_kind, src_workload, dst_kind, dst_namespace, dst_workload_kind,
        dst_name, dst_ip, proto, dst_port, first_seen, last_seen, connections, nodes, false AS from_flows
    FROM edge_seals FINAL
    WHERE has((SELECT groupArray(day) FROM unsealed_days), day)
)
GROUP BY day, src_namespace, src_workload_kind, src_workload, dst_kind, dst_namespace, dst_workload_kind,
         dst_name, dst_ip, proto, dst_port;

DROP VIEW IF EXISTS edges_from_flows;
DROP VIEW IF EXISTS edges_sealed;

-- destinations: 005's definition; only the partial days' filter compares ts with the days' starts.
CREATE OR REPLACE VIEW destinations AS
WITH
    {since:DateTime64(6, 'UTC')} AS p_since,
    {until:DateTime64(6, 'UTC')} AS p_until,
    toDate(p_since) + if(toStartOfDay(p_since) = p_since, 0, 1) AS d_lo,
    toDate(p_until) AS d_hi
SELECT
    namespace,
    dst_kind,
    multiIf(
        dst_kind = 'pod', dst_namespace,
        dst_kind = 'service', concat(dst_namespace, '/', dst_name),
        dst_kind = 'node', dst_name,
        replaceRegexpOne(toString(dst_ip), '^::ffff:([0-9.]+)$', '\\1')
    ) AS dst,
    dst_namespace,
    dst_name,
    dst_ip,
    proto,
    nullIf(port0, 0) AS port,
    min(part_first) AS first_seen,
    max(part_last) AS last_seen,
    sum(part_connections) AS connections,
    arraySort(groupUniqArrayArray(part_nodes)) AS nodes
FROM
(
    SELECT
        src_namespace AS namespace, dst_kind, dst_namespace, dst_name, dst_ip, proto,
        dst_port AS port0,
        min(first_seen) AS part_first,
        max(last_seen) AS part_last,
        sum(connections) AS part_connections,
        groupUniqArrayArray(nodes) AS part_nodes
    FROM edges
    WHERE day >= d_lo AND day < d_hi
    GROUP BY namespace, dst_kind, dst_namespace, dst_name, dst_ip, proto, port0

    UNION ALL

    SELECT
        src_namespace AS namespace, dst_kind, dst_namespace, dst_name,
        if(dst_kind IN ('external', 'unknown'), flows.dst_ip, toIPv6('::')) AS edge_ip,
        proto,
        ifNull(flows.dst_port, 0) AS port0,
        min(ts) AS part_first,
        max(ts) AS part_last,
        toUInt64(uniqExact(record_id)) AS part_connections,
        groupUniqArray(toString(host)) AS part_nodes
    FROM flows
    -- the ts in range outside the whole days: toDate(ts) < d_lo is ts < the start of d_lo (UTC)
    WHERE ts >= p_since AND ts < p_until
      AND (ts < toDateTime64(d_lo, 6, 'UTC') OR ts >= toDateTime64(d_hi, 6, 'UTC'))
      AND direction = 'egress' AND src_namespace != ''
    GROUP BY namespace, dst_kind, dst_namespace, dst_name, edge_ip, proto, port0
)
GROUP BY namespace, dst_kind, dst_namespace, dst_name, dst_ip, proto, port0;
