"""The collector's day label in the job: scored once per day, stored, written into
meta.json and the state, never withholding data, and re-scored while not final."""

from __future__ import annotations

import json
import time
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from compressor.clock import StoreClock
from compressor.discovery import list_partition
from compressor.generator import PartitionSpec, write_quality_windows
from compressor.job import Job, Status
from compressor.lease import LeaseManager
from compressor.meta import read_published
from compressor.partition.compact import CompactSettings
from compressor.planning import Mode, PlanOptions, build_plan
from compressor.quality.labels import RULES_VERSION
from compressor.quality.verdicts import DayVerdicts
from compressor.quality.windows import load_verdict, windows_prefix
from compressor.state import StateStore
from compressor.storage import LocalStore
from tests.conftest import put_partition

DAY = "20261123"
TODAY = date(2026, 11, 24)


@pytest.fixture
def lake(tmp_path: Path) -> tuple[LocalStore, LocalStore, CompactSettings]:
    for name in ("raw", "compact"):
        (tmp_path / name).mkdir()
    raw, compact = LocalStore(tmp_path / "raw"), LocalStore(tmp_path / "compact")
    for symbol in ("btcusdt", "ethusdt"):
        put_partition(raw, PartitionSpec(stream="trade", symbol=symbol, date=DAY, files=3,
                                         rows_per_file=50), tmp_path)
    return raw, compact, CompactSettings(tmp_root=tmp_path / "work", download_workers=2)


def _run(raw: LocalStore, compact: LocalStore, settings: CompactSettings, **kw: Any) -> Job:
    state = StateStore(compact)
    plan = build_plan(raw, compact, state, PlanOptions(mode=Mode.CATCH_UP, today=TODAY, **kw))
    verdicts = DayVerdicts(raw, compact, clock=StoreClock.fixed())
    job = Job(plan, raw, compact, state, settings, LeaseManager(compact, auto_renew=False),
              labels=verdicts.label)
    job.run()
    return job


def _labels(compact: LocalStore) -> dict[str, tuple[str, str]]:
    """state key -> (meta.json day_quality, state day_quality_post)."""
    doc = json.loads(compact.get_bytes("compacted/_state.json")[0])
    out = {}
    for key, entry in doc["partitions"].items():
        ex, stream, symbol, day = key.split("/")
        meta = json.loads(compact.get_bytes(
            f"exchange={ex}/stream={stream}/symbol={symbol}/date={day}/meta.json")[0])
        out[key] = (meta["day_quality"], entry["day_quality_post"])
        assert meta["post_filter_version"] == entry["post_filter_version"] == RULES_VERSION
    return out


def test_a_bad_day_is_compacted_and_labelled_bad(
    lake: tuple[LocalStore, LocalStore, CompactSettings], tmp_path: Path
) -> None:
    raw, compact, settings = lake
    bad = {k: {"signals": {"dropped_events": 50_000}} for k in range(3)}
    write_quality_windows(tmp_path / "raw", DAY, overrides=bad)
    job = _run(raw, compact, settings)
    assert {o.status for o in job.report.outcomes} == {Status.SUCCESS}  # never withheld
    assert set(_labels(compact).values()) == {("BAD", "BAD")}
    verdict = load_verdict(compact, DAY)
    assert verdict is not None and verdict.label.value == "BAD"
    assert verdict.counts.bad >= 3


def test_a_day_without_windows_is_unknown_never_good(
    lake: tuple[LocalStore, LocalStore, CompactSettings],
) -> None:
    raw, compact, settings = lake
    _run(raw, compact, settings)
    assert set(_labels(compact).values()) == {("UNKNOWN", "UNKNOWN")}


def test_a_partial_day_is_scored_again_and_relabelled_in_place(
    lake: tuple[LocalStore, LocalStore, CompactSettings], tmp_path: Path
) -> None:
    raw, compact, settings = lake
    write_quality_windows(tmp_path / "raw", DAY, missing=range(20, 60), seed=7)
    _run(raw, compact, settings)
    assert set(_labels(compact).values()) == {("PARTIAL", "PARTIAL")}
    pid = PartitionSpec(stream="trade", symbol="btcusdt", date=DAY).partition
    before = read_published(compact, pid)
    # the late windows arrive; the next catch-up's lookback brings the day round
    for path in (tmp_path / "raw" / windows_prefix(DAY)).iterdir():
        path.unlink()
    write_quality_windows(tmp_path / "raw", DAY, seed=7)
    time.sleep(0.01)
    job = _run(raw, compact, settings)
    assert {o.status for o in job.report.outcomes} == {Status.UP_TO_DATE}  # no recompaction
    labels = set(_labels(compact).values())
    assert len(labels) == 1 and next(iter(labels))[0] in ("GOOD", "DEGRADED")
    after = read_published(compact, pid)
    assert after.consistent and after.data == before.data  # same data.parquet
    assert after.current_for(list_partition(raw, pid).fingerprint)


def test_a_final_verdict_is_scored_once_and_reused(
    lake: tuple[LocalStore, LocalStore, CompactSettings], tmp_path: Path
) -> None:
    raw, compact, settings = lake
    write_quality_windows(tmp_path / "raw", DAY, seed=7)
    _run(raw, compact, settings)
    stored = load_verdict(compact, DAY)
    assert stored is not None and stored.label.final
    for path in (tmp_path / "raw" / windows_prefix(DAY)).iterdir():
        path.unlink()  # gone from raw: a final verdict is not read again
    _run(raw, compact, settings)
    assert load_verdict(compact, DAY) == stored
