"""Per-partition data quality, computed while the merge writes (merge_files(on_batch=...)).

`QualityAccumulator` sees every output row group once, in order, in the merge's
writer thread; every figure is vectorised (numpy/Arrow) over the batch or over
pieces of it (`compressor.quality.pieces`: temporaries stay small), with a small
carry-over between batches. The two figures that compare rows with rows, duplicate
rows and repeated trade_ids, are counted by `compressor.quality.duplicates`.
`DayQuality` holds the figures: `to_json()` is meta.json's `quality` object,
`compact()` the state entry's subset, `flags()` the named data flags the thresholds
below raise. `from_json` also reads the figures
written before 1.1 (rows, out_of_day_rows, duplicate_rows, max_gap_ms,
lag_p50_ms, lag_p99_ms) and the compact subset; a figure absent there is None.

Figures (ts in milliseconds; None = not measured: the column is absent, the
figure does not apply to the stream, or an older writer did not record it):

- rows: rows written.
- out_of_day_rows = out_of_day_before + out_of_day_after: ts_event before the
  partition's UTC day / at or after the next midnight.
- duplicate_rows: rows equal to an earlier row in every column but seq and
  ts_recv (the same event delivered twice); counted across batch boundaries. Equal
  as Arrow groups values: null equals null, floats by their bits (-0.0 is not 0.0,
  a NaN equals a NaN of the same bits).
- max_gap_ms: largest step between consecutive ts_event.
- gap_threshold_ms, gaps_above_threshold: the partition's threshold (below) and
  how many consecutive steps exceed it.
- lag_p50_ms / lag_p99_ms / lag_max_ms: ts_recv - ts_event (nearest-rank
  percentiles, exact below 10 s, to the second beyond); negative_lag_rows: rows
  with ts_recv < ts_event.
- unsorted_rows_in_files: rows whose ts_event is lower than the previous row's in
  the same raw file (MergeResult.unsorted_rows_in_files).
- empty_files: raw files without rows (MergeResult.empty_files).
- null_counts: {column: nulls}, only columns that have some.
- non_positive: {column: values <= 0 or NaN (nulls not counted)} for every price
  and quantity column present (`POSITIVE_COLUMNS`), zeros included.
- duplicate_trade_ids: rows whose trade_id appeared earlier (nulls never count).
  Compared within a batch, and across batches against a window of the ids of the
  last `TRADE_ID_WINDOW_MS` (10 min) of ts_event, so memory is bounded by that
  window, not the day. A resent trade keeps its ts_event (or, where a venue fills
  ts_event from ts_recv, moves by the receive lag), so it sorts next to the first;
  a repeat more than 10 minutes later may be missed. Each id gets a 64-bit key
  (its value for decimal ids, a hash of the bytes for fixed-width ids such as
  UUIDs); one sort of the keys finds those seen twice and only ids with such a
  key are compared as strings, so a hash collision never counts. Other ids are
  compared as strings (Arrow unique + is_in), exact but slower.
- crossed_rows / locked_rows: bid_price > ask_price / bid_price == ask_price.

Gap threshold of a partition: the larger of its stream's floor (`GAP_THRESHOLD_MS`)
and `GAP_CADENCE_FACTOR` (40) times its own mean step ((ts_max - ts_min) / (rows - 1)).
A flag that is on for every partition says nothing: the floor alone fired on every
partition of a sparse stream (the demo's ~2,400 rows a day step ~36 s on average, and
its longest step is up to 27 times that), while a busy stream's mean step is far below
its floor, so the floor decides there and a multi-minute hole still raises the flag.
The floors are a few missed publishes of the slowest venue, checked on what the real
collector writes (tests/fixtures/collector-real: longest step bbo 7.1 s, trade 7.7 s,
mark_price 4.2 s at ~1 s, funding 89 s at 30-90 s on okx, open_interest 3 s with one
24 s hole while okx was offline, at rates far below the live ones):

- bbo 10 s: the best bid/offer of a top-10 perp changes many times a second even
  at night; 10 s without one is a dead connection.
- trade 60 s: the thinnest venue/symbol pairs (okx LTC, AVAX) go tens of seconds
  without a trade at quiet hours.
- mark_price 30 s: published every 1-3 s (binance), on change at up to 10 Hz
  (bybit), every 200 ms on change and at least every 10 s (okx): three missed
  slowest publishes.
- funding 10 min: the rate comes every 1-3 s on binance (mark price stream) but
  every 30-90 s on okx and only on change on bybit.
- open_interest 60 s: published every ~3 s (okx) or on change: twenty missed
  publishes.
- any other stream 60 s (`DEFAULT_GAP_THRESHOLD_MS`).

Flags (`flags()`, in this order), raised when:

- out_of_day: any row after the day, or more than 5 % of the rows before it (the
  first files of a day normally hold the previous day's last seconds, BRIEF §1);
- duplicates: duplicate_rows > 0.1 % of the rows;
- gaps: gaps_above_threshold > 0;
- lag_p99: lag_p99_ms > 1,000 (a collector near the venue sees tens of ms);
- negative_lag: negative_lag_rows > 0.1 % of the rows (a venue clock a few ms
  ahead of ours shows now and then; more is a clock problem);
- out_of_order_in_file: unsorted_rows_in_files > 1 % of the rows (files are in
  arrival order, not ts_event order, BRIEF §1: a little disorder is normal);
- nulls: a column outside `NULLABLE_COLUMNS` has nulls (mark_price and
  index_price are nullable, always null on okx);
- duplicate_trade_id: duplicate_trade_ids > 0;
- crossed: crossed_rows > 0;
- locked: locked_rows > 0.1 % of the rows;
- non_positive: any non_positive count > 0;
- empty_files: empty_files > 0.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from compressor.layout import parse_day
from compressor.merge import to_ms_array
from compressor.quality import pieces
from compressor.quality.duplicates import DuplicateRows, TradeIdRepeats

if TYPE_CHECKING:
    from compressor.merge import MergeResult

#: Version of the row filtering applied after the merge. 1: none, every raw row is kept.
POST_FILTER_VERSION = 1
#: Lags below this (ms, absolute) are counted exactly; larger ones to the second.
_EXACT_LAG_MS = 10_000
_DAY_MS = 86_400_000

#: Largest normal step between consecutive ts_event, per stream (ms); see the docstring.
GAP_THRESHOLD_MS: dict[str, int] = {
    "bbo": 10_000,
    "trade": 60_000,
    "mark_price": 30_000,
    "funding": 600_000,
    "open_interest": 60_000,
}
DEFAULT_GAP_THRESHOLD_MS = 60_000
#: A partition's threshold is at least this many times its own mean step (docstring).
GAP_CADENCE_FACTOR = 40
#: Steps above the floor kept to count against the final threshold; beyond it the
#: largest are kept (the count is then at least this, and the flag is raised anyway).
_MAX_KEPT_STEPS = 100_000
#: Price and quantity columns that must hold positive values.
POSITIVE_COLUMNS = (
    "bid_price", "bid_qty", "ask_price", "ask_qty", "price", "qty",
    "mark_price", "index_price", "open_interest",
)
#: Columns whose nulls are part of the contract (BRIEF §1: always null on okx).
NULLABLE_COLUMNS = frozenset({"mark_price", "index_price"})
#: A trade_id is compared with the ids of this much ts_event before it (ms).
TRADE_ID_WINDOW_MS = 600_000

#: Flag thresholds: shares are of `rows`; a figure strictly above raises the flag.
OUT_OF_DAY_BEFORE_SHARE = 0.05
DUPLICATE_SHARE = 0.001
LAG_P99_LIMIT_MS = 1_000
NEGATIVE_LAG_SHARE = 0.001
UNSORTED_IN_FILE_SHARE = 0.01
LOCKED_SHARE = 0.001
#: Every flag `flags()` can raise, in its order.
FLAGS = (
    "out_of_day", "duplicates", "gaps", "lag_p99", "negative_lag", "out_of_order_in_file",
    "nulls", "duplicate_trade_id", "crossed", "locked", "non_positive", "empty_files",
)
#: The state entry's subset of the figures (`compact()`), besides `flags`.
COMPACT_FIGURES = ("rows", "out_of_day_rows", "duplicate_rows", "max_gap_ms", "lag_p99_ms")
#: The figures written before 1.1, all of them required by `from_json` but lag_p50_ms.
_REQUIRED = ("rows", "out_of_day_rows", "duplicate_rows")
_COUNT_MAPS = ("null_counts", "non_positive")


@dataclass(frozen=True)
class DayQuality:
    """Quality figures of one compacted partition-day (ts in milliseconds).

    The first six fields are the figures of writers before 1.1, in their order; the
    module docstring defines every field.
    """

    rows: int
    out_of_day_rows: int
    duplicate_rows: int
    max_gap_ms: int | None
    lag_p50_ms: int | None
    lag_p99_ms: int | None
    out_of_day_before: int | None = None
    out_of_day_after: int | None = None
    gap_threshold_ms: int | None = None
    gaps_above_threshold: int | None = None
    lag_max_ms: int | None = None
    negative_lag_rows: int | None = None
    unsorted_rows_in_files: int | None = None
    empty_files: int | None = None
    null_counts: dict[str, int] | None = None
    non_positive: dict[str, int] | None = None
    duplicate_trade_ids: int | None = None
    crossed_rows: int | None = None
    locked_rows: int | None = None
    #: Rows the days around gave this day, and rows of its own folder placed in them
    #: (docs/guarantees.md "Rows belong to their event day"); None when not placed so.
    rows_from_previous: int | None = None
    rows_from_next: int | None = None
    rows_to_previous: int | None = None
    rows_to_next: int | None = None

    @property
    def rows_received(self) -> int:
        return (self.rows_from_previous or 0) + (self.rows_from_next or 0)

    @property
    def rows_given(self) -> int:
        return (self.rows_to_previous or 0) + (self.rows_to_next or 0)

    def flags(self) -> list[str]:
        """The data flags raised (names from FLAGS, in that order); see the module docstring."""
        rows = self.rows

        def above(value: int | None, share: float) -> bool:
            return value is not None and value > share * rows

        before = self.out_of_day_before
        after = self.out_of_day_after
        if before is None or after is None:  # an older writer: only the total is known
            out_of_day = above(self.out_of_day_rows, OUT_OF_DAY_BEFORE_SHARE)
        else:
            out_of_day = after > 0 or above(before, OUT_OF_DAY_BEFORE_SHARE)
        raised = {
            "out_of_day": out_of_day,
            "duplicates": above(self.duplicate_rows, DUPLICATE_SHARE),
            "gaps": bool(self.gaps_above_threshold),
            "lag_p99": self.lag_p99_ms is not None and self.lag_p99_ms > LAG_P99_LIMIT_MS,
            "negative_lag": above(self.negative_lag_rows, NEGATIVE_LAG_SHARE),
            "out_of_order_in_file": above(self.unsorted_rows_in_files, UNSORTED_IN_FILE_SHARE),
            "nulls": any(
                n and name not in NULLABLE_COLUMNS for name, n in (self.null_counts or {}).items()
            ),
            "duplicate_trade_id": bool(self.duplicate_trade_ids),
            "crossed": bool(self.crossed_rows),
            "locked": above(self.locked_rows, LOCKED_SHARE),
            "non_positive": any((self.non_positive or {}).values()),
            "empty_files": bool(self.empty_files),
        }
        return [name for name in FLAGS if raised[name]]

    def to_json(self) -> dict[str, Any]:
        """meta.json's `quality` object: every figure (None as null) and `flags`."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = dict(value) if isinstance(value, dict) else value
        out["flags"] = self.flags()
        return out

    def to_dict(self) -> dict[str, Any]:
        """The same as to_json (the name of writers before 1.1)."""
        return self.to_json()

    def compact(self) -> dict[str, Any]:
        """The state entry's subset: rows, out_of_day_rows (the total), duplicate_rows,
        max_gap_ms, lag_p99_ms, the raised flags, and `rows_received`/`rows_given` across
        the day's midnights when not zero (the quality report sums them per day)."""
        out: dict[str, Any] = {name: getattr(self, name) for name in COMPACT_FIGURES}
        out["flags"] = self.flags()
        for name in ("rows_received", "rows_given"):
            if getattr(self, name):
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_json(cls, doc: Any) -> DayQuality:
        """Figures from `to_json()`, `compact()` or the old figures dict.

        Unknown keys (and `flags`, which is recomputed) are ignored; a figure missing
        is None. Raises TypeError when `doc` is not an object, ValueError when a
        figure has the wrong type or rows/out_of_day_rows/duplicate_rows are missing.
        """
        if not isinstance(doc, Mapping):
            raise TypeError(f"quality figures: expected an object, got {type(doc).__name__}")
        values: dict[str, Any] = {}
        for f in fields(cls):
            value = doc.get(f.name)
            if f.name in _COUNT_MAPS:
                values[f.name] = _count_map(f.name, value)
            else:
                values[f.name] = _int_or_none(f.name, value)
        before, after = values["out_of_day_before"], values["out_of_day_after"]
        if values["out_of_day_rows"] is None and before is not None and after is not None:
            values["out_of_day_rows"] = before + after
        missing = [name for name in _REQUIRED if values[name] is None]
        if missing:
            raise ValueError(f"quality figures: missing {', '.join(missing)}")
        return cls(**values)


def _int_or_none(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"quality figure {name}: expected an integer, got {value!r}")
    return value


def _count_map(name: str, value: Any) -> dict[str, int] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in value.items()
    ):
        raise ValueError(f"quality figure {name}: expected {{column: integer}}, got {value!r}")
    return dict(value)


class QualityAccumulator:
    """Feed it every output batch in order (`on_batch`); `result()` gives the figures.

    `day` is the partition's date (YYYYMMDD), `path` the file the batches are written
    to (named if a time column cannot be converted to milliseconds), `stream` the
    partition's stream (PartitionId.stream: picks the gap floor). The figures
    are defined in the module docstring.
    """

    def __init__(self, day: str, path: Path, stream: str) -> None:
        start = datetime.combine(parse_day(day), datetime.min.time(), tzinfo=UTC)
        self._day_start = int(start.timestamp() * 1000)
        self._path = path
        self.stream = stream
        self.gap_floor_ms = GAP_THRESHOLD_MS.get(stream, DEFAULT_GAP_THRESHOLD_MS)
        self.reset()

    def reset(self) -> None:
        """Forget everything fed so far (the merge is being redone)."""
        self._rows = 0
        self._before = 0
        self._after = 0
        self._duplicates = DuplicateRows()
        self._max_gap: int | None = None
        #: Steps above the floor (at most _MAX_KEPT_STEPS, the largest), and the extremes.
        self._big_steps: list[np.ndarray] = []
        self._kept_steps = 0
        self._ts_range: tuple[int, int] | None = None
        self._last_ts: int | None = None
        #: Lags below _EXACT_LAG_MS (absolute): counts at lag + _EXACT_LAG_MS.
        self._exact_lags = np.zeros(2 * _EXACT_LAG_MS, dtype=np.int64)
        self._coarse_lags: Counter[int] = Counter()
        self._lag_max: int | None = None
        self._negative_lags: int | None = None
        self._nulls: Counter[str] = Counter()
        self._non_positive: dict[str, int] = {}
        self._crossed: int | None = None
        self._locked: int | None = None
        self._trade_ids = TradeIdRepeats(TRADE_ID_WINDOW_MS)

    def __call__(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Count one batch; ts_event is converted to milliseconds once for every figure.

        `times` is the carried rows' ts_event followed by this batch's (one array, so
        the duplicate count needs no second copy). Whether it is sorted (it is, from
        the merge) picks the cheaper way for several figures.
        """
        if batch.num_rows == 0:
            return
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        carried = self._duplicates.carried_times.size
        times = self._event_times(table)
        ts = times[carried:]
        names = table.schema.names
        self._rows += table.num_rows
        in_order = self._track_gaps(ts)
        self._count_out_of_day(ts, in_order)
        in_order = in_order and _in_order(np.diff(times[: carried + 1]))  # the carry too
        self._duplicates.add(table, times, in_order)
        if "ts_recv" in names:
            self._count_lags(ts, table.column("ts_recv"))
        self._count_nulls(table)
        self._count_non_positive(table)
        if "bid_price" in names and "ask_price" in names:
            self._count_crossed(table.column("bid_price"), table.column("ask_price"))
        if "trade_id" in names:
            self._trade_ids.add(table.column("trade_id"), ts)

    def result(self, merge: MergeResult | None = None) -> DayQuality:
        """The figures; `merge` (the merge's result) gives the per-file ones."""
        lags = self._lag_histogram()
        threshold = self.gap_threshold()
        return DayQuality(
            rows=self._rows,
            out_of_day_rows=self._before + self._after,
            duplicate_rows=self._duplicates.finish(),
            max_gap_ms=self._max_gap,
            lag_p50_ms=_percentile(lags, 0.50),
            lag_p99_ms=_percentile(lags, 0.99),
            out_of_day_before=self._before,
            out_of_day_after=self._after,
            gap_threshold_ms=threshold,
            gaps_above_threshold=sum(int(np.count_nonzero(kept > threshold))
                                     for kept in self._big_steps),
            lag_max_ms=self._lag_max,
            negative_lag_rows=self._negative_lags,
            unsorted_rows_in_files=None if merge is None else merge.unsorted_rows_in_files,
            empty_files=None if merge is None else merge.empty_files,
            null_counts=dict(self._nulls),
            non_positive=dict(self._non_positive),
            duplicate_trade_ids=self._trade_ids.count,
            crossed_rows=self._crossed,
            locked_rows=self._locked,
        )

    def _event_times(self, table: pa.Table) -> np.ndarray:
        """The carried rows' ts_event then this batch's, in ms, as one new int64 array."""
        column = to_ms_array(self._path, table.column("ts_event"), "ts_event")
        return _int64_values(column, self._duplicates.carried_times)

    def _count_out_of_day(self, ts: np.ndarray, in_order: bool) -> None:
        """Rows outside the day; on sorted ts_event (the merge's output) two binary searches."""
        start, end = self._day_start, self._day_start + _DAY_MS
        if in_order:
            self._before += int(np.searchsorted(ts, start, side="left"))
            self._after += ts.size - int(np.searchsorted(ts, end, side="left"))
        else:
            self._before += int(np.count_nonzero(ts < start))
            self._after += int(np.count_nonzero(ts >= end))

    def gap_threshold(self) -> int:
        """The larger of the stream's floor and GAP_CADENCE_FACTOR mean steps of the rows
        fed so far (module docstring)."""
        if self._ts_range is None or self._rows < 2:
            return self.gap_floor_ms
        low, high = self._ts_range
        return max(self.gap_floor_ms, GAP_CADENCE_FACTOR * (high - low) // (self._rows - 1))

    def _track_gaps(self, ts: np.ndarray) -> bool:
        """Steps between consecutive ts_event, the one from the previous batch included;
        returns whether `ts` is sorted (no step below 0). Keeps the steps above the
        floor, to be counted against the threshold known at the end.

        A piece of the batch at a time, so no batch-long array of steps is made."""
        floor = self.gap_floor_ms
        biggest = self._max_gap
        lowest = 0
        low, high = int(ts.min()), int(ts.max())
        if self._ts_range is not None:
            low, high = min(low, self._ts_range[0]), max(high, self._ts_range[1])
        self._ts_range = (low, high)
        if self._last_ts is not None:
            step = int(ts[0]) - self._last_ts
            biggest = step if biggest is None else max(biggest, step)
            if step > floor:
                self._keep_steps(np.array([step], np.int64))
        for start, end in pieces.pieces(ts.size - 1):
            steps = np.diff(ts[start : end + 1])
            step = int(steps.max())
            biggest = step if biggest is None else max(biggest, step)
            if step > floor:  # else none is: nothing to keep
                self._keep_steps(steps[steps > floor])
            lowest = min(lowest, int(steps.min()))
        self._max_gap = biggest
        self._last_ts = int(ts[-1])
        return lowest >= 0

    def _keep_steps(self, steps: np.ndarray) -> None:
        self._big_steps.append(steps)
        self._kept_steps += steps.size
        if self._kept_steps > _MAX_KEPT_STEPS:
            every = np.concatenate(self._big_steps)
            self._big_steps = [np.partition(every, every.size - _MAX_KEPT_STEPS)
                               [-_MAX_KEPT_STEPS:]]
            self._kept_steps = _MAX_KEPT_STEPS

    def _count_lags(self, ts: np.ndarray, column: pa.ChunkedArray) -> None:
        """ts_recv - ts_event of the rows with a ts_recv, a piece of the batch at a time."""
        recv = to_ms_array(self._path, column, "ts_recv")
        negative = 0
        for start, end in pieces.pieces(ts.size):
            negative += self._count_lag_piece(ts[start:end], recv.slice(start, end - start))
        self._negative_lags = (self._negative_lags or 0) + negative

    def _count_lag_piece(self, ts: np.ndarray, recv: pa.ChunkedArray) -> int:
        """Count the lags of some rows; returns how many are negative. The extremes
        decide the rest: no negative count without a negative minimum, and when every
        lag is exact (the usual case) one bincount of the shifted lags, added where it
        has counts."""
        valid = None
        if recv.null_count:
            valid = pc.is_valid(recv).to_numpy(zero_copy_only=False)
            recv = recv.fill_null(0)
        lag = np.empty(ts.size, dtype=np.int64)
        start = 0
        for chunk in recv.chunks:
            end = start + len(chunk)
            np.subtract(chunk.to_numpy(), ts[start:end], out=lag[start:end])  # wraps like Arrow
            start = end
        if valid is not None:
            lag = lag[valid]
        if lag.size == 0:
            return 0
        low, top = int(lag.min()), int(lag.max())
        self._lag_max = top if self._lag_max is None else max(self._lag_max, top)
        negative = int(np.count_nonzero(lag < 0)) if low < 0 else 0
        if -_EXACT_LAG_MS < low and top < _EXACT_LAG_MS:
            lag += _EXACT_LAG_MS
            counts = np.bincount(lag)
            self._exact_lags[: counts.size] += counts
            return negative
        exact = np.abs(lag) < _EXACT_LAG_MS
        self._exact_lags += np.bincount(lag[exact] + _EXACT_LAG_MS, minlength=2 * _EXACT_LAG_MS)
        far = lag[~exact]
        coarse = np.sign(far) * (np.abs(far) // 1000 * 1000)  # to the second, toward zero
        values, counts = np.unique(coarse, return_counts=True)
        for value, count in zip(values.tolist(), counts.tolist(), strict=True):
            self._coarse_lags[value] += count
        return negative

    def _lag_histogram(self) -> Counter[int]:
        counts = Counter(self._coarse_lags)
        (present,) = np.nonzero(self._exact_lags)
        for index, count in zip(present.tolist(), self._exact_lags[present].tolist(), strict=True):
            counts[index - _EXACT_LAG_MS] += count
        return counts

    def _count_nulls(self, table: pa.Table) -> None:
        for name, column in zip(table.column_names, table.columns, strict=True):
            if column.null_count and name != "seq":
                self._nulls[name] += column.null_count

    def _count_non_positive(self, table: pa.Table) -> None:
        for name in POSITIVE_COLUMNS:
            if name not in table.schema.names:
                continue
            column = table.column(name)
            if not _numeric(column.type):
                continue
            positive = sum(_positive(values) for (values,) in pieces.float_pieces(column))
            valid = len(column) - column.null_count  # nulls read as NaN: not counted here
            self._non_positive[name] = self._non_positive.get(name, 0) + valid - positive

    def _count_crossed(self, bid: pa.ChunkedArray, ask: pa.ChunkedArray) -> None:
        if not (_numeric(bid.type) and _numeric(ask.type)):
            return
        crossed = locked = 0
        for bids, asks in pieces.float_pieces(bid, ask):  # nulls: NaN, never compared true
            crossed += int(np.count_nonzero(bids > asks))
            locked += int(np.count_nonzero(bids == asks))
        self._crossed = (self._crossed or 0) + crossed
        self._locked = (self._locked or 0) + locked

def _numeric(type_: pa.DataType) -> bool:
    return pa.types.is_integer(type_) or pa.types.is_floating(type_)


def _positive(values: np.ndarray) -> int:
    """How many values are > 0 (NaN is not); all of them when the minimum is (the
    usual case: one reduction, no temporary)."""
    if values.size and values.min() > 0:
        return values.size
    return int(np.count_nonzero(values > 0))


def _in_order(steps: np.ndarray) -> bool:
    """Whether consecutive differences `steps` describe non-decreasing values."""
    return steps.size == 0 or int(steps.min()) >= 0


def _int64_values(column: pa.ChunkedArray | pa.Array, before: np.ndarray | None = None
                  ) -> np.ndarray:
    """`before` then the int64 column's values, as one new writable array (one copy:
    each chunk is read in place). Raises ArrowInvalid if the column has nulls."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    head = np.empty(0, np.int64) if before is None else before
    return np.concatenate([head, *(chunk.to_numpy() for chunk in chunks)])


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
