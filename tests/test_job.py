"""compressor.job (run loop, partition lifecycle, outcomes), on local stores with generator
data (no mocks).

- classify: which exception quarantines a partition and which only fails it (retryable);
- RunReport: ok and render;
- readiness: a failed day in the middle holds last_compacted_date back, later days are
  still compacted, and the next run moves it once the day is done;
- the state: failing writes never stop a run, and a run that ends early (an unusable
  store, an interrupt) still flushes what it did.

Faults are injected by tests.conftest.FlakyLocalStore, a real LocalStore that raises
chosen errors on chosen operations and keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from compressor.demo import PartitionSpec, special_files
from compressor.discovery import list_partition
from compressor.job import REPORT_PROBLEMS, Job, PartitionOutcome, RunReport, Status, classify
from compressor.layout import LOCKS_PREFIX, STATE_KEY, PartitionId
from compressor.lease import LeaseLost, LeaseManager
from compressor.merge import CorruptFileError, MergeAborted, SchemaConflictError
from compressor.partition.compact import BadInputError, CompactSettings, compact_partition
from compressor.partition.verify import VerificationError, verify_output
from compressor.planning import Mode, Plan, PlanOptions, build_plan
from compressor.state import StateStore
from compressor.storage import StoreConfigError, StoreError, TransientStoreError
from tests.conftest import FlakyLocalStore, put_partition

TODAY = date(2026, 11, 24)
DAYS = ("20261121", "20261122", "20261123")
BEFORE = "20261120"
PARTS = (("binance", "trade", "btcusdt"), ("okx", "bbo", "ethusdt"))


@dataclass
class Lake:
    raw: FlakyLocalStore
    compact: FlakyLocalStore
    settings: CompactSettings
    pids: dict[str, list[PartitionId]]  # day -> its partitions, in plan order

    def job(self, state: StateStore | None = None, **kw: Any) -> Job:
        """A catch-up run: over DAYS at first (last_compacted_date starts at BEFORE)."""
        state = state or StateStore(self.compact)
        plan = build_plan(self.raw, self.compact, state,
                          PlanOptions(mode=Mode.CATCH_UP, today=TODAY))
        leases = LeaseManager(self.compact, auto_renew=False)
        return Job(plan, self.raw, self.compact, state, self.settings, leases,
                   sleep=lambda s: None, **kw)

    def state_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.compact.get_bytes(STATE_KEY)[0])
        return doc

    def statuses(self) -> dict[str, str]:
        return {k: v["status"] for k, v in self.state_doc()["partitions"].items()}

    def published(self) -> set[str]:
        return {pid.state_key for pids in self.pids.values() for pid in pids
                if self.compact.head(pid.meta_key) is not None}


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    for name in ("raw", "compact"):
        (tmp_path / name).mkdir()
    raw = FlakyLocalStore(tmp_path / "raw")
    pids: dict[str, list[PartitionId]] = {}
    for d, day in enumerate(DAYS):
        for n, (ex, st, sy) in enumerate(PARTS):
            spec = PartitionSpec(exchange=ex, stream=st, symbol=sy, date=day, files=3,
                                 rows_per_file=40, seed=10 * d + n)
            put_partition(raw, spec, tmp_path)
            pids.setdefault(day, []).append(spec.partition)
    compact = FlakyLocalStore(tmp_path / "compact")
    state = StateStore(compact)
    state.advance_last_compacted(BEFORE)
    state.flush()
    settings = CompactSettings(tmp_root=tmp_path / "work", download_workers=2)
    return Lake(raw, compact, settings, pids)


# --------------------------------------------------------------------------- classify


@pytest.mark.parametrize(("exc", "status", "failed_key", "error"), [
    (BadInputError("a/b.parquet", CorruptFileError("/tmp/w/in/000001.parquet", "not Parquet")),
     Status.QUARANTINED, "a/b.parquet", "a/b.parquet: not Parquet"),
    (BadInputError("a/c.parquet", SchemaConflictError("/tmp/w/in/000002.parquet", "string "
                                                      "vs double", column="price")),
     Status.QUARANTINED, "a/c.parquet", "a/c.parquet column 'price': string vs double "
     "(--skip-corrupt does not skip a type conflict: fix or delete the object whose type is "
     "the odd one; README \"Runbook\")"),
    (MergeAborted("interrupted while merging"), Status.FAILED, None, "interrupted"),
    (LeaseLost("compacted/locks/x.lock", "expired"), Status.FAILED, None,
     "compacted/locks/x.lock: lease lost: expired"),
    (TransientStoreError("get k:\nSlowDown"), Status.FAILED, None,
     "TransientStoreError: get k: SlowDown"),
    (StoreError("odd reply"), Status.FAILED, None, "StoreError: odd reply"),
    (OSError(28, "No space left on device"), Status.FAILED, None,
     "OSError: [Errno 28] No space left on device"),
    (VerificationError("data.parquet: ts_event decreases"), Status.FAILED, None,
     "VerificationError: data.parquet: ts_event decreases"),
    (ValueError("a\n  bug"), Status.FAILED, None, "unexpected ValueError: a bug"),
])
def test_classify(exc: Exception, status: Status, failed_key: str | None, error: str) -> None:
    """Only bad input quarantines; everything else fails for a retry, in one line."""
    if isinstance(exc, LeaseLost):
        error = str(exc)  # its wording belongs to compressor.lease
    assert classify(exc) == (status, failed_key, error)


def test_a_corrupt_raw_object_is_quarantined_naming_its_key(lake: Lake, tmp_path: Path) -> None:
    spec = PartitionSpec(exchange="bybit", stream="trade", symbol="solusdt", date=DAYS[1],
                         files=4, rows_per_file=30, corrupt=1, seed=5)
    keys = put_partition(lake.raw, spec, tmp_path)
    (slot,) = special_files(spec)
    with pytest.raises(BadInputError) as info:
        compact_partition(list_partition(lake.raw, spec.partition), lake.raw, lake.compact,
                          lake.settings)
    status, failed_key, error = classify(info.value)
    assert (status, failed_key) == (Status.QUARANTINED, keys[slot])
    assert error.startswith(keys[slot]) and "\n" not in error

    report = lake.job().run()

    bad = next(o for o in report.outcomes if o.pid == spec.partition)
    assert (bad.status, bad.failed_key) == (Status.QUARANTINED, keys[slot])
    entry = lake.state_doc()["partitions"][spec.partition.state_key]
    assert entry["status"] == "quarantined" and entry["failed_key"] == keys[slot]


def test_a_lost_lease_fails_the_partition_for_a_retry(lake: Lake) -> None:
    pid = lake.pids[DAYS[0]][0]
    lease = LeaseManager(lake.compact, auto_renew=False).acquire(pid)
    assert lease is not None
    lake.compact.delete(pid.lock_key)  # e.g. an operator cleaning compacted/locks/
    with pytest.raises(LeaseLost) as info:
        compact_partition(list_partition(lake.raw, pid), lake.raw, lake.compact,
                          lake.settings, fence=lease.check_held)
    assert classify(info.value)[:2] == (Status.FAILED, None)
    assert lake.compact.head(pid.meta_key) is None  # fenced before any write


def test_a_stop_request_and_a_bad_output_fail_for_a_retry(lake: Lake, tmp_path: Path) -> None:
    pid = lake.pids[DAYS[0]][0]
    with pytest.raises(MergeAborted) as stopped:
        compact_partition(list_partition(lake.raw, pid), lake.raw, lake.compact,
                          lake.settings, should_stop=lambda: True)
    assert classify(stopped.value) == (Status.FAILED, None, "interrupted")
    unsorted = tmp_path / "unsorted.parquet"
    pq.write_table(pa.table({"ts_event": [2, 1], "seq": [0, 1]}), unsorted)
    with pytest.raises(VerificationError) as bad:
        verify_output(unsorted, 2)
    assert classify(bad.value)[:2] == (Status.FAILED, None)


# --------------------------------------------------------------------------- readiness + report


@pytest.mark.parametrize("workers", [1, 3])
def test_a_failed_day_in_the_middle_holds_readiness_and_later_days_still_run(
    lake: Lake, workers: int
) -> None:
    bad = lake.pids[DAYS[1]][0]
    lake.raw.fail("get_file", bad.prefix)  # retries ran out on one raw object

    report = lake.job(workers=workers).run()
    assert [o.pid for o in report.outcomes] == [p for d in DAYS for p in lake.pids[d]]

    by_pid = {o.pid: o.status for o in report.outcomes}
    assert by_pid.pop(bad) is Status.FAILED
    assert set(by_pid.values()) == {Status.SUCCESS} and len(by_pid) == 5
    assert report.last_compacted_before == BEFORE
    assert report.last_compacted_after == DAYS[0]  # the failed day holds it back
    assert not report.ok and report.state_error is None
    doc = lake.state_doc()
    assert doc["last_compacted_date"] == DAYS[0]
    assert doc["partitions"][bad.state_key]["status"] == "failed"
    assert "TransientStoreError" in doc["partitions"][bad.state_key]["error"]
    assert lake.published() == {p.state_key for ps in lake.pids.values() for p in ps} - {
        bad.state_key}

    lake.raw.clear()
    again = lake.job(workers=workers).run()

    assert again.plan.days == list(DAYS)  # the ready day DAYS[0] again: the lookback
    assert [o.status for o in again.outcomes if o.pid == bad] == [Status.SUCCESS]
    assert again.count(Status.UP_TO_DATE) == 5 and again.ok
    assert again.last_compacted_after == DAYS[-1] == lake.state_doc()["last_compacted_date"]
    assert lake.state_doc()["partitions"][bad.state_key]["attempts"] == 2


def test_report_render_counts_moves_and_problems(lake: Lake) -> None:
    bad = lake.pids[DAYS[1]][1]
    lake.raw.fail("get_file", bad.prefix, StoreError("get: refused\nsecond line"))
    report = lake.job().run()
    lines = report.render().splitlines()
    assert lines[0].startswith(f"catch-up run over {', '.join(DAYS)}: 5 success, 1 failed in ")
    assert lines[1] == f"last_compacted_date: {BEFORE} -> {DAYS[0]}"
    assert lines[2:] == [f"  failed: {bad.state_key}: StoreError: get: refused second line"]


def _plan() -> Plan:
    return Plan(mode=Mode.BACKFILL, today="20261124", days=[], ready_days=[],
                last_compacted_date=None)


def test_report_ok_and_its_extra_lines() -> None:
    report = RunReport(_plan())
    assert report.ok
    assert report.render().splitlines() == [
        "backfill run over no days: nothing to do in 0.0s", "last_compacted_date: - -> -"]
    pid = PartitionId("okx", "bbo", "ethusdt", "20261123")
    report.outcomes = [PartitionOutcome(pid, Status.BUSY), PartitionOutcome(pid, Status.NO_DATA)]
    assert report.ok  # busy elsewhere is another run's work, not a problem
    report.outcomes.append(PartitionOutcome(pid, Status.STILL_QUARANTINED, error="bad key"))
    assert not report.ok
    report.outcomes.pop()
    report.state_error = "compare-and-swap lost"
    report.stopped = True
    assert not report.ok
    assert report.render().splitlines()[-2:] == [
        "  state not saved: compare-and-swap lost",
        "  stopped by a signal; the remaining partitions run next time"]


def test_report_lists_a_bounded_number_of_problems() -> None:
    report = RunReport(_plan())
    report.outcomes = [
        PartitionOutcome(PartitionId("okx", "trade", f"s{n:03d}usdt", "20261123"),
                         Status.FAILED, error="boom") for n in range(REPORT_PROBLEMS + 2)]
    lines = report.render().splitlines()
    assert len([line for line in lines if line.startswith("  failed: ")]) == REPORT_PROBLEMS
    assert lines[-1] == "  ... and 2 more (see the log)"


# --------------------------------------------------------------------------- state failures


def test_state_writes_refused_for_a_while_never_stop_the_run(lake: Lake) -> None:
    """A write failure that is not a transient one (any StoreError): queued, retried."""
    lake.compact.fail("put_bytes", STATE_KEY, StoreError("put _state.json: refused"), times=3)
    report = lake.job(StateStore(lake.compact, flush_every=1)).run()  # every record flushes
    assert report.count(Status.SUCCESS) == 6 and report.ok and report.state_error is None
    assert set(lake.statuses().values()) == {"success"} and len(lake.statuses()) == 6
    assert lake.state_doc()["last_compacted_date"] == DAYS[-1]


def test_state_writes_refused_to_the_end_are_reported(lake: Lake) -> None:
    lake.compact.fail("put_bytes", STATE_KEY, StoreError("put _state.json: refused"))
    report = lake.job(StateStore(lake.compact, flush_every=1)).run()
    assert report.count(Status.SUCCESS) == 6 and len(lake.published()) == 6
    assert not report.ok and report.state_error == "put _state.json: refused"
    assert report.render().splitlines()[-1] == "  state not saved: put _state.json: refused"
    assert lake.state_doc()["partitions"] == {}

    lake.compact.clear()  # the next run finds the outputs and rebuilds the state from them
    again = lake.job().run()
    assert again.count(Status.UP_TO_DATE) == 6 and again.ok
    assert set(lake.statuses().values()) == {"success"}
    assert lake.state_doc()["last_compacted_date"] == DAYS[-1]


def test_a_state_made_malformed_mid_run_is_reported_and_never_overwritten(lake: Lake) -> None:
    state = StateStore(lake.compact, flush_every=1)
    job = lake.job(state)  # plans with the valid state loaded
    lake.compact.put_bytes(STATE_KEY, b"{ half a state")  # someone else's bad write

    report = job.run()

    assert report.count(Status.SUCCESS) == 6 and len(lake.published()) == 6
    assert not report.ok and "malformed state" in (report.state_error or "")
    assert lake.compact.get_bytes(STATE_KEY)[0] == b"{ half a state"


@pytest.mark.parametrize("error", [StoreConfigError("get: AccessDenied (HTTP 403)"),
                                   KeyboardInterrupt()], ids=["unusable store", "interrupt"])
def test_a_run_that_ends_early_still_saves_what_it_did(lake: Lake, error: BaseException) -> None:
    first, second = lake.pids[DAYS[0]]
    lake.raw.fail("get_file", second.prefix, error)
    job = lake.job()  # default batching: nothing is written before the end of the day

    with pytest.raises(type(error)):
        job.run()

    statuses = lake.statuses()
    assert statuses == {first.state_key: "success", second.state_key: "in_progress"}
    assert lake.state_doc()["last_compacted_date"] == BEFORE
    assert list(lake.compact.list_objects(LOCKS_PREFIX)) == []


def test_workers_give_the_same_bytes_as_one_worker(lake: Lake, tmp_path: Path) -> None:
    one = lake.job(workers=1).run()
    first = {key: lake.compact.get_bytes(f"{PartitionId(*key.split('/')).data_key}")[0]
             for key in lake.statuses()}
    for pids in lake.pids.values():
        for pid in pids:
            lake.compact.delete(pid.meta_key)
    many = lake.job(workers=4).run()
    assert one.ok and many.ok and many.count(Status.SUCCESS) == 6
    again = {key: lake.compact.get_bytes(f"{PartitionId(*key.split('/')).data_key}")[0]
             for key in lake.statuses()}
    assert again == first
