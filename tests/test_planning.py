"""Planning: days per mode, readiness candidates, and the compact/skip decision."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compressor.demo import PartitionSpec
from compressor.discovery import Filters, Partition, list_day
from compressor.eventday import DAY_RULE
from compressor.job import Job
from compressor.labels import RULES_VERSION
from compressor.layout import PartitionId, format_day
from compressor.lease import LeaseManager
from compressor.meta import Meta, Published
from compressor.partition.compact import CompactSettings
from compressor.planning import (
    DEFAULT_EMPTY_DAY_GRACE,
    DONE_SKIPS,
    Action,
    Days,
    Mode,
    Plan,
    PlanOptions,
    Reason,
    build_plan,
    check_dates,
    decide,
    empty_day_ready,
    plan_days,
)
from compressor.state import PartitionState, StateStore, ready_date
from compressor.storage import LocalStore, Store
from compressor.storage.base import ObjectInfo
from compressor.text import utc_iso
from tests.conftest import put_partition, store_listing

TODAY = date(2026, 11, 25)
PID = PartitionId("binance", "trade", "btcusdt", "20261123")
FILES = (ObjectInfo(PID.prefix + "part-1-000001.parquet", 10, "a"),
         ObjectInfo(PID.prefix + "part-2-000002.parquet", 12, "b"))
PART = Partition(PID, FILES)
NOW = utc_iso(1_795_500_000)


# --------------------------------------------------------------------------- days


def test_daily_is_yesterday_and_only_moves_readiness_over_the_pending_days() -> None:
    days = plan_days(Mode.DAILY, TODAY, "20261121", ["20261122", "20261123", "20261124"])
    assert days == Days(["20261124"], ["20261122", "20261123", "20261124"], {})


def test_catch_up_covers_pending_raw_days_the_lookback_and_marks_empty_days() -> None:
    raw = ["20261117", "20261119", "20261120", "20261122", "20261124", "20261125"]
    days = plan_days(Mode.CATCH_UP, TODAY, "20261120", raw)
    # pending raw days 22 and 24, the lookback (18..20) for late files; 17 is too old
    assert days.run == ["20261119", "20261120", "20261122", "20261124"]
    assert days.ready == ["20261121", "20261122", "20261123", "20261124"]
    # 21 ended 4 days ago and later days have data; 23 is still within its grace
    assert days.empty == {"20261121": True, "20261123": False}
    assert plan_days(Mode.CATCH_UP, TODAY, "20261120", raw, lookback_days=0).run == [
        "20261122", "20261124"]


def test_catch_up_retries_days_at_or_before_the_watermark_with_unfinished_partitions() -> None:
    raw = ["20261101", "20261110", "20261122"]
    days = plan_days(Mode.CATCH_UP, TODAY, "20261122", raw,
                     retry_days=["20261101", "20261105", "20261123"])
    # 1105 has no raw data any more; 1123 is after the watermark (pending anyway)
    assert days.run == ["20261101", "20261122"]


def test_daily_and_catch_up_cover_days_labelled_by_other_rules() -> None:
    raw = ["20261101", "20261110", "20261122", "20261124", "20261125"]
    relabel = ["20261101", "20261105", "20261125"]  # 1105: no raw; 1125: today
    days = plan_days(Mode.DAILY, TODAY, "20261122", raw, relabel_days=relabel)
    assert days.run == ["20261101", "20261124"] and days.ready == ["20261123", "20261124"]
    days = plan_days(Mode.CATCH_UP, TODAY, "20261122", raw, lookback_days=0,
                     relabel_days=relabel)
    assert days.run == ["20261101", "20261124"]
    rng = (date(2026, 11, 24), date(2026, 11, 24))
    assert plan_days(Mode.BACKFILL, TODAY, "20261122", raw, rng,
                     relabel_days=relabel).run == ["20261124"]


def test_empty_days_wait_for_their_grace_and_for_later_data() -> None:
    assert not empty_day_ready("20261123", TODAY, ["20261124"], grace_days=2)
    assert empty_day_ready("20261122", TODAY, ["20261124"], grace_days=2)
    assert not empty_day_ready("20261122", TODAY, ["20261121"], grace_days=2)  # collector quiet
    assert empty_day_ready("20261124", TODAY, ["20261125"], grace_days=0)


def test_catch_up_without_state_is_yesterday_only() -> None:
    days = plan_days(Mode.CATCH_UP, TODAY, None, ["20261101", "20261123", "20261124"])
    assert days == Days(["20261124"], ["20261124"], {})


def test_a_fresh_start_never_vouches_for_a_day_without_raw_data() -> None:
    assert plan_days(Mode.CATCH_UP, TODAY, None, ["20261101", "20261123"]) == Days([], [], {})
    assert plan_days(Mode.DAILY, TODAY, None, ["20261123"]) == Days(["20261124"], [], {})


def test_backfill_is_the_inclusive_range_and_never_moves_readiness() -> None:
    rng = check_dates(Mode.BACKFILL, TODAY, "20261120", "20261122")
    days = plan_days(Mode.BACKFILL, TODAY, "20261101", [], rng)
    assert days == Days(["20261120", "20261121", "20261122"], [], {})
    one = check_dates(Mode.BACKFILL, TODAY, "20261124", None)
    assert plan_days(Mode.BACKFILL, TODAY, None, [], one).run == ["20261124"]


@pytest.mark.parametrize(
    ("mode", "date_from", "date_to", "needle"),
    [
        (Mode.CLEANUP, None, None, "--date-from"),
        (Mode.BACKFILL, None, "20261120", "--date-to needs --date-from"),
        (Mode.BACKFILL, "2026-11-20", None, "--date-from"),
        (Mode.BACKFILL, "20261120", "20261340", "--date-to"),
        (Mode.BACKFILL, "20261122", "20261120", "before"),
        (Mode.BACKFILL, "20261125", None, "today or in the future"),
        (Mode.BACKFILL, "20261120", "20261126", "today or in the future"),
        (Mode.DAILY, "20261120", None, "cleanup and verify only"),
        (Mode.CATCH_UP, None, "20261120", "cleanup and verify only"),
    ],
)
def test_bad_date_flags_are_rejected_naming_the_flag(
    mode: Mode, date_from: str | None, date_to: str | None, needle: str
) -> None:
    with pytest.raises(ValueError, match=needle):
        check_dates(mode, TODAY, date_from, date_to)


days_st = st.integers(min_value=0, max_value=60).map(
    lambda n: format_day(date(2026, 10, 1) + timedelta(days=n))
)


@given(
    raw=st.lists(days_st, max_size=30),
    last=st.one_of(st.none(), days_st),
    today_offset=st.integers(min_value=0, max_value=70),
    done=st.lists(st.booleans(), min_size=71, max_size=71),
)
def test_readiness_never_passes_a_day_not_done(
    raw: list[str], last: str | None, today_offset: int, done: list[bool]
) -> None:
    today = date(2026, 10, 1) + timedelta(days=today_offset)
    days = plan_days(Mode.CATCH_UP, today, last, raw)
    assert days.run == sorted(set(days.run)) and set(days.run) <= set(raw)
    assert all(d < format_day(today) for d in days.run + days.ready)
    assert set(days.empty) == {d for d in days.ready if d not in raw}
    assert all(d in days.run for d in days.ready if d in raw)
    outcome = {d: days.empty.get(d, done[n]) for n, d in enumerate(days.ready)}
    new = ready_date(last, [(d, outcome[d]) for d in days.ready])
    if new is not None and new != last:
        assert all(outcome[d] for d in days.ready if d <= new)
        assert all(d in raw or empty_day_ready(d, today, raw, DEFAULT_EMPTY_DAY_GRACE)
                   for d in days.ready if d <= new)
        assert new < format_day(today)
    assert new is None or last is None or new >= last


# --------------------------------------------------------------------------- decisions


def _meta(fingerprint: str, files: int = 2, etag: str | None = "d1",
          rules: str | None = RULES_VERSION) -> Meta:
    return Meta(rows=5, ts_event_min=1, ts_event_max=2, sha256="0" * 64, size_bytes=9,
                source_files=files, source_fingerprint=fingerprint, stream_type="trade",
                data_etag=etag,
                extra={} if rules is None else {"post_filter_version": rules})


def _published(fingerprint: str, files: int = 2, etag: str | None = "d1",
               data_etag: str | None = "d1", rules: str | None = RULES_VERSION) -> Published:
    data = ObjectInfo(PID.data_key, 9, data_etag) if data_etag else None
    return Published(_meta(fingerprint, files, etag, rules), "m1", data)


NOTHING = Published()


def _quarantined(key: str | None) -> PartitionState:
    return PartitionState.failure(status="quarantined", error=f"{key}: corrupt",
                                  failed_key=key, started_at=NOW)


def test_decisions() -> None:
    opts = PlanOptions(today=TODAY)
    fp = PART.fingerprint
    assert decide(PART, NOTHING, None, opts).reason is Reason.NEW
    up = decide(PART, _published(fp), None, opts)
    assert (up.action, up.reason) == (Action.SKIP, Reason.UP_TO_DATE)
    changed = decide(PART, _published("old", 1), None, opts)
    assert (changed.action, changed.reason) == (Action.COMPACT, Reason.CHANGED)
    assert "1 files then, 2 now" in changed.describe
    forced = decide(PART, _published(fp), None, PlanOptions(today=TODAY, overwrite=True))
    assert (forced.action, forced.reason) == (Action.COMPACT, Reason.OVERWRITE)
    empty = decide(Partition(PID, ()), NOTHING, None, opts)
    assert (empty.action, empty.reason) == (Action.SKIP, Reason.NO_DATA)
    failed = PartitionState.failure(status="failed", error="reset", started_at=NOW)
    assert decide(PART, NOTHING, failed, opts).action is Action.COMPACT


def test_an_output_labelled_by_other_rules_is_planned_relabel_not_compact() -> None:
    opts = PlanOptions(today=TODAY)
    fp = PART.fingerprint
    for rules, detail in (("1.0.0", "rules 1.0.0 -> "), (None, "rules unknown -> ")):
        p = decide(PART, _published(fp, rules=rules), None, opts)
        assert (p.action, p.reason) == (Action.SKIP, Reason.RELABEL)
        assert p.detail == detail + RULES_VERSION and Reason.RELABEL in DONE_SKIPS
        plan = Plan(Mode.DAILY, "20261125", ["20261124"], [], None, [p])
        line = plan.render().splitlines()[-2]
        assert line.split()[:2] == ["relabel", PID.state_key] and "to compact: 0" in plan.render()
    changed = decide(Partition(PID, FILES[:1]), _published(fp, rules="1.0.0"), None, opts)
    assert changed.action is Action.COMPACT  # new raw files: compacted (and labelled) anew


@pytest.mark.parametrize(("published", "needle"), [
    (_published(PART.fingerprint, data_etag="other"), "but other (9 bytes) is there"),
    (_published(PART.fingerprint, data_etag=None), "visible without its data.parquet"),
    (_published(PART.fingerprint, etag=None), "names no data.parquet ETag"),
    (Published(None, "m1", None, problem="malformed meta.json: rows: missing"), "rows: missing"),
])
def test_a_pair_that_is_not_whole_is_compacted_again_even_with_the_same_listing(
    published: Published, needle: str
) -> None:
    decision = decide(PART, published, None, PlanOptions(today=TODAY))
    assert (decision.action, decision.reason) == (Action.COMPACT, Reason.MISMATCHED)
    assert needle in decision.describe


def test_quarantined_partitions_wait_for_the_operator() -> None:
    opts = PlanOptions(today=TODAY)
    bad = _quarantined(FILES[1].key)
    skip = decide(PART, NOTHING, bad, opts)
    assert (skip.action, skip.reason) == (Action.SKIP, Reason.QUARANTINED)
    assert FILES[1].key in skip.describe
    # even --overwrite does not retry a quarantine by itself
    forced = decide(PART, NOTHING, bad, PlanOptions(today=TODAY, overwrite=True))
    assert forced.action is Action.SKIP
    retry = decide(PART, NOTHING, bad, PlanOptions(today=TODAY, retry_quarantine=True))
    assert (retry.action, retry.reason) == (Action.COMPACT, Reason.RETRY_QUARANTINE)
    gone = decide(PART, NOTHING, _quarantined(PID.prefix + "part-0-000000.parquet"), opts)
    assert (gone.action, gone.reason) == (Action.COMPACT, Reason.QUARANTINE_KEY_GONE)


# --------------------------------------------------------------------------- whole plans


def _stores(tmp_path: Path) -> tuple[LocalStore, LocalStore]:
    (tmp_path / "raw").mkdir()
    (tmp_path / "compact").mkdir()
    return LocalStore(tmp_path / "raw"), LocalStore(tmp_path / "compact")


def test_plan_reads_meta_and_touches_nothing(tmp_path: Path) -> None:
    raw, compact = _stores(tmp_path)
    specs = [PartitionSpec(exchange=ex, stream="trade", date=day, files=2, rows_per_file=10)
             for ex in ("binance", "okx") for day in ("20261123", "20261124")]
    for spec in specs:
        put_partition(raw, spec, tmp_path)
    done = specs[0].partition
    data = compact.put_bytes(done.data_key, b"not parquet, only named by meta.json")
    state = StateStore(compact)
    listed = list_day(raw, done, state.event_day_from, datetime.now(UTC))
    meta = _meta(listed.fingerprint)
    compact.put_bytes(done.meta_key, Meta(**{**meta.__dict__, "size_bytes": 36,
                                             "data_etag": data,
                                             "extra": {**meta.extra, "day_rule": DAY_RULE}
                                             }).to_bytes())
    before = (store_listing(raw), store_listing(compact))
    backfill = (date(2026, 11, 23), date(2026, 11, 24))
    plan = build_plan(raw, compact, state,
                      PlanOptions(mode=Mode.BACKFILL, today=TODAY, backfill=backfill))
    assert (store_listing(raw), store_listing(compact)) == before
    assert plan.days == ["20261123", "20261124"]
    assert [p.pid for p in plan.partitions] == sorted(
        (s.partition for s in specs), key=lambda pid: (pid.date, pid))
    by_pid = {p.pid: p for p in plan.partitions}
    assert by_pid[done].reason is Reason.UP_TO_DATE
    assert len(plan.to_compact) == 3
    text = plan.render()
    assert "to compact: 3" in text and "up to date" in text and "not moved" in text
    assert "binance/trade/btcusdt/20261123" in text


def test_a_filtered_run_never_moves_readiness(tmp_path: Path) -> None:
    raw, compact = _stores(tmp_path)
    put_partition(raw, PartitionSpec(date="20261124", files=1, rows_per_file=5), tmp_path)
    state = StateStore(compact)
    plan = build_plan(raw, compact, state, PlanOptions(
        mode=Mode.CATCH_UP, today=TODAY, filters=Filters.parse("binance", None, None)))
    assert plan.days == ["20261124"] and len(plan.partitions) == 1
    assert plan.ready_days == []
    assert build_plan(raw, compact, state, PlanOptions(today=TODAY)).ready_days == ["20261124"]


def test_a_day_whose_prefixes_hold_only_strays_is_an_empty_day(
    store: Store, tmp_path: Path
) -> None:
    """1123's partition prefix holds only a `.tmp` and a `._*.parquet` object: no raw
    data. It waits for the empty-day grace like a day without any prefix, instead of
    being declared done at once with 0 outputs; on the local store and on S3."""
    (tmp_path / "compact").mkdir()
    compact = LocalStore(tmp_path / "compact")
    for day in ("20261122", "20261124"):
        put_partition(store, PartitionSpec(date=day, files=1, rows_per_file=5), tmp_path)
    stray = PartitionId("binance", "trade", "btcusdt", "20261123")
    store.put_bytes(stray.prefix + "part-1795400000-000001.parquet.tmp", b"half")
    store.put_bytes(stray.prefix + "._part-1795400000-000001.parquet", b"mac")
    state = StateStore(compact)
    state.advance_last_compacted("20261121")
    state.flush()
    plan = build_plan(store, compact, state, PlanOptions(today=TODAY))
    assert plan.days == ["20261122", "20261124"]
    assert plan.empty_days == {"20261123": False}  # within its grace
    assert "empty   20261123" in plan.render()
    report = Job(plan, store, compact, state, CompactSettings(tmp_root=tmp_path / "work"),
                 LeaseManager(compact, auto_renew=False)).run()
    assert report.last_compacted_after == "20261122"
    assert StateStore(compact).last_compacted_date == "20261122"
    later = build_plan(store, compact, state, PlanOptions(today=date(2026, 11, 27)))
    assert later.empty_days == {"20261123": True, "20261125": False, "20261126": False}
    daily = build_plan(store, compact, state, PlanOptions(mode=Mode.DAILY,
                                                          today=date(2026, 11, 24)))
    assert daily.empty_days == {"20261123": False}
    assert Job(daily, store, compact, state, CompactSettings(tmp_root=tmp_path / "work"),
               LeaseManager(compact, auto_renew=False)).run().last_compacted_after == "20261122"
