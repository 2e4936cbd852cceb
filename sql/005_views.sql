-- The one definition of fan-out. The CLI, Grafana and ad-hoc SQL all read these views.

-- destinations(since, until): one row per source namespace and destination identity
-- (dst_kind, dst_namespace, dst_name, dst_ip, proto, port) over [since, until).
-- Whole UTC days inside the range come from edges (long retention); the partial days at
-- either end come from flows, so the answer is exact at any range and still available after
-- flows' TTL. d_lo is the first whole day (the day of since if since is midnight, else the
-- next one); whole days are [d_lo, toDate(until)); flows covers every ts in range outside them.
-- flows may hold not-yet-merged duplicates (ReplacingMergeTree): uniqExact(record_id).
-- dst is the text an operator reads: the namespace for a pod, namespace/name for a service,
-- the node name for a node, the IP for external/unknown (IPv4-mapped shown dotted).
-- port is NULL for protocols without ports (ICMP).
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
    WHERE ts >= p_since AND ts < p_until
      AND NOT (toDate(ts) >= d_lo AND toDate(ts) < d_hi)
      AND direction = 'egress' AND src_namespace != ''
    GROUP BY namespace, dst_kind, dst_namespace, dst_name, edge_ip, proto, port0
)
GROUP BY namespace, dst_kind, dst_namespace, dst_name, dst_ip, proto, port0;

-- fanout(since, until): per source namespace, how many distinct destinations an egress
-- policy would have to allow. dests = pod namespaces + services + external IPs; node and
-- unknown destinations are reported beside it, not in it.
CREATE OR REPLACE VIEW fanout AS
SELECT
    namespace,
    pod_ns + svc + external AS dests,
    uniqExactIf(dst_namespace, dst_kind = 'pod') AS pod_ns,
    uniqExactIf(dst, dst_kind = 'service') AS svc,
    uniqExactIf(dst_ip, dst_kind = 'external') AS external,
    uniqExactIf(dst_name, dst_kind = 'node') AS node,
    uniqExactIf(dst_ip, dst_kind = 'unknown') AS unknown,
    sum(connections) AS connections,
    min(first_seen) AS first_seen,
    max(last_seen) AS last_seen
FROM destinations(since = {since:DateTime64(6, 'UTC')}, until = {until:DateTime64(6, 'UTC')})
GROUP BY namespace
ORDER BY dests DESC, namespace;

-- flows_dedup: flows with not-yet-merged duplicates removed, without FINAL, for ad-hoc counts.
CREATE OR REPLACE VIEW flows_dedup AS
SELECT *
FROM flows
LIMIT 1 BY record_id;

-- summary: pipeline totals for `flows status` and dashboards, duplicate-proof.
-- rejected counts unparsable Calico lines; envelope_rejects counts undecodable Kafka
-- messages/records (identified by record id and Kafka position, since a message that cannot
-- be decoded may not yield a record id of its own).
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
        uniqExactIf(record_id, direction = 'egress' AND src_namespace = '' AND revision = 0) AS unattributed,
        -- rows stored unattributed and attributed later, when ownership covering their time arrived
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
