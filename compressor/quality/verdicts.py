"""The collector's day verdict, scored once per day and run, and kept for the report.

A run needs the day's label for every partition it publishes or finds up to date
(meta.json `day_quality`, the state's `day_quality_post`). Scoring reads the day's
96 health windows, so it is done once per day and run, and the verdict is stored
at `compacted/quality/date=D.json`: the report reads one object per day instead of
96. A stored final verdict (GOOD, DEGRADED, BAD) is reused as is; a PARTIAL or
UNKNOWN one is scored again whenever a run covers the day again (the lookback
brings recent days round), since late windows may have arrived.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from compressor.labels import RULES_VERSION, Label
from compressor.quality.windows import (
    DayVerdict,
    fetch_day_windows,
    load_verdict,
    save_verdict,
    score_day,
)
from compressor.storage.base import Store, StoreConfigError, StoreError
from compressor.text import one_line, utc_iso

log = logging.getLogger(__name__)

DEFAULT_PRIMARY_EXCHANGE = "binance"


class DayVerdicts:
    """Day -> the collector's verdict for this run (thread-safe, scored at most once)."""

    def __init__(
        self,
        raw: Store,
        compact: Store,
        *,
        primary_exchange: str = DEFAULT_PRIMARY_EXCHANGE,
        clock: Callable[[], float],
        save: bool = True,
    ) -> None:
        self.raw = raw
        self.compact = compact
        self.primary_exchange = primary_exchange
        self.clock = clock
        self.save = save
        self._days: dict[str, DayVerdict | None] = {}
        self._lock = threading.Lock()

    def label(self, day: str) -> Label:
        """The day's label; UNKNOWN when its windows cannot be read right now (logged)."""
        verdict = self.get(day)
        return verdict.label if verdict is not None else Label.UNKNOWN

    def get(self, day: str) -> DayVerdict | None:
        with self._lock:
            if day not in self._days:
                self._days[day] = self._score(day)
            return self._days[day]

    def _score(self, day: str) -> DayVerdict | None:
        try:
            stored = load_verdict(self.compact, day)
            if stored is not None and stored.label.final and (
                stored.primary_exchange == self.primary_exchange
                and stored.rules_version == RULES_VERSION
            ):
                return stored
            windows = fetch_day_windows(self.raw, day)
            verdict = score_day(day, windows, self.primary_exchange, utc_iso(self.clock()))
            if stored is not None and _same(stored, verdict):
                return stored  # nothing new: the stored object stays as it is
            if self.save:
                save_verdict(self.compact, verdict)
        except StoreConfigError:
            raise
        except StoreError as exc:
            log.warning("%s: collector windows unreadable, day labelled UNKNOWN for now: %s",
                        day, one_line(str(exc), 300))
            return None
        log.info("%s: collector day verdict %s (%s)", day, verdict.label.value,
                 "; ".join(verdict.reasons) or "every window good")
        return verdict


def _same(a: DayVerdict, b: DayVerdict) -> bool:
    """The same verdict, whenever it was scored."""
    first, second = a.to_json(), b.to_json()
    first.pop("scored_at", None)
    second.pop("scored_at", None)
    return first == second
