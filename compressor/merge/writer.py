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
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from compressor import __version__
from compressor.merge.errors import CorruptFileError, MergeAborted
from compressor.merge.schema import (
    SEQ,
    TS,
    FileInfo,
    InputSchema,
    MemoryInput,
    PieceReader,
    Source,
    conform,
    read_columns,
    row_group_ranges,
    scan_inputs,
)
from compressor.merge.slices import SliceFailed, SliceJob, SliceProcess

log = logging.getLogger(__name__)


#: Rows per batch read from a spill run during the k-way merge (upper bound).
MERGE_BATCH_SIZE = 65_536
#: Rows per output row group; every row group has exactly this many rows but the last.
MERGE_OUTPUT_BUFFER_SIZE = 1_048_576
#: Log a progress line every this many output rows.
MERGE_LOG_INTERVAL = 5_000_000
#: Most spill runs open at once: the fan-in of each merge pass.
MAX_OPEN_FILES = 64
#: zstd level of data.parquet (1-22).
MERGE_ZSTD_LEVEL = 3
#: Default memory budget for buffered rows, bytes.
DEFAULT_MEMORY_BUDGET = 512 * 1024 * 1024
#: Fewest inputs worth slice processes: below this, starting them costs more than it saves.
PARALLEL_MIN_FILES = 1_500

#: Rows handed to the Parquet writer per chunk; a multiple of its 1024-row mini-batch.
_WRITE_CHUNK_ROWS = 65_536
#: Target rows read from raw files between two sorts of the buffer.
_GROUP_ROWS = 131_072
#: Fewest rows per spill batch: below this, per-batch overhead dominates.
_MIN_SPILL_CHUNK = 4_096
#: Copies of a buffered row alive at once while sorting (buffer, concatenation, take).
_SORT_COPIES = 3
#: Fewest rows of a piece of a big file (split_big): smaller pieces cost more per row
#: than they save.
_MIN_PIECE_ROWS = 16_384
#: Rows of a big file read to learn its row size (_row_budget).
_SAMPLE_ROWS = 65_536


#: Environment variable -> (MergeSettings field, smallest allowed, largest allowed).
ENVIRONMENT = {
    "MERGE_BATCH_SIZE": ("batch_size", 1, None),
    "MERGE_OUTPUT_BUFFER_SIZE": ("output_buffer_size", 1, None),
    "MERGE_LOG_INTERVAL": ("log_interval", 1, None),
    "MAX_OPEN_FILES": ("max_open_files", 2, None),
    "MERGE_ZSTD_LEVEL": ("zstd_level", 1, 22),
    "MERGE_PARALLEL_MIN_FILES": ("parallel_min_files", 2, None),
}
_LIMITS = {name: (low, high) for name, low, high in ENVIRONMENT.values()} | {
    "memory_budget": (1, None), "processes": (1, None),
}


@dataclass(frozen=True)
class MergeSettings:
    """Tuning of one merge; defaults are the module constants."""

    memory_budget: int = DEFAULT_MEMORY_BUDGET
    batch_size: int = MERGE_BATCH_SIZE
    output_buffer_size: int = MERGE_OUTPUT_BUFFER_SIZE
    log_interval: int = MERGE_LOG_INTERVAL
    max_open_files: int = MAX_OPEN_FILES
    zstd_level: int = MERGE_ZSTD_LEVEL
    #: Processes that read and sort slices of the inputs (1: this process does it all).
    processes: int = 1
    parallel_min_files: int = PARALLEL_MIN_FILES

    def __post_init__(self) -> None:
        for name, (low, high) in _LIMITS.items():
            value = getattr(self, name)
            if value < low or (high is not None and value > high):
                bounds = f"from {low} to {high}" if high else f">= {low}"
                raise ValueError(f"{name} must be {bounds}, got {value}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: int) -> MergeSettings:
        """The defaults, overridden by ENVIRONMENT variables, then by `overrides`.

        A bad value raises ValueError naming the variable.
        """
        values: dict[str, int] = {}
        for variable, (name, low, high) in ENVIRONMENT.items():
            text = environ.get(variable)
            if text is None:
                continue
            try:
                values[name] = int(text)
                cls(**{name: values[name]})
            except ValueError:
                bounds = f"from {low} to {high}" if high else f">= {low}"
                raise ValueError(f"{variable}={text!r}: want an integer {bounds}") from None
        return cls(**{**values, **overrides})


@dataclass
class MergeResult:
    """Figures of one merge."""

    rows: int = 0
    #: Rows the inputs' footers declare (each file's data is checked against its footer).
    input_rows: int = 0
    ts_event_min: int | None = None
    ts_event_max: int | None = None
    input_files: int = 0
    empty_files: int = 0
    #: Rows whose ts_event is below the previous row's in the same input file.
    unsorted_rows_in_files: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    passes: int = 0
    spill_runs: int = 0
    spill_bytes: int = 0
    peak_buffered_rows: int = 0
    row_groups: int = 0
    columns: list[str] = field(default_factory=list)

    def note_buffered(self, rows: int) -> None:
        self.peak_buffered_rows = max(self.peak_buffered_rows, rows)


@dataclass(frozen=True)
class RunPlan:
    """How the inputs will be merged: contiguous [start, stop) ranges of input indexes."""

    runs: list[tuple[int, int]]
    row_budget: int
    group_rows: int


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
    stop = should_stop or _never
    work = Path(tempfile.mkdtemp(prefix="merge-", dir=tmp_dir))
    partial = output.with_name(f".{output.name}.partial")
    try:
        result = None
        if _in_slices(sources, settings):
            result = _merge_in_slices(sources, partial, work, settings, on_batch, stop)
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
    result = _input_figures(infos)
    job = _Merge.planned(infos, input_schema, settings, work, should_stop, result)
    with _OutputWriter(partial, input_schema, settings, on_batch, result) as writer:
        job.run(writer)
    return result


def _input_figures(infos: Sequence[FileInfo]) -> MergeResult:
    return MergeResult(
        input_files=len(infos),
        empty_files=sum(1 for info in infos if info.rows == 0),
        input_rows=sum(info.rows for info in infos),
        bytes_in=sum(info.size for info in infos),
    )


def _never() -> bool:
    return False


def _source(item: Path | MemoryInput | pa.Buffer, index: int) -> Source:
    if isinstance(item, MemoryInput):
        return item
    if isinstance(item, pa.Buffer):
        return MemoryInput(f"<input {index}>", item)
    return Path(item)


def plan_runs(infos: Sequence[FileInfo], row_budget: int) -> RunPlan:
    """Cut the inputs into runs whose streaming buffer stays within `row_budget` rows.

    Simulates the streaming pass from footer figures alone: after loading file i,
    a file's rows may still be buffered while its ts_max exceeds W_i, the smallest
    ts_min of any later file. The bound is conservative (whole files, W taken over
    all later inputs), so the real buffer is never larger.
    """
    group_rows = max(1, min(_GROUP_ROWS, row_budget // 4))
    limit = max(1, row_budget - group_rows)
    later_min = _suffix_min(infos)
    runs: list[tuple[int, int]] = []
    start, buffered = 0, 0
    pending: list[tuple[int, int]] = []
    for i, info in enumerate(infos):
        if info.rows == 0 or info.ts_max is None:
            continue
        if buffered and buffered + info.rows > limit:
            runs.append((start, i))
            start, buffered, pending = i, 0, []
        heapq.heappush(pending, (info.ts_max, info.rows))
        buffered += info.rows
        while pending and pending[0][0] <= later_min[i + 1]:
            buffered -= heapq.heappop(pending)[1]
    runs.append((start, len(infos)))
    return RunPlan(runs, row_budget, group_rows)


def _suffix_min(infos: Sequence[FileInfo]) -> list[float]:
    """later_min[i] = smallest ts_min among infos[i:], +inf past the end."""
    later_min: list[float] = [float("inf")] * (len(infos) + 1)
    for i in range(len(infos) - 1, -1, -1):
        ts_min = infos[i].ts_min
        later_min[i] = later_min[i + 1] if ts_min is None else min(ts_min, later_min[i + 1])
    return later_min


def _row_budget(infos: Sequence[FileInfo], schema: InputSchema, settings: MergeSettings) -> int:
    """Rows the sort buffer may hold: the budget less the output buffers, per row copy."""
    sample = next((info for info in infos if info.rows), None)
    if sample is None:
        return 1
    if sample.rows > _SAMPLE_ROWS:  # a big file: its first rows tell the row size as well
        sample = split_big([sample], _SAMPLE_ROWS)[0]
    reader = PieceReader(_SAMPLE_ROWS)
    try:
        table = _load(sample, schema, reader)
    finally:
        reader.close()
    row_bytes = max(1, table.nbytes // max(1, table.num_rows))
    constant_bytes = sum(len(str(v)) + 4 for v in schema.constants.values())
    output_bytes = 2 * settings.output_buffer_size * (row_bytes + 8 + constant_bytes)
    return max(1, (settings.memory_budget - output_bytes) // (_SORT_COPIES * row_bytes))


def split_big(infos: Sequence[FileInfo], piece_rows: int) -> list[FileInfo]:
    """The inputs, each file of more than `piece_rows` rows cut into pieces of at most
    that many (batches of its row groups), so that no file is ever loaded whole
    (docs/guarantees.md "How a run works"). A piece's ts_event range is its row
    group's, from the footer (the file's where the row group has no statistics):
    it bounds every row of the piece, which is all that planning needs. Pieces keep
    the file's place in the input order and their row order, so the output is the
    same as if the file had been loaded whole."""
    if all(info.rows <= piece_rows for info in infos):
        return list(infos)
    pieces: list[FileInfo] = []
    for info in infos:
        if info.rows <= piece_rows:
            pieces.append(info)
            continue
        for rg, (rows, low, high) in enumerate(row_group_ranges(info.source)):
            low = info.ts_min if low is None else low
            high = info.ts_max if high is None else high
            for number, start in enumerate(range(0, rows, piece_rows)):
                pieces.append(replace(info, rows=min(piece_rows, rows - start), ts_min=low,
                                      ts_max=high, part=(rg, number)))
    return pieces


def _load(info: FileInfo, schema: InputSchema, pieces: PieceReader) -> pa.Table:
    """One raw file's (or piece's) varying columns, conformed to the partition schema,
    once its constant columns are checked to hold what its footer says."""
    constants = {k: v for k, v in schema.constants.items() if k in info.columns}
    columns = _present_columns(info, schema)
    if info.part is None:
        table = read_columns(info.source, columns, constants)
    else:
        table = pieces.read(info, columns, constants)
    table = conform(info.name, table, schema.varying_schema)
    if table.num_rows != info.rows:
        message = f"footer says {info.rows} rows, data has {table.num_rows}"
        raise CorruptFileError(info.name, message)
    return table


def _present_columns(info: FileInfo, schema: InputSchema) -> list[str]:
    return [name for name in schema.varying if name in info.columns]


class _Merge:
    """Executes a RunPlan into a sink: the output writer, through spill runs if needed."""

    def __init__(
        self,
        infos: Sequence[FileInfo],
        schema: InputSchema,
        plan: RunPlan,
        settings: MergeSettings,
        work: Path,
        should_stop: Callable[[], bool],
        result: MergeResult,
    ) -> None:
        self.infos = infos
        self.schema = schema
        self.plan = plan
        self.settings = settings
        self.work = work
        self.should_stop = should_stop
        self.result = result
        fan_in = settings.max_open_files
        self._spill_numbers = itertools.count()
        self.pieces = PieceReader(_GROUP_ROWS)
        #: (input index, last ts_event) of the piece loaded last, for the unsorted count
        self._tail: tuple[int, int] | None = None
        per_run = plan.row_budget // (fan_in + 1)
        self.spill_chunk = min(settings.batch_size, max(_MIN_SPILL_CHUNK, per_run))

    @classmethod
    def planned(cls, infos: Sequence[FileInfo], schema: InputSchema, settings: MergeSettings,
                work: Path, should_stop: Callable[[], bool], result: MergeResult) -> _Merge:
        """The merge of `infos`, its runs planned within `settings.memory_budget`; files
        too big to load whole within it are read in pieces (`split_big`)."""
        row_budget = _row_budget(infos, schema, settings)
        piece_rows = max(_MIN_PIECE_ROWS, min(_GROUP_ROWS, row_budget // 4))
        pieces = split_big(infos, piece_rows)
        plan = plan_runs(pieces, row_budget)
        merge = cls(pieces, schema, plan, settings, work, should_stop, result)
        merge.pieces = PieceReader(piece_rows)
        return merge

    def run(self, writer: _Sink) -> None:
        try:
            self._run(writer)
        finally:
            self.pieces.close()

    def _run(self, writer: _Sink) -> None:
        self.result.passes = 1
        if len(self.plan.runs) == 1:
            self._stream_run(self.plan.runs[0], writer)
            return
        spills = [self._spill_run(n, run) for n, run in enumerate(self.plan.runs)]
        self.result.spill_runs = len(spills)
        fan_in = self.settings.max_open_files
        while len(spills) > fan_in:
            groups = [spills[i : i + fan_in] for i in range(0, len(spills), fan_in)]
            spills = [self._merge_to_spill(group) for group in groups]
            self.result.passes += 1
        self._merge_spills(spills, writer)
        self.result.passes += 1

    def _check_stop(self) -> None:
        if self.should_stop():
            raise MergeAborted("merge interrupted")

    def _new_spill(self) -> _SpillWriter:
        path = self.work / f"spill-{next(self._spill_numbers):06d}.arrow"
        return _SpillWriter(path, self.schema.varying_schema, self.spill_chunk, self.result)

    def _spill_run(self, number: int, run: tuple[int, int]) -> Path:
        log.debug("sorting run %d (inputs %d..%d) to spill", number, *run)
        with self._new_spill() as sink:
            self._stream_run(run, sink)
        return sink.path

    def _stream_run(self, run: tuple[int, int], sink: _Sink) -> None:
        """Load a run's files in order, releasing rows that no later file can precede."""
        files = [info for info in self.infos[run[0] : run[1]] if info.rows]
        later_min = _suffix_min(files)
        buffer = _SortBuffer()
        for i, info in enumerate(files):
            self._check_stop()
            table, unsorted = _load_checked(info, self.schema, self.pieces)
            self.result.unsorted_rows_in_files += unsorted + self._unsorted_at_cut(info, table)
            buffer.add(table, info.ts_min)
            last = i == len(files) - 1
            if last or buffer.pending_rows >= self.plan.group_rows:
                self.result.note_buffered(buffer.rows)
                released = buffer.release_through(later_min[i + 1])
                if released is not None:
                    sink.write(released)

    def _unsorted_at_cut(self, info: FileInfo, table: pa.Table) -> int:
        """1 if a piece's first row is below the last row of the file's previous piece
        (counted as a whole file's rows would be), else 0."""
        ts = table.column(TS)
        tail, self._tail = self._tail, (info.index, ts[-1].as_py())
        if info.part is None or info.part == (0, 0) or tail is None or tail[0] != info.index:
            return 0
        return int(ts[0].as_py() < tail[1])

    def _merge_to_spill(self, paths: list[Path]) -> Path:
        with self._new_spill() as sink:
            self._merge_spills(paths, sink)
        for path in paths:
            path.unlink()
        return sink.path

    def _merge_spills(self, paths: list[Path], sink: _Sink) -> None:
        _KWay(self.should_stop, self.result).merge([_RunCursor(p) for p in paths], sink)


class _KWay:
    """Vectorised k-way merge of sorted runs that are contiguous in input order.

    Each round finds the run whose current batch ends lowest (ties: the earliest
    run), bound = that last ts. Every row ordered before (bound, that run's last
    row) is final: ts < bound in any run; ts == bound in earlier runs, whose
    batches continue past bound so hold all their ties; the whole batch of
    the bounding run. Those pieces, concatenated in run order and stably
    sorted by ts, are the next output rows.
    """

    def __init__(self, should_stop: Callable[[], bool], result: MergeResult) -> None:
        self.should_stop = should_stop
        self.result = result

    def merge(self, runs: Sequence[_RunCursor], sink: _Sink) -> None:
        cursors = [cursor for cursor in runs if cursor.advance()]
        try:
            while cursors:
                if self.should_stop():
                    raise MergeAborted("merge interrupted")
                self.result.note_buffered(sum(c.ts.size for c in cursors))
                sink.write(self._round(cursors))
                cursors = [c for c in cursors if c.ts.size or c.advance()]
        finally:
            for cursor in cursors:
                cursor.close()

    @staticmethod
    def _round(cursors: list[_RunCursor]) -> pa.Table:
        lasts = [int(cursor.ts[-1]) for cursor in cursors]
        bound = min(lasts)
        first = lasts.index(bound)
        pieces = []
        for i, cursor in enumerate(cursors):
            if i == first:
                cut = cursor.ts.size
            else:
                side: Literal["left", "right"] = "right" if i < first else "left"
                cut = int(np.searchsorted(cursor.ts, bound, side=side))
            if cut:
                pieces.append(cursor.take(cut))
        return _stable_sort(pa.Table.from_batches(pieces))


def _load_checked(info: FileInfo, schema: InputSchema, pieces: PieceReader
                  ) -> tuple[pa.Table, int]:
    """_load, plus a check that the footer's ts_event minimum is true, and the count of
    rows whose ts_event is below the previous row's in the file (for the quality figures).

    The streaming pass releases rows on the strength of later files' footer minima;
    a file whose data undercuts its footer would silently break the order.
    """
    table = _load(info, schema, pieces)
    ts = table.column(TS).to_numpy()
    actual_min = int(np.min(ts))
    if info.ts_min is None or actual_min < info.ts_min:
        raise CorruptFileError(
            info.name, f"ts_event statistics say min {info.ts_min}, data holds {actual_min}", TS
        )
    return table, int(np.count_nonzero(ts[1:] < ts[:-1]))


def _stable_sort(table: pa.Table) -> pa.Table:
    ts = table.column(TS).to_numpy()
    if ts.size < 2 or bool(np.all(ts[1:] >= ts[:-1])):
        return table
    return table.take(np.argsort(ts, kind="stable"))


class _SortBuffer:
    """Rows loaded but not yet released: a sorted part plus loaded tables in input order."""

    def __init__(self) -> None:
        self._sorted: pa.Table | None = None
        self._pending: list[pa.Table] = []
        self.pending_rows = 0
        self.rows = 0
        self._min: float = float("inf")

    def add(self, table: pa.Table, ts_min: int | None) -> None:
        self._pending.append(table)
        self.pending_rows += table.num_rows
        self.rows += table.num_rows
        if ts_min is not None:
            self._min = min(self._min, ts_min)

    def release_through(self, bound: float) -> pa.Table | None:
        """Sort what is buffered and hand out the rows with ts_event <= bound, if any."""
        if self._min > bound:
            return None
        parts = ([self._sorted] if self._sorted is not None else []) + self._pending
        merged = _stable_sort(pa.concat_tables(parts))
        self._pending, self.pending_rows = [], 0
        if bound == float("inf"):
            cut = merged.num_rows
        else:
            ts = merged.column(TS).to_numpy()
            cut = int(np.searchsorted(ts, int(bound), side="right"))
        rest = merged.slice(cut)
        self._sorted = rest if rest.num_rows else None
        self.rows = rest.num_rows
        self._min = float(rest.column(TS)[0].as_py()) if rest.num_rows else float("inf")
        return merged.slice(0, cut) if cut else None


class _Sink:
    """Receives sorted tables, each continuing the order of the previous one."""

    def write(self, table: pa.Table) -> None:
        raise NotImplementedError


class _SpillWriter(_Sink):
    """A sorted run as an Arrow IPC stream in batches of `chunk` rows, on local disk: a
    spill file (lz4), or a slice's output (uncompressed, see `sort_slice`).

    A run that fails is left without its end-of-stream marker, so its reader sees a
    broken stream, never a short one that looks whole.
    """

    def __init__(self, path: Path | str, schema: pa.Schema, chunk: int, result: MergeResult,
                 compress: bool = True) -> None:
        self.path = Path(path)
        self._chunk = chunk
        self._result = result
        self._file = pa.OSFile(str(path), "wb")
        options = pa.ipc.IpcWriteOptions(compression="lz4" if compress else None)
        self._writer = pa.ipc.new_stream(self._file, schema, options=options)

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table, max_chunksize=self._chunk)

    def __enter__(self) -> _SpillWriter:
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        try:
            if exc_type is None:
                self._writer.close()
        finally:
            self._file.close()
        if exc_type is None:
            self._result.spill_bytes += self.path.stat().st_size


class _RunCursor:
    """Reads one spill run batch by batch; `ts` holds the current batch's unread keys."""

    def __init__(self, path: Path) -> None:
        self._source = pa.OSFile(str(path), "rb")
        self._reader = pa.ipc.open_stream(self._source)
        self._batch: pa.RecordBatch | None = None
        self.ts = np.empty(0, dtype=np.int64)

    def advance(self) -> bool:
        """Load the next non-empty batch; False (and closed) at the end of the run."""
        while True:
            try:
                batch = self._reader.read_next_batch()
            except StopIteration:
                self.close()
                return False
            if batch.num_rows:
                self._batch = batch
                self.ts = batch.column(TS).to_numpy()
                return True

    def take(self, rows: int) -> pa.RecordBatch:
        assert self._batch is not None
        piece = self._batch.slice(0, rows)
        self._batch = self._batch.slice(rows)
        self.ts = self.ts[rows:]
        return piece

    def close(self) -> None:
        self._source.close()


class _OutputWriter(_Sink):
    """data.parquet: fixed-size row groups, seq and constant columns added, written
    by a background thread so compression overlaps with reading and sorting.

    The writer thread also adds seq and the constant columns and calls on_batch, so
    that work overlaps with reading too. At most one row group is handed over at
    a time: the next waits until the writer has finished the previous one.
    """

    def __init__(
        self,
        path: Path,
        schema: InputSchema,
        settings: MergeSettings,
        on_batch: Callable[[pa.Table], None] | None,
        result: MergeResult,
    ) -> None:
        self._path = path
        self._input = schema
        self._group_rows = settings.output_buffer_size
        self._log_interval = settings.log_interval
        self._settings = settings
        self._on_batch = on_batch
        self._result = result
        self.schema = output_schema(schema.schema)
        result.columns = self.schema.names
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._last_ts: int | None = None
        self._queue: queue.Queue[tuple[pa.Table, int] | None] = queue.Queue()
        self._idle = threading.Semaphore(1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write_loop, name="parquet-writer", daemon=True)
        self._writer: pq.ParquetWriter | None = None
        self._constants: dict[str, pa.Array] = {}

    def __enter__(self) -> _OutputWriter:
        ts_index = self.schema.get_field_index(TS)
        delta = delta_columns(self.schema)
        self._writer = pq.ParquetWriter(
            str(self._path),
            self.schema,
            compression="zstd",
            compression_level=self._settings.zstd_level,
            use_dictionary=[name for name in self.schema.names if name not in delta],
            column_encoding=dict.fromkeys(delta, "DELTA_BINARY_PACKED"),
            # a constant column's statistics say what every row says; computing them
            # (string comparisons on every row) costs about a seventh of the write
            write_statistics=[n for n in self.schema.names if n not in self._input.constants],
            write_page_index=True,
            sorting_columns=[pq.SortingColumn(ts_index), pq.SortingColumn(ts_index + 1)],
        )
        self._thread.start()
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        try:
            if exc_type is None:
                self._flush_all()
        finally:
            self._queue.put(None)
            self._thread.join()
            assert self._writer is not None
            self._writer.close()
        if self._error is not None and exc_type is None:
            raise self._error

    def write(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        ts = table.column(TS)
        first = ts[0].as_py()
        if self._last_ts is not None and first < self._last_ts:
            raise RuntimeError(f"merge order violated: {first} after {self._last_ts}")
        self._last_ts = ts[-1].as_py()
        self._pending.append(table)
        self._pending_rows += table.num_rows
        while self._pending_rows >= self._group_rows:
            self._emit(self._group_rows)

    def _flush_all(self) -> None:
        if self._pending_rows:
            self._emit(self._pending_rows)

    def _emit(self, rows: int) -> None:
        pending = pa.concat_tables(self._pending)
        group, rest = pending.slice(0, rows), pending.slice(rows)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows
        first_seq = self._count(group)
        self._wait_for_writer()
        self._queue.put((group, first_seq))

    def _count(self, group: pa.Table) -> int:
        """Account for `group` in the result; return the seq of its first row."""
        result = self._result
        first_seq = result.rows
        if result.ts_event_min is None:
            result.ts_event_min = group.column(TS)[0].as_py()
        result.ts_event_max = group.column(TS)[-1].as_py()
        result.rows += group.num_rows
        result.row_groups += 1
        if result.rows // self._log_interval != first_seq // self._log_interval:
            log.info("merge progress: %d rows written", result.rows)
        return first_seq

    def _complete(self, group: pa.Table, first_seq: int) -> pa.Table:
        """Add seq and the constant columns, in output column order, in fixed chunks."""
        rows = group.num_rows
        columns = []
        for out_field in self.schema:
            name = out_field.name
            if name == SEQ:
                columns.append(pa.array(np.arange(first_seq, first_seq + rows, dtype=np.int64)))
            elif name in self._input.constants:
                columns.append(self._constant(name, out_field.type, rows))
            else:
                columns.append(group.column(name))
        return _fixed_chunks(pa.Table.from_arrays(columns, schema=self.schema))

    def _constant(self, name: str, type_: pa.DataType, rows: int) -> pa.Array:
        """A constant column of `rows` rows; every full row group reuses one array."""
        cached = self._constants.get(name)
        if cached is None or len(cached) != rows:
            cached = pa.repeat(pa.scalar(self._input.constants[name], type_), rows)
            self._constants[name] = cached
        return cached

    def _wait_for_writer(self) -> None:
        """Block until the previous row group is written: one complete group in memory."""
        while not self._idle.acquire(timeout=0.5):
            if self._error is not None:
                raise self._error
        if self._error is not None:
            raise self._error

    def _write_loop(self) -> None:
        """Writer thread: complete, show to on_batch, and write each row group in turn."""
        while (item := self._queue.get()) is not None:
            try:
                if self._error is None:
                    # Hand the previous group's memory back to the OS, or the
                    # allocator's cache makes RSS drift above the budget.
                    pa.default_memory_pool().release_unused()
                    table = self._complete(*item)
                    del item  # the rows now live in `table`'s own chunks: free the sources
                    if self._on_batch is not None:
                        self._on_batch(table)
                    assert self._writer is not None
                    self._writer.write_table(table, row_group_size=table.num_rows)
                    del table
            except BaseException as exc:  # surfaced to the merging thread
                self._error = exc
            finally:
                item = None
                self._idle.release()


# --------------------------------------------------------------------------- slices


#: A slice process's figures that the parent adds into its MergeResult.
_SLICE_FIGURES = ("unsorted_rows_in_files", "passes", "spill_runs", "spill_bytes",
                  "peak_buffered_rows")
#: `lower` of later slices that hold no rows at all.
_NO_ROWS = 2**63 - 1


@dataclass(frozen=True)
class SliceSummary:
    """What the parent needs of a slice's footers: its schema view and figures."""

    schema: InputSchema
    input_files: int
    empty_files: int
    input_rows: int
    bytes_in: int
    ts_min: int | None


@dataclass
class ScannedSlice:
    """A slice's footers, as scanned (scan_inputs on the slice)."""

    infos: list[FileInfo]
    schema: InputSchema

    def summary(self) -> SliceSummary:
        figures = _input_figures(self.infos)
        lows = [info.ts_min for info in self.infos if info.rows and info.ts_min is not None]
        return SliceSummary(self.schema, figures.input_files, figures.empty_files,
                            figures.input_rows, figures.bytes_in, min(lows) if lows else None)


def scan_slice(paths: Sequence[Path]) -> ScannedSlice:
    """A slice process's first step: its inputs' footers (errors as scan_inputs)."""
    infos, schema = scan_inputs(list(paths))
    return ScannedSlice(infos, schema)


def sort_slice(scanned: ScannedSlice, settings: MergeSettings, target: str, *,
               work_dir: Path) -> dict[str, int]:
    """A slice process's second step: its rows, sorted as a one-process merge sorts
    them, into the Arrow IPC file `target` (uncompressed: lz4 would cost more CPU
    than the temp disk it saves); returns the figures the parent adds up."""
    work_dir.mkdir(parents=True, exist_ok=True)
    infos, schema = scanned.infos, scanned.schema
    result = _input_figures(infos)
    job = _Merge.planned(infos, schema, settings, work_dir, _never, result)
    with _SpillWriter(target, schema.varying_schema, job.spill_chunk, result,
                      compress=False) as sink:
        job.run(sink)
    return {name: getattr(result, name) for name in _SLICE_FIGURES}


def _in_slices(sources: Sequence[Source], settings: MergeSettings) -> bool:
    """Slice processes read files by path: inputs held in memory stay in this process."""
    return (settings.processes > 1 and len(sources) >= settings.parallel_min_files
            and all(isinstance(source, Path) for source in sources))


def _cut_slices(paths: Sequence[Path], count: int) -> list[list[Path]]:
    """`count` contiguous slices of about equal file counts, none empty.

    A partition's raw files are of a size (the collector flushes every N events or
    T seconds), so counts balance the work as well as bytes would, without a stat
    per file. (Measured on a 17,280-file day: giving this process's slice 50%, 65%
    or 80% of the files made no difference to the wall time.)"""
    cuts = [len(paths) * k // count for k in range(count + 1)]
    return [list(paths[a:b]) for a, b in itertools.pairwise(cuts)]


def _merge_in_slices(
    sources: list[Source], partial: Path, work: Path, settings: MergeSettings,
    on_batch: Callable[[pa.Table], None] | None, should_stop: Callable[[], bool],
) -> MergeResult | None:
    """The merge with its inputs cut into slices (docs/guarantees.md "How a run works").

    This process merges slice 1 itself, as a one-process merge would, while the
    later slices are read and sorted into files by processes of their own
    (slices.py). Slice 1's rows go straight to the output while no later slice
    can hold a row ordered before them (`_Gate`); the rest of them and the later
    slices are then merged k ways, ties to the earlier slice. Returns None, having
    written nothing, when the slices disagree on the schema or the constant
    columns: the caller then merges in one process, which also names the file at
    fault if they conflict. Errors are the one-process merge's, the earliest
    slice's first.
    """
    paths = [source for source in sources if isinstance(source, Path)]
    slices = _cut_slices(paths, min(settings.processes, len(paths)))
    share = replace(settings, memory_budget=max(1, settings.memory_budget // len(slices)))
    child = {"memory_budget": share.memory_budget, "batch_size": settings.batch_size,
             "output_buffer_size": settings.batch_size,
             "max_open_files": settings.max_open_files}
    files = [work / f"slice-{n}.arrow" for n in range(len(slices))]
    processes: list[SliceProcess] = []
    try:
        for n, part in enumerate(slices[1:], start=1):
            job = SliceJob([str(p) for p in part], str(files[n]), str(work / f"slice-{n}"),
                           child)
            processes.append(SliceProcess(f"slice {n + 1} of {len(slices)}", job, str(part[0]),
                                          work / f"slice-{n}.json"))
        own = scan_slice(slices[0])
        summaries = [_expect(process, "scanned", should_stop) for process in processes]
        if any(summary.schema != own.schema for summary in summaries):
            log.info("the slices' schemas differ: merging in one process")
            return None
        result = _slice_figures([own.summary(), *summaries])
        lows = [summary.ts_min for summary in summaries if summary.ts_min is not None]
        with _OutputWriter(partial, own.schema, settings, on_batch, result) as writer:
            rest = _merge_own_slice(own, share, writer, min(lows, default=_NO_ROWS),
                                    files[0], work / "slice-0", should_stop, result)
            figures = [_expect(process, "done", should_stop) for process in processes]
            runs = [_RunCursor(path) for path in [rest, *files[1:]] if path is not None]
            _KWay(should_stop, result).merge(runs, writer)
        _add_figures(result, figures)
        for process in processes:
            process.finish()
        return result
    finally:
        for process in processes:
            process.kill()


def _merge_own_slice(scanned: ScannedSlice, settings: MergeSettings, writer: _Sink,
                     lower: int, rest: Path, work: Path, should_stop: Callable[[], bool],
                     result: MergeResult) -> Path | None:
    """Merge slice 1 here; returns the file of its rows that wait for the later slices."""
    work.mkdir()
    infos, schema = scanned.infos, scanned.schema
    job = _Merge.planned(infos, schema, settings, work, should_stop, result)
    with _Gate(writer, lower, rest, schema.varying_schema, job.spill_chunk, result) as gate:
        job.run(gate)
    return rest if gate.held else None


class _Gate(_Sink):
    """Slice 1's sorted rows: to the output while ts_event <= `lower`, the least
    ts_event of the later slices (no later slice holds a row ordered before them;
    at equal ts_event slice 1 comes first), and from the first row past it on, into
    a run file merged with the later slices."""

    def __init__(self, sink: _Sink, lower: int, path: Path, schema: pa.Schema, chunk: int,
                 result: MergeResult) -> None:
        self._sink = sink
        self._lower = lower
        self._spill = (path, schema, chunk, result)
        self._held: _SpillWriter | None = None

    @property
    def held(self) -> bool:
        return self._held is not None

    def write(self, table: pa.Table) -> None:
        if self._held is None:
            ts = table.column(TS).to_numpy()
            cut = int(np.searchsorted(ts, self._lower, side="right"))
            if cut:
                self._sink.write(table.slice(0, cut))
            if cut == table.num_rows:
                return
            table = table.slice(cut)
            path, schema, chunk, result = self._spill
            self._held = _SpillWriter(path, schema, chunk, result, compress=False)
        self._held.write(table)

    def __enter__(self) -> _Gate:
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        if self._held is not None:
            self._held.__exit__(exc_type, *exc)


def _expect(process: SliceProcess, kind: str, should_stop: Callable[[], bool]) -> Any:
    got, payload = process.receive(should_stop)
    if got != kind:
        raise SliceFailed(f"{process.name}: sent {got!r} where {kind!r} was due")
    return payload


def _slice_figures(summaries: Sequence[SliceSummary]) -> MergeResult:
    return MergeResult(
        input_files=sum(s.input_files for s in summaries),
        empty_files=sum(s.empty_files for s in summaries),
        input_rows=sum(s.input_rows for s in summaries),
        bytes_in=sum(s.bytes_in for s in summaries),
    )


def _add_figures(result: MergeResult, figures: list[dict[str, int]]) -> None:
    """The later slices' figures into this process's (which merged slice 1)."""
    result.unsorted_rows_in_files += sum(f["unsorted_rows_in_files"] for f in figures)
    result.spill_runs = max(1, result.spill_runs) + sum(max(1, f["spill_runs"]) for f in figures)
    result.spill_bytes += sum(f["spill_bytes"] for f in figures)
    result.passes = 1 + max([result.passes] + [f["passes"] for f in figures])
    for f in figures:
        result.note_buffered(f["peak_buffered_rows"])


def _fixed_chunks(table: pa.Table) -> pa.Table:
    """The same rows as contiguous chunks of _WRITE_CHUNK_ROWS, whatever they came as.

    Arrow's Parquet writer cuts pages at mini-batch boundaries counted from each
    chunk's start, so chunking must not depend on how the rows were produced.
    """
    batches = []
    for offset in range(0, table.num_rows, _WRITE_CHUNK_ROWS):
        piece = table.slice(offset, _WRITE_CHUNK_ROWS).combine_chunks()
        batches.extend(piece.to_batches())
    return pa.Table.from_batches(batches, schema=table.schema)


def delta_columns(schema: pa.Schema) -> list[str]:
    """The columns data.parquet stores DELTA_BINARY_PACKED: every 64-bit integer or
    timestamp column (ts_event, seq, ts_recv, trade ids).

    Sorted or nearly sorted 64-bit values are what delta encoding is for: on a bbo
    day it writes the file in about 60% of the CPU of dictionary encoding and makes
    it about a quarter smaller (bench/README.md, "Whole job"). Every Parquet reader
    in use (pyarrow, Polars, DuckDB) reads it. The other columns keep dictionary
    encoding, which suits their few distinct values.
    """
    return [
        f.name
        for f in schema
        if pa.types.is_timestamp(f.type)
        or (pa.types.is_integer(f.type) and f.type.bit_width == 64)
    ]


def output_schema(unified: pa.Schema) -> pa.Schema:
    """The unified input schema with seq right after ts_event and our version stamped."""
    ts_index = unified.get_field_index(TS)
    fields = list(unified)
    fields[ts_index] = fields[ts_index].with_nullable(False)
    fields.insert(ts_index + 1, pa.field(SEQ, pa.int64(), nullable=False))
    metadata = {b"quantlab.compactor_version": __version__.encode()}
    return pa.schema(fields, metadata=metadata)

