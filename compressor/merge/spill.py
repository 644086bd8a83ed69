"""Sorted runs on local disk and their k-way merge: `SpillWriter` writes a run as an
Arrow IPC stream, `RunCursor` reads one back batch by batch, `KWay` merges several,
ties to the earlier run (docs/guarantees.md "How a run works").

Separate from the streaming of one run (runs.py) because the same k-way merge also
joins the slices of a sliced merge (slice_merge.py), whose later slices arrive as
run files written by processes of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from compressor.merge.errors import MergeAborted
from compressor.merge.inputs import TS
from compressor.merge.settings import MergeResult
from compressor.merge.sorting import Sink, stable_sort


class KWay:
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

    def merge(self, runs: Sequence[RunCursor], sink: Sink) -> None:
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
    def _round(cursors: list[RunCursor]) -> pa.Table:
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
        return stable_sort(pa.Table.from_batches(pieces))


class SpillWriter(Sink):
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

    def __enter__(self) -> SpillWriter:
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        try:
            if exc_type is None:
                self._writer.close()
        finally:
            self._file.close()
        if exc_type is None:
            self._result.spill_bytes += self.path.stat().st_size


class RunCursor:
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
