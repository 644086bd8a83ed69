"""Raw objects on disk: a partition's files as the collector stores them (valid, empty
or damaged in a known way, plus stray objects), written by `write_partition`, and
`write_demo_lake`, the small lake of `--demo` with its health windows.

Separate from the rows (rows.py): this is where rows become bytes (snappy Parquet,
one row group per file) and where the damaged objects are made, each checked to be
unreadable.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from compressor.demo.rows import raw_table
from compressor.demo.spec import (
    EXCHANGES,
    STREAMS,
    PartitionSpec,
    file_names,
    rows_in_file,
    special_files,
)
from compressor.demo.windows import write_quality_windows
from compressor.layout import PartitionId, parse_day


def _use_dictionary(spec: PartitionSpec, i: int) -> bool:
    return not (spec.schema_drift and i % 4 == 3)


def _parquet_bytes(table: pa.Table, use_dictionary: bool = True) -> bytes:
    sink = io.BytesIO()
    pq.write_table(
        table,
        sink,
        compression="snappy",
        write_statistics=True,
        use_dictionary=use_dictionary,
        row_group_size=max(table.num_rows, 1),
    )
    return sink.getvalue()


def is_readable(data: bytes) -> bool:
    """True if pyarrow reads every row of this object."""
    try:
        pq.read_table(pa.BufferReader(data))
    except Exception:
        return False
    return True


def _corrupt_bytes(spec: PartitionSpec, i: int, kind: str) -> bytes:
    table = raw_table(spec, i)
    if table.num_rows == 0:  # rows_per_file=0: damage what a small file would have held
        table = raw_table(replace(spec, rows_per_file=100, corrupt=0, empty=0), i)
    good = _parquet_bytes(table, _use_dictionary(spec, i))
    if kind == "zero_bytes":
        return b""
    if kind == "truncated":
        candidates = [good[: len(good) // 2], good[: len(good) - 9], good[: max(len(good) - 4, 1)]]
    elif kind == "bad_footer":
        footer_len = int.from_bytes(good[-8:-4], "little")
        start = len(good) - 8 - footer_len
        junk = hashlib.blake2b(repr(("footer", spec, i)).encode()).digest()
        pattern = (junk * (footer_len // len(junk) + 1))[:footer_len]
        candidates = [
            good[:start] + pattern + good[-8:],
            good[:start] + bytes(footer_len) + good[-8:],
        ]
    elif kind == "bad_page":
        # Footer intact (the file opens, the schema reads); a page's compressed bytes are
        # overwritten, one more column each attempt until the data no longer decodes.
        meta = pq.read_metadata(pa.BufferReader(good))
        data = bytearray(good)
        candidates = []
        if meta.num_row_groups:
            rg = meta.row_group(0)
            for c in range(rg.num_columns):
                col = rg.column(c)
                first = col.dictionary_page_offset or col.data_page_offset
                size = col.total_compressed_size
                lo, hi = first + size // 3, first + size - 1
                if hi > lo:
                    data[lo:hi] = b"\xff" * (hi - lo)
                candidates.append(bytes(data))
    elif kind == "concatenated":
        # A + B: B's footer points at offsets inside A. Tiny files laid out alike can
        # decode (silently wrong); then B is a bigger neighbour.
        j = i + 1 if i + 1 < spec.files else max(i - 1, 0)
        bigger = replace(spec, rows_per_file=max(200, 4 * spec.rows_per_file), corrupt=0, empty=0)
        candidates = [good + _parquet_bytes(raw_table(s, j)) for s in (spec, bigger)]
    else:
        raise ValueError(f"unknown corrupt kind {kind!r}")
    for candidate in candidates:
        if not is_readable(candidate):
            return candidate
    raise RuntimeError(f"could not make a {kind} object unreadable for file {i}")


def file_bytes(spec: PartitionSpec, i: int) -> bytes:
    """The exact object stored for slot i (valid, empty or corrupt)."""
    kind = special_files(spec).get(i)
    if kind is not None and kind != "empty":
        return _corrupt_bytes(spec, i, kind)
    return _parquet_bytes(raw_table(spec, i), _use_dictionary(spec, i))


def _write_range(spec: PartitionSpec, directory: str, indices: Sequence[int]) -> None:
    names = file_names(spec)
    specials = special_files(spec)
    for i in indices:
        path = os.path.join(directory, names[i])
        kind = specials.get(i)
        if kind is not None and kind != "empty":
            with open(path, "wb") as fh:
                fh.write(_corrupt_bytes(spec, i, kind))
        else:
            pq.write_table(
                raw_table(spec, i),
                path,
                compression="snappy",
                write_statistics=True,
                use_dictionary=_use_dictionary(spec, i),
                row_group_size=max(rows_in_file(spec, i), 1),
            )


def write_partition(spec: PartitionSpec, root: Path, *, workers: int = 1) -> list[Path]:
    """Write the partition under root/<prefix>; return the data objects in key order.

    `workers` > 1 writes with that many processes (same bytes). Strays, when
    `spec.strays` asks for them, are written but not returned.
    """
    directory = Path(root) / spec.partition.prefix
    directory.mkdir(parents=True, exist_ok=True)
    names = file_names(spec)
    if workers <= 1 or spec.files < 64:
        _write_range(spec, str(directory), range(spec.files))
    else:
        step = max(16, spec.files // (workers * 8))
        chunks = [range(s, min(s + step, spec.files)) for s in range(0, spec.files, step)]
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for fut in [pool.submit(_write_range, spec, str(directory), c) for c in chunks]:
                fut.result()
    if spec.strays:
        junk = hashlib.blake2b(repr(("stray", spec)).encode(), digest_size=64).digest()
        (directory / ("._" + names[0])).write_bytes(b"\x00\x05\x16\x07" + junk * 64)
        (directory / (names[-1] + ".tmp")).write_bytes(file_bytes(spec, spec.files - 1)[:100])
    return [directory / name for name in names]


#: The demo lake's first day has a collector restart in this window (09:15-09:30).
DEMO_RESTART_SLOT = 37


def write_demo_lake(
    root: Path,
    days: Sequence[str],
    exchanges: Sequence[str] = EXCHANGES,
    streams: Sequence[str] = STREAMS,
    symbols: Sequence[str] = ("btcusdt", "ethusdt"),
    files_per_partition: int = 6,
    rows_per_file: int = 200,
    seed: int = 0,
) -> list[PartitionId]:
    """A small collector-shaped raw lake under `root` (binance has no open_interest).

    Returns the partitions written, sorted. Each day also gets its 96 health windows
    under quality/date=YYYYMMDD/, as the collector writes them; the first day's
    collector restarts once, so its 09:15 window is the short partial first window
    of the new process (`DEMO_RESTART_SLOT`).
    """
    written = []
    for day in days:
        parse_day(day)
        for exchange in exchanges:
            for stream in streams:
                if exchange == "binance" and stream == "open_interest":
                    continue
                for symbol in symbols:
                    spec = PartitionSpec(
                        exchange=exchange,
                        stream=stream,
                        symbol=symbol.lower(),
                        date=day,
                        files=files_per_partition,
                        rows_per_file=rows_per_file,
                        seed=seed,
                        restarts=0,
                    )
                    write_partition(spec, root)
                    written.append(spec.partition)
        restart = (DEMO_RESTART_SLOT,) if day == days[0] else ()
        write_quality_windows(root, day, exchanges, seed=seed, partial=restart)
    return sorted(written)
