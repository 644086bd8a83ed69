"""What one raw partition-day is: `PartitionSpec`, the contract's names (exchanges,
streams, layouts, corrupt kinds), the deterministic seeds every other module draws
from, and the day's layout: which object names, how many rows, which slots are empty
or damaged.

Separate because rows (rows.py), objects (lake.py) and health windows (windows.py)
all derive from a spec and its seeds: the same spec gives the same bytes
everywhere.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime

from compressor.layout import PartitionId, parse_day, raw_file_name

DAY_MS = 86_400_000
LAYOUTS = ("edges", "spans_day", "disjoint")
EXCHANGES = ("binance", "bybit", "okx")
STREAMS = ("bbo", "trade", "mark_price", "funding", "open_interest")
#: Kinds of damaged objects, in the order `corrupt` rotates through them.
CORRUPT_KINDS = ("truncated", "bad_footer", "bad_page", "concatenated", "zero_bytes")
#: Value columns per stream (after the common columns), in file order.
STREAM_COLUMNS: dict[str, tuple[str, ...]] = {
    "bbo": ("bid_price", "bid_qty", "ask_price", "ask_qty"),
    "trade": ("price", "qty", "side", "trade_id"),
    "mark_price": ("mark_price", "index_price"),
    "funding": ("funding_rate", "next_funding_ts"),
    "open_interest": ("open_interest",),
}
#: Column added mid-day when `schema_drift` is on.
DRIFT_ADDED_COLUMN = "update_id"
_FLUSH_DELAY_MS = 500


@dataclass(frozen=True)
class PartitionSpec:
    """One raw partition-day to generate. `symbol` is lower-case as in keys."""

    exchange: str = "binance"
    stream: str = "bbo"
    symbol: str = "btcusdt"
    date: str = "20261124"
    files: int = 100
    rows_per_file: int = 1000
    seed: int = 0
    layout: str = "edges"
    schema_drift: bool = False
    corrupt: int = 0
    empty: int = 0
    previous_day_rows: bool = True
    #: Rows per file vary uniformly within ±rows_jitter × rows_per_file.
    rows_jitter: float = 0.1
    #: Fraction of rows that repeat the previous row's ts_event (ms ties).
    tie_fraction: float = 0.3
    #: Collector restarts during the day (the file counter restarts at 0).
    restarts: int = 1
    #: Also write a `._part-…` and a `part-….parquet.tmp` object next to the files.
    strays: bool = False

    def __post_init__(self) -> None:
        parse_day(self.date)
        if self.stream not in STREAM_COLUMNS:
            raise ValueError(f"unknown stream {self.stream!r}; one of {sorted(STREAM_COLUMNS)}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; one of {LAYOUTS}")
        if self.files < 1:
            raise ValueError("files must be >= 1")
        if self.rows_per_file < 0 or self.corrupt < 0 or self.empty < 0 or self.restarts < 0:
            raise ValueError("rows_per_file, corrupt, empty and restarts must be >= 0")
        if self.corrupt + self.empty > self.files:
            raise ValueError("corrupt + empty must not exceed files")
        if not 0 <= self.rows_jitter < 1 or not 0 <= self.tie_fraction < 1:
            raise ValueError("rows_jitter and tie_fraction must be in [0, 1)")

    @property
    def partition(self) -> PartitionId:
        return PartitionId(self.exchange, self.stream, self.symbol.lower(), self.date)

    @property
    def day_start_ms(self) -> int:
        day = parse_day(self.date)
        return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp()) * 1000

    @property
    def max_rows_per_file(self) -> int:
        return math.ceil(self.rows_per_file * (1 + self.rows_jitter)) + 1


def seeded_hash(spec: PartitionSpec, *parts: object) -> int:
    """64-bit deterministic hash of the spec's identity and `parts` (not Python's hash)."""
    text = repr((spec.seed, spec.exchange, spec.stream, spec.symbol, spec.date, *parts))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def unit(spec: PartitionSpec, *parts: object) -> float:
    """Deterministic float in [0, 1)."""
    return seeded_hash(spec, *parts) / 2.0**64


def boundary(spec: PartitionSpec, i: int) -> int:
    """Start (ms) of file i's slice of the day; slice i is [b(i), b(i+1))."""
    return spec.day_start_ms + (i * (DAY_MS - 1000)) // spec.files


def _restart_points(spec: PartitionSpec) -> list[int]:
    """File indices where the collector restarted (counter back to 0)."""
    points = []
    for k in range(spec.restarts):
        r = spec.files * (k + 1) // (spec.restarts + 1)
        # A restart must move to a later second, or key order would not be flush order.
        if 0 < r < spec.files and _flush_second(spec, r) > _flush_second(spec, r - 1):
            points.append(r)
    return sorted(set(points))


def _flush_second(spec: PartitionSpec, i: int) -> int:
    return (boundary(spec, i + 1) + _FLUSH_DELAY_MS) // 1000


def file_names(spec: PartitionSpec) -> list[str]:
    """The `files` object names of the partition, in key (= flush) order."""
    restarts = _restart_points(spec)
    counter = 1 + seeded_hash(spec, "counter") % 5000
    names = []
    for i in range(spec.files):
        if i in restarts:
            counter = 0
        names.append(raw_file_name(_flush_second(spec, i), counter))
        counter += 1
    return names


def special_files(spec: PartitionSpec) -> dict[int, str]:
    """Slot index -> 'empty' or a corrupt kind from `CORRUPT_KINDS`, for the special slots."""
    total = spec.corrupt + spec.empty
    if total == 0:
        return {}
    low = 1 if spec.files > total else 0
    span = spec.files - low
    positions = [low + (2 * k + 1) * span // (2 * total) for k in range(total)]
    out: dict[int, str] = {}
    n_corrupt = 0
    for k, pos in enumerate(positions):
        # Bresenham: spread the corrupt slots evenly among the special ones.
        if ((k + 1) * spec.corrupt) // total > (k * spec.corrupt) // total:
            out[pos] = CORRUPT_KINDS[n_corrupt % len(CORRUPT_KINDS)]
            n_corrupt += 1
        else:
            out[pos] = "empty"
    return out


def rows_in_file(spec: PartitionSpec, i: int) -> int:
    """Rows the collector put in file i (0 for empty slots; corrupt slots count their rows)."""
    if special_files(spec).get(i) == "empty" or spec.rows_per_file == 0:
        return 0
    jitter = spec.rows_jitter * (2 * unit(spec, "rows", i) - 1)
    return max(1, round(spec.rows_per_file * (1 + jitter)))


def previous_day_rows(spec: PartitionSpec, i: int, n: int) -> int:
    if not spec.previous_day_rows or n == 0:
        return 0
    if i == 0:
        return max(1, n // 20)
    if i in (1, 2) and spec.layout != "disjoint":
        return max(1, n // 50)
    return 0
