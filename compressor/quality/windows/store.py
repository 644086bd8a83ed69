"""Where windows and verdicts live: the day's windows read from the raw store, the
day's verdict saved to and loaded from the compact store.

Separate from the scoring (`parse.py`, `rules.py`, `day.py`, all pure) so the one
module that touches a Store is small and its costs are plain: one LIST and up to
96 parallel GETs per day scored, one GET per stored verdict (docs/quality.md "The
day label"). Output: `compacted/quality/date=<YYYYMMDD>.json` (`verdict_key`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime

from compressor.layout import parse_day
from compressor.quality.windows.day import DayVerdict, old_last_window_key
from compressor.quality.windows.parse import as_iso_z, load_json, windows_prefix
from compressor.storage.base import NotFound, Store

#: The package's one logger name, whichever of its modules logs (log lines unchanged).
log = logging.getLogger("compressor.quality.windows")

VERDICT_PREFIX = "compacted/quality/"


def verdict_key(day: str) -> str:
    """Where the day's verdict is stored in the compact bucket."""
    parse_day(day)
    return f"{VERDICT_PREFIX}date={day}.json"


def _is_window_name(key: str, prefix: str) -> bool:
    name = key[len(prefix):]
    return "/" not in name and name.startswith("window=") and name.endswith(".json")


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
            doc = load_json(data)
            if isinstance(doc, dict) and as_iso_z(doc.get("window_start"), "") == last:
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
