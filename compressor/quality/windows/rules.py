"""The rules (2.0.0): every threshold as a named constant, and one window scored.

Separate from parsing (`parse.py`: what a well-formed window is) and from the day
(`day.py`: slots, coverage, the day's label) so that the numbers a reviewer checks
against docs/quality.md "The day label" sit in one short module, beside the one
function that applies them to a window. The day thresholds (`DAY_*`) are here too:
all of the rules' numbers in one place; `day.py` applies them.

The thresholds are the previous implementation's, reproduced exactly. Rules 2.0.0
read the same signals as 1.0.0 but place each window by its own `window_start`
(1.0.0 read the key as the window's end, so every window the collector really
writes was malformed and every real day UNKNOWN). Where the rules were silent this
module decides, and says so.

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
(a misspelt primary therefore scores BAD days, never silently GOOD ones). Partial
windows keep their label (a partial BAD window is a BAD window).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from compressor.labels import Label
from compressor.quality.windows.parse import (
    WINDOW_LABELS,
    Signals,
    as_count,
    as_number,
    as_object,
    as_str_list,
    as_text,
    dump_json,
    get_field,
    load_json,
    parse_window,
    slot_of,
    slot_of_start,
    window_key,
)

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

_SEVERITY = {label: rank for rank, label in enumerate(WINDOW_LABELS)}


def fmt(value: float) -> str:
    """A threshold or figure as the reasons print it (no float noise)."""
    return f"{value:.10g}"


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
        if self.label not in WINDOW_LABELS:
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
        return dump_json(self.to_json())

    @classmethod
    def from_json(cls, doc: Any) -> WindowVerdict:
        """Validate a decoded document; ValueError('<field>: <problem>') otherwise."""
        doc = as_object(doc, "window verdict")
        key = as_text(get_field(doc, "key", ""), "key")
        slot_day = as_text(get_field(doc, "slot_day", ""), "slot_day")
        slot = as_text(get_field(doc, "slot_hhmm", ""), "slot_hhmm")
        try:
            slot_of(window_key(slot_day, slot))
        except ValueError:
            raise ValueError(f"slot_day/slot_hhmm: {slot_day!r} {slot!r} is not a "
                             f"window start") from None
        label = get_field(doc, "label", "")
        if label not in WINDOW_LABELS:
            raise ValueError(f"label: expected GOOD, DEGRADED or BAD, got {label!r}")
        partial = get_field(doc, "partial", "")
        if not isinstance(partial, bool):
            raise ValueError(f"partial: expected true or false, got {partial!r}")
        return cls(
            key=key,
            slot_day=slot_day,
            slot_hhmm=slot,
            label=Label(label),
            reasons=as_str_list(get_field(doc, "reasons", ""), "reasons"),
            partial=partial,
            dropped_events=as_count(get_field(doc, "dropped_events", ""), "dropped_events"),
            primary_offline_seconds=as_number(get_field(doc, "primary_offline_seconds", ""),
                                              "primary_offline_seconds"),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> WindowVerdict:
        return cls.from_json(load_json(data))


def score_window(doc: Any, key: str, primary: str = DEFAULT_PRIMARY) -> WindowVerdict:
    """Score one decoded window document stored at `key` (see the module docstring).

    Pure. ValueError naming the field when the document is malformed. The slot is
    the document's `window_start`; the key is only recorded (`WindowVerdict.misnamed`).
    """
    as_text(primary, "primary")
    as_text(key, "key")
    s = parse_window(doc)
    day, hhmm = slot_of_start(s.start)
    reasons: list[str] = []

    # primary offline: absent from the report = offline the whole window
    if primary in s.offline:
        primary_off = s.offline[primary]
    else:
        primary_off = s.duration
        reasons.append(f"{primary} not reported: offline {fmt(primary_off)}s")
    offline = {**s.offline, primary: primary_off}
    worst_ex = max(sorted(offline), key=lambda ex: offline[ex])
    max_off = offline[worst_ex]

    # 1. the signal rules
    bad, degraded = _signal_rules(s, primary, primary_off, worst_ex, max_off)
    signal_label = Label.BAD if bad else Label.DEGRADED if degraded else Label.GOOD
    reasons += bad + degraded

    # 2. the worse of the signals and the collector's own verdict
    label = max(signal_label, s.quality, key=_SEVERITY.__getitem__)
    if s.quality is not Label.GOOD:
        reasons.append(f"collector says {s.quality.value}")

    label = _downgrade_then_upgrade(label, s, primary, (primary_off, max_off), reasons)
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


def _signal_rules(
    s: Signals, primary: str, primary_off: float, worst_ex: str, max_off: float,
) -> tuple[list[str], list[str]]:
    """Step 1: the reasons the signals make the window BAD, and DEGRADED."""
    bad = []
    if s.dropped > BAD_DROPPED_EVENTS:
        bad.append(f"dropped_events {s.dropped} > {BAD_DROPPED_EVENTS}")
    if s.queue >= BAD_QUEUE_PCT:
        bad.append(f"queue_pct_peak {fmt(s.queue)} >= {fmt(BAD_QUEUE_PCT)}")
    if primary_off > BAD_PRIMARY_OFFLINE_S:
        bad.append(f"{primary} offline {fmt(primary_off)}s > {fmt(BAD_PRIMARY_OFFLINE_S)}")
    degraded = []
    if max_off > DEGRADED_OFFLINE_S:
        degraded.append(f"{worst_ex} offline {fmt(max_off)}s > {fmt(DEGRADED_OFFLINE_S)}")
    if s.drain > DEGRADED_DRAIN_S:
        degraded.append(f"drain_mode_accelerated_seconds {fmt(s.drain)} > "
                        f"{fmt(DEGRADED_DRAIN_S)}")
    if s.reconnects >= DEGRADED_RECONNECTS:
        degraded.append(f"reconnects {s.reconnects} >= {DEGRADED_RECONNECTS}")
    return bad, degraded


def _downgrade_then_upgrade(
    label: Label, s: Signals, primary: str, offline: tuple[float, float], reasons: list[str],
) -> Label:
    """Steps 3 and 4, in that order; each appends its reason when it applies.
    `offline`: the primary's offline seconds and the largest of any exchange."""
    primary_off, max_off = offline
    # 3. downgrade: nothing the data relies on was hurt
    if (label is Label.BAD and s.dropped == 0 and max_off < DOWNGRADE_MAX_OFFLINE_S
            and s.queue < DOWNGRADE_QUEUE_PCT):
        label = Label.DEGRADED
        reasons.append(f"BAD downgraded: no drops, max offline {fmt(max_off)}s < "
                       f"{fmt(DOWNGRADE_MAX_OFFLINE_S)}, queue {fmt(s.queue)} < "
                       f"{fmt(DOWNGRADE_QUEUE_PCT)}")

    # 4. upgrade: the primary exchange was healthy
    eps_min = s.eps_min.get(primary)
    if (label is Label.DEGRADED and primary in s.offline and primary_off == 0 and s.dropped == 0
            and s.queue < HEALTHY_QUEUE_PCT and eps_min is not None
            and eps_min > HEALTHY_EPS_MIN):
        label = Label.GOOD
        reasons.append(f"{primary} healthy (offline 0, no drops, queue {fmt(s.queue)} < "
                       f"{fmt(HEALTHY_QUEUE_PCT)}, eps min {fmt(eps_min)} > "
                       f"{fmt(HEALTHY_EPS_MIN)}): counted GOOD")
    return label
