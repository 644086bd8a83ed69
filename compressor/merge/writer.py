"""K-way merge writer: many small raw Parquet files -> one sorted data.parquet.

Plan, then execute:

1. Footers only (schema.scan_inputs): rows and ts_event range per file,
   the unified schema, the columns that are constant across the partition.
2. Runs (plan_runs): the inputs, in key order, are cut into contiguous runs
   such that streaming each run never buffers more rows than the budget allows.
   Rows with ts_event <= W, where W is the smallest ts_event any later file of
   the run can hold (from its footer), are final and leave the buffer. With
   edge overlaps only (the common day) the whole day is one run, written
   straight to the output in one pass with a handful of files in memory.
3. When there are several runs (files that span the day), each is sorted into
   a spill file and the spills are merged k ways, MAX_OPEN_FILES at a time,
   in as many passes as needed.
4. With `processes` > 1 and enough local files, the inputs are first cut into
   contiguous slices: this process merges the first, and each later slice is
   scanned and sorted (steps 1-3) by a process of its own into a run file
   (slices.py, docs/guarantees.md "How a run works"); the slices are then runs like any
   other.

Order: ts_event, then input order, then row order. Within a run that is a
stable sort of the rows in input order; across runs, which are contiguous
ranges of the inputs, ties go to the earlier run. Every step is vectorised
(numpy/Arrow over whole batches), never one Python operation per row.

Output bytes depend only on the inputs: row groups hold exactly
MERGE_OUTPUT_BUFFER_SIZE rows and are handed to the Parquet writer in
fixed-size chunks, so page boundaries do not depend on the path taken.

Where each step lives: schema.py (step 1, on inputs.py and reading.py), plan.py
(step 2's cut and the pieces of big files), runs.py (executing a plan: streaming,
spilling), sorting.py (loading and sorting rows), spill.py (spill runs and the
k-way merge), slice_merge.py (step 4), output.py (data.parquet's bytes),
settings.py (MergeSettings, MergeResult). This module is the entry: one merge,
its inputs named, its output written aside and renamed only when complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa

from compressor.merge.inputs import MemoryInput, Source
from compressor.merge.output import OutputWriter
from compressor.merge.runs import PlannedMerge, never
from compressor.merge.schema import scan_inputs
from compressor.merge.settings import MergeResult, MergeSettings, input_figures
from compressor.merge.slice_merge import in_slices, merge_in_slices


def merge_files(
    inputs: Sequence[Path | MemoryInput | pa.Buffer],
    output: Path,
    *,
    tmp_dir: Path,
    settings: MergeSettings | None = None,
    on_batch: Callable[[pa.Table], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> MergeResult:
    """Merge `inputs` (in raw key order) into one sorted Parquet file at `output`.

    An input is a local file, or a file's bytes in memory: a MemoryInput, whose
    name errors give, or a bare pa.Buffer (named "<input N>", N from 0). Both are
    read the same way: the output bytes depend on the inputs' bytes only.

    Rows are ordered by ts_event; equal ts_event keep input order, then row order.
    A `seq` int64 column (0..N-1) follows ts_event. `on_batch` sees every output
    row group, in order (the quality pass hooks in here). `should_stop` is polled;
    when it returns True the merge removes its partial output and raises
    MergeAborted. Raises MergeInputError subclasses naming the file at fault.
    The output appears at `output` only when complete (written aside, renamed).

    With `settings.processes` > 1 and at least `parallel_min_files` local files,
    slices of the inputs are read and sorted by processes of their own
    (compressor.merge.slices); the output bytes and the errors are the same.
    """
    settings = settings or MergeSettings()
    sources = [_source(item, n) for n, item in enumerate(inputs)]
    stop = should_stop or never
    work = Path(tempfile.mkdtemp(prefix="merge-", dir=tmp_dir))
    partial = output.with_name(f".{output.name}.partial")
    try:
        result = None
        if in_slices(sources, settings):
            result = merge_in_slices(sources, partial, work, settings, on_batch, stop)
        if result is None:
            result = _merge_in_one(sources, partial, work, settings, on_batch, stop)
        os.replace(partial, output)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result.bytes_out = output.stat().st_size
    return result


def _merge_in_one(
    sources: list[Source], partial: Path, work: Path, settings: MergeSettings,
    on_batch: Callable[[pa.Table], None] | None, should_stop: Callable[[], bool],
) -> MergeResult:
    infos, input_schema = scan_inputs(sources)
    result = input_figures(infos)
    job = PlannedMerge.planned(infos, input_schema, settings, work, should_stop, result)
    with OutputWriter(partial, input_schema, settings, on_batch, result) as writer:
        job.run(writer)
    return result


def _source(item: Path | MemoryInput | pa.Buffer, index: int) -> Source:
    if isinstance(item, MemoryInput):
        return item
    if isinstance(item, pa.Buffer):
        return MemoryInput(f"<input {index}>", item)
    return Path(item)
