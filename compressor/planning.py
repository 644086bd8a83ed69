"""Planning: which days a run covers and, per partition, compact or skip (and why).

Nothing here writes: a Plan is what `--dry-run` prints and what the job executes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, Protocol

from compressor.discovery import Filters, Inventory, Partition, list_partition, walk
from compressor.layout import PartitionId, format_day, parse_day
from compressor.publish import read_meta
from compressor.state import PartitionState
from compressor.storage.base import Store
from compressor.text import human_size

#: Partitions listed (and their meta.json read) at once while planning.
PLAN_WORKERS = 8


class Mode(enum.StrEnum):
    DAILY = "daily"
    CATCH_UP = "catch-up"
    BACKFILL = "backfill"


class Action(enum.StrEnum):
    COMPACT = "compact"
    SKIP = "skip"


class Reason(enum.StrEnum):
    """Why a partition is compacted or skipped; the value is what the plan prints."""

    NEW = "not compacted yet"
    CHANGED = "raw files changed since compaction"
    OVERWRITE = "--overwrite"
    RETRY_QUARANTINE = "--retry-quarantine"
    QUARANTINE_KEY_GONE = "quarantined key no longer in the raw listing"
    UP_TO_DATE = "up to date"
    NO_DATA = "no raw data files"
    QUARANTINED = "quarantined"


#: Skips that leave a partition done (it counts for last_compacted_date and exit 0).
DONE_SKIPS = frozenset({Reason.UP_TO_DATE, Reason.NO_DATA})


class StateView(Protocol):
    """What planning reads of the state (compressor.state.StateStore satisfies it)."""

    @property
    def last_compacted_date(self) -> str | None: ...

    def get(self, pid: PartitionId | str) -> PartitionState | None: ...


@dataclass(frozen=True)
class PlannedPartition:
    partition: Partition
    action: Action
    reason: Reason
    detail: str = ""
    #: The published meta.json read while planning (None when absent).
    meta: dict[str, Any] | None = None

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
            lines.append(
                f"  {p.action.value:<7} {p.pid.state_key:<44} {p.partition.file_count:>6} files "
                f"{human_size(p.partition.total_bytes):>9}  {p.describe}"
            )
        if not self.ready_days:
            lines.append("last_compacted_date: not moved by this run")
        return "\n".join(lines)


# --------------------------------------------------------------------------- days


def check_dates(
    mode: Mode, today: date, date_from: str | None, date_to: str | None
) -> tuple[date, date] | None:
    """Validate the date flags; the backfill range or None. ValueError names the flag."""
    if mode is not Mode.BACKFILL:
        if date_from or date_to:
            raise ValueError("--date-from/--date-to apply to --mode backfill only")
        return None
    if not date_from:
        raise ValueError("--mode backfill needs --date-from YYYYMMDD")
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


def catch_up_days(today: date, last_compacted: str | None, raw_dates: Sequence[str]) -> list[str]:
    """Raw dates D with last_compacted < D < today, ascending; no state: yesterday only.

    Only days with raw data count: a day the raw store knows nothing of is never
    declared ready (an empty or wrong bucket must not look like a quiet day).
    """
    if last_compacted is None:
        yesterday = format_day(today - timedelta(days=1))
        return [yesterday] if yesterday in raw_dates else []
    end = format_day(today)
    return sorted(d for d in set(raw_dates) if last_compacted < d < end)


def plan_days(
    mode: Mode,
    today: date,
    last_compacted: str | None,
    raw_dates: Sequence[str],
    backfill: tuple[date, date] | None = None,
) -> tuple[list[str], list[str]]:
    """(days to run, days whose completion may move last_compacted_date)."""
    pending = catch_up_days(today, last_compacted, raw_dates)
    if mode is Mode.BACKFILL:
        assert backfill is not None
        first, last = backfill
        return [format_day(first + timedelta(days=n)) for n in range((last - first).days + 1)], []
    if mode is Mode.DAILY:
        return [format_day(today - timedelta(days=1))], pending
    return pending, pending


# --------------------------------------------------------------------------- partitions


@dataclass(frozen=True)
class PlanOptions:
    mode: Mode = Mode.CATCH_UP
    today: date = field(default_factory=date.today)
    #: First and last day of a backfill (`check_dates`); None in the other modes.
    backfill: tuple[date, date] | None = None
    filters: Filters = field(default_factory=Filters)
    overwrite: bool = False
    retry_quarantine: bool = False

    @property
    def filtered(self) -> bool:
        f = self.filters
        return f.exchanges is not None or f.streams is not None or f.symbols is not None


def build_plan(raw: Store, compact: Store, state: StateView, options: PlanOptions) -> Plan:
    """Walk the raw store, choose the days, list each partition and decide for it."""
    inventory: Inventory = walk(raw, options.filters)
    last = state.last_compacted_date
    days, ready = plan_days(options.mode, options.today, last, inventory.dates, options.backfill)
    if options.filtered:
        ready = []  # a narrowed run never vouches for a whole day
    pids = [pid for day in days for pid in inventory.partitions(day)]

    def decide_one(pid: PartitionId) -> PlannedPartition:
        partition = list_partition(raw, pid)
        return decide(partition, read_meta(compact, pid), state.get(pid), options)

    planned = _parallel_map(decide_one, pids)
    return Plan(options.mode, format_day(options.today), days, ready, last, planned)


def _parallel_map(
    fn: Callable[[PartitionId], PlannedPartition], pids: list[PartitionId]
) -> list[PlannedPartition]:
    if len(pids) <= 1:
        return [fn(pid) for pid in pids]
    with ThreadPoolExecutor(max_workers=PLAN_WORKERS, thread_name_prefix="plan") as pool:
        return list(pool.map(fn, pids))


def decide(
    partition: Partition,
    meta: dict[str, Any] | None,
    entry: PartitionState | None,
    options: PlanOptions,
) -> PlannedPartition:
    """Compact or skip one partition, with the reason the plan and the log show."""

    def plan(action: Action, reason: Reason, detail: str = "") -> PlannedPartition:
        return PlannedPartition(partition, action, reason, detail, meta)

    if partition.file_count == 0:
        return plan(Action.SKIP, Reason.NO_DATA)
    if entry is not None and entry.status == "quarantined":
        listed = {f.key for f in partition.files}
        if options.retry_quarantine:
            return plan(Action.COMPACT, Reason.RETRY_QUARANTINE)
        if entry.failed_key and entry.failed_key not in listed:
            return plan(Action.COMPACT, Reason.QUARANTINE_KEY_GONE, entry.failed_key)
        return plan(Action.SKIP, Reason.QUARANTINED, entry.error or "")
    if options.overwrite:
        return plan(Action.COMPACT, Reason.OVERWRITE)
    if meta is None:
        return plan(Action.COMPACT, Reason.NEW)
    if meta.get("source_fingerprint") == partition.fingerprint:
        return plan(Action.SKIP, Reason.UP_TO_DATE)
    before = meta.get("source_files")
    return plan(
        Action.COMPACT, Reason.CHANGED, f"{before} files then, {partition.file_count} now"
    )
