"""A day's verdict: its 96 slots filled from the window objects, then one label.

Separate from one window's rules (`rules.py`) because a day is more than its
windows' labels: which object counts for which slot (misnamed, duplicate,
another day's, the old end-named convention), what coverage is missing, and the
day's own thresholds (docs/quality.md "The day label"). Pure: the store is read
and written by `store.py`.

Slots: a window counts, once, in the slot of its own `window_start` (`parse.py`).
The key is checked against the start (`window_key`): a key that disagrees is
MISNAMED (`misnamed`, keys named in `misnamed_keys`, capped). Misnaming alone never
lowers the day's label (the coverage is there), but it is reported. So:

- two objects claiming one slot: the one whose key agrees wins and the others are
  misnamed duplicates; when none agrees, identical bytes count once (all misnamed)
  and different bytes are not trusted (each malformed, the slot missing);
- a window in D's folder whose `window_start` is on another day belongs to that
  day: misnamed in D's verdict, not counted in D's slots;
- the old "named by end" convention put D's 23:45 window at `date=D+1/window=0000.json`
  (`old_last_window_key`; or `date=D/window=2400.json`): when D's folder has windows
  but none starting at 23:45, `fetch_day_windows` also reads that one neighbour key,
  and it counts for D (misnamed) when its `window_start` is D 23:45. Any other
  object outside D's folder whose start is not on D is the other day's business.

Day (`score_day`), precedence BAD > PARTIAL > DEGRADED > GOOD, UNKNOWN when no window
is usable at all (never GOOD without evidence). Every triggered reason is listed, the
deciding ones first (a note on misnamed windows last).

- Coverage: a slot (one of the 96 quarter hours) without a usable window is
  `missing`, whether no object exists or its object is malformed. Missing slots
  count like partial windows for the PARTIAL rule (full windows = 96 - partial -
  missing), and a day with any missing slot or any malformed object is never GOOD
  (at best DEGRADED): missing coverage must show (BRIEF §5).
- Malformed (`malformed`, keys named in `malformed_keys`, capped): what `parse.py`
  rejects, or a duplicate slot with different contents (above). Nothing malformed
  raises out of `score_day`.
- Partial windows keep their label and their drops and offline seconds count in
  the day's totals.

Readers should compare a loaded verdict's `rules_version` with `RULES_VERSION` and
re-score when they differ (verdicts stored by 1.0.0 lack the misnamed count; they
still load, with 0, and are re-scored).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from compressor.labels import RULES_VERSION, Label
from compressor.layout import parse_day
from compressor.quality.windows.parse import (
    WINDOW_LABELS,
    WINDOWS_PER_DAY,
    as_count,
    as_iso_z,
    as_number,
    as_object,
    as_str_list,
    as_text,
    dump_json,
    get_field,
    load_json,
    window_key,
    windows_prefix,
)
from compressor.quality.windows.rules import (
    DAY_BAD_DROPPED,
    DAY_BAD_PRIMARY_OFFLINE_S,
    DAY_BAD_WINDOWS,
    DAY_DEGRADED_BAD_WINDOWS,
    DAY_DEGRADED_PRIMARY_OFFLINE_S,
    DAY_DEGRADED_WINDOWS,
    DAY_PARTIAL_MIN_FULL,
    DEFAULT_PRIMARY,
    WindowVerdict,
    fmt,
    score_window,
)
from compressor.text import utc_iso

#: The package's one logger name, whichever of its modules logs (log lines unchanged).
log = logging.getLogger("compressor.quality.windows")

MALFORMED_KEYS_CAP = 20
"""At most this many malformed (and this many misnamed) keys are named in a DayVerdict
(`counts.malformed` and `counts.misnamed` have all)."""


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
            as_count(getattr(self, name), f"counts.{name}")
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
        doc = as_object(doc, "counts")
        names = ("good", "degraded", "bad", "partial", "missing", "malformed", "expected")
        for name in names:
            as_count(get_field(doc, name, "counts."), f"counts.{name}")
        extra = sorted(set(doc) - set(names) - set(_COUNTS_ADDED))
        if extra:
            raise ValueError(f"counts.{extra[0]}: unknown")
        added = {name: as_count(doc.get(name, 0), f"counts.{name}") for name in _COUNTS_ADDED}
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
        as_text(self.primary_exchange, "primary_exchange")
        as_text(self.rules_version, "rules_version")
        as_count(self.dropped_events, "totals.dropped_events")
        as_number(self.primary_offline_seconds, "totals.primary_offline_seconds")
        as_iso_z(self.scored_at, "scored_at")
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
        return dump_json(self.to_json())

    @classmethod
    def from_json(cls, doc: Any) -> DayVerdict:
        """Validate a decoded document; ValueError('<field>: <problem>') otherwise."""
        doc = as_object(doc, "verdict")
        label = get_field(doc, "label", "")
        if label not in {x.value for x in Label}:
            raise ValueError(f"label: expected one of {[x.value for x in Label]}, "
                             f"got {label!r}")
        totals = as_object(get_field(doc, "totals", ""), "totals")
        return cls(
            day=as_text(get_field(doc, "day", ""), "day"),
            label=Label(label),
            rules_version=as_text(get_field(doc, "rules_version", ""), "rules_version"),
            primary_exchange=as_text(get_field(doc, "primary_exchange", ""), "primary_exchange"),
            counts=WindowCounts.from_json(get_field(doc, "counts", "")),
            malformed_keys=as_str_list(get_field(doc, "malformed_keys", ""), "malformed_keys"),
            misnamed_keys=as_str_list(doc.get("misnamed_keys", []), "misnamed_keys"),
            dropped_events=as_count(get_field(totals, "dropped_events", "totals."),
                                    "totals.dropped_events"),
            primary_offline_seconds=as_number(
                get_field(totals, "primary_offline_seconds", "totals."),
                "totals.primary_offline_seconds"),
            reasons=as_str_list(get_field(doc, "reasons", ""), "reasons"),
            scored_at=as_text(get_field(doc, "scored_at", ""), "scored_at"),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> DayVerdict:
        return cls.from_json(load_json(data))


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
    as_text(primary, "primary")
    scored_at = _scored_at(now)
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

    by_label = {label: sum(1 for v in scored if v.label is label) for label in WINDOW_LABELS}
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
    label, reasons = _day_label(counts, dropped, primary_off, primary)
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


def _scored_at(now: datetime | str | None) -> str:
    """`scored_at` from `now`: an ISO-8601 Z string kept as given, or an aware datetime."""
    if isinstance(now, str):
        as_iso_z(now, "now")
        return now
    if isinstance(now, datetime) and now.tzinfo is not None:
        return utc_iso(now.timestamp())
    raise ValueError(f"now: expected a timezone-aware datetime or ISO-8601 Z, got {now!r}")


def _day_label(
    counts: WindowCounts, dropped: int, primary_off: float, primary: str,
) -> tuple[Label, list[str]]:
    """The day's rules (`DAY_*`): its label and every triggered reason, deciding first."""
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
        bad.append(f"{primary} offline {fmt(primary_off)}s > "
                   f"{fmt(DAY_BAD_PRIMARY_OFFLINE_S)}")
    elif primary_off > DAY_DEGRADED_PRIMARY_OFFLINE_S:
        degraded.append(f"{primary} offline {fmt(primary_off)}s > "
                        f"{fmt(DAY_DEGRADED_PRIMARY_OFFLINE_S)}")
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
    if not counts.scored:
        return Label.UNKNOWN, (["no usable window"]
                               + [r for r in degraded if "malformed" in r] + notes)
    label = (Label.BAD if bad else Label.PARTIAL if partial
             else Label.DEGRADED if degraded else Label.GOOD)
    return label, bad + partial + degraded + notes


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
            verdict = score_window(load_json(windows[key]), key, primary)
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


def old_last_window_key(day: str) -> str:
    """Where the old "named by end" convention put `day`'s 23:45 window: the next
    day's `window=0000.json` (module docstring: the old end-named convention)."""
    following = datetime.strptime(day, "%Y%m%d") + timedelta(days=1)
    return window_key(following.strftime("%Y%m%d"), "0000")
