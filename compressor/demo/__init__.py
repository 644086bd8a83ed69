"""Collector-shaped raw partitions (BRIEF §1) for the tests, `--demo` and the benchmark.

Everything is deterministic from `PartitionSpec.seed` (and the partition's own names):
the same spec gives the same bytes on every run with the same pyarrow. Only pyarrow,
numpy and the standard library are used; row generation is vectorised.

What a partition looks like (`layout`):

- ``edges`` (the collector's normal day): file ``i`` is flushed at the end of its
  slice of the day and holds events from that slice plus a little before it, so
  consecutive files overlap at their edges. Rows are in ARRIVAL order (``ts_recv``
  never goes back inside a file), which is not ``ts_event`` order: about 0.5 % of
  the rows (at least one per file of two rows or more) are sent late by the venue,
  after up to four later events. About ``tie_fraction`` of the rows repeat the
  previous millisecond.
- ``spans_day``: every file's rows are spread over the whole day, in random order
  (the worst case for a merge: every file overlaps every other).
- ``disjoint``: files cover non-overlapping slices, rows sorted by ``ts_event``.

Receive lag (``ts_recv - ts_event``, ms) is what a collector near the venue sees:
network latency ``2 + floor(40 u^3)`` (median 7 ms, p99 ~40 ms); a rare stall (one
row in 20,000) adds 0.2-3 s; and since one connection delivers a stream in order,
``ts_recv`` is the running maximum over the rows sent so far (a stall holds up the
rows behind it, a late row arrives with its successors' receive time). Venues whose
clock runs ahead of the collector's (`_CLOCK_AHEAD_SHARE`: bybit, okx) stamp about
one row in 2,000 1-20 ms in the future: a negative lag, unless the running maximum
hides it. Binance never does, so its lags are >= 2 ms.

With ``previous_day_rows`` the first three files (only the first for ``disjoint``)
hold rows whose ``ts_event`` lies in the last seconds of the previous day.

``schema_drift`` changes the schema between files of the day:

- ``update_id`` (int64) appears from file ``files // 2`` on (a column added mid-day);
- ``stream_version`` (and ``side`` for trade) is int16 in files ``i % 5 == 2`` and
  int64 in files ``i % 7 == 3`` (int8 elsewhere);
- ``exchange``/``symbol``/``stream`` are Arrow dictionary (pandas categorical) in files
  ``i % 3 == 1`` and plain strings elsewhere;
- files ``i % 4 == 3`` are written without Parquet dictionary encoding (plain pages);
- the quantity column (``bid_qty``/``qty``/``index_price``/``funding_rate``/
  ``open_interest``) is float32 in files ``i % 11 == 5``.

``corrupt`` and ``empty`` replace that many of the ``files`` slots (evenly spread,
never slot 0 when there is room) by a damaged object or a valid zero-row file;
`special_files` says which slot holds what. Corrupt kinds rotate through
`CORRUPT_KINDS`; each is checked to be unreadable by ``pyarrow.parquet.read_table``.

The package's face is this module: callers (tests, bench, `--demo`) import from
`compressor.demo` only. Inside: `spec` (PartitionSpec, the names, the seeds, the
day's layout), `rows` (a file's rows), `lake` (the objects on disk, damaged ones
included, and the demo lake), `windows` (the collector's health windows).
"""

from __future__ import annotations

from compressor.demo.lake import (
    DEMO_RESTART_SLOT,
    file_bytes,
    is_readable,
    write_demo_lake,
    write_partition,
)
from compressor.demo.rows import raw_table
from compressor.demo.spec import (
    CORRUPT_KINDS,
    DAY_MS,
    DRIFT_ADDED_COLUMN,
    EXCHANGES,
    LAYOUTS,
    STREAM_COLUMNS,
    STREAMS,
    PartitionSpec,
    file_names,
    rows_in_file,
    special_files,
)
from compressor.demo.windows import write_quality_windows

__all__ = [
    "CORRUPT_KINDS",
    "DAY_MS",
    "DEMO_RESTART_SLOT",
    "DRIFT_ADDED_COLUMN",
    "EXCHANGES",
    "LAYOUTS",
    "STREAMS",
    "STREAM_COLUMNS",
    "PartitionSpec",
    "file_bytes",
    "file_names",
    "is_readable",
    "raw_table",
    "rows_in_file",
    "special_files",
    "write_demo_lake",
    "write_partition",
    "write_quality_windows",
]
