"""Discovery: which partitions and raw files exist in the raw store.

The raw store is walked one level at a time with Delimiter='/'
(exchange= -> stream= -> symbol= -> date=), so finding a day's partitions costs
LIST requests bounded by the number of prefixes, never by the number of files.
Listing one partition's files costs ceil(files / 1000) requests.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from compressor.eventday import (
    HORIZON_S,
    EdgeMode,
    Edges,
    edge_mode,
    flush_time,
    midnight_s,
    near,
    settled,
    shift,
)
from compressor.eventday import fingerprint as day_fingerprint
from compressor.layout import DATA_FILE, PartitionId, is_raw_data_key
from compressor.storage.base import ObjectInfo, Store, StoreConfigError

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
    """One raw partition-day and its data files, in key (= flush) order.

    `edges`: its two midnights and the neighbour files that may give it rows
    (compressor.eventday); None for a listing made without them (a partition's own
    files only, as `--mode verify` and the report list them)."""

    pid: PartitionId
    files: tuple[ObjectInfo, ...] = field(default=())
    edges: Edges | None = None

    @property
    def file_count(self) -> int:
        return len(self.files)

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def fingerprint(self) -> str:
        return day_fingerprint(self.files, self.edges)

    @property
    def settled(self) -> bool:
        """No raw file that could give this day rows can still arrive (eventday.settled)."""
        return self.edges is None or self.edges.settled


#: The levels of the raw layout a filter narrows, with the flag that narrows each.
LEVELS = (("exchange", "--exchanges"), ("stream", "--streams"), ("symbol", "--symbols"))
#: How many names an error about what was found shows.
SHOWN = 8


class RawLayoutError(StoreConfigError):
    """The raw store holds no partition the run could ever compact: a --raw pointing at
    the wrong folder, or a filter that names nothing there (docs/operations.md "Command line")."""


@dataclass(frozen=True)
class Inventory:
    """Every raw partition found by one walk, grouped by day (YYYYMMDD).

    `top`: the names at the store's top level (what `--raw` points at); `seen`: per
    level, every value found under the kept parents, filtered out or not (what a
    filter could have matched)."""

    by_day: dict[str, list[PartitionId]]
    top: tuple[str, ...] = ()
    seen: dict[str, set[str]] = field(default_factory=dict)

    @property
    def dates(self) -> list[str]:
        return sorted(self.by_day)

    def partitions(self, day: str) -> list[PartitionId]:
        return list(self.by_day.get(day, []))


def source_fingerprint(files: Iterable[ObjectInfo]) -> str:
    """sha256 over the sorted (key, size, etag) of a partition's raw data files.

    Any file added, removed, rewritten or resized changes it.
    """
    return day_fingerprint(files, None)


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


def _children(store: Store, prefix: str, name: str, allowed: frozenset[str] | None,
              seen: set[str] | None = None, listed: list[str] | None = None) -> list[str]:
    """Sub-prefixes `<prefix><name>=<value>/` whose value passes the filter.

    `seen` collects every valid value, `listed` every sub-prefix, filtered or not."""
    found = []
    for child in store.list_prefixes(prefix):
        if listed is not None:
            listed.append(child[len(prefix):])
        part = child[len(prefix) : -1]
        key, sep, value = part.partition("=")
        if key != name or not sep or not value:
            continue
        why = unsafe_value(value)
        if why is not None:
            log.warning("ignoring raw prefix %r: not a partition (%s)", child, why)
            continue
        if seen is not None:
            seen.add(value)
        if allowed is not None and value not in allowed:
            continue
        found.append(child)
    return found


def walk(store: Store, filters: Filters | None = None) -> Inventory:
    """Walk exchange= -> stream= -> symbol= -> date= prefixes; filters apply while walking."""
    filters = filters or Filters()
    by_day: dict[str, list[PartitionId]] = {}
    seen: dict[str, set[str]] = {level: set() for level, _ in LEVELS}
    top: list[str] = []
    for ex in _children(store, "", "exchange", filters.exchanges, seen["exchange"], top):
        for st in _children(store, ex, "stream", filters.streams, seen["stream"]):
            for sy in _children(store, st, "symbol", filters.symbols, seen["symbol"]):
                for day_prefix in _children(store, sy, "date", None):
                    try:
                        pid = PartitionId.from_prefix(day_prefix)
                    except ValueError:
                        continue  # e.g. date=2024-01-01/: not the collector's layout
                    by_day.setdefault(pid.date, []).append(pid)
    for pids in by_day.values():
        pids.sort()
    return Inventory(by_day, tuple(top), seen)


def check_found(inventory: Inventory, filters: Filters, uri: str) -> None:
    """RawLayoutError when the walk found no partition at all (docs/operations.md "Command line").

    A store without a single `exchange=` folder at its top is the wrong folder (one
    level too deep or too shallow); a filter that matches none of the values found
    names a partition that does not exist. Either would otherwise plan nothing and
    exit 0, as if the job had done its work. A day without data is not an error.
    """
    if inventory.by_day:
        return
    if not inventory.seen.get("exchange"):
        found = f"found {_names(inventory.top)}" if inventory.top else "found no folders"
        raise RawLayoutError(f"raw store {uri} holds no exchange=... folders at its top "
                             f"({found}): point --raw at the folder that holds them")
    for level, flag in LEVELS:
        wanted: frozenset[str] | None = getattr(filters, f"{level}s")
        seen = inventory.seen.get(level, set())
        if wanted is not None and not wanted & seen:
            raise RawLayoutError(f"{flag} {','.join(sorted(wanted))}: no such {level} in raw "
                                 f"store {uri} (found {_names(seen) or 'none'})")
    if filters != Filters():
        raise RawLayoutError(f"no raw partition in {uri} matches the filters together "
                             f"({_filter_text(filters)})")


def _names(values: Iterable[str]) -> str:
    names = sorted(values)
    more = f" and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return ", ".join(names[:SHOWN]) + more


def _filter_text(filters: Filters) -> str:
    return " ".join(f"{flag} {','.join(sorted(wanted))}" for level, flag in LEVELS
                    if (wanted := getattr(filters, f"{level}s")) is not None)


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


class Listings:
    """Partition folders listed once for a whole plan: a day's folder is its own
    partition's listing and its neighbours' `before`/`after` alike. Thread-safe (two
    threads may list one folder at the same moment; both get the same files)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._done: dict[PartitionId, Partition] = {}

    def get(self, pid: PartitionId) -> Partition:
        with self._lock:
            found = self._done.get(pid)
        if found is None:
            found = list_partition(self.store, pid)
            with self._lock:
                self._done[pid] = found
        return found

    def known(self, pid: PartitionId) -> Partition | None:
        with self._lock:
            return self._done.get(pid)


def list_day(store: Store, pid: PartitionId, event_day_from: str | None,
             now: datetime, listings: Listings | None = None) -> Partition:
    """The partition's raw files and its edges: the neighbour folders' files flushed
    within the horizon of its two midnights (docs/guarantees.md "Rows belong to their
    event day"). Costs the partition's own LIST, the day before's, and the next day's
    up to its first file flushed past the horizon; with `listings`, a folder listed
    for another partition of the plan is not listed again."""
    return _listed_with_edges(store, pid, now, lambda earlier, has_data: edge_mode(
        earlier, event_day_from, has_data), listings or Listings(store))


def list_day_as(store: Store, pid: PartitionId, previous: EdgeMode, next_mode: EdgeMode
                ) -> Partition:
    """The partition listed with the edge modes an output was made with (meta.json's
    `edges`), for checking that output against its raw files (`--mode verify --deep`)."""
    modes = {shift(pid.date, -1): previous, pid.date: next_mode}
    return _listed_with_edges(store, pid, None, lambda earlier, has_data: modes[earlier],
                              Listings(store))


def _listed_with_edges(store: Store, pid: PartitionId, now: datetime | None,
                       mode_of: Callable[[str, bool], EdgeMode], listings: Listings
                       ) -> Partition:
    own = listings.get(pid)
    before_pid = replace(pid, date=shift(pid.date, -1))
    after_pid = replace(pid, date=shift(pid.date, 1))
    start, end = midnight_s(pid.date), midnight_s(after_pid.date)
    before_files = listings.get(before_pid).files
    listed_after = listings.known(after_pid)
    after_seen = (_to_horizon(listed_after.files, end) if listed_after is not None
                  else _listed_to_horizon(store, after_pid, end))
    previous = mode_of(before_pid.date, bool(before_files))
    next_mode = mode_of(pid.date, bool(after_seen))
    # a day whose next midnight can never move rows never waits for it
    waits = now is not None and mode_of(pid.date, True) is EdgeMode.EVENT
    edges = Edges(
        pid.date, previous, next_mode,
        tuple(f for f in before_files if near(f.key, start))
        if previous is EdgeMode.EVENT else (),
        tuple(f for f in after_seen if near(f.key, end)) if next_mode is EdgeMode.EVENT else (),
        settled=not waits or settled(pid.date, after_seen, now or datetime.now(UTC)),
    )
    return replace(own, edges=edges)


def _listed_to_horizon(store: Store, pid: PartitionId, midnight: int) -> list[ObjectInfo]:
    """The folder's data files in key order up to and including the first one flushed
    at or past `midnight`'s horizon (keys sort by flush time: no need to list further)."""
    return _to_horizon(_iter_direct(store, pid), midnight)


def _to_horizon(files: Iterable[ObjectInfo], midnight: int) -> list[ObjectInfo]:
    seen: list[ObjectInfo] = []
    for info in files:
        seen.append(info)
        flushed = flush_time(info.key)
        if flushed is not None and flushed >= midnight + HORIZON_S:
            break
    return seen


def _iter_direct(store: Store, pid: PartitionId) -> Iterator[ObjectInfo]:
    for info in store.list_objects(pid.prefix):
        if _is_direct_data_file(pid, info.key):
            yield info
