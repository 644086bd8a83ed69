"""Each partition-day of the range in exactly one condition, from the state and raw.

Separate from `gather.py` (the whole report: state, verdicts, days) because this is
where the report costs requests and decides the condition a reader sees per
partition (docs/quality.md "Quality report"):

- the raw bucket's prefixes (`exchange=` -> `stream=` -> `symbol=` -> `date=`, LISTs
  with Delimiter='/', one level at a time, in parallel): which partitions exist;
- one raw LIST per partition that a fingerprint must be checked for (state `success`)
  or whose data files must be confirmed (raw only, no state entry), in parallel;
- meta.json only for a `success` entry that recorded no `source_fingerprint` (older
  versions): its `source_fingerprint` is the fallback.

Reads only. StoreConfigError propagates; any other StoreError is the cell's reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from compressor.discovery import Filters, list_day, unsafe_value
from compressor.layout import PartitionId
from compressor.meta import Meta, MetaError
from compressor.quality.report.model import Cell
from compressor.state import PartitionState
from compressor.storage.base import NotFound, Store, StoreConfigError, StoreError
from compressor.text import one_line

_T = TypeVar("_T")
_R = TypeVar("_R")


def _parallel(pool: ThreadPoolExecutor, fn: Callable[[_T], _R], items: Iterable[_T]) -> list[_R]:
    return list(pool.map(fn, items))


def _values(store: Store, prefixes: Iterable[str], name: str,
            allowed: frozenset[str] | None, pool: ThreadPoolExecutor) -> list[str]:
    """Sub-prefixes `<prefix><name>=<value>/` of every prefix, one LIST each, in parallel."""
    found = []
    for children in _parallel(pool, store.list_prefixes, list(prefixes)):
        for child in children:
            part = child.rstrip("/").rsplit("/", 1)[-1]
            key, sep, value = part.partition("=")
            if key != name or not sep or not value or unsafe_value(value) is not None:
                continue
            if allowed is None or value in allowed:
                found.append(child)
    return found


def walk_raw(raw: Store, filters: Filters, days: set[str],
          pool: ThreadPoolExecutor) -> list[PartitionId]:
    """The raw partitions of `days` (discovery's prefix walk, each level in parallel)."""
    exchanges = _values(raw, [""], "exchange", filters.exchanges, pool)
    streams = _values(raw, exchanges, "stream", filters.streams, pool)
    symbols = _values(raw, streams, "symbol", filters.symbols, pool)
    pids = []
    for prefix in _values(raw, symbols, "date", None, pool):
        try:
            pid = PartitionId.from_prefix(prefix)
        except ValueError:
            continue
        if pid.date in days:
            pids.append(pid)
    return sorted(pids)


@dataclass
class Checks:
    """Per partition key: raw data files and fingerprint, or the listing's error."""

    files: dict[str, int] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    #: Published fingerprints read from meta.json (entries that recorded none).
    meta_fingerprints: dict[str, str | None] = field(default_factory=dict)
    #: Day -> partitions whose listing or meta.json could not be read.
    failed: dict[str, int] = field(default_factory=dict)


def check_partitions(
    raw: Store, compact: Store, raw_pids: list[PartitionId],
    entries: dict[str, PartitionState], pool: ThreadPoolExecutor, event_day_from: str,
    now: datetime,
) -> Checks:
    """List the raw partitions that need it, and read the meta.json fallbacks.

    A partition is listed as the job lists it, with the neighbour files near its
    midnights (docs/guarantees.md "Rows belong to their event day"), so its fingerprint
    is the one the job would compare."""
    checks = Checks()
    to_list = [pid for pid in raw_pids
               if (e := entries.get(pid.state_key)) is None or e.status == "success"]
    metas = [pid for pid in raw_pids
             if (e := entries.get(pid.state_key)) is not None and e.status == "success"
             and not e.source_fingerprint]

    def list_one(pid: PartitionId) -> tuple[PartitionId, int, str, str | None]:
        try:
            partition = list_day(raw, pid, event_day_from, now)
        except StoreConfigError:
            raise
        except StoreError as exc:
            return pid, 0, "", f"raw listing failed: {one_line(str(exc), 200)}"
        return pid, partition.file_count, partition.fingerprint, None

    def meta_one(pid: PartitionId) -> tuple[PartitionId, str | None, str | None]:
        try:
            body, _ = compact.get_bytes(pid.meta_key)
            return pid, Meta.from_bytes(body, pid.meta_key).source_fingerprint, None
        except NotFound:
            return pid, None, None
        except MetaError as exc:
            return pid, None, f"meta.json malformed: {one_line(exc.problem, 200)}"
        except StoreConfigError:
            raise
        except StoreError as exc:
            return pid, None, f"meta.json unreadable: {one_line(str(exc), 200)}"

    meta_futures = [pool.submit(meta_one, pid) for pid in metas]
    for pid, count, fingerprint, error in _parallel(pool, list_one, to_list):
        if error is not None:
            checks.errors[pid.state_key] = error
            checks.failed[pid.date] = checks.failed.get(pid.date, 0) + 1
        else:
            checks.files[pid.state_key] = count
            checks.fingerprints[pid.state_key] = fingerprint
    for future in meta_futures:
        pid, published, error = future.result()
        checks.meta_fingerprints[pid.state_key] = published
        if error is not None:
            checks.errors.setdefault(pid.state_key, error)
            checks.failed[pid.date] = checks.failed.get(pid.date, 0) + 1
    return checks


def partition_cells(raw_pids: list[PartitionId], entries: dict[str, PartitionState],
           checks: Checks, days: set[str]) -> list[Cell]:
    in_raw = {pid.state_key for pid in raw_pids}
    keys = sorted(in_raw | {k for k in entries if k[-8:] in days})
    cells = []
    for key in keys:
        cell = _cell(key, key in in_raw, entries.get(key), checks)
        if cell is not None:
            cells.append(cell)
    return cells


def _cell(key: str, in_raw: bool, entry: PartitionState | None,
          checks: Checks) -> Cell | None:
    files = checks.files.get(key)
    error = checks.errors.get(key)
    if entry is None:
        if files == 0:
            return None  # strays only: not a partition (the job skips it too)
        reason = error or f"in raw ({files} files), not compacted"
        return Cell(key, "not_compacted", reason, raw_files=files)
    flags = _flags(entry)
    label = entry.day_quality_post
    if not in_raw or files == 0:
        what = {"success": "compacted", "failed": "failed", "quarantined": "quarantined",
                "in_progress": "in progress"}[entry.status]
        return Cell(key, "gone_from_raw", f"{what}, no raw data files now",
                    rows=entry.rows if entry.status == "success" else 0, label=label,
                    flags=flags, raw_files=files, published=entry.status == "success")
    if entry.status in ("failed", "quarantined"):
        # the error names the raw key at fault: keep its file name (the cell names the rest)
        where = f"{entry.failed_key}: " if entry.failed_key and entry.failed_key not in (
            entry.error or "") else ""
        error = (where + (entry.error or entry.status)).replace(
            PartitionId(*key.split("/")).prefix, "")
        return Cell(key, entry.status, one_line(error, 300), label=label, flags=flags)
    if entry.status == "in_progress":
        return Cell(key, "in_progress", f"attempt started {entry.attempt_started_at}, "
                    "not finished (running now, or killed: retried by the next run)",
                    label=label)
    compacted = entry.source_fingerprint or checks.meta_fingerprints.get(key)
    if error is not None and files is None:
        return Cell(key, "success", error, rows=entry.rows, label=label, flags=flags,
                    published=True)
    if compacted is None:
        return Cell(key, "stale", error or "no source fingerprint recorded and no meta.json: "
                    "cannot tell which raw listing was compacted",
                    rows=entry.rows, label=label, flags=flags, raw_files=files, published=True)
    if compacted != checks.fingerprints.get(key):
        return Cell(key, "stale", f"raw listing changed since compaction ({files} files now; "
                    "or the files near its midnights)",
                    rows=entry.rows, label=label, flags=flags, raw_files=files, published=True)
    return Cell(key, "success", "", rows=entry.rows, label=label, flags=flags, raw_files=files,
                published=True)


def _flags(entry: PartitionState) -> tuple[str, ...]:
    """Names in the entry's quality["flags"] (free-form in the state: strings only)."""
    quality = entry.quality if isinstance(entry.quality, dict) else {}
    flags = quality.get("flags")
    if not isinstance(flags, list):
        return ()
    return tuple(sorted({f for f in flags if isinstance(f, str) and f}))
