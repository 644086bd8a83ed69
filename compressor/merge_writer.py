"""K-way merge writer: many small raw Parquet files -> one sorted data.parquet.

(Implementation in progress; the public API below is fixed.)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

#: Rows read per batch from a spill run during the k-way merge (upper bound).
MERGE_BATCH_SIZE = int(os.environ.get("MERGE_BATCH_SIZE", 65_536))
#: Rows per output row group; the writer never writes a smaller one except the last.
MERGE_OUTPUT_BUFFER_SIZE = int(os.environ.get("MERGE_OUTPUT_BUFFER_SIZE", 1_048_576))
#: Log a progress line every this many output rows.
MERGE_LOG_INTERVAL = int(os.environ.get("MERGE_LOG_INTERVAL", 5_000_000))
#: Most files (raw inputs or spill runs) open at once; caps the fan-in of each merge pass.
MAX_OPEN_FILES = int(os.environ.get("MAX_OPEN_FILES", 64))
#: Default memory budget for buffered rows, bytes.
DEFAULT_MEMORY_BUDGET = 512 * 1024 * 1024


@dataclass(frozen=True)
class MergeSettings:
    """Tuning of one merge; defaults come from the module constants (environment)."""

    memory_budget: int = DEFAULT_MEMORY_BUDGET
    batch_size: int = MERGE_BATCH_SIZE
    output_buffer_size: int = MERGE_OUTPUT_BUFFER_SIZE
    log_interval: int = MERGE_LOG_INTERVAL
    max_open_files: int = MAX_OPEN_FILES


@dataclass
class MergeResult:
    """Figures of one merge."""

    rows: int = 0
    ts_event_min: int | None = None
    ts_event_max: int | None = None
    input_files: int = 0
    empty_files: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    passes: int = 0
    spill_runs: int = 0
    spill_bytes: int = 0
    peak_buffered_rows: int = 0
    row_groups: int = 0
    columns: list[str] = field(default_factory=list)


def merge_files(
    inputs: Sequence[Path],
    output: Path,
    *,
    tmp_dir: Path,
    settings: MergeSettings | None = None,
    on_batch: Callable[[pa.RecordBatch], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> MergeResult:
    """Merge `inputs` (in raw key order) into one sorted Parquet file at `output`.

    Rows are ordered by ts_event; equal ts_event keep input order, then row order.
    A `seq` int64 column (0..N-1) follows ts_event. `on_batch` sees every output
    batch in order (the quality pass hooks in here). `should_stop` is polled; when
    it returns True the merge removes its partial output and raises MergeAborted.
    Raises MergeInputError subclasses naming the file at fault.
    """
    raise NotImplementedError
