"""The collector's health windows (BRIEF §5) scored one by one, then the day (rules 2.0.0).

Input: `quality/date=<YYYYMMDD>/window=<HHMM>.json` in the RAW bucket, one per 15
minutes (96 a day), named as the collector names them (docs/quality.md "Collector health
windows"): HHMM is the window's START and the date is the start's date, so a day
runs `window=0000.json` .. `window=2345.json` and its last window (23:45-00:00) is
`date=D/window=2345.json`. Output: one `DayVerdict` per day, stored in the compact
bucket at `compacted/quality/date=<YYYYMMDD>.json` (`verdict_key`).

The thresholds are the previous implementation's, reproduced exactly as the named
constants below. Rules 2.0.0 read the same signals as 1.0.0 but place each window by
its own `window_start` (1.0.0 read the key as the window's end, so every window the
collector really writes was malformed and every real day UNKNOWN). Where the rules
were silent this module decides, and says so:

Window (`score_window`):

1. The signal rules give BAD, else DEGRADED, else GOOD (see the constants).
2. The starting verdict is the WORSE of the signal verdict and the collector's own
   `quality`. The collector sees things the signals do not (e.g. its own
   self-checks), so its BAD or DEGRADED is never ignored; and a collector that says
   GOOD does not hide a signal that says otherwise.
3. The downgrade (`DOWNGRADE_*`) then turns BAD into DEGRADED when nothing the data
   relies on was hurt (no drops, every exchange offline < 300 s, queue < 90 %). A
   BAD that comes from the signals can never meet it (drops > 0, queue >= 90 and
   primary offline > 600 each contradict one of its conditions), so it only bites on
   the collector's own BAD: this is why step 2 must include the collector's verdict.
4. Last, the healthy-primary upgrade (`HEALTHY_*`): a DEGRADED window whose primary
   exchange was healthy counts as GOOD (also one just downgraded from BAD).

A primary exchange absent from `offline_seconds_by_exchange` counts as offline for
the whole window (`actual_duration_seconds`, at most 900 s), and one absent from
`eps_by_exchange` is never "healthy": no report is no evidence that it was collected
(a misspelt primary therefore scores BAD days, never silently GOOD ones).

Slot: a window's slot is its `window_start`, which must be a quarter hour
(:00/:15/:30/:45 UTC, whole minutes) with `window_end` = start + 900 s, else the
window is malformed. The first window after a collector start keeps the nominal
quarter-hour start; `is_partial` and `actual_duration_seconds` tell its real
coverage. The key is checked against the start (`window_key`): a key that disagrees
is MISNAMED (`misnamed`, keys named in `misnamed_keys`, capped). A misnamed window
still counts, once, in the slot of its `window_start`; misnaming alone never lowers
the day's label (the coverage is there), but it is reported. So:

- two objects claiming one slot: the one whose key agrees wins and the others are
  misnamed duplicates; when none agrees, identical bytes count once (all misnamed)
  and different bytes are not trusted (each malformed, the slot missing);
- a window in D's folder whose `window_start` is on another day belongs to that
  day: misnamed in D's verdict, not counted in D's slots;
- the old "named by end" convention put D's 23:45 window at `date=D+1/window=0000.json`
  (or `date=D/window=2400.json`): when D's folder has windows but none starting at
  23:45, `fetch_day_windows` also reads that one neighbour key, and it counts for D
  (misnamed) when its `window_start` is D 23:45. Any other object outside D's folder
  whose start is not on D is the other day's business.

Day (`score_day`), precedence BAD > PARTIAL > DEGRADED > GOOD, UNKNOWN when no window
is usable at all (never GOOD without evidence). Every triggered reason is listed, the
deciding ones first (a note on misnamed windows last).

- Coverage: a slot (one of the 96 quarter hours) without a usable window is
  `missing`, whether no object exists or its object is malformed. Missing slots
  count like partial windows for the PARTIAL rule (full windows = 96 - partial -
  missing), and a day with any missing slot or any malformed object is never GOOD
  (at best DEGRADED): missing coverage must show (BRIEF §5).
- Malformed (`malformed`, keys named in `malformed_keys`, capped): not UTF-8 JSON, not
  an object, a required field missing or of the wrong type (negative and non-finite
  numbers included), a `window_start` that is not a quarter hour, a `window_end` that
  is not start + 900 s, or a duplicate slot with different contents (above). Nothing
  malformed raises out of `score_day`.
- Required fields are the ones the rules read: `window_start`, `window_end`,
  `quality`, `is_partial`, and the signals `offline_seconds_by_exchange`,
  `eps_by_exchange` (`min` per exchange), `dropped_events`, `queue_pct_peak`,
  `drain_mode_accelerated_seconds`, `reconnects`. The other documented signals are
  type-checked when present but may be absent.
- Partial windows keep their label (a partial BAD window is a BAD window) and their
  drops and offline seconds count in the day's totals.

Readers should compare a loaded verdict's `rules_version` with `RULES_VERSION` and
re-score when they differ (verdicts stored by 1.0.0 lack the misnamed count; they
still load, with 0, and are re-scored).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from compressor.labels import RULES_VERSION, Label
from compressor.layout import parse_day
from compressor.storage.base import NotFound, Store
from compressor.text import utc_iso

log = logging.getLogger(__name__)

# ------------------------------------------------------------------ the rules (2.0.0)

WINDOWS_PER_DAY = 96
"""Windows expected in a day: one per 15 minutes."""

WINDOW_SECONDS = 900
"""Nominal length of a window."""

DEFAULT_PRIMARY = "binance"
"""The primary exchange, whose offline time and health the rules single out."""

BAD_DROPPED_EVENTS = 0
"""Window BAD when `dropped_events` > this (any drop at all)."""

BAD_QUEUE_PCT = 90.0
"""Window BAD when `queue_pct_peak` >= this."""

BAD_PRIMARY_OFFLINE_S = 600.0
"""Window BAD when the primary exchange's offline seconds > this."""

DEGRADED_OFFLINE_S = 180.0
"""Window DEGRADED when the largest offline seconds of ANY exchange > this."""

DEGRADED_DRAIN_S = 180.0
"""Window DEGRADED when `drain_mode_accelerated_seconds` > this."""

DEGRADED_RECONNECTS = 5
"""Window DEGRADED when `reconnects` >= this."""

DOWNGRADE_MAX_OFFLINE_S = 300.0
"""A BAD window with no drops, largest offline < this and queue < DOWNGRADE_QUEUE_PCT
becomes DEGRADED."""

DOWNGRADE_QUEUE_PCT = 90.0
"""Queue bound (<) of the BAD -> DEGRADED downgrade."""

HEALTHY_QUEUE_PCT = 50.0
"""A DEGRADED window counts as GOOD when the primary is healthy: primary offline 0, no
drops, queue < this, and primary eps min > HEALTHY_EPS_MIN."""

HEALTHY_EPS_MIN = 100.0
"""Primary events-per-second minimum (>) of the healthy-primary upgrade."""

DAY_BAD_WINDOWS = 3
"""Day BAD when this many windows or more are BAD."""

DAY_BAD_DROPPED = 100_000
"""Day BAD when the day's total `dropped_events` > this."""

DAY_BAD_PRIMARY_OFFLINE_S = 3600.0
"""Day BAD when the primary's total offline seconds > this."""

DAY_DEGRADED_BAD_WINDOWS = 1
"""Day DEGRADED when at least this many windows are BAD (and fewer than DAY_BAD_WINDOWS)."""

DAY_DEGRADED_WINDOWS = 10
"""Day DEGRADED when this many windows or more are DEGRADED."""

DAY_DEGRADED_PRIMARY_OFFLINE_S = 900.0
"""Day DEGRADED when the primary's total offline seconds > this."""

DAY_PARTIAL_MIN_FULL = 80
"""Day PARTIAL when fewer full windows than this exist (full = 96 - partial - missing)."""

MALFORMED_KEYS_CAP = 20
"""At most this many malformed (and this many misnamed) keys are named in a DayVerdict
(`counts.malformed` and `counts.misnamed` have all)."""

WINDOWS_PREFIX = "quality/"
VERDICT_PREFIX = "compacted/quality/"

_KEY_RE = re.compile(r"quality/date=(?P<day>\d{8})/window=(?P<hhmm>\d{4})\.json")
_ISO_Z_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
_SEVERITY = {Label.GOOD: 0, Label.DEGRADED: 1, Label.BAD: 2}
_WINDOW_LABELS = tuple(_SEVERITY)


def windows_prefix(day: str) -> str:
    """The raw-bucket prefix of the day's windows, ending with '/'."""
    parse_day(day)
    return f"{WINDOWS_PREFIX}date={day}/"


def verdict_key(day: str) -> str:
    """Where the day's verdict is stored in the compact bucket."""
    parse_day(day)
    return f"{VERDICT_PREFIX}date={day}.json"


def slot_of(key: str) -> tuple[str, int, str]:
    """(day, slot index 0..95, HHMM) a window key names; ValueError otherwise.

    The collector names a window by its START: slot k starts at 00:00 + 15 k minutes,
    so `0000` is slot 0 and `2345` slot 95. The key only names the slot; the window's
    own `window_start` decides where it counts (module docstring).
    """
    match = _KEY_RE.fullmatch(key)
    if match is None:
        raise ValueError(f"key: not quality/date=YYYYMMDD/window=HHMM.json: {key!r}")
    day, hhmm = match["day"], match["hhmm"]
    try:
        parse_day(day)
    except ValueError as exc:
        raise ValueError(f"key: {exc}") from None
    hours, minutes = int(hhmm[:2]), int(hhmm[2:])
    if hours > 23 or minutes % 15:
        raise ValueError(f"key: {hhmm} is not the start of a 15-minute window")
    return day, hours * 4 + minutes // 15, hhmm


def window_key(day: str, hhmm: str) -> str:
    """The key the collector writes for the window starting at `hhmm` of `day`."""
    return f"{windows_prefix(day)}window={hhmm}.json"


def _slot_of_start(start: datetime) -> tuple[str, str]:
    """(day, HHMM) of an aligned window_start."""
    return start.strftime("%Y%m%d"), start.strftime("%H%M")


def _fmt(value: float) -> str:
    return f"{value:.10g}"


# ------------------------------------------------------------------ field validation


def _get(doc: Mapping[str, Any], name: str, path: str) -> Any:
    if name not in doc:
        raise ValueError(f"{path}{name}: missing")
    return doc[name]


def _obj(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{field}: expected an object, got {type(value).__name__}")
    return value


def _num(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{field}: expected a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        number = math.inf
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{field}: expected a finite non-negative number, got {value!r}")
    return number


def _count(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{field}: expected a non-negative integer, got {value!r}")
    return value


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field}: expected a non-empty string, got {value!r}")
    return value


def _iso_z(value: Any, field: str) -> datetime:
    if not isinstance(value, str) or not _ISO_Z_RE.fullmatch(value):
        raise ValueError(f"{field}: expected ISO-8601 UTC ending in Z, got {value!r}")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{field}: not a valid time: {value!r}") from None


def _num_map(value: Any, field: str) -> dict[str, float]:
    return {str(ex): _num(s, f"{field}.{ex}") for ex, s in _obj(value, field).items()}


def _str_list(value: Any, field: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{field}: expected a list of strings")
    return tuple(value)


@dataclass(frozen=True)
class _Signals:
    """The validated fields of one window document that the rules read."""

    start: datetime
    quality: Label
    partial: bool
    offline: dict[str, float]
    eps_min: dict[str, float]
    dropped: int
    queue: float
    drain: float
    reconnects: int
    duration: float


def _window_times(doc: dict[str, Any]) -> datetime:
    """The window's start, checked: a quarter hour, and `window_end` 900 s after it."""
    start = _iso_z(_get(doc, "window_start", ""), "window_start")
    end = _iso_z(_get(doc, "window_end", ""), "window_end")
    if start.minute % 15 or start.second or start.microsecond:
        raise ValueError(f"window_start: {doc['window_start']} is not a quarter hour "
                         f"(:00/:15/:30/:45 UTC)")
    expected_end = start + timedelta(seconds=WINDOW_SECONDS)
    if end != expected_end:
        raise ValueError(f"window_end: {doc['window_end']} is not window_start + "
                         f"{WINDOW_SECONDS} s ({expected_end.strftime('%Y-%m-%dT%H:%M:%SZ')})")
    return start


def _parse_window(doc: Any) -> _Signals:
    """Validate a decoded window document; ValueError naming the field otherwise."""
    doc = _obj(doc, "window")
    start = _window_times(doc)
    quality = _get(doc, "quality", "")
    if quality not in _WINDOW_LABELS:
        raise ValueError(f"quality: expected GOOD, DEGRADED or BAD, got {quality!r}")
    partial = _get(doc, "is_partial", "")
    if not isinstance(partial, bool):
        raise ValueError(f"is_partial: expected true or false, got {partial!r}")
    sig = _obj(_get(doc, "signals", ""), "signals")
    p = "signals."
    offline = _num_map(_get(sig, "offline_seconds_by_exchange", p),
                       "signals.offline_seconds_by_exchange")
    eps_min = {}
    for ex, figures in _obj(_get(sig, "eps_by_exchange", p), "signals.eps_by_exchange").items():
        where = f"signals.eps_by_exchange.{ex}"
        figures = _obj(figures, where)
        eps_min[str(ex)] = _num(_get(figures, "min", where + "."), where + ".min")
        if "avg" in figures:
            _num(figures["avg"], where + ".avg")
    duration = float(WINDOW_SECONDS)
    if "actual_duration_seconds" in sig:
        duration = _num(sig["actual_duration_seconds"], "signals.actual_duration_seconds")
    if "ws_connected_seconds" in sig:
        _num_map(sig["ws_connected_seconds"], "signals.ws_connected_seconds")
    if "s3_upload_failures" in sig:
        _count(sig["s3_upload_failures"], "signals.s3_upload_failures")
    return _Signals(
        start=start,
        quality=Label(quality),
        partial=partial,
        offline=offline,
        eps_min=eps_min,
        dropped=_count(_get(sig, "dropped_events", p), "signals.dropped_events"),
        queue=_num(_get(sig, "queue_pct_peak", p), "signals.queue_pct_peak"),
        drain=_num(_get(sig, "drain_mode_accelerated_seconds", p),
                   "signals.drain_mode_accelerated_seconds"),
        reconnects=_count(_get(sig, "reconnects", p), "signals.reconnects"),
        duration=min(duration, float(WINDOW_SECONDS)),
    )


# ------------------------------------------------------------------ one window


@dataclass(frozen=True)
class WindowVerdict:
    """One window's label under the rules, with why, and the figures the day sums."""

    key: str
    #: The day and HHMM of the window's own `window_start` (its slot).
    slot_day: str
    slot_hhmm: str
    label: Label
    reasons: tuple[str, ...] = ()
    partial: bool = False
    dropped_events: int = 0
    primary_offline_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.label not in _WINDOW_LABELS:
            raise ValueError(f"label: a window is GOOD, DEGRADED or BAD, not {self.label!r}")

    @property
    def misnamed(self) -> bool:
        """The key is not the one the collector writes for this window's start."""
        return self.key != window_key(self.slot_day, self.slot_hhmm)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "slot_day": self.slot_day,
            "slot_hhmm": self.slot_hhmm,
            "label": self.label.value,
            "reasons": list(self.reasons),
            "partial": self.partial,
            "dropped_events": self.dropped_events,
            "primary_offline_seconds": self.primary_offline_seconds,
        }

    def to_bytes(self) -> bytes:
        return _dump(self.to_json())

    @classmethod
    def from_json(cls, doc: Any) -> WindowVerdict:
        """Validate a decoded document; ValueError('<field>: <problem>') otherwise."""
        doc = _obj(doc, "window verdict")
        key = _text(_get(doc, "key", ""), "key")
        slot_day = _text(_get(doc, "slot_day", ""), "slot_day")
        slot = _text(_get(doc, "slot_hhmm", ""), "slot_hhmm")
        try:
            slot_of(window_key(slot_day, slot))
        except ValueError:
            raise ValueError(f"slot_day/slot_hhmm: {slot_day!r} {slot!r} is not a "
                             f"window start") from None
        label = _get(doc, "label", "")
        if label not in _WINDOW_LABELS:
            raise ValueError(f"label: expected GOOD, DEGRADED or BAD, got {label!r}")
        partial = _get(doc, "partial", "")
        if not isinstance(partial, bool):
            raise ValueError(f"partial: expected true or false, got {partial!r}")
        return cls(
            key=key,
            slot_day=slot_day,
            slot_hhmm=slot,
            label=Label(label),
            reasons=_str_list(_get(doc, "reasons", ""), "reasons"),
            partial=partial,
            dropped_events=_count(_get(doc, "dropped_events", ""), "dropped_events"),
            primary_offline_seconds=_num(_get(doc, "primary_offline_seconds", ""),
                                         "primary_offline_seconds"),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> WindowVerdict:
        return cls.from_json(_load(data))


def score_window(doc: Any, key: str, primary: str = DEFAULT_PRIMARY) -> WindowVerdict:
    """Score one decoded window document stored at `key` (see the module docstring).

    Pure. ValueError naming the field when the document is malformed. The slot is
    the document's `window_start`; the key is only recorded (`WindowVerdict.misnamed`).
    """
    _text(primary, "primary")
    _text(key, "key")
    s = _parse_window(doc)
    day, hhmm = _slot_of_start(s.start)
    reasons: list[str] = []

    # primary offline: absent from the report = offline the whole window
    if primary in s.offline:
        primary_off = s.offline[primary]
    else:
        primary_off = s.duration
        reasons.append(f"{primary} not reported: offline {_fmt(primary_off)}s")
    offline = {**s.offline, primary: primary_off}
    worst_ex = max(sorted(offline), key=lambda ex: offline[ex])
    max_off = offline[worst_ex]

    # 1. the signal rules
    bad = []
    if s.dropped > BAD_DROPPED_EVENTS:
        bad.append(f"dropped_events {s.dropped} > {BAD_DROPPED_EVENTS}")
    if s.queue >= BAD_QUEUE_PCT:
        bad.append(f"queue_pct_peak {_fmt(s.queue)} >= {_fmt(BAD_QUEUE_PCT)}")
    if primary_off > BAD_PRIMARY_OFFLINE_S:
        bad.append(f"{primary} offline {_fmt(primary_off)}s > {_fmt(BAD_PRIMARY_OFFLINE_S)}")
    degraded = []
    if max_off > DEGRADED_OFFLINE_S:
        degraded.append(f"{worst_ex} offline {_fmt(max_off)}s > {_fmt(DEGRADED_OFFLINE_S)}")
    if s.drain > DEGRADED_DRAIN_S:
        degraded.append(f"drain_mode_accelerated_seconds {_fmt(s.drain)} > "
                        f"{_fmt(DEGRADED_DRAIN_S)}")
    if s.reconnects >= DEGRADED_RECONNECTS:
        degraded.append(f"reconnects {s.reconnects} >= {DEGRADED_RECONNECTS}")
    signal_label = Label.BAD if bad else Label.DEGRADED if degraded else Label.GOOD
    reasons += bad + degraded

    # 2. the worse of the signals and the collector's own verdict
    label = max(signal_label, s.quality, key=_SEVERITY.__getitem__)
    if s.quality is not Label.GOOD:
        reasons.append(f"collector says {s.quality.value}")

    # 3. downgrade: nothing the data relies on was hurt
    if (label is Label.BAD and s.dropped == 0 and max_off < DOWNGRADE_MAX_OFFLINE_S
            and s.queue < DOWNGRADE_QUEUE_PCT):
        label = Label.DEGRADED
        reasons.append(f"BAD downgraded: no drops, max offline {_fmt(max_off)}s < "
                       f"{_fmt(DOWNGRADE_MAX_OFFLINE_S)}, queue {_fmt(s.queue)} < "
                       f"{_fmt(DOWNGRADE_QUEUE_PCT)}")

    # 4. upgrade: the primary exchange was healthy
    eps_min = s.eps_min.get(primary)
    if (label is Label.DEGRADED and primary in s.offline and primary_off == 0 and s.dropped == 0
            and s.queue < HEALTHY_QUEUE_PCT and eps_min is not None
            and eps_min > HEALTHY_EPS_MIN):
        label = Label.GOOD
        reasons.append(f"{primary} healthy (offline 0, no drops, queue {_fmt(s.queue)} < "
                       f"{_fmt(HEALTHY_QUEUE_PCT)}, eps min {_fmt(eps_min)} > "
                       f"{_fmt(HEALTHY_EPS_MIN)}): counted GOOD")

    return WindowVerdict(
        key=key,
        slot_day=day,
        slot_hhmm=hhmm,
        label=label,
        reasons=tuple(reasons),
        partial=s.partial,
        dropped_events=s.dropped,
        primary_offline_seconds=primary_off,
    )


# ------------------------------------------------------------------ the day


@dataclass(frozen=True)
class WindowCounts:
    """How the day's 96 slots were covered.

    good + degraded + bad + missing == expected: a slot without a usable window (no
    object, or a malformed one) is missing. `partial` counts the scored windows that
    are partial (they are also in their label's count). `malformed` counts rejected
    objects. `misnamed` counts objects whose key disagrees with their own
    `window_start` (counted in that slot, once, or belonging to another day); it is
    0 in verdicts stored by rules 1.0.0, which had no such count.
    """

    good: int = 0
    degraded: int = 0
    bad: int = 0
    partial: int = 0
    missing: int = WINDOWS_PER_DAY
    malformed: int = 0
    expected: int = WINDOWS_PER_DAY
    misnamed: int = 0

    def __post_init__(self) -> None:
        for name in ("good", "degraded", "bad", "partial", "missing", "malformed",
                     "misnamed"):
            _count(getattr(self, name), f"counts.{name}")
        if self.expected != WINDOWS_PER_DAY:
            raise ValueError(f"counts.expected: expected {WINDOWS_PER_DAY}, got {self.expected!r}")
        if self.scored + self.missing != self.expected:
            raise ValueError(f"counts: good + degraded + bad + missing = "
                             f"{self.scored + self.missing}, not {self.expected}")
        if self.partial > self.scored:
            raise ValueError(f"counts.partial: {self.partial} > {self.scored} scored windows")

    @property
    def scored(self) -> int:
        """Windows that were usable and got a label."""
        return self.good + self.degraded + self.bad

    @property
    def full(self) -> int:
        """Usable windows that are not partial (missing ones count like partial)."""
        return self.scored - self.partial

    def to_json(self) -> dict[str, int]:
        return {
            "good": self.good, "degraded": self.degraded, "bad": self.bad,
            "partial": self.partial, "missing": self.missing, "malformed": self.malformed,
            "misnamed": self.misnamed, "expected": self.expected,
        }

    @classmethod
    def from_json(cls, doc: Any) -> WindowCounts:
        doc = _obj(doc, "counts")
        names = ("good", "degraded", "bad", "partial", "missing", "malformed", "expected")
        for name in names:
            _count(_get(doc, name, "counts."), f"counts.{name}")
        extra = sorted(set(doc) - set(names) - set(_COUNTS_ADDED))
        if extra:
            raise ValueError(f"counts.{extra[0]}: unknown")
        added = {name: _count(doc.get(name, 0), f"counts.{name}") for name in _COUNTS_ADDED}
        return cls(**{name: doc[name] for name in names}, **added)


#: Counts added after rules 1.0.0: absent from the verdicts it stored, read as 0.
_COUNTS_ADDED = ("misnamed",)


@dataclass(frozen=True)
class DayVerdict:
    """The day's collector verdict: label, the counts and totals behind it, and why."""

    day: str
    label: Label
    counts: WindowCounts
    dropped_events: int
    primary_offline_seconds: float
    reasons: tuple[str, ...]
    scored_at: str
    primary_exchange: str = DEFAULT_PRIMARY
    rules_version: str = RULES_VERSION
    malformed_keys: tuple[str, ...] = ()
    misnamed_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        try:
            parse_day(self.day)
        except ValueError as exc:
            raise ValueError(f"day: {exc}") from None
        if not isinstance(self.label, Label):
            raise ValueError(f"label: expected one of {[x.value for x in Label]}, "
                             f"got {self.label!r}")
        _text(self.primary_exchange, "primary_exchange")
        _text(self.rules_version, "rules_version")
        _count(self.dropped_events, "totals.dropped_events")
        _num(self.primary_offline_seconds, "totals.primary_offline_seconds")
        _iso_z(self.scored_at, "scored_at")
        if len(self.malformed_keys) > min(self.counts.malformed, MALFORMED_KEYS_CAP):
            raise ValueError(f"malformed_keys: {len(self.malformed_keys)} keys for "
                             f"{self.counts.malformed} malformed (cap {MALFORMED_KEYS_CAP})")
        if len(self.misnamed_keys) > min(self.counts.misnamed, MALFORMED_KEYS_CAP):
            raise ValueError(f"misnamed_keys: {len(self.misnamed_keys)} keys for "
                             f"{self.counts.misnamed} misnamed (cap {MALFORMED_KEYS_CAP})")
        if (self.label is Label.UNKNOWN) != (self.counts.scored == 0):
            raise ValueError(f"label: {self.label.value} with {self.counts.scored} "
                             f"scored windows (UNKNOWN exactly when none)")

    def to_json(self) -> dict[str, Any]:
        return {
            "day": self.day,
            "label": self.label.value,
            "rules_version": self.rules_version,
            "primary_exchange": self.primary_exchange,
            "counts": self.counts.to_json(),
            "malformed_keys": list(self.malformed_keys),
            "misnamed_keys": list(self.misnamed_keys),
            "totals": {
                "dropped_events": self.dropped_events,
                "primary_offline_seconds": self.primary_offline_seconds,
            },
            "reasons": list(self.reasons),
            "scored_at": self.scored_at,
        }

    def to_bytes(self) -> bytes:
        return _dump(self.to_json())

    @classmethod
    def from_json(cls, doc: Any) -> DayVerdict:
        """Validate a decoded document; ValueError('<field>: <problem>') otherwise."""
        doc = _obj(doc, "verdict")
        label = _get(doc, "label", "")
        if label not in {x.value for x in Label}:
            raise ValueError(f"label: expected one of {[x.value for x in Label]}, "
                             f"got {label!r}")
        totals = _obj(_get(doc, "totals", ""), "totals")
        return cls(
            day=_text(_get(doc, "day", ""), "day"),
            label=Label(label),
            rules_version=_text(_get(doc, "rules_version", ""), "rules_version"),
            primary_exchange=_text(_get(doc, "primary_exchange", ""), "primary_exchange"),
            counts=WindowCounts.from_json(_get(doc, "counts", "")),
            malformed_keys=_str_list(_get(doc, "malformed_keys", ""), "malformed_keys"),
            misnamed_keys=_str_list(doc.get("misnamed_keys", []), "misnamed_keys"),
            dropped_events=_count(_get(totals, "dropped_events", "totals."),
                                  "totals.dropped_events"),
            primary_offline_seconds=_num(_get(totals, "primary_offline_seconds", "totals."),
                                         "totals.primary_offline_seconds"),
            reasons=_str_list(_get(doc, "reasons", ""), "reasons"),
            scored_at=_text(_get(doc, "scored_at", ""), "scored_at"),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> DayVerdict:
        return cls.from_json(_load(data))


def _dump(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=1, sort_keys=True).encode("utf-8") + b"\n"


def _load(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON ({type(exc).__name__})") from None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def score_day(
    day: str,
    windows: Mapping[str, bytes],
    primary: str = DEFAULT_PRIMARY,
    now: datetime | str | None = None,
) -> DayVerdict:
    """Score `day` from its window objects {key: bytes} (see the module docstring).

    Pure: `now` only stamps `scored_at`; a timezone-aware datetime or an ISO-8601 UTC
    string ending in Z (kept as given), required. Malformed objects never raise;
    ValueError only for a bad `day`, `primary` or `now`.
    """
    parse_day(day)
    _text(primary, "primary")
    if isinstance(now, str):
        _iso_z(now, "now")
        scored_at = now
    elif isinstance(now, datetime) and now.tzinfo is not None:
        scored_at = utc_iso(now.timestamp())
    else:
        raise ValueError(f"now: expected a timezone-aware datetime or ISO-8601 Z, got {now!r}")
    malformed: dict[str, str] = {}
    misnamed: list[str] = []
    claims = _claims(day, windows, primary, malformed, misnamed)
    scored = [v for hhmm in sorted(claims)
              if (v := _one_per_slot(claims[hhmm], windows, malformed, misnamed)) is not None]
    for key in sorted(malformed):
        log.warning("collector window %s is malformed, counted as missing: %s",
                    key, malformed[key])
    for key in sorted(misnamed):
        log.warning("collector window %s is misnamed: its key does not name its "
                    "window_start; counted by window_start", key)

    by_label = {label: sum(1 for v in scored if v.label is label) for label in _WINDOW_LABELS}
    counts = WindowCounts(
        good=by_label[Label.GOOD],
        degraded=by_label[Label.DEGRADED],
        bad=by_label[Label.BAD],
        partial=sum(1 for v in scored if v.partial),
        missing=WINDOWS_PER_DAY - len(scored),
        malformed=len(malformed),
        misnamed=len(misnamed),
    )
    dropped = sum(v.dropped_events for v in scored)
    primary_off = math.fsum(v.primary_offline_seconds for v in scored)

    bad: list[str] = []
    partial: list[str] = []
    degraded: list[str] = []
    if counts.bad >= DAY_BAD_WINDOWS:
        bad.append(f"{counts.bad} BAD windows")
    elif counts.bad >= DAY_DEGRADED_BAD_WINDOWS:
        degraded.append(_plural(counts.bad, "BAD window"))
    if dropped > DAY_BAD_DROPPED:
        bad.append(f"{dropped} dropped events > {DAY_BAD_DROPPED}")
    if primary_off > DAY_BAD_PRIMARY_OFFLINE_S:
        bad.append(f"{primary} offline {_fmt(primary_off)}s > "
                   f"{_fmt(DAY_BAD_PRIMARY_OFFLINE_S)}")
    elif primary_off > DAY_DEGRADED_PRIMARY_OFFLINE_S:
        degraded.append(f"{primary} offline {_fmt(primary_off)}s > "
                        f"{_fmt(DAY_DEGRADED_PRIMARY_OFFLINE_S)}")
    if counts.full < DAY_PARTIAL_MIN_FULL:
        partial.append(f"{counts.full} full windows < {DAY_PARTIAL_MIN_FULL} "
                       f"({counts.partial} partial, {counts.missing} missing)")
    if counts.degraded >= DAY_DEGRADED_WINDOWS:
        degraded.append(f"{counts.degraded} DEGRADED windows")
    if counts.missing:
        degraded.append(f"{counts.missing} windows missing" if counts.missing > 1
                        else "1 window missing")
    if counts.malformed:
        degraded.append(_plural(counts.malformed, "malformed window"))

    notes = [f"{_plural(counts.misnamed, 'misnamed window')} (counted by window_start)"
             ] if counts.misnamed else []
    if not scored:
        label = Label.UNKNOWN
        reasons = ["no usable window"] + [r for r in degraded if "malformed" in r] + notes
    else:
        label = (Label.BAD if bad else Label.PARTIAL if partial
                 else Label.DEGRADED if degraded else Label.GOOD)
        reasons = bad + partial + degraded + notes
    return DayVerdict(
        day=day,
        label=label,
        counts=counts,
        dropped_events=dropped,
        primary_offline_seconds=round(primary_off, 3),
        reasons=tuple(reasons),
        scored_at=scored_at,
        primary_exchange=primary,
        rules_version=RULES_VERSION,
        malformed_keys=tuple(sorted(malformed)[:MALFORMED_KEYS_CAP]),
        misnamed_keys=tuple(sorted(misnamed)[:MALFORMED_KEYS_CAP]),
    )


def _claims(
    day: str, windows: Mapping[str, bytes], primary: str,
    malformed: dict[str, str], misnamed: list[str],
) -> dict[str, list[WindowVerdict]]:
    """HHMM -> the scored windows whose `window_start` is that slot of `day`.

    Only objects in the day's folder are reported (malformed, or misnamed when they
    belong to another day); an object from elsewhere (the old end-named 23:45 window
    under the next day, `fetch_day_windows`) counts only if it starts on `day`.
    """
    own = windows_prefix(day)
    claims: dict[str, list[WindowVerdict]] = {}
    for key in sorted(windows):
        try:
            verdict = score_window(_load(windows[key]), key, primary)
        except (ValueError, TypeError, OverflowError, RecursionError) as exc:
            if key.startswith(own):
                malformed[key] = str(exc) or type(exc).__name__
            continue
        if verdict.slot_day == day:
            claims.setdefault(verdict.slot_hhmm, []).append(verdict)
        elif key.startswith(own):
            misnamed.append(key)  # another day's window: that day counts it
    return claims


def _one_per_slot(
    claimants: list[WindowVerdict], windows: Mapping[str, bytes],
    malformed: dict[str, str], misnamed: list[str],
) -> WindowVerdict | None:
    """The window that counts for a slot: the one whose key agrees with its start,
    else the only one (or identical copies, counted once); different copies none of
    which is named right are not trusted (malformed, the slot missing)."""
    agreeing = [v for v in claimants if not v.misnamed]
    misnamed.extend(v.key for v in claimants if v.misnamed)
    if agreeing:
        return agreeing[0]
    if len({windows[v.key] for v in claimants}) == 1:
        return claimants[0]
    keys = ", ".join(v.key for v in claimants)
    for v in claimants:
        misnamed.remove(v.key)
        malformed[v.key] = f"key: duplicate slot {v.slot_hhmm} with different contents ({keys})"
    return None


# ------------------------------------------------------------------ I/O


def _is_window_name(key: str, prefix: str) -> bool:
    name = key[len(prefix):]
    return "/" not in name and name.startswith("window=") and name.endswith(".json")


def old_last_window_key(day: str) -> str:
    """Where the old "named by end" convention put `day`'s 23:45 window: the next
    day's `window=0000.json` (module docstring)."""
    following = datetime.strptime(day, "%Y%m%d") + timedelta(days=1)
    return window_key(following.strftime("%Y%m%d"), "0000")


def fetch_day_windows(raw: Store, day: str, workers: int = 16) -> dict[str, bytes]:
    """{key: bytes} of the day's `window=*.json` objects in the raw store, and of the
    next day's `window=0000.json` (`old_last_window_key`) when the old convention may
    hold the day's last window there.

    One LIST of `quality/date=<day>/`, then GETs in parallel. Other names under the
    prefix (`._*`, `*.tmp`, subfolders) are not windows and are skipped. The neighbour
    key is read (one GET, absent = NotFound) only when the day's folder has windows
    but none starting at 23:45: a day written as the collector writes it costs no
    extra request. `score_day` counts it only if it starts on `day`. An object
    deleted between the LIST and its GET is missing (skipped); any other StoreError
    propagates (nothing is scored from a partial read of a readable store).
    """
    if workers < 1:
        raise ValueError(f"workers: expected >= 1, got {workers!r}")
    prefix = windows_prefix(day)
    keys = [info.key for info in raw.list_objects(prefix) if _is_window_name(info.key, prefix)]
    out = _get_all(raw, keys, workers)
    if out and not _covers_last_slot(out, day):
        neighbour = old_last_window_key(day)
        try:
            out[neighbour] = raw.get_bytes(neighbour)[0]
        except NotFound:
            pass
    return out


def _get_all(raw: Store, keys: list[str], workers: int) -> dict[str, bytes]:
    """{key: bytes} of `keys`, GET in parallel; a key gone since its LIST is skipped."""
    if not keys:
        return {}
    out: dict[str, bytes] = {}
    pool = ThreadPoolExecutor(max_workers=min(workers, len(keys)),
                              thread_name_prefix="quality-windows")
    try:
        futures: list[tuple[str, Future[tuple[bytes, str]]]] = [
            (key, pool.submit(raw.get_bytes, key)) for key in keys
        ]
        for key, future in futures:
            try:
                out[key] = future.result()[0]
            except NotFound:
                log.info("collector window %s vanished after the listing: missing", key)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out


def _covers_last_slot(windows: Mapping[str, bytes], day: str) -> bool:
    """Whether one of the objects says it starts at `day` 23:45 (not validated here)."""
    last = datetime.strptime(day + "2345", "%Y%m%d%H%M").replace(tzinfo=UTC)
    for data in windows.values():
        try:
            doc = _load(data)
            if isinstance(doc, dict) and _iso_z(doc.get("window_start"), "") == last:
                return True
        except ValueError:
            continue
    return False


def save_verdict(compact: Store, verdict: DayVerdict) -> str:
    """Write the verdict to `verdict_key(day)` (unconditionally: scoring the same windows
    gives the same verdict, and a re-score replaces it). Returns the new ETag."""
    return compact.put_bytes(verdict_key(verdict.day), verdict.to_bytes())


def load_verdict(compact: Store, day: str) -> DayVerdict | None:
    """The stored verdict of `day`, or None when absent or malformed (logged: it is
    scored again). StoreErrors other than NotFound propagate."""
    key = verdict_key(day)
    try:
        data, _ = compact.get_bytes(key)
    except NotFound:
        return None
    try:
        verdict = DayVerdict.from_bytes(data)
        if verdict.day != day:
            raise ValueError(f"day: {verdict.day} stored under {key}")
    except ValueError as exc:
        log.warning("stored quality verdict %s is malformed, it will be re-scored: %s",
                    key, exc)
        return None
    return verdict
