"""The merge engine (compressor/merge/) against a simple reference.

Reference: read every input whole, concatenate in input order, stable-sort by
ts_event. The engine must give the same rows in the same order, with seq
0..N-1 after ts_event, and byte-identical files whatever budget and fan-in.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compressor.demo import LAYOUTS, PartitionSpec, raw_table, special_files, write_partition
from compressor.merge import (
    BadTsEventTypeError,
    CorruptFileError,
    MergeAborted,
    MergeSettings,
    MissingTsEventError,
    NullTsEventError,
    SchemaConflictError,
    merge_files,
    plan_runs,
    scan_inputs,
)

SMALL_GROUPS = 97  # output row groups in tests: small, and not a power of two


def reference_rows(paths: list[Path]) -> list[dict]:
    """Every input row as a dict (missing columns None), stably sorted by ts_event."""
    rows: list[dict] = []
    columns: dict[str, None] = {}
    for path in paths:
        table = pq.read_table(path)
        columns.update(dict.fromkeys(table.column_names))
        rows.extend(table.to_pylist())
    full = [{name: row.get(name) for name in columns} for row in rows]
    return sorted(full, key=lambda row: row["ts_event"])


def output_rows(path: Path) -> list[dict]:
    rows = pq.read_table(path).to_pylist()
    for row in rows:
        row.pop("seq")
    return rows


def merge(paths: list[Path], out: Path, tmp: Path, **overrides: int) -> tuple[bytes, object]:
    config = {"output_buffer_size": SMALL_GROUPS, **overrides}
    result = merge_files(paths, out, tmp_dir=tmp, settings=MergeSettings(**config))
    return out.read_bytes(), result


def readable(spec: PartitionSpec, paths: list[Path]) -> list[Path]:
    bad = {i for i, kind in special_files(spec).items() if kind != "empty"}
    return [p for i, p in enumerate(paths) if i not in bad]


@st.composite
def specs(draw: st.DrawFn) -> PartitionSpec:
    files = draw(st.integers(1, 24))
    return PartitionSpec(
        files=files,
        rows_per_file=draw(st.integers(0, 120)),
        seed=draw(st.integers(0, 2**16)),
        layout=draw(st.sampled_from(LAYOUTS)),
        schema_drift=draw(st.booleans()),
        empty=draw(st.integers(0, min(3, files))),
        tie_fraction=draw(st.sampled_from([0.0, 0.3, 0.9])),
        stream=draw(st.sampled_from(["bbo", "trade", "mark_price"])),
        exchange=draw(st.sampled_from(["binance", "okx"])),
        restarts=draw(st.integers(0, 2)),
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(spec=specs())
def test_merge_matches_reference_and_is_path_independent(spec: PartitionSpec, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("merge")
    paths = write_partition(spec, tmp / "raw")
    one_pass, result = merge(paths, tmp / "a.parquet", tmp)
    assert output_rows(tmp / "a.parquet") == reference_rows(paths)
    table = pq.read_table(tmp / "a.parquet")
    assert table.column_names[:2] == ["ts_event", "seq"]
    assert table.column("seq").to_pylist() == list(range(table.num_rows))
    assert result.rows == table.num_rows
    assert result.input_files == len(paths)
    assert result.empty_files == sum(1 for p in paths if pq.read_metadata(p).num_rows == 0)

    spilled, spill_result = merge(
        paths, tmp / "b.parquet", tmp, memory_budget=1, max_open_files=2, batch_size=5
    )
    assert spilled == one_pass
    if spill_result.spill_runs > 2:
        assert spill_result.passes >= 3  # sorted runs, at least one intermediate pass, final
    assert list(tmp.glob("merge-*")) == []


def test_edge_overlaps_stream_in_one_pass_with_few_rows_buffered(tmp_path):
    spec = PartitionSpec(files=400, rows_per_file=500, seed=3)
    paths = write_partition(spec, tmp_path / "raw")
    _, result = merge(paths, tmp_path / "out.parquet", tmp_path, memory_budget=8 << 20)
    assert result.passes == 1 and result.spill_runs == 0
    assert result.peak_buffered_rows < result.rows / 10


def test_every_file_spanning_the_day_spills_and_merges_in_passes(tmp_path):
    spec = PartitionSpec(files=40, rows_per_file=300, layout="spans_day", seed=5)
    paths = write_partition(spec, tmp_path / "raw")
    direct, _ = merge(paths, tmp_path / "a.parquet", tmp_path)
    spilled, result = merge(
        paths, tmp_path / "b.parquet", tmp_path, memory_budget=1, max_open_files=3
    )
    assert spilled == direct
    assert result.spill_runs == 40
    assert result.passes == 1 + math.ceil(math.log(40, 3))
    assert result.spill_bytes > 0


def test_plan_cuts_runs_within_the_row_budget(tmp_path):
    spec = PartitionSpec(files=30, rows_per_file=100, layout="spans_day", rows_jitter=0.0)
    infos, _ = scan_inputs(write_partition(spec, tmp_path))
    plan = plan_runs(infos, row_budget=1000)
    assert plan.runs[0][0] == 0 and plan.runs[-1][1] == 30
    assert all(a[1] == b[0] for a, b in zip(plan.runs, plan.runs[1:], strict=False))
    for start, stop in plan.runs:
        assert sum(info.rows for info in infos[start:stop]) <= max(1000 - plan.group_rows, 101)


def test_output_file_layout(tmp_path):
    spec = PartitionSpec(files=30, rows_per_file=100, schema_drift=True, seed=9)
    paths = write_partition(spec, tmp_path / "raw")
    merge(paths, tmp_path / "out.parquet", tmp_path)
    meta = pq.ParquetFile(tmp_path / "out.parquet").metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert all(size == SMALL_GROUPS for size in sizes[:-1]) and 0 < sizes[-1] <= SMALL_GROUPS
    assert meta.row_group(0).column(0).compression == "ZSTD"
    assert [c.column_index for c in meta.row_group(0).sorting_columns] == [0, 1]
    schema = pq.read_schema(tmp_path / "out.parquet")
    assert b"pandas" not in (schema.metadata or {})
    assert schema.metadata[b"quantlab.compactor_version"]
    assert schema.field("stream_version").type == pa.int64()  # widened int8 -> int16 -> int64
    assert schema.field("exchange").type == pa.string()  # dictionary files decoded
    assert not schema.field("ts_event").nullable and not schema.field("seq").nullable
    assert "update_id" in schema.names  # column added mid-day; earlier rows null


def test_on_batch_sees_every_row_in_order(tmp_path):
    paths = write_partition(PartitionSpec(files=20, rows_per_file=50), tmp_path / "raw")
    seen: list[int] = []
    merge_files(
        paths,
        tmp_path / "out.parquet",
        tmp_dir=tmp_path,
        settings=MergeSettings(output_buffer_size=SMALL_GROUPS),
        on_batch=lambda table: seen.extend(table.column("seq").to_pylist()),
    )
    assert seen == list(range(pq.read_metadata(tmp_path / "out.parquet").num_rows))


def test_should_stop_aborts_and_leaves_nothing(tmp_path):
    paths = write_partition(PartitionSpec(files=50, rows_per_file=50), tmp_path / "raw")
    calls = iter(range(10**6))
    with pytest.raises(MergeAborted):
        merge_files(
            paths,
            tmp_path / "out.parquet",
            tmp_dir=tmp_path,
            settings=MergeSettings(memory_budget=1, output_buffer_size=SMALL_GROUPS),
            should_stop=lambda: next(calls) > 20,
        )
    assert not (tmp_path / "out.parquet").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]


def test_all_empty_inputs_give_an_empty_sorted_file(tmp_path):
    spec = PartitionSpec(files=3, rows_per_file=0)
    paths = write_partition(spec, tmp_path / "raw")
    _, result = merge(paths, tmp_path / "out.parquet", tmp_path)
    assert result.rows == 0 and result.empty_files == 3
    assert pq.read_table(tmp_path / "out.parquet").column_names[:2] == ["ts_event", "seq"]


def test_timestamp_ts_event_becomes_int64_ms(tmp_path):
    spec = PartitionSpec(files=2, rows_per_file=20)
    paths = []
    for i in range(2):
        table = raw_table(spec, i)
        ts = table.column("ts_event").cast(pa.timestamp("ms"))
        table = table.set_column(0, "ts_event", ts)
        paths.append(tmp_path / f"part-{i}.parquet")
        pq.write_table(table, paths[-1])
    merge(paths, tmp_path / "out.parquet", tmp_path)
    out = pq.read_table(tmp_path / "out.parquet")
    assert out.schema.field("ts_event").type == pa.int64()
    expected = sorted(
        v for i in range(2) for v in raw_table(spec, i).column("ts_event").to_pylist()
    )
    assert out.column("ts_event").to_pylist() == expected


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("kind_index", range(5))
def test_corrupt_objects_raise_naming_the_file(tmp_path, kind_index):
    spec = PartitionSpec(files=10, rows_per_file=30, corrupt=5)
    paths = write_partition(spec, tmp_path / "raw")
    slot, kind = sorted((i, k) for i, k in special_files(spec).items() if k != "empty")[kind_index]
    good = readable(spec, paths)
    with pytest.raises(CorruptFileError) as info:
        merge(good[:3] + [paths[slot]] + good[3:], tmp_path / "out.parquet", tmp_path)
    assert info.value.path == str(paths[slot]), kind
    assert paths[slot].name in str(info.value)
    assert not (tmp_path / "out.parquet").exists()


def _lying_statistics(path: Path, table: pa.Table, column: str, how: str) -> None:
    """Write `table` to `path` so that its footer says `column` holds one value while one
    row holds another (same length, so the file stays well formed).

    plain: every value written out, statistics true; one row's bytes then changed.
    dictionary: the last row really differs; the footer's max is then made the min."""
    value = table.column(column)[0].as_py().encode()
    other = value[:-1] + bytes([value[-1] ^ 1])
    if how == "dictionary":
        values = [value.decode()] * (table.num_rows - 1) + [other.decode()]
        table = table.set_column(table.schema.get_field_index(column), column,
                                 pa.array(values, pa.string()))
    pq.write_table(table, path, compression="none", use_dictionary=how == "dictionary")
    data = bytearray(path.read_bytes())
    footer = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    if how == "plain":
        at = data.rindex(value, 0, footer)
        data[at : at + len(value)] = other
    else:
        data[footer:] = data[footer:].replace(other, value)
    path.write_bytes(bytes(data))
    stats = pq.read_metadata(path).row_group(0).column(table.schema.get_field_index(column))
    assert stats.statistics.min == stats.statistics.max == value.decode()  # the lie
    assert set(pq.read_table(path).column(column).to_pylist()) == {value.decode(),
                                                                   other.decode()}


@pytest.mark.parametrize("processes", [1, 3])
@pytest.mark.parametrize("how", ["plain", "dictionary"])
@pytest.mark.parametrize("column", ["exchange", "symbol"])
def test_footer_statistics_that_lie_about_a_constant_column_are_caught(
    tmp_path, column, how, processes
):
    spec = PartitionSpec(files=8, rows_per_file=40, seed=6)
    paths = write_partition(spec, tmp_path / "raw")
    _lying_statistics(paths[5], raw_table(spec, 5), column, how)
    with pytest.raises(CorruptFileError) as info:
        merge(paths, tmp_path / "out.parquet", tmp_path, processes=processes,
              parallel_min_files=2)
    assert (info.value.path, info.value.column) == (str(paths[5]), column)
    assert "statistics say every row holds" in str(info.value)
    assert not (tmp_path / "out.parquet").exists()


def test_a_file_too_big_to_load_whole_is_read_in_pieces_with_the_same_output(tmp_path):
    """Row groups of 20,000 rows, pieces of at most 16,384 (the smallest): a row group
    is two pieces, the second starting mid-group; ts_event jitters, so rows are out of
    order inside pieces and across their cuts. Loaded whole (the default budget) or in pieces (a
    1-byte budget), the output and the figures are the same."""
    spec = PartitionSpec(files=3, rows_per_file=300, seed=8)
    paths = write_partition(spec, tmp_path / "raw")
    rng = np.random.default_rng(8)
    n = 50_000
    ts = pq.read_table(paths[1]).column("ts_event").to_numpy()[0] + np.sort(
        rng.integers(0, 3_600_000, n)) + rng.integers(-200, 200, n)
    big = raw_table(spec, 1).slice(0, 1).take(np.zeros(n, dtype=np.int64))
    big = big.set_column(0, "ts_event", pa.array(ts))
    pq.write_table(big, paths[1], row_group_size=20_000)
    whole, whole_result = merge(paths, tmp_path / "whole.parquet", tmp_path)
    pieces, result = merge(paths, tmp_path / "pieces.parquet", tmp_path, memory_budget=1)
    assert pieces == whole
    assert result.peak_buffered_rows < n < whole_result.peak_buffered_rows
    assert result.unsorted_rows_in_files == whole_result.unsorted_rows_in_files > 0
    assert result.rows == whole_result.rows == result.input_rows > n


def _write(path: Path, table: pa.Table) -> Path:
    pq.write_table(table, path)
    return path


def test_missing_ts_event(tmp_path):
    spec = PartitionSpec(files=2, rows_per_file=10)
    good = _write(tmp_path / "a.parquet", raw_table(spec, 0))
    bad = _write(tmp_path / "b.parquet", raw_table(spec, 1).drop_columns(["ts_event"]))
    with pytest.raises(MissingTsEventError) as info:
        merge([good, bad], tmp_path / "out.parquet", tmp_path)
    assert info.value.path == str(bad) and info.value.column == "ts_event"


def test_null_ts_event_counts_nulls(tmp_path):
    spec = PartitionSpec(files=1, rows_per_file=10, rows_jitter=0.0)
    table = raw_table(spec, 0)
    ts = pa.array([None, None] + table.column("ts_event").to_pylist()[2:], pa.int64())
    bad = _write(tmp_path / "a.parquet", table.set_column(0, "ts_event", ts))
    with pytest.raises(NullTsEventError, match="2 null") as info:
        merge([bad], tmp_path / "out.parquet", tmp_path)
    assert info.value.path == str(bad)


@pytest.mark.parametrize("bad_type", [pa.float64(), pa.string()])
def test_non_integer_ts_event(tmp_path, bad_type):
    spec = PartitionSpec(files=1, rows_per_file=10)
    table = raw_table(spec, 0)
    bad = _write(
        tmp_path / "a.parquet", table.set_column(0, "ts_event", table.column(0).cast(bad_type))
    )
    with pytest.raises(BadTsEventTypeError) as info:
        merge([bad], tmp_path / "out.parquet", tmp_path)
    assert info.value.path == str(bad) and info.value.column == "ts_event"


def test_incompatible_column_types_name_file_and_column(tmp_path):
    spec = PartitionSpec(files=2, rows_per_file=10)
    good = _write(tmp_path / "a.parquet", raw_table(spec, 0))
    table = raw_table(spec, 1)
    index = table.schema.get_field_index("bid_price")
    bad = _write(
        tmp_path / "b.parquet",
        table.set_column(index, "bid_price", table.column(index).cast(pa.string())),
    )
    with pytest.raises(SchemaConflictError) as info:
        merge([good, bad], tmp_path / "out.parquet", tmp_path)
    assert info.value.path == str(bad) and info.value.column == "bid_price"


def test_settings_reject_nonsense():
    with pytest.raises(ValueError, match="max_open_files"):
        MergeSettings(max_open_files=1)
    with pytest.raises(ValueError, match="memory_budget"):
        MergeSettings(memory_budget=0)


def test_concatenated_object_is_caught_by_its_layout_not_by_luck(tmp_path):
    """Two copies of one file decode 'fine' through the second footer: the layout check
    is what catches them."""
    spec = PartitionSpec(files=1, rows_per_file=40)
    single = _write(tmp_path / "one.parquet", raw_table(spec, 0))
    double = tmp_path / "two.parquet"
    double.write_bytes(single.read_bytes() * 2)
    assert pq.read_table(double).equals(pq.read_table(single))  # pyarrow alone is fooled
    with pytest.raises(CorruptFileError, match="concatenated") as info:
        merge([single, double], tmp_path / "out.parquet", tmp_path)
    assert info.value.path == str(double)


def test_settings_from_environment_name_the_variable():
    settings = MergeSettings.from_env({"MAX_OPEN_FILES": "8", "MERGE_ZSTD_LEVEL": "5"},
                                      memory_budget=1 << 20)
    assert (settings.max_open_files, settings.zstd_level, settings.memory_budget) == (8, 5, 1 << 20)
    for variable, value in [("MAX_OPEN_FILES", "1"), ("MERGE_BATCH_SIZE", "abc"),
                            ("MERGE_ZSTD_LEVEL", "23")]:
        with pytest.raises(ValueError, match=variable):
            MergeSettings.from_env({variable: value})


def test_sub_millisecond_timestamps_are_refused_not_truncated(tmp_path):
    spec = PartitionSpec(files=1, rows_per_file=5)
    table = raw_table(spec, 0)
    micros = pa.array([v * 1000 + 1 for v in table.column(0).to_pylist()], pa.timestamp("us"))
    bad = _write(tmp_path / "a.parquet", table.set_column(0, "ts_event", micros))
    with pytest.raises(BadTsEventTypeError, match="milliseconds") as info:
        merge([bad], tmp_path / "out.parquet", tmp_path)
    assert info.value.path == str(bad)


def _steps_back(path: Path) -> int:
    ts = pq.read_table(path, columns=["ts_event"]).column(0).to_pylist()
    return sum(b < a for a, b in zip(ts, ts[1:], strict=False))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_unsorted_rows_in_files_counted_whatever_the_path(tmp_path, layout):
    """One pairwise comparison per input file; the count never touches the output."""
    spec = PartitionSpec(files=12, rows_per_file=150, layout=layout, empty=2, seed=11)
    paths = write_partition(spec, tmp_path / "raw")
    expected = sum(_steps_back(p) for p in paths)
    assert (expected > 0) == (layout != "disjoint")
    direct, one = merge(paths, tmp_path / "a.parquet", tmp_path)
    spilled, many = merge(paths, tmp_path / "b.parquet", tmp_path, memory_budget=1,
                          max_open_files=3)
    assert one.unsorted_rows_in_files == many.unsorted_rows_in_files == expected
    assert spilled == direct
    assert one.empty_files == many.empty_files == 2
    if layout == "spans_day":
        assert many.spill_runs > 1
