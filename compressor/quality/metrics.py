"""Per-partition data quality, computed while the merge writes (merge_files(on_batch=...)).

The figures become meta.json `day_quality` and the state's `day_quality_post`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from compressor.layout import parse_day
from compressor.merge_schema import to_ms_array

#: Version of the row filtering applied after the merge. 1: none, every raw row is kept.
POST_FILTER_VERSION = 1
#: Columns that never make two rows different for duplicate counting.
_NOT_IDENTITY = ("seq", "ts_recv")
#: Lags below this (ms, absolute) are counted exactly; larger ones to the second.
_EXACT_LAG_MS = 10_000
_DAY_MS = 86_400_000


@dataclass(frozen=True)
class DayQuality:
    """Quality figures of one compacted partition-day (ts in milliseconds)."""

    rows: int
    out_of_day_rows: int
    duplicate_rows: int
    max_gap_ms: int | None
    lag_p50_ms: int | None
    lag_p99_ms: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class QualityAccumulator:
    """Feed it every output batch in order (`on_batch`); `result()` gives the figures.

    - out_of_day_rows: ts_event outside the partition's UTC day.
    - duplicate_rows: rows equal to an earlier row in every column but seq and ts_recv
      (the same event delivered twice); counted across batch boundaries.
    - max_gap_ms: largest step between consecutive ts_event.
    - lag_p50_ms / lag_p99_ms: ts_recv - ts_event percentiles (exact below 10 s).

    `path` is the file the batches are written to (named if a time column cannot be
    converted to milliseconds).
    """

    def __init__(self, day: str, path: Path) -> None:
        start = datetime.combine(parse_day(day), datetime.min.time(), tzinfo=UTC)
        self._day_start = int(start.timestamp() * 1000)
        self._path = path
        self.reset()

    def reset(self) -> None:
        """Forget everything fed so far (the merge is being redone)."""
        self._rows = 0
        self._out_of_day = 0
        self._duplicates = 0
        self._max_gap: int | None = None
        self._last_ts: int | None = None
        self._lags: Counter[int] = Counter()
        #: Rows of the last ts_event seen (and their ts_event in ms), for the next batch.
        self._carry: tuple[pa.Table, pa.Array] | None = None

    def __call__(self, batch: pa.RecordBatch | pa.Table) -> None:
        if batch.num_rows == 0:
            return
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        ts = self._ms(table, "ts_event")
        self._rows += table.num_rows
        self._count_out_of_day(ts)
        self._track_gap(ts)
        if "ts_recv" in table.schema.names:
            self._count_lags(ts, self._ms(table, "ts_recv"))
        self._count_duplicates(table, ts)

    def result(self) -> DayQuality:
        if self._carry is not None:
            self._duplicates += _duplicates_in(*self._carry)
            self._carry = None
        return DayQuality(
            rows=self._rows,
            out_of_day_rows=self._out_of_day,
            duplicate_rows=self._duplicates,
            max_gap_ms=self._max_gap,
            lag_p50_ms=_percentile(self._lags, 0.50),
            lag_p99_ms=_percentile(self._lags, 0.99),
        )

    def _ms(self, table: pa.Table, name: str) -> pa.Array:
        column = to_ms_array(self._path, table.column(name), name)
        return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column

    def _count_out_of_day(self, ts: pa.Array) -> None:
        outside = pc.or_(
            pc.less(ts, self._day_start), pc.greater_equal(ts, self._day_start + _DAY_MS)
        )
        self._out_of_day += int(pc.sum(pc.cast(outside, pa.int64())).as_py() or 0)

    def _track_gap(self, ts: pa.Array) -> None:
        first, last = ts[0].as_py(), ts[-1].as_py()
        gaps = [self._max_gap]
        if self._last_ts is not None:
            gaps.append(first - self._last_ts)
        if len(ts) > 1:
            gaps.append(pc.max(pc.pairwise_diff(ts)).as_py())
        self._max_gap = max((g for g in gaps if g is not None), default=None)
        self._last_ts = last

    def _count_lags(self, ts: pa.Array, recv: pa.Array) -> None:
        lag = pc.subtract(recv, ts)
        coarse = pc.multiply(pc.divide(lag, 1000), 1000)
        binned = pc.if_else(pc.less(pc.abs(lag), _EXACT_LAG_MS), lag, coarse)
        for item in pc.value_counts(pc.drop_null(binned)).to_pylist():
            self._lags[item["values"]] += item["counts"]

    def _count_duplicates(self, table: pa.Table, ts: pa.Array) -> None:
        """Rows of the last ts_event wait for the next batch: their group may continue there."""
        if self._carry is not None:
            carry, carry_ts = self._carry
            ts = pa.concat_arrays([carry_ts, ts])
            table = pa.concat_tables([carry, table], promote_options="permissive")
        tail = int(pc.sum(pc.cast(pc.equal(ts, ts[-1]), pa.int64())).as_py() or 0)
        head_rows = table.num_rows - tail
        self._duplicates += _duplicates_in(table.slice(0, head_rows), ts.slice(0, head_rows))
        self._carry = table.slice(head_rows), ts.slice(head_rows)


def _duplicates_in(table: pa.Table, ts: pa.Array) -> int:
    """Rows equal to an earlier row of `table` (sorted by ts_event) in every identity column.

    `ts` is the table's ts_event in ms. Only rows sharing their ts_event with a neighbour
    can be duplicates, and columns constant over those rows cannot tell them apart: both
    are dropped before hashing.
    """
    if table.num_rows < 2:
        return 0
    same_as_next = pc.equal(ts.slice(1), ts.slice(0, len(ts) - 1))
    no = pa.array([False])
    candidate = pc.or_(pa.concat_arrays([no, same_as_next]), pa.concat_arrays([same_as_next, no]))
    table = table.filter(candidate)
    if table.num_rows < 2:
        return 0
    keys = [
        name
        for name, typ in zip(table.column_names, table.schema.types, strict=True)
        if name not in _NOT_IDENTITY and not pa.types.is_nested(typ)
        and not _constant(table.column(name))
    ]
    groups = table.group_by(keys or ["ts_event"], use_threads=False).aggregate(
        [([], "count_all")]
    )
    return table.num_rows - groups.num_rows


def _constant(column: pa.ChunkedArray) -> bool:
    if column.null_count:
        return column.null_count == len(column)
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
            or pa.types.is_integer(column.type)):
        return False  # floats: NaN != NaN; leave them to the hash
    extremes = pc.min_max(column)
    return bool(extremes["min"] == extremes["max"])


def _percentile(counts: Counter[int], q: float) -> int | None:
    """Nearest-rank percentile of a histogram."""
    total = sum(counts.values())
    if total == 0:
        return None
    rank = max(1, -(-int(q * total * 1_000_000) // 1_000_000))  # ceil without float drift
    seen = 0
    for value in sorted(counts):
        seen += counts[value]
        if seen >= rank:
            return value
    return max(counts)
