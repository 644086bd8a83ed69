"""State recording and the watermark: when a day counts as ready.

README "Readiness never lies": last_compacted_date moves over a day only when,
at the moment it moves, every partition of the day is published as a whole pair
made from the listing the run saw, and the merged state holds `success` for each
of them (no newer attempt of another run says otherwise). A day without raw data
counts only as the plan's empty-day rule allows (`planning.empty_day_ready`).

Outcomes are what this run did; the check re-reads the truth, because another
run (an `--overwrite` backfill, say) may have removed or replaced an output after
this run found it up to date.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

from compressor.layout import PartitionId
from compressor.meta import read_published
from compressor.planning import Plan
from compressor.state import PartitionState, StateCorruptError, StateStore, ready_date
from compressor.storage.base import Store, StoreConfigError, StoreError
from compressor.text import one_line

log = logging.getLogger(__name__)

#: Partitions whose published pair is re-read at once while confirming a day.
CONFIRM_WORKERS = 8


class Confirmable(Protocol):
    """What the watermark needs of a partition's outcome."""

    @property
    def pid(self) -> PartitionId: ...

    @property
    def done(self) -> bool: ...

    @property
    def fingerprint(self) -> str | None: ...


class StateRecorder:
    """Queues state updates; a failing state write never aborts the run.

    `error` is the last flush failure (None once a flush succeeded): the updates stay
    queued and the next flush retries them.
    """

    def __init__(self, state: StateStore) -> None:
        self.state = state
        self.error: str | None = None

    def record(self, pid: PartitionId, entry: PartitionState) -> None:
        """Queue a state update. A flush it triggers may fail: the update stays queued."""
        try:
            self.state.record(pid, entry)
        except StoreConfigError:
            raise
        except (StoreError, StateCorruptError) as exc:  # the next flush retries
            log.warning("state flush deferred: %s", one_line(str(exc), 300))

    def flush(self) -> bool:
        """Flush the queue; False (and `error` set) when it could not be saved."""
        try:
            self.state.flush()
        except StoreConfigError:
            raise
        except (StoreError, StateCorruptError) as exc:  # updates stay queued
            self.error = one_line(str(exc), 300)
            log.error("state not saved yet: %s", self.error)
            return False
        self.error = None
        return True

    def flush_quietly(self) -> None:
        """The run's last flush, however it ended: never raises, says why the state lags."""
        try:
            if self.state.flush():  # False: nothing was queued, the state is saved
                self.error = None
        except Exception as exc:
            log.error("state not saved: %s", one_line(str(exc), 300))


class Watermark:
    """Moves last_compacted_date over the plan's ready days as they are confirmed."""

    def __init__(self, plan: Plan, compact: Store, recorder: StateRecorder) -> None:
        self.plan = plan
        self.compact = compact
        self.recorder = recorder
        self.state = recorder.state
        self.value = plan.last_compacted_date
        self._done: dict[str, bool] = dict(plan.empty_days)
        #: Per decided day, the state keys of its partitions with raw data (what the
        #: state must hold `success` for when the watermark is written over the day).
        self._keys: dict[str, frozenset[str]] = {day: frozenset() for day in plan.empty_days}

    def day_finished(self, day: str, outcomes: Sequence[Confirmable], stopped: bool) -> None:
        """Record whether `day` is done (confirmed against the truth) and advance.

        A day the plan counts as empty (no raw data files, only strays at most) keeps
        the empty-day rule's decision (README "Readiness never lies")."""
        if day not in self.plan.ready_days or day in self.plan.empty_days:
            return
        self._keys[day] = frozenset(o.pid.state_key for o in outcomes
                                    if o.fingerprint is not None)
        self._done[day] = not stopped and self.confirm(day, outcomes)
        self.advance()

    def advance(self) -> None:
        """Vouch for the ready days decided so far; the state moves last_compacted_date
        over each only while it is whole in the document it writes (a cleanup meanwhile
        holds it back: compressor.state `vouched_watermark`)."""
        decided = []
        for day in self.plan.ready_days:
            if day not in self._done:
                break
            decided.append((day, self._done[day]))
        new = ready_date(self.plan.last_compacted_date, decided)
        if new != self.value and new is not None:
            log.info("last_compacted_date -> %s", new)
            self.state.vouch_for({day: self._keys[day] for day, done in decided
                                  if done and day <= new})
            self.value = new

    def settle(self) -> str | None:
        """The value to report once the state is flushed: ours, or the lower one the
        state holds when a write could not move it as far (a cleanup meanwhile)."""
        try:
            written = self.state.written_last_compacted_date
        except (StoreError, StateCorruptError):
            return self.value
        if self.value is not None and (written is None or written < self.value):
            self.value = written
        return self.value

    def confirm(self, day: str, outcomes: Sequence[Confirmable]) -> bool:
        """Whether the day is whole right now (module docstring); logs why not."""
        if not outcomes or not all(o.done for o in outcomes):
            return False
        if not self.recorder.flush():
            return False  # our own updates must be in the state we check
        try:
            self.state.load()
            stale = self._not_success(o.pid for o in outcomes if o.fingerprint is not None)
            if stale is None:
                stale = self._not_published(outcomes)
        except StoreConfigError:
            raise
        except (StoreError, StateCorruptError) as exc:
            stale = f"could not check it: {one_line(str(exc), 300)}"
        if stale is not None:
            log.warning("%s not ready: %s", day, stale)
            return False
        return True

    def _not_success(self, pids: Iterable[PartitionId]) -> str | None:
        for pid in pids:
            entry = self.state.get(pid)
            if entry is None or entry.status != "success":
                status = entry.status if entry else "no entry"
                return f"{pid.state_key} is {status} in the state"
        return None

    def _not_published(self, outcomes: Sequence[Confirmable]) -> str | None:
        def check(outcome: Confirmable) -> str | None:
            if outcome.fingerprint is None:  # no raw data files: nothing to publish
                return None
            published = read_published(self.compact, outcome.pid)
            if published.current_for(outcome.fingerprint):
                return None
            why = published.mismatch() or (
                "not published" if published.meta is None else "published from another listing"
            )
            return f"{outcome.pid.state_key}: {why}"

        with ThreadPoolExecutor(CONFIRM_WORKERS, thread_name_prefix="confirm") as pool:
            found = [why for why in pool.map(check, outcomes) if why is not None]
        return found[0] if found else None
