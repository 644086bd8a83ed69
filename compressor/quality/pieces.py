"""Pieces of a batch: the per-row quality passes read a batch a bounded slice at a time.

A concept of its own because both the figures (`compressor.quality.metrics`) and the
duplicate count (`compressor.quality.duplicates`) cut batches by the same size, and a
test shrinks that one size to put piece edges everywhere. The merge hands the
accumulator row groups of up to a million rows: a temporary the length of a batch
would be megabytes per figure, a piece's stays small and in cache.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

#: Rows the per-row figures handle at a time: their temporaries stay small (half a
#: MiB for 8-byte values) and in cache, whatever the batch size.
PIECE_ROWS = 65_536


def pieces(rows: int) -> Iterator[tuple[int, int]]:
    """(start, end) ranges of at most PIECE_ROWS covering range(rows)."""
    for start in range(0, max(rows, 0), PIECE_ROWS):
        yield start, min(start + PIECE_ROWS, rows)


def float_pieces(*columns: pa.ChunkedArray) -> Iterator[list[np.ndarray]]:
    """The columns as float64 numpy, nulls as NaN, a row-aligned piece at a time.

    Each piece is an Arrow chunk read in place where it can be (float64 without
    nulls), so no batch-long copy is made and the comparisons stay in cache."""
    floats = [c if pa.types.is_float64(c.type) else c.cast(pa.float64()) for c in columns]
    table = pa.Table.from_arrays(floats, names=[str(n) for n in range(len(floats))])
    for piece in table.to_batches(max_chunksize=PIECE_ROWS):
        yield [array.to_numpy(zero_copy_only=False) for array in piece.columns]
