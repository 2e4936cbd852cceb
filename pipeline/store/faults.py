"""Fault injection for tests and drills (``FLOWS_FAULT_INSERT_FAILURES``), kept out of the production sink.

``flows up`` wraps its client factory with this only when the setting is non-zero.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.basics.config import Settings


def failing_batch_inserts(factory: Callable[[Settings], Any], failures: int) -> Callable[[Settings], Any]:
    """A client factory whose clients fail the first ``failures`` batch uploads, as a lost connection would.

    Batches of flows and rejects reach the server through ``insert_arrow`` (insert_new_rows'
    staging upload); schema migrations and ownership rows do not, so the stack starts. The count
    is shared by every client the factory makes: the sink reconnects after an error.
    """
    remaining = failures

    def make(settings: Settings) -> Any:
        client = factory(settings)
        upload = client.insert_arrow

        def insert_arrow(*args: Any, **kwargs: Any) -> Any:
            nonlocal remaining
            if remaining > 0:
                remaining -= 1
                raise ConnectionError("injected insert failure")
            return upload(*args, **kwargs)

        client.insert_arrow = insert_arrow
        return client

    return make
