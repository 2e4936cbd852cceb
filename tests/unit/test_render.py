"""Report tables as a terminal shows them: an empty answer is one readable line, not a squeezed table."""

from __future__ import annotations

from pipeline.analysis.reports import render


def test_an_empty_table_is_one_line_with_its_title() -> None:
    assert render([], "table", "Egress fan-out per namespace") == "Egress fan-out per namespace: no rows\n"
    assert render([], "table") == "no rows\n"


def test_rows_keep_their_table() -> None:
    text = render([{"namespace": "shop", "dests": 3}], "table", "Egress fan-out per namespace")
    assert text is not None and "Egress fan-out per namespace" in text.splitlines()[0]
    assert "namespace" in text and "shop" in text and text.rstrip().endswith("┘")
