"""Per-partition data quality, computed while the merge writes (merge_files(on_batch=...)).

`QualityAccumulator` sees every output row group once, in order, in the merge's
writer thread; every figure is vectorised (numpy/Arrow) over the batch or over
pieces of it (`_PIECE_ROWS` rows: temporaries stay small), with a small carry-over
between batches. `DayQuality` holds the figures: `to_json()` is
meta.json's `quality` object, `compact()` the state entry's subset, `flags()` the
named data flags the thresholds below raise. `from_json` also reads the figures
written before 1.1 (rows, out_of_day_rows, duplicate_rows, max_gap_ms,
lag_p50_ms, lag_p99_ms) and the compact subset; a figure absent there is None.

Figures (ts in milliseconds; None = not measured: the column is absent, the
figure does not apply to the stream, or an older writer did not record it):

- rows: rows written.
- out_of_day_rows = out_of_day_before + out_of_day_after: ts_event before the
  partition's UTC day / at or after the next midnight.
- duplicate_rows: rows equal to an earlier row in every column but seq and
  ts_recv (the same event delivered twice); counted across batch boundaries.
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

import itertools
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from compressor.layout import parse_day
from compressor.merge import to_ms_array

if TYPE_CHECKING:
    from compressor.merge import MergeResult

#: Version of the row filtering applied after the merge. 1: none, every raw row is kept.
POST_FILTER_VERSION = 1
#: Columns that never make two rows different for duplicate counting.
_NOT_IDENTITY = ("seq", "ts_recv")
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
        max_gap_ms, lag_p99_ms and the raised flags."""
        out: dict[str, Any] = {name: getattr(self, name) for name in COMPACT_FIGURES}
        out["flags"] = self.flags()
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
        self._duplicates = 0
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
        self._trade_ids: int | None = None
        #: trade_ids of the last TRADE_ID_WINDOW_MS seen, with their keys and ts_event.
        self._id_window: _IdWindow | None = None
        #: How trade_ids become keys (`_id_keys`); "exact" once some batch has no keys.
        self._id_kind: str | None = None
        #: Rows of the last ts_event seen (copied) and their ts_event in ms, for the next batch.
        self._carry: tuple[pa.Table, np.ndarray] | None = None

    def __call__(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Count one batch; ts_event is converted to milliseconds once for every figure.

        `times` is the carried rows' ts_event followed by this batch's (one array, so
        the duplicate count needs no second copy). Whether it is sorted (it is, from
        the merge) picks the cheaper way for several figures.
        """
        if batch.num_rows == 0:
            return
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        carried = 0 if self._carry is None else self._carry[0].num_rows
        times = self._event_times(table)
        ts = times[carried:]
        names = table.schema.names
        self._rows += table.num_rows
        in_order = self._track_gaps(ts)
        self._count_out_of_day(ts, in_order)
        in_order = in_order and _in_order(np.diff(times[: carried + 1]))  # the carry too
        self._count_duplicates(table, times, in_order)
        if "ts_recv" in names:
            self._count_lags(ts, table.column("ts_recv"))
        self._count_nulls(table)
        self._count_non_positive(table)
        if "bid_price" in names and "ask_price" in names:
            self._count_crossed(table.column("bid_price"), table.column("ask_price"))
        if "trade_id" in names:
            self._count_trade_ids(table.column("trade_id"), ts)

    def result(self, merge: MergeResult | None = None) -> DayQuality:
        """The figures; `merge` (the merge's result) gives the per-file ones."""
        if self._carry is not None:
            carry, times = self._carry
            self._duplicates += _duplicates_in(carry, times, _in_order(np.diff(times)))
            self._carry = None
        lags = self._lag_histogram()
        threshold = self.gap_threshold()
        return DayQuality(
            rows=self._rows,
            out_of_day_rows=self._before + self._after,
            duplicate_rows=self._duplicates,
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
            duplicate_trade_ids=self._trade_ids,
            crossed_rows=self._crossed,
            locked_rows=self._locked,
        )

    def _event_times(self, table: pa.Table) -> np.ndarray:
        """The carried rows' ts_event then this batch's, in ms, as one new int64 array."""
        column = to_ms_array(self._path, table.column("ts_event"), "ts_event")
        carried = np.empty(0, np.int64) if self._carry is None else self._carry[1]
        return _int64_values(column, carried)

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
        for start, end in _pieces(ts.size - 1):
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
        for start, end in _pieces(ts.size):
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
            positive = sum(_positive(values) for (values,) in _float_pieces(column))
            valid = len(column) - column.null_count  # nulls read as NaN: not counted here
            self._non_positive[name] = self._non_positive.get(name, 0) + valid - positive

    def _count_crossed(self, bid: pa.ChunkedArray, ask: pa.ChunkedArray) -> None:
        if not (_numeric(bid.type) and _numeric(ask.type)):
            return
        crossed = locked = 0
        for bids, asks in _float_pieces(bid, ask):  # nulls: NaN, never compared true
            crossed += int(np.count_nonzero(bids > asks))
            locked += int(np.count_nonzero(bids == asks))
        self._crossed = (self._crossed or 0) + crossed
        self._locked = (self._locked or 0) + locked

    def _count_trade_ids(self, column: pa.ChunkedArray, ts: np.ndarray) -> None:
        """Rows whose trade_id was seen before: in this batch or in the window before it.

        Each id gets a 64-bit key, equal for equal ids (`_id_keys`); a sort of the keys
        finds the few keys seen twice, and only the ids with those keys are compared
        as strings. Without keys every id is compared as a string (slower, as exact).
        The ids stay in their chunks (no batch-long copy of the strings) unless
        fixed-width keys need one array.
        """
        ids = column
        if pa.types.is_dictionary(ids.type):
            ids = ids.cast(ids.type.value_type)
        if ids.null_count:
            valid = pc.is_valid(ids)
            ids = ids.filter(valid)
            ts = ts[valid.to_numpy(zero_copy_only=False)]
        self._trade_ids = self._trade_ids or 0
        if len(ids) == 0:
            return
        window = self._id_window or _IdWindow(
            pa.array([], ids.type), np.empty(0, np.uint64), ts[:0]
        )
        if window.ids.type != ids.type:
            window = _IdWindow(window.ids.cast(ids.type), window.keys, window.ts)
        self._id_kind, keys = _id_keys(ids, self._id_kind)
        if keys is None or window.keys is None:
            self._id_kind = "exact"
            keys = None
            self._trade_ids += _repeats(ids, window.ids)
        else:
            ordered = np.concatenate([window.keys, keys])
            ordered.sort(kind="stable" if self._id_kind == "int" else "quicksort")
            repeated = ordered[1:][ordered[1:] == ordered[:-1]]
            del ordered
            if repeated.size:
                mine = ids.filter(pa.array(np.isin(keys, repeated)))
                seen = window.ids.filter(pa.array(np.isin(window.keys, repeated)))
                self._trade_ids += _repeats(mine, seen)
        self._id_window = window.then(ids, keys, ts, int(ts[-1]) - TRADE_ID_WINDOW_MS)

    def _count_duplicates(self, table: pa.Table, times: np.ndarray, in_order: bool) -> None:
        """Rows of the last ts_event wait for the next batch: their group may continue there.

        `times` already starts with the carried rows; `in_order`: it is sorted. The
        carry is copied, so it does not keep the whole batch's buffers alive until the
        next one.
        """
        if self._carry is not None:
            table = pa.concat_tables([self._carry[0], table], promote_options="permissive")
        last = times[-1]
        if in_order:
            tail = times.size - int(np.searchsorted(times, last, side="left"))
        else:
            tail = int(np.count_nonzero(times == last))
        head = table.num_rows - tail
        self._duplicates += _duplicates_in(table.slice(0, head), times[:head], in_order)
        self._carry = table.slice(head).take(np.arange(tail)), times[head:].copy()


@dataclass(frozen=True)
class _IdWindow:
    """trade_ids (string array), their keys (None: compared as strings) and ts_event."""

    ids: pa.Array
    keys: np.ndarray | None
    ts: np.ndarray

    def then(self, ids: pa.ChunkedArray, keys: np.ndarray | None, ts: np.ndarray,
             start: int) -> _IdWindow:
        """This window followed by a batch, cut to the rows with ts_event >= start.

        Concatenation copies the kept ranges, so the window never pins a whole batch."""
        old = int(np.searchsorted(self.ts, start, side="left"))
        new = int(np.searchsorted(ts, start, side="left"))
        both = None if keys is None or self.keys is None else np.concatenate(
            [self.keys[old:], keys[new:]]
        )
        return _IdWindow(
            pa.concat_arrays([self.ids.slice(old), *ids.slice(new).chunks]),
            both,
            np.concatenate([self.ts[old:], ts[new:]]),
        )


def _repeats(ids: pa.ChunkedArray, seen: pa.Array) -> int:
    """Rows of `ids` whose value is in `seen` or earlier in `ids`."""
    if len(ids) == 0:
        return 0
    distinct = pc.unique(ids)
    known = int(pc.sum(pc.is_in(distinct, value_set=seen)).as_py() or 0) if len(seen) else 0
    return len(ids) - (len(distinct) - known)


def _id_keys(ids: pa.ChunkedArray, kind: str | None) -> tuple[str | None, np.ndarray | None]:
    """(kind, a uint64 key per id, equal for equal ids) or (kind, None) when `kind` fails.

    kind "int": the ids are decimal integers (binance, okx), the key is the value; two
    spellings of one number ("7", "07") share a key and the string compare tells them
    apart. kind "fixed<L>": every id has L <= 64 bytes (bybit's UUIDs), the key hashes
    the bytes. None: pick the first kind that works.
    """
    if kind in (None, "int"):
        try:
            return "int", _int_keys(ids)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            if kind == "int":
                return kind, None
    array = ids.combine_chunks()  # the byte-level kinds read its buffers
    width = _fixed_width(array)
    fixed = None if width is None else f"fixed{width}"
    if width is None or kind not in (None, fixed):
        return kind or "exact", None
    return fixed, _hash_fixed(array, width)


def _int_keys(ids: pa.ChunkedArray) -> np.ndarray:
    """The decimal ids' values as uint64, parsed a chunk at a time (no batch-long
    Arrow copy beside the result). Raises ArrowInvalid if one is not an integer."""
    keys = np.empty(len(ids), dtype=np.int64)
    start = 0
    for chunk in ids.chunks:
        keys[start : start + len(chunk)] = chunk.cast(pa.int64()).to_numpy()
        start += len(chunk)
    return keys.view(np.uint64)


def _fixed_width(ids: pa.Array) -> int | None:
    """The byte length shared by every (non-null) id, if there is one and it is <= 64."""
    if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
        return None
    offsets = _offsets(ids)
    lengths = np.diff(offsets)
    width = int(lengths[0])
    if not 0 < width <= 64 or not bool(np.all(lengths == width)):
        return None
    return width


def _offsets(ids: pa.Array) -> np.ndarray:
    dtype = np.int64 if pa.types.is_large_string(ids.type) else np.int32
    buffer = ids.buffers()[1]
    assert buffer is not None
    return np.frombuffer(buffer, dtype=dtype)[ids.offset : ids.offset + len(ids) + 1]


def _hash_fixed(ids: pa.Array, width: int) -> np.ndarray:
    """A 64-bit hash of each id's `width` bytes (the words mixed like the row hash)."""
    buffer = ids.buffers()[2]
    assert buffer is not None
    first = int(_offsets(ids)[0])
    data = np.frombuffer(buffer, dtype=np.uint8)[first : first + len(ids) * width]
    words = -(-width // 8)
    padded = np.zeros((len(ids), words * 8), dtype=np.uint8)
    padded[:, :width] = data.reshape(len(ids), width)
    keys = np.full(len(ids), width, dtype=np.uint64) * _MIX[0]
    for word in padded.view(np.uint64).T:
        keys = (keys ^ word) * _MIX[1]
        keys ^= keys >> np.uint64(29)
    return keys


def _numeric(type_: pa.DataType) -> bool:
    return pa.types.is_integer(type_) or pa.types.is_floating(type_)


#: Rows the per-row figures handle at a time: their temporaries stay small (half a
#: MiB for 8-byte values) and in cache, whatever the batch size.
_PIECE_ROWS = 65_536


def _pieces(rows: int) -> Iterator[tuple[int, int]]:
    """(start, end) ranges of at most _PIECE_ROWS covering range(rows)."""
    for start in range(0, max(rows, 0), _PIECE_ROWS):
        yield start, min(start + _PIECE_ROWS, rows)


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


def _float_pieces(*columns: pa.ChunkedArray) -> Iterator[list[np.ndarray]]:
    """The columns as float64 numpy, nulls as NaN, a row-aligned piece at a time.

    Each piece is an Arrow chunk read in place where it can be (float64 without
    nulls), so no batch-long copy is made and the comparisons stay in cache."""
    floats = [c if pa.types.is_float64(c.type) else c.cast(pa.float64()) for c in columns]
    table = pa.Table.from_arrays(floats, names=[str(n) for n in range(len(floats))])
    for piece in table.to_batches(max_chunksize=_PIECE_ROWS):
        yield [array.to_numpy(zero_copy_only=False) for array in piece.columns]


def _duplicates_in(table: pa.Table, times: np.ndarray, in_order: bool) -> int:
    """Rows equal to an earlier row of `table` (sorted by ts_event) in every identity column.

    `times` is the table's ts_event in ms, `in_order`: it is sorted. Only rows sharing
    their ts_event with a neighbour can be duplicates. Of those, only rows whose hash
    of ts_event and the float identity columns (`_mix_floats`) is shared with another
    can be: equal rows have equal hashes, so every row left out is a group of its own
    and leaving it out changes no count. The few rows left are grouped exactly on
    every identity column, minus those constant over them (they cannot tell rows
    apart).
    """
    if table.num_rows < 2:
        return 0
    if in_order:
        rows = _shared_hashes_in_runs(table, times)
    else:
        rows = _shared_hashes(table, times)
    if rows.size < 2:
        return 0
    return _exact_duplicates(table, rows)


def _shared_hashes_in_runs(table: pa.Table, times: np.ndarray) -> np.ndarray:
    """The rows (`times` sorted) whose hash equals another's in their run of equal
    ts_event (`_shared_in_runs`).

    A piece of the table at a time, cut where a run starts so that no run is split:
    the columns are read in place and the arrays stay small and in cache.
    """
    columns = [table.column(index) for index in _float_identity(table)]
    cuts = np.searchsorted(times, times[_PIECE_ROWS::_PIECE_ROWS], side="left")
    bounds = np.unique(np.concatenate([[0], cuts, [times.size]])).tolist()
    found = []
    for start, end in itertools.pairwise(bounds):
        hashes = _mix_floats(times[start:end], [c.slice(start, end - start) for c in columns])
        found.append(np.flatnonzero(_shared_in_runs(times[start:end], hashes)) + start)
    return np.concatenate(found)


def _shared_hashes(table: pa.Table, times: np.ndarray) -> np.ndarray:
    """The rows tied with a neighbour on ts_event whose hash equals another such row's
    (one sort): for ts_event out of order, where equal rows need not be in one run."""
    tie = times[1:] == times[:-1]
    candidate = np.zeros(times.size, dtype=bool)
    candidate[1:] |= tie
    candidate[:-1] |= tie
    rows = np.flatnonzero(candidate)
    columns = [table.column(index) for index in _float_identity(table)]
    hashes = _mix_floats(times[rows], columns, rows)
    return rows[_repeated(hashes)]


def _float_identity(table: pa.Table) -> list[int]:
    """Positions of the float identity columns (the ones the row hash covers)."""
    return [
        index
        for index, (name, typ) in enumerate(zip(table.column_names, table.schema.types,
                                                strict=True))
        if name not in _NOT_IDENTITY and pa.types.is_floating(typ)
    ]


#: Odd 64-bit multipliers (golden ratio, murmur3 finaliser) of the row hash and of
#: fixed-width trade_id keys.
_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xFF51AFD7ED558CCD))


def _mix_floats(times: np.ndarray, columns: list[pa.ChunkedArray],
                rows: np.ndarray | None = None) -> np.ndarray:
    """A 64-bit hash per row (of `rows`, sorted, or every row): its ts_event (`times`)
    and its value in each float column, mixed in place.

    Equal rows give equal hashes (floats are compared as values: -0.0 is 0.0, every NaN
    and null is one NaN), which is all the duplicate count needs; the other columns
    (strings, small integers such as side or stream_version) are left to the exact
    grouping. Each step (xor a value, multiply by an odd constant) is a bijection, so
    rows that differ in one value never collide; other collisions are 64-bit
    coincidences, which the exact grouping would absorb anyway.
    """
    hashes = times.view(np.uint64) * _MIX[0]
    for column in columns:
        hashes ^= _float_bits(column, rows)
        hashes *= _MIX[1]
    return hashes


def _float_bits(column: pa.ChunkedArray, rows: np.ndarray | None = None) -> np.ndarray:
    """The float column's values (at `rows`, sorted, or all) as float64 bits, -0.0 as
    0.0 and nulls and every NaN as one NaN, so equal values have equal bits.

    Each chunk is read in place and copied once, adding 0.0 on the way (-0.0 + 0.0 is
    0.0); a minimum is NaN whenever a value is, so the NaN pass only runs if needed."""
    values = np.empty(len(column) if rows is None else rows.size, dtype=np.float64)
    start = 0
    for chunk in column.chunks:
        end = start + len(chunk)
        if rows is None:
            np.add(chunk.to_numpy(zero_copy_only=False), 0.0, out=values[start:end])
        else:
            low, high = np.searchsorted(rows, [start, end])
            taken = chunk.to_numpy(zero_copy_only=False)[rows[low:high] - start]
            np.add(taken, 0.0, out=values[low:high])
        start = end
    if values.size and np.isnan(values.min()):
        values[np.isnan(values)] = np.nan
    bits: np.ndarray = values.view(np.uint64)
    return bits


#: Runs of equal ts_event longer than this many rows are checked by sorting their hashes.
_MAX_RUN = 16


def _shared_in_runs(times: np.ndarray, hashes: np.ndarray) -> np.ndarray:
    """Rows whose hash equals another row's in their run of equal ts_event.

    `times` is sorted. Runs are short (a handful of rows on a busy bbo day), so
    comparing each row with the row k on, k = 1, 2, ... while its run lasts, costs a
    few passes over the rows where a sort of their hashes costs many: k = 1 over whole
    arrays, then only the rows whose run goes on k rows (`live`). Runs longer than
    _MAX_RUN rows (a burst of one ts_event) are left to `_repeated`, which bounds the
    passes.
    """
    tie = np.zeros(times.size, dtype=bool)  # tie[i]: row i + 1 has row i's ts_event
    np.equal(times[1:], times[:-1], out=tie[:-1])
    same = hashes[1:] == hashes[:-1]
    same &= tie[:-1]
    shared = np.zeros(times.size, dtype=bool)
    shared[:-1] = same
    shared[1:] |= same
    live = np.flatnonzero(tie[:-1] & tie[1:])  # rows whose run goes on 2 rows
    k = 2
    while live.size and k < _MAX_RUN:
        ahead = live + k  # tie[-1] is False, so this stays in bounds
        same = hashes[live] == hashes[ahead]
        shared[live[same]] = True
        shared[ahead[same]] = True
        live = live[tie[ahead]]
        k += 1
    if live.size:
        rows = _run_rows(times, np.unique(times[live]))
        shared[rows[_repeated(hashes[rows])]] = True
    return shared


def _run_rows(times: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Positions of the rows of sorted `times` equal to one of `values` (sorted, distinct)."""
    starts = np.searchsorted(times, values, side="left")
    lengths = np.searchsorted(times, values, side="right") - starts
    offsets = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum())) + np.repeat(starts - offsets, lengths)


def _repeated(hashes: np.ndarray) -> np.ndarray:
    """Which of `hashes` occur more than once (one sort)."""
    ordered = np.sort(hashes)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    return np.isin(hashes, repeated)


def _exact_duplicates(table: pa.Table, rows: np.ndarray) -> int:
    """Rows among `rows` (sorted positions) equal to an earlier one in every identity column."""
    identity = [
        index
        for index, (name, typ) in enumerate(zip(table.column_names, table.schema.types,
                                                strict=True))
        if name not in _NOT_IDENTITY and not pa.types.is_nested(typ)
    ]
    table = _take_rows(table.select(identity), rows)
    keys = [name for name in table.column_names if not _constant(table.column(name))]
    groups = table.group_by(keys or ["ts_event"], use_threads=False).aggregate(
        [([], "count_all")]
    )
    return table.num_rows - groups.num_rows


def _take_rows(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """table.take(rows) for sorted `rows`, chunk by chunk: Arrow's take on a chunked
    table first concatenates every chunk of every column, which costs more than the
    grouping of the few rows taken."""
    pieces = []
    start = 0
    for piece in table.to_batches():
        low, high = np.searchsorted(rows, [start, start + piece.num_rows])
        if high > low:
            pieces.append(piece.take(pa.array(rows[low:high] - start)))
        start += piece.num_rows
    return pa.Table.from_batches(pieces, schema=table.schema)


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
