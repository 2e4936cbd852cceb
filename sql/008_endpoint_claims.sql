-- endpoint_claims: "ip:port/protocol backs Service namespace/name" claims from EndpointSlices, as
-- published on k8s.owners.v1 (kind endpoint; pipeline/core/claims.py). Not IP ownership: owner_at
-- and the claims view never read them. Stored so that a registry seeded from ClickHouse (an
-- embedded stack restarted without its broker's data, `flows reattribute` with no stack running)
-- classifies a backend pod IP as the Service, as a worker reading the topic does. One claim per
-- (ip, port, protocol, uid = the slice's); the latest observation wins, chosen as the registry
-- chooses (pipeline/store/ownership.py reads it with argMax, correct without FINAL).
CREATE TABLE IF NOT EXISTS endpoint_claims
(
    ip          IPv6,                     -- IPv4 stored IPv4-mapped
    port        UInt16,                   -- 0: every port (a slice port without a number)
    protocol    LowCardinality(String),   -- TCP | UDP | SCTP
    uid         String,                   -- the EndpointSlice's metadata.uid
    namespace   LowCardinality(String),   -- the Service's
    name        String,                   -- the Service's
    target      String,                   -- the targetRef pod's name, '' when none
    node        LowCardinality(String),
    valid_from  DateTime64(6, 'UTC'),
    valid_to    Nullable(DateTime64(6, 'UTC')),   -- NULL while the endpoint backs the Service
    observed_at DateTime64(6, 'UTC'),
    source      LowCardinality(String)
)
ENGINE = ReplacingMergeTree(observed_at)
ORDER BY (ip, port, protocol, uid);
