"""The README's promises under real timing: paused writers, late and missing days,
outputs changed behind a run's back, unreadable objects.

Each interleaving is played exactly, in one process, on both stores (the compact
store is the `store` fixture: LocalStore, then S3Store on a moto server over HTTP).
A "pause" is a run whose fence check passed and that then does nothing while the
other run works: here the paused run's fence callback plays the other run to its
end before returning. Real SIGSTOPped processes are in bench/chaos/ (and its
five trials in tests/test_chaos.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from compressor.demo import PartitionSpec
from compressor.discovery import Partition, list_day, list_partition
from compressor.job import Job, Status
from compressor.lease import LeaseManager
from compressor.meta import Published, read_published
from compressor.partition.compact import CompactSettings, compact_partition
from compressor.partition.publish import PublishConflict
from compressor.planning import Action, Mode, PlanOptions, Reason, build_plan
from compressor.state import PartitionState, StateStore
from compressor.storage import LocalStore, Store
from compressor.storage.base import ObjectUnreadable
from compressor.text import utc_iso
from tests.conftest import FlakyLocalStore, put_partition

DAY = "20261123"
TODAY = date(2026, 11, 25)


def _spec(**kw: Any) -> PartitionSpec:
    base: dict[str, Any] = {"exchange": "okx", "stream": "bbo", "symbol": "btcusdt",
                            "date": DAY, "files": 4, "rows_per_file": 120}
    base.update(kw)
    return PartitionSpec(**base)


@pytest.fixture
def raw(tmp_path: Path) -> LocalStore:
    (tmp_path / "raw").mkdir()
    return LocalStore(tmp_path / "raw")


@pytest.fixture
def settings(tmp_path: Path) -> CompactSettings:
    return CompactSettings(tmp_root=tmp_path / "work", download_workers=2)


def _add_late_file(raw: Store, part: Partition) -> Partition:
    """A late raw file lands (a copy of the first one under a later name)."""
    late = part.pid.prefix + "part-9999999999-000001.parquet"
    raw.put_bytes(late, raw.get_bytes(part.files[0].key)[0])
    return list_partition(raw, part.pid)


def _whole_pair_of(compact: Store, part: Partition) -> Published:
    now = read_published(compact, part.pid)
    assert now.mismatch() is None, now.mismatch()
    assert now.current_for(part.fingerprint), "the published pair is not from this listing"
    return now


def _pausing_fence(at_call: int, pause: Callable[[], None]) -> Callable[[], None]:
    """A fence that passes, and on its `at_call`-th call 'pauses': runs `pause` first."""
    calls = [0]

    def fence() -> None:
        calls[0] += 1
        if calls[0] == at_call:
            pause()

    return fence


# ------------------------------------------------------------------ paused writers


@pytest.mark.parametrize("republish", [False, True], ids=["first-publish", "overwrite"])
def test_a_writer_paused_before_meta_json_cannot_put_it_over_a_newer_pair(
    raw: LocalStore, store: Store, settings: CompactSettings, tmp_path: Path, republish: bool
) -> None:
    put_partition(raw, _spec(), tmp_path)
    old = list_partition(raw, _spec().partition)
    if republish:
        compact_partition(old, raw, store, settings)
    newer: list[Partition] = []

    def other_run_takes_over() -> None:  # A's lease expired; B publishes a late file
        newer.append(_add_late_file(raw, old))
        compact_partition(newer[0], raw, store, settings)

    fence = _pausing_fence(3 if republish else 2, other_run_takes_over)  # before meta.json
    with pytest.raises(PublishConflict):
        compact_partition(old, raw, store, settings, fence=fence)
    now = _whole_pair_of(store, newer[0])
    assert now.meta is not None and now.meta.source_files == old.file_count + 1


def test_a_writer_paused_before_its_upload_cannot_overwrite_a_newer_data_parquet(
    raw: LocalStore, store: Store, settings: CompactSettings, tmp_path: Path
) -> None:
    put_partition(raw, _spec(), tmp_path)
    old = list_partition(raw, _spec().partition)
    compact_partition(old, raw, store, settings)
    newer: list[Partition] = []

    def other_run_takes_over() -> None:
        newer.append(_add_late_file(raw, old))
        compact_partition(newer[0], raw, store, settings)

    fence = _pausing_fence(2, other_run_takes_over)  # after its delete, before its upload
    with pytest.raises(PublishConflict):
        compact_partition(old, raw, store, settings, fence=fence)
    _whole_pair_of(store, newer[0])


def test_a_meta_json_put_by_a_writer_that_lost_its_lease_is_replaced_by_the_holder(
    raw: LocalStore, store: Store, settings: CompactSettings, tmp_path: Path
) -> None:
    """A uploads data.parquet and pauses before meta.json; B takes over and uploads its
    data.parquet; A wakes up and puts its meta.json (nothing is there to stop it); B's
    meta.json put then finds A's, which names another data.parquet, and replaces it."""
    put_partition(raw, _spec(), tmp_path)
    old = list_partition(raw, _spec().partition)
    paused_a: list[bytes] = []

    def capture_a() -> None:  # A's last fence: keep what A would put, and stop A here
        raise _Paused()

    with pytest.raises(_Paused):
        compact_partition(old, raw, store, settings, fence=_pausing_fence(2, capture_a))
    a_data = store.head(old.pid.data_key)
    assert a_data is not None and store.head(old.pid.meta_key) is None
    newer = _add_late_file(raw, old)

    def a_wakes_up_and_puts_its_meta() -> None:
        fake = read_published(store, old.pid)
        assert fake.meta is None
        doc = {"schema_version": 1, "rows": 1, "ts_event_min": 1, "ts_event_max": 1,
               "ordering_columns": ["ts_event", "seq"], "sha256": "0" * 64,
               "size_bytes": a_data.size, "source_files": old.file_count,
               "source_fingerprint": old.fingerprint, "stream_type": "bbo",
               "data_etag": a_data.etag}
        paused_a.append(json.dumps(doc).encode())
        store.put_bytes(old.pid.meta_key, paused_a[0], if_none_match=True)

    compact_partition(newer, raw, store, settings,
                      fence=_pausing_fence(2, a_wakes_up_and_puts_its_meta))
    assert paused_a, "A's meta.json was put"
    _whole_pair_of(store, newer)


class _Paused(Exception):
    pass


def test_planning_and_the_job_repair_a_pair_that_is_not_whole(
    raw: LocalStore, store: Store, settings: CompactSettings, tmp_path: Path
) -> None:
    put_partition(raw, _spec(), tmp_path)
    part = list_partition(raw, _spec().partition)
    compact_partition(part, raw, store, settings)
    store.put_bytes(part.pid.data_key, b"someone else's bytes")  # behind the job's back
    state = StateStore(store)
    options = PlanOptions(mode=Mode.BACKFILL, today=TODAY,
                          backfill=(date(2026, 11, 23), date(2026, 11, 23)))
    plan = build_plan(raw, store, state, options)
    (planned,) = plan.partitions
    assert (planned.action, planned.reason) == (Action.COMPACT, Reason.MISMATCHED)
    report = Job(plan, raw, store, state, settings, LeaseManager(store, auto_renew=False)).run()
    assert [o.status for o in report.outcomes] == [Status.SUCCESS]
    _whole_pair_of(store, part)


# ------------------------------------------------------------------ readiness against the truth


def _catch_up(raw: Store, compact: Store, state: StateStore, settings: CompactSettings,
              today: date = TODAY, **kw: Any) -> Job:
    plan = build_plan(raw, compact, state, PlanOptions(mode=Mode.CATCH_UP, today=today, **kw))
    return Job(plan, raw, compact, state, settings, LeaseManager(compact, auto_renew=False))


def test_an_output_removed_after_planning_is_compacted_again_not_counted_done(
    raw: LocalStore, store: Store, settings: CompactSettings, tmp_path: Path
) -> None:
    """A catch-up plans P up to date; a hand-run --overwrite backfill then deletes P's
    meta.json, records a newer failed attempt and dies. The catch-up must not declare
    the day ready over an invisible partition."""
    put_partition(raw, _spec(), tmp_path)
    part = list_partition(raw, _spec().partition)
    compact_partition(part, raw, store, settings)
    state = StateStore(store)
    state.advance_last_compacted("20261122")
    state.flush()
    job = _catch_up(raw, store, state, settings)
    (planned,) = job.plan.partitions
    assert planned.reason is Reason.UP_TO_DATE
    # the backfill, between the catch-up's plan and its execution:
    store.delete(part.pid.meta_key)
    other = StateStore(store)
    other.record(part.pid, PartitionState.failure(
        status="failed", error="interrupted", started_at=utc_iso(time.time())))
    other.flush()
    report = job.run()
    # re-read, found gone, leased and compacted again; the day is whole again
    assert [o.status for o in report.outcomes] == [Status.SUCCESS]
    _whole_pair_of(store, part)
    assert report.last_compacted_after == DAY


def test_a_day_is_not_ready_while_a_newer_attempt_says_failed(
    raw: LocalStore, store: Store, settings: CompactSettings, tmp_path: Path
) -> None:
    put_partition(raw, _spec(), tmp_path)
    part = list_partition(raw, _spec().partition)
    compact_partition(part, raw, store, settings)
    state = StateStore(store)
    state.advance_last_compacted("20261122")
    state.flush()
    job = _catch_up(raw, store, state, settings)
    other = StateStore(store)  # an attempt that started after this run's and failed
    other.record(part.pid, PartitionState.failure(
        status="failed", error="interrupted", started_at=utc_iso(9e9)))
    other.flush()
    report = job.run()
    assert [o.status for o in report.outcomes] == [Status.UP_TO_DATE]
    assert report.last_compacted_after == "20261122"  # the state says failed: not ready
    assert json.loads(store.get_bytes("compacted/_state.json")[0])[
        "last_compacted_date"] == "20261122"


def _gap_lake(raw: LocalStore, tmp_path: Path) -> tuple[LocalStore, StateStore]:
    """Raw data for 1102 and 1104 only (1103 missing), ready up to 1101."""
    (tmp_path / "compact").mkdir()
    compact = LocalStore(tmp_path / "compact")
    for day in ("20261102", "20261104"):
        put_partition(raw, _spec(date=day), tmp_path)
    state = StateStore(compact)
    state.advance_last_compacted("20261101")
    state.flush()
    return compact, state


def test_a_late_day_is_compacted_and_empty_days_wait_for_their_grace(
    raw: LocalStore, tmp_path: Path, settings: CompactSettings
) -> None:
    compact, state = _gap_lake(raw, tmp_path)
    first = _catch_up(raw, compact, state, settings, today=date(2026, 11, 5)).run()
    assert first.plan.days == ["20261102", "20261104"]
    assert first.last_compacted_after == "20261102"  # 1103 is empty and within its grace
    put_partition(raw, _spec(date="20261103"), tmp_path)  # uploaded late
    data = {day: compact.head(_spec(date=day).partition.data_key) for day in ("20261102",
                                                                            "20261104")}
    second = _catch_up(raw, compact, state, settings, today=date(2026, 11, 5)).run()
    # 1102 and 1104 again too: their midnights with 1103 now move rows (docs/guarantees.md
    # "Rows belong to their event day"); none crosses them here, so the same bytes
    assert [o.pid.date for o in second.outcomes if o.status is Status.SUCCESS] == [
        "20261102", "20261103", "20261104"]
    assert all(compact.head(info.key).etag == info.etag  # type: ignore[union-attr]
               for info in data.values() if info is not None)
    assert second.last_compacted_after == "20261104"


def test_an_empty_day_counts_once_its_grace_has_passed(
    raw: LocalStore, tmp_path: Path, settings: CompactSettings
) -> None:
    compact, state = _gap_lake(raw, tmp_path)
    report = _catch_up(raw, compact, state, settings, today=date(2026, 11, 7)).run()
    assert report.plan.empty_days == {"20261103": True, "20261105": False, "20261106": False}
    assert report.last_compacted_after == "20261104"
    assert "empty   20261103" in report.plan.render()


def test_a_late_file_on_a_ready_day_is_seen_by_the_lookback(
    raw: LocalStore, store: Store, settings: CompactSettings, tmp_path: Path
) -> None:
    put_partition(raw, _spec(), tmp_path)
    part = list_partition(raw, _spec().partition)
    compact_partition(part, raw, store, settings)
    state = StateStore(store)
    state.advance_last_compacted(DAY)
    state.flush()
    newer = _add_late_file(raw, part)
    report = _catch_up(raw, store, state, settings).run()
    assert [(o.pid.date, o.status) for o in report.outcomes] == [(DAY, Status.SUCCESS)]
    _whole_pair_of(store, newer)
    assert _catch_up(raw, store, state, settings, lookback_days=0).plan.days == []


def test_a_failed_partition_on_a_ready_day_is_retried_by_the_next_catch_up(
    raw: LocalStore, tmp_path: Path, settings: CompactSettings
) -> None:
    (tmp_path / "compact").mkdir()
    compact = LocalStore(tmp_path / "compact")
    put_partition(raw, _spec(date="20261110"), tmp_path)
    state = StateStore(compact)
    state.advance_last_compacted("20261120")  # ten days later: far outside the lookback
    state.record(_spec(date="20261110").partition, PartitionState.failure(
        status="failed", error="killed --overwrite backfill", started_at=utc_iso(1.7e9)))
    state.flush()
    report = _catch_up(raw, compact, state, settings).run()
    assert [(o.pid.date, o.status) for o in report.outcomes] == [("20261110", Status.SUCCESS)]
    assert StateStore(compact).get(_spec(date="20261110").partition).status == "success"


# ------------------------------------------------------------------ one unreadable object


def test_one_unreadable_raw_object_fails_its_partition_and_the_run_goes_on(
    tmp_path: Path, settings: CompactSettings
) -> None:
    for name in ("raw", "compact"):
        (tmp_path / name).mkdir()
    raw = FlakyLocalStore(tmp_path / "raw")
    compact = LocalStore(tmp_path / "compact")
    bad, good = _spec(symbol="ethusdt"), _spec()
    bad_keys = put_partition(raw, bad, tmp_path)
    put_partition(raw, good, tmp_path)
    raw.fail("get_file", bad_keys[1], ObjectUnreadable(
        f"get s3://quantlab-raw/{bad_keys[1]}: AccessDenied (HTTP 403)"))
    state = StateStore(compact)
    state.advance_last_compacted("20261122")
    state.flush()
    report = _catch_up(raw, compact, state, settings).run()
    by_pid = {o.pid: o for o in report.outcomes}
    assert by_pid[good.partition].status is Status.SUCCESS
    failed = by_pid[bad.partition]
    assert failed.status is Status.FAILED and failed.failed_key == bad_keys[1]
    assert bad_keys[1] in (failed.error or "")
    assert report.last_compacted_after == "20261122"


def test_a_partition_that_cannot_be_listed_is_recorded_failed_and_the_plan_goes_on(
    tmp_path: Path, settings: CompactSettings
) -> None:
    from compressor.storage.base import TransientStoreError

    for name in ("raw", "compact"):
        (tmp_path / name).mkdir()
    raw = FlakyLocalStore(tmp_path / "raw")
    compact = LocalStore(tmp_path / "compact")
    bad, good = _spec(symbol="ethusdt"), _spec()
    put_partition(raw, bad, tmp_path)
    put_partition(raw, good, tmp_path)
    raw.fail("list_objects", bad.partition.prefix, TransientStoreError("list: SlowDown"))
    state = StateStore(compact)
    job = _catch_up(raw, compact, state, settings, today=date(2026, 11, 24))
    actions = {p.pid: p.action for p in job.plan.partitions}
    assert actions == {bad.partition: Action.FAIL, good.partition: Action.COMPACT}
    report = job.run()
    assert {o.pid: o.status for o in report.outcomes} == {
        bad.partition: Status.FAILED, good.partition: Status.SUCCESS}
    entry = StateStore(compact).get(bad.partition)
    assert entry is not None and entry.status == "failed" and "SlowDown" in (entry.error or "")


# ------------------------------------------------------------------ skewed clocks


@pytest.fixture
def s3_store(moto_server: str, s3_bucket: str) -> Store:
    from tests.conftest import make_s3_store

    return make_s3_store(moto_server, s3_bucket, max_attempts=3)


def test_hosts_minutes_apart_never_steal_each_others_live_lease(s3_store: Store) -> None:
    """Host A 5 min behind, host B 6 min ahead: within the 15 min the S3 check allows.
    Judged on each host's clock, B sees A's fresh lease 11 min old and takes it; on the
    store's clock both agree within a second or two."""
    from compressor.clock import StoreClock
    from compressor.lease import LeaseOwner

    pid = _spec().partition
    behind, ahead = (lambda: time.time() - 300), (lambda: time.time() + 360)
    clock_a = StoreClock.measure(s3_store, behind)
    clock_b = StoreClock.measure(s3_store, ahead)
    a = LeaseManager(s3_store, owner=LeaseOwner("host-a", 1, "run-a"), clock=clock_a,
                     auto_renew=False)
    b = LeaseManager(s3_store, owner=LeaseOwner("host-b", 1, "run-b"), clock=clock_b,
                     auto_renew=False)
    lease = a.acquire(pid)
    assert lease is not None
    assert b.acquire(pid) is None  # A's lease is live on the store's clock
    lease.check_held()
    # the same two hosts on their own clocks: the bug this guards against
    other = _spec(symbol="ethusdt").partition
    naive_a = LeaseManager(s3_store, owner=LeaseOwner("host-a", 2, "run-c"), clock=behind,
                           auto_renew=False)
    naive_b = LeaseManager(s3_store, owner=LeaseOwner("host-b", 2, "run-d"), clock=ahead,
                           auto_renew=False)
    assert naive_a.acquire(other) is not None
    assert naive_b.acquire(other) is not None  # stolen at once


def test_attempts_are_stamped_on_the_store_clock(
    raw: LocalStore, s3_store: Store, settings: CompactSettings, tmp_path: Path
) -> None:
    from compressor.clock import StoreClock
    from compressor.text import parse_utc_iso

    put_partition(raw, _spec(), tmp_path)
    clock = StoreClock.measure(s3_store, lambda: time.time() - 600)  # a host 10 min behind
    state = StateStore(s3_store, clock=clock)
    plan = build_plan(raw, s3_store, state,
                      PlanOptions(mode=Mode.CATCH_UP, today=date(2026, 11, 24)))
    Job(plan, raw, s3_store, state, settings, LeaseManager(s3_store, auto_renew=False),
        clock=clock).run()
    entry = StateStore(s3_store).get(_spec().partition)
    assert entry is not None and entry.status == "success"
    assert abs(parse_utc_iso(entry.attempt_started_at) - time.time()) < 10


# ------------------------------------------------------------------ review findings


class _StateAtDelete(LocalStore):
    """A LocalStore that notes the stored state entry of a partition when its meta.json
    is deleted: what a run killed right after that delete would leave behind."""

    def __init__(self, root: Path, watched: str) -> None:
        super().__init__(root)
        self.watched = watched
        self.seen: list[str | None] = []

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        if key.endswith("/meta.json"):
            entry = StateStore(LocalStore(self.root)).get(self.watched)
            self.seen.append(entry.status if entry else None)
        super().delete(key, if_match=if_match)


def test_an_attempt_is_saved_before_it_removes_a_published_output(
    raw: LocalStore, tmp_path: Path, settings: CompactSettings
) -> None:
    """An --overwrite on a ready day far behind the lookback, killed right after its
    meta.json delete, must leave an entry the next catch-up retries (not `success`)."""
    (tmp_path / "compact").mkdir()
    spec = _spec(date="20261110")
    put_partition(raw, spec, tmp_path)
    part = list_partition(raw, spec.partition)
    compact = _StateAtDelete(tmp_path / "compact", spec.partition.state_key)
    state = StateStore(compact)
    Job(build_plan(raw, compact, state, PlanOptions(
        mode=Mode.BACKFILL, today=TODAY, backfill=(date(2026, 11, 10), date(2026, 11, 10)))),
        raw, compact, state, settings, LeaseManager(compact, auto_renew=False)).run()
    state.advance_last_compacted("20261124")
    state.flush()
    overwrite = PlanOptions(mode=Mode.BACKFILL, today=TODAY, overwrite=True,
                            backfill=(date(2026, 11, 10), date(2026, 11, 10)))
    Job(build_plan(raw, compact, state, overwrite), raw, compact, state, settings,
        LeaseManager(compact, auto_renew=False)).run()
    assert compact.seen == ["in_progress"]
    _whole_pair_of(compact, part)


def test_a_run_without_the_lease_never_stamps_success_over_a_live_attempt(
    raw: LocalStore, store: Store, settings: CompactSettings, tmp_path: Path
) -> None:
    from compressor.lease import LeaseOwner

    put_partition(raw, _spec(), tmp_path)
    part = list_partition(raw, _spec().partition)
    compact_partition(part, raw, store, settings)
    state = StateStore(store)
    state.advance_last_compacted("20261124")
    state.record(part.pid, PartitionState.failure(
        status="failed", error="reset", started_at=utc_iso(time.time() - 60)))
    state.flush()
    holder = LeaseManager(store, owner=LeaseOwner("elsewhere", 1, "backfill"),
                          auto_renew=False)
    assert holder.acquire(part.pid) is not None  # a backfill is working on it
    plan = build_plan(raw, store, state, PlanOptions(mode=Mode.CATCH_UP, today=TODAY))
    (planned,) = plan.partitions
    assert planned.reason is Reason.UP_TO_DATE
    report = Job(plan, raw, store, state, settings, LeaseManager(store, auto_renew=False),
                 busy_wait_s=0).run()
    assert [o.status for o in report.outcomes] == [Status.BUSY]
    entry = StateStore(store).get(part.pid)
    assert entry is not None and entry.status == "failed"


def test_a_late_delete_of_the_same_meta_json_by_a_run_that_lost_its_lease_is_harmless(
    raw: LocalStore, store: Store, settings: CompactSettings, tmp_path: Path
) -> None:
    """A's If-Match delete of meta.json is held in flight past its lease; B takes over
    and reads the same pair; A's delete lands; B's own delete then finds meta.json gone
    with data.parquet unchanged: B goes on and publishes (bench/chaos/ trial)."""
    put_partition(raw, _spec(), tmp_path)
    part = list_partition(raw, _spec().partition)
    compact_partition(part, raw, store, settings)
    newer = _add_late_file(raw, part)
    base = read_published(store, part.pid)
    assert base.meta_etag is not None
    store.delete(part.pid.meta_key, if_match=base.meta_etag)  # A's late delete lands
    compact_partition(newer, raw, store, settings, base=base)  # B, with what it read
    _whole_pair_of(store, newer)


def test_a_clock_offset_within_the_measurement_noise_is_taken_as_none(tmp_path: Path) -> None:
    """Two runs on one host must stamp on the same clock: a Date header measured to
    within a second is noise, not skew (bench/chaos/: a dead run's in_progress stamp
    outranked its successor's success by a measurement error)."""
    from compressor.clock import StoreClock

    class Offset(LocalStore):
        def __init__(self, root: Path, offset: float) -> None:
            super().__init__(root)
            self.offset = offset

        def clock_offset(self, host_clock: Callable[[], float] = time.time) -> float:
            return self.offset

    assert StoreClock.measure(Offset(tmp_path, 0.9)).offset == 0.0
    assert StoreClock.measure(Offset(tmp_path, -1.5)).offset == 0.0
    assert StoreClock.measure(Offset(tmp_path, 300.4)).offset == 300.4


# ------------------------------------------------------------------ cleanup during a catch-up


class _HookedRaw(LocalStore):
    """A raw store that runs `hook` once, as a run starts fetching its `at`-th partition."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.at = 0
        self.hook: Callable[[], None] = lambda: None

    def data_reader(self) -> Any:
        self.at -= 1
        if self.at == 0:
            self.hook()
        return super().data_reader()


def _lcd_of(store: Store) -> str | None:
    doc = json.loads(store.get_bytes("compacted/_state.json")[0])
    return doc["last_compacted_date"]


def test_a_cleanup_during_a_catch_up_holds_the_watermark_before_the_cleaned_day(
    store: Store, settings: CompactSettings, tmp_path: Path
) -> None:
    """A catch-up over 1120..1122 confirms 1120 and 1121 and writes the watermark; a
    `--mode cleanup --apply` of 1120 lands while the run works on 1122. The run's last
    write must not move the watermark over 1120 again (it has no outputs and no state
    entry any more); the next catch-up compacts 1120 again."""
    from compressor.cleanup import CleanupPlan
    from compressor.cleanup import execute as cleanup

    (tmp_path / "hooked").mkdir()
    raw = _HookedRaw(tmp_path / "hooked")
    days = ["20261120", "20261121", "20261122"]
    for day in days:
        put_partition(raw, _spec(date=day), tmp_path)
    state = StateStore(store)
    state.advance_last_compacted("20261119")
    state.flush()
    job = _catch_up(raw, store, state, settings)
    assert job.plan.days == days
    first = _spec(date=days[0]).partition

    def cleanup_of_the_first_day() -> None:
        deadline = time.monotonic() + 60
        while _lcd_of(store) != days[1]:  # the run has vouched for 1120 and 1121
            assert time.monotonic() < deadline, "the run never wrote 20261121"
            time.sleep(0.01)
        other = StateStore(store)
        other.load()
        plan = CleanupPlan([first], other.last_compacted_date)
        done = cleanup(plan, store, other, LeaseManager(store, auto_renew=False))
        assert done.removed == [first] and done.last_compacted_date == "20261119"

    # as the run starts on 1122: data readers for 1120's fetch, 1121's neighbour footers
    # (1120's last file, flushed at midnight) and fetch, then 1122's neighbour footers
    raw.at, raw.hook = 4, cleanup_of_the_first_day
    report = job.run()
    assert raw.at <= 0, "the hook ran"
    assert read_published(store, first).meta is None
    assert _lcd_of(store) == "20261119"  # not 20261122: 1120 is not compacted
    assert report.last_compacted_after == "20261119"
    again = _catch_up(raw, store, state, settings).run()
    assert [(o.pid.date, o.status) for o in again.outcomes] == [
        (days[0], Status.SUCCESS), (days[1], Status.UP_TO_DATE), (days[2], Status.UP_TO_DATE)]
    assert _lcd_of(store) == days[2]
    # the pair is current for the day's listing with its neighbour files near midnight
    _whole_pair_of(store, list_day(raw, first, state.event_day_from, datetime.now(UTC)))
