"""Values written as text for people and JSON: UTC times, one-line messages, sizes."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_ISO_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?Z")
#: Default cap of `one_line` (the state's `error` fields, log lines).
ONE_LINE_LIMIT = 1000


def utc_iso(ts: float) -> str:
    """Epoch seconds -> '2024-01-02T03:04:05.123Z' (UTC, millisecond precision)."""
    seconds, millis = divmod(round(ts * 1000), 1000)
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{millis:03d}Z"


def parse_utc_iso(text: object) -> float:
    """'...Z' ISO-8601 UTC -> epoch seconds; ValueError on anything else (any type)."""
    if isinstance(text, str) and _ISO_RE.fullmatch(text):
        try:
            return datetime.fromisoformat(text).timestamp()
        except ValueError:
            pass  # e.g. month 13
    raise ValueError(f"not an ISO-8601 UTC time ending in Z: {text!r}")


def one_line(text: str, limit: int = ONE_LINE_LIMIT) -> str:
    """Collapse whitespace (newlines included) and cap the length."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def human_size(n: int) -> str:
    """Bytes as '512 B', '1.5 KiB', ... '3.2 GiB' (binary units, GiB at most)."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def backfill_hint(day: str) -> str:
    """The command that compacts one day (docs/operations.md "Command line": a backfill never moves
    readiness); told wherever a day at or before last_compacted_date holds nothing."""
    return f"quantlab-compact --mode backfill --date-from {day} --date-to {day}"
