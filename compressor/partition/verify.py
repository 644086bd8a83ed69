"""Verify: re-read the merged file before anything is published.

Row count equal to the inputs' footer rows, ts_event never decreasing, seq 0..N-1,
then its size and sha256 for meta.json. Nothing is published from a file that
fails (README "How a run works").
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from compressor.merge_errors import MergeAborted
from compressor.meta import ORDERING_COLUMNS as META_ORDERING
from compressor.partition import never

log = logging.getLogger(__name__)


ORDERING_COLUMNS = list(META_ORDERING)
#: Rows per batch when the output is re-read for verification.
VERIFY_BATCH_ROWS = 262_144


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
    """Re-read the merged file: row count, ts_event non-decreasing, seq == 0..N-1.

    `should_stop` is polled per batch (MergeAborted), as the merge does."""
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if names[:2] != ORDERING_COLUMNS:
        raise VerificationError(f"{path.name}: columns start {names[:2]}, not {ORDERING_COLUMNS}")
    rows = pf.metadata.num_rows
    if rows != expected_rows:
        raise VerificationError(f"{path.name}: {rows} rows, but the inputs hold {expected_rows}")
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
    return Verified(rows, ts_min, ts_max, path.stat().st_size, file_sha256(path))


def _all_equal(values: Any, expected: int) -> bool:
    valid = pc.drop_null(values)
    return bool(pc.all(pc.equal(valid, expected)).as_py())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


