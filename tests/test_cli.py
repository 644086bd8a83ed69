"""End to end: `python run.py` as a subprocess against the moto S3 server over HTTP.

Raw and compact buckets are fresh per test (conftest `cli_env`); raw data comes
from the generator, uploaded through the storage layer. Every run is also
checked for leaked credentials in its output.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from compressor import cli, runner
from compressor.demo import PartitionSpec, file_bytes, file_names, rows_in_file, special_files
from compressor.job import RunReport, Status
from compressor.layout import LOCKS_PREFIX, PartitionId
from compressor.merge import MergeSettings
from compressor.meta import Meta, check_data_file
from compressor.partition.compact import CompactSettings
from compressor.planning import Mode, PlanOptions
from compressor.runner import RunConfig
from compressor.state import StateStore
from compressor.storage import (
    LocalStore,
    S3Store,
    StoreConfigError,
    StoreError,
    TransientStoreError,
)
from compressor.storage.base import TMP_MARK
from tests.conftest import (
    TEST_ACCESS_KEY,
    TEST_SECRET_KEY,
    FlakyLocalStore,
    free_port,
    make_s3_store,
    put_partition,
    store_listing,
)
from tests.support.s3proxy import S3Proxy

REPO = Path(__file__).resolve().parents[1]
TODAY = "20261125"


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class World:
    env: dict[str, str]
    raw: S3Store
    compact: S3Store
    cwd: Path

    def run(self, *args: str, env: dict[str, str] | None = None) -> Result:
        proc = subprocess.run(
            [sys.executable, str(REPO / "run.py"), *args],
            env=env or self.env, cwd=self.cwd, capture_output=True, text=True, timeout=120,
        )
        for text in (proc.stdout, proc.stderr):
            assert TEST_SECRET_KEY not in text and TEST_ACCESS_KEY not in text
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def state(self) -> dict[str, Any]:
        return json.loads(self.compact.get_bytes("compacted/_state.json")[0])

    def add(self, spec: PartitionSpec) -> list[str]:
        return put_partition(self.raw, spec, self.cwd)

    def add_days(self, *days: str, corrupt_day: str | None = None) -> list[PartitionSpec]:
        specs = []
        for day in days:
            for ex, stream, sym in (("binance", "trade", "btcusdt"), ("okx", "bbo", "ethusdt")):
                corrupt = 1 if day == corrupt_day and ex == "okx" else 0
                spec = PartitionSpec(exchange=ex, stream=stream, symbol=sym, date=day, files=4,
                                     rows_per_file=60, corrupt=corrupt)
                self.add(spec)
                specs.append(spec)
        return specs

    def assert_no_secrets_stored(self) -> None:
        """No credential in any object the job wrote (state, metas, data, leases)."""
        for info in self.compact.list_objects(""):
            body = self.compact.get_bytes(info.key)[0]
            assert TEST_SECRET_KEY.encode() not in body and TEST_ACCESS_KEY.encode() not in body

    def consistent_outputs(self) -> dict[str, dict[str, Any]]:
        """state_key -> meta for every published partition; asserts meta matches its data."""
        metas = {}
        for info in self.compact.list_objects("exchange="):
            if not info.key.endswith("/meta.json"):
                continue
            pid = PartitionId.from_prefix(info.key[: -len("meta.json")])
            body = self.compact.get_bytes(info.key)[0]
            meta = Meta.from_bytes(body, info.key)
            local = self.cwd / "check.parquet"
            data = self.compact.get_file(pid.data_key, local)
            assert meta.data_etag is None or meta.describes(data), (info.key, data)
            assert check_data_file(meta, local) == [], info.key
            metas[pid.state_key] = json.loads(body)
        return metas


@pytest.fixture
def world(cli_env: dict[str, str], moto_server: str, tmp_path: Path) -> World:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return World(
        cli_env,
        make_s3_store(moto_server, cli_env["S3_BUCKET"]),
        make_s3_store(moto_server, cli_env["S3_COMPACT_BUCKET"]),
        cwd,
    )


def _set_last_compacted(world: World, day: str) -> None:
    state = StateStore(world.compact)
    state.advance_last_compacted(day)
    state.flush()


def _partitions(state: dict[str, Any]) -> dict[str, str]:
    return {k: v["status"] for k, v in state["partitions"].items()}


# --------------------------------------------------------------------------- modes


def test_daily_compacts_yesterday_only(world: World) -> None:
    world.add_days("20261123", "20261124")
    r = world.run("--mode", "daily", "--today", TODAY)
    assert r.code == 0, r.err
    assert set(world.consistent_outputs()) == {"binance/trade/btcusdt/20261124",
                                               "okx/bbo/ethusdt/20261124"}
    state = world.state()
    assert set(_partitions(state).values()) == {"success"}
    assert state["last_compacted_date"] == "20261124"
    assert state["updated_at"].endswith("Z")
    entry = state["partitions"]["binance/trade/btcusdt/20261124"]
    assert entry["rows"] > 0 and entry["total_size_bytes"] > 0
    assert entry["day_quality_post"] == "UNKNOWN"  # this lake has no collector windows
    assert entry["quality"]["rows"] == entry["rows"]


def test_fresh_start_is_yesterday_only_then_catch_up_follows_raw_days(world: World) -> None:
    world.add_days("20261120", "20261124")
    r = world.run("--today", TODAY)  # catch-up is the default mode
    assert r.code == 0, r.err
    assert {k.rsplit("/", 1)[1] for k in world.consistent_outputs()} == {"20261124"}
    assert world.state()["last_compacted_date"] == "20261124"

    world.add_days("20261125", "20261126", "20261127")
    r = world.run("--today", "20261127")
    assert r.code == 0, r.err
    days = {k.rsplit("/", 1)[1] for k in world.consistent_outputs()}
    assert days == {"20261124", "20261125", "20261126"}  # today (27th) never; 20th never
    assert world.state()["last_compacted_date"] == "20261126"


def test_catch_up_with_a_quarantined_day_in_the_middle(world: World) -> None:
    specs = world.add_days("20261122", "20261123", "20261124", corrupt_day="20261123")
    bad_spec = next(s for s in specs if s.corrupt)
    (slot,) = special_files(bad_spec)
    bad_key = f"{bad_spec.partition.prefix}{_name(bad_spec, slot)}"
    _set_last_compacted(world, "20261121")

    r = world.run("--today", TODAY)
    assert r.code == 1
    assert bad_key in r.out and bad_key in r.err
    state = world.state()
    assert state["last_compacted_date"] == "20261122"  # the bad day holds it back
    entry = state["partitions"][bad_spec.partition.state_key]
    assert entry["status"] == "quarantined" and entry["failed_key"] == bad_key
    assert bad_key in entry["error"] and "\n" not in entry["error"]
    outputs = world.consistent_outputs()
    assert bad_spec.partition.state_key not in outputs
    assert len(outputs) == 5  # later days were still compacted

    r = world.run("--today", TODAY)  # nothing fixed yet: still blocked, not retried
    assert r.code == 1 and "still quarantined" in r.out
    assert world.state()["last_compacted_date"] == "20261122"

    good = file_bytes(replace(bad_spec, corrupt=0), slot)
    world.raw.put_bytes(bad_key, good)  # the operator repairs the object
    r = world.run("--today", TODAY, "--retry-quarantine")
    assert r.code == 0, r.err
    assert world.state()["last_compacted_date"] == "20261124"
    assert world.state()["partitions"][bad_spec.partition.state_key]["status"] == "success"
    assert len(world.consistent_outputs()) == 6
    world.assert_no_secrets_stored()


def test_deleting_the_quarantined_object_lifts_the_quarantine(world: World) -> None:
    (spec, _) = world.add_days("20261124", corrupt_day="20261124")[::-1]
    assert spec.corrupt
    assert world.run("--mode", "daily", "--today", TODAY).code == 1
    key = world.state()["partitions"][spec.partition.state_key]["failed_key"]
    world.raw.delete(key)
    r = world.run("--mode", "daily", "--today", TODAY)
    assert r.code == 0, r.err
    assert "quarantined key no longer in the raw listing" in r.err
    assert world.state()["last_compacted_date"] == "20261124"


def test_skip_corrupt_publishes_without_the_bad_object(world: World) -> None:
    (spec, _) = world.add_days("20261124", corrupt_day="20261124")[::-1]
    r = world.run("--mode", "daily", "--today", TODAY, "--skip-corrupt")
    assert r.code == 0, r.err
    meta = world.consistent_outputs()[spec.partition.state_key]
    assert len(meta["skipped_files"]) == 1 and meta["source_files"] == 3
    entry = world.state()["partitions"][spec.partition.state_key]
    assert entry["skipped_files"] == meta["skipped_files"]


def test_backfill_never_moves_last_compacted_date(world: World) -> None:
    world.add_days("20261121", "20261122", "20261123")
    _set_last_compacted(world, "20261120")
    r = world.run("--mode", "backfill", "--date-from", "20261121", "--date-to", "20261123",
                  "--today", TODAY)
    assert r.code == 0, r.err
    assert len(world.consistent_outputs()) == 6
    assert world.state()["last_compacted_date"] == "20261120"
    assert "20261120 -> 20261120" in r.out


def test_up_to_date_skip_then_overwrite_rewrites_consistently(world: World) -> None:
    world.add_days("20261124")
    assert world.run("--mode", "daily", "--today", TODAY).code == 0
    first = world.consistent_outputs()
    listing = store_listing(world.compact)

    r = world.run("--mode", "daily", "--today", TODAY)
    assert r.code == 0 and r.err.count("skipped: up to date") == 2
    assert store_listing(world.compact) == listing  # nothing rewritten, state included

    r = world.run("--mode", "daily", "--today", TODAY, "--overwrite")
    assert r.code == 0, r.err
    assert r.err.count("(--overwrite)") == 2
    again = world.consistent_outputs()
    for key, meta in again.items():
        assert meta["sha256"] == first[key]["sha256"]  # same inputs, same bytes
        assert world.state()["partitions"][key]["attempts"] == 2
    assert store_listing(world.compact) != listing  # rewritten


def test_late_raw_file_triggers_recompaction(world: World) -> None:
    (spec, _) = world.add_days("20261124")
    assert world.run("--mode", "daily", "--today", TODAY).code == 0
    before = world.consistent_outputs()[spec.partition.state_key]
    extra = PartitionSpec(exchange=spec.exchange, stream=spec.stream, symbol=spec.symbol,
                          date=spec.date, files=1, rows_per_file=25, seed=7)
    world.raw.put_bytes(spec.partition.prefix + "part-1795564799-999999.parquet",
                        file_bytes(extra, 0))
    r = world.run("--mode", "daily", "--today", TODAY)
    assert r.code == 0, r.err
    assert "raw files changed since compaction (4 files then, 5 now)" in r.err
    after = world.consistent_outputs()[spec.partition.state_key]
    assert after["source_files"] == 5
    assert after["rows"] == before["rows"] + rows_in_file(extra, 0)


def test_dry_run_changes_nothing(world: World) -> None:
    world.add_days("20261123", "20261124")
    _set_last_compacted(world, "20261122")
    before = (store_listing(world.raw), store_listing(world.compact))
    r = world.run("--today", TODAY, "--dry-run")
    assert r.code == 0, r.err
    assert (store_listing(world.raw), store_listing(world.compact)) == before
    assert "days: 20261123, 20261124" in r.out
    assert "to compact: 4 (16 files" in r.out
    assert "okx/bbo/ethusdt/20261124" in r.out and "not compacted yet" in r.out


def test_filters_narrow_the_run(world: World) -> None:
    world.add_days("20261124")
    r = world.run("--mode", "daily", "--today", TODAY, "--exchanges", "okx")
    assert r.code == 0, r.err
    assert set(world.consistent_outputs()) == {"okx/bbo/ethusdt/20261124"}
    assert world.state()["last_compacted_date"] is None  # a narrowed run vouches for nothing


def test_quality_report_summarises_the_state_read_only(world: World) -> None:
    world.add_days("20261124")
    assert world.run("--mode", "daily", "--today", TODAY).code == 0
    listing = store_listing(world.compact)
    r = world.run("--quality-report", "--today", TODAY)
    assert r.code == 0, r.err
    assert store_listing(world.compact) == listing
    line = next(x for x in r.out.splitlines() if x.startswith("20261124"))
    assert line.split()[1:4] == ["yes", "2", "0"]  # ready, ok, fail


def test_discovery_list_requests_do_not_grow_with_files(world: World, moto_server: str) -> None:
    world.add_days("20261124")
    with S3Proxy(moto_server) as proxy:
        env = {**world.env, "S3_ENDPOINT": proxy.endpoint}
        assert world.run("--today", TODAY, "--dry-run", env=env).code == 0
        first = proxy.counts()
        extra = PartitionSpec(date="20261124", files=30, rows_per_file=5, seed=3)
        for key in world.add(replace(extra, exchange="binance", stream="trade")):
            assert key.startswith("exchange=binance/stream=trade/symbol=btcusdt/")
        proxy.reset_counts()
        assert world.run("--today", TODAY, "--dry-run", env=env).code == 0
        second = proxy.counts()
    # walk: root, 2 exchanges, 2 streams, 2 symbols; then one LIST per partition
    assert first["LIST_DELIM"] == second["LIST_DELIM"] == 1 + 2 + 2 + 2
    # check() per store, the compact store's clock offset (its Date); per partition its
    # own folder, the day before's and the next day's (docs/guarantees.md "Rows belong to
    # their event day"): 2 partitions
    assert first["LIST"] == second["LIST"] == 2 + 1 + 2 * 3


# --------------------------------------------------------------------------- exit code 2


def _tomorrow() -> str:
    """The real UTC date plus one: a --today that would compact the day being written."""
    from datetime import UTC, datetime, timedelta

    return (datetime.now(UTC) + timedelta(days=1)).strftime("%Y%m%d")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--mode", "backfill", "--date-from", "2026-11-01"], "--date-from"),
        (["--mode", "backfill", "--date-from", TODAY], "today or in the future"),
        (["--mode", "backfill", "--date-from", "20261120", "--date-to", "20271120"],
         "today or in the future"),
        (["--mode", "weekly"], "--mode"),
        (["--today", "20261131"], "--today"),
        (["--mode", "daily", "--today", _tomorrow()], "after today's real UTC date"),
        (["--lookback-days", "-1"], "--lookback-days"),
        (["--empty-day-grace", "two"], "--empty-day-grace"),
        (["--json"], "--json applies to --quality-report only"),
        (["--html", "x.html"], "--html applies to --quality-report only"),
        (["--memory-budget", "lots"], "--memory-budget"),
        (["--env-file", "/nonexistent/.env"], "--env-file"),
        (["--compact", "ftp://x"], "ftp"),
        (["--dry-run", "--repair-state"], "cannot be combined"),
        (["--mode", "backfill", "--date-from", "20261120", "--date-to", "20261118"], "before"),
        (["--mode", "daily", "--date-from", "20261120"], "cleanup and verify only"),
        (["--streams", ","], "--streams"),
        (["--mode", "cleanup", "--date-from", "20261120", "--app"], "--app"),
    ],
)
def test_usage_errors_exit_2_with_one_line(world: World, args: list[str], needle: str) -> None:
    r = world.run("--today", TODAY, *args) if "--today" not in args else world.run(*args)
    assert r.code == 2
    assert len(r.err.strip().splitlines()) == 1, r.err
    assert needle in r.err and "Traceback" not in r.err
    assert r.out == ""


def test_no_option_is_taken_by_a_prefix() -> None:
    """`--app` once ran a cleanup as `--apply`: every option, shortened by a letter
    or two, is a usage error naming what was typed."""
    from compressor.options import UsageError, build_parser

    parser = build_parser()
    longs = [opt for action in parser._actions for opt in action.option_strings
             if opt.startswith("--") and opt != "--help"]
    assert "--apply" in longs and len(longs) > 30
    for opt in longs:
        for cut in (1, 2):
            short = opt[:-cut]
            if short in longs or len(short) < 3:
                continue
            with pytest.raises(UsageError, match=f"unrecognized arguments: {short}"):
                parser.parse_args([short])


@pytest.fixture
def local_lake(tmp_path: Path) -> Path:
    """lake/raw: one binance/trade/btcusdt partition on 20261123; lake/compact: empty."""
    lake = tmp_path / "lake"
    for name in ("raw", "compact"):
        (lake / name).mkdir(parents=True)
    put_partition(LocalStore(lake / "raw"), PartitionSpec(
        exchange="binance", stream="trade", symbol="btcusdt", date="20261123", files=2,
        rows_per_file=20), tmp_path)
    return lake


def _run_local(lake: Path, raw: Path, *args: str) -> Result:
    env = {k: v for k, v in os.environ.items() if not k.startswith("S3_")}
    proc = subprocess.run(
        [sys.executable, str(REPO / "run.py"), "--raw", str(raw), "--compact",
         str(lake / "compact"), "--today", TODAY, "--tmp-dir", str(lake / "tmp"), *args],
        env=env, cwd=lake, capture_output=True, text=True, timeout=120)
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize(("raw", "args", "needle"), [
    ("raw/exchange=binance", [], "holds no exchange=... folders at its top (found stream=trade/)"),
    (".", [], "holds no exchange=... folders at its top (found raw/)"),
    ("compact", ["--dry-run"], "holds no exchange=... folders at its top (found no folders)"),
    ("raw", ["--exchanges", "okx"], "--exchanges okx: no such exchange in raw store"),
    ("raw", ["--symbols", "ethusdt", "--dry-run"], "no such symbol in raw store"),
])
def test_a_raw_store_or_filter_that_finds_nothing_exits_2(
        local_lake: Path, raw: str, args: list[str], needle: str) -> None:
    """--raw one level too deep or too shallow, or a filter naming nothing there, would
    plan nothing and exit 0 as if done: a usage error naming what was found."""
    r = _run_local(local_lake, local_lake / raw, "--mode", "backfill", "--date-from",
                   "20261123", *args)
    assert r.code == 2, r.err
    assert len(r.err.strip().splitlines()) == 1 and needle in r.err, r.err
    assert "Traceback" not in r.err and r.out == ""
    assert list((local_lake / "compact").iterdir()) == []


def test_a_day_without_raw_data_is_nothing_to_do(local_lake: Path) -> None:
    r = _run_local(local_lake, local_lake / "raw", "--mode", "backfill", "--date-from",
                   "20261120")
    assert r.code == 0, r.err
    assert "backfill run over 20261120: nothing to do (no raw partition to plan on these " \
           "days)" in r.out


def test_read_only_modes_work_on_a_read_only_store(
        local_lake: Path, read_only_view: Callable[[Path], Path]) -> None:
    """--quality-report, --dry-run, --mode verify and a cleanup without --apply only
    read: they work on read-only stores (a read-only bind mount); a run that writes is
    refused naming the cause, not as a store that ignores conditional writes."""
    done = _run_local(local_lake, local_lake / "raw", "--mode", "backfill", "--date-from",
                      "20261123")
    assert done.code == 0, done.err
    raw, compact = read_only_view(local_lake / "raw"), read_only_view(local_lake / "compact")
    day = ["--date-from", "20261123"]
    for args, says in [(["--quality-report", "--days", "3"], "quality report"),
                       (["--dry-run", "--mode", "backfill", *day, "--overwrite"],
                        "to compact: 1"),
                       (["--mode", "verify", *day, "--deep"], "1 partitions checked, 0 problems"),
                       (["--mode", "cleanup", *day], "binance/trade/btcusdt/20261123")]:
        r = _run_local(local_lake, raw, "--compact", str(compact), *args)
        assert r.code == 0, (args, r.err)
        assert says in r.out, (args, r.out)
    r = _run_local(local_lake, raw, "--compact", str(compact), "--mode", "backfill", *day,
                   "--overwrite")
    assert r.code == 2, r.err
    assert f"local store '{compact}' cannot be written" in r.err
    assert "Read-only file system" in r.err and "conditional writes" not in r.err
    # a read-only raw store is all a run needs of it
    r = _run_local(local_lake, raw, "--mode", "backfill", *day, "--overwrite")
    assert r.code == 0, r.err


def test_a_file_in_the_way_of_the_compact_store_is_named(local_lake: Path) -> None:
    compact = local_lake / "compact"
    (compact / "compacted").write_bytes(b"")  # where the state and leases go
    r = _run_local(local_lake, local_lake / "raw", "--mode", "backfill", "--date-from",
                   "20261123")
    assert r.code == 2
    line = r.err.strip()
    assert "\n" not in line and "conditional writes" not in line, line
    assert f"local store '{compact}' cannot be written: cannot write key 'compacted/" in line
    assert "'compacted' is a file, not a directory" in line
    r = _run_local(local_lake, local_lake / "raw", "--mode", "backfill", "--date-from",
                   "20261123", "--compact", str(compact / "compacted"))
    assert r.code == 2
    assert f"local store root '{compact / 'compacted'}' is a file, not a directory" in r.err


def test_missing_bucket_exits_2_naming_it(world: World) -> None:
    env = {**world.env, "S3_BUCKET": "qlc-no-such-bucket"}
    r = world.run("--today", TODAY, env=env)
    assert r.code == 2
    assert len(r.err.strip().splitlines()) == 1 and "qlc-no-such-bucket" in r.err


def test_unreachable_endpoint_exits_2_quickly(world: World) -> None:
    env = {**world.env, "S3_ENDPOINT": f"http://127.0.0.1:{free_port()}"}
    r = world.run("--today", TODAY, env=env)
    assert r.code == 2
    assert len(r.err.strip().splitlines()) == 1 and "endpoint" in r.err


def test_env_file_is_read_and_real_environment_wins(world: World) -> None:
    world.add_days("20261124")
    env_file = world.cwd / ".env"
    env_file.write_text(f"S3_COMPACT_BUCKET={world.env['S3_COMPACT_BUCKET']}\n"
                        "S3_BUCKET=qlc-from-file-missing\n")
    env_file.chmod(0o600)
    env = {k: v for k, v in world.env.items() if k != "S3_COMPACT_BUCKET"}
    r = world.run("--mode", "daily", "--today", TODAY, env=env)  # ./.env by default
    assert r.code == 0, r.err  # S3_BUCKET from the real environment, compact from the file
    assert "readable by other users" not in r.err
    env_file.chmod(0o644)
    r = world.run("--today", TODAY, "--dry-run", env=env)
    assert r.code == 0 and "readable by other users" in r.err


# --------------------------------------------------------------------------- demo


def test_demo(tmp_path: Path, world: World) -> None:
    r = world.run("--demo", str(tmp_path / "demo"), "--today", TODAY)
    assert r.code == 0, r.err
    assert "last_compacted_date: 20261124" in r.out
    assert "fresh start" not in r.err  # the demo backfilled the days before its catch-up
    state = json.loads((tmp_path / "demo/compact/compacted/_state.json").read_text())
    assert len(state["partitions"]) == 36
    assert {v["status"] for v in state["partitions"].values()} == {"success"}


@pytest.mark.parametrize(("now", "want"), [
    ("2026-11-25T00:10:00", "20261124"),  # yesterday's last rows may still arrive
    ("2026-11-25T00:59:59", "20261124"),
    ("2026-11-25T01:00:00", "20261125"),  # settled: the grace hour has passed
    ("2026-11-26T03:00:00", "20261125"),  # --today in the past
])
def test_the_demo_runs_as_of_a_day_whose_yesterday_is_settled(now: str, want: str) -> None:
    got = cli.demo_today(date(2026, 11, 25), datetime.fromisoformat(now).replace(tzinfo=UTC))
    assert f"{got:%Y%m%d}" == want


def _name(spec: PartitionSpec, slot: int) -> str:
    return file_names(spec)[slot]


# --------------------------------------------------------------------------- failures + state


def test_transient_store_errors_fail_the_partition_for_a_retry(
    world: World, moto_server: str
) -> None:
    world.add_days("20261124")
    with S3Proxy(moto_server) as proxy:
        # raw through the proxy (object GETs fail), compact straight to the server
        env = {**world.env, "S3_ENDPOINT": proxy.endpoint, "S3_COMPACT_ENDPOINT": moto_server,
               "S3_MAX_ATTEMPTS": "2"}
        proxy.set_faults(1.0, ["internal"], ops=["GET"])
        r = world.run("--mode", "daily", "--today", TODAY, env=env)
    assert r.code == 1
    statuses = _partitions(world.state())
    assert set(statuses.values()) == {"failed"}  # retryable, never quarantined
    assert world.state()["last_compacted_date"] is None
    assert world.consistent_outputs() == {}
    r = world.run("--mode", "daily", "--today", TODAY)
    assert r.code == 0, r.err
    assert set(_partitions(world.state()).values()) == {"success"}
    assert world.state()["last_compacted_date"] == "20261124"
    world.assert_no_secrets_stored()


@pytest.mark.parametrize("kind", ["access_denied", "invalid_object_state"])
def test_one_unreadable_raw_object_fails_its_partition_not_the_run(
    world: World, moto_server: str, kind: str
) -> None:
    """A 403 on one raw object (a foreign KMS key, an archived object) is that
    partition's failure, naming the key; the others are published; exit 1, not 2."""
    specs = world.add_days("20261124")
    bad = specs[1]
    key = bad.partition.prefix + _name(bad, 2)
    with S3Proxy(moto_server) as proxy:
        env = {**world.env, "S3_ENDPOINT": proxy.endpoint, "S3_COMPACT_ENDPOINT": moto_server}
        proxy.fail_next(kind, 1000, ops=["GET"], path_contains=key)
        r = world.run("--mode", "daily", "--today", TODAY, env=env)
    assert r.code == 1, r.err
    entry = world.state()["partitions"][bad.partition.state_key]
    assert entry["status"] == "failed" and entry["failed_key"] == key
    assert key in entry["error"] and key in r.out
    assert set(world.consistent_outputs()) == {specs[0].partition.state_key}
    assert world.state()["last_compacted_date"] is None
    r = world.run("--mode", "daily", "--today", TODAY)  # the object is readable again
    assert r.code == 0, r.err
    assert world.state()["last_compacted_date"] == "20261124"


def test_malformed_state_stops_the_run_until_repaired(world: World) -> None:
    world.add_days("20261124")
    world.compact.put_bytes("compacted/_state.json", b'{"schema_version": 1, "partitions": [')
    r = world.run("--mode", "daily", "--today", TODAY)
    assert r.code == 2
    assert len(r.err.strip().splitlines()) == 1
    assert "compacted/_state.json" in r.err and "--repair-state" in r.err
    assert world.compact.get_bytes("compacted/_state.json")[0].endswith(b"[")  # untouched
    assert world.consistent_outputs() == {}

    r = world.run("--repair-state")
    assert r.code == 0, r.err
    assert "backed up to compacted/_state.json.corrupt-" in r.out
    r = world.run("--mode", "daily", "--today", TODAY)
    assert r.code == 0, r.err
    assert world.state()["last_compacted_date"] == "20261124"


def test_a_lost_state_is_rebuilt_from_meta_without_recompacting(world: World) -> None:
    world.add_days("20261123", "20261124")
    assert world.run("--mode", "backfill", "--date-from", "20261123", "--date-to", "20261124",
                     "--today", TODAY).code == 0
    data_before = {k: v for k, v in store_listing(world.compact).items() if "date=" in k}
    world.compact.delete("compacted/_state.json")
    r = world.run("--mode", "backfill", "--date-from", "20261123", "--date-to", "20261124",
                  "--today", TODAY)
    assert r.code == 0, r.err
    assert "4 up to date" in r.out
    assert {k: v for k, v in store_listing(world.compact).items() if "date=" in k} == data_before
    entries = world.state()["partitions"]
    assert len(entries) == 4 and {e["status"] for e in entries.values()} == {"success"}
    assert all(e["rows"] > 0 and e["day_quality_post"] for e in entries.values())


def test_a_partition_leased_by_another_run_is_left_to_it(world: World) -> None:
    from compressor.lease import LeaseManager, LeaseOwner

    (spec, other) = world.add_days("20261124")
    holder = LeaseManager(world.compact, owner=LeaseOwner("other-host", 1, "run-x"),
                          auto_renew=False)
    assert holder.acquire(spec.partition) is not None
    r = world.run("--mode", "daily", "--today", TODAY)
    assert r.code == 0, r.err
    assert "1 busy elsewhere" in r.out
    assert set(world.consistent_outputs()) == {other.partition.state_key}
    assert world.state()["last_compacted_date"] is None  # that day is not done yet


def test_json_log_format(world: World) -> None:
    world.add_days("20261124")
    r = world.run("--mode", "daily", "--today", TODAY, "--log-format", "json")
    assert r.code == 0, r.err
    lines = [json.loads(line) for line in r.err.splitlines()]
    assert lines and all(x["ts"].endswith("Z") and x["level"] and x["msg"] for x in lines)
    assert any("published" in x["msg"] for x in lines)
    assert "\x1b[" not in r.err


def test_sigterm_stops_cleanly_with_143(world: World, moto_server: str) -> None:
    import signal
    import time

    world.add_days("20261123", "20261124")
    with S3Proxy(moto_server) as proxy:
        proxy.delay = 1.0
        proxy.set_faults(1.0, ["delay"], ops=["GET"])  # every raw download stalls
        env = {**world.env, "S3_ENDPOINT": proxy.endpoint, "S3_COMPACT_ENDPOINT": moto_server,
               "S3_READ_TIMEOUT": "0.5", "S3_MAX_ATTEMPTS": "20"}
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "run.py"), "--mode", "backfill", "--date-from",
             "20261123", "--date-to", "20261124", "--today", TODAY,
             "--tmp-dir", str(world.cwd / "tmp"), "--workers", "1"],
            env=env, cwd=world.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + 30
        while proxy.counts().get("GET", 0) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        out, err = proc.communicate(timeout=30)
        stopped_in = time.monotonic() - sent
    assert proc.returncode == 143, err
    assert stopped_in < 10
    assert "SIGTERM" in err and "stopped by a signal" in out
    entries = world.state()["partitions"]
    assert [e["error"] for e in entries.values()] == ["interrupted"]
    assert world.consistent_outputs() == {}
    leftovers = list((world.cwd / "tmp").glob("qlc-part-*"))
    # an in-flight download may outlive the exit; the next run removes such leftovers
    assert world.run("--today", TODAY, "--dry-run", "--tmp-dir", str(world.cwd / "tmp")).code == 0
    r = world.run("--mode", "backfill", "--date-from", "20261123", "--date-to", "20261124",
                  "--today", TODAY, "--tmp-dir", str(world.cwd / "tmp"))
    assert r.code == 0, r.err
    assert not list((world.cwd / "tmp").glob("qlc-part-*"))
    assert len(leftovers) <= 1


# --------------------------------------------------------------------------- one-line exits 2


@pytest.mark.parametrize(("variable", "value"), [("MAX_OPEN_FILES", "1"),
                                                 ("MERGE_BATCH_SIZE", "abc")])
def test_a_bad_merge_setting_exits_2_naming_the_variable(
    world: World, variable: str, value: str
) -> None:
    r = world.run("--today", TODAY, env={**world.env, variable: value})
    assert r.code == 2
    assert r.err.strip().splitlines() == [r.err.strip()]
    assert f"{variable}={value!r}" in r.err and "Traceback" not in r.err


def test_an_unwritable_demo_dir_exits_2_naming_it(tmp_path: Path, world: World) -> None:
    taken = tmp_path / "a-file"
    taken.write_text("not a directory\n")
    r = world.run("--demo", str(taken), "--today", TODAY)
    assert r.code == 2
    assert r.err.strip().splitlines() == [r.err.strip()]
    assert f"--demo {taken}" in r.err and "Traceback" not in r.err


# ------------------------------------------------------------------- cleanup after dead runs


def _local_daily(tmp_path: Path, compact: LocalStore) -> tuple[RunReport, LocalStore]:
    raw = LocalStore(tmp_path / "raw")
    put_partition(raw, PartitionSpec(date="20261124", files=3, rows_per_file=30), tmp_path)
    config = RunConfig(PlanOptions(mode=Mode.DAILY, today=date(2026, 11, 25)),
                       CompactSettings(tmp_root=tmp_path / "work"))
    report = runner.run(config, raw, compact, lambda: False).report
    assert report is not None
    return report, raw


@pytest.mark.parametrize("error", [
    StoreConfigError("list uploads bucket 'q' at http://s3: AccessDenied (HTTP 403)"),
    TransientStoreError("list uploads bucket 'q' at http://s3: SlowDown (HTTP 503)"),
])
def test_cleanup_of_dead_runs_uploads_is_best_effort(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, error: StoreError
) -> None:
    """No s3:ListBucketMultipartUploads permission must not make every run exit 2."""
    for name in ("raw", "compact"):
        (tmp_path / name).mkdir()
    compact = FlakyLocalStore(tmp_path / "compact")
    compact.fail("remove_stale_partials", error=error)
    with caplog.at_level(logging.WARNING, logger="compressor.runner"):
        report, _ = _local_daily(tmp_path, compact)
    assert report.ok and report.count(Status.SUCCESS) == 1
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "compressor.runner"]
    assert warning.startswith("could not abort incomplete uploads") and str(error) in warning


def test_a_lease_cleanup_error_still_aborts_stale_uploads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("raw", "compact"):
        (tmp_path / name).mkdir()
    compact = FlakyLocalStore(tmp_path / "compact")
    stale = tmp_path / "compact" / f"{TMP_MARK}left-by-a-killed-writer"
    stale.write_bytes(b"partial")
    os.utime(stale, (time.time() - 2 * 86400,) * 2)
    compact.fail("list_objects", LOCKS_PREFIX, times=1)  # reap_stale's listing
    with caplog.at_level(logging.WARNING, logger="compressor.runner"):
        report, _ = _local_daily(tmp_path, compact)
    assert report.ok and not stale.exists()
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "compressor.runner"]
    assert warning.startswith("could not remove leases left by runs that are gone")


# ------------------------------------------------------------------- workers and slices


@pytest.mark.parametrize(("workers", "partitions", "cores", "want"), [
    (None, 140, 2, (2, 1)),   # a day: two partitions at once, each merged in one process
    (None, 1, 2, (1, 2)),     # one big partition: the whole budget, both cores as slices
    (4, 3, 8, (3, 2)),        # never more workers than partitions; spare cores to slices
    (1, 10, 2, (1, 2)),
    (None, 0, 4, (1, 4)),
])
def test_workers_and_slice_processes_from_cores_budget_and_partitions(
    tmp_path: Path, workers: int | None, partitions: int, cores: int, want: tuple[int, int]
) -> None:
    budget = 512 << 20
    config = RunConfig(PlanOptions(mode=Mode.DAILY, today=date(2026, 11, 25)),
                       CompactSettings(tmp_root=tmp_path, merge=MergeSettings(
                           memory_budget=budget)), workers=workers)
    got, settings = runner.split_budget(config, partitions, cores)
    assert (got, settings.merge.processes) == want
    # the whole budget is shared out, never exceeded
    assert got * (settings.merge.memory_budget + settings.fetch_budget_bytes) <= budget


@pytest.mark.parametrize(("workers", "dry_run", "cores", "want"), [
    (None, False, 2, 1),   # a run may find one big partition: the second core's process
    (None, True, 2, 0),    # a dry run starts nothing
    (2, False, 2, 0),      # every core has a worker: no slices, whatever the plan
    (None, False, 1, 0),
    (None, False, 16, 3),     # at most three
])
def test_spare_slice_processes_before_the_plan(
    tmp_path: Path, workers: int | None, dry_run: bool, cores: int, want: int
) -> None:
    config = RunConfig(PlanOptions(mode=Mode.DAILY, today=date(2026, 11, 25)),
                       CompactSettings(tmp_root=tmp_path), workers=workers, dry_run=dry_run)
    assert runner.spare_slices(config, cores) == want


@pytest.mark.parametrize(("setting", "want"), [(None, "jemalloc"), ("system", "system"),
                                               ("mimalloc", "mimalloc")])
def test_arrow_uses_jemalloc_unless_the_operator_names_a_pool(
    setting: str | None, want: str
) -> None:
    """docs/operations.md "Configuration": jemalloc keeps the merge's peak RSS lower than pyarrow's
    default mimalloc; ARROW_DEFAULT_MEMORY_POOL still wins. A process setting: each
    case runs in its own interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if setting:
        env["ARROW_DEFAULT_MEMORY_POOL"] = setting
    code = ("import pyarrow as pa; from compressor.merge import choose_memory_pool; "
            "name = choose_memory_pool(); "
            "print(name, pa.default_memory_pool().backend_name, "
            "pa.array([1, 2, 3]).buffers()[1] is not None)")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == [want, want, "True"]
