"""The ``ownership`` table: claims as rows, and the latest state of each claim read back."""

from __future__ import annotations

from typing import Any

from pipeline.core.models import OwnerEvent
from pipeline.core.rows import OWNERSHIP_COLUMNS
from pipeline.store.clickhouse import record_runtime_settings

# A pod's identity claim claims no IP: stored under the unspecified address, which nothing sends from.
IDENTITY_IP = "::"


def _ip_text(stored: str, kind: str) -> str:
    if stored == IDENTITY_IP and kind == "pod":
        return ""
    return stored[7:] if stored.startswith("::ffff:") and "." in stored else stored


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


def load_ownership(client: Any, history_ns: int) -> list[OwnerEvent]:
    """The latest state of every stored ownership claim still inside the history window."""
    rows = client.query(STORED_OWNERSHIP_SQL, parameters={"history_s": history_ns // 10**9}).result_rows
    events = []
    for ip, kind, uid, ns, name, wk, wl, node, labels, v_from, v_to, observed, source in rows:
        events.append(OwnerEvent(
            ip=_ip_text(ip, kind), kind=kind, namespace=ns, name=name,
            uid=uid, valid_from_ns=v_from * 1000, valid_to_ns=None if v_to is None else v_to * 1000,
            observed_ns=observed * 1000, workload_kind=wk, workload=wl, node=node, labels=dict(labels),
            source=source))
    return events


def record_rule_settings(client: Any, delete_grace_s: int) -> None:
    """Store the settings ``owner_at`` must follow to answer as this worker's registry does."""
    record_runtime_settings(client, {"delete_grace_s": delete_grace_s})
