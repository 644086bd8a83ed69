"""What the quality report is: the days it covers and the typed report.

Separate from gathering (`gather.py`, `partitions.py`: reading the stores) and from
rendering (`terminal.py`, `json_doc.py`, `compressor.quality.html`): every renderer
imports only this module, so none of them can read a store, and the report's shape
is read in one place (docs/quality.md "Quality report" documents every field).

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

from dataclasses import dataclass, field
from datetime import date, timedelta

from compressor.layout import format_day, parse_day

#: Days reported when neither --days nor --date-from is given.
DEFAULT_DAYS = 14
#: The longest range one report covers.
MAX_DAYS = 366

CONDITIONS = ("success", "stale", "failed", "quarantined", "in_progress", "not_compacted",
              "gone_from_raw")
#: A day's state (`DayReport.status`); docs/quality.md "Quality report" defines each.
DAY_STATES = ("ready", "pending", "no_raw_data", "not_compacted")


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
    #: Rows the days around gave the day's published partitions, and rows of its raw
    #: folders placed in them (docs/guarantees.md "Rows belong to their event day").
    rows_received: int = 0
    rows_given: int = 0

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
