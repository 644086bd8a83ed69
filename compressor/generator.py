"""Collector-shaped raw partitions (BRIEF §1) for the tests, `--demo` and the benchmark.

Everything is deterministic from `PartitionSpec.seed` (and the partition's own names):
the same spec gives the same bytes on every run with the same pyarrow. Only pyarrow,
numpy and the standard library are used; row generation is vectorised.

What a partition looks like (`layout`):

- ``edges`` (the collector's normal day): file ``i`` is flushed at the end of its
  slice of the day and holds events from that slice plus a little before it, so
  consecutive files overlap at their edges. Rows are in ARRIVAL order (``ts_recv``
  never goes back inside a file), which is not ``ts_event`` order: about 0.5 % of
  the rows (at least one per file of two rows or more) are sent late by the venue,
  after up to four later events. About ``tie_fraction`` of the rows repeat the
  previous millisecond.
- ``spans_day``: every file's rows are spread over the whole day, in random order
  (the worst case for a merge: every file overlaps every other).
- ``disjoint``: files cover non-overlapping slices, rows sorted by ``ts_event``.

Receive lag (``ts_recv - ts_event``, ms) is what a collector near the venue sees:
network latency ``2 + floor(40 u^3)`` (median 7 ms, p99 ~40 ms); a rare stall (one
row in 20,000) adds 0.2-3 s; and since one connection delivers a stream in order,
``ts_recv`` is the running maximum over the rows sent so far (a stall holds up the
rows behind it, a late row arrives with its successors' receive time). Venues whose
clock runs ahead of the collector's (`_CLOCK_AHEAD_SHARE`: bybit, okx) stamp about
one row in 2,000 1-20 ms in the future: a negative lag, unless the running maximum
hides it. Binance never does, so its lags are >= 2 ms.

With ``previous_day_rows`` the first three files (only the first for ``disjoint``)
hold rows whose ``ts_event`` lies in the last seconds of the previous day.

``schema_drift`` changes the schema between files of the day:

- ``update_id`` (int64) appears from file ``files // 2`` on (a column added mid-day);
- ``stream_version`` (and ``side`` for trade) is int16 in files ``i % 5 == 2`` and
  int64 in files ``i % 7 == 3`` (int8 elsewhere);
- ``exchange``/``symbol``/``stream`` are Arrow dictionary (pandas categorical) in files
  ``i % 3 == 1`` and plain strings elsewhere;
- files ``i % 4 == 3`` are written without Parquet dictionary encoding (plain pages);
- the quantity column (``bid_qty``/``qty``/``index_price``/``funding_rate``/
  ``open_interest``) is float32 in files ``i % 11 == 5``.

``corrupt`` and ``empty`` replace that many of the ``files`` slots (evenly spread,
never slot 0 when there is room) by a damaged object or a valid zero-row file;
`special_files` says which slot holds what. Corrupt kinds rotate through
`CORRUPT_KINDS`; each is checked to be unreadable by ``pyarrow.parquet.read_table``.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from compressor.layout import PartitionId, parse_day, raw_file_name

DAY_MS = 86_400_000
LAYOUTS = ("edges", "spans_day", "disjoint")
EXCHANGES = ("binance", "bybit", "okx")
STREAMS = ("bbo", "trade", "mark_price", "funding", "open_interest")
#: Kinds of damaged objects, in the order `corrupt` rotates through them.
CORRUPT_KINDS = ("truncated", "bad_footer", "bad_page", "concatenated", "zero_bytes")
#: Value columns per stream (after the common columns), in file order.
STREAM_COLUMNS: dict[str, tuple[str, ...]] = {
    "bbo": ("bid_price", "bid_qty", "ask_price", "ask_qty"),
    "trade": ("price", "qty", "side", "trade_id"),
    "mark_price": ("mark_price", "index_price"),
    "funding": ("funding_rate", "next_funding_ts"),
    "open_interest": ("open_interest",),
}
#: Column added mid-day when `schema_drift` is on.
DRIFT_ADDED_COLUMN = "update_id"

_BASE_PRICE = {
    "btcusdt": 95_000.0,
    "ethusdt": 3_500.0,
    "solusdt": 210.0,
    "bnbusdt": 650.0,
    "xrpusdt": 2.3,
    "dogeusdt": 0.35,
    "adausdt": 0.9,
    "avaxusdt": 40.0,
    "linkusdt": 20.0,
    "ltcusdt": 100.0,
}
_QTY_COLUMN = {
    "bbo": "bid_qty",
    "trade": "qty",
    "mark_price": "index_price",
    "funding": "funding_rate",
    "open_interest": "open_interest",
}
_NUMPY_NAMES = {"double": "float64", "float": "float32", "halffloat": "float16"}
_FUNDING_PERIOD_MS = 8 * 3_600_000
_FLUSH_DELAY_MS = 500
#: Network latency, ms: _LATENCY_MIN_MS + floor(_LATENCY_SPREAD_MS * u**3).
_LATENCY_MIN_MS = 2
_LATENCY_SPREAD_MS = 40
#: Share of rows held up by a stall of _STALL_MS[0].._STALL_MS[1] ms (the rare tail).
_STALL_SHARE = 0.00005
_STALL_MS = (200, 3_000)
#: Share of rows the venue sends late (after 1-4 later events); at least one per file.
_LATE_SHARE = 0.005
#: Share of rows stamped by a venue clock running 1-_CLOCK_AHEAD_MS ms ahead of ours.
_CLOCK_AHEAD_SHARE = {"bybit": 0.0005, "okx": 0.0005}
_CLOCK_AHEAD_MS = 20


@dataclass(frozen=True)
class PartitionSpec:
    """One raw partition-day to generate. `symbol` is lower-case as in keys."""

    exchange: str = "binance"
    stream: str = "bbo"
    symbol: str = "btcusdt"
    date: str = "20261124"
    files: int = 100
    rows_per_file: int = 1000
    seed: int = 0
    layout: str = "edges"
    schema_drift: bool = False
    corrupt: int = 0
    empty: int = 0
    previous_day_rows: bool = True
    #: Rows per file vary uniformly within ±rows_jitter × rows_per_file.
    rows_jitter: float = 0.1
    #: Fraction of rows that repeat the previous row's ts_event (ms ties).
    tie_fraction: float = 0.3
    #: Collector restarts during the day (the file counter restarts at 0).
    restarts: int = 1
    #: Also write a `._part-…` and a `part-….parquet.tmp` object next to the files.
    strays: bool = False

    def __post_init__(self) -> None:
        parse_day(self.date)
        if self.stream not in STREAM_COLUMNS:
            raise ValueError(f"unknown stream {self.stream!r}; one of {sorted(STREAM_COLUMNS)}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; one of {LAYOUTS}")
        if self.files < 1:
            raise ValueError("files must be >= 1")
        if self.rows_per_file < 0 or self.corrupt < 0 or self.empty < 0 or self.restarts < 0:
            raise ValueError("rows_per_file, corrupt, empty and restarts must be >= 0")
        if self.corrupt + self.empty > self.files:
            raise ValueError("corrupt + empty must not exceed files")
        if not 0 <= self.rows_jitter < 1 or not 0 <= self.tie_fraction < 1:
            raise ValueError("rows_jitter and tie_fraction must be in [0, 1)")

    @property
    def partition(self) -> PartitionId:
        return PartitionId(self.exchange, self.stream, self.symbol.lower(), self.date)

    @property
    def day_start_ms(self) -> int:
        day = parse_day(self.date)
        return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1000

    @property
    def max_rows_per_file(self) -> int:
        return math.ceil(self.rows_per_file * (1 + self.rows_jitter)) + 1


# --------------------------------------------------------------------------- seeds


def _hash(spec: PartitionSpec, *parts: object) -> int:
    """64-bit deterministic hash of the spec's identity and `parts` (not Python's hash)."""
    text = repr((spec.seed, spec.exchange, spec.stream, spec.symbol, spec.date, *parts))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def _unit(spec: PartitionSpec, *parts: object) -> float:
    """Deterministic float in [0, 1)."""
    return _hash(spec, *parts) / 2.0**64


# --------------------------------------------------------------------------- layout


def _boundary(spec: PartitionSpec, i: int) -> int:
    """Start (ms) of file i's slice of the day; slice i is [b(i), b(i+1))."""
    return spec.day_start_ms + (i * (DAY_MS - 1000)) // spec.files


def _restart_points(spec: PartitionSpec) -> list[int]:
    """File indices where the collector restarted (counter back to 0)."""
    points = []
    for k in range(spec.restarts):
        r = spec.files * (k + 1) // (spec.restarts + 1)
        # A restart must move to a later second, or key order would not be flush order.
        if 0 < r < spec.files and _flush_second(spec, r) > _flush_second(spec, r - 1):
            points.append(r)
    return sorted(set(points))


def _flush_second(spec: PartitionSpec, i: int) -> int:
    return (_boundary(spec, i + 1) + _FLUSH_DELAY_MS) // 1000


def file_names(spec: PartitionSpec) -> list[str]:
    """The `files` object names of the partition, in key (= flush) order."""
    restarts = _restart_points(spec)
    counter = 1 + _hash(spec, "counter") % 5000
    names = []
    for i in range(spec.files):
        if i in restarts:
            counter = 0
        names.append(raw_file_name(_flush_second(spec, i), counter))
        counter += 1
    return names


def special_files(spec: PartitionSpec) -> dict[int, str]:
    """Slot index -> 'empty' or a corrupt kind from `CORRUPT_KINDS`, for the special slots."""
    total = spec.corrupt + spec.empty
    if total == 0:
        return {}
    low = 1 if spec.files > total else 0
    span = spec.files - low
    positions = [low + (2 * k + 1) * span // (2 * total) for k in range(total)]
    out: dict[int, str] = {}
    n_corrupt = 0
    for k, pos in enumerate(positions):
        # Bresenham: spread the corrupt slots evenly among the special ones.
        if ((k + 1) * spec.corrupt) // total > (k * spec.corrupt) // total:
            out[pos] = CORRUPT_KINDS[n_corrupt % len(CORRUPT_KINDS)]
            n_corrupt += 1
        else:
            out[pos] = "empty"
    return out


def rows_in_file(spec: PartitionSpec, i: int) -> int:
    """Rows the collector put in file i (0 for empty slots; corrupt slots count their rows)."""
    if special_files(spec).get(i) == "empty" or spec.rows_per_file == 0:
        return 0
    jitter = spec.rows_jitter * (2 * _unit(spec, "rows", i) - 1)
    return max(1, round(spec.rows_per_file * (1 + jitter)))


def _previous_day_rows(spec: PartitionSpec, i: int, n: int) -> int:
    if not spec.previous_day_rows or n == 0:
        return 0
    if i == 0:
        return max(1, n // 20)
    if i in (1, 2) and spec.layout != "disjoint":
        return max(1, n // 50)
    return 0


# --------------------------------------------------------------------------- rows


def _sorted_times(u_gap: pa.Array, u_tie: pa.Array, tie: float, start: int, end: int) -> pa.Array:
    """Non-decreasing int64 ms in [start, end): Poisson-like gaps, ~`tie` of them zero."""
    if len(u_gap) == 0:
        return pa.array([], pa.int64())
    gaps = pc.negate(pc.ln(pc.subtract(1.0, u_gap)))
    gaps = pc.if_else(pc.less(u_tie, tie), 0.0, gaps)
    cum = pc.cumulative_sum(gaps)
    total = cum[-1].as_py() + 1.0  # one more mean gap: the last row stays < end
    scaled = pc.floor(pc.multiply(cum, (end - start) / total))
    return pc.add(pc.cast(scaled, pa.int64()), start)


def _constant_string(value: str, n: int, dictionary: bool) -> pa.Array:
    if dictionary:
        indices = pa.repeat(pa.scalar(0, pa.int8()), n)
        return pa.DictionaryArray.from_arrays(indices, pa.array([value]))
    return pa.repeat(pa.scalar(value, pa.string()), n)


def _int_type(spec: PartitionSpec, i: int) -> pa.DataType:
    if spec.schema_drift and i % 5 == 2:
        return pa.int16()
    if spec.schema_drift and i % 7 == 3:
        return pa.int64()
    return pa.int8()


def _pandas_metadata(schema: pa.Schema, n: int) -> bytes:
    """The b'pandas' schema metadata pyarrow writes for a DataFrame with a RangeIndex."""
    columns = []
    for f in schema:
        if pa.types.is_dictionary(f.type):
            pandas_type, numpy_type = "categorical", str(f.type.index_type)
            meta: dict[str, object] | None = {"num_categories": 1, "ordered": False}
        elif pa.types.is_string(f.type):
            pandas_type, numpy_type, meta = "unicode", "object", None
        else:
            pandas_type = numpy_type = _NUMPY_NAMES.get(str(f.type), str(f.type))
            meta = None
        columns.append(
            {
                "name": f.name,
                "field_name": f.name,
                "pandas_type": pandas_type,
                "numpy_type": numpy_type,
                "metadata": meta,
            }
        )
    doc = {
        "index_columns": [{"kind": "range", "name": None, "start": 0, "stop": n, "step": 1}],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": columns,
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }
    return json.dumps(doc).encode()


def raw_table(spec: PartitionSpec, file_index: int) -> pa.Table:
    """The rows of file `file_index`, in the file's (arrival) order, as the collector wrote them.

    Empty slots give zero rows; corrupt slots give the rows the damaged object was meant
    to hold (no reader can get them back).
    """
    i = file_index
    if not 0 <= i < spec.files:
        raise IndexError(f"file_index {i} not in 0..{spec.files - 1}")
    n = rows_in_file(spec, i)
    k_prev = _previous_day_rows(spec, i, n)
    n_main = n - k_prev
    day0 = spec.day_start_ms
    u = pc.random(8 * n, initializer=_hash(spec, "file", i)) if n else pa.array([], pa.float64())
    u_gap, u_tie, u_lat, u_perm = (u.slice(j * n, n) for j in range(4))
    v1, v2, v3, v4 = (u.slice(j * n, n) for j in range(4, 8))

    if spec.layout == "spans_day":
        start, end = day0, day0 + DAY_MS - 1000
    else:
        start, end = _boundary(spec, i), _boundary(spec, i + 1)
        if spec.layout == "edges" and i > 0:
            overlap = int((end - start) * (0.02 + 0.04 * _unit(spec, "overlap", i))) + 1
            start -= overlap
    ts = _sorted_times(
        u_gap.slice(0, n_main), u_tie.slice(0, n_main), spec.tie_fraction, start, end
    )
    if k_prev:
        prev_ms = 2000 + int(3000 * _unit(spec, "previous_day"))
        ts = pa.concat_arrays(
            [
                _sorted_times(
                    u_gap.slice(n_main, k_prev),
                    u_tie.slice(n_main, k_prev),
                    spec.tie_fraction,
                    day0 - prev_ms,
                    day0,
                ),
                ts,
            ]
        )
    serial = pa.array(range(n), pa.int64())
    if spec.layout == "edges":
        order = _send_order(spec, i, ts)
    elif spec.layout == "spans_day":
        order = pc.sort_indices(u_perm)  # random order
    else:
        order = serial
    ts, serial = ts.take(order), serial.take(order)
    # spans_day files are shuffled, not in arrival order: no running maximum there.
    recv = _receive_times(spec, i, ts, u_lat.take(order), spec.layout != "spans_day")

    dictionary = spec.schema_drift and i % 3 == 1
    int_type = _int_type(spec, i)
    cols: dict[str, pa.Array] = {
        "ts_event": ts,
        "ts_recv": recv,
        "exchange": _constant_string(spec.exchange, n, dictionary),
        "symbol": _constant_string(spec.symbol.upper(), n, dictionary),
        "stream": _constant_string(spec.stream, n, dictionary),
        "stream_version": pa.repeat(pa.scalar(1, int_type), n),
    }
    cols.update(_stream_values(spec, i, ts, serial, (v1, v2, v3, v4), int_type))
    if spec.schema_drift and spec.files >= 2 and i >= spec.files // 2:
        cols[DRIFT_ADDED_COLUMN] = pc.add(
            serial, _hash(spec, "update_id") % 10**9 + i * spec.max_rows_per_file
        )
    if spec.schema_drift and i % 11 == 5:
        q = _QTY_COLUMN[spec.stream]
        cols[q] = pc.cast(cols[q], pa.float32())
    table = pa.table(cols)
    return table.replace_schema_metadata({b"pandas": _pandas_metadata(table.schema, n)})


def _send_order(spec: PartitionSpec, i: int, ts: pa.Array) -> pa.Array:
    """Indices of `ts` (sorted) in the order the venue sent them: a few rows late.

    About `_LATE_SHARE` of the rows, one per stratum of the file, are sent after the
    next row with a larger ts_event and up to three more, so every file with a late
    row is out of ts_event order.
    """
    n = len(ts)
    n_late = max(1, round(n * _LATE_SHARE)) if n >= 2 else 0
    key = np.arange(n, dtype=np.float64)
    if n_late:
        u = pc.random(2 * n_late, initializer=_hash(spec, "late", i)).to_numpy()
        times = ts.to_numpy()
        late = ((np.arange(n_late) + u[:n_late]) * n / n_late).astype(np.int64)
        after = np.searchsorted(times, times[late], side="right")  # next larger ts_event
        target = np.minimum(after + (u[n_late:] * 4).astype(np.int64), n - 1)
        movable = after < n  # the last millisecond of the file has nothing to pass
        key[late[movable]] = target[movable] + 0.5
    return pa.array(np.argsort(key, kind="stable"))


def _receive_times(
    spec: PartitionSpec, i: int, ts: pa.Array, u_lat: pa.Array, in_order: bool
) -> pa.Array:
    """ts_recv of rows in file order: ts_event + latency (+ stall, - clock skew), ms.

    `in_order`: the file is in arrival order, so ts_recv is a running maximum (one
    connection delivers in order: a row cannot arrive before the one sent before it).
    """
    n = len(ts)
    if n == 0:
        return pa.array([], pa.int64())
    u = pc.random(4 * n, initializer=_hash(spec, "lag", i)).to_numpy().reshape(4, n)
    lag = _LATENCY_MIN_MS + np.floor(_LATENCY_SPREAD_MS * u_lat.to_numpy() ** 3).astype(np.int64)
    low, high = _STALL_MS
    stall = low + np.floor((high - low) * u[1]).astype(np.int64)
    lag = np.where(u[0] < _STALL_SHARE, lag + stall, lag)
    ahead = -1 - np.floor(_CLOCK_AHEAD_MS * u[3]).astype(np.int64)
    lag = np.where(u[2] < _CLOCK_AHEAD_SHARE.get(spec.exchange, 0.0), ahead, lag)
    recv = ts.to_numpy() + lag
    if in_order:
        recv = np.maximum.accumulate(recv)
    return pa.array(recv, pa.int64())


def _stream_values(
    spec: PartitionSpec,
    i: int,
    ts: pa.Array,
    serial: pa.Array,
    noise: tuple[pa.Array, pa.Array, pa.Array, pa.Array],
    int_type: pa.DataType,
) -> dict[str, pa.Array]:
    v1, v2, v3, v4 = noise
    n = len(ts)
    base = _BASE_PRICE.get(spec.symbol.lower(), 100.0)
    digits = max(1, 6 - len(str(int(base))))
    t = pc.cast(pc.subtract(ts, spec.day_start_ms), pa.float64())
    wave = pc.sin(pc.multiply(t, 2 * math.pi / _FUNDING_PERIOD_MS))
    mid = pc.multiply(pc.add(pc.add(pc.multiply(wave, 0.01), pc.multiply(v1, 0.0004)), 1.0), base)
    half_spread = pc.multiply(pc.add(v2, 1.0), base * 0.00005)

    def rnd(x: pa.Array, nd: int = digits) -> pa.Array:
        return pc.round(x, nd)

    if spec.stream == "bbo":
        return {
            "bid_price": rnd(pc.subtract(mid, half_spread)),
            "bid_qty": rnd(pc.add(pc.multiply(v3, 5.0), 0.001), 3),
            "ask_price": rnd(pc.add(mid, half_spread)),
            "ask_qty": rnd(pc.add(pc.multiply(v4, 5.0), 0.001), 3),
        }
    if spec.stream == "trade":
        buy = pc.less(v4, 0.5)
        side = pc.if_else(buy, pa.scalar(1, int_type), pa.scalar(-1, int_type))
        first_id = _hash(spec, "trade_id") % 10**9 + i * spec.max_rows_per_file
        return {
            "price": rnd(pc.if_else(buy, pc.add(mid, half_spread), pc.subtract(mid, half_spread))),
            "qty": rnd(pc.add(pc.multiply(pc.multiply(v3, v3), 2.0), 0.001), 3),
            "side": side,
            "trade_id": pc.cast(pc.add(serial, first_id), pa.string()),
        }
    if spec.stream == "mark_price":
        if spec.exchange == "okx":
            return {
                "mark_price": pa.nulls(n, pa.float64()),
                "index_price": pa.nulls(n, pa.float64()),
            }
        index = pc.multiply(mid, pc.add(pc.multiply(v3, 0.0002), 0.9999))
        return {"mark_price": rnd(mid), "index_price": rnd(index)}
    if spec.stream == "funding":
        rate = pc.add(pc.multiply(wave, 0.0001), pc.add(pc.multiply(v3, 0.00001), 0.0001))
        next_ts = pc.multiply(pc.add(pc.divide(ts, _FUNDING_PERIOD_MS), 1), _FUNDING_PERIOD_MS)
        return {"funding_rate": rnd(rate, 8), "next_funding_ts": next_ts}
    oi = pc.multiply(
        pc.add(pc.add(pc.multiply(wave, 0.05), pc.multiply(v3, 0.001)), 1.0), 1e9 / base
    )
    return {"open_interest": rnd(oi, 3)}


# --------------------------------------------------------------------------- bytes


def _use_dictionary(spec: PartitionSpec, i: int) -> bool:
    return not (spec.schema_drift and i % 4 == 3)


def _parquet_bytes(table: pa.Table, use_dictionary: bool = True) -> bytes:
    sink = io.BytesIO()
    pq.write_table(
        table,
        sink,
        compression="snappy",
        write_statistics=True,
        use_dictionary=use_dictionary,
        row_group_size=max(table.num_rows, 1),
    )
    return sink.getvalue()


def is_readable(data: bytes) -> bool:
    """True if pyarrow reads every row of this object."""
    try:
        pq.read_table(pa.BufferReader(data))
    except Exception:
        return False
    return True


def _corrupt_bytes(spec: PartitionSpec, i: int, kind: str) -> bytes:
    table = raw_table(spec, i)
    if table.num_rows == 0:  # rows_per_file=0: damage what a small file would have held
        table = raw_table(replace(spec, rows_per_file=100, corrupt=0, empty=0), i)
    good = _parquet_bytes(table, _use_dictionary(spec, i))
    if kind == "zero_bytes":
        return b""
    if kind == "truncated":
        candidates = [good[: len(good) // 2], good[: len(good) - 9], good[: max(len(good) - 4, 1)]]
    elif kind == "bad_footer":
        footer_len = int.from_bytes(good[-8:-4], "little")
        start = len(good) - 8 - footer_len
        junk = hashlib.blake2b(repr(("footer", spec, i)).encode()).digest()
        pattern = (junk * (footer_len // len(junk) + 1))[:footer_len]
        candidates = [
            good[:start] + pattern + good[-8:],
            good[:start] + bytes(footer_len) + good[-8:],
        ]
    elif kind == "bad_page":
        # Footer intact (the file opens, the schema reads); a page's compressed bytes are
        # overwritten, one more column each attempt until the data no longer decodes.
        meta = pq.read_metadata(pa.BufferReader(good))
        data = bytearray(good)
        candidates = []
        if meta.num_row_groups:
            rg = meta.row_group(0)
            for c in range(rg.num_columns):
                col = rg.column(c)
                first = col.dictionary_page_offset or col.data_page_offset
                size = col.total_compressed_size
                lo, hi = first + size // 3, first + size - 1
                if hi > lo:
                    data[lo:hi] = b"\xff" * (hi - lo)
                candidates.append(bytes(data))
    elif kind == "concatenated":
        # A + B: B's footer points at offsets inside A. Tiny files laid out alike can
        # decode (silently wrong); then B is a bigger neighbour.
        j = i + 1 if i + 1 < spec.files else max(i - 1, 0)
        bigger = replace(spec, rows_per_file=max(200, 4 * spec.rows_per_file), corrupt=0, empty=0)
        candidates = [good + _parquet_bytes(raw_table(s, j)) for s in (spec, bigger)]
    else:
        raise ValueError(f"unknown corrupt kind {kind!r}")
    for candidate in candidates:
        if not is_readable(candidate):
            return candidate
    raise RuntimeError(f"could not make a {kind} object unreadable for file {i}")


def file_bytes(spec: PartitionSpec, i: int) -> bytes:
    """The exact object stored for slot i (valid, empty or corrupt)."""
    kind = special_files(spec).get(i)
    if kind is not None and kind != "empty":
        return _corrupt_bytes(spec, i, kind)
    return _parquet_bytes(raw_table(spec, i), _use_dictionary(spec, i))


# --------------------------------------------------------------------------- writing


def _write_range(spec: PartitionSpec, directory: str, indices: Sequence[int]) -> None:
    names = file_names(spec)
    specials = special_files(spec)
    for i in indices:
        path = os.path.join(directory, names[i])
        kind = specials.get(i)
        if kind is not None and kind != "empty":
            with open(path, "wb") as fh:
                fh.write(_corrupt_bytes(spec, i, kind))
        else:
            pq.write_table(
                raw_table(spec, i),
                path,
                compression="snappy",
                write_statistics=True,
                use_dictionary=_use_dictionary(spec, i),
                row_group_size=max(rows_in_file(spec, i), 1),
            )


def write_partition(spec: PartitionSpec, root: Path, *, workers: int = 1) -> list[Path]:
    """Write the partition under root/<prefix>; return the data objects in key order.

    `workers` > 1 writes with that many processes (same bytes). Strays, when
    `spec.strays` asks for them, are written but not returned.
    """
    directory = Path(root) / spec.partition.prefix
    directory.mkdir(parents=True, exist_ok=True)
    names = file_names(spec)
    if workers <= 1 or spec.files < 64:
        _write_range(spec, str(directory), range(spec.files))
    else:
        step = max(16, spec.files // (workers * 8))
        chunks = [range(s, min(s + step, spec.files)) for s in range(0, spec.files, step)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for fut in [pool.submit(_write_range, spec, str(directory), c) for c in chunks]:
                fut.result()
    if spec.strays:
        junk = hashlib.blake2b(repr(("stray", spec)).encode(), digest_size=64).digest()
        (directory / ("._" + names[0])).write_bytes(b"\x00\x05\x16\x07" + junk * 64)
        (directory / (names[-1] + ".tmp")).write_bytes(file_bytes(spec, spec.files - 1)[:100])
    return [directory / name for name in names]


# --------------------------------------------------------------------------- demo lake


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_quality_windows(
    root: Path,
    day: str,
    exchanges: Iterable[str] = EXCHANGES,
    seed: int = 0,
    missing: Iterable[int] = (),
    *,
    partial: Iterable[int] = (),
    overrides: Mapping[int, Mapping[str, Any]] | None = None,
) -> list[Path]:
    """Write the day's 96 collector health windows (BRIEF §5), skipping indices in `missing`.

    Exactly as the collector writes them (docs/quality.md "Collector health windows"): window
    k covers [00:00 + 15k min, +15 min) and is keyed by its START,
    `quality/date=<start day>/window=<start HHMM>.json` (`0000` .. `2345`), as
    `json.dump(indent=2)` without a trailing newline; floats rounded to 1 decimal,
    counts as ints, and `queue_pct_peak` an int (95) when it is the backpressure floor
    of a BAD window, a float otherwise. `missing` makes a day whose coverage has holes,
    which the quality report must show (compressor.quality.windows scores them).

    For known answers: a window in `partial` is the first one after a simulated
    collector restart: `is_partial: true`, its nominal quarter-hour `window_start`,
    and `actual_duration_seconds` 450.0 (the process came up half-way through it);
    `overrides[k]` replaces top-level fields of window k, except `signals`, whose
    entries replace the generated signals one by one.
    """
    spec = PartitionSpec(date=day, seed=seed)
    exchanges = list(exchanges)
    skip = set(missing)
    partial_set = set(partial)
    overrides = overrides or {}
    out = []
    directory = Path(root) / f"quality/date={day}"
    directory.mkdir(parents=True, exist_ok=True)
    for k in range(96):
        if k in skip:
            continue
        doc = _window_doc(spec, exchanges, k, k in partial_set)
        for field_name, value in overrides.get(k, {}).items():
            if field_name == "signals":
                doc["signals"].update(value)
            else:
                doc[field_name] = value
        start = spec.day_start_ms + k * 900_000
        hhmm = datetime.fromtimestamp(start / 1000, tz=UTC).strftime("%H%M")
        path = directory / f"window={hhmm}.json"
        path.write_text(json.dumps(doc, indent=2))
        out.append(path)
    return out


def _window_doc(spec: PartitionSpec, exchanges: list[str], k: int, partial: bool
                ) -> dict[str, Any]:
    """Window k of the day as the collector's ledger writes it (seeded by `spec`)."""
    start = spec.day_start_ms + k * 900_000
    duration = 450.0 if partial else 900.0
    roll = _unit(spec, "quality", k)
    quality = "BAD" if roll < 0.005 else "DEGRADED" if roll < 0.035 else "GOOD"
    offline = {ex: 0.0 for ex in exchanges}
    if quality != "GOOD" and exchanges:
        offline[exchanges[k % len(exchanges)]] = 120.0 if quality == "BAD" else 15.0
    # a healthy collector: drops only in its BAD windows, whose queue sits at the
    # backpressure floor (an int, as the collector writes it); elsewhere a float
    queue: int | float = 95 if quality == "BAD" else round(45.0 * _unit(spec, "queue", k), 1)
    return {
        "window_start": _iso(start),
        "window_end": _iso(start + 900_000),
        "quality": quality,
        "is_partial": partial,
        "signals": {
            "actual_duration_seconds": duration,
            "offline_seconds_by_exchange": offline,
            "ws_connected_seconds": {ex: duration - s for ex, s in offline.items()},
            "eps_by_exchange": {
                ex: {
                    "avg": round(400 + 200 * _unit(spec, "eps", k, ex), 1),
                    "min": round(50 * _unit(spec, "epsmin", k, ex), 1),
                }
                for ex in exchanges
            },
            "dropped_events": 1 + int(1000 * roll) if quality == "BAD" else 0,
            "queue_pct_peak": queue,
            "drain_mode_accelerated_seconds": 0.0,
            "reconnects": 0 if quality == "GOOD" else 1,
            "s3_upload_failures": 0,
        },
    }


#: The demo lake's first day has a collector restart in this window (09:15-09:30).
DEMO_RESTART_SLOT = 37


def write_demo_lake(
    root: Path,
    days: Sequence[str],
    exchanges: Sequence[str] = EXCHANGES,
    streams: Sequence[str] = STREAMS,
    symbols: Sequence[str] = ("btcusdt", "ethusdt"),
    files_per_partition: int = 6,
    rows_per_file: int = 200,
    seed: int = 0,
) -> list[PartitionId]:
    """A small collector-shaped raw lake under `root` (binance has no open_interest).

    Returns the partitions written, sorted. Each day also gets its 96 health windows
    under quality/date=YYYYMMDD/, as the collector writes them; the first day's
    collector restarts once, so its 09:15 window is the short partial first window
    of the new process (`DEMO_RESTART_SLOT`).
    """
    written = []
    for day in days:
        parse_day(day)
        for exchange in exchanges:
            for stream in streams:
                if exchange == "binance" and stream == "open_interest":
                    continue
                for symbol in symbols:
                    spec = PartitionSpec(
                        exchange=exchange,
                        stream=stream,
                        symbol=symbol.lower(),
                        date=day,
                        files=files_per_partition,
                        rows_per_file=rows_per_file,
                        seed=seed,
                        restarts=0,
                    )
                    write_partition(spec, root)
                    written.append(spec.partition)
        restart = (DEMO_RESTART_SLOT,) if day == days[0] else ()
        write_quality_windows(root, day, exchanges, seed=seed, partial=restart)
    return sorted(written)
