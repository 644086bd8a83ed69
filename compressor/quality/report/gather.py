"""--quality-report: gather what the stores say about a range of days (read-only).

`gather` builds one typed `QualityReport` (`model.py`); `terminal.py`, `json_doc.py`
and `compressor.quality.html` render it. Separate from the renderers so that every
request the report makes is in this module and `partitions.py`, and so that the
report is read once and shown three ways.

What is read, and nothing else (no write of any kind: no verdict saved, no lease, no
cleanup, no conditional-write probe; tests/test_report.py lists both stores before and
after):

- `compacted/_state.json`: one GET;
- the collector's day verdict: one GET of `compacted/quality/date=D.json` per day. A
  day without a usable stored verdict (absent, malformed, PARTIAL/UNKNOWN, other rules
  version or primary exchange: what a run would score again) is scored in memory
  from its raw windows (one LIST and up to 96 GETs) and shown as `scored`, never saved;
- the raw prefixes, listings and meta.json fallbacks of `partitions.py`, which puts
  each partition-day in its condition (`CONDITIONS`).

The day's state (`DAY_STATES`, docs/quality.md "Quality report") is decided here
(`_day_status`); `model.py` says what each state means.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from compressor.discovery import Filters
from compressor.labels import RULES_VERSION
from compressor.layout import STATE_KEY, PartitionId, format_day, parse_day
from compressor.quality.report.model import (
    CONDITIONS,
    Cell,
    Collector,
    DayReport,
    Problem,
    QualityReport,
    Watermark,
)
from compressor.quality.report.partitions import (
    Checks,
    check_partitions,
    partition_cells,
    walk_raw,
)
from compressor.quality.windows import (
    DEFAULT_PRIMARY,
    DayVerdict,
    fetch_day_windows,
    load_verdict,
    score_day,
)
from compressor.state import PartitionState, event_day_from_of, parse_document
from compressor.storage.base import NotFound, Store, StoreConfigError, StoreError
from compressor.text import backfill_hint, one_line, utc_iso

#: Worst partitions listed (the total is reported too).
WORST_LIMIT = 15
#: Threads for raw listings and meta.json reads (S3Store pools 32 connections).
DEFAULT_WORKERS = 32
#: Days scored or loaded at once (scoring fetches a day's windows with 16 threads).
_VERDICT_WORKERS = 4
#: Worst first; `success` comes last (unchecked against raw, then with data flags).
_SEVERITY = {"quarantined": 0, "failed": 1, "not_compacted": 2, "stale": 3,
             "gone_from_raw": 4, "in_progress": 5, "success": 6}


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
            raw_pids = walk_raw(raw, filters, set(wanted), pool)
            doc = state_future.result()
            entries = _entries(doc, wanted, filters)
            checks = check_partitions(raw, compact, raw_pids, entries, pool,
                                      event_day_from_of(doc), datetime.fromtimestamp(clock(), UTC))
        collectors = {day: f.result() for day, f in verdict_futures.items()}

    cells = partition_cells(raw_pids, entries, checks, set(wanted))
    problems = _worst(cells)
    return QualityReport(
        generated_at=utc_iso(clock()),
        today=today,
        date_from=wanted[-1] if wanted else today,
        date_to=wanted[0] if wanted else today,
        raw_uri=raw.uri,
        compact_uri=compact.uri,
        primary_exchange=primary_exchange,
        watermark=_watermark(doc, today),
        days=_day_reports(wanted, cells, collectors, doc, entries, raw_pids, checks),
        worst=[Problem(c.key, c.condition, c.reason or _flag_reason(c), c.flags)
               for c in problems[:WORST_LIMIT]],
        worst_total=len(problems),
        cells=cells,
        elapsed_s=round(time.monotonic() - started, 3),
    )


def _day_reports(
    wanted: list[str], cells: list[Cell], collectors: dict[str, Collector],
    doc: dict[str, Any], entries: dict[str, PartitionState], raw_pids: list[PartitionId],
    checks: Checks,
) -> list[DayReport]:
    """One DayReport per wanted day, newest first."""
    lcd = doc["last_compacted_date"]
    first = min((key[-8:] for key in doc["partitions"]), default=None)
    by_day: dict[str, list[Cell]] = {day: [] for day in wanted}
    for cell in cells:
        by_day[cell.day].append(cell)
    previous_rows = _previous_rows(entries, wanted)
    # a prefix holding no data file (strays only) is no raw data; unlisted ones count
    raw_days = {pid.date for pid in raw_pids if checks.files.get(pid.state_key) != 0}
    moved = _rows_moved(entries)
    return [
        replace(_day_report(day, by_day[day], collectors[day], (lcd, first),
                            previous_rows.get(day), day in raw_days, checks.failed.get(day, 0)),
                rows_received=moved.get(day, (0, 0))[0], rows_given=moved.get(day, (0, 0))[1])
        for day in wanted
    ]


def _rows_moved(entries: dict[str, PartitionState]) -> dict[str, tuple[int, int]]:
    """Day -> rows its published partitions received across their midnights, and gave
    (the state entries' quality `rows_received`/`rows_given`)."""
    out: dict[str, tuple[int, int]] = {}
    for key, entry in entries.items():
        quality = entry.quality if entry.status == "success" and isinstance(
            entry.quality, dict) else {}
        got, gave = quality.get("rows_received", 0), quality.get("rows_given", 0)
        if isinstance(got, int) and isinstance(gave, int) and (got or gave):
            before = out.get(key[-8:], (0, 0))
            out[key[-8:]] = (before[0] + got, before[1] + gave)
    return out


def _worst(cells: list[Cell]) -> list[Cell]:
    """The cells worth listing, worst first (`_SEVERITY`, then flags, newest day, key)."""
    return sorted((c for c in cells if c.condition != "success" or c.flags or c.reason),
                  key=lambda c: (_SEVERITY[c.condition] - (0.5 if c.reason else 0.0),
                                 -len(c.flags), _neg_day(c.day), c.key))


def _watermark(doc: dict[str, Any], today: str) -> Watermark:
    lcd = doc["last_compacted_date"]
    yesterday = format_day(parse_day(today) - timedelta(days=1))
    behind = None if lcd is None else max(0, (parse_day(yesterday) - parse_day(lcd)).days)
    return Watermark(lcd, doc.get("last_compacted_moved_at"), doc.get("updated_at"), behind)


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
