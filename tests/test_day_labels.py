"""The collector's day label in the job: scored once per day, stored, written into
meta.json and the state, never withholding data, and re-scored while not final."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from compressor.clock import StoreClock
from compressor.demo import EXCHANGES, PartitionSpec, write_quality_windows
from compressor.discovery import list_partition
from compressor.job import Job, Status
from compressor.labels import RULES_VERSION
from compressor.lease import LeaseManager
from compressor.meta import read_published
from compressor.partition.compact import CompactSettings
from compressor.planning import Mode, PlanOptions, build_plan
from compressor.quality.verdicts import DayVerdicts
from compressor.quality.windows import load_verdict, windows_prefix
from compressor.state import StateStore
from compressor.storage import LocalStore
from tests import jobworld
from tests.conftest import old_checkout, put_partition
from tests.jobworld import JobWorld
from tests.jobworld import spec as jw_spec

jw = jobworld.jw  # the fixture

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


# --------------------------------------------------------------------------- end to end


#: The day each kind of collector day falls on; the job runs on jobworld's today.
JW_TODAY = jobworld.TODAY
KINDS = {"20261119": "GOOD", "20261120": "DEGRADED", "20261121": "BAD",
         "20261122": "PARTIAL", "20261123": "UNKNOWN", "20261124": "GOOD"}
#: The commit this branch started from: its code read a window key's HHMM as the end.
RULES_1_COMMIT = "b0ac00d544125cc26925d0dd51ed502a6da5ab96"


def _clean(k: int) -> dict[str, Any]:
    return {"quality": "GOOD", "signals": {
        "dropped_events": 0, "queue_pct_peak": 10.0, "reconnects": 0,
        "drain_mode_accelerated_seconds": 0.0,
        "offline_seconds_by_exchange": {ex: 0.0 for ex in EXCHANGES}}}


def _write_kind(root: Path, day: str, kind: str) -> None:
    """The day's windows, as the collector writes them, making a `kind` day."""
    over = {k: _clean(k) for k in range(96)}
    bad = {"quality": "BAD", "signals": {**_clean(0)["signals"], "dropped_events": 5}}
    if kind == "UNKNOWN":
        return
    if kind in ("DEGRADED", "BAD"):
        over.update({k: bad for k in range(1 if kind == "DEGRADED" else 3)})
    write_quality_windows(root, day, missing=range(30) if kind == "PARTIAL" else (),
                          partial=[40] if kind == "GOOD" else (),  # a collector restart
                          overrides=over)


def _lake(jw: JobWorld) -> list[str]:
    """Two partitions a day and each day's windows, on the moto raw bucket."""
    local = jw.cwd.parent / "windows"
    for day, kind in KINDS.items():
        for symbol in ("btcusdt", "ethusdt"):
            jw.add(jw_spec(symbol, date=day, files=2, rows_per_file=20))
        _write_kind(local, day, kind)
    for path in sorted(local.rglob("window=*.json")):
        jw.raw.put_file(path.relative_to(local).as_posix(), path)
    return ["--date-from", min(KINDS), "--date-to", max(KINDS)]


def _labels_of(jw: JobWorld) -> dict[str, tuple[str, str, str, str]]:
    """state key -> (meta day_quality, state day_quality_post, both versions)."""
    metas, entries = jw.outputs_of(), jw.entries()
    return {key: (metas[key]["day_quality"], entries[key]["day_quality_post"],
                  metas[key]["post_filter_version"], entries[key]["post_filter_version"])
            for key in entries}


def _good_query(jw: JobWorld) -> set[str]:
    """What a downstream reader selects from the state."""
    return {key for key, e in jw.entries().items()
            if e["status"] == "success" and e.get("day_quality_post") == "GOOD"}


def _every_partition_of(*days: str) -> set[str]:
    return {f"binance/trade/{symbol}/{day}" for day in days for symbol in ("btcusdt", "ethusdt")}


def test_real_format_windows_label_every_day_end_to_end(jw: JobWorld) -> None:
    """Windows named as the collector names them give each day its label in meta.json
    and the state, and the downstream query finds every partition of every GOOD day
    (rules 1.0.0 read every such window as malformed: every day UNKNOWN, query empty)."""
    dates = _lake(jw)
    first = json.loads(jw.raw.get_bytes("quality/date=20261119/window=0000.json")[0])
    assert first["window_start"] == "2026-11-19T00:00:00Z"  # keyed by start
    result = jw.run("--today", JW_TODAY, "--mode", "backfill", *dates)
    assert result.code == 0, result.err
    labels = _labels_of(jw)
    assert len(labels) == 12
    for key, got in labels.items():
        kind = KINDS[key[-8:]]
        assert got == (kind, kind, RULES_VERSION, RULES_VERSION), key
    assert _good_query(jw) == _every_partition_of("20261119", "20261124")


def test_rules_upgrade_relabels_old_labels_without_recompacting(jw: JobWorld) -> None:
    """A compact store written by the rules-1.0.0 code (every real-format day UNKNOWN):
    the next catch-up relabels every partition in place (meta.json and the state, also
    the UNKNOWN day whose label string stays the same), data.parquet untouched; a
    second run does nothing."""
    dates = _lake(jw)
    old = old_checkout(RULES_1_COMMIT, jw.cwd.parent / "old")
    run = subprocess.run([sys.executable, str(old / "run.py"), "--today", JW_TODAY,
                          "--mode", "backfill", *dates],
                         env=jw.env_with(PYTHONPATH=str(old)), cwd=jw.cwd,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    jw.outputs.extend([run.stdout, run.stderr])
    assert set(_labels_of(jw).values()) == {("UNKNOWN", "UNKNOWN", "1.0.0", "1.0.0")}
    data_before = jw.data_sha256()
    listing_before = {o.key: o.etag for o in jw.compact.list_objects("exchange=")}

    plan = jw.run("--today", JW_TODAY, "--dry-run")
    assert plan.code == 0, plan.err
    lines = [line.split() for line in plan.out.splitlines() if "binance/trade/" in line]
    assert sorted(line[1] for line in lines) == sorted(_every_partition_of(*KINDS))
    assert {line[0] for line in lines} == {"relabel"} and "to compact: 0" in plan.out

    result = jw.run("--today", JW_TODAY)
    assert result.code == 0, result.err
    for key, got in _labels_of(jw).items():
        kind = KINDS[key[-8:]]
        assert got == (kind, kind, RULES_VERSION, RULES_VERSION), key
    assert _good_query(jw) == _every_partition_of("20261119", "20261124")
    assert jw.data_sha256() == data_before  # same bytes: nothing recompacted
    listing = {o.key: o.etag for o in jw.compact.list_objects("exchange=")}
    assert {k: e for k, e in listing.items() if k.endswith("data.parquet")} == {
        k: e for k, e in listing_before.items() if k.endswith("data.parquet")}
    assert all(listing[k] != e for k, e in listing_before.items() if k.endswith("meta.json"))

    entries = jw.entries()
    again = jw.run("--today", JW_TODAY)
    assert again.code == 0, again.err
    assert jw.entries() == entries
    assert {o.key: o.etag for o in jw.compact.list_objects("exchange=")} == listing
