"""`--mode verify`: the fsck of the compact bucket, read-only.

For every partition of the range found in the compact store or the state, it
checks that meta.json parses and names the data.parquet beside it (size and
ETag: the pair check readers do, docs/operations.md "Checking a pair"), and that the state
entry agrees (status success, same rows). `deep` also downloads each output and
checks its sha256, size, row count, ts_event order and seq, and, given the raw
store, that its columns hold the raw files' rows (partition/digest.py): a wrong
value published for every row, as footer statistics that lied once made the merge
do, is found this way. It finds bit rot, hand edits and the mismatched pairs a
paused writer could leave (docs/guarantees.md
"Guarantees under failure"). It writes nothing
and takes no lease.

It also reads the raw store's prefixes for the range: a raw partition of a day at or
before last_compacted_date that has neither an output nor a state entry is a problem,
because readers take its day as ready (`last_compacted_date >= day`) and find nothing
(docs/operations.md "compacted/_state.json": a fresh start never compacts the days
before its first run).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from compressor.discovery import Filters, Partition, list_day_as, list_partition, walk
from compressor.eventday import EdgeMode
from compressor.layout import PartitionId, format_day
from compressor.merge import SEQ, MergeInputError, conform, read_columns, scan_inputs
from compressor.meta import Meta, check_data_file, read_published
from compressor.partition.digest import ColumnDigest
from compressor.partition.edges import place_rows, with_neighbours
from compressor.partition.fetch import fetch
from compressor.partition.verify import VERIFY_BATCH_ROWS, VerificationError, verify_output
from compressor.state import PartitionState, StateSnapshot
from compressor.storage.base import Store, StoreConfigError, StoreError
from compressor.text import backfill_hint, one_line

log = logging.getLogger(__name__)

#: Partitions checked at once.
AUDIT_WORKERS = 16


@dataclass(frozen=True)
class Finding:
    """One problem of one partition; `line` is what the audit prints."""

    partition: str
    problem: str

    @property
    def line(self) -> str:
        return f"{self.partition}: {self.problem}"


@dataclass
class AuditResult:
    checked: int
    findings: list[Finding]


def days_of(first: date, last: date) -> set[str]:
    return {format_day(first + timedelta(days=n)) for n in range((last - first).days + 1)}


def partitions_in_range(
    compact: Store, snapshot: StateSnapshot, days: set[str], filters: Filters
) -> list[PartitionId]:
    """Every partition of `days` with an output in the compact store or a state entry."""
    found = {pid for day, pids in walk(compact, filters).by_day.items() if day in days
             for pid in pids}
    for key in snapshot.partitions:
        ex, stream, symbol, day = key.split("/")
        pid = PartitionId(ex, stream, symbol, day)
        if day in days and _passes(filters, pid):
            found.add(pid)
    return sorted(found, key=lambda p: (p.date, p))


def _passes(filters: Filters, pid: PartitionId) -> bool:
    return all(allowed is None or value in allowed for allowed, value in (
        (filters.exchanges, pid.exchange), (filters.streams, pid.stream),
        (filters.symbols, pid.symbol)))


def not_compacted(
    raw: Store, snapshot: StateSnapshot, days: set[str], filters: Filters,
    known: set[str], owns: Callable[[PartitionId], bool] = lambda pid: True,
) -> list[Finding]:
    """Raw partitions of days at or before last_compacted_date with no output and no state
    entry (`known`: the state keys the audit checks). One finding per day when nothing of
    the day is known (a day older than the first run), else one per partition."""
    lcd = snapshot.last_compacted_date
    if lcd is None:
        return []
    ready = {day for day in days if day <= lcd}
    inventory = walk(raw, filters)
    candidates = [pid for day in sorted(ready) for pid in inventory.partitions(day)
                  if pid.state_key not in known and owns(pid)]
    with ThreadPoolExecutor(AUDIT_WORKERS, thread_name_prefix="audit-raw") as pool:
        counts = list(pool.map(lambda pid: list_partition(raw, pid).file_count, candidates))
    missing: dict[str, list[PartitionId]] = {}
    for pid, files in zip(candidates, counts, strict=True):
        if files:  # a prefix of strays only is not a partition
            missing.setdefault(pid.date, []).append(pid)
    first = min((key[-8:] for key in snapshot.partitions), default=None)
    found: list[Finding] = []
    for day, pids in sorted(missing.items()):
        hint = f"backfill it: {backfill_hint(day)}"
        if any(key[-8:] == day for key in known):
            found.extend(Finding(pid.state_key, f"in raw, not compacted, yet last_compacted_date "
                                 f"{lcd} covers its day; {hint}") for pid in pids)
            continue
        why = ("older than the first run" if first is None or day < first
               else "no partition of it is compacted")
        found.append(Finding(day, f"{len(pids)} raw partitions, not compacted ({why}), yet "
                             f"last_compacted_date {lcd} makes readers take the day as "
                             f"ready; {hint}"))
    return found


def audit(
    compact: Store, snapshot: StateSnapshot, pids: list[PartitionId], *, deep: bool = False,
    tmp_root: Path | None = None, raw: Store | None = None,
) -> AuditResult:
    """Check each partition (in parallel); findings in partition order. `deep` with a
    `raw` store also compares each output's columns with its raw files."""

    def check(pid: PartitionId) -> list[Finding]:
        try:
            return [Finding(pid.state_key, problem) for problem in _problems(
                compact, pid, snapshot.partitions.get(pid.state_key), deep, tmp_root, raw)]
        except StoreConfigError:
            raise
        except StoreError as exc:
            return [Finding(pid.state_key, f"could not be read: {one_line(str(exc), 300)}")]

    with ThreadPoolExecutor(AUDIT_WORKERS, thread_name_prefix="audit") as pool:
        found = [f for findings in pool.map(check, pids) for f in findings]
    return AuditResult(len(pids), found)


def _problems(compact: Store, pid: PartitionId, entry: PartitionState | None, deep: bool,
              tmp_root: Path | None, raw: Store | None = None) -> list[str]:
    now = read_published(compact, pid)
    problems = []
    if now.meta is None and now.problem is None:
        if now.data is not None:
            problems.append("data.parquet without meta.json (an unfinished publish)")
        if entry is not None and entry.status == "success":
            problems.append("the state says success but no meta.json is published")
        return problems
    mismatch = now.mismatch()
    if mismatch is not None:
        return [mismatch]
    assert now.meta is not None
    if entry is None:
        problems.append("published, but the state has no entry")
    elif entry.status != "success":
        problems.append(f"published, but the state says {entry.status}")
    elif entry.rows != now.meta.rows or entry.total_size_bytes != now.meta.size_bytes:
        problems.append(f"the state says {entry.rows} rows / {entry.total_size_bytes} bytes, "
                        f"meta.json {now.meta.rows} / {now.meta.size_bytes}")
    if deep:
        problems.extend(_deep(compact, pid, now.meta, tmp_root, raw))
    return problems


def _deep(compact: Store, pid: PartitionId, meta: Meta, tmp_root: Path | None,
          raw: Store | None = None) -> list[str]:
    """Download the output and check its bytes, rows, order and seq; with `raw`, that
    its columns hold the raw files' rows."""
    work = Path(tempfile.mkdtemp(prefix="qlc-audit-", dir=tmp_root))
    try:
        path = work / "data.parquet"
        got = compact.get_file(pid.data_key, path)
        if got.etag != meta.data_etag:
            return ["data.parquet changed while it was being checked; run the audit again"]
        problems = check_data_file(meta, path)
        try:
            verify_output(path, meta.rows)
        except VerificationError as exc:
            problems.append(str(exc))
        except Exception as exc:  # any unreadable file is a finding, not a crash
            problems.append(f"data.parquet unreadable ({type(exc).__name__})")
        if raw is not None and not problems:
            problems.extend(_against_raw(raw, pid, meta, path, work))
        return problems
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _as_compacted(raw: Store, pid: PartitionId, meta: Meta) -> Partition:
    """The raw files as the output's rule placed them: its own folder, and for an output
    whose midnights moved rows (meta.json `edges`), the neighbour files near them."""
    edges = meta.extra.get("edges")
    if not isinstance(edges, dict):
        return list_partition(raw, pid)
    try:
        previous, next_mode = EdgeMode(str(edges["previous"])), EdgeMode(str(edges["next"]))
    except (KeyError, ValueError):
        return list_partition(raw, pid)
    return list_day_as(raw, pid, previous, next_mode)


def _against_raw(raw: Store, pid: PartitionId, meta: Meta, path: Path, work: Path
                 ) -> list[str]:
    """The published columns against the raw files they were merged from (the ones
    meta.json's fingerprint names, less the skipped ones): [] when they agree."""
    partition = _as_compacted(raw, pid, meta)
    if partition.fingerprint != meta.source_fingerprint:
        log.info("%s: the raw files changed since it was compacted; columns not compared",
                 pid.state_key)
        return []
    skipped = set(meta.skipped_files)
    inputs = with_neighbours(partition)
    inputs = replace(inputs, files=tuple(f for f in inputs.files if f.key not in skipped))
    published = pq.ParquetFile(path)
    names = [name for name in published.schema_arrow.names if name != SEQ]
    target = pa.schema([published.schema_arrow.field(name) for name in names])
    ours = ColumnDigest(names)
    for batch in published.iter_batches(batch_size=VERIFY_BATCH_ROWS, columns=names):
        ours.add(batch)
    theirs = ColumnDigest(names)
    try:
        fetched = fetch(inputs, raw, work / "raw", fetch_budget_bytes=0)
        if partition.edges is not None and partition.edges.moves_rows:
            fetched.inputs, _ = place_rows(fetched.inputs, pid.prefix, partition.edges,
                                           inputs.files)
        infos, _ = scan_inputs([item.source for item in fetched.inputs])
        for info in infos:
            table = read_columns(info.source, [n for n in names if n in info.columns])
            theirs.add(conform(info.name, table, target))
    except MergeInputError as exc:
        return [f"a raw file cannot be compared: {exc.reason}"]
    except OSError as exc:  # the machine's trouble (disk, memory), not the output's
        return [f"the raw files could not be compared: {one_line(str(exc), 300)}"]
    return ours.differences(theirs)
