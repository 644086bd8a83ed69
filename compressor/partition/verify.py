"""Verify: re-read the merged file before anything is published.

Row count equal to the inputs' footer rows, ts_event never decreasing, seq 0..N-1,
and its size and sha256 for meta.json. Nothing is published from a file that
fails (docs/guarantees.md "How a run works"). The sha256 is computed on a thread of its own
while the columns are checked (hashlib releases the GIL on large updates), so
the step takes about as long as the column check alone.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from compressor.merge import MergeAborted
from compressor.meta import ORDERING_COLUMNS as META_ORDERING
from compressor.partition import never

log = logging.getLogger(__name__)


ORDERING_COLUMNS = list(META_ORDERING)
#: Rows per batch when the output is re-read for verification.
VERIFY_BATCH_ROWS = 262_144
#: Bytes read per sha256 update (large enough for hashlib to release the GIL).
HASH_CHUNK = 1 << 20


class VerificationError(Exception):
    """The merged file failed its own check; nothing was published."""



@dataclass(frozen=True)
class Verified:
    rows: int
    ts_event_min: int | None
    ts_event_max: int | None
    size_bytes: int
    sha256: str






def verify_output(
    path: Path, expected_rows: int, should_stop: Callable[[], bool] = never
) -> Verified:
    """Re-read the merged file: row count, ts_event non-decreasing, seq == 0..N-1;
    its sha256 is computed meanwhile on a second thread.

    `should_stop` is polled per batch (MergeAborted), as the merge does. Whatever
    ends the check early (a stop, a failed check) stops the hashing too: it is
    never left running past this call."""
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if names[:2] != ORDERING_COLUMNS:
        raise VerificationError(f"{path.name}: columns start {names[:2]}, not {ORDERING_COLUMNS}")
    rows = pf.metadata.num_rows
    if rows != expected_rows:
        raise VerificationError(f"{path.name}: {rows} rows, but the inputs hold {expected_rows}")
    hashing = _Sha256(path)
    try:
        ts_min, ts_max = _check_order(pf, path, rows, should_stop)
    except BaseException:
        hashing.stop()  # ends within one chunk
        raise
    return Verified(rows, ts_min, ts_max, path.stat().st_size, hashing.result())


def _check_order(
    pf: pq.ParquetFile, path: Path, rows: int, should_stop: Callable[[], bool]
) -> tuple[int | None, int | None]:
    """(min, max) ts_event after checking every batch; VerificationError, MergeAborted."""
    seen, ts_min, ts_max = 0, None, None
    for batch in pf.iter_batches(batch_size=VERIFY_BATCH_ROWS, columns=ORDERING_COLUMNS):
        if should_stop():
            raise MergeAborted("interrupted while verifying")
        ts, seq = batch.column(0), batch.column(1)
        if ts.null_count or seq.null_count:
            raise VerificationError(f"{path.name}: null ts_event or seq near row {seen}")
        ts_int = pc.cast(ts, "int64")
        first, last = ts_int[0].as_py(), ts_int[-1].as_py()
        if ts_max is not None and first < ts_max:
            raise VerificationError(f"{path.name}: ts_event decreases at row {seen}")
        if len(ts_int) > 1 and pc.min(pc.pairwise_diff(ts_int)).as_py() < 0:
            raise VerificationError(f"{path.name}: ts_event decreases near row {seen}")
        if seq[0].as_py() != seen or (
            len(seq) > 1 and not _all_equal(pc.pairwise_diff(seq), 1)
        ):
            raise VerificationError(f"{path.name}: seq is not 0..N-1 near row {seen}")
        ts_min = first if ts_min is None else ts_min
        ts_max = last
        seen += len(batch)
    if seen != rows:
        raise VerificationError(f"{path.name}: footer says {rows} rows, read {seen}")
    return ts_min, ts_max


class _Sha256:
    """sha256 of a file, computed on a thread started here.

    `stop()` makes it end after the chunk it is on and waits for that; `result()`
    waits for the whole file and returns the hex digest (or raises what reading
    the file raised)."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stopping = threading.Event()
        self._digest: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="verify-sha256", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        digest = hashlib.sha256()
        buffer = bytearray(HASH_CHUNK)
        view = memoryview(buffer)
        try:
            with self._path.open("rb", buffering=0) as fh:
                while n := fh.readinto(buffer):
                    if self._stopping.is_set():
                        return
                    digest.update(view[:n])
        except BaseException as exc:  # handed to result()
            self._error = exc
            return
        self._digest = digest.hexdigest()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._stopping.set()
            self._thread.join()

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._digest is None:
            raise RuntimeError("sha256 stopped before the end of the file")
        return self._digest


def _all_equal(values: Any, expected: int) -> bool:
    valid = pc.drop_null(values)
    return bool(pc.all(pc.equal(valid, expected)).as_py())
