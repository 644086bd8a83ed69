"""Rows on their way from the inputs to a sink, in order: loading one input (or piece)
checked against its footer (`load`, `load_checked`), the buffer of loaded rows that
sorts and releases those no later input can precede (`SortBuffer`), the stable sort
by ts_event, and `Sink`, what receives the sorted tables.

Separate because the one-run stream (runs.py), the spill runs and the k-way merge
(spill.py) and the planning sample (plan.py) all read and sort rows the same way:
that sameness is what makes the output bytes the same on every path.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from compressor.merge.errors import CorruptFileError
from compressor.merge.inputs import TS, FileInfo
from compressor.merge.reading import PieceReader, read_columns
from compressor.merge.schema import InputSchema, conform


def load(info: FileInfo, schema: InputSchema, pieces: PieceReader) -> pa.Table:
    """One raw file's (or piece's) varying columns, conformed to the partition schema,
    once its constant columns are checked to hold what its footer says."""
    constants = {k: v for k, v in schema.constants.items() if k in info.columns}
    columns = _present_columns(info, schema)
    if info.part is None:
        table = read_columns(info.source, columns, constants)
    else:
        table = pieces.read(info, columns, constants)
    table = conform(info.name, table, schema.varying_schema)
    if table.num_rows != info.rows:
        message = f"footer says {info.rows} rows, data has {table.num_rows}"
        raise CorruptFileError(info.name, message)
    return table


def _present_columns(info: FileInfo, schema: InputSchema) -> list[str]:
    return [name for name in schema.varying if name in info.columns]


def load_checked(info: FileInfo, schema: InputSchema, pieces: PieceReader
                  ) -> tuple[pa.Table, int]:
    """load, plus a check that the footer's ts_event minimum is true, and the count of
    rows whose ts_event is below the previous row's in the file (for the quality figures).

    The streaming pass releases rows on the strength of later files' footer minima;
    a file whose data undercuts its footer would silently break the order.
    """
    table = load(info, schema, pieces)
    ts = table.column(TS).to_numpy()
    actual_min = int(np.min(ts))
    if info.ts_min is None or actual_min < info.ts_min:
        raise CorruptFileError(
            info.name, f"ts_event statistics say min {info.ts_min}, data holds {actual_min}", TS
        )
    return table, int(np.count_nonzero(ts[1:] < ts[:-1]))


def stable_sort(table: pa.Table) -> pa.Table:
    ts = table.column(TS).to_numpy()
    if ts.size < 2 or bool(np.all(ts[1:] >= ts[:-1])):
        return table
    return table.take(np.argsort(ts, kind="stable"))


class SortBuffer:
    """Rows loaded but not yet released: a sorted part plus loaded tables in input order."""

    def __init__(self) -> None:
        self._sorted: pa.Table | None = None
        self._pending: list[pa.Table] = []
        self.pending_rows = 0
        self.rows = 0
        self._min: float = float("inf")

    def add(self, table: pa.Table, ts_min: int | None) -> None:
        self._pending.append(table)
        self.pending_rows += table.num_rows
        self.rows += table.num_rows
        if ts_min is not None:
            self._min = min(self._min, ts_min)

    def release_through(self, bound: float) -> pa.Table | None:
        """Sort what is buffered and hand out the rows with ts_event <= bound, if any."""
        if self._min > bound:
            return None
        parts = ([self._sorted] if self._sorted is not None else []) + self._pending
        merged = stable_sort(pa.concat_tables(parts))
        self._pending, self.pending_rows = [], 0
        if bound == float("inf"):
            cut = merged.num_rows
        else:
            ts = merged.column(TS).to_numpy()
            cut = int(np.searchsorted(ts, int(bound), side="right"))
        rest = merged.slice(cut)
        self._sorted = rest if rest.num_rows else None
        self.rows = rest.num_rows
        self._min = float(rest.column(TS)[0].as_py()) if rest.num_rows else float("inf")
        return merged.slice(0, cut) if cut else None


class Sink:
    """Receives sorted tables, each continuing the order of the previous one."""

    def write(self, table: pa.Table) -> None:
        raise NotImplementedError
