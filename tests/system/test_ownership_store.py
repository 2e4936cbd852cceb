"""The ownership table stays bounded without changing an answer, and seeding reads it in pages.

Random claim histories (several observations per claim: opens, closes, reopens, out of order)
(pod identity claims under '::' among them) are stored in chDB as the worker stores them.
Expiring the claims that ended before the history window must delete exactly those, every
observation of them, and leave ``claims`` (and so ``owner_at`` and seeding) answering as before
for every other claim; endpoint claims follow their own ranking, and a claim that ``owner_at``
still answers with (the delete grace after its end) is kept. Seeding page by page must read the
same claims as one read.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.models import OwnerEvent
from pipeline.store import clickhouse as ch
from pipeline.store.ownership import claim_rows, expire_ownership, load_ownership, owner_rows

DAY = 86_400 * 10**9
_dbs = itertools.count()
CLAIMS_SQL = "SELECT toString(ip), kind, uid, valid_from, valid_to, observed_at, name FROM claims ORDER BY ALL"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ch.Client]:
    c = ch.connect(f"chdb://{tmp_path_factory.mktemp('chdb') / 'data'}", database="ownership_setup")
    yield c
    c.close()


@st.composite
def histories(draw) -> list[OwnerEvent]:
    """Claims on a few IPs (and pod identity claims) with whole-day times, days before now."""
    now = time.time_ns() // DAY * DAY
    events = []
    for n in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["pod", "pod", "service", "node"]))
        ip = "" if kind == "pod" and draw(st.booleans()) else f"10.0.0.{draw(st.integers(1, 3))}"
        start = now - draw(st.integers(2, 90)) * DAY
        base = OwnerEvent(ip=ip, kind=kind, namespace="ns", name=f"o{n}", uid=f"uid-{n}", valid_from_ns=start,
                          valid_to_ns=None, observed_ns=start)
        events.append(base)
        for _ in range(draw(st.integers(0, 3))):  # later observations, stored in any order
            observed = start + draw(st.integers(0, 88)) * DAY
            end = draw(st.one_of(st.none(), st.integers(start // DAY, now // DAY - 1).map(lambda d: d * DAY)))
            events.append(replace(base, valid_to_ns=end, observed_ns=observed, name=f"o{n}-{observed}"))
    return draw(st.permutations(events))


def _store(client: ch.Client, events: list[OwnerEvent], parts: int) -> None:
    """Insert in several blocks, so observations of one claim sit in different parts."""
    for i in range(parts):
        chunk = events[i::parts]
        if chunk:
            cols = owner_rows(chunk)
            ch.insert_columns(client, "ownership", ch.OWNERSHIP_COLUMNS, [cols[c] for c in ch.OWNERSHIP_COLUMNS])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(histories(), st.integers(1, 60), st.integers(1, 3))
def test_expiring_ended_claims_changes_no_answer(client: ch.Client, events: list[OwnerEvent], days: int,
                                                 parts: int) -> None:
    client.database = f"ownership_{next(_dbs)}"
    ch.migrate(client)
    _store(client, events, parts)
    history_ns = days * DAY + DAY // 2  # half a day off every stored time: no claim ends at the cutoff
    cutoff_us = (time.time_ns() - history_ns) // 1000
    before = client.query(CLAIMS_SQL).result_rows
    ended = {(r[0], r[1], r[2]) for r in client.query(
        "SELECT toString(ip), kind, uid FROM claims WHERE valid_to < fromUnixTimestamp64Micro({c:Int64}, 'UTC')",
        parameters={"c": cutoff_us}).result_rows}

    assert expire_ownership(client, history_ns, 0) == {"ownership": len(ended), "endpoint_claims": 0}

    assert client.query(CLAIMS_SQL).result_rows == [r for r in before if (r[0], r[1], r[2]) not in ended]
    left = client.query("SELECT toString(ip), kind, uid FROM ownership").result_rows
    assert not ended & set(left)  # every observation of an expired claim is gone, not only the latest
    assert expire_ownership(client, history_ns, 0) == {"ownership": 0, "endpoint_claims": 0}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(histories(), st.integers(1, 5))
def test_seeding_in_pages_reads_what_one_read_does(client: ch.Client, events: list[OwnerEvent], page: int) -> None:
    client.database = f"ownership_{next(_dbs)}"
    ch.migrate(client)
    _store(client, events, 2)
    history_ns = 30 * DAY + DAY // 2
    def key(e: OwnerEvent) -> tuple[str, str, str]:
        return e.ip, e.kind, e.uid

    whole = sorted(load_ownership(client, history_ns, page=10**6), key=key)
    assert sorted(load_ownership(client, history_ns, page=page), key=key) == whole
    inside = client.query(
        "SELECT count() FROM claims WHERE valid_to IS NULL OR valid_to >= fromUnixTimestamp64Micro({c:Int64}, 'UTC')",
        parameters={"c": (time.time_ns() - history_ns) // 1000}).result_rows
    assert len({key(e) for e in whole}) == len(whole) == inside[0][0]


def test_expiry_keeps_claims_owner_at_still_answers_with_and_ranks_endpoint_claims_by_their_latest(
        client: ch.Client) -> None:
    client.database = f"ownership_{next(_dbs)}"
    ch.migrate(client)
    now = time.time_ns() // 10**6 * 10**6
    history_ns, grace_ns = 10 * DAY, 30 * 10**9
    cutoff = now - history_ns
    pod = OwnerEvent(ip="10.0.0.9", kind="pod", namespace="ns", name="late", uid="u-late", valid_from_ns=cutoff - DAY,
                     valid_to_ns=cutoff - 10 * 10**9, observed_ns=cutoff - 10 * 10**9)  # ended inside the grace
    gone = replace(pod, ip="", name="gone", uid="u-gone", valid_to_ns=cutoff - DAY // 2, observed_ns=cutoff)
    opened = OwnerEvent(ip="10.0.0.5", kind="endpoint", namespace="kube-system", name="dns", uid="slice",
                        valid_from_ns=cutoff - 3 * DAY, valid_to_ns=None, observed_ns=cutoff - 3 * DAY,
                        workload_kind="Service", workload="dns", port=53, protocol="UDP")
    closed = replace(opened, valid_to_ns=cutoff - 2 * DAY, observed_ns=cutoff - 2 * DAY)
    kept = replace(opened, port=54, valid_to_ns=cutoff + DAY, observed_ns=cutoff + DAY)  # ended inside the window
    for batch in ([pod, gone, opened, kept], [closed, replace(kept, valid_to_ns=None)]):  # separate parts
        for table, columns, cols in claim_rows(batch):
            ch.insert_columns(client, table, columns, [cols[c] for c in columns])
    at = {"ip": "10.0.0.9", "at": (cutoff + 5 * 10**9) / 1e9}  # inside the window, inside the grace
    owner_at = "SELECT name FROM owner_at(ip={ip:String}, at=toDateTime64({at:Float64}, 6, 'UTC'))"
    assert client.query(owner_at, parameters=at).result_rows == [("late",)]

    assert expire_ownership(client, history_ns, grace_ns) == {"ownership": 1, "endpoint_claims": 1}

    assert client.query(owner_at, parameters=at).result_rows == [("late",)]
    assert client.query("SELECT uid FROM ownership").result_rows == [("u-late",)]
    assert client.query("SELECT port, count() FROM endpoint_claims GROUP BY port").result_rows == [(54, 2)]
    assert [(e.kind, e.uid, e.port) for e in load_ownership(client, history_ns + grace_ns)] == [
        ("pod", "u-late", 0), ("endpoint", "slice", 54)]
