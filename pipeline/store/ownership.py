"""The ``ownership`` and ``endpoint_claims`` tables: claims as rows, and the latest state of each read back."""

from __future__ import annotations

from typing import Any

from pipeline.core.models import OwnerEvent
from pipeline.core.rows import ENDPOINT_COLUMNS, OWNERSHIP_COLUMNS
from pipeline.store.clickhouse import record_runtime_settings

# A pod's identity claim claims no IP: stored under the unspecified address, which nothing sends from.
IDENTITY_IP = "::"


def _ip_text(stored: str, kind: str) -> str:
    if stored == IDENTITY_IP and kind == "pod":
        return ""
    return stored[7:] if stored.startswith("::ffff:") and "." in stored else stored


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


STORED_OWNERSHIP_SQL = """
SELECT toString(ip), kind, uid, namespace, name, workload_kind, workload, node,
       labels, toUnixTimestamp64Micro(valid_from),
       if(valid_to IS NULL, NULL, toUnixTimestamp64Micro(assumeNotNull(valid_to))),
       toUnixTimestamp64Micro(observed_at), source
FROM claims
WHERE valid_to IS NULL OR valid_to >= now64(6) - toIntervalSecond({history_s:UInt64})
"""  # the `claims` view (sql/003_ownership.sql) picks each claim's latest observation as the registry does


STORED_ENDPOINTS_SQL = """
SELECT toString(ip), port, protocol, uid, latest.1, latest.2, latest.3, latest.4, latest.5, latest.6, latest.7,
       toUnixTimestamp64Micro(last_observed)
FROM
(
    SELECT ip, port, protocol, uid,
        argMax((namespace, name, target, node, toUnixTimestamp64Micro(valid_from),
                if(valid_to IS NULL, NULL, toUnixTimestamp64Micro(assumeNotNull(valid_to))), source),
               (observed_at, -ifNull(toUnixTimestamp64Micro(valid_to), 9223372036854775807), valid_from, target)
        ) AS latest,
        max(observed_at) AS last_observed
    FROM endpoint_claims
    GROUP BY ip, port, protocol, uid
)
WHERE latest.6 IS NULL OR latest.6 >= toUnixTimestamp64Micro(now64(6)) - {history_s:UInt64} * 1000000
"""  # each claim's latest observation, ranked as the registry ranks endpoint claims


def load_ownership(client: Any, history_ns: int) -> list[OwnerEvent]:
    """The latest state of every stored ownership and endpoint claim still inside the history window."""
    rows = client.query(STORED_OWNERSHIP_SQL, parameters={"history_s": history_ns // 10**9}).result_rows
    events = []
    for ip, kind, uid, ns, name, wk, wl, node, labels, v_from, v_to, observed, source in rows:
        events.append(OwnerEvent(
            ip=_ip_text(ip, kind), kind=kind, namespace=ns, name=name,
            uid=uid, valid_from_ns=v_from * 1000, valid_to_ns=None if v_to is None else v_to * 1000,
            observed_ns=observed * 1000, workload_kind=wk, workload=wl, node=node, labels=dict(labels),
            source=source))
    rows = client.query(STORED_ENDPOINTS_SQL, parameters={"history_s": history_ns // 10**9}).result_rows
    for ip, port, protocol, uid, ns, name, target, node, v_from, v_to, source, observed in rows:
        events.append(OwnerEvent(
            ip=_ip_text(ip, "endpoint"), kind="endpoint", namespace=ns, name=name, uid=uid,
            valid_from_ns=v_from * 1000, valid_to_ns=None if v_to is None else v_to * 1000,
            observed_ns=observed * 1000, workload_kind="Service", workload=name, node=node, source=source,
            port=port, protocol=protocol, target=target))
    return events


def record_rule_settings(client: Any, delete_grace_s: int) -> None:
    """Store the settings ``owner_at`` must follow to answer as this worker's registry does."""
    record_runtime_settings(client, {"delete_grace_s": delete_grace_s})
