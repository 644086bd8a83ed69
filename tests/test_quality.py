"""The quality accumulator (meta.json quality figures and flags)."""

from __future__ import annotations

import itertools
import json
import shutil
import struct
from pathlib import Path
from unittest import mock

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compressor.cli import main
from compressor.demo import PartitionSpec, raw_table
from compressor.merge import MergeSettings, merge_files
from compressor.quality import duplicates, metrics, pieces
from compressor.quality.metrics import DayQuality, QualityAccumulator

DAY = "20261124"
DAY0 = 1_795_478_400_000  # 2026-11-24T00:00:00Z in ms
OUT = Path("data.parquet")


def _batch(ts: list[int], recv: list[int], price: list[float]) -> pa.RecordBatch:
    n = len(ts)
    return pa.RecordBatch.from_pydict(
        {
            "ts_event": pa.array(ts, pa.int64()),
            "seq": pa.array(range(n), pa.int64()),
            "ts_recv": pa.array(recv, pa.int64()),
            "price": pa.array(price, pa.float64()),
        }
    )


def _feed(batches: list[pa.RecordBatch], stream: str = "trade") -> DayQuality:
    acc = QualityAccumulator(DAY, OUT, stream)
    for b in batches:
        acc(b)
    return acc.result()


def test_figures_on_a_known_day() -> None:
    ts = [DAY0 - 5, DAY0, DAY0, DAY0 + 10, DAY0 + 3_000, DAY0 + 86_400_000]
    recv = [t + lag for t, lag in zip(ts, [1, 2, 2, 3, 4, 50_000], strict=True)]
    price = [1.0, 2.0, 2.0, 3.0, 4.0, 5.0]
    q = _feed([_batch(ts, recv, price)])
    assert q.rows == 6
    assert q.out_of_day_rows == 2  # one before midnight, one at the next midnight
    assert q.duplicate_rows == 1  # rows 1 and 2 are the same event
    assert q.max_gap_ms == 86_400_000 - 3_000
    assert q.lag_p50_ms == 2
    assert q.lag_p99_ms == 50_000


def test_duplicates_need_every_value_equal_but_seq_and_recv() -> None:
    ts = [DAY0, DAY0, DAY0]
    q = _feed([_batch(ts, [DAY0 + 1, DAY0 + 9, DAY0 + 1], [1.0, 1.0, 1.5])])
    assert q.duplicate_rows == 1  # ts_recv differs between the first two: still a duplicate


def test_duplicate_groups_spanning_batches_are_counted_once() -> None:
    a = _batch([DAY0, DAY0 + 1, DAY0 + 1], [DAY0] * 3, [1.0, 2.0, 2.0])
    b = _batch([DAY0 + 1, DAY0 + 1, DAY0 + 2], [DAY0] * 3, [2.0, 3.0, 2.0])
    assert _feed([a, b]).duplicate_rows == 2


def test_empty_input() -> None:
    q = _feed([])
    assert (q.rows, q.out_of_day_rows, q.duplicate_rows, q.max_gap_ms, q.lag_p50_ms,
            q.lag_p99_ms, q.lag_max_ms, q.negative_lag_rows) == (0, 0, 0, None, None, None,
                                                                 None, None)
    assert q.flags() == []


def test_reset_forgets_everything() -> None:
    acc = QualityAccumulator(DAY, OUT, "trade")
    acc(_batch([DAY0, DAY0], [DAY0, DAY0], [-1.0, 1.0]))
    acc.reset()
    acc(_batch([DAY0 + 5], [DAY0 + 7], [1.0]))
    fresh = QualityAccumulator(DAY, OUT, "trade")
    fresh(_batch([DAY0 + 5], [DAY0 + 7], [1.0]))
    assert acc.result() == fresh.result()
    assert acc.result().non_positive == {"price": 0}


@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=599), max_size=6, unique=True))
def test_batch_boundaries_do_not_change_the_figures(cuts: list[int]) -> None:
    """Generator rows sorted like the merge output, fed whole or split anywhere."""
    spec = PartitionSpec(stream="trade", date=DAY, files=3, rows_per_file=200, tie_fraction=0.6)
    table = pa.concat_tables([raw_table(spec, i) for i in range(3)], promote_options="permissive")
    table = table.take(pc.sort_indices(table, [("ts_event", "ascending")]))
    table = table.add_column(1, "seq", pa.array(range(table.num_rows), pa.int64()))
    # Repeat some rows to make duplicates that straddle any cut.
    table = pa.concat_tables([table, table.slice(100, 50)])
    table = table.take(pc.sort_indices(table, [("ts_event", "ascending")]))
    whole = _feed(table.to_batches())
    bounds = [0, *sorted(c for c in cuts if c < table.num_rows), table.num_rows]
    parts = [table.slice(a, b - a).combine_chunks().to_batches()[0]
             for a, b in zip(bounds, bounds[1:], strict=False) if b > a]
    assert _feed(parts) == whole
    assert whole.duplicate_rows >= 50
    assert whole.out_of_day_rows > 0  # the generator puts the previous day's tail first


def test_a_differing_string_or_null_column_makes_rows_distinct() -> None:
    base = _batch([DAY0] * 4, [DAY0] * 4, [1.0] * 4)
    venue = pa.array(["a", "b", "a", None]).dictionary_encode()
    batch = pa.RecordBatch.from_arrays([*base.columns, venue], [*base.schema.names, "venue"])
    assert _feed([batch]).duplicate_rows == 1  # only the second "a"
    same = pa.array(["x"] * 4)
    batch = pa.RecordBatch.from_arrays([*base.columns, same], [*base.schema.names, "venue"])
    assert _feed([batch]).duplicate_rows == 3


def test_timestamp_columns_count_in_milliseconds() -> None:
    ts, recv = [DAY0, DAY0 + 1_000], [DAY0 + 7, DAY0 + 1_009]
    batch = pa.RecordBatch.from_pydict({
        "ts_event": pa.array([t * 1000 for t in ts], pa.timestamp("us", "UTC")),
        "ts_recv": pa.array(recv, pa.timestamp("ms")),
        "price": pa.array([1.0, 2.0]),
    })
    q = _feed([batch])
    assert (q.rows, q.out_of_day_rows, q.duplicate_rows, q.max_gap_ms, q.lag_p50_ms,
            q.lag_p99_ms, q.lag_max_ms) == (2, 0, 0, 1_000, 7, 9, 9)


# --------------------------------------------------------------------------- 1.1 figures


def _table(**columns: list) -> pa.Table:
    """A sorted output-shaped table; ts_event (ms) first, seq added."""
    ts = columns.pop("ts_event")
    arrays: dict[str, pa.Array] = {
        "ts_event": pa.array(ts, pa.int64()),
        "seq": pa.array(range(len(ts)), pa.int64()),
    }
    for name, values in columns.items():
        arrays[name] = pa.array(values)
    return pa.table(arrays)


def _feed_split(table: pa.Table, stream: str, *cuts: int) -> DayQuality:
    """Feed `table` whole and cut at `cuts`; both must give the same figures."""
    whole = _feed(table.to_batches(), stream)
    bounds = [0, *cuts, table.num_rows]
    parts = [table.slice(a, b - a) for a, b in zip(bounds, bounds[1:], strict=False)]
    acc = QualityAccumulator(DAY, OUT, stream)
    for part in parts:
        acc(part)
    assert acc.result() == whole
    return whole


def test_out_of_day_before_and_after_apart() -> None:
    end = DAY0 + 86_400_000
    t = _table(ts_event=[DAY0 - 3, DAY0 - 1, DAY0, end - 1, end, end + 7])
    q = _feed_split(t, "bbo", 2, 5)
    assert (q.out_of_day_before, q.out_of_day_after, q.out_of_day_rows) == (2, 2, 4)


def test_gaps_above_the_stream_threshold_across_batches() -> None:
    busy = [DAY0 + 100 * k for k in range(2000)]  # a busy stream: a row every 100 ms
    ts = [*busy, busy[-1] + 10_001, busy[-1] + 20_001, busy[-1] + 20_001, busy[-1] + 45_000,
          busy[-1] + 45_001]
    q = _feed_split(_table(ts_event=ts), "bbo", 2, 1000, 2003)  # 20_001 -> 45_000 crosses
    assert q.gap_threshold_ms == 10_000  # bbo's floor: 40 mean steps are 10 s less
    assert q.gaps_above_threshold == 2  # 10_001 and 24_999; exactly 10_000 is not above
    assert q.max_gap_ms == 24_999
    assert "gaps" in q.flags()
    trade = _feed_split(_table(ts_event=ts), "trade", 3)
    assert (trade.gap_threshold_ms, trade.gaps_above_threshold) == (60_000, 0)
    assert "gaps" not in trade.flags()
    assert _feed([], "something_new").gap_threshold_ms == 60_000
    # a sparse partition (a row every ~30 s, like the demo) is measured on its own cadence
    sparse = [DAY0 + 30_000 * k for k in range(1000)]
    sparse += [sparse[-1] + 500_000 + 30_000 * k for k in range(1400)]  # one 500 s step
    q = _feed_split(_table(ts_event=sparse), "bbo", 7, 1500)
    assert q.gap_threshold_ms == 40 * (max(sparse) - DAY0) // 2399
    assert (q.gaps_above_threshold, q.flags()) == (0, [])
    q = _feed_split(_table(ts_event=[*sparse[:2000], sparse[1999] + 3_000_000]), "bbo", 9)
    assert q.gaps_above_threshold == 1 and "gaps" in q.flags()  # 50 min: the stream stalled


def test_lag_max_and_negative_lags() -> None:
    ts = [DAY0 + k for k in range(8)]
    lags = [5, -3, 7, 0, 2_500_000, -1, 9, None]
    recv = [None if lag is None else t + lag for t, lag in zip(ts, lags, strict=True)]
    q = _feed_split(_table(ts_event=ts, ts_recv=recv), "trade", 1, 5)
    assert q.negative_lag_rows == 2  # -3 and -1; ts_recv == ts_event is not negative
    assert q.lag_max_ms == 2_500_000
    assert q.lag_p50_ms == 5  # of -3 -1 0 5 7 9 2_500_000 (nearest rank 4 of 7)
    assert q.lag_p99_ms == 2_500_000
    assert q.null_counts == {"ts_recv": 1}
    assert {"negative_lag", "lag_p99", "nulls"} <= set(q.flags())


def test_null_counts_per_column_only_where_nulls() -> None:
    t = _table(
        ts_event=[DAY0, DAY0 + 1, DAY0 + 2, DAY0 + 3],
        mark_price=[None, 1.0, None, None],
        index_price=[1.0, 1.0, 1.0, 1.0],
        funding_rate=[0.1, None, 0.1, 0.1],
    )
    q = _feed_split(t, "mark_price", 1, 2)
    assert q.null_counts == {"mark_price": 3, "funding_rate": 1}
    assert "nulls" in q.flags()  # funding_rate is not nullable
    only_nullable = _feed_split(t.drop_columns(["funding_rate"]), "mark_price", 3)
    assert only_nullable.null_counts == {"mark_price": 3}
    assert "nulls" not in only_nullable.flags()  # mark_price may be null (okx)


def test_duplicate_trade_ids_in_a_batch_across_batches_and_the_window() -> None:
    minute = 60_000
    ts = [DAY0, DAY0 + 1, DAY0 + 1, DAY0 + minute, DAY0 + 2 * minute, DAY0 + 20 * minute,
          DAY0 + 30 * minute, DAY0 + 30 * minute + 1]
    ids = ["1", "2", "2", "1", None, "5", "1", "9"]
    # "2" twice in a row and "1" again a minute later: always counted; a null never is.
    # "1" once more 29 minutes after its last sighting: counted only when a batch holds
    # both, as the window keeps the ids of the last 10 minutes before a batch starts.
    t = _table(ts_event=ts, trade_id=ids, price=[1.0] * 8)
    for cuts, expected in [((), 3), ((2,), 3), ((1, 3), 3), ((6,), 2), ((3, 4, 5, 6, 7), 2)]:
        acc = QualityAccumulator(DAY, OUT, "trade")
        bounds = [0, *cuts, t.num_rows]
        for a, b in zip(bounds, bounds[1:], strict=False):
            acc(t.slice(a, b - a))
        assert acc.result().duplicate_trade_ids == expected, cuts
    dictionary = t.set_column(2, "trade_id", pa.array(ids).dictionary_encode())
    assert _feed_split(dictionary, "trade", 3).duplicate_trade_ids == 3
    assert _feed_split(t.drop_columns(["trade_id"]), "trade").duplicate_trade_ids is None


def test_crossed_and_locked_quotes() -> None:
    t = _table(
        ts_event=[DAY0 + k for k in range(6)],
        bid_price=[1.0, 2.0, 2.0, None, 3.0, 5.0],
        ask_price=[1.5, 1.0, 2.0, 1.0, 3.0, None],
        bid_qty=[1.0] * 6,
        ask_qty=[1.0] * 6,
    )
    q = _feed_split(t, "bbo", 2)
    assert (q.crossed_rows, q.locked_rows) == (1, 2)  # nulls are neither
    assert {"crossed", "locked"} <= set(q.flags())
    assert _feed_split(_table(ts_event=[DAY0]), "bbo").crossed_rows is None


def test_non_positive_prices_and_quantities_per_column() -> None:
    nan = float("nan")
    t = _table(
        ts_event=[DAY0 + k for k in range(5)],
        price=[1.0, 0.0, -2.0, nan, None],
        qty=[1.0, 2.0, 3.0, 4.0, 5.0],
        side=[1, -1, 1, -1, 1],  # not a price or quantity: never checked
        funding_rate=[-0.1] * 5,  # may be negative
    )
    t = t.set_column(3, "qty", pa.array([1, 2, 0, 4, 5], pa.float32()))
    q = _feed_split(t, "trade", 1, 3)
    assert q.non_positive == {"price": 3, "qty": 1}  # 0, -2, NaN; a null is a null
    assert "non_positive" in q.flags()
    ok = _feed_split(t.drop_columns(["price"]).set_column(2, "qty", pa.array([1.0] * 5)), "trade")
    assert ok.non_positive == {"qty": 0} and "non_positive" not in ok.flags()


def _raw(path: Path, ts: list[int]) -> Path:
    table = pa.table({
        "ts_event": pa.array(ts, pa.int64()),
        "ts_recv": pa.array([t + 5 for t in ts], pa.int64()),
        "price": pa.array([1.0] * len(ts)),
    })
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize("budget", [512 << 20, 1])  # one streaming run / a run per file
def test_per_file_disorder_and_empty_files_from_the_merge(tmp_path: Path, budget: int) -> None:
    paths = [
        _raw(tmp_path / "a.parquet", [DAY0 + 5, DAY0 + 3, DAY0 + 4, DAY0 + 1]),  # 2 steps back
        _raw(tmp_path / "b.parquet", []),
        _raw(tmp_path / "c.parquet", [DAY0 + 2, DAY0 + 2, DAY0 + 9]),  # sorted, a tie
        _raw(tmp_path / "d.parquet", [DAY0 + 8, DAY0 + 7]),  # 1
    ]
    acc = QualityAccumulator(DAY, OUT, "trade")
    merged = merge_files(paths, tmp_path / "out.parquet", tmp_dir=tmp_path,
                         settings=MergeSettings(memory_budget=budget, output_buffer_size=3),
                         on_batch=acc)
    assert merged.unsorted_rows_in_files == 3
    assert merged.empty_files == 1
    q = acc.result(merged)
    assert (q.rows, q.unsorted_rows_in_files, q.empty_files) == (9, 3, 1)
    assert {"out_of_order_in_file", "empty_files"} <= set(q.flags())
    assert acc.result().unsorted_rows_in_files is None  # without the merge: not measured


def _quality(**figures: object) -> DayQuality:
    base: dict[str, object] = dict(
        rows=10_000, out_of_day_rows=0, duplicate_rows=0, max_gap_ms=100, lag_p50_ms=5,
        lag_p99_ms=40, out_of_day_before=0, out_of_day_after=0, gap_threshold_ms=10_000,
        gaps_above_threshold=0, lag_max_ms=900, negative_lag_rows=0, unsorted_rows_in_files=0,
        empty_files=0, null_counts={}, non_positive={"price": 0}, duplicate_trade_ids=0,
        crossed_rows=0, locked_rows=0,
    )
    base.update(figures)
    return DayQuality(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("figures", "quiet", "raised"),
    [
        ({"out_of_day_before": 500}, {"out_of_day_before": 501}, "out_of_day"),
        ({"out_of_day_after": 0}, {"out_of_day_after": 1}, "out_of_day"),
        ({"duplicate_rows": 10}, {"duplicate_rows": 11}, "duplicates"),
        ({"gaps_above_threshold": 0}, {"gaps_above_threshold": 1}, "gaps"),
        ({"lag_p99_ms": 1_000}, {"lag_p99_ms": 1_001}, "lag_p99"),
        ({"negative_lag_rows": 10}, {"negative_lag_rows": 11}, "negative_lag"),
        ({"unsorted_rows_in_files": 100}, {"unsorted_rows_in_files": 101},
         "out_of_order_in_file"),
        ({"null_counts": {"mark_price": 9}}, {"null_counts": {"qty": 1}}, "nulls"),
        ({"duplicate_trade_ids": 0}, {"duplicate_trade_ids": 1}, "duplicate_trade_id"),
        ({"crossed_rows": 0}, {"crossed_rows": 1}, "crossed"),
        ({"locked_rows": 10}, {"locked_rows": 11}, "locked"),
        ({"non_positive": {"price": 0}}, {"non_positive": {"price": 1}}, "non_positive"),
        ({"empty_files": 0}, {"empty_files": 1}, "empty_files"),
    ],
)
def test_each_flag_at_its_threshold(figures: dict, quiet: dict, raised: str) -> None:
    assert _quality(**figures).flags() == []
    assert _quality(**quiet).flags() == [raised]


def test_json_compact_and_old_figures_read_back() -> None:
    q = _quality(out_of_day_before=3, out_of_day_after=1, out_of_day_rows=4,
                 null_counts={"qty": 2}, crossed_rows=None, locked_rows=None)
    doc = json.loads(json.dumps(q.to_json()))
    assert doc["flags"] == ["out_of_day", "nulls"]
    assert doc["null_counts"] == {"qty": 2} and doc["crossed_rows"] is None
    assert DayQuality.from_json(doc) == q
    assert q.to_dict() == q.to_json()
    assert q.compact() == {"rows": 10_000, "out_of_day_rows": 4, "duplicate_rows": 0,
                           "max_gap_ms": 100, "lag_p99_ms": 40,
                           "flags": ["out_of_day", "nulls"]}
    assert DayQuality.from_json(q.compact()).lag_p99_ms == 40
    old = {"rows": 6, "out_of_day_rows": 2, "duplicate_rows": 1, "max_gap_ms": 86_397_000,
           "lag_p50_ms": 2, "lag_p99_ms": 50_000}
    read = DayQuality.from_json(old)
    assert read == DayQuality(6, 2, 1, 86_397_000, 2, 50_000)
    assert read.out_of_day_before is None and read.null_counts is None
    assert read.flags() == ["out_of_day", "duplicates", "lag_p99"]  # 2 of 6 rows: > 5 %
    for bad in [None, "GOOD", [1]]:
        with pytest.raises(TypeError):
            DayQuality.from_json(bad)
    for bad_doc in [{"rows": 1}, {**old, "rows": "6"}, {**old, "null_counts": {"a": 1.5}},
                    {**old, "max_gap_ms": True}]:
        with pytest.raises(ValueError):
            DayQuality.from_json(bad_doc)


def test_generated_day_raises_no_lag_flags() -> None:
    """The generator's lags are a collector's (ms): p50/p99 small, none negative on binance."""
    spec = PartitionSpec(stream="bbo", date=DAY, files=300, rows_per_file=1000)
    table = pa.concat_tables([raw_table(spec, i) for i in range(100, 110)])
    table = table.take(pc.sort_indices(table, [("ts_event", "ascending")]))
    table = table.add_column(1, "seq", pa.array(range(table.num_rows), pa.int64()))
    q = _feed(table.to_batches(max_chunksize=4_000), "bbo")
    assert q.lag_p50_ms is not None and 2 <= q.lag_p50_ms <= 20
    assert q.lag_p99_ms is not None and q.lag_p99_ms <= 100
    assert q.negative_lag_rows == 0
    assert q.flags() == []


def _reference_duplicates(table: pa.Table) -> int:
    """The rule without the hash prefilter: group every row sharing its ts_event."""
    identity = [n for n in table.column_names if n not in ("seq", "ts_recv")]
    groups = table.group_by(identity, use_threads=False).aggregate([([], "count_all")])
    return table.num_rows - groups.num_rows


_FLOATS = st.sampled_from([1.0, 2.0, 0.0, -0.0, float("nan"), None])


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(0, 3), _FLOATS, _FLOATS, st.sampled_from(["a", "b", None]),
                  st.sampled_from([1, -1])),
        min_size=1, max_size=40,
    ),
    cuts=st.lists(st.integers(1, 39), max_size=3, unique=True),
)
def test_duplicate_rows_match_the_plain_grouping(rows: list[tuple], cuts: list[int]) -> None:
    """The hash prefilter (floats as values: -0.0, NaN, null) never changes the count."""
    rows = sorted(rows, key=lambda r: r[0])
    t = _table(
        ts_event=[DAY0 + r[0] for r in rows],
        ts_recv=[DAY0 + i for i in range(len(rows))],
        bid_price=pa.array([r[1] for r in rows], pa.float64()),
        ask_qty=pa.array([r[2] for r in rows], pa.float32()),
        venue=[r[3] for r in rows],
        side=pa.array([r[4] for r in rows], pa.int8()),
    )
    q = _feed_split(t, "bbo", *sorted(c for c in cuts if c < t.num_rows))
    assert q.duplicate_rows == _reference_duplicates(t)


_IDS = {
    "int": st.sampled_from(["1", "2", "07", "7", "123456789012"]),
    "fixed": st.sampled_from(["20f43950-d8dd-5b31-9112-a178eb6023af",
                              "20f43950-d8dd-5b31-9112-a178eb6023ag", "x" * 36]),
    "mixed": st.sampled_from(["1", "7", "abc", "abd", "", "x" * 80]),
}


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    kinds=st.lists(st.sampled_from(sorted(_IDS)), min_size=1, max_size=3),
)
def test_duplicate_trade_ids_match_a_plain_count(data: st.DataObject, kinds: list[str]) -> None:
    """Keys (integers, hashed fixed-width ids) or strings, batch after batch: the count is
    exact while every repeat is within the window."""
    batches = [data.draw(st.lists(st.one_of(_IDS[k], st.none()), min_size=1, max_size=15))
               for k in kinds]
    ids = [i for batch in batches for i in batch]
    t = _table(ts_event=[DAY0 + n for n in range(len(ids))], trade_id=ids)
    cuts = list(itertools.accumulate(len(b) for b in batches))[:-1]
    q = _feed_split(t, "trade", *cuts)
    seen: set[str] = set()
    expected = 0
    for i in ids:
        if i is not None:
            expected += i in seen
            seen.add(i)
    assert q.duplicate_trade_ids == expected


# ---------------------------------------------------------------- exact, whatever the keys

_NAN_PAYLOAD = struct.unpack("<d", struct.pack("<Q", 0x7FF8000000000001))[0]


@pytest.mark.parametrize("cuts", [(), (1,), (2, 4), tuple(range(1, 9))])
def test_duplicate_rows_compare_floats_by_their_bits_and_nulls_as_equal(
        cuts: tuple[int, ...]) -> None:
    """The row hash takes -0.0 as 0.0 and every NaN or null as one NaN; the count does
    not: 0.0 and -0.0 differ, a NaN equals only a NaN of the same bits, null equals
    null. Whole or cut between any rows (the carry)."""
    nan = float("nan")
    t = _table(ts_event=[DAY0] * 9,
               bid_price=pa.array([0.0, -0.0, nan, nan, _NAN_PAYLOAD, None, None, 1.0, 1.0],
                                  pa.float64()))
    q = _feed_split(t, "bbo", *cuts)
    assert q.duplicate_rows == 3  # the second NaN, the second null, the second 1.0
    assert q.duplicate_rows == _reference_duplicates(t)


@pytest.mark.parametrize("cuts", [(), (3,), (1, 2, 5)])
def test_a_shared_row_hash_never_counts_as_a_duplicate(cuts: tuple[int, ...]) -> None:
    """Every row given the same hash (as if all collided): only equal rows count."""
    ts = [DAY0, DAY0, DAY0, DAY0 + 1, DAY0 + 1, DAY0 + 1, DAY0 + 2]
    t = _table(ts_event=ts, price=[1.0, 2.0, 1.0, 1.0, -0.0, 0.0, 3.0],
               venue=["a", "a", "a", "a", "b", "b", "c"])
    collide = lambda times, columns: np.zeros(len(times), np.uint64)  # noqa: E731
    with mock.patch.object(duplicates, "_mix_floats", collide):
        q = _feed_split(t, "trade", *cuts)
    assert q.duplicate_rows == 1 == _reference_duplicates(t)


def test_unsorted_rows_tied_with_a_neighbour_are_grouped_exactly() -> None:
    """Input out of ts_event order (never the merge's) takes the exact grouping of the
    rows tied with a neighbour, without the hash."""
    t = pa.table({"ts_event": pa.array([DAY0 + 5, DAY0 + 5, DAY0 + 3, DAY0 + 3, DAY0 + 3,
                                        DAY0 + 4], pa.int64()),
                  "price": pa.array([1.0, 1.0, -0.0, 0.0, -0.0, 2.0])})
    q = _feed(t.to_batches())
    assert q.duplicate_rows == 2  # the second 1.0 at +5, the second -0.0 at +3


@pytest.mark.parametrize("ids", [
    ["é1", "ab1", "é1", "é2", "ab1"],  # 3 bytes each: fixed-width keys, multi-byte too
    ["7", "07", "7", "8", "08"],  # decimal keys: "7" and "07" share a key, not an id
    ["abc", "abcd", "abc", "", ""],  # neither: compared as strings
])
def test_duplicate_trade_ids_are_counted_exactly_for_every_kind_of_id(ids: list[str]) -> None:
    t = _table(ts_event=[DAY0 + n for n in range(len(ids))], trade_id=ids)
    expected = len(ids) - len(set(ids))
    assert _feed_split(t, "trade", 2).duplicate_trade_ids == expected
    collide = lambda array, width: np.zeros(len(array), np.uint64)  # noqa: E731
    with mock.patch.object(duplicates, "_hash_fixed", collide):  # every key shared
        assert _feed_split(t, "trade", 2).duplicate_trade_ids == expected


def test_fixed_width_ids_sliced_and_dictionary_encoded() -> None:
    """The fixed-width bytes are read at the array's offset (a slice of a batch) and a
    dictionary column is decoded first."""
    uuids = [f"20f43950-d8dd-5b31-9112-a178eb6023{n:02x}" for n in (1, 2, 1, 3, 2, 4)]
    t = _table(ts_event=[DAY0 + n for n in range(6)], trade_id=uuids)
    assert _feed_split(t, "trade", 1, 3).duplicate_trade_ids == 2
    encoded = t.set_column(2, "trade_id", t.column("trade_id").dictionary_encode())
    assert _feed_split(encoded, "trade", 4).duplicate_trade_ids == 2


# --------------------------------------------------------------------------- every figure at once

_STREAM_FLOATS = {
    "bbo": ("bid_price", "bid_qty", "ask_price", "ask_qty"),
    "trade": ("price", "qty"),
    "mark_price": ("mark_price", "index_price"),
    "funding": ("funding_rate",),
    "open_interest": ("open_interest",),
}
_VALUES = st.sampled_from([1.0, 1.0, 2.0, 3.5, 0.0, -0.0, -1.0, float("nan"), None])
_TRADE_IDS = st.sampled_from(["1", "2", "07", "7", "20f43950-d8dd-5b31-9112-a178eb6023af",
                              "x" * 70, None])


@st.composite
def _output_tables(draw: st.DrawFn) -> tuple[str, pa.Table, list[int]]:
    """A stream, an output-shaped table (ts_event sorted, seq 0..N-1) and batch cuts.

    Built for the corner cases: ties and runs of one ts_event longer than the run
    comparison goes (_MAX_RUN), rows repeated (the same event received twice),
    nulls, -0.0 and NaN, crossed and locked quotes, steps above the gap threshold,
    rows before and after the day, negative and far (> 10 s) lags, repeated ids.
    """
    stream = draw(st.sampled_from(sorted(_STREAM_FLOATS)))
    n = draw(st.integers(0, 60))
    steps = draw(st.lists(st.sampled_from([0, 0, 0, 1, 2, 10_001, 400_000, 700_000]),
                          min_size=n, max_size=n))
    if n and draw(st.booleans()):  # a burst of one ts_event
        at = draw(st.integers(0, n - 1))
        steps[at : at + 20] = [0] * len(steps[at : at + 20])
    start = DAY0 + draw(st.sampled_from([-3_000, 0, 86_400_000 - 2_000]))
    ts = list(itertools.accumulate(steps, initial=start))[1:]
    lags = draw(st.lists(st.sampled_from([3, 3, 40, 0, -2, 7_777, 10_999, -20_500, None]),
                         min_size=n, max_size=n))
    rows = []
    for t, lag in zip(ts, lags, strict=True):
        row = {"ts_event": t, "ts_recv": None if lag is None else t + lag, "venue": "x"}
        for name in _STREAM_FLOATS[stream]:
            row[name] = draw(_VALUES)
        if stream == "trade":
            row["side"] = draw(st.sampled_from([1, -1]))
            row["trade_id"] = draw(_TRADE_IDS)
        rows.append(row)
    for source in draw(st.lists(st.integers(0, max(n - 1, 0)), max_size=6)) if n else []:
        rows.append({**rows[source], "ts_recv": rows[source]["ts_event"] + 5})
    order = draw(st.permutations(range(len(rows))))  # ties in any order, then sorted
    rows = sorted((rows[i] for i in order), key=lambda r: r["ts_event"])
    columns: dict[str, pa.Array] = {
        "ts_event": pa.array([r["ts_event"] for r in rows], pa.int64()),
        "seq": pa.array(range(len(rows)), pa.int64()),
        "ts_recv": pa.array([r["ts_recv"] for r in rows], pa.int64()),
        "venue": pa.array([r["venue"] for r in rows]),
    }
    for name in _STREAM_FLOATS[stream]:
        columns[name] = pa.array([r[name] for r in rows], pa.float64())
    if stream == "bbo" and draw(st.booleans()):
        columns["bid_qty"] = columns["bid_qty"].cast(pa.float32())
    if stream == "trade":
        columns["side"] = pa.array([r["side"] for r in rows], pa.int8())
        columns["trade_id"] = pa.array([r["trade_id"] for r in rows], pa.string())
    cuts = sorted(set(draw(st.lists(st.integers(1, max(len(rows) - 1, 1)), max_size=4))))
    return stream, pa.table(columns), [c for c in cuts if c < len(rows)]


def _lag_bucket(lag: int) -> int:
    """Exact below 10 s, else to the second toward zero (the module docstring)."""
    if abs(lag) < 10_000:
        return lag
    return (1 if lag > 0 else -1) * (abs(lag) // 1000 * 1000)


def _plain_trade_repeats(ids: list, ts: list[int], cuts: list[int]) -> int:
    """Ids seen before in their batch, or in an earlier batch at a ts_event no more
    than TRADE_ID_WINDOW_MS before the last ts_event (of a row with an id) of the
    batches before."""
    repeats = 0
    seen: list[tuple[str, int]] = []  # (id, ts_event) of the batches before
    last: int | None = None
    for a, b in itertools.pairwise([0, *cuts, len(ids)]):
        window = {i for i, t in seen if last is not None and t >= last - 600_000}
        mine: set[str] = set()
        for i, t in zip(ids[a:b], ts[a:b], strict=True):
            if i is not None:
                repeats += i in mine or i in window
                mine.add(i)
                seen.append((i, t))
                last = t
    return repeats


def _plain_quality(stream: str, table: pa.Table, cuts: list[int]) -> DayQuality:
    """Every figure of a sorted day computed the plain way, on the whole table."""
    rows = table.num_rows
    ts = table.column("ts_event").to_pylist()
    end = DAY0 + 86_400_000
    steps = [b - a for a, b in itertools.pairwise(ts)]
    threshold = metrics.GAP_THRESHOLD_MS.get(stream, metrics.DEFAULT_GAP_THRESHOLD_MS)
    if rows >= 2:
        threshold = max(threshold, metrics.GAP_CADENCE_FACTOR * (max(ts) - min(ts)) // (rows - 1))
    recv = table.column("ts_recv").to_pylist()
    lags = sorted(_lag_bucket(r - t) for t, r in zip(ts, recv, strict=True) if r is not None)

    def rank(numerator: int) -> int | None:  # nearest rank of numerator % of the lags
        return lags[max(1, -(-numerator * len(lags) // 100)) - 1] if lags else None

    def values(name: str) -> list:
        return table.column(name).cast(pa.float64()).to_pylist()

    positive = [name for name in metrics.POSITIVE_COLUMNS if name in table.column_names]
    quotes = "bid_price" in table.column_names
    pairs = [(b, a) for b, a in zip(values("bid_price"), values("ask_price"), strict=True)
             if b is not None and a is not None] if quotes else []
    return DayQuality(
        rows=rows,
        out_of_day_rows=sum(t < DAY0 or t >= end for t in ts),
        duplicate_rows=_reference_duplicates(table) if rows else 0,
        max_gap_ms=max(steps) if steps else None,
        lag_p50_ms=rank(50),
        lag_p99_ms=rank(99),
        out_of_day_before=sum(t < DAY0 for t in ts),
        out_of_day_after=sum(t >= end for t in ts),
        gap_threshold_ms=threshold,
        gaps_above_threshold=sum(s > threshold for s in steps),
        lag_max_ms=max((r - t for t, r in zip(ts, recv, strict=True) if r is not None),
                       default=None),
        negative_lag_rows=None if not rows else sum(
            r is not None and r < t for t, r in zip(ts, recv, strict=True)),
        null_counts={name: table.column(name).null_count for name in table.column_names
                     if name != "seq" and table.column(name).null_count},
        non_positive={name: sum(v is not None and not v > 0 for v in values(name))
                      for name in positive} if rows else {},
        duplicate_trade_ids=_plain_trade_repeats(table.column("trade_id").to_pylist(), ts, cuts)
        if stream == "trade" and rows else None,
        crossed_rows=sum(b > a for b, a in pairs) if quotes and rows else None,
        locked_rows=sum(b == a for b, a in pairs) if quotes and rows else None,
    )


@settings(max_examples=300, deadline=None)
@given(day=_output_tables(), piece=st.sampled_from([2, 3, 5, 65_536]))
def test_every_figure_matches_a_plain_computation(day: tuple[str, pa.Table, list[int]],
                                                  piece: int) -> None:
    """The vectorised passes (pieces of a batch, runs of one ts_event, hashes, the
    carry between batches, the trade_id window) against one straightforward count of
    each figure, for every stream, batches cut anywhere and small pieces."""
    stream, table, cuts = day
    acc = QualityAccumulator(DAY, OUT, stream)
    with mock.patch.object(pieces, "PIECE_ROWS", piece):
        for a, b in itertools.pairwise([0, *cuts, table.num_rows]):
            acc(table.slice(a, b - a))
    assert acc.result() == _plain_quality(stream, table, cuts)


# --------------------------------------------------------------------------- calibration

#: Raw files the real collector wrote (copied from its golden fixtures; README there).
COLLECTOR_REAL = Path(__file__).parent / "fixtures" / "collector-real"


def _compact_flags(raw: Path, tmp: Path, first: str, last: str, today: str) -> dict[str, list]:
    """Backfill raw's days through the CLI; partition folder -> meta.json quality flags."""
    compact = tmp / "compact"
    compact.mkdir(parents=True)
    assert main(["--raw", str(raw), "--compact", str(compact), "--mode", "backfill",
                 "--date-from", first, "--date-to", last, "--today", today, "--tmp-dir",
                 str(tmp / "work")]) == 0
    return {str(p.parent.relative_to(compact)): json.loads(p.read_text())["quality"]["flags"]
            for p in sorted(compact.glob("exchange=*/*/*/*/meta.json"))}


def test_the_gap_flag_stays_off_on_the_real_collector_and_fires_on_a_hole(
    tmp_path: Path,
) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(COLLECTOR_REAL, raw)
    flags = _compact_flags(raw, tmp_path, "20260228", "20260301", "20260302")
    assert len(flags) == 10  # five streams, two days
    assert not [key for key, raised in flags.items() if "gaps" in raised]
    # the same busy bbo partition with 3 minutes of rows gone (a feed that stalled)
    bbo = raw / "exchange=binance/stream=bbo/symbol=btcusdt/date=20260301"
    hole = bbo.parent.parent / "symbol=ethusdt" / bbo.name
    hole.mkdir(parents=True)
    start = 1772323440_000  # 2026-03-01T00:04:00Z
    for path in sorted(bbo.glob("*.parquet")):
        table = pq.read_table(path)
        ts = table.column("ts_event")
        keep = pc.or_(pc.less(ts, start), pc.greater_equal(ts, start + 180_000))
        pq.write_table(table.filter(keep), hole / path.name, compression="snappy")
    flags = _compact_flags(raw, tmp_path / "again", "20260301", "20260301", "20260302")
    assert "gaps" in flags["exchange=binance/stream=bbo/symbol=ethusdt/date=20260301"]
    assert "gaps" not in flags["exchange=binance/stream=bbo/symbol=btcusdt/date=20260301"]


def test_no_data_flag_on_the_demo(tmp_path: Path) -> None:
    """The demo lake is normal data: no partition raises a flag (the floor alone raised
    `gaps` on every one)."""
    assert main(["--demo", str(tmp_path / "demo"), "--today", "20261204"]) == 0
    state = json.loads((tmp_path / "demo/compact/compacted/_state.json").read_text())
    raised = {key: e["quality"]["flags"] for key, e in state["partitions"].items()}
    assert len(raised) == 36
    assert not [key for key, flags in raised.items() if "gaps" in flags], raised
