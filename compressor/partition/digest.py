"""Order-free digests of a table's rows, column by column: what `--mode verify --deep`
compares between a published data.parquet and the raw files it came from.

The merge only reorders rows (and adds seq), so the published rows, taken as a
multiset, must be the raw rows. A digest is a sum over rows of a 64-bit mix of each
value (per column), and of each row's values together (so that values swapped
between rows are seen too): sums do not depend on order, and are computed batch by
batch in numpy, in bounded memory, whatever the partition's size. Both sides are
read in this one process, so Python's per-process string hashing is never needed:
strings are hashed with blake2b, once per distinct value of a batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_NULL = np.uint64(0x6E756C6C_6E756C6C)  # what a null hashes to ("nullnull")


class ColumnDigest:
    """Rows and per-column digests of the tables `add`ed, in any order."""

    def __init__(self, columns: Sequence[str]) -> None:
        self.columns = list(columns)
        self.rows = 0
        self._columns = np.zeros(len(self.columns), dtype=np.uint64)
        self._rows = np.uint64(0)

    def add(self, table: pa.Table | pa.RecordBatch) -> None:
        """Count `table`'s rows; it must hold every column (in any order)."""
        together = np.zeros(table.num_rows, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for k, name in enumerate(self.columns):
                values = _value_hashes(table.column(name))
                salt = np.uint64(k + 1) * np.uint64(0x9E3779B97F4A7C15)
                self._columns[k] += _mix(values ^ salt).sum(dtype=np.uint64)
                together += _mix(values + salt)
            self._rows += _mix(together).sum(dtype=np.uint64)
        self.rows += table.num_rows

    def differences(self, other: ColumnDigest) -> list[str]:
        """What differs from `other` (the raw side), in words; empty when nothing does."""
        if self.rows != other.rows:
            return [f"{self.rows} rows, the raw files hold {other.rows}"]
        found = [f"column {name!r} differs from the raw files'"
                 for k, name in enumerate(self.columns)
                 if self._columns[k] != other._columns[k]]
        if not found and self._rows != other._rows:
            found.append("rows pair values differently from the raw files'")
        return found


def _value_hashes(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """One uint64 per value; equal values (of equal type) give equal hashes."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if pa.types.is_dictionary(array.type):
        array = array.cast(array.type.value_type)
    type_ = array.type
    if pa.types.is_timestamp(type_) or pa.types.is_date(type_) or pa.types.is_time(type_):
        array = array.cast(pa.int64())
        type_ = array.type
    if pa.types.is_integer(type_) or pa.types.is_boolean(type_):
        filled = pc.fill_null(array, False if pa.types.is_boolean(type_) else 0)
        hashes = filled.to_numpy(zero_copy_only=False).astype(np.int64).view(np.uint64)
    elif pa.types.is_floating(type_):
        filled = pc.fill_null(array.cast(pa.float64()), 0.0)
        hashes = filled.to_numpy(zero_copy_only=False).view(np.uint64)
    else:  # strings, binaries and anything else: by distinct value
        encoded = pc.dictionary_encode(array)
        distinct = np.array([_blake(v) for v in encoded.dictionary.to_pylist()] or [0],
                            dtype=np.uint64)
        indices = pc.fill_null(encoded.indices, 0).to_numpy(zero_copy_only=False)
        hashes = distinct[indices.astype(np.int64)]
    if array.null_count:
        hashes = np.where(array.is_null().to_numpy(zero_copy_only=False), _NULL, hashes)
    return np.ascontiguousarray(hashes, dtype=np.uint64)


def _blake(value: object) -> int:
    data = value if isinstance(value, bytes) else repr(value).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit moves every output bit."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))
