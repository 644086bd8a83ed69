"""Reading one collector health window: its key, and its JSON into typed signals.

Separate from the rules because what a well-formed window IS (docs/quality.md
"Collector health windows") changes with the collector, while what a window's
signals MEAN changes with the rules (`rules.py`); a newcomer fixing a rejected
window reads this module only.

Keys: `quality/date=<YYYYMMDD>/window=<HHMM>.json`, named as the collector names
them: HHMM is the window's START and the date is the start's date, so a day runs
`window=0000.json` .. `window=2345.json` (`slot_of`, `window_key`).

Slot: a window's slot is its `window_start`, which must be a quarter hour
(:00/:15/:30/:45 UTC, whole minutes) with `window_end` = start + 900 s, else the
window is malformed. The first window after a collector start keeps the nominal
quarter-hour start; `is_partial` and `actual_duration_seconds` tell its real
coverage. Whether the key agrees with the start is the day's business
(`day.py`: misnamed windows).

Malformed (`parse_window` raises ValueError naming the field): not UTF-8 JSON, not
an object, a required field missing or of the wrong type (negative and non-finite
numbers included), a `window_start` that is not a quarter hour, a `window_end` that
is not start + 900 s. Required fields are the ones the rules read: `window_start`,
`window_end`, `quality`, `is_partial`, and the signals `offline_seconds_by_exchange`,
`eps_by_exchange` (`min` per exchange), `dropped_events`, `queue_pct_peak`,
`drain_mode_accelerated_seconds`, `reconnects`. The other documented signals are
type-checked when present but may be absent.

The field checks (`get_field`, `as_*`) and the JSON codec (`load_json`,
`dump_json`) are shared with the stored verdicts (`rules.py`, `day.py`): one
"<field>: <problem>" message shape for every document this package reads.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from compressor.labels import Label
from compressor.layout import parse_day

WINDOWS_PER_DAY = 96
"""Windows expected in a day: one per 15 minutes."""

WINDOW_SECONDS = 900
"""Nominal length of a window."""


WINDOWS_PREFIX = "quality/"

_KEY_RE = re.compile(r"quality/date=(?P<day>\d{8})/window=(?P<hhmm>\d{4})\.json")
_ISO_Z_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
WINDOW_LABELS = (Label.GOOD, Label.DEGRADED, Label.BAD)
"""The labels a window can carry (its `quality`, its verdict), mildest first."""


def windows_prefix(day: str) -> str:
    """The raw-bucket prefix of the day's windows, ending with '/'."""
    parse_day(day)
    return f"{WINDOWS_PREFIX}date={day}/"


def slot_of(key: str) -> tuple[str, int, str]:
    """(day, slot index 0..95, HHMM) a window key names; ValueError otherwise.

    The collector names a window by its START: slot k starts at 00:00 + 15 k minutes,
    so `0000` is slot 0 and `2345` slot 95. The key only names the slot; the window's
    own `window_start` decides where it counts (`day.py`).
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


def slot_of_start(start: datetime) -> tuple[str, str]:
    """(day, HHMM) of an aligned window_start."""
    return start.strftime("%Y%m%d"), start.strftime("%H%M")


# ------------------------------------------------------------------ field validation


def get_field(doc: Mapping[str, Any], name: str, path: str) -> Any:
    if name not in doc:
        raise ValueError(f"{path}{name}: missing")
    return doc[name]


def as_object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{field}: expected an object, got {type(value).__name__}")
    return value


def as_number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{field}: expected a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        number = math.inf
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{field}: expected a finite non-negative number, got {value!r}")
    return number


def as_count(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{field}: expected a non-negative integer, got {value!r}")
    return value


def as_text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field}: expected a non-empty string, got {value!r}")
    return value


def as_iso_z(value: Any, field: str) -> datetime:
    if not isinstance(value, str) or not _ISO_Z_RE.fullmatch(value):
        raise ValueError(f"{field}: expected ISO-8601 UTC ending in Z, got {value!r}")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{field}: not a valid time: {value!r}") from None


def as_number_map(value: Any, field: str) -> dict[str, float]:
    return {str(ex): as_number(s, f"{field}.{ex}") for ex, s in as_object(value, field).items()}


def as_str_list(value: Any, field: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{field}: expected a list of strings")
    return tuple(value)


@dataclass(frozen=True)
class Signals:
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
    start = as_iso_z(get_field(doc, "window_start", ""), "window_start")
    end = as_iso_z(get_field(doc, "window_end", ""), "window_end")
    if start.minute % 15 or start.second or start.microsecond:
        raise ValueError(f"window_start: {doc['window_start']} is not a quarter hour "
                         f"(:00/:15/:30/:45 UTC)")
    expected_end = start + timedelta(seconds=WINDOW_SECONDS)
    if end != expected_end:
        raise ValueError(f"window_end: {doc['window_end']} is not window_start + "
                         f"{WINDOW_SECONDS} s ({expected_end.strftime('%Y-%m-%dT%H:%M:%SZ')})")
    return start


def parse_window(doc: Any) -> Signals:
    """Validate a decoded window document; ValueError naming the field otherwise."""
    doc = as_object(doc, "window")
    start = _window_times(doc)
    quality = get_field(doc, "quality", "")
    if quality not in WINDOW_LABELS:
        raise ValueError(f"quality: expected GOOD, DEGRADED or BAD, got {quality!r}")
    partial = get_field(doc, "is_partial", "")
    if not isinstance(partial, bool):
        raise ValueError(f"is_partial: expected true or false, got {partial!r}")
    sig = as_object(get_field(doc, "signals", ""), "signals")
    p = "signals."
    offline = as_number_map(get_field(sig, "offline_seconds_by_exchange", p),
                            "signals.offline_seconds_by_exchange")
    eps_min = {}
    eps = as_object(get_field(sig, "eps_by_exchange", p), "signals.eps_by_exchange")
    for ex, figures in eps.items():
        where = f"signals.eps_by_exchange.{ex}"
        figures = as_object(figures, where)
        eps_min[str(ex)] = as_number(get_field(figures, "min", where + "."), where + ".min")
        if "avg" in figures:
            as_number(figures["avg"], where + ".avg")
    duration = float(WINDOW_SECONDS)
    if "actual_duration_seconds" in sig:
        duration = as_number(sig["actual_duration_seconds"], "signals.actual_duration_seconds")
    if "ws_connected_seconds" in sig:
        as_number_map(sig["ws_connected_seconds"], "signals.ws_connected_seconds")
    if "s3_upload_failures" in sig:
        as_count(sig["s3_upload_failures"], "signals.s3_upload_failures")
    return Signals(
        start=start,
        quality=Label(quality),
        partial=partial,
        offline=offline,
        eps_min=eps_min,
        dropped=as_count(get_field(sig, "dropped_events", p), "signals.dropped_events"),
        queue=as_number(get_field(sig, "queue_pct_peak", p), "signals.queue_pct_peak"),
        drain=as_number(get_field(sig, "drain_mode_accelerated_seconds", p),
                        "signals.drain_mode_accelerated_seconds"),
        reconnects=as_count(get_field(sig, "reconnects", p), "signals.reconnects"),
        duration=min(duration, float(WINDOW_SECONDS)),
    )



def dump_json(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=1, sort_keys=True).encode("utf-8") + b"\n"


def load_json(data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"not JSON ({type(exc).__name__})") from None
