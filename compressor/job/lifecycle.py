"""One partition's attempt in a run: lease -> re-check -> act.

A partition planned `compact` (or an up-to-date one whose output must be read again)
is leased first, so that two runs never compact it at once; under the lease, what is
published now is read again (another run may have published since this run planned),
and only then is it compacted, relabelled, or its state entry synced with meta.json
(docs/guarantees.md "How a run works", "Guarantees under failure"). The run loop over the planned
partitions (`compressor.job.run`) calls `PartitionLifecycle.run` once per partition.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from compressor.discovery import list_day
from compressor.job.outcome import (
    EVENT_OF,
    EXPECTED,
    FINAL_EVENTS,
    PartitionOutcome,
    Status,
    classify,
)
from compressor.labels import LABELS, RULES_VERSION, Label
from compressor.layout import PartitionId
from compressor.lease import Lease, LeaseManager
from compressor.merge import MergeAborted
from compressor.meta import Meta, Published, read_published
from compressor.partition.compact import CompactSettings, compact_partition
from compressor.partition.publish import PublishConflict, relabel
from compressor.planning import DONE_SKIPS, Action, PlannedPartition, Reason
from compressor.quality.metrics import DayQuality
from compressor.readiness import StateRecorder
from compressor.state import PartitionState, StateStore
from compressor.storage.base import Store, StoreConfigError, StoreError, TransientStoreError
from compressor.text import human_size, one_line, utc_iso

#: The job's logger keeps the name it had as one module (a log line's `logger` field).
log = logging.getLogger("compressor.job")


@dataclass(frozen=True)
class ToCompact:
    """Re-check: compact this (as planned, or listed again after another run's publish),
    replacing exactly the outputs `base` read under the lease."""

    planned: PlannedPartition
    base: Published


@dataclass(frozen=True)
class PublishedMeanwhile:
    """Re-check: another run published an up-to-date output since this run planned."""

    published: Published
    fingerprint: str


@dataclass(frozen=True)
class RecheckFailed:
    """Re-check: meta.json or the raw listing could not be read; the partition fails."""

    error: str


#: What `PartitionLifecycle._recheck` found once the partition's lease was held.
Recheck = ToCompact | PublishedMeanwhile | RecheckFailed


def _nothing() -> None:
    return None


class StateNotSaved(TransientStoreError):
    """The state could not record an attempt before a publish that needs it recorded."""


class JobObserver(Protocol):
    """What the run's observer (compressor.observe) hears while the job runs."""

    def fetched(self, nbytes: int) -> None: ...

    def partition_done(self, outcome: PartitionOutcome) -> None: ...


class _Steps(dict[str, float]):
    """compact_partition's `timings`: tells the observer as soon as the fetch has ended."""

    def __init__(self, on_fetched: Callable[[], None]) -> None:
        super().__init__()
        self._on_fetched = on_fetched

    def __setitem__(self, step: str, seconds: float) -> None:
        super().__setitem__(step, seconds)
        if step == "fetch":
            self._on_fetched()


class RunFlags(Protocol):
    """The run's shared stop flag (`RunReport.stopped`): set by an attempt that finds
    the run stopping, read by every later one."""

    stopped: bool


class PartitionLifecycle:
    """Attempts partitions of one run against the stores, each on the caller's thread.

    `abort` is set by the run loop when the run ends early; attempts not started yet
    then return `not run` at once, as they do once `flags.stopped` or `should_stop()`.
    `ready_date` is the plan's last_compacted_date (see `_before_publish`).
    """

    def __init__(
        self,
        raw: Store,
        compact: Store,
        state: StateStore,
        settings: CompactSettings,
        leases: LeaseManager,
        recorder: StateRecorder,
        flags: RunFlags,
        abort: threading.Event,
        *,
        ready_date: str | None,
        should_stop: Callable[[], bool],
        clock: Callable[[], float],
        labels: Callable[[str], Label],
        run_id: str,
        observer: JobObserver,
        event_day_from: str | None = None,
    ) -> None:
        self.raw = raw
        self.compact = compact
        self.state = state
        self.settings = settings
        self.leases = leases
        self.recorder = recorder
        self.flags = flags
        self._abort = abort
        self.ready_date = ready_date
        self.should_stop = should_stop
        self.clock = clock
        self.labels = labels
        self.run_id = run_id
        self.observer = observer
        #: The plan's event_day_from: a re-listing places rows as the plan did.
        self.event_day_from = event_day_from
        #: Partitions whose attempt has logged its final event (the rest get one at the end).
        self._ended: set[PartitionId] = set()

    def has_ended(self, pid: PartitionId) -> bool:
        """Whether the partition's last attempt logged its final event."""
        return pid in self._ended

    def _record(self, pid: PartitionId, entry: PartitionState) -> None:
        self.recorder.record(pid, entry)

    def fields(self, pid: PartitionId, event: str | None = None, **figures: Any
               ) -> dict[str, Any]:
        """`extra=` of a partition's log line: what its JSON line carries (logs.FIELDS)."""
        if event in FINAL_EVENTS:
            self._ended.add(pid)
        return {"run_id": self.run_id, "partition": pid.state_key, "event": event, **figures}

    def run(self, planned: PlannedPartition, *, quiet_busy: bool = False) -> PartitionOutcome:
        """The partition's outcome in this run; `quiet_busy`: a look again at a partition
        already logged busy elsewhere logs nothing when it still is."""
        pid = planned.pid
        self._ended.discard(pid)
        if self._abort.is_set() or self.flags.stopped or self.should_stop():
            self.flags.stopped = True
            return PartitionOutcome(pid, Status.NOT_RUN)
        if planned.action is Action.FAIL:
            started_at, attempts = self._next_attempt(pid)
            return self._record_failure(pid, Status.FAILED, planned.detail or "unreadable",
                                        started_at, attempts)
        if planned.action is Action.SKIP:
            skipped = self._skip(planned)
            if skipped is not None:
                return skipped
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
            log.error("%s: failed: %s", pid.state_key, error,
                      extra=self.fields(pid, "failed", error=error))
            return PartitionOutcome(pid, Status.FAILED, error=error)
        if lease is None:
            if not quiet:
                log.info("%s: skipped: another run holds its lease", pid.state_key,
                         extra=self.fields(pid, "skipped", reason=Status.BUSY.value))
            return PartitionOutcome(pid, Status.BUSY)
        return lease

    def _run_leased(self, planned: PlannedPartition, lease: Lease) -> PartitionOutcome:
        """Re-check, then compact, a partition whose lease we hold."""
        clock = time.monotonic()
        recheck = self._recheck(planned)
        listed = time.monotonic() - clock
        outcome = self._act(planned, lease, recheck)
        return replace(outcome, timings={"list": listed, **outcome.timings})

    def _act(self, planned: PlannedPartition, lease: Lease, recheck: Recheck
             ) -> PartitionOutcome:
        pid = planned.pid
        match recheck:
            case PublishedMeanwhile(published, fingerprint):
                log.info("%s: skipped: compacted by another run since this run planned",
                         pid.state_key, extra=self.fields(
                             pid, "skipped", reason="compacted by another run meanwhile"))
                return self._up_to_date(pid, published, fingerprint)
            case RecheckFailed(error):
                started_at, attempts = self._next_attempt(pid)
                return self._record_failure(pid, Status.FAILED, error, started_at, attempts)
            case ToCompact(current, base):
                if current.partition.file_count == 0:
                    return PartitionOutcome(pid, Status.NO_DATA)
                fingerprint = current.partition.fingerprint
                if current.action is Action.SKIP and base.current_for(fingerprint):
                    if _label_current(base, self.labels(pid.date)):
                        return self._up_to_date(pid, base, fingerprint)  # state synced
                    return self._relabel(current, base)
                return self._compact(current, lease.check_held, base)

    def _recheck(self, planned: PlannedPartition) -> Recheck:
        """Once we hold the lease: what is published now, and is it already current?

        Another run may have published the partition between our plan and our lease.
        Compacting again would hide it from readers for a while and redo the same
        bytes. If that run saw another raw listing (a late file), ours may be the
        stale one: list again, so we never publish over a newer output. What we read
        here is also what our publish may replace (`ToCompact.base`).
        """
        pid = planned.pid
        try:
            now = read_published(self.compact, pid)
            if planned.action is Action.SKIP and now.current_for(planned.partition.fingerprint):
                return ToCompact(planned, now)  # still up to date: sync its state entry
            if now == planned.published or now.meta is None or not now.consistent:
                return ToCompact(replace(planned, action=Action.COMPACT), now)
            if now.current_for(planned.partition.fingerprint):
                return PublishedMeanwhile(now, planned.partition.fingerprint)
            fresh = list_day(self.raw, pid, self.event_day_from,
                             datetime.fromtimestamp(self.clock(), UTC))
        except StoreConfigError:
            raise
        except StoreError as exc:
            # Cannot tell: a newer output may be published, and compacting our listing
            # would replace it with an older one. Fail (retryable); the next run re-plans.
            return RecheckFailed(one_line(f"could not re-check meta.json: {exc}"))
        if now.current_for(fresh.fingerprint):
            return PublishedMeanwhile(now, fresh.fingerprint)
        log.info("%s: another run published another raw listing meanwhile; listed again "
                 "(%d files)", pid.state_key, fresh.file_count,
                 extra=self.fields(pid, files=fresh.file_count))
        return ToCompact(replace(planned, partition=fresh), now)

    def _skip(self, planned: PlannedPartition) -> PartitionOutcome | None:
        """The outcome of a partition planned `skip`, or None when it must be leased after
        all: an output found up to date while planning is read again first, since another
        run (an --overwrite backfill) may have removed or replaced it since."""
        pid = planned.pid
        if planned.reason is Reason.QUARANTINED:
            log.info("%s: skipped: %s", pid.state_key, planned.describe,
                     extra=self.fields(pid, "skipped", reason=planned.describe))
            entry = self.state.get(pid)
            return PartitionOutcome(
                pid, Status.STILL_QUARANTINED,
                error=entry.error if entry else planned.detail,
                failed_key=entry.failed_key if entry else None,
            )
        if planned.reason is Reason.CAPPED:
            log.info("%s: not run: %s", pid.state_key, planned.describe)
            return PartitionOutcome(pid, Status.NOT_RUN)
        if planned.reason is Reason.UNSETTLED:
            log.info("%s: waits: %s", pid.state_key, planned.describe,
                     extra=self.fields(pid, "skipped", reason=planned.describe))
            return PartitionOutcome(pid, Status.WAITING)
        assert planned.reason in DONE_SKIPS
        if planned.reason is Reason.NO_DATA:
            log.info("%s: skipped: %s", pid.state_key, planned.describe,
                     extra=self.fields(pid, "skipped", reason=planned.describe))
            return PartitionOutcome(pid, Status.NO_DATA)
        fingerprint = planned.partition.fingerprint
        try:
            now = read_published(self.compact, pid)
        except StoreConfigError:
            raise
        except StoreError:
            return None  # the leased path re-checks, or fails the partition, properly
        if not now.current_for(fingerprint):
            log.info("%s: its output changed since this run planned; re-checking it",
                     pid.state_key, extra=self.fields(pid))
            return None
        if not _label_current(now, self.labels(pid.date)):
            return None  # up to date, but the day's label changed: relabel under the lease
        if self._needs_sync(pid, now):
            # Only a lease holder writes an entry: a run without it could stamp a
            # "success" newer than the attempt another run is making right now.
            return None
        log.info("%s: skipped: %s", pid.state_key, planned.describe,
                 extra=self.fields(pid, "skipped", reason=planned.describe))
        return self._up_to_date(pid, now, fingerprint)

    def _needs_sync(self, pid: PartitionId, published: Published) -> bool:
        """Whether the state entry disagrees with an up-to-date published pair."""
        entry = self.state.get(pid)
        synced = _success_from_meta(published.meta, entry, utc_iso(self.clock()))
        return synced is not None and (
            entry is None or entry.status != "success" or entry.rows != synced.rows
            or entry.day_quality_post != synced.day_quality_post
            or entry.post_filter_version != synced.post_filter_version
        )

    def _relabel(self, planned: PlannedPartition, base: Published) -> PartitionOutcome:
        """Write the day's current label into an up-to-date meta.json (data unchanged)."""
        pid, fingerprint = planned.pid, planned.partition.fingerprint
        label = self.labels(pid.date)
        try:
            meta = relabel(self.compact, pid, base, label)
        except StoreConfigError:
            raise
        except StoreError as exc:
            started_at, attempts = self._next_attempt(pid)
            status, _, error = classify(exc)
            return self._record_failure(pid, status, error, started_at, attempts)
        old_rules = base.meta.rules_version if base.meta is not None else None
        change = (f"{_label_of(base).value} (rules {old_rules or 'unknown'}) -> "
                  f"{label.value} (rules {RULES_VERSION})")
        log.info("%s: up to date; day label %s", pid.state_key, change,
                 extra=self.fields(pid, "skipped", reason=f"up to date; day label {change}"))
        return self._up_to_date(pid, replace(base, meta=meta), fingerprint)

    def _up_to_date(self, pid: PartitionId, published: Published, fingerprint: str
                    ) -> PartitionOutcome:
        """A partition whose published pair matches its raw files: done, state synced."""
        entry = self.state.get(pid)
        synced = _success_from_meta(published.meta, entry, utc_iso(self.clock()))
        if synced is None:
            log.warning("%s: meta.json lacks valid rows/size; state not updated", pid.state_key,
                        extra=self.fields(pid))
        elif self._needs_sync(pid, published):
            self._record(pid, synced)  # meta.json is the truth; the state lost track
        rows = synced.rows if synced else 0
        size = synced.total_size_bytes if synced else 0
        return PartitionOutcome(pid, Status.UP_TO_DATE, rows=rows, size_bytes=size,
                                fingerprint=fingerprint)

    def _compact(self, planned: PlannedPartition, fence: Callable[[], None], base: Published
                 ) -> PartitionOutcome:
        pid, part = planned.pid, planned.partition
        started_at, attempts = self._next_attempt(pid)
        self._record(pid, PartitionState.in_progress(started_at=started_at, attempts=attempts))
        log.info("%s: compacting %d files, %s (%s)", pid.state_key, part.file_count,
                 human_size(part.total_bytes), planned.describe,
                 extra=self.fields(pid, "started", files=part.file_count,
                                    bytes_in=part.total_bytes, reason=planned.describe))
        clock = time.monotonic()
        steps = _Steps(lambda: self.observer.fetched(part.total_bytes))
        try:
            result = compact_partition(part, self.raw, self.compact, self.settings,
                                       should_stop=self.should_stop, fence=fence, base=base,
                                       label=self.labels(pid.date),
                                       before_publish=self._before_publish(pid, base),
                                       timings=steps)
        except StoreConfigError:
            raise  # the store itself is unusable: the run stops (exit 2)
        except PublishConflict as exc:
            if exc.published.current_for(part.fingerprint):
                log.info("%s: another run published the same listing meanwhile", pid.state_key,
                         extra=self.fields(pid, "skipped", reason="compacted by another run "
                                            "meanwhile"))
                return replace(self._up_to_date(pid, exc.published, part.fingerprint),
                               timings=dict(steps))
            return replace(self._failed(pid, exc, started_at, attempts,
                                        time.monotonic() - clock), timings=dict(steps))
        except Exception as exc:
            return replace(self._failed(pid, exc, started_at, attempts,
                                        time.monotonic() - clock), timings=dict(steps))
        seconds = time.monotonic() - clock
        self._record(pid, PartitionState.success(
            rows=result.rows, total_size_bytes=result.size_bytes, started_at=started_at,
            attempts=attempts, day_quality_post=_label_of(result.meta).value,
            post_filter_version=RULES_VERSION, quality=result.quality.compact(),
            source_fingerprint=part.fingerprint, skipped_files=result.skipped_files or None,
            updated_at=utc_iso(self.clock()), day_rule=result.meta.day_rule,
        ))
        merged = result.merge
        log.info("%s: published %d rows, %s in %.1fs%s", pid.state_key, result.rows,
                 human_size(result.size_bytes), seconds,
                 f", {len(result.skipped_files)} corrupt files skipped"
                 if result.skipped_files else "",
                 extra=self.fields(pid, "published", rows=result.rows,
                                    files=merged.input_files, bytes_in=merged.bytes_in,
                                    bytes_out=result.size_bytes, seconds=seconds))
        return PartitionOutcome(pid, Status.SUCCESS, result.rows, result.size_bytes, seconds,
                                fingerprint=part.fingerprint, files_in=merged.input_files,
                                bytes_in=merged.bytes_in, row_groups=merged.row_groups,
                                corrupt_skipped=len(result.skipped_files), timings=dict(steps))

    def _before_publish(self, pid: PartitionId, base: Published) -> Callable[[], None]:
        """Save the `in_progress` entry before a publish that could leave a ready day
        short of a partition if the run died half-way: one that replaces a published
        pair, or one on a day already ready. Its entry then says `in_progress`, and the
        next catch-up retries that day (docs/operations.md "Killed runs"). New days need no flush:
        they are not ready until this run confirms them."""
        ready = self.ready_date
        if base.meta_etag is None and (ready is None or pid.date > ready):
            return _nothing

        def save() -> None:
            if not self.recorder.flush():
                raise StateNotSaved(f"{pid.state_key}: its in_progress entry could not be "
                                    f"saved ({self.recorder.error}); nothing replaced")

        return save

    def _next_attempt(self, pid: PartitionId) -> tuple[str, int]:
        """(started_at, attempt number) of an attempt at the partition starting now."""
        previous = self.state.get(pid)
        return utc_iso(self.clock()), previous.attempts + 1 if previous else 1

    def _failed(
        self, pid: PartitionId, exc: Exception, started_at: str, attempts: int, seconds: float
    ) -> PartitionOutcome:
        status, failed_key, error = classify(exc)
        if status is Status.FAILED and isinstance(exc, MergeAborted):
            self.flags.stopped = True
        if status is Status.FAILED and not isinstance(exc, EXPECTED):
            log.exception("%s: unexpected error", pid.state_key, extra=self.fields(pid))
        return self._record_failure(pid, status, error, started_at, attempts,
                                    failed_key=failed_key, seconds=seconds)

    def _record_failure(
        self, pid: PartitionId, status: Status, error: str, started_at: str, attempts: int,
        *, failed_key: str | None = None, seconds: float = 0.0,
    ) -> PartitionOutcome:
        log.error("%s: %s: %s", pid.state_key, status.value, error,
                  extra=self.fields(pid, EVENT_OF.get(status, "failed"), error=error,
                                     seconds=seconds))
        self._record(pid, PartitionState.failure(
            status=status.value, error=error, started_at=started_at,
            failed_key=failed_key, attempts=attempts, updated_at=utc_iso(self.clock()),
        ))
        return PartitionOutcome(pid, status, seconds=seconds, error=error, failed_key=failed_key)




def _label_of(source: Published | Meta) -> Label:
    """The day label a meta.json carries (UNKNOWN for anything else, e.g. old figures)."""
    meta = source.meta if isinstance(source, Published) else source
    value = meta.extra.get("day_quality") if meta is not None else None
    return Label(value) if isinstance(value, str) and value in LABELS else Label.UNKNOWN


def _label_current(published: Published, label: Label) -> bool:
    """Whether an up-to-date pair needs no relabel: its meta.json carries the day's
    `label`, made by the current window rules. A label of other rules is relabelled in
    place even when its string is the same (docs/quality.md "Collector health windows")."""
    return _label_of(published) is label and published.labelled_by(RULES_VERSION)


def _success_from_meta(
    meta: Meta | None, entry: PartitionState | None, now: str
) -> PartitionState | None:
    """A `success` state entry rebuilt from a published meta.json (None if it won't do)."""
    if meta is None:
        return None
    version = meta.rules_version
    try:
        figures = DayQuality.from_json(meta.extra.get("quality")).compact()
    except (TypeError, ValueError, AttributeError, KeyError):
        figures = None
    try:
        return PartitionState.success(
            rows=meta.rows,
            total_size_bytes=meta.size_bytes,
            started_at=now,
            updated_at=now,
            attempts=entry.attempts if entry else 1,
            day_quality_post=_label_of(meta).value,
            post_filter_version=version,
            quality=figures,
            source_fingerprint=meta.source_fingerprint,
            skipped_files=meta.skipped_files or None,
            day_rule=meta.day_rule,
        )
    except (TypeError, ValueError):
        return None
