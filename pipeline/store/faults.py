"""Fault injection for tests and drills (``FLOWS_FAULT_INSERT_FAILURES``), kept out of the production sink.

``flows up`` wraps its client factory with this only when the setting is non-zero.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.basics.config import Settings
from pipeline.store.clickhouse import STAGING_TABLES


def failing_batch_inserts(factory: Callable[[Settings], Any], failures: int) -> Callable[[Settings], Any]:
    """A client factory whose clients fail the first ``failures`` batch uploads, as a lost connection would.

    Only the batches of flows and rejects fail (insert_new_rows' upload to a staging table);
    schema migrations and ownership rows, which also go as Arrow, do not, so the stack starts.
    The count is shared by every client the factory makes: the sink reconnects after an error.
    """
    remaining = failures

    def make(settings: Settings) -> Any:
        client = factory(settings)
        upload = client.insert_arrow

        def insert_arrow(table: str, *args: Any, **kwargs: Any) -> Any:
            nonlocal remaining
            if remaining > 0 and table in STAGING_TABLES:
                remaining -= 1
                raise ConnectionError("injected insert failure")
            return upload(table, *args, **kwargs)

        client.insert_arrow = insert_arrow
        return client

    return make
