"""Saving a baseline: the one write ``flows baseline save`` makes, wherever it runs.

The statement lives here rather than in the CLI because while ``flows up`` holds the embedded
store the CLI cannot run it: the stack's query session is read-only (store/readonly.py), so the
stack runs this fixed statement on its insert client instead, with bound values only.
"""

from __future__ import annotations

from typing import Any

from pipeline.store.clickhouse import Client

_T = "DateTime64(6, 'UTC')"
SAVE_PARAMETERS = ("name", "saved_at", "since", "until")
BASELINE_SAVE_SQL = (
    f"INSERT INTO baselines SELECT {{name:String}}, {{saved_at:{_T}}}, {{since:{_T}}}, {{until:{_T}}}, "
    f"namespace, dst_kind, dst, proto, port, first_seen, last_seen, connections "
    f"FROM peers(since = {{since:{_T}}}, until = {{until:{_T}}})"
)


def save_baseline(client: Client, payload: dict[str, Any]) -> dict[str, str]:
    """Freeze the destinations of ``since .. until`` as baseline ``name`` (values as strings, bound)."""
    missing = [k for k in SAVE_PARAMETERS if not isinstance(payload.get(k), str)]
    if missing:
        raise ValueError(f"baseline save needs string values for {', '.join(missing)}")
    params = {k: payload[k] for k in SAVE_PARAMETERS}
    client.command(BASELINE_SAVE_SQL, parameters=params)
    return params
