"""Compacting one partition: exactly-once rows, verification, meta.json as the commit marker."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from compressor.demo import PartitionSpec, raw_table, rows_in_file, special_files
from compressor.discovery import Partition, list_partition
from compressor.labels import RULES_VERSION
from compressor.merge import MergeAborted
from compressor.meta import Meta, check_data_file
from compressor.partition.compact import BadInputError, CompactSettings, compact_partition
from compressor.partition.fetch import RawChangedError
from compressor.partition.verify import VerificationError, verify_output
from compressor.storage import LocalStore, Store
from compressor.storage.base import ObjectInfo
from tests.conftest import put_partition

REQUIRED_META = {
    "schema_version", "rows", "ts_event_min", "ts_event_max", "ordering_columns", "sha256",
    "source_files", "stream_type", "day_quality", "post_filter_version", "source_fingerprint",
    "compactor_version", "created_at", "merge", "quality", "data_etag", "size_bytes",
}


def _spec(**kw: Any) -> PartitionSpec:
    base: dict[str, Any] = {"exchange": "bybit", "stream": "trade", "symbol": "ethusdt",
                            "date": "20261123", "files": 8, "rows_per_file": 150}
    base.update(kw)
    return PartitionSpec(**base)


@pytest.fixture
def stores(tmp_path: Path) -> tuple[LocalStore, LocalStore]:
    for name in ("raw", "compact"):
        (tmp_path / name).mkdir()
    return LocalStore(tmp_path / "raw"), LocalStore(tmp_path / "compact")


@pytest.fixture
def settings(tmp_path: Path) -> CompactSettings:
    return CompactSettings(tmp_root=tmp_path / "work", download_workers=4)


def _expected(spec: PartitionSpec) -> pa.Table:
    """Every readable raw row, ordered by ts_event, ties in key order then row order."""
    specials = special_files(spec)
    tables = [raw_table(spec, i).select(["ts_event", "ts_recv", "trade_id"])
              for i in range(spec.files) if specials.get(i) in (None, "empty")]
    table = pa.concat_tables(tables, promote_options="permissive")
    table = table.append_column("_n", pa.array(range(table.num_rows), pa.int64()))
    return table.take(pc.sort_indices(table, [("ts_event", "ascending"), ("_n", "ascending")]))


def _read_published(compact: Store, spec: PartitionSpec, tmp: Path) -> tuple[pa.Table, dict]:
    pid = spec.partition
    compact.get_file(pid.data_key, tmp / "out.parquet")
    meta = json.loads(compact.get_bytes(pid.meta_key)[0])
    return pq.read_table(tmp / "out.parquet"), meta


def test_every_raw_row_exactly_once_sorted_with_seq(
    stores: tuple[LocalStore, LocalStore], settings: CompactSettings, tmp_path: Path
) -> None:
    raw, compact = stores
    spec = _spec(layout="spans_day", empty=1, strays=True, schema_drift=True)
    put_partition(raw, spec, tmp_path)
    part = list_partition(raw, spec.partition)
    result = compact_partition(part, raw, compact, settings)

    out, meta = _read_published(compact, spec, tmp_path)
    expected = _expected(spec)
    assert out.column_names[:2] == ["ts_event", "seq"]
    assert out["seq"].to_pylist() == list(range(out.num_rows))
    assert out.num_rows == expected.num_rows == sum(rows_in_file(spec, i) for i in range(8))
    assert out["ts_event"].to_pylist() == expected["ts_event"].to_pylist()
    # ties keep key order then row order: the per-row identity (ts_recv, trade_id) matches
    assert out["trade_id"].to_pylist() == expected["trade_id"].to_pylist()
    assert out["ts_recv"].to_pylist() == expected["ts_recv"].to_pylist()

    assert REQUIRED_META <= meta.keys()
    data = (tmp_path / "out.parquet").read_bytes()
    assert meta["sha256"] == hashlib.sha256(data).hexdigest() == result.sha256
    assert meta["rows"] == result.rows == out.num_rows
    assert meta["ordering_columns"] == ["ts_event", "seq"]
    assert meta["ts_event_min"] == pc.min(out["ts_event"]).as_py()
    assert meta["ts_event_max"] == pc.max(out["ts_event"]).as_py()
    assert meta["source_files"] == 8 and meta["stream_type"] == "trade"
    assert meta["source_fingerprint"] == part.fingerprint
    assert meta["created_at"].endswith("Z")
    assert meta["day_quality"] == "UNKNOWN"  # no collector windows for this day
    assert meta["post_filter_version"] == RULES_VERSION
    assert meta["quality"]["rows"] == out.num_rows
    assert meta["quality"]["out_of_day_before"] > 0  # previous day's tail
    assert "skipped_files" not in meta
    assert list((tmp_path / "work").iterdir()) == []  # temp dir gone


def test_same_inputs_give_identical_bytes(
    stores: tuple[LocalStore, LocalStore], settings: CompactSettings, tmp_path: Path
) -> None:
    raw, compact = stores
    spec = _spec()
    put_partition(raw, spec, tmp_path)
    part = list_partition(raw, spec.partition)
    first = compact_partition(part, raw, compact, settings)
    second = compact_partition(part, raw, compact, settings)
    assert first.sha256 == second.sha256


def test_corrupt_object_quarantines_naming_the_key_and_publishes_nothing(
    stores: tuple[LocalStore, LocalStore], settings: CompactSettings, tmp_path: Path
) -> None:
    raw, compact = stores
    spec = _spec(corrupt=1)
    keys = put_partition(raw, spec, tmp_path)
    (bad,) = special_files(spec)
    with pytest.raises(BadInputError) as info:
        compact_partition(list_partition(raw, spec.partition), raw, compact, settings)
    assert info.value.key == keys[bad]
    assert keys[bad] in str(info.value)
    assert info.value.cause.corrupt and str(info.value).startswith(f"{keys[bad]}: ")
    assert list(compact.list_objects("")) == []
    assert list((tmp_path / "work").iterdir()) == []


def test_skip_corrupt_compacts_the_rest_and_names_what_it_skipped(
    stores: tuple[LocalStore, LocalStore], tmp_path: Path
) -> None:
    raw, compact = stores
    spec = _spec(corrupt=2, files=10)
    keys = put_partition(raw, spec, tmp_path)
    bad = sorted(special_files(spec))
    settings = CompactSettings(tmp_root=tmp_path / "work", skip_corrupt=True)
    result = compact_partition(list_partition(raw, spec.partition), raw, compact, settings)
    out, meta = _read_published(compact, spec, tmp_path)
    assert meta["skipped_files"] == result.skipped_files == [keys[i] for i in bad]
    assert out.num_rows == _expected(spec).num_rows == meta["rows"]
    assert meta["source_files"] == 8


def test_raw_object_changed_after_listing_is_a_retryable_failure(
    stores: tuple[LocalStore, LocalStore], settings: CompactSettings, tmp_path: Path
) -> None:
    raw, compact = stores
    spec = _spec()
    keys = put_partition(raw, spec, tmp_path)
    part = list_partition(raw, spec.partition)
    raw.put_bytes(keys[3], raw.get_bytes(keys[2])[0])  # rewritten by someone
    with pytest.raises(RawChangedError) as info:
        compact_partition(part, raw, compact, settings)
    assert info.value.retryable and keys[3] in str(info.value)
    assert list(compact.list_objects("")) == []


def test_stop_request_aborts_and_cleans_up(
    stores: tuple[LocalStore, LocalStore], settings: CompactSettings, tmp_path: Path
) -> None:
    raw, compact = stores
    spec = _spec()
    put_partition(raw, spec, tmp_path)
    with pytest.raises(MergeAborted):
        compact_partition(list_partition(raw, spec.partition), raw, compact, settings,
                          should_stop=lambda: True)
    assert list(compact.list_objects("")) == []
    assert list((tmp_path / "work").iterdir()) == []


# --------------------------------------------------------------------------- verification


def _write(path: Path, ts: list[int], seq: list[int]) -> Path:
    pq.write_table(pa.table({"ts_event": pa.array(ts, pa.int64()),
                             "seq": pa.array(seq, pa.int64())}), path)
    return path


def test_verification_catches_bad_outputs(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.parquet", [1, 1, 2, 5], [0, 1, 2, 3])
    assert verify_output(good, 4).rows == 4
    with pytest.raises(VerificationError, match="inputs hold 5"):
        verify_output(good, 5)
    with pytest.raises(VerificationError, match="decreases"):
        verify_output(_write(tmp_path / "a.parquet", [1, 3, 2], [0, 1, 2]), 3)
    with pytest.raises(VerificationError, match="seq"):
        verify_output(_write(tmp_path / "b.parquet", [1, 2, 3], [0, 2, 1]), 3)
    with pytest.raises(VerificationError, match="seq"):
        verify_output(_write(tmp_path / "c.parquet", [1, 2, 3], [1, 2, 3]), 3)
    other = tmp_path / "d.parquet"
    pq.write_table(pa.table({"seq": [0], "ts_event": [1]}), other)
    with pytest.raises(VerificationError, match="columns start"):
        verify_output(other, 1)


# --------------------------------------------------------------------------- crash safety


class Crash(Exception):
    pass


class CrashingStore(LocalStore):
    """A LocalStore that records mutating calls and raises on the n-th one."""

    def __init__(self, root: Path, crash_at: int | None = None) -> None:
        super().__init__(root)
        self.crash_at = crash_at
        self.ops: list[str] = []

    def _op(self, name: str, key: str) -> None:
        if self.crash_at is not None and len(self.ops) == self.crash_at:
            raise Crash(f"{name} {key}")
        self.ops.append(f"{name} {key.rsplit('/', 1)[-1]}")

    def put_file(self, key: str, path: Path, **kw: Any) -> ObjectInfo:
        self._op("put", key)
        return super().put_file(key, path, **kw)

    def put_bytes(self, key: str, data: bytes, **kw: Any) -> str:
        self._op("put", key)
        return super().put_bytes(key, data, **kw)

    def delete(self, key: str, **kw: Any) -> None:
        self._op("delete", key)
        super().delete(key, **kw)


def _consistent(store: Store, part: Partition, tmp: Path) -> bool | None:
    """None: no meta (partition invisible); True: meta matches the data beside it."""
    pid = part.pid
    if store.head(pid.meta_key) is None:
        return None
    meta = Meta.from_bytes(store.get_bytes(pid.meta_key)[0], pid.meta_key)
    data = store.get_file(pid.data_key, tmp / "check.parquet")
    if meta.data_etag is not None and not meta.describes(data):
        return False
    return check_data_file(meta, tmp / "check.parquet") == []


def test_a_crash_at_any_write_of_an_overwrite_never_shows_a_mismatched_pair(
    stores: tuple[LocalStore, LocalStore], settings: CompactSettings, tmp_path: Path
) -> None:
    raw, _ = stores
    spec = _spec(files=4)
    put_partition(raw, spec, tmp_path)
    v1 = list_partition(raw, spec.partition)
    late_key = spec.partition.prefix + "part-9999999999-000001.parquet"
    raw.put_bytes(late_key, raw.get_bytes(v1.files[0].key)[0])  # a late raw file arrives
    v2 = list_partition(raw, spec.partition)
    assert v2.file_count == 5

    outcomes = []
    for crash_at in range(10):
        root = tmp_path / f"compact{crash_at}"
        root.mkdir()
        compact_partition(v1, raw, LocalStore(root), settings)
        store = CrashingStore(root, crash_at)
        try:
            compact_partition(v2, raw, store, settings)
            crashed = False
        except Crash:
            crashed = True
        state = _consistent(store, v2, tmp_path)
        assert state in (None, True)
        outcomes.append((crashed, state))
        if not crashed:
            # the full sequence: meta out first, then data, meta last
            assert store.ops == ["delete meta.json", "put data.parquet", "put meta.json"]
            meta = json.loads(store.get_bytes(spec.partition.meta_key)[0])
            assert meta["source_fingerprint"] == v2.fingerprint
            break
    assert outcomes == [(True, True), (True, None), (True, None), (False, True)]
    assert list((tmp_path / "work").iterdir()) == []


def test_fence_runs_before_every_write(
    stores: tuple[LocalStore, LocalStore], settings: CompactSettings, tmp_path: Path
) -> None:
    raw, _ = stores
    spec = _spec(files=3)
    put_partition(raw, spec, tmp_path)
    part = list_partition(raw, spec.partition)
    store = CrashingStore(tmp_path / "compact")
    compact_partition(part, raw, store, settings)
    store.ops.clear()
    calls: list[int] = []
    compact_partition(part, raw, store, settings, fence=lambda: calls.append(len(store.ops)))
    assert calls == [0, 1, 2]  # before delete, before data, before meta

    class Lost(Exception):
        pass

    def lose() -> None:
        raise Lost

    store.ops.clear()
    with pytest.raises(Lost):
        compact_partition(part, raw, store, settings, fence=lose)
    assert store.ops == []


def test_temp_dirs_are_removed_only_when_their_owner_is_provably_gone(tmp_path: Path) -> None:
    """A dir is another run's until its owner lock can be taken: whatever its pid says
    (a pid of another PID namespace is no process here)."""
    import os
    import subprocess
    import sys

    from compressor.partition.workdir import OWNER_LOCK, TMP_PREFIX, clean_stale_tmp, work_dir

    holder = subprocess.Popen(  # another run's process: makes a dir and keeps using it
        [sys.executable, "-c", "import sys, time\n"
         "from pathlib import Path\n"
         "from compressor.partition.workdir import work_dir\n"
         "with work_dir(Path(sys.argv[1])) as p:\n"
         "    print(p, flush=True); time.sleep(120)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        live = Path(holder.stdout.readline().strip())
        gone = tmp_path / f"{TMP_PREFIX}1.dead"  # its owner's lock was released
        (gone / "in").mkdir(parents=True)
        (gone / OWNER_LOCK).touch()
        given_up = tmp_path / f"{TMP_PREFIX}1.again"  # a late download wrote in it again
        (given_up / "in").mkdir(parents=True)
        legacy = tmp_path / f"{TMP_PREFIX}4000001-abc"  # an earlier version's: owner unknown
        other = tmp_path / "unrelated-4000001"
        for d in (legacy, other):
            (d / "in").mkdir(parents=True)
        with work_dir(tmp_path) as mine:
            assert mine.name.startswith(f"{TMP_PREFIX}{os.getpid()}.")
            removed = clean_stale_tmp(tmp_path)
            assert mine.exists()
        assert not mine.exists()
        assert removed == sorted([gone, given_up])
        assert live.exists() and legacy.exists() and other.exists()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    finally:
        holder.kill()
        holder.wait()
    assert clean_stale_tmp(tmp_path) == [live]  # its owner is gone now
    assert clean_stale_tmp(tmp_path / "missing") == []
