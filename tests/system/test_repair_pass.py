"""The repair pass a page at a time, on a real chDB store: shares, restarts and the direct path."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline.core.calico_iface import cali_iface_name
from pipeline.core.claims import events_from_object
from pipeline.core.enrich import Batch, add_record
from pipeline.core.registry import OwnershipRegistry
from pipeline.store import clickhouse as ch
from pipeline.store import repair
from pipeline.store.clickhouse import insert_new_rows
from tests.standins.k8s_standin import make_pod
from tests.unit.test_attribution import PREFIX, T0, S, record

N = 10


async def _here(fn, *args):
    return fn(*args)


@pytest.fixture
def store(tmp_path) -> Iterator[ch.Client]:
    """N unattributed egress rows from a pod nobody knew of when they were stored."""
    client = ch.connect(f"chdb://{tmp_path / 'data'}", database="t_repair")
    ch.migrate(client)
    batch, iface = Batch(), cali_iface_name("shop", "late-0")
    for i in range(N):
        add_record(batch, record(T0 + i * S, iface, "10.244.7.7", seq=i), OwnershipRegistry(), PREFIX, "cali")
    assert batch.counts["unattributed"] == N
    insert_new_rows(client, "flows", batch.flows, min(batch.flow_ts), max(batch.flow_ts))
    yield client
    client.close()


def _registry() -> OwnershipRegistry:
    reg = OwnershipRegistry()
    for ev in events_from_object(make_pod("late-0", "shop", "10.244.7.7", start_ns=T0 - 60 * S), T0 - 60 * S):
        reg.apply(ev)
    return reg


def _stored(client: ch.Client) -> tuple[int, int, int]:
    (rows, attributed, ids), = client.query(
        "SELECT count(), countIf(src_pod = 'late-0'), uniqExact(record_id) FROM flows").result_rows
    return rows, attributed, ids


@pytest.mark.asyncio
async def test_a_pass_goes_a_page_per_step_and_a_new_share_covers_the_rest(store, monkeypatch):
    monkeypatch.setattr(repair, "PAGE_ROWS", 3)
    reg = _registry()
    run = repair.RepairPass(T0 - S, T0 + 60 * S, (0,), 2)
    steps = 0
    while not run.finished:
        await run.step(_here, store, reg, "cali")
        steps += 1
    evens = sum(1 for (rid,) in store.query("SELECT record_id FROM flows").result_rows if rid % 2 == 0)
    assert run.done["repaired"] == evens and steps == 1 + evens // 3 + 1
    # The worker's partitions moved: the same range again with its new share repairs the rest, once.
    run.restart((0, 1), 2)
    while not run.finished:
        await run.step(_here, store, reg, "cali")
    assert run.done["repaired"] == N
    assert _stored(store) == (N, N, N)  # every original removed, none repaired twice


def test_the_direct_pass_repairs_everything(store):
    done = repair.repair(store, _registry(), "cali", T0 - S, T0 + 60 * S)
    assert done["repaired"] == N and done["superseded_deleted"] == N
    assert _stored(store) == (N, N, N)
    assert repair.repair(store, _registry(), "cali", T0 - S, T0 + 60 * S)["repaired"] == 0
