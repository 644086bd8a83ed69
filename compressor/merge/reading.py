"""Reading an input's rows: whole (`read_columns`) or a big file piece by piece
(`PieceReader`), each read checking the constant columns against the one value the
footers' statistics promised, and time columns as int64 milliseconds (`to_ms_array`).

Separate from the footer scan (schema.py), which reads no rows: this is the data path,
where a footer that lies about its rows or its constants is caught
(docs/guarantees.md "How a run works").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from compressor.merge.errors import BadTsEventTypeError, CorruptFileError
from compressor.merge.inputs import (
    READ_ERRORS,
    TS,
    FileInfo,
    Source,
    first_line,
    open_input,
    read_failed,
    source_name,
    value_type,
)


def to_ms_array(
    path: Path | str, column: pa.ChunkedArray | pa.Array, name: str = TS
) -> pa.ChunkedArray | pa.Array:
    """A time column as int64 milliseconds, whatever integer or timestamp type it has.

    Never changes a value silently: sub-millisecond timestamps or an unsigned value
    beyond int64 raise BadTsEventTypeError naming `path` and `name`.
    """
    col_type = value_type(column.type)
    if pa.types.is_dictionary(column.type):
        column = column.cast(col_type)
    try:
        if pa.types.is_timestamp(col_type):
            column = column.cast(pa.timestamp("ms"))
        return column.cast(pa.int64())
    except pa.ArrowInvalid as exc:
        raise BadTsEventTypeError(
            path, f"{name} is not int64 milliseconds ({first_line(exc)})", name
        ) from None


def read_columns(
    source: Source, columns: Sequence[str], constants: Mapping[str, Any] | None = None
) -> pa.Table:
    """Read some columns of one file (on disk or in memory); with `constants` (columns
    the file has), also check that each holds its value in every row (CorruptFileError
    naming the column otherwise, see `_check_constant`); they are not returned.

    The bytes failing to decode is a CorruptFileError; anything else (open files,
    memory, permissions, I/O) is a MergeResourceError, see `_is_decode_failure`.
    """
    constants = constants or {}
    strings = [name for name, value in constants.items() if isinstance(value, str)]
    with open_input(source, "Parquet data") as handle:
        try:
            # pre_buffer=False: for tiny files the coalescing read costs more than it saves.
            reader = pq.ParquetFile(handle, pre_buffer=False, read_dictionary=strings or None)
            table = reader.read(columns=[*columns, *constants], use_threads=False)
        except READ_ERRORS as exc:
            read_failed(source_name(source), "Parquet data", exc)
    for name, value in constants.items():
        _check_constant(source, name, value, table.column(name))
    return table.drop_columns(list(constants)) if constants else table


def _check_constant(source: Source, name: str, value: Any, column: pa.ChunkedArray) -> None:
    """Raise CorruptFileError unless every row of `column` holds `value`, the one value
    the footers' statistics promised (docs/guarantees.md "How a run works").

    The merge writes a constant column from the statistics alone, so a footer that
    says min == max while the rows differ would publish the wrong value for every
    row. Cheap: a string column is read as a dictionary and checked through the
    entries its indices use (one entry, the common case, is a single comparison),
    an integer one by its min and max; never row by row in Python."""
    if not column.null_count and all(_holds_only(chunk, value) for chunk in column.chunks):
        return
    found = _values_used(column) if not column.null_count else [None]
    wrong = [v for v in found if v != value]
    if wrong:
        raise CorruptFileError(
            source_name(source),
            f"statistics say every row holds {value!r}, a row holds {wrong[0]!r}", name)


def _holds_only(chunk: pa.Array, value: Any) -> bool:
    """The common case, answered in a call or two: a one-entry dictionary equal to
    `value`, or integers whose min and max are `value`. False means: look closer."""
    if isinstance(chunk, pa.DictionaryArray):
        dictionary = chunk.dictionary
        return len(dictionary) == 1 and dictionary[0].as_py() == value
    if isinstance(chunk, pa.IntegerArray) and len(chunk):
        values = chunk.to_numpy()
        return int(values.min()) == value == int(values.max())
    return False


def _values_used(column: pa.ChunkedArray) -> list[Any]:
    """The distinct values `column` holds (no nulls), at most two of them."""
    found: list[Any] = []
    for chunk in column.chunks:
        for item in _chunk_values(chunk):
            if item not in found:
                found.append(item)
        if len(found) > 1:
            break
    return found


def _chunk_values(chunk: pa.Array) -> list[Any]:
    """A chunk's distinct values, or two of them; one call into Arrow when constant."""
    if len(chunk) == 0:
        return []
    if pa.types.is_dictionary(chunk.type):
        if len(chunk.dictionary) == 1:  # the common case: nothing to decode
            return [chunk.dictionary[0].as_py()]
        return chunk.dictionary.take(pc.unique(chunk.indices)).to_pylist()
    if pa.types.is_integer(chunk.type):  # no nulls here: numpy reads it in place
        values = chunk.to_numpy()
        return list(dict.fromkeys([int(values.min()), int(values.max())]))
    return pc.unique(chunk).to_pylist()


class PieceReader:
    """Reads a big input piece by piece: one row group at a time, in batches of
    `batch_rows`, never the whole file (docs/guarantees.md "How a run works").

    The pieces of a file are asked for in order, so one open reader serves them all;
    a piece asked for out of order opens the file again. The constant columns are
    checked on every batch, as `read_columns` checks a whole file."""

    def __init__(self, batch_rows: int) -> None:
        self._batch_rows = batch_rows
        self._at: tuple[int, int, int] | None = None  # (input index, row group, next batch)
        self._batches: Any = None
        self._handle: pa.NativeFile | None = None

    def read(self, info: FileInfo, columns: Sequence[str], constants: Mapping[str, Any]
             ) -> pa.Table:
        assert info.part is not None
        row_group, number = info.part
        if self._at != (info.index, row_group, number):
            self._start(info, columns, constants, row_group, number)
        try:
            batch = next(self._batches, None)
        except READ_ERRORS as exc:
            self.close()
            read_failed(info.name, "Parquet data", exc)
        self._at = (info.index, row_group, number + 1)
        if batch is None:
            self.close()
            raise CorruptFileError(info.name, f"row group {row_group} holds fewer rows than "
                                              "its footer says")
        table = pa.Table.from_batches([batch])
        for name, value in constants.items():
            _check_constant(info.source, name, value, table.column(name))
        return table.drop_columns(list(constants)) if constants else table

    def _start(self, info: FileInfo, columns: Sequence[str], constants: Mapping[str, Any],
               row_group: int, number: int) -> None:
        self.close()
        self._handle = open_input(info.source, "Parquet data")
        strings = [name for name, value in constants.items() if isinstance(value, str)]
        try:
            # buffer_size: pages are read as needed, not the whole column chunk at once
            reader = pq.ParquetFile(self._handle, pre_buffer=False, buffer_size=1 << 20,
                                    read_dictionary=strings or None)
            self._batches = reader.iter_batches(
                batch_size=self._batch_rows, row_groups=[row_group],
                columns=[*columns, *constants], use_threads=False)
            for _ in range(number):
                next(self._batches, None)
        except READ_ERRORS as exc:
            self.close()
            read_failed(info.name, "Parquet data", exc)

    def close(self) -> None:
        self._batches = None
        self._at = None
        if self._handle is not None:
            self._handle.close()
            self._handle = None
