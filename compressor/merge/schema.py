"""What the merge learns from the inputs' footers before it reads a row.

One pass over the footers gives, per file, its row count and ts_event range
(from column statistics, so no data is read), and for the partition the
unified output schema and the columns that hold one constant value everywhere
(those are not carried through the sort at all, only re-created at write time).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, NoReturn

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from compressor.merge.errors import (
    BadTsEventTypeError,
    CorruptFileError,
    MergeResourceError,
    MissingTsEventError,
    NullTsEventError,
    SchemaConflictError,
)

TS = "ts_event"
SEQ = "seq"

_SIGNED = [pa.int8(), pa.int16(), pa.int32(), pa.int64()]
_UNSIGNED_TO_SIGNED = {
    pa.uint8(): pa.int16(),
    pa.uint16(): pa.int32(),
    pa.uint32(): pa.int64(),
}
_NO_VALUE = object()


@dataclass(frozen=True)
class MemoryInput:
    """One input's bytes in memory; errors name it `name` (the fetch gives its raw key)."""

    name: str
    data: pa.Buffer


#: One input of the merge: a local Parquet file, or a file's bytes in memory. Both are
#: read alike (the same reader, the same reads), so the output bytes never depend on it.
Source = Path | MemoryInput


def source_name(source: Source) -> str:
    """How errors name an input: a file by its path, bytes by their name."""
    return source.name if isinstance(source, MemoryInput) else str(source)


def source_size(source: Source) -> int:
    return source.data.size if isinstance(source, MemoryInput) else source.stat().st_size


@dataclass(frozen=True)
class FileInfo:
    """One input as its footer describes it."""

    source: Source
    index: int
    rows: int
    size: int
    ts_min: int | None
    ts_max: int | None
    columns: frozenset[str]
    #: A piece of a file too big to load whole: (row group, batch number within it);
    #: `rows`, `ts_min` and `ts_max` are then the piece's (see writer.split_big).
    part: tuple[int, int] | None = None

    @property
    def name(self) -> str:
        return source_name(self.source)


@dataclass(frozen=True)
class InputSchema:
    """The partition's unified view of its inputs.

    `schema` is the output schema without `seq`; `constants` maps a column that holds
    one non-null value in every row of every file to that value; `varying` is the
    list of the other columns, the ones that are read and sorted.
    """

    schema: pa.Schema
    constants: dict[str, Any]
    varying: list[str]

    @cached_property
    def varying_schema(self) -> pa.Schema:
        return pa.schema([self.schema.field(name) for name in self.varying])


def scan_inputs(sources: Sequence[Source]) -> tuple[list[FileInfo], InputSchema]:
    """Read every footer once; raise the typed error naming the first bad file."""
    infos: list[FileInfo] = []
    unifier = _SchemaUnifier()
    constants = _ConstantTracker()
    seen = _SeenSchemas()
    for index, source in enumerate(sources):
        path = source_name(source)
        size = source_size(source)
        metadata = _read_footer(source, size)
        known = seen.get(metadata)
        if known is None:
            schema = _arrow_schema(path, metadata)
            _check_ts_type(path, schema)
            unifier.add(path, schema)
            known = seen.add(metadata, schema)
        ts_min, ts_max = _ts_range(source, metadata, known.schema)
        constants.add(metadata, known.schema)
        infos.append(
            FileInfo(source, index, metadata.num_rows, size, ts_min, ts_max, known.columns)
        )
    unified = unifier.result()
    consts = {name: value for name, value in constants.result().items() if name != TS}
    varying = [name for name in unified.names if name not in consts]
    return infos, InputSchema(unified, consts, varying)


@dataclass(frozen=True)
class _KnownSchema:
    schema: pa.Schema
    columns: frozenset[str]


class _SeenSchemas:
    """The Arrow schemas already derived from footers, by what they are derived from.

    A day's files almost all share one footer schema: converting and checking it
    once, not once per file, is most of what the footer scan spends beyond
    parsing. What we use of the Arrow schema (names and types) is a function of
    the Parquet schema and the footer's ARROW:schema entry, so both must match for
    a reuse (other key-value metadata, such as pandas', differs file to file).
    """

    def __init__(self) -> None:
        self._known: list[tuple[pq.ParquetSchema, bytes | None, _KnownSchema]] = []

    def get(self, metadata: pq.FileMetaData) -> _KnownSchema | None:
        if not self._known:
            return None
        parquet_schema, arrow_entry = metadata.schema, _arrow_entry(metadata)
        for n, (known_schema, known_entry, known) in enumerate(self._known):
            if known_entry == arrow_entry and parquet_schema.equals(known_schema):
                if n:
                    self._known.insert(0, self._known.pop(n))
                return known
        return None

    def add(self, metadata: pq.FileMetaData, schema: pa.Schema) -> _KnownSchema:
        known = _KnownSchema(schema, frozenset(schema.names))
        self._known.insert(0, (metadata.schema, _arrow_entry(metadata), known))
        del self._known[8:]  # a handful of layouts at most; never a file's worth each
        return known


def _arrow_entry(metadata: pq.FileMetaData) -> bytes | None:
    key_values = metadata.metadata
    return key_values.get(b"ARROW:schema") if key_values else None


#: What reading an open input may raise; `_is_decode_failure` sorts it into bytes/resources.
_READ_ERRORS = (OSError, pa.ArrowException, ValueError, MemoryError)
#: Exceptions pyarrow raises when the bytes themselves do not decode (ArrowInvalid and
#: UnicodeDecodeError are ValueErrors; errno-less OSErrors are checked separately).
_DECODE_TYPES = (ValueError, pa.ArrowNotImplementedError, pa.ArrowTypeError)
#: A C++ allocation failure that Parquet rewraps as an errno-less OSError (e.g.
#: "Couldn't deserialize thrift: std::bad_alloc") is still memory, not the bytes.
_MEMORY_WORDS = ("bad_alloc", "out of memory", "cannot allocate memory")


def _is_decode_failure(exc: BaseException) -> bool:
    """True when `exc`, raised while decoding an input that opened fine, is about its bytes.

    Only the object's own bytes failing to decode make it corrupt; a corrupt verdict
    quarantines the partition or, with --skip-corrupt, drops the file, so anything
    else must fail the partition (retryably) instead. Measured with pyarrow 26:

    - the OS failed, not the bytes, whenever the error has an errno: EMFILE, ENOMEM,
      EACCES, EIO, ENOSPC arrive as OSError with `errno` set (opening a file is never
      about its bytes at all, so `_open` does not even ask);
    - MemoryError, including pa.ArrowMemoryError ("malloc of size N failed"), and a
      std::bad_alloc rewrapped as text, are resources;
    - the bytes: ArrowInvalid (bad magic, "Parquet file size is 0 bytes", footer
      length beyond the file), ArrowNotImplementedError/ArrowTypeError (nonsense
      types), UnicodeDecodeError (garbled schema metadata), and every errno-less
      OSError, which is how Parquet's own decoder reports damage ("Couldn't
      deserialize thrift", "Corrupt snappy compressed data.", "Unexpected end of
      stream", "ZSTD decompression failed", ... too many wordings to list by name).

    Anything else (ArrowCapacityError, ArrowCancelled, ...) is not called corrupt:
    failing safe keeps every file.
    """
    if isinstance(exc, MemoryError):
        return False
    if isinstance(exc, OSError):
        return exc.errno is None and not any(
            word in str(exc).lower() for word in _MEMORY_WORDS
        )
    return isinstance(exc, _DECODE_TYPES)


def _read_failed(path: Path | str, what: str, exc: BaseException) -> NoReturn:
    """Raise CorruptFileError if `exc` is the bytes failing to decode, else MergeResourceError."""
    if _is_decode_failure(exc):
        raise CorruptFileError(path, f"unreadable {what} ({_first_line(exc)})") from None
    raise MergeResourceError(path, f"reading {what}", exc) from exc


def _open(source: Source, what: str) -> pa.NativeFile:
    """Open one input. Failing to open (EMFILE, EACCES, a directory) never blames its bytes."""
    if isinstance(source, MemoryInput):
        return pa.BufferReader(source.data)
    try:
        return pa.OSFile(str(source))
    except (OSError, pa.ArrowException) as exc:
        raise MergeResourceError(source, f"opening the input for its {what}", exc) from exc


def _read_footer(source: Source, size: int) -> pq.FileMetaData:
    path = source_name(source)
    with _open(source, "Parquet footer") as reader:
        try:
            metadata = pq.read_metadata(reader)
        except _READ_ERRORS as exc:
            _read_failed(path, "Parquet footer", exc)
    _check_not_concatenated(source, metadata, size)
    return metadata


def _read_at(source: Source, offset: int, length: int) -> bytes:
    if isinstance(source, MemoryInput):
        return source.data.slice(offset, length).to_pybytes()
    with open(source, "rb") as fh:
        fh.seek(offset)
        return fh.read(length)


def _check_not_concatenated(source: Source, metadata: pq.FileMetaData, size: int) -> None:
    """Reject two Parquet files concatenated into one object.

    Such an object keeps the second file's footer, whose offsets count from the
    second file's start: the data it describes seems to end `len(first file)`
    bytes before the footer, and there the first file's closing magic meets the
    second's opening one (b"PAR1PAR1"). Left alone, the footer's offsets point
    into the first file and can decode silently as the wrong rows. Page indexes
    also sit between data and footer at offsets pyarrow does not expose, so files
    with them are left to the data checks.
    """
    path = source_name(source)
    footer_start = size - 8 - metadata.serialized_size
    data_end = 4
    for rg in range(metadata.num_row_groups):
        row_group = metadata.row_group(rg)
        for col in range(row_group.num_columns):
            chunk = row_group.column(col)
            if chunk.has_column_index or chunk.has_offset_index:
                return
            start = chunk.dictionary_page_offset or chunk.data_page_offset
            data_end = max(data_end, start + chunk.total_compressed_size)
    first_length = footer_start - data_end
    if first_length < 0:
        raise CorruptFileError(path, "footer describes data beyond the object (truncated?)")
    if first_length >= 8:
        try:
            joint = _read_at(source, first_length - 4, 8)
        except OSError as exc:
            raise MergeResourceError(path, "reading the layout check", exc) from exc
        if joint == b"PAR1PAR1":
            raise CorruptFileError(
                path, f"two Parquet files concatenated (the second starts at {first_length})"
            )


def _arrow_schema(path: Path | str, metadata: pq.FileMetaData) -> pa.Schema:
    try:
        return metadata.schema.to_arrow_schema()
    except _READ_ERRORS as exc:
        _read_failed(path, "schema", exc)


def _check_ts_type(path: Path | str, schema: pa.Schema) -> None:
    if TS not in schema.names:
        raise MissingTsEventError(path, "no ts_event column", TS)
    ts_type = _value_type(schema.field(TS).type)
    if not (pa.types.is_integer(ts_type) or pa.types.is_timestamp(ts_type)):
        raise BadTsEventTypeError(path, f"ts_event has type {ts_type}, want int64 ms", TS)


def _ts_range(
    source: Source, metadata: pq.FileMetaData, schema: pa.Schema
) -> tuple[int | None, int | None]:
    """(min, max) of ts_event in ms from statistics; read the column if they are missing."""
    if metadata.num_rows == 0:
        return None, None
    column = schema.get_field_index(TS)
    lows, highs, nulls = [], [], 0
    for rg in range(metadata.num_row_groups):
        stats = metadata.row_group(rg).column(column).statistics
        if stats is None or not stats.has_min_max or not stats.has_null_count:
            return _ts_range_from_data(source)
        lows.append(stats.min)
        highs.append(stats.max)
        nulls += stats.null_count
    if nulls:
        raise NullTsEventError(source_name(source), f"ts_event has {nulls} null values", TS)
    return _to_ms(min(lows)), _to_ms(max(highs))


def _ts_range_from_data(source: Source) -> tuple[int, int]:
    path = source_name(source)
    column = read_columns(source, [TS]).column(TS)
    if column.null_count:
        raise NullTsEventError(path, f"ts_event has {column.null_count} null values", TS)
    ts = to_ms_array(path, column)
    bounds = pc.min_max(ts)
    return bounds["min"].as_py(), bounds["max"].as_py()


def _to_ms(value: Any) -> int:
    if isinstance(value, int):
        return value
    return int(pa.scalar(value, pa.timestamp("us")).cast(pa.int64()).as_py() // 1000)


def to_ms_array(
    path: Path | str, column: pa.ChunkedArray | pa.Array, name: str = TS
) -> pa.ChunkedArray | pa.Array:
    """A time column as int64 milliseconds, whatever integer or timestamp type it has.

    Never changes a value silently: sub-millisecond timestamps or an unsigned value
    beyond int64 raise BadTsEventTypeError naming `path` and `name`.
    """
    col_type = _value_type(column.type)
    if pa.types.is_dictionary(column.type):
        column = column.cast(col_type)
    try:
        if pa.types.is_timestamp(col_type):
            column = column.cast(pa.timestamp("ms"))
        return column.cast(pa.int64())
    except pa.ArrowInvalid as exc:
        raise BadTsEventTypeError(
            path, f"{name} is not int64 milliseconds ({_first_line(exc)})", name
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
    with _open(source, "Parquet data") as handle:
        try:
            # pre_buffer=False: for tiny files the coalescing read costs more than it saves.
            reader = pq.ParquetFile(handle, pre_buffer=False, read_dictionary=strings or None)
            table = reader.read(columns=[*columns, *constants], use_threads=False)
        except _READ_ERRORS as exc:
            _read_failed(source_name(source), "Parquet data", exc)
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


def row_group_ranges(source: Source) -> list[tuple[int, int | None, int | None]]:
    """(rows, ts_event min, max in ms) of each row group of one input, from its footer's
    statistics; (rows, None, None) where a row group has none."""
    metadata = _read_footer(source, source_size(source))
    column = _arrow_schema(source_name(source), metadata).get_field_index(TS)
    ranges: list[tuple[int, int | None, int | None]] = []
    for rg in range(metadata.num_row_groups):
        group = metadata.row_group(rg)
        stats = group.column(column).statistics
        if stats is None or not stats.has_min_max:
            ranges.append((group.num_rows, None, None))
        else:
            ranges.append((group.num_rows, _to_ms(stats.min), _to_ms(stats.max)))
    return ranges


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
        except _READ_ERRORS as exc:
            self.close()
            _read_failed(info.name, "Parquet data", exc)
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
        self._handle = _open(info.source, "Parquet data")
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
        except _READ_ERRORS as exc:
            self.close()
            _read_failed(info.name, "Parquet data", exc)

    def close(self) -> None:
        self._batches = None
        self._at = None
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def conform(path: Path | str, table: pa.Table, target: pa.Schema) -> pa.Table:
    """Cast one file's table to `target`: widen, decode dictionaries, fill missing columns."""
    if table.schema.remove_metadata().equals(target):
        return table
    columns = []
    for field in target:
        if field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        column = table.column(field.name)
        if field.name == TS:
            column = to_ms_array(path, column)
        try:
            columns.append(column.cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SchemaConflictError(
                path, f"cannot cast {column.type} to {field.type} ({_first_line(exc)})", field.name
            ) from None
    return pa.Table.from_arrays(columns, schema=target)


class _SchemaUnifier:
    """Union of the files' columns by name, first-seen order, widened types."""

    def __init__(self) -> None:
        self._types: dict[str, pa.DataType] = {}

    def add(self, path: Path | str, schema: pa.Schema) -> None:
        for field in schema:
            if field.name == SEQ:
                raise SchemaConflictError(path, "raw file already has a seq column", SEQ)
            new = pa.int64() if field.name == TS else _value_type(field.type)
            old = self._types.get(field.name)
            self._types[field.name] = new if old is None else _widen(path, field.name, old, new)

    def result(self) -> pa.Schema:
        fields = []
        for name, type_ in self._types.items():
            fields.append(pa.field(name, pa.string() if pa.types.is_null(type_) else type_))
        return pa.schema(fields)


def _value_type(type_: pa.DataType) -> pa.DataType:
    return type_.value_type if pa.types.is_dictionary(type_) else type_


def _widen(path: Path | str, name: str, old: pa.DataType, new: pa.DataType) -> pa.DataType:
    """The narrowest type both `old` and `new` values fit in without loss."""
    if old == new or pa.types.is_null(new):
        return old
    if pa.types.is_null(old):
        return new
    old, new = _UNSIGNED_TO_SIGNED.get(old, old), _UNSIGNED_TO_SIGNED.get(new, new)
    if old in _SIGNED and new in _SIGNED:
        return max(old, new, key=_SIGNED.index)
    if pa.types.is_floating(old) and pa.types.is_floating(new):
        return pa.float64()
    for int_type, float_type in ((old, new), (new, old)):
        if int_type in _SIGNED[:3] and pa.types.is_floating(float_type):
            return pa.float64()
    strings = (pa.string(), pa.large_string())
    if old in strings and new in strings:
        return pa.large_string()
    if old == new:
        return old
    raise SchemaConflictError(path, f"type {new} conflicts with {old} in earlier files", name)


class _ConstantTracker:
    """Finds columns whose statistics say one value, never null, in every non-empty file."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}
        self._varying: set[str] = set()
        self._files = 0

    def add(self, metadata: pq.FileMetaData, schema: pa.Schema) -> None:
        if metadata.num_rows == 0:
            return
        self._files += 1
        if self._files == 1:
            for index, field in enumerate(schema):
                value = _single_value(metadata, index) if _constant_type(field.type) else _NO_VALUE
                if value is _NO_VALUE:
                    self._varying.add(field.name)
                else:
                    self._values[field.name] = value
            return
        # Past the first file only its constants can stay constant: a column first
        # seen later is varying (absent from earlier files), and varying stays so.
        for name, value in self._values.items():
            if name in self._varying:
                continue
            index = schema.get_field_index(name)
            if (
                index < 0
                or not _constant_type(schema.field(index).type)
                or _single_value(metadata, index) != value
            ):
                self._varying.add(name)

    def result(self) -> dict[str, Any]:
        return {k: v for k, v in self._values.items() if k not in self._varying}


def _constant_type(type_: pa.DataType) -> bool:
    """Types whose statistics compare exactly: integers, strings, booleans."""
    value_type = _value_type(type_)
    return (
        pa.types.is_integer(value_type)
        or pa.types.is_string(value_type)
        or pa.types.is_large_string(value_type)
        or pa.types.is_boolean(value_type)
    )


def _single_value(metadata: pq.FileMetaData, column: int) -> Any:
    """The column's only value in this file per statistics, or _NO_VALUE."""
    value: Any = _NO_VALUE
    for rg in range(metadata.num_row_groups):
        chunk = metadata.row_group(rg).column(column)
        stats = chunk.statistics
        if (
            stats is None
            or not stats.has_min_max
            or not stats.has_null_count
            or stats.null_count
            or stats.min != stats.max
        ):
            return _NO_VALUE
        if value is not _NO_VALUE and value != stats.min:
            return _NO_VALUE
        value = stats.min
    return value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
