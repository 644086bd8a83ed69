"""Resource failures while reading inputs are never taken for corrupt input.

A CorruptFileError quarantines the partition, or with --skip-corrupt drops the file,
so only the object's own bytes failing to decode may raise it. Running out of file
descriptors or memory, a permission or I/O error, a directory where the file should
be: the merge raises MergeResourceError (an OSError keeping the errno, never a
MergeInputError), the partition fails retryably and no file is dropped.

The failures are real where that is possible: RLIMIT_NOFILE exhausted (EMFILE),
RLIMIT_AS in a subprocess (ArrowMemoryError), a file unreadable to a non-root
effective uid in a subprocess (EACCES).
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from compressor.demo import CORRUPT_KINDS, PartitionSpec, special_files, write_partition
from compressor.merge import CorruptFileError, MergeInputError, MergeResourceError, merge_files
from compressor.merge import reading as merge_reading
from compressor.merge import sorting as merge_sorting
from compressor.merge.inputs import _is_decode_failure

REPO = Path(__file__).resolve().parents[1]


def _inputs(tmp_path: Path, files: int = 4) -> list[Path]:
    return write_partition(PartitionSpec(files=files, rows_per_file=50), tmp_path / "raw")


@contextmanager
def _no_free_fds() -> Iterator[None]:
    """Every file descriptor taken (a low RLIMIT_NOFILE, filled): the next open is EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
    try:
        while True:
            try:
                held.append(os.open(os.devnull, os.O_RDONLY))
            except OSError as exc:
                assert exc.errno == errno.EMFILE
                break
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _assert_resource_error(exc: BaseException, path: Path, code: int | None) -> None:
    assert isinstance(exc, MergeResourceError) and isinstance(exc, OSError)
    assert not isinstance(exc, MergeInputError)  # so --skip-corrupt can never drop it
    assert not getattr(exc, "corrupt", False)
    assert exc.path == str(path)
    assert exc.errno == code
    text = str(exc)
    assert "\n" not in text and str(path) in text
    if code is not None:
        assert os.strerror(code) in text and errno.errorcode[code] in text


def test_emfile_during_footer_scan_is_not_corrupt(tmp_path: Path) -> None:
    paths = _inputs(tmp_path)
    out = tmp_path / "out.parquet"
    with _no_free_fds(), pytest.raises(MergeResourceError) as info:
        merge_files(paths, out, tmp_dir=tmp_path)
    _assert_resource_error(info.value, paths[0], errno.EMFILE)
    assert "Parquet footer" in str(info.value)
    assert not out.exists()
    merge_files(paths, out, tmp_dir=tmp_path)  # the inputs were healthy all along
    assert pq.read_metadata(out).num_rows == sum(pq.read_metadata(p).num_rows for p in paths)


def test_emfile_during_column_read_is_not_corrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _inputs(tmp_path)
    out = tmp_path / "out.parquet"
    real = merge_reading.read_columns
    read: list[Path] = []

    def starved(path: Path, columns: list[str], *constants: Any) -> pa.Table:
        read.append(path)
        with _no_free_fds():
            return real(path, columns, *constants)

    monkeypatch.setattr(merge_sorting, "read_columns", starved)
    with pytest.raises(MergeResourceError) as info:
        merge_files(paths, out, tmp_dir=tmp_path)
    assert read, "the footer scan passed and a column read was starved"
    _assert_resource_error(info.value, read[-1], errno.EMFILE)
    assert "Parquet data" in str(info.value)
    assert not out.exists()


def test_a_directory_in_place_of_a_file_is_not_corrupt(tmp_path: Path) -> None:
    # pyarrow: errno-less OSError "Expected file path, but ... is a directory", at open.
    paths = _inputs(tmp_path)
    paths[2].unlink()
    paths[2].mkdir()
    with pytest.raises(MergeResourceError) as info:
        merge_files(paths, tmp_path / "out.parquet", tmp_dir=tmp_path)
    _assert_resource_error(info.value, paths[2], None)
    assert "is a directory" in str(info.value)


def test_io_error_while_decoding_is_not_corrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EIO cannot be made for real here; it arrives as OSError with errno, like EMFILE."""
    paths = _inputs(tmp_path)

    def failing_read(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(pq.ParquetFile, "read", failing_read)
    with pytest.raises(MergeResourceError) as info:
        merge_files(paths, tmp_path / "out.parquet", tmp_dir=tmp_path)
    _assert_resource_error(info.value, paths[0], errno.EIO)


def test_memory_error_in_the_footer_scan_is_not_corrupt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _inputs(tmp_path)

    def no_memory(*args: object, **kwargs: object) -> None:
        raise pa.ArrowMemoryError("malloc of size 64 failed")

    monkeypatch.setattr(pq, "read_metadata", no_memory)
    with pytest.raises(MergeResourceError) as info:
        merge_files(paths, tmp_path / "out.parquet", tmp_dir=tmp_path)
    _assert_resource_error(info.value, paths[0], None)
    assert "ArrowMemoryError: malloc of size 64 failed" in str(info.value)


# ------------------------------------------------------------------ real, in a subprocess

_CHILD = """
import json, os, resource, sys
from pathlib import Path
from compressor.merge import merge_files
paths = [Path(p) for p in json.loads(sys.argv[1])]
out, tmp, mode = Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
if mode == "memory":
    status = open("/proc/self/status").read()
    vm = int(next(x for x in status.splitlines() if x.startswith("VmSize:")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + 64 * 2**20, resource.RLIM_INFINITY))
elif mode == "eacces" and os.geteuid() == 0:
    os.setegid(65534)
    os.seteuid(65534)
try:
    merge_files(paths, out, tmp_dir=tmp)
    print(json.dumps({"type": None}))
except BaseException as exc:
    print(json.dumps({
        "type": type(exc).__name__,
        "bases": [c.__name__ for c in type(exc).__mro__],
        "errno": getattr(exc, "errno", None),
        "path": getattr(exc, "path", None),
        "message": str(exc),
        "corrupt": getattr(exc, "corrupt", None),
    }))
"""


def _merge_in_child(paths: list[Path], out: Path, tmp: Path, mode: str) -> dict:
    argv = [json.dumps([str(p) for p in paths]), str(out), str(tmp), mode]
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, *argv],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_real_out_of_memory_during_column_read_is_not_corrupt(tmp_path: Path) -> None:
    # 200,000 rows of two 4 KB strings: a few KB on disk, 800 MB decoded, and even the
    # first rows read to size a big file's pieces (65,536: 256 MB) are beyond the
    # 64 MB the child may grow by.
    big = tmp_path / "big.parquet"
    schema = pa.schema([("ts_event", pa.int64()), ("payload", pa.string())])
    with pq.ParquetWriter(big, schema) as writer:
        chunk = pa.table({"ts_event": pa.array(np.zeros(50_000, dtype=np.int64)),
                          "payload": pa.array(["x" * 4096, "y" * 4096] * 25_000)},
                         schema=schema)
        for _ in range(4):
            writer.write_table(chunk)
    result = _merge_in_child([big], tmp_path / "out.parquet", tmp_path, "memory")
    # pyarrow 26: ArrowMemoryError("malloc of size N failed"), errno None
    assert result["type"] == "MergeResourceError", result
    assert "MergeInputError" not in result["bases"] and "OSError" in result["bases"]
    assert result["path"] == str(big) and result["errno"] is None
    assert "ArrowMemoryError" in result["message"] and str(big) in result["message"]
    assert not (tmp_path / "out.parquet").exists()


#: What a merge process holds beyond its --memory-budget, whatever its inputs: the
#: interpreter and pyarrow (about 75 MB), the output row group's copies and the Parquet
#: encoder (rows per group are fixed, for the same bytes whatever the budget), the
#: allocator's slack (docs/guarantees.md "Guarantees under failure").
FIXED_OVERHEAD = 250 * 10**6

_PEAK_CHILD = """
import json, sys
from pathlib import Path
from compressor.merge import choose_memory_pool
choose_memory_pool()
from compressor.merge import MergeSettings, merge_files
out = Path(sys.argv[2])
result = merge_files([Path(sys.argv[1])], out, tmp_dir=out.parent,
                     settings=MergeSettings(memory_budget=int(sys.argv[3])))
status = open("/proc/self/status").read()
peak = int(next(x for x in status.splitlines() if x.startswith("VmHWM:")).split()[1]) * 1024
print(json.dumps({"peak": peak, "rows": result.rows, "runs": result.spill_runs}))
"""


def test_one_big_raw_file_is_merged_within_the_memory_budget(tmp_path: Path) -> None:
    """6 M rows in one raw file (six row groups), --memory-budget 256M: the process's
    peak RSS (VmHWM, the kernel's own figure) stays under budget + FIXED_OVERHEAD.
    Loaded whole, the file alone decodes to about 300 MB, and is copied to sort it."""
    n, budget = 6_000_000, 256 * 2**20
    rng = np.random.default_rng(5)
    ts = 1_795_478_400_000 + np.sort(rng.integers(0, 86_400_000, n)) + rng.integers(-50, 50, n)
    constant = pa.DictionaryArray.from_arrays(np.zeros(n, np.int32), ["binance"])
    table = pa.table({"ts_event": ts, "ts_recv": ts + 15, "exchange": constant.cast(pa.string()),
                      "bid_price": rng.random(n), "bid_qty": rng.random(n),
                      "ask_price": rng.random(n), "ask_qty": rng.random(n)})
    big = tmp_path / "big.parquet"
    pq.write_table(table, big)
    del table, ts, constant
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_CHILD, str(big), str(tmp_path / "out.parquet"), str(budget)],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["peak"] < budget + FIXED_OVERHEAD, figures
    assert figures["rows"] == n and figures["runs"] > 1  # sorted in pieces, then merged
    ts_out = pq.read_table(tmp_path / "out.parquet", columns=["ts_event"]).column(0).to_numpy()
    assert bool(np.all(ts_out[1:] >= ts_out[:-1]))


def test_real_permission_denied_is_not_corrupt(tmp_path: Path) -> None:
    # A directory a non-root effective uid can traverse and write; one input mode 000.
    base = Path(tempfile.mkdtemp(prefix="qlc-eacces-"))
    try:
        base.chmod(0o777)
        paths = [shutil.copy(p, base) for p in _inputs(tmp_path)]
        victim = Path(paths[1])
        victim.chmod(0)
        result = _merge_in_child([Path(p) for p in paths], base / "out.parquet", base, "eacces")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    # pyarrow 26: PermissionError errno 13 "Failed to open local file ... [errno 13]"
    assert result["type"] == "MergeResourceError", result
    assert "MergeInputError" not in result["bases"]
    assert result["path"] == str(victim) and result["errno"] == errno.EACCES
    assert os.strerror(errno.EACCES) in result["message"]


# ------------------------------------------------------------------ the rule, known answers


def _decode_exception(data: bytes, path: Path) -> BaseException:
    path.write_bytes(data)
    try:
        pq.ParquetFile(pa.OSFile(str(path)), pre_buffer=False).read(use_threads=False)
    except Exception as exc:  # noqa: BLE001 - the exception is the answer
        return exc
    raise AssertionError("corrupt bytes decoded")


@pytest.mark.parametrize("kind", CORRUPT_KINDS)
def test_each_corrupt_kind_is_a_decode_failure(tmp_path: Path, kind: str) -> None:
    spec = PartitionSpec(files=len(CORRUPT_KINDS), rows_per_file=30, corrupt=len(CORRUPT_KINDS))
    paths = write_partition(spec, tmp_path / "raw")
    slot = next(i for i, k in special_files(spec).items() if k == kind)
    exc = _decode_exception(paths[slot].read_bytes(), tmp_path / "probe.parquet")
    assert _is_decode_failure(exc), (type(exc), exc)
    with pytest.raises(CorruptFileError) as info:
        merge_files([paths[slot]], tmp_path / "out.parquet", tmp_dir=tmp_path)
    assert info.value.corrupt and not isinstance(info.value, MergeResourceError)


def test_bad_snappy_block_and_garbage_thrift_are_decode_failures(tmp_path: Path) -> None:
    good = _inputs(tmp_path, files=1)[0].read_bytes()
    footer_len = int.from_bytes(good[-8:-4], "little")
    start = len(good) - 8 - footer_len
    garbage = good[:start] + b"\x0f" * footer_len + good[-8:]
    meta = pq.read_metadata(pa.BufferReader(good))
    smashed = bytearray(good)
    for c in range(meta.row_group(0).num_columns):
        chunk = meta.row_group(0).column(c)
        end = (chunk.dictionary_page_offset or chunk.data_page_offset) + chunk.total_compressed_size
        smashed[end - 6 : end - 1] = b"\xff" * 5
    for data in (garbage, bytes(smashed), b"XXXX" + good[4:-4] + b"XXXX"):
        exc = _decode_exception(data, tmp_path / "probe.parquet")
        assert _is_decode_failure(exc), (type(exc), exc)


@pytest.mark.parametrize(
    "exc",
    [
        OSError(errno.EMFILE, "Too many open files"),
        OSError(errno.ENOMEM, "Cannot allocate memory"),
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EIO, "Input/output error"),
        PermissionError(errno.EACCES, "Permission denied"),
        pa.ArrowMemoryError("malloc of size 536870912 failed"),
        MemoryError(),
        pa.ArrowCapacityError("array too large"),
        OSError("Couldn't deserialize thrift: std::bad_alloc"),
    ],
    ids=lambda exc: type(exc).__name__ + (f"-{exc.errno}" if getattr(exc, "errno", None) else ""),
)
def test_resource_failures_are_not_decode_failures(exc: BaseException) -> None:
    assert not _is_decode_failure(exc)


def test_resource_error_keeps_errno_so_no_space_is_still_recognised() -> None:
    from compressor.partition.fetch import no_space as _no_space

    cause = OSError(errno.ENOSPC, "No space left on device")
    exc = MergeResourceError("/in/x.parquet", "reading Parquet data", cause)
    assert exc.errno == errno.ENOSPC and _no_space(exc)
    assert str(exc) == (
        "/in/x.parquet: reading Parquet data failed (not the file's bytes): "
        "[Errno 28 ENOSPC] No space left on device"
    )
    assert not _no_space(MergeResourceError("/in/x.parquet", "x", MemoryError()))
