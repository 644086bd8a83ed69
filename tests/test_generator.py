"""The generator honours the raw-bucket contract (BRIEF §1) it is meant to imitate."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from compressor.demo import (
    CORRUPT_KINDS,
    DAY_MS,
    DRIFT_ADDED_COLUMN,
    STREAM_COLUMNS,
    PartitionSpec,
    file_bytes,
    file_names,
    is_readable,
    raw_table,
    rows_in_file,
    special_files,
    write_demo_lake,
    write_partition,
    write_quality_windows,
)
from compressor.layout import PartitionId, is_raw_data_key

NAME_RE = re.compile(r"^part-(\d{10})-(\d{6})\.parquet$")


def _ts(table: pa.Table) -> list[int]:
    return table["ts_event"].to_pylist()


@pytest.fixture(scope="module")
def edges(tmp_path_factory: pytest.TempPathFactory) -> tuple[PartitionSpec, list[Path]]:
    spec = PartitionSpec(files=30, rows_per_file=400, seed=7)
    return spec, write_partition(spec, tmp_path_factory.mktemp("edges"))


def test_keys_are_collector_keys_in_flush_order(edges: tuple[PartitionSpec, list[Path]]) -> None:
    spec, paths = edges
    directory = paths[0].parent
    prefix = "exchange=binance/stream=bbo/symbol=btcusdt/date=20261124/"
    assert str(directory).endswith(prefix.rstrip("/"))
    assert PartitionId.from_prefix(prefix) == spec.partition
    assert [p.name for p in paths] == sorted(p.name for p in directory.iterdir())
    seconds = []
    counters = []
    for p in paths:
        m = NAME_RE.match(p.name)
        assert m, p.name
        seconds.append(int(m.group(1)))
        counters.append(int(m.group(2)))
    day0 = spec.day_start_ms // 1000
    assert all(day0 <= s < day0 + 86_400 for s in seconds)  # date= is the flush day
    assert seconds == sorted(seconds)
    assert 0 in counters[1:], "a collector restart resets the counter"
    assert [p.name for p in paths] == file_names(spec)


def test_rows_in_arrival_order_not_sorted(edges: tuple[PartitionSpec, list[Path]]) -> None:
    _, paths = edges
    unsorted = 0
    for p in paths:
        t = pq.read_table(p)
        recv = t["ts_recv"].to_pylist()
        assert recv == sorted(recv), "arrival order: ts_recv never goes back"
        assert all(a <= b for a, b in zip(_ts(t), recv, strict=True))
        unsorted += _ts(t) != sorted(_ts(t))
    assert unsorted == len(paths)


def test_consecutive_files_overlap_at_edges(edges: tuple[PartitionSpec, list[Path]]) -> None:
    _, paths = edges
    tables = [pq.read_table(p) for p in paths]
    overlaps = 0
    for a, b in zip(tables[3:], tables[4:], strict=False):  # past the previous-day rows
        a_max, b_min = max(_ts(a)), min(_ts(b))
        overlaps += a_max > b_min
        # only a little: b's rows mostly come after a's
        assert pc.sum(pc.less(b["ts_event"], a_max)).as_py() < b.num_rows // 5
    assert overlaps >= len(tables) * 2 // 3


def test_many_millisecond_ties(edges: tuple[PartitionSpec, list[Path]]) -> None:
    _, paths = edges
    t = pq.read_table(paths[10])
    assert t.num_rows - len(set(_ts(t))) > t.num_rows // 10


def test_previous_day_rows_only_in_first_files(edges: tuple[PartitionSpec, list[Path]]) -> None:
    spec, paths = edges
    day0 = spec.day_start_ms
    before = [sum(ts < day0 for ts in _ts(pq.read_table(p))) for p in paths]
    assert before[0] > 0 and before[1] > 0 and before[2] > 0
    assert sum(before[3:]) == 0
    assert all(ts > day0 - 10_000 for ts in _ts(pq.read_table(paths[0])))
    assert all(max(_ts(pq.read_table(p))) < day0 + DAY_MS for p in paths)
    no_prev = PartitionSpec(files=5, rows_per_file=100, previous_day_rows=False)
    assert all(min(_ts(raw_table(no_prev, i))) >= day0 for i in range(5))


def test_spans_day_and_disjoint_layouts() -> None:
    spans = PartitionSpec(files=6, rows_per_file=500, layout="spans_day")
    for i in range(spans.files):
        ts = _ts(raw_table(spans, i))
        assert max(ts) - min(ts) > DAY_MS * 0.9
        assert ts != sorted(ts)
    disjoint = PartitionSpec(files=6, rows_per_file=200, layout="disjoint")
    previous_max = None
    for i in range(disjoint.files):
        ts = _ts(raw_table(disjoint, i))
        assert ts == sorted(ts)
        if previous_max is not None:
            assert min(ts) > previous_max
        previous_max = max(ts)


def test_file_format_matches_pandas_written_raw_files(
    edges: tuple[PartitionSpec, list[Path]],
) -> None:
    spec, paths = edges
    pf = pq.ParquetFile(paths[5])
    assert pf.metadata.num_row_groups == 1
    assert b"pandas" in pf.schema_arrow.metadata
    json.loads(pf.schema_arrow.metadata[b"pandas"])
    col = pf.metadata.row_group(0).column(0)
    assert col.path_in_schema == "ts_event"
    assert col.compression == "SNAPPY"
    assert col.statistics is not None and col.statistics.has_min_max
    table = pf.read()
    assert table.equals(raw_table(spec, 5), check_metadata=False)
    assert table.schema.field("ts_event").type == pa.int64()
    assert table.schema.field("stream_version").type == pa.int8()
    assert set(table["symbol"].to_pylist()) == {"BTCUSDT"}


@pytest.mark.parametrize("stream", sorted(STREAM_COLUMNS))
@pytest.mark.parametrize("exchange", ["binance", "okx"])
def test_stream_columns(stream: str, exchange: str) -> None:
    t = raw_table(PartitionSpec(exchange=exchange, stream=stream, symbol="ethusdt"), 3)
    assert t.column_names == [
        "ts_event",
        "ts_recv",
        "exchange",
        "symbol",
        "stream",
        "stream_version",
        *STREAM_COLUMNS[stream],
    ]
    assert set(t["symbol"].to_pylist()) == {"ETHUSDT"}
    assert set(t["exchange"].to_pylist()) == {exchange}
    if stream == "trade":
        assert t.schema.field("side").type == pa.int8()
        assert set(t["side"].to_pylist()) == {1, -1}
        assert t.schema.field("trade_id").type == pa.string()
        assert len(set(t["trade_id"].to_pylist())) == t.num_rows
    if stream == "mark_price":
        nulls = t["mark_price"].null_count
        assert nulls == (t.num_rows if exchange == "okx" else 0)
    if stream == "funding":
        assert t.schema.field("next_funding_ts").type == pa.int64()


def test_schema_drift_really_drifts(tmp_path: Path) -> None:
    spec = PartitionSpec(files=24, rows_per_file=50, schema_drift=True)
    paths = write_partition(spec, tmp_path)
    schemas = [pq.read_schema(p) for p in paths]
    version_types = {s.field("stream_version").type for s in schemas}
    assert version_types == {pa.int8(), pa.int16(), pa.int64()}
    assert DRIFT_ADDED_COLUMN not in schemas[0].names
    assert DRIFT_ADDED_COLUMN in schemas[-1].names
    symbol_types = {str(s.field("symbol").type) for s in schemas}
    assert "string" in symbol_types and any(t.startswith("dictionary") for t in symbol_types)
    assert {s.field("bid_qty").type for s in schemas} == {pa.float64(), pa.float32()}
    encodings = set()
    for p in paths:
        col = pq.read_metadata(p).row_group(0).column(1)
        encodings.add(any("DICTIONARY" in e for e in col.encodings))
    assert encodings == {True, False}, "plain pages in some files, dictionary in others"
    plain = PartitionSpec(files=24, rows_per_file=50)
    plain_paths = write_partition(plain, tmp_path / "plain")
    assert len({pq.read_schema(p).remove_metadata() for p in plain_paths}) == 1


@pytest.mark.parametrize("rows", [300, 1])
def test_each_corrupt_kind_is_unreadable(tmp_path: Path, rows: int) -> None:
    spec = PartitionSpec(files=20, rows_per_file=rows, corrupt=len(CORRUPT_KINDS), empty=2)
    specials = special_files(spec)
    assert sorted(k for k in specials.values() if k != "empty") == sorted(CORRUPT_KINDS)
    assert list(specials.values()).count("empty") == 2
    assert 0 not in specials
    paths = write_partition(spec, tmp_path)
    assert len(paths) == spec.files
    for i, kind in specials.items():
        if kind == "empty":
            continue
        with pytest.raises(Exception):  # noqa: B017 - pyarrow raises OSError or ArrowInvalid
            pq.read_table(paths[i])
        if kind == "zero_bytes":
            assert paths[i].stat().st_size == 0
        if kind == "bad_page":
            pq.read_metadata(paths[i])  # the footer is fine, the data is not
    # also when the slots would have held no rows
    no_rows = PartitionSpec(files=5, rows_per_file=0, corrupt=5, seed=rows)
    assert sorted(special_files(no_rows).values()) == sorted(CORRUPT_KINDS)
    assert not any(is_readable(file_bytes(no_rows, i)) for i in range(5))
    for i, p in enumerate(paths):
        if i not in specials:
            assert pq.read_table(p).num_rows == rows_in_file(spec, i) > 0


def test_empty_files_have_zero_rows_and_a_schema(tmp_path: Path) -> None:
    spec = PartitionSpec(files=8, rows_per_file=100, empty=3)
    paths = write_partition(spec, tmp_path)
    empties = [i for i, k in special_files(spec).items() if k == "empty"]
    assert len(empties) == 3
    for i in empties:
        t = pq.read_table(paths[i])
        assert t.num_rows == 0
        assert t.column_names[:2] == ["ts_event", "ts_recv"]


def test_strays_only_when_asked(tmp_path: Path) -> None:
    spec = PartitionSpec(files=4, rows_per_file=20)
    paths = write_partition(spec, tmp_path / "a")
    assert sorted(paths[0].parent.iterdir()) == sorted(paths)
    stray_spec = PartitionSpec(files=4, rows_per_file=20, strays=True)
    paths = write_partition(stray_spec, tmp_path / "b")
    names = sorted(p.name for p in paths[0].parent.iterdir())
    assert len(names) == 6
    assert [n for n in names if is_raw_data_key(n)] == [p.name for p in paths]


def test_deterministic_from_the_seed(tmp_path: Path) -> None:
    spec = PartitionSpec(files=70, rows_per_file=60, schema_drift=True, corrupt=5, empty=1)
    first = write_partition(spec, tmp_path / "one")
    second = write_partition(spec, tmp_path / "two", workers=2)
    assert [p.name for p in first] == [p.name for p in second]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert file_bytes(spec, 3) == first[3].read_bytes()
    other = PartitionSpec(files=70, rows_per_file=60, schema_drift=True, corrupt=5, empty=1, seed=1)
    assert file_bytes(other, 3) != file_bytes(spec, 3)


def test_rows_per_file_vary_around_the_mean() -> None:
    spec = PartitionSpec(files=200, rows_per_file=1000)
    counts = [rows_in_file(spec, i) for i in range(spec.files)]
    assert min(counts) >= 900 and max(counts) <= 1100
    assert len(set(counts)) > 50
    assert abs(sum(counts) / len(counts) - 1000) < 20


def test_demo_lake(tmp_path: Path) -> None:
    parts = write_demo_lake(
        tmp_path,
        ["20261123", "20261124"],
        exchanges=["binance", "okx"],
        streams=["bbo", "open_interest"],
        symbols=["btcusdt"],
        files_per_partition=3,
        rows_per_file=20,
    )
    assert parts == sorted(parts)
    assert len(parts) == 2 * 3  # binance has no open_interest
    assert PartitionId("binance", "open_interest", "btcusdt", "20261124") not in parts
    for part in parts:
        assert len(list((tmp_path / part.prefix).glob("*.parquet"))) == 3
    windows = sorted((tmp_path / "quality/date=20261124").glob("window=*.json"))
    assert len(windows) == 96
    # the first day's collector restarts once: the 09:15 window is its short first one
    for day, restarted in (("20261123", ["window=0915.json"]), ("20261124", [])):
        docs = {p.name: json.loads(p.read_bytes())
                for p in (tmp_path / f"quality/date={day}").glob("window=*.json")}
        assert sorted(n for n, d in docs.items() if d["is_partial"]) == restarted
        for name in restarted:
            assert docs[name]["window_start"] == f"{day[:4]}-{day[4:6]}-{day[6:]}T09:15:00Z"
            assert docs[name]["signals"]["actual_duration_seconds"] < 900
    doc = json.loads(windows[0].read_text())
    assert doc["quality"] in ("GOOD", "DEGRADED", "BAD")
    assert doc["window_start"].endswith("Z") and doc["window_end"].endswith("Z")
    assert set(doc["signals"]["offline_seconds_by_exchange"]) == {"binance", "okx"}


def test_quality_windows_with_missing_coverage(tmp_path: Path) -> None:
    written = write_quality_windows(tmp_path, "20261124", ["bybit"], missing=[0, 95])
    names = [p.name for p in written]
    assert len(names) == 94  # the first and the last window of the day are missing
    assert names[0] == "window=0015.json" and names[-1] == "window=2330.json"  # by start
    assert sorted(p.name for p in (tmp_path / "quality/date=20261124").iterdir()) == sorted(names)


import dataclasses  # noqa: E402  (appended section)


def _lags(spec: PartitionSpec, files: range) -> list[int]:
    lags: list[int] = []
    for i in files:
        t = raw_table(spec, i)
        lags += [r - e for e, r in zip(_ts(t), t["ts_recv"].to_pylist(), strict=True)]
    return sorted(lags)


def test_receive_lag_is_milliseconds_with_a_rare_tail() -> None:
    """A collector near the venue: a few ms to tens of ms, late rows and stalls rare."""
    dense = PartitionSpec(files=3000, rows_per_file=1100, seed=4)
    lags = _lags(dense, range(1500, 1540))
    n = len(lags)
    assert 3 <= lags[n // 2] <= 20
    assert lags[int(n * 0.99)] <= 100
    assert lags[-1] <= 10_000  # a stall or a late row: seconds at most on a busy stream
    assert lags[0] >= 2  # binance's clock never runs ahead of the collector's
    sparse = PartitionSpec(files=6, rows_per_file=200, restarts=0)  # the demo's partitions
    sparse_lags = _lags(sparse, range(6))
    assert sparse_lags[len(sparse_lags) * 99 // 100] <= 100
    assert sparse_lags == _lags(sparse, range(6))  # deterministic
    assert _lags(dataclasses.replace(sparse, seed=1), range(6)) != sparse_lags


@pytest.mark.parametrize("exchange", ["bybit", "okx"])
def test_rare_negative_lags_where_the_venue_clock_runs_ahead(exchange: str) -> None:
    spec = PartitionSpec(exchange=exchange, files=100, rows_per_file=1000, seed=2)
    lags = _lags(spec, range(40, 60))
    negative = sum(lag < 0 for lag in lags)
    assert 0 < negative < len(lags) * 0.001
    assert min(lags) >= -20


def test_late_rows_keep_rows_ts_event_and_names() -> None:
    """Arrival order moves a few rows (at least one per file), never their values."""
    spec = PartitionSpec(files=50, rows_per_file=600, seed=9)
    for i in range(0, 50, 7):
        t = raw_table(spec, i)
        ts = _ts(t)
        back = sum(b < a for a, b in zip(ts, ts[1:], strict=False))
        assert 1 <= back <= max(1, round(len(ts) * 0.005))
        recv = t["ts_recv"].to_pylist()
        assert recv == sorted(recv)
        assert len(ts) == rows_in_file(spec, i)
