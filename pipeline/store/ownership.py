"""The ``ownership`` and ``endpoint_claims`` tables: claims as rows, and the latest state of each read back."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from pipeline.core.claims import stored_ip_text
from pipeline.core.models import OwnerEvent
from pipeline.core.rows import ENDPOINT_COLUMNS, OWNERSHIP_COLUMNS
from pipeline.store.clickhouse import record_runtime_settings

# A pod's identity claim claims no IP: stored under the unspecified address, which nothing sends from.
IDENTITY_IP = "::"


def _ip_text(stored: str, kind: str) -> str:
    if stored == IDENTITY_IP and kind == "pod":
        return ""
    return stored_ip_text(stored)


def claim_rows(events: list[OwnerEvent]) -> list[tuple[str, tuple[str, ...], dict[str, list]]]:
    """(table, insert columns, columns) for each table the claims go to: IP claims to ``ownership``,
    endpoint claims (which own no IP: ``owner_at`` must never answer with one) to ``endpoint_claims``."""
    ips = [ev for ev in events if ev.kind != "endpoint"]
    endpoints = [ev for ev in events if ev.kind == "endpoint"]
    out = [("ownership", OWNERSHIP_COLUMNS, owner_rows(ips))] if ips else []
    return out + ([("endpoint_claims", ENDPOINT_COLUMNS, endpoint_rows(endpoints))] if endpoints else [])


def endpoint_rows(events: list[OwnerEvent]) -> dict[str, list]:
    cols: dict[str, list] = {c: [] for c in ENDPOINT_COLUMNS}
    for ev in events:
        for column, value in (("ip", ev.ip), ("port", ev.port), ("protocol", ev.protocol), ("uid", ev.uid),
                              ("namespace", ev.namespace), ("name", ev.name), ("target", ev.target),
                              ("node", ev.node), ("valid_from", ev.valid_from_ns // 1000),
                              ("valid_to", None if ev.valid_to_ns is None else ev.valid_to_ns // 1000),
                              ("observed_at", ev.observed_ns // 1000), ("source", ev.source)):
            cols[column].append(value)
    return cols


def owner_rows(events: list[OwnerEvent]) -> dict[str, list]:
    cols: dict[str, list] = {c: [] for c in OWNERSHIP_COLUMNS}
    for ev in events:
        cols["ip"].append(ev.ip or IDENTITY_IP)
        cols["kind"].append(ev.kind)
        cols["namespace"].append(ev.namespace)
        cols["name"].append(ev.name)
        cols["uid"].append(ev.uid)
        cols["workload_kind"].append(ev.workload_kind)
        cols["workload"].append(ev.workload)
        cols["node"].append(ev.node)
        cols["labels"].append(ev.labels)
        cols["valid_from"].append(ev.valid_from_ns // 1000)
        cols["valid_to"].append(None if ev.valid_to_ns is None else ev.valid_to_ns // 1000)
        cols["observed_at"].append(ev.observed_ns // 1000)
        cols["source"].append(ev.source)
    return cols


# Claims read per query when seeding: a million stored claims read at once as Python rows
# peaked at 2.7 GB in the worker (docs/performance.md); a page at a time keeps the registry
# as the only thing that grows with the claim count.
PAGE_CLAIMS = 50_000
# A page is a key range (after, last]: its last key is found reading the table in its sort order
# (rows, so a page holds at most PAGE_CLAIMS observations), then only the claims inside it are
# read from the `claims` view: its grouping key is pushed into its GROUP BY, so a page does not
# compute the latest state of every claim after it. A claim's observations share its key, so
# no claim is split across pages.
_AFTER = "(ip, kind, uid) > (toIPv6({ip:String}), {kind:String}, {uid:String}) AND ip >= toIPv6({ip:String})"
_PAGE_END_SQL = f"SELECT toString(ip), kind, uid FROM ownership WHERE {_AFTER} ORDER BY ip, kind, uid " \
                "LIMIT 1 OFFSET {skip:UInt32}"
STORED_OWNERSHIP_SQL = f"""
SELECT toString(ip), kind, uid, namespace, name, workload_kind, workload, node,
       labels, toUnixTimestamp64Micro(valid_from),
       if(valid_to IS NULL, NULL, toUnixTimestamp64Micro(assumeNotNull(valid_to))),
       toUnixTimestamp64Micro(observed_at), source
FROM claims
WHERE {_AFTER}
  AND ip <= toIPv6({{last_ip:String}})
  AND (ip, kind, uid) <= (toIPv6({{last_ip:String}}), {{last_kind:String}}, {{last_uid:String}})
  AND (valid_to IS NULL OR valid_to >= now64(6) - toIntervalSecond({{history_s:UInt64}}))
"""  # the `claims` view (sql/003_ownership.sql) picks each claim's latest observation as the registry does

ClaimKey = tuple[str, str, str]
FIRST_CLAIM: ClaimKey = (IDENTITY_IP, "", "")  # before every stored (ip, kind, uid)
_LAST_CLAIM: ClaimKey = ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "\U0010ffff", "\U0010ffff")

# Each endpoint claim's latest observation, ranked as the registry ranks endpoint claims; the
# expiry below reads it too.
_LATEST_ENDPOINTS = """
    SELECT ip, port, protocol, uid,
        argMax((namespace, name, target, node, toUnixTimestamp64Micro(valid_from),
                if(valid_to IS NULL, NULL, toUnixTimestamp64Micro(assumeNotNull(valid_to))), source),
               (observed_at, -ifNull(toUnixTimestamp64Micro(valid_to), 9223372036854775807), valid_from, target)
        ) AS latest,
        max(observed_at) AS last_observed
    FROM endpoint_claims
    GROUP BY ip, port, protocol, uid
"""
STORED_ENDPOINTS_SQL = f"""
SELECT toString(ip), port, protocol, uid, latest.1, latest.2, latest.3, latest.4, latest.5, latest.6, latest.7,
       toUnixTimestamp64Micro(last_observed)
FROM ({_LATEST_ENDPOINTS})
WHERE latest.6 IS NULL OR latest.6 >= toUnixTimestamp64Micro(now64(6)) - {{history_s:UInt64}} * 1000000
"""


def ownership_page(client: Any, history_ns: int, after: ClaimKey = FIRST_CLAIM,
                   page: int = PAGE_CLAIMS) -> tuple[list[OwnerEvent], ClaimKey | None]:
    """The latest state of the IP and identity claims inside the history window among the next
    ``page`` stored observations after ``after`` in (ip, kind, uid) order, and the key to pass for
    the next page (None: no more)."""
    start = {"ip": after[0], "kind": after[1], "uid": after[2]}
    ends = client.query(_PAGE_END_SQL, parameters={**start, "skip": page - 1}).result_rows
    last: ClaimKey | None = (ends[0][0], ends[0][1], ends[0][2]) if ends else None
    end = last or _LAST_CLAIM
    rows = client.query(STORED_OWNERSHIP_SQL, parameters={
        **start, "last_ip": end[0], "last_kind": end[1], "last_uid": end[2],
        "history_s": history_ns // 10**9}).result_rows
    events = []
    for ip, kind, uid, ns, name, wk, wl, node, labels, v_from, v_to, observed, source in rows:
        events.append(OwnerEvent(
            ip=_ip_text(ip, kind), kind=kind, namespace=ns, name=name,
            uid=uid, valid_from_ns=v_from * 1000, valid_to_ns=None if v_to is None else v_to * 1000,
            observed_ns=observed * 1000, workload_kind=wk, workload=wl, node=node, labels=dict(labels),
            source=source))
    return events, last


def load_endpoints(client: Any, history_ns: int) -> list[OwnerEvent]:
    """The latest state of every stored endpoint claim still inside the history window."""
    rows = client.query(STORED_ENDPOINTS_SQL, parameters={"history_s": history_ns // 10**9}).result_rows
    return [OwnerEvent(
        ip=_ip_text(ip, "endpoint"), kind="endpoint", namespace=ns, name=name, uid=uid,
        valid_from_ns=v_from * 1000, valid_to_ns=None if v_to is None else v_to * 1000,
        observed_ns=observed * 1000, workload_kind="Service", workload=name, node=node, source=source,
        port=port, protocol=protocol, target=target)
        for ip, port, protocol, uid, ns, name, target, node, v_from, v_to, source, observed in rows]


def load_ownership(client: Any, history_ns: int, page: int = PAGE_CLAIMS) -> Iterator[OwnerEvent]:
    """Every stored ownership and endpoint claim still inside the history window (latest state),
    IP claims read a page at a time."""
    after: ClaimKey | None = FIRST_CLAIM
    while after is not None:
        events, after = ownership_page(client, history_ns, after, page)
        yield from events
    yield from load_endpoints(client, history_ns)


# The claims whose latest observation (chosen as each reader chooses it) ended before the cutoff.
_EXPIRED = {
    "ownership": ("(ip, kind, uid)", "SELECT ip, kind, uid FROM claims WHERE valid_to IS NOT NULL AND "
                  "valid_to < fromUnixTimestamp64Micro({cutoff:Int64}, 'UTC')"),
    "endpoint_claims": ("(ip, port, protocol, uid)", f"SELECT ip, port, protocol, uid FROM ({_LATEST_ENDPOINTS}) "
                        "WHERE latest.6 IS NOT NULL AND latest.6 < {cutoff:Int64}"),
}
_ENDED_BEFORE = "valid_to IS NOT NULL AND valid_to < fromUnixTimestamp64Micro({cutoff:Int64}, 'UTC')"


def expire_ownership(client: Any, history_ns: int, grace_ns: int) -> dict[str, int]:
    """Delete every stored observation of the claims that ended before the history window.

    The window is the registry's (``prune``) widened by ``grace_ns``: ``owner_at`` still answers
    with a claim for ``delete_grace_s`` after its end, so no claim that could answer for a time
    inside the window is touched. Pod identity claims (ip '::') and endpoint claims follow the
    same rule, each read as its readers read it.

    Not a table TTL: a TTL judges each row alone, and a merge may drop the observation that
    closed a claim while an earlier, open one of the same claim sits in another part, which would
    make ``claims`` (and the worker's seeding) report a long-gone pod as still holding its IP. So
    the expired claims are chosen by their *latest* observation, and deleted in two synchronous
    steps: first their observations that end later than the cutoff (open ones included), which
    never were the latest, so every claim still reads as closed meanwhile; then everything left of
    the claims still expired then (one cutoff for both: no claim crosses it in between). A newer
    observation stored in between takes its claim out of the second step. Returns the number of
    claims deleted per table.
    """
    params = {"cutoff": (time.time_ns() - history_ns - grace_ns) // 1000}
    deleted = {}
    for table, (key, expired) in _EXPIRED.items():
        [(n,)] = client.query(f"SELECT count() FROM ({expired})", parameters=params).result_rows
        if n:
            for only in (f" AND NOT ({_ENDED_BEFORE})", ""):
                client.command(f"ALTER TABLE {table} DELETE WHERE {key} IN ({expired}){only}", parameters=params,
                               settings={"mutations_sync": 2})
        deleted[table] = int(n)
    return deleted


def record_rule_settings(client: Any, delete_grace_s: int) -> None:
    """Store the settings ``owner_at`` must follow to answer as this worker's registry does."""
    record_runtime_settings(client, {"delete_grace_s": delete_grace_s})
