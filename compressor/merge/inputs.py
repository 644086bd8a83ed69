"""One input of the merge: what it is (a local file or a file's bytes in memory), how it
is opened, what its footer says, and what a failure to read it means.

Separate from the schema (schema.py) and from reading rows (reading.py) because both
stand on it: every read of an input, footer or data, goes through `open_input` and
sorts its failure with `read_failed`, so an input is called corrupt by one rule only
(docs/guarantees.md "Failure classes"): its own bytes failing to decode, never the
machine running out of files, memory or disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pyarrow as pa
import pyarrow.parquet as pq

from compressor.merge.errors import CorruptFileError, MergeResourceError

TS = "ts_event"
SEQ = "seq"


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
    #: `rows`, `ts_min` and `ts_max` are then the piece's (see plan.split_big).
    part: tuple[int, int] | None = None

    @property
    def name(self) -> str:
        return source_name(self.source)


#: What reading an open input may raise; `_is_decode_failure` sorts it into bytes/resources.
READ_ERRORS = (OSError, pa.ArrowException, ValueError, MemoryError)
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
      about its bytes at all, so `open_input` does not even ask);
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


def read_failed(path: Path | str, what: str, exc: BaseException) -> NoReturn:
    """Raise CorruptFileError if `exc` is the bytes failing to decode, else MergeResourceError."""
    if _is_decode_failure(exc):
        raise CorruptFileError(path, f"unreadable {what} ({first_line(exc)})") from None
    raise MergeResourceError(path, f"reading {what}", exc) from exc


def open_input(source: Source, what: str) -> pa.NativeFile:
    """Open one input. Failing to open (EMFILE, EACCES, a directory) never blames its bytes."""
    if isinstance(source, MemoryInput):
        return pa.BufferReader(source.data)
    try:
        return pa.OSFile(str(source))
    except (OSError, pa.ArrowException) as exc:
        raise MergeResourceError(source, f"opening the input for its {what}", exc) from exc


def read_footer(source: Source, size: int) -> pq.FileMetaData:
    path = source_name(source)
    with open_input(source, "Parquet footer") as reader:
        try:
            metadata = pq.read_metadata(reader)
        except READ_ERRORS as exc:
            read_failed(path, "Parquet footer", exc)
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


def arrow_schema(path: Path | str, metadata: pq.FileMetaData) -> pa.Schema:
    try:
        return metadata.schema.to_arrow_schema()
    except READ_ERRORS as exc:
        read_failed(path, "schema", exc)


def value_type(type_: pa.DataType) -> pa.DataType:
    return type_.value_type if pa.types.is_dictionary(type_) else type_


def to_ms(value: Any) -> int:
    if isinstance(value, int):
        return value
    return int(pa.scalar(value, pa.timestamp("us")).cast(pa.int64()).as_py() // 1000)


def row_group_ranges(source: Source) -> list[tuple[int, int | None, int | None]]:
    """(rows, ts_event min, max in ms) of each row group of one input, from its footer's
    statistics; (rows, None, None) where a row group has none."""
    metadata = read_footer(source, source_size(source))
    column = arrow_schema(source_name(source), metadata).get_field_index(TS)
    ranges: list[tuple[int, int | None, int | None]] = []
    for rg in range(metadata.num_row_groups):
        group = metadata.row_group(rg)
        stats = group.column(column).statistics
        if stats is None or not stats.has_min_max:
            ranges.append((group.num_rows, None, None))
        else:
            ranges.append((group.num_rows, to_ms(stats.min), to_ms(stats.max)))
    return ranges


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
