"""docs/quality.md "Reading the compact store": the documented DuckDB, Polars and pyarrow lines,
run as written against a compact store the job wrote (the demo lake, plus a day whose
schema drifted: a column added, integers widened).

Each must read only the data.parquet files (the root also holds meta.json and
compacted/*.json), keep the in-file `symbol` (BTCUSDT, not the folder's btcusdt), lose
no row and no column, and keep each partition's (ts_event, seq) order.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from compressor.cli import main
from compressor.demo import PartitionSpec, write_partition

TODAY = "20261204"
DRIFT_DAY = "20261130"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("readers")
    assert main(["--demo", str(root), "--today", TODAY]) == 0
    write_partition(PartitionSpec("binance", "trade", "solusdt", date=DRIFT_DAY, files=6,
                                  rows_per_file=50, schema_drift=True), root / "raw")
    assert main(["--raw", str(root / "raw"), "--compact", str(root / "compact"), "--mode",
                 "backfill", "--date-from", DRIFT_DAY, "--today", TODAY, "--tmp-dir",
                 str(root / "tmp")]) == 0
    return root / "compact"


def expected(root: Path, stream: str) -> dict[str, int]:
    """meta.json rows of every partition of `stream`: partition folder -> rows."""
    return {str(Path(p).parent): json.loads(Path(p).read_text())["rows"]
            for p in glob.glob(f"{root}/exchange=*/stream={stream}/symbol=*/date=*/meta.json")}


def check(table: pa.Table, root: Path, stream: str) -> None:
    """Every partition's rows, once, in (ts_event, seq) order, upper-case symbols, and the
    drifted column kept."""
    rows = expected(root, stream)
    paths = table.column("path").to_pylist()
    assert {str(Path(p).parent): paths.count(p) for p in set(paths)} == rows
    symbols = set(table.column("symbol").to_pylist())
    assert symbols and all(s == s.upper() for s in symbols), symbols
    for folder in rows:
        part = table.filter(pa.compute.equal(table.column("path"), folder + "/data.parquet"))
        assert part.column("seq").to_pylist() == list(range(part.num_rows))
        ts = part.column("ts_event").to_pylist()
        assert ts == sorted(ts)
    if stream == "trade":
        assert "update_id" in table.schema.names  # the column added on DRIFT_DAY
        assert table.column("update_id").null_count < table.num_rows


@pytest.mark.parametrize("stream", ["trade", "bbo"])
def test_duckdb(store: Path, stream: str) -> None:
    root = str(store)
    table = duckdb.sql(
        f"SELECT * FROM read_parquet('{root}/exchange=*/stream={stream}/symbol=*/date=*/"
        "data.parquet', hive_partitioning=false, union_by_name=true, filename=true) "
        "ORDER BY filename, ts_event, seq").arrow()
    if isinstance(table, pa.RecordBatchReader):
        table = table.read_all()
    check(table.rename_columns([("path" if n == "filename" else n)
                                for n in table.schema.names]), store, stream)


@pytest.mark.parametrize("stream", ["trade", "bbo"])
def test_polars(store: Path, stream: str) -> None:
    root = str(store)
    df = pl.concat([pl.scan_parquet(p, include_file_paths="path") for p in sorted(glob.glob(
        f"{root}/exchange=*/stream={stream}/symbol=*/date=*/data.parquet"))],
        how="diagonal_relaxed").collect()
    check(df.to_arrow(), store, stream)
    if stream == "bbo":  # one schema: the short form reads it too, from the same glob
        short = pl.scan_parquet(f"{root}/exchange=*/stream=bbo/symbol=*/date=*/data.parquet",
                                hive_partitioning=False, include_file_paths="path").collect()
        check(short.to_arrow(), store, stream)
    else:  # and fails loudly, never silently, on a drifted schema
        with pytest.raises(pl.exceptions.SchemaError):
            pl.scan_parquet(f"{root}/exchange=*/stream=trade/symbol=*/date=*/data.parquet",
                            hive_partitioning=False).collect()


@pytest.mark.parametrize("stream", ["trade", "bbo"])
def test_pyarrow(store: Path, stream: str) -> None:
    root = str(store)
    paths = sorted(glob.glob(f"{root}/exchange=*/stream={stream}/symbol=*/date=*/data.parquet"))
    schema = pa.unify_schemas([pq.read_schema(p) for p in paths], promote_options="permissive")
    table = ds.dataset(paths, schema=schema, format="parquet").to_table()
    # to_table keeps the files' order: label each row with its file, by the files' rows
    counts = [pq.ParquetFile(p).metadata.num_rows for p in paths]
    check(table.append_column("path", pa.array(
        [p for p, n in zip(paths, counts, strict=True) for _ in range(n)])), store, stream)


def test_the_root_itself_is_not_one_dataset(store: Path) -> None:
    """Why the lines glob data.parquet: the root holds JSON beside the Parquet files, and
    the hive folders replace the in-file symbol."""
    with pytest.raises(pa.ArrowInvalid, match="json"):
        ds.dataset(store, format="parquet")
    with pytest.raises(Exception, match="extension|json"):
        pl.scan_parquet(str(store)).collect()
    hive = duckdb.sql(f"SELECT DISTINCT symbol FROM read_parquet('{store}/**/data.parquet')"
                      ).fetchall()
    assert {s for (s,) in hive} <= {"btcusdt", "ethusdt", "solusdt"}  # the folder's value
