-- Drift, stability, rollout measures, allowlists and baselines. Every view here reads
-- destinations(since, until) (005), so first sightings come from edges (no TTL) and stay
-- right for months after flows' rows expired; the CLI, Grafana and ad-hoc SQL share them.
-- "All history up to T" is destinations(since = '1970-01-01 00:00:00', until = T).

-- peers(since, until): one row per destination identity (namespace, dst_kind, dst, proto,
-- port) over [since, until): dst as destinations defines it (the namespace for pods, so a new
-- workload in a known peer namespace on a known port is the same identity); port NULL for ICMP.
-- workloads lists the pod workloads behind a pod identity.
CREATE OR REPLACE VIEW peers AS
SELECT
    namespace,
    dst_kind,
    dst,
    proto,
    port,
    min(first_seen) AS first_seen,
    max(last_seen) AS last_seen,
    sum(connections) AS connections,
    arraySort(groupUniqArrayArray(nodes)) AS nodes,
    arraySort(groupUniqArrayIf(dst_name, dst_kind = 'pod' AND dst_name != '')) AS workloads
FROM destinations(since = {since:DateTime64(6, 'UTC')}, until = {until:DateTime64(6, 'UTC')})
GROUP BY namespace, dst_kind, dst, proto, port;

-- drift(baseline_until, since, until): identities first seen at or after baseline_until (and
-- at or after since, to look at a later stretch only), among traffic before until. Old
-- destinations seen again are not drift (their first sighting is older); a new port or
-- protocol to a known peer is (it is another identity).
CREATE OR REPLACE VIEW drift AS
SELECT *
FROM peers(since = '1970-01-01 00:00:00', until = {until:DateTime64(6, 'UTC')})
WHERE first_seen >= {baseline_until:DateTime64(6, 'UTC')}
  AND first_seen >= {since:DateTime64(6, 'UTC')}
ORDER BY first_seen, namespace, dst_kind, dst, proto, port;

-- stability(now, min_days, stable_days): per namespace, the coverage and settling of its
-- egress as of `now`: first and last line, distinct UTC days with traffic, the newest
-- identity's first sighting and the days since. meets_horizon: first to last line spans at
-- least min_days; stable: no new identity for at least stable_days.
CREATE OR REPLACE VIEW stability AS
SELECT
    namespace,
    ns_first AS first_seen,
    ns_last AS last_seen,
    days_observed,
    destinations,
    ns_last_new AS last_new,
    round(horizon_s / 86400, 2) AS horizon_days,
    round(since_new_s / 86400, 2) AS days_since_new,
    toBool(horizon_s >= {min_days:Float64} * 86400) AS meets_horizon,
    toBool(since_new_s >= {stable_days:Float64} * 86400) AS stable
FROM
(
    SELECT
        namespace,
        min(first_seen) AS ns_first,
        max(last_seen) AS ns_last,
        count() AS destinations,
        max(first_seen) AS ns_last_new,
        dateDiff('second', ns_first, ns_last) AS horizon_s,
        dateDiff('second', ns_last_new, {now:DateTime64(6, 'UTC')}) AS since_new_s
    FROM peers(since = '1970-01-01 00:00:00', until = {now:DateTime64(6, 'UTC')})
    GROUP BY namespace
) AS p
LEFT JOIN
(
    -- edges rows are per day; a day counts when any of its traffic came before now
    SELECT src_namespace AS namespace, uniqExact(day) AS days_observed
    FROM edges
    WHERE first_seen < {now:DateTime64(6, 'UTC')}
    GROUP BY namespace
) AS d USING (namespace)
ORDER BY namespace;

-- profile(since, until): the measures rollout tiers read, per namespace. Counts come from
-- fanout; internal = pod namespaces + services + nodes; ip_peers = external + unknown IPs
-- (both need per-IP rules); ip_ports/high_ports = distinct ports (all / >= 1024) to those IPs,
-- the "scattered high ports" of P2P-like traffic.
CREATE OR REPLACE VIEW profile AS
SELECT
    f.namespace AS namespace,
    f.dests AS dests,
    f.pod_ns + f.svc + f.node AS internal,
    f.external + f.unknown AS ip_peers,
    f.pod_ns AS pod_ns,
    f.svc AS svc,
    f.node AS node,
    f.external AS external,
    f.unknown AS unknown,
    p.ip_ports AS ip_ports,
    p.high_ports AS high_ports,
    f.connections AS connections,
    f.first_seen AS first_seen,
    f.last_seen AS last_seen
FROM fanout(since = {since:DateTime64(6, 'UTC')}, until = {until:DateTime64(6, 'UTC')}) AS f
INNER JOIN
(
    SELECT
        namespace,
        uniqExactIf(port, dst_kind IN ('external', 'unknown') AND port IS NOT NULL) AS ip_ports,
        uniqExactIf(port, dst_kind IN ('external', 'unknown') AND port >= 1024) AS high_ports
    FROM peers(since = {since:DateTime64(6, 'UTC')}, until = {until:DateTime64(6, 'UTC')})
    GROUP BY namespace
) AS p ON p.namespace = f.namespace
ORDER BY namespace;

-- allowlist(since, until): the rows an egress policy needs, one per (namespace, destination,
-- protocol) with the ports seen (sorted; empty for ICMP) and the evidence. Pod destinations
-- keep their workload (dst_name) so a rule can select it; dst_name is the service name for
-- services and the node for nodes.
CREATE OR REPLACE VIEW allowlist AS
SELECT
    namespace,
    dst_kind,
    dst,
    dst_namespace,
    if(dst_kind IN ('pod', 'service', 'node'), dst_name, '') AS name,
    proto,
    arraySort(groupUniqArray(port)) AS ports,
    min(first_seen) AS first_seen,
    max(last_seen) AS last_seen,
    sum(connections) AS connections,
    arraySort(groupUniqArrayArray(nodes)) AS nodes
FROM destinations(since = {since:DateTime64(6, 'UTC')}, until = {until:DateTime64(6, 'UTC')})
GROUP BY namespace, dst_kind, dst, dst_namespace, name, proto
ORDER BY namespace, dst_kind, dst, name, proto;

-- baselines: frozen allowlists. `flows baseline save NAME` inserts the identities of
-- peers(window_since, window_until) under one saved_at; saving NAME again adds a newer
-- snapshot, and the newest snapshot of a name is the baseline (older ones stay as history).
CREATE TABLE IF NOT EXISTS baselines
(
    name          String,
    saved_at      DateTime64(6, 'UTC'),
    window_since  DateTime64(6, 'UTC'),
    window_until  DateTime64(6, 'UTC'),
    namespace     LowCardinality(String),
    dst_kind      LowCardinality(String),
    dst           String,
    proto         LowCardinality(String),
    port          Nullable(UInt16),
    first_seen    DateTime64(6, 'UTC'),
    last_seen     DateTime64(6, 'UTC'),
    connections   UInt64
)
ENGINE = MergeTree
ORDER BY (name, saved_at, namespace, dst_kind, dst, proto);

-- baseline_rows: the newest snapshot of every baseline.
CREATE OR REPLACE VIEW baseline_rows AS
SELECT *
FROM baselines
WHERE (name, saved_at) IN (SELECT name, max(saved_at) FROM baselines GROUP BY name);

-- baseline_list: one row per baseline (its newest snapshot), for `flows baseline list`.
CREATE OR REPLACE VIEW baseline_list AS
SELECT
    name,
    saved_at,
    window_since,
    window_until,
    uniqExact(namespace) AS namespaces,
    count() AS destinations
FROM baseline_rows
GROUP BY name, saved_at, window_since, window_until
ORDER BY name;

-- drift_vs_baseline(name, since, until): identities seen in [since, until) that the newest
-- snapshot of baseline `name` does not hold; first_seen is the identity's first sighting ever.
-- The port is compared as ifNull(port, 0) so that ICMP identities (NULL port) match too.
CREATE OR REPLACE VIEW drift_vs_baseline AS
SELECT *
FROM peers(since = '1970-01-01 00:00:00', until = {until:DateTime64(6, 'UTC')})
WHERE last_seen >= {since:DateTime64(6, 'UTC')}
  AND (namespace, dst_kind, dst, proto, ifNull(port, 0)) NOT IN (
        SELECT namespace, dst_kind, dst, proto, ifNull(port, 0)
        FROM baseline_rows
        WHERE name = {name:String}
  )
ORDER BY first_seen, namespace, dst_kind, dst, proto, port;

-- current_claims: the latest observation of every IP claim (the `claims` view's rule, as owner_at
-- uses), for policy generation: workload labels, service ClusterIPs, node addresses.
CREATE OR REPLACE VIEW current_claims AS
SELECT
    replaceRegexpOne(toString(ip), '^::ffff:([0-9.]+)$', '\\1') AS address,
    kind,
    uid,
    namespace,
    name,
    workload_kind,
    workload,
    labels,
    valid_from,
    valid_to
FROM claims
WHERE ip != toIPv6('::');
