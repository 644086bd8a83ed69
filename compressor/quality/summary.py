"""The minimal --quality-report: a text summary of the last 14 days of _state.json."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

from compressor.layout import parse_day
from compressor.state import PartitionState, StateSnapshot

REPORT_DAYS = 14


def summarize_state(state: StateSnapshot, today: str, days: int = REPORT_DAYS) -> str:
    """Text summary of the last `days` days before `today` of the state."""
    end = parse_day(today)
    wanted = [(end - timedelta(days=n)).strftime("%Y%m%d") for n in range(days, 0, -1)]
    per_day: dict[str, list[PartitionState]] = {d: [] for d in wanted}
    for key, entry in state.partitions.items():
        day = key.rsplit("/", 1)[-1]
        if day in per_day:
            per_day[day].append(entry)
    last = state.last_compacted_date
    lines = [
        f"last_compacted_date: {last or '-'}   updated_at: {state.updated_at or '-'}",
        f"{'day':<9} {'ready':<5} {'parts':>5} {'ok':>5} {'failed':>6} {'quar':>4} "
        f"{'rows':>13} {'out_of_day':>10} {'dups':>8} {'max_gap_s':>9} {'lag_p99_ms':>10}",
    ]
    for day in wanted:
        lines.append(_day_line(day, per_day[day], last))
    return "\n".join(lines)


def _day_line(day: str, entries: list[PartitionState], last: str | None) -> str:
    status = Counter(e.status for e in entries)
    ok = [e for e in entries if e.status == "success"]
    # the figures are free-form in the state (other writers, other tools), so each
    # figure is taken only when it is an integer
    quality = [e.quality for e in ok if isinstance(e.quality, dict)]
    gaps = [_figure(q, "max_gap_ms") for q in quality]
    lags = [_figure(q, "lag_p99_ms") for q in quality]
    ready = "yes" if last is not None and last >= day else "no"
    return (
        f"{day:<9} {ready:<5} {len(entries):>5} {status['success']:>5} {status['failed']:>6} "
        f"{status['quarantined']:>4} {sum(e.rows for e in ok):>13,} "
        f"{sum(_figure(q, 'out_of_day_rows') for q in quality):>10,} "
        f"{sum(_figure(q, 'duplicate_rows') for q in quality):>8,} "
        f"{(max(gaps) / 1000 if gaps else 0):>9.1f} {(max(lags) if lags else 0):>10}"
    )


def _figure(quality: dict[str, Any], name: str) -> int:
    value = quality.get(name)
    return value if isinstance(value, int) else 0
