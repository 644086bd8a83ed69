"""One run of the job: a RunConfig -> plan -> execute -> a RunResult.

The shape of delta-rs's optimize: `plan` builds the printable Plan and touches
nothing (what --dry-run shows), `execute` runs it under leases and returns the
RunReport. `cli.py` only parses argv into a RunConfig and turns the result into
output and an exit code; the demo builds RunConfigs itself. Signals are the
CLI's: the runner only polls `should_stop`.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from compressor.audit import AuditResult, audit, days_of, not_compacted, partitions_in_range
from compressor.cleanup import CleanupPlan, CleanupResult
from compressor.cleanup import execute as execute_cleanup
from compressor.clock import StoreClock
from compressor.job import Job, RunReport
from compressor.layout import PROBE_PREFIX, PartitionId
from compressor.lease import DEFAULT_SKEW_S, DEFAULT_TTL_S, LeaseManager, LeaseOwner
from compressor.merge import (
    MAX_SPARE_SLICES,
    keep_spare_slices,
    spares_for,
    start_spare_slices,
)
from compressor.observe import RunObserver
from compressor.partition.compact import CompactSettings, may_merge_in_slices
from compressor.partition.workdir import clean_stale_tmp
from compressor.planning import Plan, PlanOptions, build_plan
from compressor.quality.verdicts import DEFAULT_PRIMARY_EXCHANGE, DayVerdicts
from compressor.state import StateStore
from compressor.storage import Store, StoreConfigError, StoreError
from compressor.text import human_size, one_line

log = logging.getLogger(__name__)


class TmpDirError(ValueError):
    """--tmp-dir is not a directory this run can write in (the CLI exits 2)."""


@dataclass(frozen=True)
class RunConfig:
    """Everything one run needs besides its two stores."""

    options: PlanOptions
    settings: CompactSettings
    #: False: `options.today` is a placeholder and the store's date is used (docs/guarantees.md
    #: "Guarantees under failure": a host a few minutes fast must not compact the day
    #: still being written).
    today_given: bool = True
    dry_run: bool = False
    lease_ttl_s: float = DEFAULT_TTL_S
    primary_exchange: str = DEFAULT_PRIMARY_EXCHANGE
    #: Most spare slice processes (MERGE_SPARE_SLICES; `spare_slices`).
    spare_limit: int = MAX_SPARE_SLICES
    #: Partitions compacted at once; None: `default_workers` of the cores and budget.
    workers: int | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    #: docs/operations.md "Observability": the Prometheus text file and the summary JSON written at
    #: the end of the run, and the live progress line (None: when stderr is a terminal).
    metrics_file: Path | None = None
    summary_json: Path | None = None
    progress: bool | None = None

    @property
    def tmp_dir(self) -> Path:
        return self.settings.tmp_root

    @property
    def lease_skew_s(self) -> float:
        """The leases' clock allowance: DEFAULT_SKEW_S, or a quarter of a shortened TTL.

        Every run judges leases on the store's clock, right within a second or two,
        so a shortened TTL (tests, the chaos bench) can use a small allowance."""
        return min(DEFAULT_SKEW_S, self.lease_ttl_s / 4)


#: One worker's share of the budget goes 1/FETCH_SHARE to fetched raw bytes.
FETCH_SHARE = 4
#: The least memory budget one worker's merge gets; fewer workers rather than less.
MIN_WORKER_BUDGET = 192 * 1024 * 1024


def default_workers(memory_budget: int, cores: int | None = None) -> int:
    """As many workers as cores, while each keeps at least MIN_WORKER_BUDGET."""
    cores = cores or os.cpu_count() or 1
    return max(1, min(cores, memory_budget // MIN_WORKER_BUDGET))


def split_budget(config: RunConfig, partitions: int | None = None,
                 cores: int | None = None) -> tuple[int, CompactSettings]:
    """(workers, each worker's settings): --memory-budget is the whole process's, so
    every worker's merge gets an equal share of it (docs/operations.md "Configuration").

    No more workers than `partitions` to compact: a run of one big partition gives
    it the whole budget. The cores the workers leave go to each merge's slice
    processes (docs/guarantees.md "How a run works"): one worker on two cores merges in two slices.
    """
    total = config.settings.merge.memory_budget
    workers = config.workers or default_workers(total, cores)
    if partitions is not None:
        workers = max(1, min(workers, partitions))
    share = max(2, total // workers)
    # a quarter of a worker's share holds fetched, not yet merged raw bytes (the rest
    # go to its temp dir); the merge's buffers get the other three quarters
    fetch = max(1, share // FETCH_SHARE)
    processes = max(1, (cores or os.cpu_count() or 1) // workers)
    merge = replace(config.settings.merge, memory_budget=max(1, share - fetch),
                    processes=processes)
    return workers, replace(config.settings, merge=merge, fetch_budget_bytes=fetch)


@dataclass
class RunResult:
    """What a run did: its plan, and the report (None for a dry run)."""

    plan: Plan
    report: RunReport | None = None


def plan(config: RunConfig, raw: Store, compact: Store) -> tuple[Plan, StateStore, StoreClock]:
    """Check the stores, measure the store clock, load the state, build the plan. No writes."""
    raw.check()
    compact.check()
    # Leases and the state's "newer attempt wins" compare times written by hosts whose
    # clocks differ: all of them are taken on the compact store's clock.
    clock = StoreClock.measure(compact)
    options = config.options
    if not config.today_given:
        options = replace(options, today=datetime.fromtimestamp(clock(), UTC).date())
    options = replace(options, now=datetime.fromtimestamp(clock(), UTC))
    state = StateStore(compact, clock=clock)
    state.load()
    return build_plan(raw, compact, state, options), state, clock


def run(
    config: RunConfig, raw: Store, compact: Store, should_stop: Callable[[], bool]
) -> RunResult:
    """Plan, then (unless a dry run) execute; StoreError/StateCorruptError/TmpDirError
    when the run cannot start at all (ObserveError: a metrics or summary file that cannot
    be written). The observer's files are written at the end, whatever ended the run."""
    observer = RunObserver(config.run_id, metrics_file=config.metrics_file,
                           summary_json=config.summary_json, progress=config.progress,
                           enabled=not config.dry_run)
    spares = spare_slices(config)
    keep_spare_slices(spares)  # the command may have started them before its imports
    start_spare_slices(spares)
    try:
        result = _run(config, raw, compact, should_stop, observer)
    except BaseException as exc:
        observer.finish(None, exc)
        raise
    finally:
        keep_spare_slices(0)
    observer.finish(result.report)
    return result


def spare_slices(config: RunConfig, cores: int | None = None) -> int:
    """Slice processes to start before the plan (docs/guarantees.md "How a run works").

    A run may find one big partition to compact, whose merge then takes every core;
    started now, the processes import while the run plans, not while that merge
    waits for them. A plan that needs fewer stops the rest (`execute`)."""
    if config.dry_run:
        return 0
    return spares_for(cores or os.cpu_count() or 1, config.workers, config.spare_limit)


def _run(config: RunConfig, raw: Store, compact: Store, should_stop: Callable[[], bool],
         observer: RunObserver) -> RunResult:
    the_plan, state, clock = plan(config, raw, compact)
    if config.dry_run:
        return RunResult(the_plan)
    observer.planned(the_plan)
    note = the_plan.flush_rule_note()
    if note and not the_plan.lowers_event_day_from:
        log.info(note)
    compact.check_conditional_writes(PROBE_PREFIX)  # it writes: never in a dry run
    check_tmp_dir(config.tmp_dir)
    for path in clean_stale_tmp(config.tmp_dir):
        log.info("removed %s, left by a run that is gone", path)
    if the_plan.lowers_event_day_from and the_plan.event_day_from is not None:
        # declared before any output changes, so every run from now on places these days'
        # rows by event day too (docs/guarantees.md "Rows belong to their event day")
        log.info("event_day_from moves back to %s: the backfill's days get their rows by "
                 "event day", the_plan.event_day_from)
        state.lower_event_day_from(the_plan.event_day_from)
        state.flush()
    verdicts = DayVerdicts(raw, compact, primary_exchange=config.primary_exchange, clock=clock)
    report = execute(config, the_plan, raw, compact, state, clock, verdicts, should_stop,
                     observer)
    if should_stop():
        # a download still in flight when the partition gave up may have written after
        # its temp dir was removed: remove such leftovers once more
        clean_stale_tmp(config.tmp_dir)
    return RunResult(the_plan, report)


def execute(
    config: RunConfig, the_plan: Plan, raw: Store, compact: Store, state: StateStore,
    clock: StoreClock, verdicts: DayVerdicts, should_stop: Callable[[], bool],
    observer: RunObserver | None = None,
) -> RunReport:
    workers, settings = split_budget(config, len(the_plan.to_compact))
    merge = settings.merge
    sliced = any(may_merge_in_slices(p.partition, settings, raw) for p in the_plan.to_compact)
    keep_spare_slices(merge.processes - 1 if sliced else 0)
    slices = (f"; a merge of {merge.parallel_min_files}+ local files runs in "
              f"{merge.processes} slices, the first in this process" if merge.processes > 1 else "")
    log.info("run %s: %s, %d of %d partitions to compact; %d worker%s (%s cores, memory "
             "budget %s: %s each%s%s)", config.run_id, the_plan.mode.value,
             len(the_plan.to_compact), len(the_plan.partitions), workers,
             "" if workers == 1 else "s", os.cpu_count() or "?",
             human_size(config.settings.merge.memory_budget),
             human_size(merge.memory_budget),
             "" if config.workers else ", chosen from the cores and the budget", slices,
             extra={"run_id": config.run_id})
    labels = observer.recording(verdicts.label) if observer is not None else verdicts.label
    owner = LeaseOwner.current(config.run_id)
    with LeaseManager(compact, owner=owner, clock=clock, ttl_s=config.lease_ttl_s,
                      skew_s=config.lease_skew_s) as leases:
        clean_dead_runs_leftovers(compact, leases)
        job = Job(the_plan, raw, compact, state, settings, leases=leases,
                  should_stop=should_stop, clock=clock, labels=labels, workers=workers,
                  run_id=config.run_id, observer=observer)
        return job.run()


def clean_dead_runs_leftovers(compact: Store, leases: LeaseManager) -> None:
    """Leases and incomplete uploads left in the compact store by runs killed outright.

    Best effort: a store error here only delays the cleanup to the next run. Aborting
    uploads needs a permission nothing else in the job uses (s3:ListBucketMultipartUploads),
    so any error there, AccessDenied included, is a warning and the run goes on.
    """
    try:
        leases.reap_stale()
    except StoreConfigError:
        raise  # the leases need the same access: the run could not work anyway
    except StoreError as exc:
        log.warning("could not remove leases left by runs that are gone: %s",
                    one_line(str(exc)))
    try:
        aborted = compact.remove_stale_partials()
    except StoreError as exc:
        log.warning("could not abort incomplete uploads left by runs that are gone: %s",
                    one_line(str(exc)))
        return
    if aborted:
        log.info("aborted %d incomplete uploads left by runs that are gone", aborted)


def check_tmp_dir(path: Path) -> None:
    """--tmp-dir must be (or become) a directory this run can write in."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise TmpDirError(f"--tmp-dir {path}: not a writable directory ({reason})") from None


def _range_pids(config: RunConfig, compact: Store, state: StateStore) -> list[PartitionId]:
    options = config.options
    assert options.backfill is not None  # cleanup and verify always have a range
    pids = partitions_in_range(compact, state.snapshot(), days_of(*options.backfill),
                               options.filters)
    shard = options.shard
    return [p for p in pids if shard is None or shard.owns(p)]


def cleanup(config: RunConfig, compact: Store, apply: bool
            ) -> tuple[CleanupPlan, CleanupResult | None]:
    """--mode cleanup: the plan (dry run) or the plan and what --apply removed.

    Only the compact store is given: the raw store cannot be touched."""
    compact.check()
    clock = StoreClock.measure(compact)
    state = StateStore(compact, clock=clock)
    state.load()
    the_plan = CleanupPlan(_range_pids(config, compact, state), state.last_compacted_date)
    if not apply:
        return the_plan, None
    compact.check_conditional_writes(PROBE_PREFIX)
    owner = LeaseOwner.current(config.run_id)
    with LeaseManager(compact, owner=owner, clock=clock, ttl_s=config.lease_ttl_s,
                      skew_s=config.lease_skew_s) as leases:
        return the_plan, execute_cleanup(the_plan, compact, state, leases)


def verify(config: RunConfig, raw: Store, compact: Store, deep: bool) -> AuditResult:
    """--mode verify: audit what is published in the range (with `deep`, also each
    output's columns against its raw files), and find the raw partitions of ready
    days that were never compacted (audit.not_compacted). Read-only."""
    compact.check()
    raw.check()
    state = StateStore(compact)
    state.load()
    pids = _range_pids(config, compact, state)
    if deep:
        check_tmp_dir(config.tmp_dir)
    options = config.options
    assert options.backfill is not None
    shard = options.shard
    snapshot = state.snapshot()
    unpublished = not_compacted(raw, snapshot, days_of(*options.backfill), options.filters,
                                {p.state_key for p in pids},
                                lambda p: shard is None or shard.owns(p))
    result = audit(compact, snapshot, pids, deep=deep, tmp_root=config.tmp_dir, raw=raw)
    return AuditResult(result.checked, result.findings + unpublished)
