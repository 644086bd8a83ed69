"""The quality accumulator (meta.json quality figures and flags)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given, settings
from hypothesis import strategies as st

from compressor.generator import PartitionSpec, raw_table
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


def _feed(batches: list[pa.RecordBatch]) -> DayQuality:
    acc = QualityAccumulator(DAY, OUT)
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
    assert q == DayQuality(0, 0, 0, None, None, None)


def test_reset_forgets_everything() -> None:
    acc = QualityAccumulator(DAY, OUT)
    acc(_batch([DAY0, DAY0], [DAY0, DAY0], [1.0, 1.0]))
    acc.reset()
    acc(_batch([DAY0 + 5], [DAY0 + 7], [1.0]))
    assert acc.result() == DayQuality(1, 0, 0, None, 2, 2)


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
    assert _feed([batch]) == DayQuality(2, 0, 0, 1_000, 7, 9)
