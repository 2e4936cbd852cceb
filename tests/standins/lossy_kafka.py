"""`flows` as a real process whose Kafka producer loses one send: ``python -m tests.standins.lossy_kafka ship …``.

A delivery timeout cannot be produced on demand (the broker would have to stall for the
producer's whole request timeout at exactly one message), so the fault is injected at the
producer boundary: send number ``FLOWS_TEST_LOSE_SEND`` (1-based, counted over the process)
never reaches the broker and its acknowledgement fails with aiokafka's own
``KafkaTimeoutError``, as an expired batch does. Every other send goes to the real broker.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aiokafka.errors import KafkaTimeoutError

from pipeline.sources import shipper


class LossyProducer:
    """Wraps the real producer; loses the send numbered ``lose``."""

    def __init__(self, real: Any, lose: int) -> None:
        self._real = real
        self._lose = lose
        self._sends = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    async def send(self, *args: Any, **kwargs: Any) -> asyncio.Future:
        self._sends += 1
        if self._sends != self._lose:
            return await self._real.send(*args, **kwargs)
        lost: asyncio.Future = asyncio.get_running_loop().create_future()
        lost.set_exception(KafkaTimeoutError())
        return lost


def main() -> None:
    lose = int(os.environ["FLOWS_TEST_LOSE_SEND"])
    real_make = shipper.make_producer
    shipper.make_producer = lambda settings, **kw: LossyProducer(real_make(settings, **kw), lose)
    from pipeline.cli.app import app

    app(prog_name="flows")


if __name__ == "__main__":
    main()
