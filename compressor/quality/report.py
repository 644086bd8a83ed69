"""--quality-report: gather what the stores say about a range of days (read-only), render it.

`gather` builds one typed `QualityReport`; `render_text` and `to_json` render it here,
`compressor.quality.html.render_html` renders the offline page from the same object.

What is read, and nothing else (no write of any kind: no verdict saved, no lease, no
cleanup, no conditional-write probe; tests/test_report.py lists both stores before and
after):

- `compacted/_state.json`: one GET;
- the collector's day verdict: one GET of `compacted/quality/date=D.json` per day. A
  day without a usable stored verdict (absent, malformed, PARTIAL/UNKNOWN, other rules
  version or primary exchange: what a run would score again) is scored in memory
  from its raw windows (one LIST and up to 96 GETs) and shown as `scored`, never saved;
- the raw bucket's prefixes (`exchange=` -> `stream=` -> `symbol=` -> `date=`, LISTs
  with Delimiter='/', one level at a time, in parallel): which partitions exist;
- one raw LIST per partition that a fingerprint must be checked for (state `success`)
  or whose data files must be confirmed (raw only, no state entry), in parallel;
- meta.json only for a `success` entry that recorded no `source_fingerprint` (older
  versions): its `source_fingerprint` is the fallback.

Each partition-day of the range is in exactly one condition (`CONDITIONS`):
`success` (compacted from the raw listing there now), `stale` (compacted, but the raw
listing changed since), `failed`, `quarantined`, `in_progress`, `not_compacted` (raw
data files and no state entry) or `gone_from_raw` (a state entry, no raw data files
now). `missing` = not_compacted + gone_from_raw.

A day is in exactly one state (`DAY_STATES`, docs/quality.md "Quality report"): `ready` as
readers compute it (`last_compacted_date >= day`) with something published; `pending`
(after the watermark: a run will do it); `no_raw_data`; `not_compacted` (at or before
the watermark, raw data, and not one partition published: a day older than the first
run, which a fresh start never compacts, or whose outputs were cleaned). Readers would
take a `not_compacted` day as ready and find nothing, so it is never shown ready: the
report says what it is and how to backfill it (`backfill_hint`).
"""

from __future__ import annotations

import json
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

from compressor.discovery import Filters, list_partition, unsafe_value
from compressor.labels import RULES_VERSION
from compressor.layout import STATE_KEY, PartitionId, format_day, parse_day
from compressor.meta import Meta, MetaError
from compressor.quality.windows import (
    DEFAULT_PRIMARY,
    DayVerdict,
    fetch_day_windows,
    load_verdict,
    score_day,
)
from compressor.state import PartitionState, parse_document
from compressor.storage.base import NotFound, Store, StoreConfigError, StoreError
from compressor.text import backfill_hint, one_line, utc_iso

REPORT_VERSION = 1
DEFAULT_DAYS = 14
MAX_DAYS = 366
#: Worst partitions listed (the total is reported too).
WORST_LIMIT = 15
#: Threads for raw listings and meta.json reads (S3Store pools 32 connections).
DEFAULT_WORKERS = 32
#: Days scored or loaded at once (scoring fetches a day's windows with 16 threads).
_VERDICT_WORKERS = 4
LINE_WIDTH = 80

CONDITIONS = ("success", "stale", "failed", "quarantined", "in_progress", "not_compacted",
              "gone_from_raw")
#: Worst first; `success` comes last (unchecked against raw, then with data flags).
_SEVERITY = {"quarantined": 0, "failed": 1, "not_compacted": 2, "stale": 3,
             "gone_from_raw": 4, "in_progress": 5, "success": 6}
#: A day's state (`DayReport.status`); docs/quality.md "Quality report" defines each.
DAY_STATES = ("ready", "pending", "no_raw_data", "not_compacted")
_T = TypeVar("_T")
_R = TypeVar("_R")


# ------------------------------------------------------------------ the report


@dataclass(frozen=True)
class Collector:
    """The collector's verdict for a day, as the report found it."""

    #: GOOD/DEGRADED/BAD/PARTIAL/UNKNOWN; None when it could not be read or scored.
    label: str | None
    #: "stored" (compacted/quality/date=D.json), "scored" (in memory, now), "unavailable".
    source: str
    #: good, degraded, bad, partial, missing, malformed, misnamed, expected (None:
    #: unavailable). The text and HTML tables show g/d/b/p/m; malformed and misnamed
    #: windows show in `reasons`.
    windows: dict[str, int] | None = None
    reasons: tuple[str, ...] = ()
    scored_at: str | None = None
    rules_version: str | None = None


@dataclass(frozen=True)
class Cell:
    """One partition-day of the range."""

    key: str  # <ex>/<stream>/<sym>/<YYYYMMDD>
    condition: str  # one of CONDITIONS
    reason: str = ""
    rows: int = 0
    #: The state entry's day_quality_post (the label readers select on), if any.
    label: str | None = None
    flags: tuple[str, ...] = ()
    raw_files: int | None = None
    #: The state says success: a data.parquet + meta.json pair is published for it.
    published: bool = False

    @property
    def day(self) -> str:
        return self.key[-8:]

    @property
    def series(self) -> str:
        """<ex>/<stream>/<sym>: one heatmap row."""
        return self.key[:-9]


@dataclass(frozen=True)
class DayReport:
    day: str
    ready: bool
    has_raw_data: bool
    collector: Collector
    #: Partition-days per condition (every name of CONDITIONS, exclusive).
    partitions: dict[str, int]
    #: Rows of the day's published partitions (state `success`, whatever their condition).
    rows: int
    rows_previous: int | None
    flags: dict[str, int]
    #: day_quality_post of the day's published entries: label -> partitions.
    state_labels: dict[str, int]
    notes: tuple[str, ...] = ()
    #: One of DAY_STATES; "" lets __post_init__ derive it from `ready`/`has_raw_data`.
    status: str = ""

    def __post_init__(self) -> None:
        if not self.status:
            derived = ("ready" if self.ready else "pending" if self.has_raw_data
                       else "no_raw_data")
            object.__setattr__(self, "status", derived)

    @property
    def total(self) -> int:
        return sum(self.partitions.values())

    @property
    def missing(self) -> int:
        return self.partitions["not_compacted"] + self.partitions["gone_from_raw"]

    @property
    def rows_change(self) -> float | None:
        """(rows - previous) / previous; None when there is no previous day to compare, or
        nothing to compare on this one: nothing published (no raw data, or not compacted
        yet: a -100 % would read as a collapse of the data; the day says what it is)."""
        if not self.rows_previous or not self.state_labels:
            return None
        return (self.rows - self.rows_previous) / self.rows_previous


@dataclass(frozen=True)
class Watermark:
    last_compacted_date: str | None
    moved_at: str | None
    state_updated_at: str | None
    #: Days from last_compacted_date to yesterday (0: up to date; None: no watermark).
    days_behind: int | None


@dataclass(frozen=True)
class Problem:
    key: str
    condition: str
    reason: str
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class QualityReport:
    generated_at: str
    today: str
    date_from: str
    date_to: str
    raw_uri: str
    compact_uri: str
    primary_exchange: str
    watermark: Watermark
    #: Newest first.
    days: list[DayReport]
    worst: list[Problem]
    worst_total: int
    #: Every partition-day of the range (the HTML heatmap), sorted by key.
    cells: list[Cell] = field(default_factory=list)
    elapsed_s: float = 0.0


# ------------------------------------------------------------------ the days asked for


def report_days(
    today: date, days: int | None, date_from: str | None, date_to: str | None
) -> list[str]:
    """The days to report, newest first; ValueError (one line naming the flag) if not valid.

    Either `--days N` (the N days before today, default 14) or `--date-from D
    [--date-to D2]` (inclusive; --date-to defaults to --date-from, as in a backfill).
    Days after today are refused; today may be asked for (its data is still arriving).
    """
    if days is not None and (date_from or date_to):
        raise ValueError("--days cannot be combined with --date-from/--date-to")
    if date_to and not date_from:
        raise ValueError("--date-to needs --date-from")
    if date_from:
        first = _flag_day("--date-from", date_from)
        last = _flag_day("--date-to", date_to) if date_to else first
        if last < first:
            raise ValueError(f"--date-to {date_to} is before --date-from {date_from}")
        if last > today:
            flag = "--date-to" if date_to else "--date-from"
            raise ValueError(f"{flag} {format_day(last)} is after today ({format_day(today)} "
                             "UTC)")
        count = (last - first).days + 1
        if count > MAX_DAYS:
            raise ValueError(f"--date-from/--date-to: {count} days, at most {MAX_DAYS}")
        return [format_day(last - timedelta(days=n)) for n in range(count)]
    n = DEFAULT_DAYS if days is None else days
    if not 1 <= n <= MAX_DAYS:
        raise ValueError(f"--days: expected 1..{MAX_DAYS}, got {n}")
    return [format_day(today - timedelta(days=k)) for k in range(1, n + 1)]


def _flag_day(flag: str, text: str) -> date:
    try:
        return parse_day(text)
    except ValueError:
        raise ValueError(f"{flag}: not a YYYYMMDD date: {text!r}") from None


# ------------------------------------------------------------------ gathering


def gather(
    raw: Store,
    compact: Store,
    days: Sequence[str],
    *,
    today: str,
    primary_exchange: str = DEFAULT_PRIMARY,
    filters: Filters | None = None,
    workers: int = DEFAULT_WORKERS,
    clock: Callable[[], float] = time.time,
) -> QualityReport:
    """Read what the report needs (module docstring) and build it. Reads only.

    StoreConfigError (and a malformed state, StateCorruptError) propagate; any other
    StoreError on one day's verdict or one partition's listing is a note on that day.
    """
    started = time.monotonic()
    wanted = sorted(set(days), reverse=True)
    for day in wanted:
        parse_day(day)
    filters = filters or Filters()
    with ThreadPoolExecutor(max_workers=_VERDICT_WORKERS, thread_name_prefix="report-day") as dp:
        state_future = dp.submit(_read_state, compact)
        verdict_futures = {
            day: dp.submit(_collector, raw, compact, day, primary_exchange, clock)
            for day in wanted
        }
        with ThreadPoolExecutor(max_workers=max(1, workers),
                                thread_name_prefix="report-raw") as pool:
            raw_pids = _walk(raw, filters, set(wanted), pool)
            doc = state_future.result()
            entries = _entries(doc, wanted, filters)
            checks = _check_partitions(raw, compact, raw_pids, entries, pool)
        collectors = {day: f.result() for day, f in verdict_futures.items()}

    lcd = doc["last_compacted_date"]
    first = min((key[-8:] for key in doc["partitions"]), default=None)
    cells = _cells(raw_pids, entries, checks, set(wanted))
    by_day: dict[str, list[Cell]] = {day: [] for day in wanted}
    for cell in cells:
        by_day[cell.day].append(cell)
    previous_rows = _previous_rows(entries, wanted)
    # a prefix holding no data file (strays only) is no raw data; unlisted ones count
    raw_days = {pid.date for pid in raw_pids if checks.files.get(pid.state_key) != 0}
    day_reports = [
        _day_report(day, by_day[day], collectors[day], (lcd, first), previous_rows.get(day),
                    day in raw_days, checks.failed.get(day, 0))
        for day in wanted
    ]
    problems = sorted((c for c in cells if c.condition != "success" or c.flags or c.reason),
                      key=lambda c: (_SEVERITY[c.condition] - (0.5 if c.reason else 0.0),
                                     -len(c.flags), _neg_day(c.day), c.key))
    yesterday = format_day(parse_day(today) - timedelta(days=1))
    behind = None if lcd is None else max(0, (parse_day(yesterday) - parse_day(lcd)).days)
    return QualityReport(
        generated_at=utc_iso(clock()),
        today=today,
        date_from=wanted[-1] if wanted else today,
        date_to=wanted[0] if wanted else today,
        raw_uri=raw.uri,
        compact_uri=compact.uri,
        primary_exchange=primary_exchange,
        watermark=Watermark(lcd, doc.get("last_compacted_moved_at"), doc.get("updated_at"),
                            behind),
        days=day_reports,
        worst=[Problem(c.key, c.condition, c.reason or _flag_reason(c), c.flags)
               for c in problems[:WORST_LIMIT]],
        worst_total=len(problems),
        cells=cells,
        elapsed_s=round(time.monotonic() - started, 3),
    )


def _neg_day(day: str) -> int:
    return -int(day)


def _read_state(compact: Store) -> dict[str, Any]:
    """The state document (validated; an absent state is an empty one). One GET."""
    try:
        data, _ = compact.get_bytes(STATE_KEY)
    except NotFound:
        return {"last_compacted_date": None, "updated_at": None, "partitions": {}}
    return parse_document(data, STATE_KEY)


def _entries(
    doc: dict[str, Any], wanted: Sequence[str], filters: Filters
) -> dict[str, PartitionState]:
    """Typed entries of the wanted days and the day before the oldest (its rows)."""
    days = set(wanted)
    if wanted:
        days.add(format_day(parse_day(wanted[-1]) - timedelta(days=1)))
    out = {}
    for key, raw_entry in doc["partitions"].items():
        if key[-8:] in days and _passes(key, filters):
            out[key] = PartitionState.from_json(raw_entry)
    return out


def _passes(key: str, filters: Filters) -> bool:
    exchange, stream, symbol, _ = key.split("/")
    return all(allowed is None or value in allowed for value, allowed in (
        (exchange, filters.exchanges), (stream, filters.streams), (symbol, filters.symbols)))


def _collector(
    raw: Store, compact: Store, day: str, primary: str, clock: Callable[[], float]
) -> Collector:
    """The stored verdict when a run would reuse it, else one scored now (not saved)."""
    try:
        verdict = load_verdict(compact, day)
        source = "stored"
        if verdict is None or not verdict.label.final or (
            verdict.primary_exchange != primary or verdict.rules_version != RULES_VERSION
        ):
            windows = fetch_day_windows(raw, day)
            verdict = score_day(day, windows, primary, now=datetime.fromtimestamp(clock(), UTC))
            source = "scored"
    except StoreConfigError:
        raise
    except StoreError as exc:
        return Collector(None, "unavailable",
                         reasons=(f"collector windows unreadable: {one_line(str(exc), 200)}",))
    return _collector_of(verdict, source)


def _collector_of(verdict: DayVerdict, source: str) -> Collector:
    counts = verdict.counts.to_json()
    return Collector(
        label=verdict.label.value,
        source=source,
        windows={name: int(counts.get(name, 0)) for name in
                 ("good", "degraded", "bad", "partial", "missing", "malformed", "misnamed",
                  "expected")},
        reasons=tuple(verdict.reasons),
        scored_at=verdict.scored_at,
        rules_version=verdict.rules_version,
    )


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


def _walk(raw: Store, filters: Filters, days: set[str],
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
class _Checks:
    """Per partition key: raw data files and fingerprint, or the listing's error."""

    files: dict[str, int] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    #: Published fingerprints read from meta.json (entries that recorded none).
    meta_fingerprints: dict[str, str | None] = field(default_factory=dict)
    #: Day -> partitions whose listing or meta.json could not be read.
    failed: dict[str, int] = field(default_factory=dict)


def _check_partitions(
    raw: Store, compact: Store, raw_pids: list[PartitionId],
    entries: dict[str, PartitionState], pool: ThreadPoolExecutor,
) -> _Checks:
    """List the raw partitions that need it, and read the meta.json fallbacks."""
    checks = _Checks()
    to_list = [pid for pid in raw_pids
               if (e := entries.get(pid.state_key)) is None or e.status == "success"]
    metas = [pid for pid in raw_pids
             if (e := entries.get(pid.state_key)) is not None and e.status == "success"
             and not e.source_fingerprint]

    def list_one(pid: PartitionId) -> tuple[PartitionId, int, str, str | None]:
        try:
            partition = list_partition(raw, pid)
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


def _cells(raw_pids: list[PartitionId], entries: dict[str, PartitionState],
           checks: _Checks, days: set[str]) -> list[Cell]:
    in_raw = {pid.state_key for pid in raw_pids}
    keys = sorted(in_raw | {k for k in entries if k[-8:] in days})
    cells = []
    for key in keys:
        cell = _cell(key, key in in_raw, entries.get(key), checks)
        if cell is not None:
            cells.append(cell)
    return cells


def _cell(key: str, in_raw: bool, entry: PartitionState | None,
          checks: _Checks) -> Cell | None:
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
        return Cell(key, "stale", f"raw listing changed since compaction ({files} files now)",
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


def _flag_reason(cell: Cell) -> str:
    return "data flags: " + ", ".join(cell.flags)


def _previous_rows(entries: dict[str, PartitionState], wanted: Sequence[str]) -> dict[str, int]:
    """Day -> published rows of the day before it (from the state)."""
    rows: Counter[str] = Counter()
    seen: set[str] = set()
    for key, entry in entries.items():
        seen.add(key[-8:])
        if entry.status == "success":
            rows[key[-8:]] += entry.rows
    out = {}
    for day in wanted:
        before = format_day(parse_day(day) - timedelta(days=1))
        if before in seen:
            out[day] = rows[before]
    return out


def _day_status(day: str, has_raw: bool, published: int, lcd: str | None) -> str:
    """The day's state (DAY_STATES): at or before the watermark, raw data and nothing
    published is `not_compacted`, never `ready` (module docstring)."""
    if not has_raw:
        return "no_raw_data"
    if lcd is None or lcd < day:
        return "pending"
    return "ready" if published else "not_compacted"


def _not_compacted_note(day: str, first: str | None) -> str:
    """Why a day at or before the watermark holds nothing, and the fix."""
    if first is None:
        why = "older than the first run (no partition is compacted yet)"
    elif day < first:
        why = f"older than the first run (the first compacted day is {first})"
    else:
        why = "no partition of it is published"
    return (f"not compacted: {why}, yet last_compacted_date covers it, so readers take it "
            f"as ready; backfill it: {backfill_hint(day)}")


def _day_report(
    day: str, cells: list[Cell], collector: Collector, watermark: tuple[str | None, str | None],
    rows_previous: int | None, has_raw: bool, unchecked: int,
) -> DayReport:
    """`watermark`: last_compacted_date and the first day the state has an entry for."""
    lcd, first = watermark
    counts = {name: 0 for name in CONDITIONS}
    flags: Counter[str] = Counter()
    labels: Counter[str] = Counter()
    rows = 0
    for cell in cells:
        counts[cell.condition] += 1
        flags.update(cell.flags)
        if cell.published:
            rows += cell.rows
            labels[cell.label or "none"] += 1
    notes = []
    status = _day_status(day, has_raw, sum(labels.values()), lcd)
    if not has_raw:
        notes.append("no raw data")
    if status == "not_compacted":
        notes.append(_not_compacted_note(day, first))
    other = {label: n for label, n in sorted(labels.items()) if label != collector.label}
    if collector.label is not None and other:
        listed = ", ".join(f"{label} {n}" for label, n in other.items())
        notes.append(f"{sum(other.values())} published partitions carry another label in the "
                     f"state ({listed}); the next run covering the day relabels them")
    if unchecked:
        notes.append(f"{unchecked} partitions could not be checked against raw (see below)")
    return DayReport(
        day=day,
        ready=status == "ready",
        has_raw_data=has_raw,
        collector=collector,
        partitions=counts,
        rows=rows,
        rows_previous=rows_previous,
        flags=dict(sorted(flags.items(), key=lambda kv: (-kv[1], kv[0]))),
        state_labels=dict(sorted(labels.items())),
        notes=tuple(notes),
        status=status,
    )


# ------------------------------------------------------------------ JSON


def to_json(report: QualityReport) -> dict[str, Any]:
    """The document `--json` prints (docs/quality.md "Quality report" documents every field)."""
    return {
        "report_version": REPORT_VERSION,
        "generated_at": report.generated_at,
        "today": report.today,
        "range": {"from": report.date_from, "to": report.date_to, "days": len(report.days)},
        "stores": {"raw": report.raw_uri, "compact": report.compact_uri},
        "primary_exchange": report.primary_exchange,
        "rules_version": RULES_VERSION,
        "watermark": {
            "last_compacted_date": report.watermark.last_compacted_date,
            "moved_at": report.watermark.moved_at,
            "state_updated_at": report.watermark.state_updated_at,
            "days_behind": report.watermark.days_behind,
        },
        "days": [_day_json(d) for d in report.days],
        "worst": [{"partition": p.key, "day": p.key[-8:], "condition": p.condition,
                   "reason": p.reason, "flags": list(p.flags)} for p in report.worst],
        "worst_total": report.worst_total,
        "elapsed_s": report.elapsed_s,
    }


def _day_json(d: DayReport) -> dict[str, Any]:
    change = d.rows_change
    return {
        "day": d.day,
        "status": d.status,
        "ready": d.ready,
        "has_raw_data": d.has_raw_data,
        "collector": {
            "label": d.collector.label,
            "source": d.collector.source,
            "windows": d.collector.windows,
            "reasons": list(d.collector.reasons),
            "scored_at": d.collector.scored_at,
            "rules_version": d.collector.rules_version,
        },
        "partitions": {"total": d.total, **d.partitions, "missing": d.missing},
        "rows": d.rows,
        "rows_previous": d.rows_previous,
        "rows_change": None if change is None else round(change, 6),
        "flags": d.flags,
        "state_labels": d.state_labels,
        "notes": list(d.notes),
    }


def render_json(report: QualityReport) -> str:
    return json.dumps(to_json(report), indent=1)


# ------------------------------------------------------------------ text

_COLOURS = {"GOOD": "32", "DEGRADED": "33", "BAD": "31", "PARTIAL": "35", "UNKNOWN": "2",
            "problem": "31", "bold": "1"}
#: (header, width, right-aligned) of the day row's columns: with single spaces the first
#: eleven take 66 columns, leaving the windows 14 of 80 (docs/quality.md "Quality report"). The
#: partitions' total is left to JSON: it is ok + fail + quar + run + miss + stale.
_COLUMNS = (("day", 8, False), ("ready", 5, False), ("ok", 4, True), ("fail", 4, True),
            ("quar", 4, True), ("run", 3, True), ("miss", 4, True), ("stale", 5, True),
            ("rows", 5, True), ("chg", 5, True), ("label", 8, False), ("g/d/b/p/m", 14, False))
#: The partition and row columns, which a day without raw data or never compacted
#: replaces by what explains it.
_COUNT_COLUMNS = slice(2, 10)


def compact_count(n: int) -> str:
    """999, 1.2K, 61.2M, 3.00G: at most 5 characters (6 from 1000T on)."""
    if n < 1000:
        return str(n)
    for unit, scale in (("K", 1e3), ("M", 1e6), ("G", 1e9), ("T", 1e12)):
        value = n / scale
        if value < 999.5 or unit == "T":
            return f"{value:.3g}{unit}" if value < 100 else f"{value:.0f}{unit}"
    raise AssertionError("unreachable")


def _change(change: float | None) -> str:
    if change is None:
        return "-"
    pct = change * 100
    if pct >= 999.5:
        return ">999%"
    return f"{pct:+.1f}%" if abs(pct) < 9.95 else f"{pct:+.0f}%"


def _fit(text: str, width: int) -> str:
    """`text` cut to `width` characters, ending '...' when cut (ASCII: any terminal)."""
    if len(text) <= width:
        return text
    return text[: max(0, width - 3)] + "..." if width >= 3 else text[:width]


def _wrap(text: str, width: int, indent: int) -> list[str]:
    return textwrap.wrap(text, width, initial_indent=" " * indent,
                         subsequent_indent=" " * (indent + 2), break_on_hyphens=False,
                         break_long_words=True)


def render_text(report: QualityReport, colour: bool = False, width: int = LINE_WIDTH) -> str:
    """The terminal report: one row per day (newest first; its data flags on a line of
    their own below it), the watermark, notes, the worst partitions. Every line fits
    `width` columns (80: a terminal or a phone's SSH app); ANSI colours only when `colour`."""

    def paint(text: str, what: str | None) -> str:
        code = _COLOURS.get(what or "")
        return f"\x1b[{code}m{text}\x1b[0m" if colour and code else text

    header = " ".join(f"{h:>{w}}" if right else f"{h:<{w}}" for h, w, right in _COLUMNS)
    lines = _wrap(f"quality report {report.date_from}..{report.date_to} ({len(report.days)} "
                  f"days, UTC); raw {report.raw_uri}; compact {report.compact_uri}", width, 0)
    lines.append(paint(_fit(header.rstrip(), width), "bold"))
    for d in report.days:
        lines.append(_day_row(d, paint, width))
        if d.flags:
            lines.extend(_wrap("flags: " + ", ".join(f"{k} {v}" for k, v in d.flags.items()),
                               width, 9))
    lines.append("")
    for line in _watermark_lines(report):
        lines.extend(_wrap(line.lstrip(), width, len(line) - len(line.lstrip())))
    noted = [d for d in report.days if d.collector.reasons or d.notes]
    if noted:
        lines.append("notes:")
        for d in noted:
            why = "; ".join(x for x in (*d.notes, *d.collector.reasons) if x)
            source = {"stored": "", "scored": " (scored now)"}.get(d.collector.source, "")
            label = d.collector.label or "label n/a"
            lines.extend(_wrap(f"{d.day} {label}{source}: {why}", width, 2))
    lines.extend(_worst_lines(report, paint, width))
    return "\n".join(lines)


def _worst_lines(report: QualityReport, paint: Callable[[str, str | None], str],
                 width: int) -> list[str]:
    """The worst partitions: key and condition, then the reason on the same line when it
    fits, else wrapped on the lines below it (an error message is never cut)."""
    if not report.worst_total:
        return ["worst partitions: none (every partition compacted, current, unflagged)"]
    lines = [f"worst partitions ({len(report.worst)} of {report.worst_total}):"]
    key_width = min(36, max(len(p.key) for p in report.worst))
    for p in report.worst:
        key = f"  {p.key:<{key_width}} "
        condition = f"{shown_condition(p):<13} "
        if len(key + condition + p.reason) <= width:
            lines.append(key + paint(condition, "problem") + p.reason)
            continue
        if len(key + condition) > width:
            lines.append(_fit(key + condition, width).rstrip())
        else:
            lines.append(key + paint(shown_condition(p), "problem"))
        lines.extend(_wrap(p.reason, width, 4))
    return lines


def _day_explained(d: DayReport) -> str | None:
    """What replaces a day's counts when they would mislead, else None."""
    if d.status == "no_raw_data" and not d.total:
        return "no raw data"
    if d.status == "not_compacted":
        older = any("older than the first run" in note for note in d.notes)
        return ("not compacted, older than the first run" if older
                else "not compacted: nothing published")
    return None


def _day_row(d: DayReport, paint: Callable[[str, str | None], str], width: int) -> str:
    """One day, padded cell by cell (colour codes added after padding), cut to `width`."""
    w = d.collector.windows
    windows = ("/".join(str(w[k]) for k in ("good", "degraded", "bad", "partial", "missing"))
               if w else "n/a")
    label = d.collector.label or "n/a"
    p = d.partitions

    def problem(n: int) -> tuple[str, str | None]:
        return str(n), "problem" if n else None

    counts: list[tuple[str, str | None]] = [
        (str(p["success"]), None), problem(p["failed"]),
        problem(p["quarantined"]), problem(p["in_progress"]), problem(d.missing),
        problem(p["stale"]), (compact_count(d.rows), None), (_change(d.rows_change), None)]
    values = [(d.day, None), ("yes" if d.ready else "no", None), *counts, (label, label),
              (windows, None)]
    plain = [f"{v:>{c[1]}}" if c[2] else f"{v:<{c[1]}}"
             for (v, _), c in zip(values, _COLUMNS, strict=True)]
    painted = [paint(text, what) for text, (_, what) in zip(plain, values, strict=True)]
    explained = _day_explained(d)
    if explained is not None:  # the counts give way to what explains them
        room = len(" ".join(plain[_COUNT_COLUMNS]))
        plain[_COUNT_COLUMNS] = [f"{explained:<{room}}"]
        painted[_COUNT_COLUMNS] = [paint(plain[_COUNT_COLUMNS][0], "problem"
                                         if d.status == "not_compacted" else None)]
    if len(" ".join(plain).rstrip()) > width:  # only on extreme values: cut the windows
        plain[-1] = painted[-1] = _fit(plain[-1], max(0, width - len(" ".join(plain[:-1])) - 1))
        if len(" ".join(plain)) > width:
            return _fit(" ".join(plain), width)
    return " ".join(painted).rstrip()


def shown_condition(p: Problem) -> str:
    """The condition as the terminal names it: a published, current partition is listed
    for its data flags ("flagged") or because its raw listing could not be read."""
    if p.condition != "success":
        return p.condition
    return "flagged" if p.reason.startswith("data flags: ") else "unchecked"


def _watermark_lines(report: QualityReport) -> list[str]:
    w = report.watermark
    if w.last_compacted_date is None:
        first = "watermark: no last_compacted_date yet (no day is ready)"
    else:
        behind = ("up to date (yesterday is ready)" if w.days_behind == 0
                  else f"{w.days_behind} day{'s' if w.days_behind != 1 else ''} behind yesterday")
        first = f"watermark: last_compacted_date: {w.last_compacted_date} ({behind})"
    return [first, f"  last moved {w.moved_at or 'unknown (not recorded)'}; state updated "
            f"{w.state_updated_at or '-'}; report read in {report.elapsed_s:.2f} s"]


