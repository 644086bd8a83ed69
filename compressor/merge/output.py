"""data.parquet itself: the output schema (seq after ts_event, our version stamped),
the columns stored delta-encoded, and `OutputWriter`, which cuts the sorted rows into
fixed-size row groups, adds seq and the constant columns, shows each group to the
quality pass and writes it from a thread of its own.

Separate because this is where the output bytes are decided: row groups of exactly
`output_buffer_size` rows, in fixed chunks, whatever path sorted the rows
(docs/guarantees.md "How a run works").
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from compressor import __version__
from compressor.merge.inputs import SEQ, TS
from compressor.merge.schema import InputSchema
from compressor.merge.settings import MergeResult, MergeSettings
from compressor.merge.sorting import Sink

#: The merge's log lines keep the logger name they have always had.
log = logging.getLogger("compressor.merge.writer")

#: Rows handed to the Parquet writer per chunk; a multiple of its 1024-row mini-batch.
_WRITE_CHUNK_ROWS = 65_536


class OutputWriter(Sink):
    """data.parquet: fixed-size row groups, seq and constant columns added, written
    by a background thread so compression overlaps with reading and sorting.

    The rows are copied into the group's fixed chunks as they come (`_cut`), so a
    group exists once, as the chunks the writer writes: the writer thread only adds
    seq and the constant columns to each chunk (no copy of the rows) and calls
    on_batch. At most one row group is handed over at a time: the next waits until
    the writer has finished the previous one, so two groups are in memory at most.
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
        #: Rows not yet in a chunk (fewer than the next chunk takes).
        self._tail: list[pa.Table] = []
        self._tail_rows = 0
        #: The group being filled: its chunks so far, and their rows.
        self._group: list[pa.RecordBatch] = []
        self._group_fill = 0
        self._last_ts: int | None = None
        self._queue: queue.Queue[tuple[list[pa.RecordBatch], int] | None] = queue.Queue()
        self._idle = threading.Semaphore(1)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write_loop, name="parquet-writer", daemon=True)
        self._writer: pq.ParquetWriter | None = None
        self._constants: dict[str, pa.Array] = {}

    def __enter__(self) -> OutputWriter:
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
        self._tail.append(table)
        self._tail_rows += table.num_rows
        self._cut(final=False)

    def _flush_all(self) -> None:
        self._cut(final=True)
        if self._group:
            self._emit()

    def _cut(self, final: bool) -> None:
        """Copy the rows so far into contiguous chunks of _WRITE_CHUNK_ROWS, counted
        from each group's first row (the last chunk of a group may be shorter), and
        hand over each full group. Arrow's Parquet writer cuts pages at mini-batch
        boundaries counted from each chunk's start, so the chunks, and with them the
        bytes, must not depend on how the rows came."""
        while self._tail_rows:
            want = min(_WRITE_CHUNK_ROWS, self._group_rows - self._group_fill)
            if self._tail_rows < want and not final:
                return
            take = min(want, self._tail_rows)
            tail = self._tail[0] if len(self._tail) == 1 else pa.concat_tables(self._tail)
            rest = tail.slice(take)
            self._group.extend(tail.slice(0, take).combine_chunks().to_batches())
            self._group_fill += take
            self._tail = [rest] if rest.num_rows else []
            self._tail_rows -= take
            if self._group_fill == self._group_rows:
                self._emit()

    def _emit(self) -> None:
        group, self._group, self._group_fill = self._group, [], 0
        first_seq = self._count(group)
        self._wait_for_writer()
        self._queue.put((group, first_seq))

    def _count(self, group: list[pa.RecordBatch]) -> int:
        """Account for `group` in the result; return the seq of its first row."""
        result = self._result
        first_seq = result.rows
        if result.ts_event_min is None:
            result.ts_event_min = group[0].column(TS)[0].as_py()
        result.ts_event_max = group[-1].column(TS)[-1].as_py()
        result.rows += sum(chunk.num_rows for chunk in group)
        result.row_groups += 1
        if result.rows // self._log_interval != first_seq // self._log_interval:
            log.info("merge progress: %d rows written", result.rows)
        return first_seq

    def _complete(self, group: list[pa.RecordBatch], first_seq: int) -> pa.Table:
        """Add seq and the constant columns to each chunk, in output column order."""
        chunks = []
        seq = first_seq
        for chunk in group:
            rows = chunk.num_rows
            columns = []
            for out_field in self.schema:
                name = out_field.name
                if name == SEQ:
                    columns.append(pa.array(np.arange(seq, seq + rows, dtype=np.int64)))
                elif name in self._input.constants:
                    columns.append(self._constant(name, out_field.type, rows))
                else:
                    columns.append(chunk.column(name))
            chunks.append(pa.RecordBatch.from_arrays(columns, schema=self.schema))
            seq += rows
        return pa.Table.from_batches(chunks, schema=self.schema)

    def _constant(self, name: str, type_: pa.DataType, rows: int) -> pa.Array:
        """A constant column of `rows` rows: a slice of one array every chunk shares."""
        cached = self._constants.get(name)
        if cached is None or len(cached) < rows:
            cached = pa.repeat(pa.scalar(self._input.constants[name], type_),
                               max(rows, _WRITE_CHUNK_ROWS))
            self._constants[name] = cached
        return cached.slice(0, rows)

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
                    del item
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
