"""Planning a merge from footer figures alone: how many rows the sort buffer may hold
(`sort_row_budget`), which files are too big to load whole and are read in pieces
(`split_big`), and where the inputs are cut into runs that each stream within that
buffer (`plan_runs`) (docs/guarantees.md "How a run works").

Separate from executing the plan (runs.py) because a plan is pure arithmetic on
footers that tests check on its own: no rows are sorted here, and only a sample of
one file is read, to learn the row size.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass, replace

from compressor.merge.inputs import FileInfo, row_group_ranges
from compressor.merge.reading import PieceReader
from compressor.merge.schema import InputSchema
from compressor.merge.settings import MergeSettings
from compressor.merge.sorting import load

#: Target rows read from raw files between two sorts of the buffer.
GROUP_ROWS = 131_072
#: Copies of a buffered row alive at once while sorting (buffer, concatenation, take).
_SORT_COPIES = 3
#: Fewest rows of a piece of a big file (split_big): smaller pieces cost more per row
#: than they save.
_MIN_PIECE_ROWS = 16_384
#: Rows of a big file read to learn its row size (sort_row_budget).
_SAMPLE_ROWS = 65_536


@dataclass(frozen=True)
class RunPlan:
    """How the inputs will be merged: contiguous [start, stop) ranges of input indexes."""

    runs: list[tuple[int, int]]
    row_budget: int
    group_rows: int


def plan_runs(infos: Sequence[FileInfo], row_budget: int) -> RunPlan:
    """Cut the inputs into runs whose streaming buffer stays within `row_budget` rows.

    Simulates the streaming pass from footer figures alone: after loading file i,
    a file's rows may still be buffered while its ts_max exceeds W_i, the smallest
    ts_min of any later file. The bound is conservative (whole files, W taken over
    all later inputs), so the real buffer is never larger.
    """
    group_rows = max(1, min(GROUP_ROWS, row_budget // 4))
    limit = max(1, row_budget - group_rows)
    later_min = suffix_min(infos)
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


def suffix_min(infos: Sequence[FileInfo]) -> list[float]:
    """later_min[i] = smallest ts_min among infos[i:], +inf past the end."""
    later_min: list[float] = [float("inf")] * (len(infos) + 1)
    for i in range(len(infos) - 1, -1, -1):
        ts_min = infos[i].ts_min
        later_min[i] = later_min[i + 1] if ts_min is None else min(ts_min, later_min[i + 1])
    return later_min


def sort_row_budget(infos: Sequence[FileInfo], schema: InputSchema, settings: MergeSettings) -> int:
    """Rows the sort buffer may hold: the budget less the output buffers, per row copy."""
    sample = next((info for info in infos if info.rows), None)
    if sample is None:
        return 1
    if sample.rows > _SAMPLE_ROWS:  # a big file: its first rows tell the row size as well
        sample = split_big([sample], _SAMPLE_ROWS)[0]
    reader = PieceReader(_SAMPLE_ROWS)
    try:
        table = load(sample, schema, reader)
    finally:
        reader.close()
    row_bytes = max(1, table.nbytes // max(1, table.num_rows))
    constant_bytes = sum(len(str(v)) + 4 for v in schema.constants.values())
    output_bytes = 2 * settings.output_buffer_size * (row_bytes + 8 + constant_bytes)
    return max(1, (settings.memory_budget - output_bytes) // (_SORT_COPIES * row_bytes))


def piece_rows_for(row_budget: int) -> int:
    """Rows of a piece of a big file when the sort buffer holds `row_budget` rows."""
    return max(_MIN_PIECE_ROWS, min(GROUP_ROWS, row_budget // 4))


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
