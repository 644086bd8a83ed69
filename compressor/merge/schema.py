"""What the merge learns from the inputs' footers before it reads a row.

One pass over the footers gives, per file, its row count and ts_event range
(from column statistics, so no data is read), and for the partition the
unified output schema and the columns that hold one constant value everywhere
(those are not carried through the sort at all, only re-created at write time).
`conform` then casts each file's rows to that unified schema.

What an input is and how it is opened live in inputs.py, reading its rows in
reading.py: this module is the partition-wide view built on both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from compressor.merge.errors import (
    BadTsEventTypeError,
    MissingTsEventError,
    NullTsEventError,
    SchemaConflictError,
)
from compressor.merge.inputs import (
    SEQ,
    TS,
    FileInfo,
    Source,
    arrow_schema,
    first_line,
    read_footer,
    source_name,
    source_size,
    to_ms,
    value_type,
)
from compressor.merge.reading import read_columns, to_ms_array

_SIGNED = [pa.int8(), pa.int16(), pa.int32(), pa.int64()]
_UNSIGNED_TO_SIGNED = {
    pa.uint8(): pa.int16(),
    pa.uint16(): pa.int32(),
    pa.uint32(): pa.int64(),
}
_NO_VALUE = object()


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
        metadata = read_footer(source, size)
        known = seen.get(metadata)
        if known is None:
            schema = arrow_schema(path, metadata)
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


def _check_ts_type(path: Path | str, schema: pa.Schema) -> None:
    if TS not in schema.names:
        raise MissingTsEventError(path, "no ts_event column", TS)
    ts_type = value_type(schema.field(TS).type)
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
    return to_ms(min(lows)), to_ms(max(highs))


def _ts_range_from_data(source: Source) -> tuple[int, int]:
    path = source_name(source)
    column = read_columns(source, [TS]).column(TS)
    if column.null_count:
        raise NullTsEventError(path, f"ts_event has {column.null_count} null values", TS)
    ts = to_ms_array(path, column)
    bounds = pc.min_max(ts)
    return bounds["min"].as_py(), bounds["max"].as_py()


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
                path, f"cannot cast {column.type} to {field.type} ({first_line(exc)})", field.name
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
            new = pa.int64() if field.name == TS else value_type(field.type)
            old = self._types.get(field.name)
            self._types[field.name] = new if old is None else _widen(path, field.name, old, new)

    def result(self) -> pa.Schema:
        fields = []
        for name, type_ in self._types.items():
            fields.append(pa.field(name, pa.string() if pa.types.is_null(type_) else type_))
        return pa.schema(fields)


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
    plain = value_type(type_)
    return (
        pa.types.is_integer(plain)
        or pa.types.is_string(plain)
        or pa.types.is_large_string(plain)
        or pa.types.is_boolean(plain)
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
