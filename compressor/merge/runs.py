"""Executing a RunPlan (plan.py) into a sink: one run streams straight through the sort
buffer; several runs are each sorted into a spill file, then merged k ways,
MAX_OPEN_FILES at a time, in as many passes as needed.

Separate from the plan (pure arithmetic on footers) and from the output (output.py):
this is the only place that decides between streaming and spilling, and the same
execution sorts a slice process's rows (slice_merge.sort_slice).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import pyarrow as pa

from compressor.merge.errors import MergeAborted
from compressor.merge.inputs import TS, FileInfo
from compressor.merge.plan import (
    GROUP_ROWS,
    RunPlan,
    piece_rows_for,
    plan_runs,
    sort_row_budget,
    split_big,
    suffix_min,
)
from compressor.merge.reading import PieceReader
from compressor.merge.schema import InputSchema
from compressor.merge.settings import MergeResult, MergeSettings
from compressor.merge.sorting import Sink, SortBuffer, load_checked
from compressor.merge.spill import KWay, RunCursor, SpillWriter

#: The merge's log lines keep the logger name they have always had.
log = logging.getLogger("compressor.merge.writer")

#: Fewest rows per spill batch: below this, per-batch overhead dominates.
_MIN_SPILL_CHUNK = 4_096


def never() -> bool:
    return False


class PlannedMerge:
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
        self.pieces = PieceReader(GROUP_ROWS)
        #: (input index, last ts_event) of the piece loaded last, for the unsorted count
        self._tail: tuple[int, int] | None = None
        per_run = plan.row_budget // (fan_in + 1)
        self.spill_chunk = min(settings.batch_size, max(_MIN_SPILL_CHUNK, per_run))

    @classmethod
    def planned(cls, infos: Sequence[FileInfo], schema: InputSchema, settings: MergeSettings,
                work: Path, should_stop: Callable[[], bool], result: MergeResult) -> PlannedMerge:
        """The merge of `infos`, its runs planned within `settings.memory_budget`; files
        too big to load whole within it are read in pieces (`split_big`)."""
        row_budget = sort_row_budget(infos, schema, settings)
        piece_rows = piece_rows_for(row_budget)
        pieces = split_big(infos, piece_rows)
        plan = plan_runs(pieces, row_budget)
        merge = cls(pieces, schema, plan, settings, work, should_stop, result)
        merge.pieces = PieceReader(piece_rows)
        return merge

    def run(self, writer: Sink) -> None:
        try:
            self._run(writer)
        finally:
            self.pieces.close()

    def _run(self, writer: Sink) -> None:
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

    def _new_spill(self) -> SpillWriter:
        path = self.work / f"spill-{next(self._spill_numbers):06d}.arrow"
        return SpillWriter(path, self.schema.varying_schema, self.spill_chunk, self.result)

    def _spill_run(self, number: int, run: tuple[int, int]) -> Path:
        log.debug("sorting run %d (inputs %d..%d) to spill", number, *run)
        with self._new_spill() as sink:
            self._stream_run(run, sink)
        return sink.path

    def _stream_run(self, run: tuple[int, int], sink: Sink) -> None:
        """Load a run's files in order, releasing rows that no later file can precede."""
        files = [info for info in self.infos[run[0] : run[1]] if info.rows]
        later_min = suffix_min(files)
        buffer = SortBuffer()
        for i, info in enumerate(files):
            self._check_stop()
            table, unsorted = load_checked(info, self.schema, self.pieces)
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

    def _merge_spills(self, paths: list[Path], sink: Sink) -> None:
        KWay(self.should_stop, self.result).merge([RunCursor(p) for p in paths], sink)
