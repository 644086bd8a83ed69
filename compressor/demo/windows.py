"""The collector's health windows of a day (BRIEF §5), as it writes them: 96 JSON
documents under quality/date=YYYYMMDD/, keyed by their start (docs/quality.md
"Collector health windows").

Separate from the raw partitions: the windows describe the collector, not one
partition, and the day verdict is computed from them alone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from compressor.demo.spec import EXCHANGES, PartitionSpec, unit


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_quality_windows(
    root: Path,
    day: str,
    exchanges: Iterable[str] = EXCHANGES,
    seed: int = 0,
    missing: Iterable[int] = (),
    *,
    partial: Iterable[int] = (),
    overrides: Mapping[int, Mapping[str, Any]] | None = None,
) -> list[Path]:
    """Write the day's 96 collector health windows (BRIEF §5), skipping indices in `missing`.

    Exactly as the collector writes them (docs/quality.md "Collector health windows"): window
    k covers [00:00 + 15k min, +15 min) and is keyed by its START,
    `quality/date=<start day>/window=<start HHMM>.json` (`0000` .. `2345`), as
    `json.dump(indent=2)` without a trailing newline; floats rounded to 1 decimal,
    counts as ints, and `queue_pct_peak` an int (95) when it is the backpressure floor
    of a BAD window, a float otherwise. `missing` makes a day whose coverage has holes,
    which the quality report must show (compressor.quality.windows scores them).

    For known answers: a window in `partial` is the first one after a simulated
    collector restart: `is_partial: true`, its nominal quarter-hour `window_start`,
    and `actual_duration_seconds` 450.0 (the process came up half-way through it);
    `overrides[k]` replaces top-level fields of window k, except `signals`, whose
    entries replace the generated signals one by one.
    """
    spec = PartitionSpec(date=day, seed=seed)
    exchanges = list(exchanges)
    skip = set(missing)
    partial_set = set(partial)
    overrides = overrides or {}
    out = []
    directory = Path(root) / f"quality/date={day}"
    directory.mkdir(parents=True, exist_ok=True)
    for k in range(96):
        if k in skip:
            continue
        doc = _window_doc(spec, exchanges, k, k in partial_set)
        for field_name, value in overrides.get(k, {}).items():
            if field_name == "signals":
                doc["signals"].update(value)
            else:
                doc[field_name] = value
        start = spec.day_start_ms + k * 900_000
        hhmm = datetime.fromtimestamp(start / 1000, tz=UTC).strftime("%H%M")
        path = directory / f"window={hhmm}.json"
        path.write_text(json.dumps(doc, indent=2))
        out.append(path)
    return out


def _window_doc(spec: PartitionSpec, exchanges: list[str], k: int, partial: bool
                ) -> dict[str, Any]:
    """Window k of the day as the collector's ledger writes it (seeded by `spec`)."""
    start = spec.day_start_ms + k * 900_000
    duration = 450.0 if partial else 900.0
    roll = unit(spec, "quality", k)
    quality = "BAD" if roll < 0.005 else "DEGRADED" if roll < 0.035 else "GOOD"
    offline = {ex: 0.0 for ex in exchanges}
    if quality != "GOOD" and exchanges:
        offline[exchanges[k % len(exchanges)]] = 120.0 if quality == "BAD" else 15.0
    # a healthy collector: drops only in its BAD windows, whose queue sits at the
    # backpressure floor (an int, as the collector writes it); elsewhere a float
    queue: int | float = 95 if quality == "BAD" else round(45.0 * unit(spec, "queue", k), 1)
    return {
        "window_start": _iso(start),
        "window_end": _iso(start + 900_000),
        "quality": quality,
        "is_partial": partial,
        "signals": {
            "actual_duration_seconds": duration,
            "offline_seconds_by_exchange": offline,
            "ws_connected_seconds": {ex: duration - s for ex, s in offline.items()},
            "eps_by_exchange": {
                ex: {
                    "avg": round(400 + 200 * unit(spec, "eps", k, ex), 1),
                    "min": round(50 * unit(spec, "epsmin", k, ex), 1),
                }
                for ex in exchanges
            },
            "dropped_events": 1 + int(1000 * roll) if quality == "BAD" else 0,
            "queue_pct_peak": queue,
            "drain_mode_accelerated_seconds": 0.0,
            "reconnects": 0 if quality == "GOOD" else 1,
            "s3_upload_failures": 0,
        },
    }
