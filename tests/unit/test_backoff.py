"""The one retry-delay rule: doubling to a cap, jitter within its share, reset, and a wait that stop cuts short."""

import asyncio

import pytest

from pipeline.basics.backoff import Backoff, sleep_or_stop


def test_delays_double_up_to_the_cap_and_reset_starts_over():
    backoff = Backoff(0.5, 3.0, rand=lambda: 1.0)  # the random share at its top: the full ceiling
    assert [backoff.next() for _ in range(6)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0]
    backoff.reset()
    assert backoff.next() == 0.5


def test_jitter_takes_at_most_its_share_of_each_delay():
    draws = iter([0.0, 0.5, 1.0, 0.25])
    backoff = Backoff(1.0, 30.0, jitter=0.5, rand=lambda: next(draws))
    assert [backoff.next() for _ in range(4)] == [0.5, 1.5, 4.0, 5.0]
    steady = Backoff(0.2, 1.0, jitter=0.0, rand=lambda: 0.0)  # no jitter: whatever is drawn takes nothing
    assert [steady.next() for _ in range(4)] == [0.2, 0.4, 0.8, 1.0]


def test_failing_for_days_does_not_overflow():
    backoff = Backoff(0.2, 60.0, rand=lambda: 1.0)
    assert [backoff.next() for _ in range(5000)][-1] == 60.0


def test_a_cap_below_first_bounds_the_first_delay_too():
    assert Backoff(0.2, 0.05, jitter=0.0).next() == 0.05


@pytest.mark.parametrize("first, cap, jitter", [(0, 1, 0.5), (1, 0, 0.5), (1, 2, 1.5), (1, 2, -0.1)])
def test_nonsense_parameters_are_refused(first, cap, jitter):
    with pytest.raises(ValueError, match="backoff needs"):
        Backoff(first, cap, jitter)


async def test_wait_returns_early_when_stop_is_set():
    stop = asyncio.Event()
    backoff = Backoff(3600.0, 3600.0)
    waiting = asyncio.create_task(backoff.wait(stop))
    await asyncio.sleep(0)
    assert not waiting.done()
    stop.set()
    assert await asyncio.wait_for(waiting, 60) is True


async def test_a_wait_that_nothing_stops_runs_out():
    assert await Backoff(0.01, 0.01).wait() is False
    assert await sleep_or_stop(asyncio.Event(), 0.01) is False
