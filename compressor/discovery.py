"""Discovery: which partitions and raw files exist in the raw store.

The raw store is walked one level at a time with Delimiter='/'
(exchange= -> stream= -> symbol= -> date=), so finding a day's partitions costs
LIST requests bounded by the number of prefixes, never by the number of files.
Listing one partition's files costs ceil(files / 1000) requests.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from compressor.layout import DATA_FILE, PartitionId, is_raw_data_key
from compressor.storage.base import ObjectInfo, Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Filters:
    """Narrowing of a run (`--exchanges/--streams/--symbols`); None = everything."""

    exchanges: frozenset[str] | None = None
    streams: frozenset[str] | None = None
    symbols: frozenset[str] | None = None

    @staticmethod
    def parse(exchanges: str | None, streams: str | None, symbols: str | None) -> Filters:
        """Comma lists as given on the command line; case-insensitive (keys are lower-case)."""
        return Filters(_split(exchanges), _split(streams), _split(symbols))


def _split(text: str | None) -> frozenset[str] | None:
    if text is None:
        return None
    items = frozenset(part.strip().lower() for part in text.split(",") if part.strip())
    if not items:
        raise ValueError(f"empty list: {text!r}")
    return items


@dataclass(frozen=True)
class Partition:
    """One raw partition-day and its data files, in key (= flush) order."""

    pid: PartitionId
    files: tuple[ObjectInfo, ...] = field(default=())

    @property
    def file_count(self) -> int:
        return len(self.files)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def fingerprint(self) -> str:
        return source_fingerprint(self.files)


@dataclass(frozen=True)
class Inventory:
    """Every raw partition found by one walk, grouped by day (YYYYMMDD)."""

    by_day: dict[str, list[PartitionId]]

    @property
    def dates(self) -> list[str]:
        return sorted(self.by_day)

    def partitions(self, day: str) -> list[PartitionId]:
        return list(self.by_day.get(day, []))


def source_fingerprint(files: Iterable[ObjectInfo]) -> str:
    """sha256 over the sorted (key, size, etag) of a partition's raw data files.

    Any file added, removed, rewritten or resized changes it.
    """
    digest = hashlib.sha256()
    for info in sorted(files, key=lambda f: f.key):  # ObjectInfo ETags are unquoted
        digest.update(f"{info.key}\t{info.size}\t{info.etag}\n".encode())
    return digest.hexdigest()


def unsafe_value(value: str) -> str | None:
    """Why a key=value segment cannot name a partition (None when it can).

    Its value ends up in output keys, lease keys and local paths: '.' and '..'
    would move them to another directory on a local store, control characters and
    backslashes make keys no tool shows faithfully. Spaces and unicode are fine.
    """
    if value in (".", ".."):
        return f"{value!r} is a path step"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        return "a control character in it"
    if "\\" in value:
        return "a backslash in it"
    return None


def _children(store: Store, prefix: str, name: str, allowed: frozenset[str] | None) -> list[str]:
    """Sub-prefixes `<prefix><name>=<value>/` whose value passes the filter."""
    found = []
    for child in store.list_prefixes(prefix):
        part = child[len(prefix) : -1]
        key, sep, value = part.partition("=")
        if key != name or not sep or not value:
            continue
        why = unsafe_value(value)
        if why is not None:
            log.warning("ignoring raw prefix %r: not a partition (%s)", child, why)
            continue
        if allowed is not None and value not in allowed:
            continue
        found.append(child)
    return found


def walk(store: Store, filters: Filters | None = None) -> Inventory:
    """Walk exchange= -> stream= -> symbol= -> date= prefixes; filters apply while walking."""
    filters = filters or Filters()
    by_day: dict[str, list[PartitionId]] = {}
    for ex in _children(store, "", "exchange", filters.exchanges):
        for st in _children(store, ex, "stream", filters.streams):
            for sy in _children(store, st, "symbol", filters.symbols):
                for day_prefix in _children(store, sy, "date", None):
                    try:
                        pid = PartitionId.from_prefix(day_prefix)
                    except ValueError:
                        continue  # e.g. date=2024-01-01/: not the collector's layout
                    by_day.setdefault(pid.date, []).append(pid)
    for pids in by_day.values():
        pids.sort()
    return Inventory(by_day)


def list_partition(store: Store, pid: PartitionId) -> Partition:
    """The partition's raw data files (strays such as `._*` or `.tmp` dropped), in key order."""
    files, nested = [], []
    for info in store.list_objects(pid.prefix):
        if _is_direct_data_file(pid, info.key):
            files.append(info)
        elif "/" in info.key[len(pid.prefix) :] and is_raw_data_key(info.key):
            nested.append(info.key)  # e.g. '<prefix>/x.parquet', '<prefix>../x.parquet'
    if nested:
        log.warning("%s: ignoring %d .parquet object(s) not directly under the partition, "
                    "e.g. %r", pid.state_key, len(nested), nested[0])
    files.sort(key=lambda f: f.key)
    return Partition(pid, tuple(files))


def _is_direct_data_file(pid: PartitionId, key: str) -> bool:
    rest = key[len(pid.prefix) :]
    return "/" not in rest and is_raw_data_key(key) and rest != DATA_FILE
