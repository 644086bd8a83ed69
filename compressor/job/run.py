"""Execute a Plan: every partition of every day ascending, then report.

One partition failing never stops the others. Each outcome is recorded in the
state (batched compare-and-swap writes, flushed at the end of every day), and
last_compacted_date moves per `compressor.state.ready_date`: a day not done
holds it back while later days are still compacted. This module is the run loop;
one partition's attempt is `compressor.job.lifecycle`, its outcome types
`compressor.job.outcome`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from compressor.job.lifecycle import JobObserver, PartitionLifecycle
from compressor.job.outcome import EVENT_OF, PROBLEMS, PartitionOutcome, Status
from compressor.labels import Label
from compressor.lease import LeaseManager
from compressor.logs import STRUCTURED_ONLY
from compressor.partition.compact import CompactSettings
from compressor.planning import Plan, PlannedPartition
from compressor.readiness import StateRecorder, Watermark
from compressor.state import StateStore
from compressor.storage.base import Store, StoreConfigError, StoreError

#: The job's logger keeps the name it had as one module (a log line's `logger` field).
log = logging.getLogger("compressor.job")

#: Problem partitions listed one per line in the printed report.
REPORT_PROBLEMS = 50
#: How long a run waits, per day, for partitions another run on this host is compacting
#: before it leaves them "busy elsewhere" (the day then stays not ready for this run).
BUSY_WAIT_S = 600.0
#: Seconds between two looks at a busy partition's lease (jittered).
BUSY_POLL_S = 0.5


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



def _never() -> bool:
    return False


def _no_label(day: str) -> Label:
    return Label.UNKNOWN


class _Unobserved:
    def fetched(self, nbytes: int) -> None:
        return None

    def partition_done(self, outcome: PartitionOutcome) -> None:
        return None


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
        self._abort = threading.Event()
        self.report = RunReport(plan)
        self.recorder = StateRecorder(state)
        self.watermark = Watermark(plan, compact, self.recorder)
        self.partitions = PartitionLifecycle(
            raw, compact, state, settings, leases, self.recorder, self.report, self._abort,
            ready_date=plan.last_compacted_date, should_stop=should_stop, clock=clock,
            labels=labels, run_id=run_id, observer=self.observer,
            event_day_from=plan.event_day_from)

    def run(self) -> RunReport:
        """Every partition on `workers` threads, in plan order (days ascending); each
        day's outcomes are settled, recorded and confirmed in order as its last
        partition finishes, while the workers go on with the next days' partitions."""
        started = time.monotonic()
        report = self.report
        report.last_compacted_before = self.plan.last_compacted_date
        for p in self.plan.partitions:  # JSON lines only: the human log has the plan line
            log.info("%s: planned: %s, %s", p.pid.state_key, p.action.value, p.describe,
                     extra={**self.partitions.fields(
                         p.pid, "planned", files=p.partition.file_count,
                         bytes_in=p.partition.total_bytes, reason=p.describe),
                         STRUCTURED_ONLY: True})
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

    def _finished(self, outcome: PartitionOutcome) -> None:
        """Tell the observer; give an attempt that logged no final event one (JSON only)."""
        pid = outcome.pid
        if not self.partitions.has_ended(pid):
            event = EVENT_OF.get(outcome.status, "skipped")
            log.info("%s: %s", pid.state_key, outcome.status.value, extra={
                **self.partitions.fields(
                    pid, event, rows=outcome.rows or None, bytes_out=outcome.size_bytes or None,
                    reason=None if event != "skipped" else outcome.status.value,
                    error=outcome.error),
                STRUCTURED_ONLY: True})
        self.observer.partition_done(outcome)

    def _work(self, planned: PlannedPartition) -> PartitionOutcome:
        """One worker's partition. Anything that ends the run (an unusable store, an
        interrupt) stops the other workers from starting another partition at once."""
        try:
            outcome = self.partitions.run(planned)
        except BaseException:
            self._abort.set()
            raise
        self._finished(outcome)
        return outcome

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
                outcome = self.partitions.run(planned[outcome.pid], quiet_busy=True)
            if waited:
                self._finished(outcome)
            settled.append(outcome)
        return settled
