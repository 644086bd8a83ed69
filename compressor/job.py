"""Execute a Plan: every partition of every day ascending, then report.

One partition failing never stops the others. Each outcome is recorded in the
state (batched compare-and-swap writes, flushed at the end of every day), and
last_compacted_date moves per `compressor.state.ready_date`: a day not done
holds it back while later days are still compacted.
"""

from __future__ import annotations

import enum
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from compressor.discovery import list_partition
from compressor.layout import PartitionId
from compressor.lease import Lease, LeaseLost, LeaseManager
from compressor.merge_errors import MergeAborted
from compressor.planning import (
    DONE_SKIPS,
    Action,
    Plan,
    PlannedPartition,
    Reason,
)
from compressor.publish import (
    BadInputError,
    CompactSettings,
    VerificationError,
    compact_partition,
    read_meta,
)
from compressor.state import PartitionState, StateCorruptError, StateStore, ready_date
from compressor.storage.base import Store, StoreConfigError, StoreError
from compressor.text import human_size, one_line, utc_iso

log = logging.getLogger(__name__)


class Status(enum.StrEnum):
    SUCCESS = "success"
    UP_TO_DATE = "up to date"
    NO_DATA = "no data"
    FAILED = "failed"
    QUARANTINED = "quarantined"
    #: Quarantined by an earlier run and left alone (see --retry-quarantine).
    STILL_QUARANTINED = "still quarantined"
    #: Another run holds the partition's lease and is working on it.
    BUSY = "busy elsewhere"
    #: The run was asked to stop before reaching the partition.
    NOT_RUN = "not run"


DONE = frozenset({Status.SUCCESS, Status.UP_TO_DATE, Status.NO_DATA})
PROBLEMS = frozenset({Status.FAILED, Status.QUARANTINED, Status.STILL_QUARANTINED})
#: Problem partitions listed one per line in the printed report.
REPORT_PROBLEMS = 50
#: How long a run waits, per day, for partitions another run on this host is compacting
#: before it leaves them "busy elsewhere" (the day then stays not ready for this run).
BUSY_WAIT_S = 600.0
#: Seconds between two looks at a busy partition's lease (jittered).
BUSY_POLL_S = 0.5


@dataclass(frozen=True)
class PartitionOutcome:
    pid: PartitionId
    status: Status
    rows: int = 0
    size_bytes: int = 0
    seconds: float = 0.0
    error: str | None = None
    failed_key: str | None = None

    @property
    def done(self) -> bool:
        return self.status in DONE


@dataclass
class RunReport:
    """What a run did: one outcome per planned partition and the readiness move."""

    plan: Plan
    outcomes: list[PartitionOutcome] = field(default_factory=list)
    last_compacted_before: str | None = None
    last_compacted_after: str | None = None
    stopped: bool = False
    state_error: str | None = None
    seconds: float = 0.0

    def count(self, status: Status) -> int:
        return sum(1 for o in self.outcomes if o.status is status)

    @property
    def problems(self) -> list[PartitionOutcome]:
        return [o for o in self.outcomes if o.status in PROBLEMS]

    @property
    def ok(self) -> bool:
        """Every planned partition succeeded, was up to date, or is being done elsewhere."""
        return not self.problems and not self.stopped and self.state_error is None

    def render(self) -> str:
        counts = ", ".join(
            f"{self.count(s)} {s.value}" for s in Status if self.count(s)
        ) or "nothing to do"
        lines = [
            f"{self.plan.mode.value} run over {', '.join(self.plan.days) or 'no days'}: "
            f"{counts} in {self.seconds:.1f}s",
            f"last_compacted_date: {self.last_compacted_before or '-'} -> "
            f"{self.last_compacted_after or '-'}",
        ]
        problems = self.problems
        for o in problems[:REPORT_PROBLEMS]:
            lines.append(f"  {o.status.value}: {o.pid.state_key}: {o.error}")
        if len(problems) > REPORT_PROBLEMS:
            lines.append(f"  ... and {len(problems) - REPORT_PROBLEMS} more (see the log)")
        if self.state_error:
            lines.append(f"  state not saved: {self.state_error}")
        if self.stopped:
            lines.append("  stopped by a signal; the remaining partitions run next time")
        return "\n".join(lines)


@dataclass(frozen=True)
class ToCompact:
    """Re-check: compact this (as planned, or listed again after another run's publish)."""

    planned: PlannedPartition


@dataclass(frozen=True)
class PublishedMeanwhile:
    """Re-check: another run published an up-to-date output since this run planned."""

    meta: dict[str, Any]


@dataclass(frozen=True)
class RecheckFailed:
    """Re-check: meta.json or the raw listing could not be read; the partition fails."""

    error: str


#: What `Job._recheck` found once the partition's lease was held.
Recheck = ToCompact | PublishedMeanwhile | RecheckFailed


def _never() -> bool:
    return False


class Job:
    """Runs one Plan against the stores; build it, then call `run()` once."""

    def __init__(
        self,
        plan: Plan,
        raw: Store,
        compact: Store,
        state: StateStore,
        settings: CompactSettings,
        leases: LeaseManager,
        *,
        should_stop: Callable[[], bool] = _never,
        busy_wait_s: float = BUSY_WAIT_S,
        busy_poll_s: float = BUSY_POLL_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.plan = plan
        self.raw = raw
        self.compact = compact
        self.state = state
        self.settings = settings
        self.leases = leases
        self.should_stop = should_stop
        self.busy_wait_s = busy_wait_s
        self.busy_poll_s = busy_poll_s
        self.sleep = sleep
        self.report = RunReport(plan)

    def run(self) -> RunReport:
        started = time.monotonic()
        report = self.report
        report.last_compacted_before = self.plan.last_compacted_date
        report.last_compacted_after = self.plan.last_compacted_date
        done_days: dict[str, bool] = {}
        try:
            for day in self.plan.days:
                outcomes = [self._run_one(p) for p in self.plan.for_day(day)]
                if day in self.plan.ready_days:
                    outcomes = self._settle_busy(outcomes)
                report.outcomes.extend(outcomes)
                done_days[day] = all(o.done for o in outcomes) and not report.stopped
                self._advance(done_days)
                self._flush()
        finally:  # whatever ended the run (an unusable store, too): keep what it did
            self._flush_quietly()
        report.seconds = time.monotonic() - started
        return report

    # -- readiness + state -------------------------------------------------------

    def _advance(self, done_days: dict[str, bool]) -> None:
        """Move last_compacted_date over the ready days finished so far."""
        if not self.plan.ready_days:
            return
        seen = max(done_days)
        days = [(d, done_days.get(d, False)) for d in self.plan.ready_days if d <= seen]
        new = ready_date(self.plan.last_compacted_date, days)
        if new != self.report.last_compacted_after:
            log.info("last_compacted_date -> %s", new)
            self.state.advance_last_compacted(new)
            self.report.last_compacted_after = new

    def _record(self, pid: PartitionId, entry: PartitionState) -> None:
        """Queue a state update. A flush it triggers may fail: the update stays queued."""
        try:
            self.state.record(pid, entry)
        except StoreConfigError:
            raise
        except (StoreError, StateCorruptError) as exc:  # the next flush retries
            log.warning("state flush deferred: %s", one_line(str(exc), 300))

    def _flush(self) -> None:
        """End-of-day flush; a failure is the report's state_error and the run goes on."""
        try:
            self.state.flush()
            self.report.state_error = None
        except StoreConfigError:
            raise
        except (StoreError, StateCorruptError) as exc:  # updates stay queued
            self.report.state_error = one_line(str(exc), 300)
            log.error("state not saved yet: %s", self.report.state_error)

    def _flush_quietly(self) -> None:
        """The run's last flush, however it ended: never raises, says why the state lags."""
        try:
            if self.state.flush():  # False: nothing was queued, the state is saved
                self.report.state_error = None
        except Exception as exc:
            log.error("state not saved: %s", one_line(str(exc), 300))

    # -- one partition -------------------------------------------------------------

    def _run_one(self, planned: PlannedPartition, *, quiet_busy: bool = False) -> PartitionOutcome:
        pid = planned.pid
        if self.report.stopped or self.should_stop():
            self.report.stopped = True
            return PartitionOutcome(pid, Status.NOT_RUN)
        if planned.action is Action.SKIP:
            return self._skip(planned)
        lease = self._take_lease(pid, quiet=quiet_busy)
        if isinstance(lease, PartitionOutcome):
            return lease
        try:
            return self._run_leased(planned, lease)
        finally:
            lease.release()

    def _take_lease(self, pid: PartitionId, *, quiet: bool = False) -> Lease | PartitionOutcome:
        """The partition's lease, or the outcome when it cannot be had (busy, failed)."""
        try:
            lease = self.leases.acquire(pid)
        except StoreConfigError:
            raise
        except StoreError as exc:  # not recorded: another run may hold the partition
            error = one_line(f"could not take the partition lease: {exc}")
            log.error("%s: failed: %s", pid.state_key, error)
            return PartitionOutcome(pid, Status.FAILED, error=error)
        if lease is None:
            if not quiet:
                log.info("%s: skipped: another run holds its lease", pid.state_key)
            return PartitionOutcome(pid, Status.BUSY)
        return lease

    def _run_leased(self, planned: PlannedPartition, lease: Lease) -> PartitionOutcome:
        """Re-check, then compact, a partition whose lease we hold."""
        pid = planned.pid
        match self._recheck(planned):
            case PublishedMeanwhile(meta):
                log.info("%s: skipped: compacted by another run since this run planned",
                         pid.state_key)
                return self._up_to_date(pid, meta)
            case RecheckFailed(error):
                started_at, attempts = self._next_attempt(pid)
                return self._record_failure(pid, Status.FAILED, error, started_at, attempts)
            case ToCompact(current):
                if current.partition.file_count == 0:
                    return PartitionOutcome(pid, Status.NO_DATA)
                return self._compact(current, lease.check_held)

    def _recheck(self, planned: PlannedPartition) -> Recheck:
        """Once we hold the lease: did another run publish the partition since we planned?

        A run that compacted the partition between our plan and our lease has released
        it by now. Compacting again would only hide the partition from readers for a
        while and redo the same bytes. If that run saw another raw listing (a late file),
        ours may be the stale one: list again, so we never publish over a newer output.
        """
        pid = planned.pid
        try:
            meta = read_meta(self.compact, pid)
            if meta is None or meta == planned.meta:
                return ToCompact(planned)
            published = meta.get("source_fingerprint")
            if published == planned.partition.fingerprint:
                return PublishedMeanwhile(meta)
            fresh = list_partition(self.raw, pid)
        except StoreConfigError:
            raise
        except StoreError as exc:
            # Cannot tell: a newer output may be published, and compacting our listing
            # would replace it with an older one. Fail (retryable); the next run re-plans.
            return RecheckFailed(one_line(f"could not re-check meta.json: {exc}"))
        if fresh.fingerprint == published:
            return PublishedMeanwhile(meta)
        log.info("%s: another run published another raw listing meanwhile; listed again "
                 "(%d files)", pid.state_key, fresh.file_count)
        return ToCompact(replace(planned, partition=fresh))

    def _settle_busy(self, outcomes: list[PartitionOutcome]) -> list[PartitionOutcome]:
        """Wait for partitions of a ready day that another run on this host is compacting.

        Two runs that split a day between them would otherwise each find the other's
        partitions busy, and neither would ever count the day done. Waiting holds no
        lease, so runs waiting on each other never deadlock. A lease held from another
        host is left to its run at once (as is everything once a stop is asked).
        """
        if not any(o.status is Status.BUSY for o in outcomes):
            return outcomes
        planned = {p.pid: p for p in self.plan.partitions}
        deadline = time.monotonic() + self.busy_wait_s
        settled = []
        for outcome in outcomes:
            waited = False
            while outcome.status is Status.BUSY and time.monotonic() < deadline:
                if self.should_stop():
                    self.report.stopped = True
                    break
                try:
                    if not self.leases.worth_waiting(outcome.pid):
                        break
                except StoreConfigError:
                    raise
                except StoreError:
                    break  # leave it busy; the next run sees to it
                if not waited:
                    log.info("%s: waiting for the run that holds it", outcome.pid.state_key)
                    waited = True
                self.sleep(random.uniform(0.5, 1.0) * self.busy_poll_s)
                outcome = self._run_one(planned[outcome.pid], quiet_busy=True)
            settled.append(outcome)
        return settled

    def _skip(self, planned: PlannedPartition) -> PartitionOutcome:
        pid = planned.pid
        log.info("%s: skipped: %s", pid.state_key, planned.describe)
        if planned.reason is Reason.QUARANTINED:
            entry = self.state.get(pid)
            return PartitionOutcome(
                pid, Status.STILL_QUARANTINED,
                error=entry.error if entry else planned.detail,
                failed_key=entry.failed_key if entry else None,
            )
        assert planned.reason in DONE_SKIPS
        if planned.reason is Reason.NO_DATA:
            return PartitionOutcome(pid, Status.NO_DATA)
        return self._up_to_date(pid, planned.meta or {})

    def _up_to_date(self, pid: PartitionId, meta: dict[str, Any]) -> PartitionOutcome:
        """A partition whose published meta.json matches its raw files: done, state synced."""
        entry = self.state.get(pid)
        published = _success_from_meta(meta, entry)
        if published is None:
            log.warning("%s: meta.json lacks valid rows/size; state not updated", pid.state_key)
        elif entry is None or entry.status != "success" or entry.rows != published.rows:
            self._record(pid, published)  # meta.json is the truth; the state lost track
        rows = published.rows if published else 0
        size = published.total_size_bytes if published else 0
        return PartitionOutcome(pid, Status.UP_TO_DATE, rows=rows, size_bytes=size)

    def _compact(self, planned: PlannedPartition, fence: Callable[[], None]) -> PartitionOutcome:
        pid, part = planned.pid, planned.partition
        started_at, attempts = self._next_attempt(pid)
        self._record(pid, PartitionState.in_progress(started_at=started_at, attempts=attempts))
        log.info("%s: compacting %d files, %s (%s)", pid.state_key, part.file_count,
                 human_size(part.total_bytes), planned.describe)
        clock = time.monotonic()
        try:
            result = compact_partition(part, self.raw, self.compact, self.settings,
                                       should_stop=self.should_stop, fence=fence)
        except StoreConfigError:
            raise  # the store itself is unusable: the run stops (exit 2)
        except Exception as exc:
            return self._failed(pid, exc, started_at, attempts, time.monotonic() - clock)
        seconds = time.monotonic() - clock
        self._record(pid, PartitionState.success(
            rows=result.rows, total_size_bytes=result.size_bytes, started_at=started_at,
            attempts=attempts, day_quality_post=result.quality.to_dict(),
            skipped_files=result.skipped_files or None,
        ))
        log.info("%s: published %d rows, %s in %.1fs%s", pid.state_key, result.rows,
                 human_size(result.size_bytes), seconds,
                 f", {len(result.skipped_files)} corrupt files skipped"
                 if result.skipped_files else "")
        return PartitionOutcome(pid, Status.SUCCESS, result.rows, result.size_bytes, seconds)

    def _next_attempt(self, pid: PartitionId) -> tuple[str, int]:
        """(started_at, attempt number) of an attempt at the partition starting now."""
        previous = self.state.get(pid)
        return utc_iso(time.time()), previous.attempts + 1 if previous else 1

    def _failed(
        self, pid: PartitionId, exc: Exception, started_at: str, attempts: int, seconds: float
    ) -> PartitionOutcome:
        status, failed_key, error = classify(exc)
        if status is Status.FAILED and isinstance(exc, MergeAborted):
            self.report.stopped = True
        if status is Status.FAILED and not isinstance(exc, _EXPECTED):
            log.exception("%s: unexpected error", pid.state_key)
        return self._record_failure(pid, status, error, started_at, attempts,
                                    failed_key=failed_key, seconds=seconds)

    def _record_failure(
        self, pid: PartitionId, status: Status, error: str, started_at: str, attempts: int,
        *, failed_key: str | None = None, seconds: float = 0.0,
    ) -> PartitionOutcome:
        log.error("%s: %s: %s", pid.state_key, status.value, error)
        self._record(pid, PartitionState.failure(
            status=status.value, error=error, started_at=started_at,
            failed_key=failed_key, attempts=attempts,
        ))
        return PartitionOutcome(pid, status, seconds=seconds, error=error, failed_key=failed_key)


def _success_from_meta(
    meta: dict[str, Any], entry: PartitionState | None
) -> PartitionState | None:
    """A `success` state entry rebuilt from a published meta.json (None if it won't do)."""
    quality = meta.get("day_quality")
    skipped = meta.get("skipped_files")
    try:
        return PartitionState.success(
            rows=meta["rows"],  # types validated by PartitionState
            total_size_bytes=meta["size_bytes"],
            started_at=utc_iso(time.time()),
            attempts=entry.attempts if entry else 1,
            day_quality_post=quality if isinstance(quality, dict) else None,
            skipped_files=skipped if isinstance(skipped, list) else None,
        )
    except (KeyError, TypeError, ValueError):
        return None


#: Failures with a clear one-line story (no traceback in the log).
_EXPECTED = (StoreError, OSError, VerificationError, MergeAborted, LeaseLost, BadInputError)


def classify(exc: Exception) -> tuple[Status, str | None, str]:
    """(status, failing key, one-line error) for an exception out of compact_partition."""
    if isinstance(exc, BadInputError):
        return Status.QUARANTINED, exc.key, one_line(str(exc))
    if isinstance(exc, MergeAborted):
        return Status.FAILED, None, "interrupted"
    if isinstance(exc, LeaseLost):
        return Status.FAILED, None, one_line(str(exc))
    if isinstance(exc, StoreError | OSError | VerificationError):
        return Status.FAILED, None, one_line(f"{type(exc).__name__}: {exc}")
    return Status.FAILED, None, one_line(f"unexpected {type(exc).__name__}: {exc}")
