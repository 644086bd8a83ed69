"""The rows of one raw file as the collector wrote them (`raw_table`): ts_event in the
file's slice of the day with ms ties, the venue's late rows (arrival order, not
ts_event order), receive lags, each stream's value columns, and the schema drift.

Separate from the objects (lake.py) because tests compare the merge's output with
these rows directly, without writing a file.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from compressor.demo.spec import (
    DAY_MS,
    DRIFT_ADDED_COLUMN,
    PartitionSpec,
    boundary,
    previous_day_rows,
    rows_in_file,
    seeded_hash,
    unit,
)

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
    k_prev = previous_day_rows(spec, i, n)
    n_main = n - k_prev
    u = (pc.random(8 * n, initializer=seeded_hash(spec, "file", i)) if n
         else pa.array([], pa.float64()))
    u_gap, u_tie, u_lat, u_perm = (u.slice(j * n, n) for j in range(4))
    v1, v2, v3, v4 = (u.slice(j * n, n) for j in range(4, 8))

    ts = _event_times(spec, i, u_gap, u_tie, n_main, k_prev)
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
            serial, seeded_hash(spec, "update_id") % 10**9 + i * spec.max_rows_per_file
        )
    if spec.schema_drift and i % 11 == 5:
        q = _QTY_COLUMN[spec.stream]
        cols[q] = pc.cast(cols[q], pa.float32())
    table = pa.table(cols)
    return table.replace_schema_metadata({b"pandas": _pandas_metadata(table.schema, n)})


def _event_times(spec: PartitionSpec, i: int, u_gap: pa.Array, u_tie: pa.Array,
                 n_main: int, k_prev: int) -> pa.Array:
    """ts_event of file i's rows, sorted: `k_prev` rows in the last seconds of the
    previous day, then `n_main` rows in the file's slice of the day (the whole day
    for `spans_day`; for `edges` reaching a little back into the previous slice)."""
    day0 = spec.day_start_ms
    if spec.layout == "spans_day":
        start, end = day0, day0 + DAY_MS - 1000
    else:
        start, end = boundary(spec, i), boundary(spec, i + 1)
        if spec.layout == "edges" and i > 0:
            overlap = int((end - start) * (0.02 + 0.04 * unit(spec, "overlap", i))) + 1
            start -= overlap
    ts = _sorted_times(
        u_gap.slice(0, n_main), u_tie.slice(0, n_main), spec.tie_fraction, start, end
    )
    if k_prev:
        prev_ms = 2000 + int(3000 * unit(spec, "previous_day"))
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
    return ts


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
        u = pc.random(2 * n_late, initializer=seeded_hash(spec, "late", i)).to_numpy()
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
    u = pc.random(4 * n, initializer=seeded_hash(spec, "lag", i)).to_numpy().reshape(4, n)
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
        first_id = seeded_hash(spec, "trade_id") % 10**9 + i * spec.max_rows_per_file
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
