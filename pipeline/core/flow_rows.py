"""A batch's flows rows as columns: what each record brings in lists, what its flow repeats once.

Why: a record differs from the others of its flow (interfaces in, addresses, destination port,
protocol, and the whole attribution) only by its time, id, host, source, direction, outgoing
interface, source port and length. Kept as a 25-value tuple per row, transposed and converted to
Arrow value by value at insert, a row cost the sink's thread 2.6 µs of the interpreter over the
bench's rows (the main thread spends ~4 parsing and attributing it: docs/performance.md). Here a
row is eight values and the index of its flow; the store converts each flow once and lets Arrow
repeat it (``take``): 0.64 µs.
"""

from __future__ import annotations

from pipeline.core.rows import FLOW_COLUMNS

# What each record brings (ts kept in nanoseconds: the store divides; record_id as the int it stores).
RECORD_COLUMNS: tuple[str, ...] = ("ts", "record_id", "host", "source", "direction", "out_iface", "src_port",
                                   "length")
# What the record's flow brings, in this order in each of ``FlowRows.flows``.
FLOW_VALUE_COLUMNS: tuple[str, ...] = tuple(c for c in FLOW_COLUMNS if c not in RECORD_COLUMNS)
_FROM_RECORD = {c: i for i, c in enumerate(RECORD_COLUMNS)}
_FROM_FLOW = {c: i for i, c in enumerate(FLOW_VALUE_COLUMNS)}


class FlowRows:
    """Flows rows in arrival order. ``flow[i]`` indexes ``flows``, the distinct flow values
    (``FLOW_VALUE_COLUMNS`` order) rows of this batch were given through ``flow_index``."""

    __slots__ = ("ts_ns", "record_id", "host", "source", "direction", "out_iface", "src_port", "length", "flow",
                 "flows", "_index", "attributed")

    def __init__(self) -> None:
        self.ts_ns: list[int] = []
        self.record_id: list[int] = []
        self.host: list[str] = []
        self.source: list[str] = []
        self.direction: list[str] = []
        self.out_iface: list[str] = []
        self.src_port: list[int | None] = []
        self.length: list[int] = []
        self.flow: list[int] = []
        self.flows: list[tuple] = []
        self._index: dict[tuple, int] = {}
        # (worker process id, its batch number): who attributed these rows, and when (sql/011_attribution_marks.sql)
        self.attributed: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.flow)

    def flow_index(self, values: tuple) -> int:
        """The index of a flow's values (``FLOW_VALUE_COLUMNS`` order), added when new."""
        i = self._index.get(values)
        if i is None:
            i = self._index[values] = len(self.flows)
            self.flows.append(values)
        return i

    def append(self, ts_ns: int, record_id: int, host: str, source: str, direction: str, out_iface: str,
               src_port: int | None, length: int, flow: int) -> None:
        self.ts_ns.append(ts_ns)
        self.record_id.append(record_id)
        self.host.append(host)
        self.source.append(source)
        self.direction.append(direction)
        self.out_iface.append(out_iface)
        self.src_port.append(src_port)
        self.length.append(length)
        self.flow.append(flow)

    def appenders(self) -> tuple:
        """``append``'s nine steps as bound methods, in its arguments' order: the batch path appends
        through them (a call per row saved, ~0.15 µs)."""
        return (self.ts_ns.append, self.record_id.append, self.host.append, self.source.append,
                self.direction.append, self.out_iface.append, self.src_port.append, self.length.append,
                self.flow.append)

    def record_columns(self) -> tuple[list, ...]:
        """The per-record lists, ``RECORD_COLUMNS`` order (ts in nanoseconds)."""
        return (self.ts_ns, self.record_id, self.host, self.source, self.direction, self.out_iface, self.src_port,
                self.length)

    def row(self, i: int) -> tuple:
        """Row ``i`` in ``FLOW_COLUMNS`` order, ts in microseconds as stored."""
        record = [c[i] for c in self.record_columns()]
        record[0] //= 1000
        values = self.flows[self.flow[i]]
        return tuple(record[_FROM_RECORD[c]] if c in _FROM_RECORD else values[_FROM_FLOW[c]] for c in FLOW_COLUMNS)

    def rows(self) -> list[tuple]:
        """Every row, ``row`` by ``row``."""
        return [self.row(i) for i in range(len(self))]

    def columns(self) -> dict[str, list]:
        """One list per column of ``FLOW_COLUMNS``, ts in microseconds (as the rows read)."""
        out = dict(zip(RECORD_COLUMNS, map(list, self.record_columns()), strict=True))
        out["ts"] = [t // 1000 for t in self.ts_ns]
        per_flow = list(zip(*self.flows, strict=True)) if self.flows else [()] * len(FLOW_VALUE_COLUMNS)
        for name, values in zip(FLOW_VALUE_COLUMNS, per_flow, strict=True):
            out[name] = [values[f] for f in self.flow]
        return {c: out[c] for c in FLOW_COLUMNS}

    def slice(self, lo: int, hi: int) -> FlowRows:
        """Rows ``lo`` to ``hi`` with only the flows they use (the sink's halves of a refused batch:
        a flow no row of a half uses must not make that half fail)."""
        part = FlowRows()
        part.attributed = self.attributed
        for i in range(lo, hi):
            part.append(*(c[i] for c in self.record_columns()), part.flow_index(self.flows[self.flow[i]]))
        return part
