"""Exact duplicate rows and repeated trade_ids, the two figures that compare rows with rows.

Separate from the other figures (`compressor.quality.metrics`), which each look at one
row or one step at a time: these two need a 64-bit key per row, equal for equal rows,
to find the few candidates fast, and then an exact comparison of those candidates, so
that a key shared by chance never counts. Arrow has no row hash and groups or hashes
every row it is given; grouping every row tied on ts_event (half of a busy bbo day)
costs ten times the keys and the run comparison below, hashing every trade_id as a
string five times the decimal keys. What Arrow and numpy do as fast is theirs: the
exact grouping (`pa.Table.group_by`), the exact id comparison (`pc.unique`,
`pc.is_in`), decimal ids parsed by `cast`, fixed-width ids cut by a cast to
`fixed_size_binary`, the sorts.

Equality is Arrow's grouping, which decides every count: nulls equal nulls, floats
by their bits (-0.0 is not 0.0, a NaN equals only a NaN of the same bits). The keys
are coarser (-0.0 as 0.0, every NaN and null as one NaN), so equal rows always share
one and the grouping alone decides. The figures themselves are defined in
`compressor.quality.metrics`' docstring (duplicate_rows, duplicate_trade_ids).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from compressor.quality import pieces

#: Columns that never make two rows different for duplicate counting.
NOT_IDENTITY = ("seq", "ts_recv")
#: Runs of equal ts_event longer than this many rows are checked by sorting their hashes.
_MAX_RUN = 16
#: Odd 64-bit multipliers (golden ratio, murmur3 finaliser) of the row hash and of
#: fixed-width trade_id keys.
_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xFF51AFD7ED558CCD))


class DuplicateRows:
    """Rows equal to an earlier row in every column but seq and ts_recv, batch after batch.

    Rows of the last ts_event wait for the next batch (`carried_times`): their group
    may continue there.
    """

    def __init__(self) -> None:
        self.count = 0
        #: Rows of the last ts_event seen (copied) and their ts_event in ms.
        self._carry: tuple[pa.Table, np.ndarray] | None = None

    @property
    def carried_times(self) -> np.ndarray:
        """ts_event (ms) of the rows waiting for the next batch."""
        return np.empty(0, np.int64) if self._carry is None else self._carry[1]

    def add(self, table: pa.Table, times: np.ndarray, in_order: bool) -> None:
        """Count a batch. `times` is the carried rows' ts_event then the batch's (ms);
        `in_order`: it is sorted. The carry is copied, so it does not keep the whole
        batch's buffers alive until the next one."""
        if self._carry is not None:
            table = pa.concat_tables([self._carry[0], table], promote_options="permissive")
        last = times[-1]
        if in_order:
            tail = times.size - int(np.searchsorted(times, last, side="left"))
        else:
            tail = int(np.count_nonzero(times == last))
        head = table.num_rows - tail
        self.count += duplicates_in(table.slice(0, head), times[:head], in_order)
        self._carry = table.slice(head).take(np.arange(tail)), times[head:].copy()

    def finish(self) -> int:
        """Count the carried rows too; the total."""
        if self._carry is not None:
            carry, times = self._carry
            in_order = times.size < 2 or int(np.diff(times).min()) >= 0
            self.count += duplicates_in(carry, times, in_order)
            self._carry = None
        return self.count


def duplicates_in(table: pa.Table, times: np.ndarray, in_order: bool) -> int:
    """Rows equal to an earlier row of `table` in every identity column.

    `times` is the table's ts_event in ms, `in_order`: it is sorted. Only rows sharing
    their ts_event with a neighbour can be duplicates. On sorted rows (the merge's
    output), only those whose hash of ts_event and the float identity columns
    (`_mix_floats`) is shared with another row of their run can be: equal rows have
    equal hashes, so every row left out is a group of its own and leaving it out
    changes no count. The rows left are grouped exactly (`_exact_duplicates`).
    """
    if table.num_rows < 2:
        return 0
    rows = _shared_hashes_in_runs(table, times) if in_order else _tied_rows(times)
    if rows.size < 2:
        return 0
    return _exact_duplicates(table, rows)


def _tied_rows(times: np.ndarray) -> np.ndarray:
    """The rows sharing their ts_event with a neighbour: for ts_event out of order
    (never the merge's output), grouped exactly without a hash."""
    tie = times[1:] == times[:-1]
    candidate = np.zeros(times.size, dtype=bool)
    candidate[1:] |= tie
    candidate[:-1] |= tie
    return np.flatnonzero(candidate)


def _shared_hashes_in_runs(table: pa.Table, times: np.ndarray) -> np.ndarray:
    """The rows (`times` sorted) whose hash equals another's in their run of equal
    ts_event (`_shared_in_runs`).

    A piece of the table at a time, cut where a run starts so that no run is split:
    the columns are read in place and the arrays stay small and in cache.
    """
    columns = [table.column(index) for index in _float_identity(table)]
    step = pieces.PIECE_ROWS
    cuts = np.searchsorted(times, times[step::step], side="left")
    bounds = np.unique(np.concatenate([[0], cuts, [times.size]])).tolist()
    found = []
    for start, end in itertools.pairwise(bounds):
        hashes = _mix_floats(times[start:end], [c.slice(start, end - start) for c in columns])
        found.append(np.flatnonzero(_shared_in_runs(times[start:end], hashes)) + start)
    return np.concatenate(found)


def _float_identity(table: pa.Table) -> list[int]:
    """Positions of the float identity columns (the ones the row hash covers)."""
    return [
        index
        for index, (name, typ) in enumerate(zip(table.column_names, table.schema.types,
                                                strict=True))
        if name not in NOT_IDENTITY and pa.types.is_floating(typ)
    ]


def _mix_floats(times: np.ndarray, columns: list[pa.ChunkedArray]) -> np.ndarray:
    """A 64-bit hash per row: its ts_event (`times`) and its value in each float
    column, mixed in place.

    Equal rows give equal hashes (floats are hashed as values: -0.0 as 0.0, every NaN
    and null as one NaN), which is all the duplicate count needs; the other columns
    (strings, small integers such as side or stream_version) are left to the exact
    grouping. Each step (xor a value, multiply by an odd constant) is a bijection, so
    rows that differ in one value never collide; other collisions are 64-bit
    coincidences, which the exact grouping absorbs.
    """
    hashes = times.view(np.uint64) * _MIX[0]
    for column in columns:
        hashes ^= _float_bits(column)
        hashes *= _MIX[1]
    return hashes


def _float_bits(column: pa.ChunkedArray) -> np.ndarray:
    """The float column's values as float64 bits, -0.0 as 0.0 and nulls and every NaN
    as one NaN, so equal values have equal bits.

    Each chunk is read in place and copied once, adding 0.0 on the way (-0.0 + 0.0 is
    0.0); a minimum is NaN whenever a value is, so the NaN pass only runs if needed."""
    values = np.empty(len(column), dtype=np.float64)
    start = 0
    for chunk in column.chunks:
        end = start + len(chunk)
        np.add(chunk.to_numpy(zero_copy_only=False), 0.0, out=values[start:end])
        start = end
    if values.size and np.isnan(values.min()):
        values[np.isnan(values)] = np.nan
    bits: np.ndarray = values.view(np.uint64)
    return bits


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
    """Which of `hashes` occur more than once (one sort: np.unique with counts costs
    half as much again, on a path taken once a piece)."""
    ordered = np.sort(hashes)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    return np.isin(hashes, repeated)


def _exact_duplicates(table: pa.Table, rows: np.ndarray) -> int:
    """Rows among `rows` (sorted positions) equal to an earlier one in every identity
    column, grouped by Arrow; columns constant over those rows are left out of the
    keys (they cannot tell rows apart)."""
    identity = [
        index
        for index, (name, typ) in enumerate(zip(table.column_names, table.schema.types,
                                                strict=True))
        if name not in NOT_IDENTITY and not pa.types.is_nested(typ)
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
    taken = []
    start = 0
    for piece in table.to_batches():
        low, high = np.searchsorted(rows, [start, start + piece.num_rows])
        if high > low:
            taken.append(piece.take(pa.array(rows[low:high] - start)))
        start += piece.num_rows
    return pa.Table.from_batches(taken, schema=table.schema)


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


class TradeIdRepeats:
    """Rows whose trade_id was seen before: in their batch or in the window before it
    (the ids of the last `window_ms` of ts_event), batch after batch.

    Each id gets a 64-bit key, equal for equal ids (`_id_keys`); a sort of the keys
    finds the few keys seen twice, and only the ids with those keys are compared as
    strings. Without keys every id is compared as a string (slower, as exact). The ids
    stay in their chunks: no batch-long copy of the strings.
    """

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self.count: int | None = None
        self._window: _IdWindow | None = None
        #: How trade_ids become keys (`_id_keys`); "exact" once some batch has no keys.
        self._kind: str | None = None

    def add(self, column: pa.ChunkedArray, ts: np.ndarray) -> None:
        """Count a batch's trade_id column; `ts` its ts_event (ms). Nulls never count."""
        ids = column
        if pa.types.is_dictionary(ids.type):
            ids = ids.cast(ids.type.value_type)
        if ids.null_count:
            valid = pc.is_valid(ids)
            ids = ids.filter(valid)
            ts = ts[valid.to_numpy(zero_copy_only=False)]
        self.count = self.count or 0
        if len(ids) == 0:
            return
        window = self._window or _IdWindow(pa.array([], ids.type), np.empty(0, np.uint64), ts[:0])
        if window.ids.type != ids.type:
            window = _IdWindow(window.ids.cast(ids.type), window.keys, window.ts)
        self._kind, keys = _id_keys(ids, self._kind)
        if keys is None or window.keys is None:
            self._kind = "exact"
            keys = None
            self.count += _repeats(ids, window.ids)
        else:
            self.count += self._repeats_by_key(ids, keys, window)
        self._window = window.then(ids, keys, ts, int(ts[-1]) - self.window_ms)

    def _repeats_by_key(self, ids: pa.ChunkedArray, keys: np.ndarray, window: _IdWindow) -> int:
        """Repeats among the ids whose key is seen twice (window and batch), compared exactly.

        Decimal ids come nearly sorted: a stable sort (a merge of runs) is the fast one."""
        assert window.keys is not None
        ordered = np.concatenate([window.keys, keys])
        ordered.sort(kind="stable" if self._kind == "int" else "quicksort")
        repeated = ordered[1:][ordered[1:] == ordered[:-1]]
        del ordered
        if not repeated.size:
            return 0
        mine = ids.filter(pa.array(np.isin(keys, repeated)))
        seen = window.ids.filter(pa.array(np.isin(window.keys, repeated)))
        return _repeats(mine, seen)


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
    """Rows of `ids` whose value is in `seen` or earlier in `ids` (compared exactly)."""
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
    width = _first_width(ids)
    fixed = None if width is None else f"fixed{width}"
    if width is None or kind not in (None, fixed):
        return kind or "exact", None
    try:  # Arrow checks that every id has the width
        chunks = ids.cast(pa.binary(width)).chunks
    except pa.ArrowInvalid:
        return kind or "exact", None
    return fixed, np.concatenate([_hash_fixed(chunk, width) for chunk in chunks])


def _int_keys(ids: pa.ChunkedArray) -> np.ndarray:
    """The decimal ids' values as uint64, parsed a chunk at a time (no batch-long
    Arrow copy beside the result). Raises ArrowInvalid if one is not an integer."""
    keys = np.empty(len(ids), dtype=np.int64)
    start = 0
    for chunk in ids.chunks:
        keys[start : start + len(chunk)] = chunk.cast(pa.int64()).to_numpy()
        start += len(chunk)
    return keys.view(np.uint64)


def _first_width(ids: pa.ChunkedArray) -> int | None:
    """The byte length of the first id (`ids` has no nulls), if they are strings and
    it is 1 to 64: the width every id must have for fixed-width keys."""
    if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
        return None
    width = int(pc.binary_length(ids[0]).as_py())
    return width if 0 < width <= 64 else None


def _hash_fixed(ids: pa.FixedSizeBinaryArray, width: int) -> np.ndarray:
    """A 64-bit hash of each id's `width` bytes (the words mixed like the row hash).

    Called a chunk at a time: the padded copy of the bytes stays small and in cache."""
    buffer = ids.buffers()[1]
    assert buffer is not None
    data = np.frombuffer(buffer, dtype=np.uint8)[ids.offset * width :
                                                 (ids.offset + len(ids)) * width]
    words = -(-width // 8)
    padded = np.zeros((len(ids), words * 8), dtype=np.uint8)
    padded[:, :width] = data.reshape(len(ids), width)
    keys = np.full(len(ids), width, dtype=np.uint64) * _MIX[0]
    for word in padded.view(np.uint64).T:
        keys = (keys ^ word) * _MIX[1]
        keys ^= keys >> np.uint64(29)
    return keys
