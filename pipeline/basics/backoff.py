"""The one retry-delay rule: capped exponential backoff with jitter, and a sleep that ``stop`` cuts short.

Each delay is the current ceiling (doubling from ``first`` up to ``cap``) minus a random
share of it (``jitter``): the random share keeps many clients — watchers, shippers, tail
connections — from retrying in step against the same server; the fixed share keeps a retry
from coming straight back. The ceiling is kept, not recomputed from an attempt count, so a
loop that fails for days never overflows.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable


async def sleep_or_stop(stop: asyncio.Event, seconds: float, *also: asyncio.Event) -> bool:
    """Sleep, waking early when ``stop`` (or one of ``also``) is set; True if one was."""
    events = (stop, *also)
    waits = {asyncio.ensure_future(e.wait()) for e in events}
    try:
        await asyncio.wait(waits, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
    return any(e.is_set() for e in events)


class Backoff:
    """Delays first, 2×first, 4×first … never above ``cap``, each shortened by up to ``jitter`` of itself at random."""

    def __init__(self, first: float, cap: float, jitter: float = 0.5,
                 rand: Callable[[], float] = random.random) -> None:
        if not (first > 0 and cap > 0 and 0 <= jitter <= 1):
            raise ValueError(f"backoff needs first > 0, cap > 0 and 0 <= jitter <= 1 (got {first}, {cap}, {jitter})")
        self.first, self.cap, self.jitter, self._rand = min(first, cap), cap, jitter, rand
        self._ceiling = self.first

    def next(self) -> float:
        """The delay before the next retry; the one after it is (up to) twice as long."""
        ceiling = self._ceiling
        self._ceiling = min(ceiling * 2, self.cap)
        return ceiling * (1 - self.jitter + self.jitter * self._rand())

    def reset(self) -> None:
        """After a success: the next failure starts again from ``first``."""
        self._ceiling = self.first

    async def wait(self, stop: asyncio.Event | None = None, *also: asyncio.Event) -> bool:
        """Sleep the next delay; True when ``stop`` (or one of ``also``) was set (then the wait ended early)."""
        delay = self.next()
        if stop is None:
            await asyncio.sleep(delay)
            return False
        return await sleep_or_stop(stop, delay, *also)
