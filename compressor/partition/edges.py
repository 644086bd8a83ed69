"""The step between fetch and merge that puts rows in their event day.

A partition-day's inputs are its own raw files and the neighbour files flushed
near its midnights (compressor.eventday). Each input whose rows the day does not
all hold is replaced by a copy of the rows it does hold, in their order in the
file, so the merge (which knows nothing of days) sorts exactly the day's rows and
keeps its tie rule: raw key order, then row order (docs/guarantees.md "Rows belong
to their event day"). Only boundary files are rewritten, and they are small.

An input that cannot be read here (corrupt, ts_event missing, null or of another
type) is passed on untouched: the merge names what is wrong with it, as for any
file, and `--skip-corrupt` leaves it out of both days alike.
"""

from __future__ import annotations

import io
import logging
import struct
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from compressor.discovery import Partition
from compressor.eventday import DAY_MS, Edges, midnight_s
from compressor.merge import MemoryInput, Source, source_name
from compressor.partition.fetch import RawChangedError, RawInput
from compressor.storage.base import DataReader, ObjectInfo, Store

log = logging.getLogger(__name__)

#: Bytes read from a neighbour file's end, first: its footer is a few KB.
FOOTER_GUESS = 8192
#: Footers read at once.
FOOTER_WORKERS = 16


@dataclass
class EdgeFigures:
    """Rows this day received from and gave to the days around it (meta.json `edges`)."""

    previous: str = "flush"
    next: str = "flush"
    rows_from_previous: int = 0
    rows_from_next: int = 0
    rows_to_previous: int = 0
    rows_to_next: int = 0
    #: Neighbour files that gave rows: key, size, etag, rows (verify --deep reads them).
    neighbour_files: list[dict[str, object]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """The four row counts (also the day's quality figures of the same names)."""
        return {"rows_from_previous": self.rows_from_previous,
                "rows_from_next": self.rows_from_next,
                "rows_to_previous": self.rows_to_previous, "rows_to_next": self.rows_to_next}

    def to_json(self) -> dict[str, object]:
        return {"previous": self.previous, "next": self.next, **self.counts(),
                "neighbour_files": self.neighbour_files}


def with_neighbours(partition: Partition,
                    neighbours: Sequence[ObjectInfo] | None = None) -> Partition:
    """The partition with `neighbours` (default: every neighbour file near its
    midnights) among its inputs, all in key order (a day before's keys sort first,
    the next day's last: flush order). Its fingerprint stays the listing's."""
    if neighbours is None:
        neighbours = partition.edges.neighbours if partition.edges is not None else ()
    if not neighbours:
        return partition
    files = sorted((*partition.files, *neighbours), key=lambda f: f.key)
    return replace(partition, files=tuple(files), edges=None)


def neighbours_with_rows(partition: Partition, raw: Store,
                         workers: int = FOOTER_WORKERS) -> list[ObjectInfo]:
    """The neighbour files whose footer statistics say they may hold rows of the day:
    one ranged GET of each one's footer, so whole neighbour files are read only when
    they give rows. A footer without `ts_event` statistics keeps its file (read and
    filtered); an unreadable one drops it: it is its own day's corrupt file, left out
    there too (quarantined, or skipped by --skip-corrupt). RawChangedError when a
    footer is not of the listed object."""
    edges = partition.edges
    if edges is None or not edges.neighbours:
        return []
    reader = raw.data_reader()
    start = midnight_s(edges.day) * 1000
    day = (start, start + DAY_MS)

    def keep(info: ObjectInfo) -> bool:
        footer = _footer(reader, info)
        if footer is None:
            log.warning("%s: neighbour file is not readable Parquet: left out of %s (its own "
                        "day names it)", info.key, partition.pid.state_key)
            return False
        span = _ts_span(footer)
        return span is None or (span[0] < day[1] and span[1] >= day[0])

    candidates = list(edges.neighbours)
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(candidates))),
                            thread_name_prefix="footer") as pool:
        kept = list(pool.map(keep, candidates))
    return [info for info, ok in zip(candidates, kept, strict=True) if ok]


def _footer(reader: DataReader, listed: ObjectInfo) -> pq.FileMetaData | None:
    """The object's Parquet footer (None when it is not one), read from its tail."""
    tail = _tail(reader, listed, FOOTER_GUESS)
    if len(tail) < 12 or tail[-4:] != b"PAR1":
        return None
    length = struct.unpack("<I", tail[-8:-4])[0]
    if length + 8 > len(tail) and length + 8 <= listed.size:
        tail = _tail(reader, listed, length + 8)
    try:
        return pq.read_metadata(pa.BufferReader(b"PAR1" + tail[-(length + 8):]))
    except Exception:  # any footer pyarrow cannot parse is a corrupt object
        return None


def _tail(reader: DataReader, listed: ObjectInfo, nbytes: int) -> bytes:
    data, served = reader.read_tail(listed, nbytes)
    if (served.size, served.etag) != (listed.size, listed.etag):
        raise RawChangedError(f"{listed.key}: raw object changed since it was listed")
    return data


def _ts_span(footer: pq.FileMetaData) -> tuple[int, int] | None:
    """(min, max) of ts_event over the row groups, from integer statistics; None when
    some row group has none (the file is then read and filtered row by row)."""
    names = [footer.schema.column(i).name for i in range(footer.num_columns)]
    if "ts_event" not in names:
        return None
    column = names.index("ts_event")
    low, high = None, None
    for n in range(footer.num_row_groups):
        stats = footer.row_group(n).column(column).statistics
        if stats is None or not stats.has_min_max or not isinstance(stats.min, int):
            return None
        low = stats.min if low is None else min(low, stats.min)
        high = stats.max if high is None else max(high, stats.max)
    return None if low is None or high is None else (low, high)


def place_rows(inputs: Sequence[RawInput], own_prefix: str, edges: Edges,
               listed: Sequence[ObjectInfo]) -> tuple[list[RawInput], EdgeFigures]:
    """The inputs holding exactly this day's rows, and what moved across its midnights.

    Neighbour files that give no row are dropped (they still count in the source
    fingerprint: a change to one recompacts the day)."""
    figures = EdgeFigures(edges.previous.value, edges.next.value)
    info = {f.key: f for f in listed}
    start = midnight_s(edges.day) * 1000
    out = []
    for item in inputs:
        own = item.key.startswith(own_prefix)
        keep = edges.keep(item.key, own)
        if keep is None:
            out.append(item)
            continue
        table = _readable(item.source)
        if table is None:
            if own:
                out.append(item)  # the merge names what is wrong with it
            continue  # a neighbour's: its own day names it (see neighbours_with_rows)
        ts = _event_ms(table)
        mask = _within(ts, keep)
        kept = int(mask.sum())
        if own:
            _count_given(figures, ts, mask, start)
        elif kept:
            side = "previous" if item.key < own_prefix else "next"
            setattr(figures, f"rows_from_{side}", getattr(figures, f"rows_from_{side}") + kept)
            listed_info = info.get(item.key)
            figures.neighbour_files.append({
                "key": item.key, "rows": kept,
                "size": listed_info.size if listed_info else None,
                "etag": listed_info.etag if listed_info else None,
            })
        if kept == table.num_rows:
            out.append(item)
        elif kept:
            out.append(RawInput(item.key, _rewritten(item.source, table.filter(pa.array(mask)))))
        elif own:
            out.append(RawInput(item.key, _rewritten(item.source, table.slice(0, 0))))
    return out, figures


def _count_given(figures: EdgeFigures, ts: np.ndarray, mask: np.ndarray, start: int) -> None:
    """Count an own file's rows that went to the day before or after."""
    gone = ts[~mask]
    figures.rows_to_previous += int((gone < start).sum())
    figures.rows_to_next += int((gone >= start + DAY_MS).sum())


def _readable(source: Source) -> pa.Table | None:
    """The file's rows, or None when it is not a file whose ts_event can place them."""
    try:
        handle = source if not isinstance(source, MemoryInput) else pa.BufferReader(source.data)
        table = pq.read_table(handle)
    except Exception:  # corrupt: the merge's own reading classifies it
        return None
    if "ts_event" not in table.column_names:
        return None
    column = table.column("ts_event")
    if column.null_count or not (pa.types.is_integer(column.type)
                                 or pa.types.is_timestamp(column.type)):
        return None
    return table


def _event_ms(table: pa.Table) -> np.ndarray:
    column = table.column("ts_event")
    if pa.types.is_timestamp(column.type):
        column = pc.cast(column, pa.timestamp("ms", column.type.tz), safe=False)
    return np.asarray(pc.cast(column, pa.int64()).to_numpy(), dtype=np.int64)


def _within(ts: np.ndarray, intervals: Sequence[tuple[int, int]]) -> np.ndarray:
    mask = np.zeros(len(ts), dtype=bool)
    for lo, hi in intervals:
        mask |= (ts >= lo) & (ts < hi)
    return mask


def _rewritten(source: Source, table: pa.Table) -> MemoryInput:
    """The kept rows as a Parquet file in memory, named as the input was (errors and
    --skip-corrupt still name the raw key)."""
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return MemoryInput(source_name(source), pa.py_buffer(sink.getvalue()))
