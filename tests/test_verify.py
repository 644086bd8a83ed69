"""Verification (compressor/partition/verify.py): the column checks and the sha256 computed
beside them on a thread of its own, which never outlives verify_output."""

from __future__ import annotations

import errno
import hashlib
import pathlib
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import compressor.partition.verify as verify
from compressor.merge import MergeAborted
from compressor.meta import file_sha256
from compressor.partition.digest import ColumnDigest
from compressor.partition.verify import VerificationError, verify_output

ROWS = 200_000


@pytest.fixture
def output(tmp_path: Path) -> Path:
    """A valid merged file of several batches and a few MB (random payload)."""
    path = tmp_path / "data.parquet"
    table = pa.table({
        "ts_event": pa.array(range(ROWS), pa.int64()),
        "seq": pa.array(range(ROWS), pa.int64()),
        "payload": pa.array([n * 2654435761 % 2**32 for n in range(ROWS)], pa.int64()),
    })
    pq.write_table(table, path, row_group_size=50_000, compression="none")
    return path


def _hashing_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "verify-sha256" and t.is_alive()]


def _slow_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny reads: the hash is still going when the column check ends or is stopped."""
    monkeypatch.setattr(verify, "HASH_CHUNK", 64)
    monkeypatch.setattr(verify, "VERIFY_BATCH_ROWS", 20_000)


@pytest.mark.parametrize("slow_hash", [False, True], ids=["fast-hash", "slow-hash"])
def test_size_and_sha256_are_the_files_whichever_finishes_first(
    output: Path, monkeypatch: pytest.MonkeyPatch, slow_hash: bool
) -> None:
    if slow_hash:
        _slow_hashing(monkeypatch)
    got = verify_output(output, ROWS)
    data = output.read_bytes()
    assert (got.rows, got.ts_event_min, got.ts_event_max) == (ROWS, 0, ROWS - 1)
    assert (got.size_bytes, got.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert got.sha256 == file_sha256(output)
    assert _hashing_threads() == []


def test_a_stop_or_a_failed_check_stops_the_hashing(
    output: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _slow_hashing(monkeypatch)
    polls: list[int] = []

    def stop_on_second_poll() -> bool:
        polls.append(len(_hashing_threads()))
        return len(polls) >= 2

    with pytest.raises(MergeAborted, match="interrupted while verifying"):
        verify_output(output, ROWS, stop_on_second_poll)
    assert polls == [1, 1]  # hashing while the columns were checked...
    assert _hashing_threads() == []  # ...and not a moment after

    bad = tmp_path / "bad.parquet"
    seq = list(range(ROWS))
    seq[-1] = 0
    pq.write_table(pa.table({"ts_event": pa.array(range(ROWS), pa.int64()),
                             "seq": pa.array(seq, pa.int64())}), bad)
    with pytest.raises(VerificationError, match="seq is not 0..N-1"):
        verify_output(bad, ROWS)
    assert _hashing_threads() == []


def test_a_read_error_while_hashing_fails_the_verification(
    output: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = pathlib.Path.open

    def failing_open(self: Path, *args: object, **kwargs: object) -> object:
        if self == output:
            raise OSError(errno.EIO, "Input/output error")
        return real_open(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pathlib.Path, "open", failing_open)
    with pytest.raises(OSError, match="Input/output error"):
        verify_output(output, ROWS)
    assert _hashing_threads() == []


# ------------------------------------------------------------------ digests (verify --deep)


def _digest(table: pa.Table, batch: int) -> ColumnDigest:
    digest = ColumnDigest(table.column_names)
    for piece in table.to_batches(max_chunksize=batch):
        digest.add(piece)
    return digest


def test_digests_ignore_order_and_batching_and_name_what_differs() -> None:
    table = pa.table({
        "ts_event": pa.array([3, 1, 2, 2, None], pa.int64()),
        "exchange": pa.array(["binance", "binance", "okx", None, "binance"]),
        "price": pa.array([1.5, 2.5, float("nan"), -0.0, 7.0]),
        "side": pa.array(["b", "s", "b", "s", "b"]).dictionary_encode(),
    })
    digest = _digest(table, 2)
    assert digest.differences(_digest(table.take([4, 2, 0, 3, 1]), 3)) == []
    changed = table.set_column(1, "exchange", pa.array(["binance"] * 5))
    assert digest.differences(_digest(changed, 5)) == ["column 'exchange' differs from the raw "
                                                       "files'"]
    swapped = table.set_column(2, "price", table.column("price").take([1, 0, 2, 3, 4]))
    assert digest.differences(_digest(swapped, 5)) == [
        "rows pair values differently from the raw files'"]
    assert digest.differences(_digest(table.slice(1), 5)) == ["5 rows, the raw files hold 4"]
