"""The collector's health windows (BRIEF §5) scored one by one, then the day (rules 2.0.0).

Input: `quality/date=<YYYYMMDD>/window=<HHMM>.json` in the RAW bucket, one per 15
minutes (96 a day), named by the window's START (docs/quality.md "Collector health
windows"). Output: one `DayVerdict` per day, stored in the compact bucket at
`compacted/quality/date=<YYYYMMDD>.json` (`verdict_key`).

Four concepts, one module each, importing downward only (store -> day -> rules ->
parse; `tests/test_import_direction.py`):

- `parse`: a window's key and its JSON into typed signals, or the field at fault;
- `rules`: every threshold of rules 2.0.0 as a named constant, and one window
  scored (`score_window`);
- `day`: the day's 96 slots filled (misnamed, duplicate, the old end-named
  convention) and scored into one label (`score_day`, `DayVerdict`);
- `store`: the only module that touches a Store: the day's windows fetched,
  verdicts saved and loaded.

Callers import from `compressor.quality.windows`; the thresholds are in
`compressor.quality.windows.rules`. Every module logs as `compressor.quality.windows`.
"""

from compressor.quality.windows.day import (
    MALFORMED_KEYS_CAP,
    DayVerdict,
    WindowCounts,
    old_last_window_key,
    score_day,
)
from compressor.quality.windows.parse import (
    WINDOW_SECONDS,
    WINDOWS_PER_DAY,
    slot_of,
    window_key,
    windows_prefix,
)
from compressor.quality.windows.rules import DEFAULT_PRIMARY, WindowVerdict, score_window
from compressor.quality.windows.store import (
    fetch_day_windows,
    load_verdict,
    save_verdict,
    verdict_key,
)

__all__ = [
    "DEFAULT_PRIMARY",
    "MALFORMED_KEYS_CAP",
    "WINDOWS_PER_DAY",
    "WINDOW_SECONDS",
    "DayVerdict",
    "WindowCounts",
    "WindowVerdict",
    "fetch_day_windows",
    "load_verdict",
    "old_last_window_key",
    "save_verdict",
    "score_day",
    "score_window",
    "slot_of",
    "verdict_key",
    "window_key",
    "windows_prefix",
]
