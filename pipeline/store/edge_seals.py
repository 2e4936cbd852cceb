"""The sealer: copies the per-day ``edges`` into ``edge_seals`` before flows' TTL takes the rows.

``edges`` (the rule in sql/004_edges.sql, read as sql/009_fast_edges.sql and sql/010 do) answers a
day from its latest completed seal's rows unless flows changed since (an edge a correction of
attribution removed from a day stays out of it), so history outlives flows only if every day is sealed
after its last rows arrived, and reading weeks costs a scan of the small seals instead of flows. A
seal is the whole day's ``edges`` under a new ``sealed_at`` version, never a sum and never
preceded by a delete, so it can run anywhere, any number of times, from several workers at once,
and be killed at any point: the worst case is a day sealed again on the next pass.

The INSERT ... SELECT runs with ``insert_deduplicate = 0``: whether a server deduplicates it
(ClickHouse 25.8 does for an identical block) must not matter, and here nothing depends on it,
as a repeated snapshot of an unchanged day is harmless: it holds the same rows.
"""

from __future__ import annotations

from datetime import date
from itertools import groupby
from typing import Any

SEAL_COLUMNS = (
    "day", "src_namespace", "src_workload_kind", "src_workload", "dst_kind", "dst_namespace",
    "dst_workload_kind", "dst_name", "dst_ip", "proto", "dst_port", "first_seen", "last_seen",
    "connections", "nodes",
)
_SETTINGS = {"async_insert": 0, "insert_deduplicate": 0}


def days_to_seal(client: Any) -> list[date]:
    """Days whose flows parts changed since their last seal (the ``unsealed_days`` view)."""
    return [row[0] for row in client.query("SELECT day FROM unsealed_days ORDER BY day").result_rows]


def seal_days(client: Any, days: list[date]) -> None:
    """Write the current ``edges`` of ``days`` into ``edge_seals`` under one new version.

    The version and each day's flows part hash are read before the snapshot; the days are
    recorded in ``edge_sealed_days`` with them only after their rows are in, so a day whose parts
    changed meanwhile, or a crash midway, leaves the day in ``unsealed_days``. One INSERT per month:
    edge_seals is partitioned by month, and an INSERT may touch only so many partitions.
    """
    if not days:
        return
    # Version and part hashes first, in one statement, then the read: see unsealed_days.
    begun = client.query(
        "SELECT toUnixTimestamp64Micro(now64(6)), day, parts_hash FROM flows_day_parts"
        " WHERE day IN {days:Array(Date)}", parameters={"days": sorted(set(days))}).result_rows
    sealed_at = begun[0][0] if begun else client.query("SELECT toUnixTimestamp64Micro(now64(6))").result_rows[0][0]
    hashes = {day: parts_hash for _, day, parts_hash in begun}
    names = ", ".join(SEAL_COLUMNS)
    for _, group in groupby(sorted(set(days)), key=lambda d: (d.year, d.month)):
        month = list(group)
        client.command(
            f"INSERT INTO edge_seals ({names}, sealed_at)"  # noqa: S608 - fixed column names only
            f" SELECT {names}, fromUnixTimestamp64Micro({{v:Int64}}, 'UTC') FROM edges"
            " WHERE day IN {days:Array(Date)}",
            parameters={"v": sealed_at, "days": month},
            settings=_SETTINGS,
        )
        client.command(
            "INSERT INTO edge_sealed_days (day, sealed_at, parts_hash)"
            " SELECT s.1, fromUnixTimestamp64Micro({v:Int64}, 'UTC'), s.2"
            " FROM (SELECT arrayJoin(arrayZip({days:Array(Date)}, {hashes:Array(UInt64)})) AS s)",
            parameters={"v": sealed_at, "days": month, "hashes": [hashes.get(day, 0) for day in month]},
            settings=_SETTINGS,
        )


def seal_edges(client: Any, max_days: int | None = None) -> list[date]:
    """One sealing pass over the days that need it, oldest first (closest to leaving flows), at
    most ``max_days`` of them (a pass blocks its caller: the worker bounds it); returns them."""
    days = days_to_seal(client)[:max_days]
    seal_days(client, days)
    return days
