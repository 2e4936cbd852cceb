"""FlowRows: rows kept by record and by flow read back exactly as appended, whole or in slices."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.core.flow_rows import FLOW_VALUE_COLUMNS, RECORD_COLUMNS, FlowRows
from pipeline.core.rows import FLOW_COLUMNS

_text = st.sampled_from(["", "a", "cali1", "10.0.0.1", "fd00::1", "é"])
_record = st.tuples(st.integers(10**18, 2 * 10**18), st.integers(0, 2**128 - 1), _text, _text, _text, _text,
                    st.none() | st.integers(0, 65535), st.integers(0, 65535))
_flow = st.tuples(_text, st.sampled_from([4, 6]), st.sampled_from(["TCP", "UDP", "ICMP"]), _text, _text,
                  st.none() | st.integers(0, 65535), *[_text] * 11)


def _expected(record: tuple, flow: tuple) -> tuple:
    """The FLOW_COLUMNS row of a record and its flow, ts in µs: what a row tuple held before FlowRows."""
    values = {**dict(zip(RECORD_COLUMNS, record, strict=True)), **dict(zip(FLOW_VALUE_COLUMNS, flow, strict=True))}
    values["ts"] //= 1000
    return tuple(values[c] for c in FLOW_COLUMNS)


def _filled(rows: list[tuple[tuple, tuple]], unused: list[tuple]) -> FlowRows:
    out = FlowRows()
    for flow in unused:  # looked up, then never given a row (the batch path held that record)
        out.flow_index(flow)
    for record, flow in rows:
        out.append(*record, out.flow_index(flow))
    return out


def test_the_columns_split_flows_columns_in_two() -> None:
    assert sorted(RECORD_COLUMNS + FLOW_VALUE_COLUMNS) == sorted(FLOW_COLUMNS)
    assert len(FLOW_VALUE_COLUMNS) == 17


@given(rows=st.lists(st.tuples(_record, _flow), max_size=30), unused=st.lists(_flow, max_size=3),
       cut=st.data())
def test_rows_columns_and_slices_read_back_as_appended(rows, unused, cut) -> None:
    flow_rows = _filled(rows, unused)
    expected = [_expected(r, f) for r, f in rows]
    assert len(flow_rows) == len(rows)
    assert flow_rows.rows() == expected
    assert flow_rows.columns() == {c: [row[i] for row in expected] for i, c in enumerate(FLOW_COLUMNS)}
    assert flow_rows.ts_ns == [r[0] for r, _ in rows]
    assert len(flow_rows.flows) == len(set(unused) | {f for _, f in rows})  # each distinct flow once
    lo = cut.draw(st.integers(0, len(rows)))
    hi = cut.draw(st.integers(lo, len(rows)))
    part = flow_rows.slice(lo, hi)
    assert part.rows() == expected[lo:hi]
    assert set(part.flows) == {f for _, f in rows[lo:hi]}  # only the flows its rows use
