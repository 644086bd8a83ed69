"""The merge with its inputs cut into slices (docs/guarantees.md "How a run works"):
this process merges the first slice itself while each later slice is scanned and
sorted by a process of its own (slices.py starts them and talks to them,
worker.py is their side), then the slices are merged k ways, ties to the earlier
slice, so the output is the one-process merge's, byte for byte.

Separate from slices.py, which knows processes and messages only (no pyarrow), and
from the one-process merge (writer.py), which this path falls back to when the
slices disagree on the schema.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from compressor.merge.inputs import TS, FileInfo, Source
from compressor.merge.output import OutputWriter
from compressor.merge.runs import PlannedMerge, never
from compressor.merge.schema import InputSchema, scan_inputs
from compressor.merge.settings import MergeResult, MergeSettings, input_figures
from compressor.merge.slices import SPARES, SliceFailed, SliceJob, SliceProcess
from compressor.merge.sorting import Sink
from compressor.merge.spill import KWay, RunCursor, SpillWriter

#: The merge's log lines keep the logger name they have always had.
log = logging.getLogger("compressor.merge.writer")

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
        figures = input_figures(self.infos)
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
    result = input_figures(infos)
    job = PlannedMerge.planned(infos, schema, settings, work_dir, never, result)
    with SpillWriter(target, schema.varying_schema, job.spill_chunk, result,
                      compress=False) as sink:
        job.run(sink)
    return {name: getattr(result, name) for name in _SLICE_FIGURES}


def in_slices(sources: Sequence[Source], settings: MergeSettings) -> bool:
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


def merge_in_slices(
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
            process = SPARES.take()
            processes.append(process)
            process.give(f"slice {n + 1} of {len(slices)}", job, str(part[0]),
                         work / f"slice-{n}.json")
        own = scan_slice(slices[0])
        summaries = [_expect(process, "scanned", should_stop) for process in processes]
        if any(summary.schema != own.schema for summary in summaries):
            log.info("the slices' schemas differ: merging in one process")
            return None
        result = _slice_figures([own.summary(), *summaries])
        lows = [summary.ts_min for summary in summaries if summary.ts_min is not None]
        with OutputWriter(partial, own.schema, settings, on_batch, result) as writer:
            rest = _merge_own_slice(own, share, writer, min(lows, default=_NO_ROWS),
                                    files[0], work / "slice-0", should_stop, result)
            figures = [_expect(process, "done", should_stop) for process in processes]
            runs = [RunCursor(path) for path in [rest, *files[1:]] if path is not None]
            KWay(should_stop, result).merge(runs, writer)
        _add_figures(result, figures)
        for process in processes:
            process.finish()
        return result
    finally:
        for process in processes:
            process.kill()


def _merge_own_slice(scanned: ScannedSlice, settings: MergeSettings, writer: Sink,
                     lower: int, rest: Path, work: Path, should_stop: Callable[[], bool],
                     result: MergeResult) -> Path | None:
    """Merge slice 1 here; returns the file of its rows that wait for the later slices."""
    work.mkdir()
    infos, schema = scanned.infos, scanned.schema
    job = PlannedMerge.planned(infos, schema, settings, work, should_stop, result)
    with _Gate(writer, lower, rest, schema.varying_schema, job.spill_chunk, result) as gate:
        job.run(gate)
    return rest if gate.held else None


class _Gate(Sink):
    """Slice 1's sorted rows: to the output while ts_event <= `lower`, the least
    ts_event of the later slices (no later slice holds a row ordered before them;
    at equal ts_event slice 1 comes first), and from the first row past it on, into
    a run file merged with the later slices."""

    def __init__(self, sink: Sink, lower: int, path: Path, schema: pa.Schema, chunk: int,
                 result: MergeResult) -> None:
        self._sink = sink
        self._lower = lower
        self._spill = (path, schema, chunk, result)
        self._held: SpillWriter | None = None

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
            self._held = SpillWriter(path, schema, chunk, result, compress=False)
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
