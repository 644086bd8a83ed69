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
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from compressor.discovery import list_partition
from compressor.layout import PartitionId
from compressor.lease import Lease, LeaseLost, LeaseManager
from compressor.logs import STRUCTURED_ONLY
from compressor.merge import MergeAborted
from compressor.meta import Meta, Published, read_published
from compressor.partition.compact import BadInputError, CompactSettings, compact_partition
from compressor.partition.fetch import RawUnreadableError
from compressor.partition.publish import PublishConflict, relabel
from compressor.partition.verify import VerificationError
from compressor.planning import (
    DONE_SKIPS,
    Action,
    Plan,
    PlannedPartition,
    Reason,
)
from compressor.quality.labels import LABELS, RULES_VERSION, Label
from compressor.quality.metrics import DayQuality
from compressor.readiness import StateRecorder, Watermark
from compressor.state import PartitionState, StateStore
from compressor.storage.base import Store, StoreConfigError, StoreError, TransientStoreError
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
    #: The raw listing the outcome was judged on (None: no raw data files).
    fingerprint: str | None = None
    #: Of a compaction that published: raw files and bytes merged, output row groups,
    #: corrupt raw files left out (--skip-corrupt).
    files_in: int = 0
    bytes_in: int = 0
    row_groups: int = 0
    corrupt_skipped: int = 0
    #: Seconds per step this attempt reached: list (the re-check under the lease), fetch,
    #: merge, verify, upload (docs/operations.md "Observability").
    timings: Mapping[str, float] = field(default_factory=dict, compare=False)

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
        ) or ("nothing to do (no raw partition to plan on these days)" if self.plan.days
              else "nothing to do")
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


#: What `Job._recheck` found once the partition's lease was held.
Recheck = ToCompact | PublishedMeanwhile | RecheckFailed


def _never() -> bool:
    return False


def _no_label(day: str) -> Label:
    return Label.UNKNOWN


def _nothing() -> None:
    return None


class StateNotSaved(TransientStoreError):
    """The state could not record an attempt before a publish that needs it recorded."""


class JobObserver(Protocol):
    """What the run's observer (compressor.observe) hears while the job runs."""

    def fetched(self, nbytes: int) -> None: ...

    def partition_done(self, outcome: PartitionOutcome) -> None: ...


class _Unobserved:
    def fetched(self, nbytes: int) -> None:
        return None

    def partition_done(self, outcome: PartitionOutcome) -> None:
        return None


class _Steps(dict[str, float]):
    """compact_partition's `timings`: tells the observer as soon as the fetch has ended."""

    def __init__(self, on_fetched: Callable[[], None]) -> None:
        super().__init__()
        self._on_fetched = on_fetched

    def __setitem__(self, step: str, seconds: float) -> None:
        super().__setitem__(step, seconds)
        if step == "fetch":
            self._on_fetched()


#: Events that end a partition's story in a run (each partition gets one in the JSON log).
_FINAL_EVENTS = frozenset({"published", "skipped", "failed", "quarantined"})
_EVENT_OF = {Status.SUCCESS: "published", Status.FAILED: "failed",
             Status.QUARANTINED: "quarantined"}


class Job:
    """Runs one Plan against the stores; build it, then call `run()` once.

    `clock` is the store's clock (`compressor.clock.StoreClock`): the state's
    "newer attempt wins" rule compares times written by runs on different hosts.
    """

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
        clock: Callable[[], float] = time.time,
        labels: Callable[[str], Label] = _no_label,
        workers: int = 1,
        run_id: str = "",
        observer: JobObserver | None = None,
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
        self.clock = clock
        self.labels = labels
        self.workers = max(1, workers)
        self.run_id = run_id
        self.observer: JobObserver = observer or _Unobserved()
        #: Partitions whose attempt has logged its final event (the rest get one at the end).
        self._ended: set[PartitionId] = set()
        self._abort = threading.Event()
        self.report = RunReport(plan)
        self.recorder = StateRecorder(state)
        self.watermark = Watermark(plan, compact, self.recorder)

    def run(self) -> RunReport:
        """Every partition on `workers` threads, in plan order (days ascending); each
        day's outcomes are settled, recorded and confirmed in order as its last
        partition finishes, while the workers go on with the next days' partitions."""
        started = time.monotonic()
        report = self.report
        report.last_compacted_before = self.plan.last_compacted_date
        for p in self.plan.partitions:  # JSON lines only: the human log has the plan line
            log.info("%s: planned: %s, %s", p.pid.state_key, p.action.value, p.describe,
                     extra={**self._fields(p.pid, "planned", files=p.partition.file_count,
                                           bytes_in=p.partition.total_bytes,
                                           reason=p.describe), STRUCTURED_ONLY: True})
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="partition")
        try:
            pending = {day: [pool.submit(self._work, p) for p in self.plan.for_day(day)]
                       for day in self.plan.days}
            for day in self.plan.days:
                outcomes = [future.result() for future in pending[day]]
                if day in self.plan.ready_days:
                    outcomes = self._settle_busy(outcomes)
                report.outcomes.extend(outcomes)
                self.watermark.day_finished(day, outcomes, report.stopped)
                self.recorder.flush()
            if not report.stopped:
                self.watermark.advance()  # empty days after the last day run
        finally:  # whatever ended the run (an unusable store, too): keep what it did
            self._abort.set()  # partitions not started yet return `not run` at once
            pool.shutdown(wait=True, cancel_futures=True)
            self.recorder.flush_quietly()
            report.state_error = self.recorder.error
            report.last_compacted_after = (self.watermark.value if report.state_error
                                           else self.watermark.settle())
        report.seconds = time.monotonic() - started
        return report

    def _record(self, pid: PartitionId, entry: PartitionState) -> None:
        self.recorder.record(pid, entry)

    def _fields(self, pid: PartitionId, event: str | None = None, **figures: Any
                ) -> dict[str, Any]:
        """`extra=` of a partition's log line: what its JSON line carries (logs.FIELDS)."""
        if event in _FINAL_EVENTS:
            self._ended.add(pid)
        return {"run_id": self.run_id, "partition": pid.state_key, "event": event, **figures}

    def _finished(self, outcome: PartitionOutcome) -> None:
        """Tell the observer; give an attempt that logged no final event one (JSON only)."""
        pid = outcome.pid
        if pid not in self._ended:
            event = _EVENT_OF.get(outcome.status, "skipped")
            log.info("%s: %s", pid.state_key, outcome.status.value, extra={
                **self._fields(pid, event, rows=outcome.rows or None,
                               bytes_out=outcome.size_bytes or None,
                               reason=None if event != "skipped" else outcome.status.value,
                               error=outcome.error),
                STRUCTURED_ONLY: True})
        self.observer.partition_done(outcome)

    def _work(self, planned: PlannedPartition) -> PartitionOutcome:
        """One worker's partition. Anything that ends the run (an unusable store, an
        interrupt) stops the other workers from starting another partition at once."""
        try:
            outcome = self._run_one(planned)
        except BaseException:
            self._abort.set()
            raise
        self._finished(outcome)
        return outcome

    # -- one partition -------------------------------------------------------------

    def _run_one(self, planned: PlannedPartition, *, quiet_busy: bool = False) -> PartitionOutcome:
        pid = planned.pid
        self._ended.discard(pid)
        if self._abort.is_set() or self.report.stopped or self.should_stop():
            self.report.stopped = True
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
                      extra=self._fields(pid, "failed", error=error))
            return PartitionOutcome(pid, Status.FAILED, error=error)
        if lease is None:
            if not quiet:
                log.info("%s: skipped: another run holds its lease", pid.state_key,
                         extra=self._fields(pid, "skipped", reason=Status.BUSY.value))
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
                         pid.state_key, extra=self._fields(
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
            fresh = list_partition(self.raw, pid)
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
                 extra=self._fields(pid, files=fresh.file_count))
        return ToCompact(replace(planned, partition=fresh), now)

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
            if waited:
                self._finished(outcome)
            settled.append(outcome)
        return settled

    def _skip(self, planned: PlannedPartition) -> PartitionOutcome | None:
        """The outcome of a partition planned `skip`, or None when it must be leased after
        all: an output found up to date while planning is read again first, since another
        run (an --overwrite backfill) may have removed or replaced it since."""
        pid = planned.pid
        if planned.reason is Reason.QUARANTINED:
            log.info("%s: skipped: %s", pid.state_key, planned.describe,
                     extra=self._fields(pid, "skipped", reason=planned.describe))
            entry = self.state.get(pid)
            return PartitionOutcome(
                pid, Status.STILL_QUARANTINED,
                error=entry.error if entry else planned.detail,
                failed_key=entry.failed_key if entry else None,
            )
        if planned.reason is Reason.CAPPED:
            log.info("%s: not run: %s", pid.state_key, planned.describe)
            return PartitionOutcome(pid, Status.NOT_RUN)
        assert planned.reason in DONE_SKIPS
        if planned.reason is Reason.NO_DATA:
            log.info("%s: skipped: %s", pid.state_key, planned.describe,
                     extra=self._fields(pid, "skipped", reason=planned.describe))
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
                     pid.state_key, extra=self._fields(pid))
            return None
        if not _label_current(now, self.labels(pid.date)):
            return None  # up to date, but the day's label changed: relabel under the lease
        if self._needs_sync(pid, now):
            # Only a lease holder writes an entry: a run without it could stamp a
            # "success" newer than the attempt another run is making right now.
            return None
        log.info("%s: skipped: %s", pid.state_key, planned.describe,
                 extra=self._fields(pid, "skipped", reason=planned.describe))
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
                 extra=self._fields(pid, "skipped", reason=f"up to date; day label {change}"))
        return self._up_to_date(pid, replace(base, meta=meta), fingerprint)

    def _up_to_date(self, pid: PartitionId, published: Published, fingerprint: str
                    ) -> PartitionOutcome:
        """A partition whose published pair matches its raw files: done, state synced."""
        entry = self.state.get(pid)
        synced = _success_from_meta(published.meta, entry, utc_iso(self.clock()))
        if synced is None:
            log.warning("%s: meta.json lacks valid rows/size; state not updated", pid.state_key,
                        extra=self._fields(pid))
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
                 extra=self._fields(pid, "started", files=part.file_count,
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
                         extra=self._fields(pid, "skipped", reason="compacted by another run "
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
            updated_at=utc_iso(self.clock()),
        ))
        merged = result.merge
        log.info("%s: published %d rows, %s in %.1fs%s", pid.state_key, result.rows,
                 human_size(result.size_bytes), seconds,
                 f", {len(result.skipped_files)} corrupt files skipped"
                 if result.skipped_files else "",
                 extra=self._fields(pid, "published", rows=result.rows,
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
        ready = self.plan.last_compacted_date
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
            self.report.stopped = True
        if status is Status.FAILED and not isinstance(exc, _EXPECTED):
            log.exception("%s: unexpected error", pid.state_key, extra=self._fields(pid))
        return self._record_failure(pid, status, error, started_at, attempts,
                                    failed_key=failed_key, seconds=seconds)

    def _record_failure(
        self, pid: PartitionId, status: Status, error: str, started_at: str, attempts: int,
        *, failed_key: str | None = None, seconds: float = 0.0,
    ) -> PartitionOutcome:
        log.error("%s: %s: %s", pid.state_key, status.value, error,
                  extra=self._fields(pid, _EVENT_OF.get(status, "failed"), error=error,
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
        )
    except (TypeError, ValueError):
        return None


#: Failures with a clear one-line story (no traceback in the log).
_EXPECTED = (StoreError, OSError, VerificationError, MergeAborted, LeaseLost, BadInputError)


def classify(exc: Exception) -> tuple[Status, str | None, str]:
    """(status, failing key, one-line error) for an exception out of compact_partition."""
    if isinstance(exc, BadInputError):
        return Status.QUARANTINED, exc.key, one_line(str(exc))
    if isinstance(exc, MergeAborted):
        return Status.FAILED, None, "interrupted"
    if isinstance(exc, RawUnreadableError):
        return Status.FAILED, exc.key, one_line(str(exc))
    if isinstance(exc, LeaseLost):
        return Status.FAILED, None, one_line(str(exc))
    if isinstance(exc, StoreError | OSError | VerificationError):
        return Status.FAILED, None, one_line(f"{type(exc).__name__}: {exc}")
    return Status.FAILED, None, one_line(f"unexpected {type(exc).__name__}: {exc}")
