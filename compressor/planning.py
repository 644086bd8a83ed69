"""Planning: which days a run covers and, per partition, compact or skip (and why).

Nothing here writes: a Plan is what `--dry-run` prints and what the job executes.
Days (docs/guarantees.md "How a run works"): a catch-up covers every raw day after
last_compacted_date, the lookback window before it (late raw files), and any day
at or before it that still has a partition whose state entry is not `success`.
Daily and catch-up runs also cover the days whose `success` entries carry a label
of other window rules, to relabel them (docs/quality.md "Collector health windows").
Days without raw data between the watermark and today are *empty days*: they hold
readiness back until their grace period has passed and a later day has raw data.
"""

from __future__ import annotations

import enum
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Protocol

from compressor.discovery import (
    Filters,
    Inventory,
    Listings,
    Partition,
    check_found,
    list_day,
    walk,
)
from compressor.eventday import shift
from compressor.labels import RULES_VERSION
from compressor.layout import PartitionId, format_day, parse_day
from compressor.meta import Published, read_published
from compressor.state import PartitionState
from compressor.storage.base import Store, StoreConfigError, StoreError
from compressor.text import backfill_hint, human_size, one_line

log = logging.getLogger(__name__)

#: Partitions listed (and their meta.json read) at once while planning.
PLAN_WORKERS = 8
#: Days at or before last_compacted_date that a catch-up checks again for late raw files.
DEFAULT_LOOKBACK_DAYS = 3
#: Full days an empty day (no raw data) waits before it may count as ready.
DEFAULT_EMPTY_DAY_GRACE = 2


class Mode(enum.StrEnum):
    DAILY = "daily"
    CATCH_UP = "catch-up"
    BACKFILL = "backfill"
    #: Remove compacted outputs and state entries of a range (compressor/cleanup.py).
    CLEANUP = "cleanup"
    #: Audit what is published, read-only (compressor/audit.py).
    VERIFY = "verify"


#: Modes that take --date-from/--date-to.
RANGE_MODES = frozenset({Mode.BACKFILL, Mode.CLEANUP, Mode.VERIFY})


class Action(enum.StrEnum):
    COMPACT = "compact"
    SKIP = "skip"
    #: Planning could not list or read the partition: recorded failed, retried next run.
    FAIL = "fail"


class Reason(enum.StrEnum):
    """Why a partition is compacted or skipped; the value is what the plan prints."""

    NEW = "not compacted yet"
    CHANGED = "raw files changed since compaction"
    MISMATCHED = "published pair not whole"
    OVERWRITE = "--overwrite"
    RETRY_QUARANTINE = "--retry-quarantine"
    QUARANTINE_KEY_GONE = "quarantined key no longer in the raw listing"
    UP_TO_DATE = "up to date"
    #: Up to date, but its day label was made by other window rules (docs/quality.md "Collector
    #: health windows"): the run relabels it in place, without recompacting.
    RELABEL = "up to date; day label of other rules"
    NO_DATA = "no raw data files"
    QUARANTINED = "quarantined"
    UNREADABLE = "could not list or read it"
    CAPPED = "beyond --max-partitions"
    #: Rows of this day may still arrive under the next day's folder (docs/guarantees.md
    #: "Rows belong to their event day"): not compacted yet, the day is not ready.
    UNSETTLED = "next day's first files not there yet"
    #: Published by the flush-day rule; a midnight of it now moves rows (a backfill
    #: moved event_day_from back over it).
    DAY_RULE = "rows move to their event day"


#: Skips that leave a partition done (it counts for last_compacted_date and exit 0).
DONE_SKIPS = frozenset({Reason.UP_TO_DATE, Reason.RELABEL, Reason.NO_DATA})


class StateView(Protocol):
    """What planning reads of the state (compressor.state.StateStore satisfies it)."""

    @property
    def last_compacted_date(self) -> str | None: ...

    def get(self, pid: PartitionId | str) -> PartitionState | None: ...

    def days_not_success(self, until: str) -> set[str]: ...

    def days_labelled_by_other_rules(self, version: str) -> set[str]: ...

    @property
    def event_day_from(self) -> str: ...

    def days_by_flush_rule(self) -> list[str]: ...


@dataclass(frozen=True)
class PlannedPartition:
    partition: Partition
    action: Action
    reason: Reason
    detail: str = ""
    #: The partition's outputs as read while planning.
    published: Published = field(default_factory=Published)

    @property
    def pid(self) -> PartitionId:
        return self.partition.pid

    @property
    def describe(self) -> str:
        return f"{self.reason.value}" + (f" ({self.detail})" if self.detail else "")


@dataclass(frozen=True)
class Plan:
    """The days of a run and the decision for every partition of them, day ascending."""

    mode: Mode
    today: str
    days: list[str]
    #: Days whose completion may move last_compacted_date (empty: this run never moves it).
    ready_days: list[str]
    last_compacted_date: str | None
    partitions: list[PlannedPartition] = field(default_factory=list)
    #: Days of `ready_days` without raw data -> whether their grace has passed.
    empty_days: dict[str, bool] = field(default_factory=dict)
    #: The first day whose midnights move rows to their event day, as this run uses it.
    event_day_from: str | None = None
    #: True when this run moves event_day_from back (a backfill over older days).
    lowers_event_day_from: bool = False
    #: Published days whose rows are filed by flush day (state.days_by_flush_rule).
    flush_rule_days: list[str] = field(default_factory=list)

    def flush_rule_note(self) -> str | None:
        """One line on the days still filed by flush day and the backfill that moves
        them (None when there are none), for the plan and the run's log."""
        days = self.flush_rule_days
        if not days or self.event_day_from is None:
            return None
        last = max(days[-1], shift(self.event_day_from, -1))
        return (f"{len(days)} published day(s) {days[0]}..{days[-1]} keep rows filed by "
                f"flush day (docs/guarantees.md \"Rows belong to their event day\"): "
                f"--mode backfill --date-from {days[0]} --date-to {last} moves them")

    def for_day(self, day: str) -> list[PlannedPartition]:
        return [p for p in self.partitions if p.pid.date == day]

    @property
    def to_compact(self) -> list[PlannedPartition]:
        return [p for p in self.partitions if p.action is Action.COMPACT]

    def render(self) -> str:
        """Human-readable plan (what --dry-run prints)."""
        days = ", ".join(self.days) or "none"
        compact = self.to_compact
        lines = [
            f"mode {self.mode.value}, today {self.today}, last_compacted_date "
            f"{self.last_compacted_date or '-'}",
            f"days: {days}",
            f"partitions: {len(self.partitions)}, to compact: {len(compact)} "
            f"({sum(p.partition.file_count for p in compact)} files, "
            f"{human_size(sum(p.partition.total_bytes for p in compact))}), "
            f"skipped: {len(self.partitions) - len(compact)}",
        ]
        for p in self.partitions:
            verb = "relabel" if p.reason is Reason.RELABEL else p.action.value
            lines.append(
                f"  {verb:<7} {p.pid.state_key:<44} {p.partition.file_count:>6} files "
                f"{human_size(p.partition.total_bytes):>9}  {p.describe}"
            )
        for day, ready in sorted(self.empty_days.items()):
            lines.append(f"  empty   {day}: no raw data; "
                         + ("counts as ready (grace passed, later days have data)" if ready
                            else "holds readiness back (within its grace, or no later data)"))
        note = self.flush_rule_note()
        if note and not self.lowers_event_day_from:
            lines.append(note)
        if self.lowers_event_day_from:
            lines.append(f"event_day_from: moved back to {self.event_day_from} (these days "
                         "are compacted again with rows in their event day)")
        if not self.ready_days:
            lines.append("last_compacted_date: not moved by this run")
        return "\n".join(lines)


# --------------------------------------------------------------------------- days


def check_dates(
    mode: Mode, today: date, date_from: str | None, date_to: str | None
) -> tuple[date, date] | None:
    """Validate the date flags; the range or None. ValueError names the flag.

    A backfill without --date-from covers every raw day not yet compacted (newest
    first, --max-days); cleanup and verify always need a range."""
    if mode not in RANGE_MODES:
        if date_from or date_to:
            raise ValueError("--date-from/--date-to apply to --mode backfill, cleanup and "
                             "verify only")
        return None
    if not date_from:
        if date_to:
            raise ValueError("--date-to needs --date-from")
        if mode is Mode.BACKFILL:
            return None
        raise ValueError(f"--mode {mode.value} needs --date-from YYYYMMDD")
    first = _flag_day("--date-from", date_from)
    last = _flag_day("--date-to", date_to) if date_to else first
    if last < first:
        raise ValueError(f"--date-to {date_to} is before --date-from {date_from}")
    if last >= today:
        flag = "--date-to" if date_to else "--date-from"
        raise ValueError(
            f"{flag} {format_day(last)} is today or in the future (today is "
            f"{format_day(today)} UTC); only past days are compacted"
        )
    return first, last


def _flag_day(flag: str, text: str) -> date:
    try:
        return parse_day(text)
    except ValueError:
        raise ValueError(f"{flag}: not a YYYYMMDD date: {text!r}") from None


@dataclass(frozen=True)
class Days:
    """The days of one run (see `plan_days`)."""

    #: Days whose partitions are planned, ascending.
    run: list[str]
    #: Days whose completion may move last_compacted_date, ascending (every calendar day
    #: after it and before today, raw data or not); empty: this run never moves it.
    ready: list[str]
    #: The days of `ready` without raw data -> whether they count as ready (`empty_day_ready`).
    empty: dict[str, bool]


def pending_days(today: date, last_compacted: str | None, raw_dates: Sequence[str]) -> list[str]:
    """Calendar days D with last_compacted < D < today; with no state, yesterday if it has
    raw data (a fresh start never vouches for days it knows nothing of)."""
    yesterday = today - timedelta(days=1)
    if last_compacted is None:
        return [format_day(yesterday)] if format_day(yesterday) in raw_dates else []
    first = parse_day(last_compacted) + timedelta(days=1)
    return [format_day(first + timedelta(days=n)) for n in range((yesterday - first).days + 1)]


def empty_day_ready(day: str, today: date, raw_dates: Sequence[str], grace_days: int) -> bool:
    """Whether a day without raw data counts as ready.

    Only once `grace_days` full days have passed since it ended (late uploads land
    first) and a later day has raw data (the collector is alive: the gap is real, not
    a collector that stopped or a wrong bucket).
    """
    aged = (today - parse_day(day)).days > grace_days
    return aged and any(d > day for d in raw_dates)


def plan_days(
    mode: Mode,
    today: date,
    last_compacted: str | None,
    raw_dates: Sequence[str],
    backfill: tuple[date, date] | None = None,
    *,
    lookback_days: int = DEFAULT_LOOKBACK_DAYS,
    empty_day_grace: int = DEFAULT_EMPTY_DAY_GRACE,
    retry_days: Sequence[str] = (),
    relabel_days: Sequence[str] = (),
) -> Days:
    """The days a run covers, those that may move readiness, and the empty ones.

    catch-up: the pending days with raw data, the `lookback_days` raw days at or before
    last_compacted_date, and `retry_days` (days at or before it with a partition not
    `success`); daily: yesterday. Both may move readiness over the pending days, and
    both also cover `relabel_days` with raw data (days with a `success` labelled by
    other window rules: relabelled without recompacting, docs/quality.md "Collector health
    windows"). backfill: the range, never moves readiness.
    """
    if mode is Mode.BACKFILL:
        assert backfill is not None
        first, last = backfill
        days = [format_day(first + timedelta(days=n)) for n in range((last - first).days + 1)]
        return Days(days, [], {})
    raw = set(raw_dates)
    pending = pending_days(today, last_compacted, raw_dates)
    empty = {d: empty_day_ready(d, today, raw_dates, empty_day_grace)
             for d in pending if d not in raw}
    end = format_day(today)
    relabel = {d for d in relabel_days if d in raw and d < end}
    if mode is Mode.DAILY:
        return Days(sorted({format_day(today - timedelta(days=1))} | relabel), pending, empty)
    run = {d for d in pending if d in raw} | relabel
    if last_compacted is not None:
        start = format_day(parse_day(last_compacted) - timedelta(days=max(0, lookback_days - 1)))
        if lookback_days > 0:
            run |= {d for d in raw if start <= d <= last_compacted}
        run |= {d for d in retry_days if d in raw and d <= last_compacted}
    return Days(sorted(d for d in run if d < end), pending, empty)


# --------------------------------------------------------------------------- partitions


@dataclass(frozen=True)
class Shard:
    """This run's share of the partitions: those whose stable hash falls on `index`.

    The hash is of the partition's state key (sha256, not Python's salted hash), so
    every process, host and re-run agrees on which shard owns a partition (docs/scale.md
    "Backfilling a month on Kubernetes or AWS Batch")."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"--shard {self.index}/{self.count}: K must be in 0..N-1")

    def owns(self, pid: PartitionId) -> bool:
        digest = hashlib.sha256(pid.state_key.encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index

    @classmethod
    def parse(cls, text: str, env: Mapping[str, str]) -> Shard:
        """'K/N', or 'auto/N' with K from JOB_COMPLETION_INDEX (a Kubernetes Indexed Job)
        or AWS_BATCH_JOB_ARRAY_INDEX (an AWS Batch array job); ValueError naming it."""
        index, sep, count = text.partition("/")
        if not sep or not count.strip().isdigit() or int(count) < 1:
            raise ValueError(f"--shard: expected K/N or auto/N, got {text!r}")
        if index.strip() == "auto":
            names = ("JOB_COMPLETION_INDEX", "AWS_BATCH_JOB_ARRAY_INDEX")
            found = [env[name] for name in names if env.get(name)]
            if not found:
                raise ValueError("--shard auto/N: neither JOB_COMPLETION_INDEX nor "
                                 "AWS_BATCH_JOB_ARRAY_INDEX is set")
            index = found[0]
        if not index.strip().isdigit():
            raise ValueError(f"--shard: shard index is not a whole number: {index!r}")
        return cls(int(index), int(count))


@dataclass(frozen=True)
class PlanOptions:
    mode: Mode = Mode.CATCH_UP
    today: date = field(default_factory=date.today)
    #: First and last day of a backfill (`check_dates`); None in the other modes.
    backfill: tuple[date, date] | None = None
    filters: Filters = field(default_factory=Filters)
    overwrite: bool = False
    retry_quarantine: bool = False
    lookback_days: int = DEFAULT_LOOKBACK_DAYS
    empty_day_grace: int = DEFAULT_EMPTY_DAY_GRACE
    shard: Shard | None = None
    #: A backfill without a range: at most this many days, newest first (None: all).
    max_days: int | None = None
    #: At most this many partitions compacted; the rest are planned `skip` (capped).
    max_partitions: int | None = None
    #: The run's clock (UTC): whether a day's next midnight has settled (eventday.settled).
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def filtered(self) -> bool:
        """A run that covers only part of a day never vouches for the day."""
        f = self.filters
        return (f.exchanges is not None or f.streams is not None or f.symbols is not None
                or self.shard is not None or self.max_partitions is not None)


def build_plan(raw: Store, compact: Store, state: StateView, options: PlanOptions) -> Plan:
    """Walk the raw store, choose the days, list each partition and decide for it.

    A partition that cannot be listed or read is planned `fail` (recorded, retried by
    the next run); only a store that is unusable as a whole (StoreConfigError) stops.
    """
    inventory: Inventory = walk(raw, options.filters)
    check_found(inventory, options.filters, raw.uri)
    if options.shard is not None:
        shard = options.shard
        inventory = Inventory({day: kept for day, pids in inventory.by_day.items()
                               if (kept := [p for p in pids if shard.owns(p)])})
    last = state.last_compacted_date
    if options.mode is Mode.BACKFILL and options.backfill is None:
        days = Days(open_backfill_days(inventory, state, options.today, options.max_days), [], {})
    else:
        retry = (state.days_not_success(last) if last and options.mode is Mode.CATCH_UP
                 else set())
        relabel = (state.days_labelled_by_other_rules(RULES_VERSION)
                   if options.mode is not Mode.BACKFILL else set())

        def choose(raw_dates: Sequence[str]) -> Days:
            return plan_days(options.mode, options.today, last, raw_dates, options.backfill,
                             lookback_days=options.lookback_days,
                             empty_day_grace=options.empty_day_grace, retry_days=sorted(retry),
                             relabel_days=sorted(relabel))

        days = choose(inventory.dates)
    event_day_from, lowers = _event_day_from(state.event_day_from, options)
    if lowers:
        days = _with_cutover_day(days, state.event_day_from, inventory)
    pids = [pid for day in days.run for pid in inventory.partitions(day)]
    listings = Listings(raw)

    def decide_one(pid: PartitionId) -> PlannedPartition:
        try:
            partition = list_day(raw, pid, event_day_from, options.now, listings)
            published = read_published(compact, pid)
        except StoreConfigError:
            raise
        except StoreError as exc:
            return PlannedPartition(Partition(pid), Action.FAIL, Reason.UNREADABLE,
                                    one_line(str(exc), 300))
        return decide(partition, published, state.get(pid), options)

    planned = _cap(_parallel_map(decide_one, pids), options.max_partitions)
    strays = stray_only_days(planned)
    if strays and options.mode is not Mode.BACKFILL:
        # prefixes holding no data file are no raw data: such days are empty days
        days = choose([d for d in inventory.dates if d not in strays])
        planned = [p for p in planned if p.pid.date in days.run]
    ready, empty = days.ready, days.empty
    if options.filtered:
        ready, empty = [], {}  # a narrowed run never vouches for a whole day
    if last is None and ready:
        _warn_fresh_start(ready[0], [d for d in inventory.dates if d < ready[0]
                                     and not _compacted(inventory.partitions(d), state)])
    return Plan(options.mode, format_day(options.today), days.run, ready, last, planned, empty,
                event_day_from, lowers, state.days_by_flush_rule())


def _event_day_from(stored: str, options: PlanOptions) -> tuple[str, bool]:
    """The event_day_from this run uses, and whether it moves it back.

    A backfill whose range starts before it and reaches the day before it moves it
    back to its first day: those days are compacted again with their rows in their
    event day (docs/guarantees.md "Rows belong to their event day"). Any other run
    leaves the days before it as they are, placed by flush day."""
    if options.mode is not Mode.BACKFILL or options.backfill is None:
        return stored, False
    first, last = (format_day(d) for d in options.backfill)
    if first < stored <= shift(last, 1):
        return first, True
    return stored, False


def _with_cutover_day(days: Days, old_cutover: str, inventory: Inventory) -> Days:
    """The backfill's days plus the old event_day_from day itself: its first midnight
    changes mode, so it is compacted again too (when it has raw data)."""
    if old_cutover in days.run or old_cutover not in inventory.by_day:
        return days
    return replace(days, run=sorted([*days.run, old_cutover]))


def _compacted(pids: Sequence[PartitionId], state: StateView) -> bool:
    """Whether every raw partition of a day has a `success` entry (a backfill made it)."""
    return all((entry := state.get(pid)) is not None and entry.status == "success"
               for pid in pids)


def _warn_fresh_start(first: str, older: Sequence[str]) -> None:
    """A first run vouches for its day only; the raw days before it that no backfill
    compacted yet fall under the watermark it sets (docs/operations.md
    "compacted/_state.json"): say so, with the fix."""
    if older:
        log.warning("fresh start: no last_compacted_date yet, so %s is compacted and becomes "
                    "it; the %d raw days before it (%s..%s) are not compacted, yet readers "
                    "will take them as ready: backfill them: %s", first, len(older), older[0],
                    older[-1], backfill_hint(older[0]).replace(
                        f"--date-to {older[0]}", f"--date-to {older[-1]}"))


def stray_only_days(planned: Sequence[PlannedPartition]) -> set[str]:
    """Days whose every partition prefix was listed and holds no raw data file (only
    strays such as `.tmp` or `._*` objects): no raw data, like a day without
    any prefix, so the empty-day grace applies (README "Readiness never lies"). A
    partition that could not be listed keeps its day a raw day (it fails and holds
    readiness back)."""
    only: dict[str, bool] = {}
    for p in planned:
        day = p.pid.date
        only[day] = only.get(day, True) and p.reason is Reason.NO_DATA
    return {day for day, stray in only.items() if stray}


def open_backfill_days(
    inventory: Inventory, state: StateView, today: date, max_days: int | None
) -> list[str]:
    """A backfill without a range: every raw day before today with a partition whose
    state entry is not `success`, newest first, at most `max_days` of them."""
    end = format_day(today)
    days = []
    for day in sorted(inventory.dates, reverse=True):
        if day >= end:
            continue
        entries = (state.get(pid) for pid in inventory.partitions(day))
        if any(entry is None or entry.status != "success" for entry in entries):
            days.append(day)
        if max_days is not None and len(days) >= max_days:
            break
    return days


def _cap(planned: list[PlannedPartition], limit: int | None) -> list[PlannedPartition]:
    """At most `limit` partitions to compact, in plan order; the rest wait (capped)."""
    if limit is None:
        return planned
    out, taken = [], 0
    for p in planned:
        if p.action is Action.COMPACT:
            if taken >= limit:
                p = PlannedPartition(p.partition, Action.SKIP, Reason.CAPPED, "",
                                     p.published)
            else:
                taken += 1
        out.append(p)
    return out


def _parallel_map(
    fn: Callable[[PartitionId], PlannedPartition], pids: list[PartitionId]
) -> list[PlannedPartition]:
    if len(pids) <= 1:
        return [fn(pid) for pid in pids]
    with ThreadPoolExecutor(max_workers=PLAN_WORKERS, thread_name_prefix="plan") as pool:
        return list(pool.map(fn, pids))


def decide(
    partition: Partition,
    published: Published,
    entry: PartitionState | None,
    options: PlanOptions,
) -> PlannedPartition:
    """Compact or skip one partition, with the reason the plan and the log show."""

    def plan(action: Action, reason: Reason, detail: str = "") -> PlannedPartition:
        return PlannedPartition(partition, action, reason, detail, published)

    if partition.file_count == 0:
        return plan(Action.SKIP, Reason.NO_DATA)
    if not partition.settled:
        return plan(Action.SKIP, Reason.UNSETTLED, "rows of this day may still arrive")
    if entry is not None and entry.status == "quarantined":
        listed = {f.key for f in partition.files}
        if options.retry_quarantine:
            return plan(Action.COMPACT, Reason.RETRY_QUARANTINE)
        if entry.failed_key and entry.failed_key not in listed:
            return plan(Action.COMPACT, Reason.QUARANTINE_KEY_GONE, entry.failed_key)
        return plan(Action.SKIP, Reason.QUARANTINED, entry.error or "")
    if options.overwrite:
        return plan(Action.COMPACT, Reason.OVERWRITE)
    mismatch = published.mismatch()
    if mismatch is not None:
        return plan(Action.COMPACT, Reason.MISMATCHED, mismatch)
    if published.meta is None:
        return plan(Action.COMPACT, Reason.NEW)
    if published.current_for(partition.fingerprint):
        if not published.labelled_by(RULES_VERSION):
            version = published.meta.rules_version or "unknown"
            return plan(Action.SKIP, Reason.RELABEL, f"rules {version} -> {RULES_VERSION}")
        return plan(Action.SKIP, Reason.UP_TO_DATE)
    if published.meta.day_rule is None and partition.edges is not None and (
            partition.edges.moves_rows):
        return plan(Action.COMPACT, Reason.DAY_RULE)
    before = published.meta.source_files
    return plan(
        Action.COMPACT, Reason.CHANGED, f"{before} files then, {partition.file_count} now"
    )
