"""Operator modes: sharded runs, a backfill without a range, --symbols-file,
--max-partitions, --mode cleanup and --mode verify (docs/operations.md "Command line")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pyarrow.parquet as pq
import pytest

from compressor.demo import PartitionSpec, raw_table
from compressor.layout import LOCKS_PREFIX, STATE_KEY, PartitionId
from compressor.meta import Meta
from compressor.planning import Action, Mode, PlanOptions, Reason, Shard, build_plan
from compressor.state import StateStore
from compressor.storage import LocalStore
from tests.conftest import make_s3_store, put_partition, store_listing
from tests.support.s3proxy import S3Proxy
from tests.support.s3server import cli_environment
from tests.test_merge import _lying_statistics

REPO = Path(__file__).resolve().parents[1]
TODAY = "20261125"
DAYS = ("20261121", "20261122", "20261123", "20261124")
SYMBOLS = ("btcusdt", "ethusdt", "solusdt")


def _run(env: dict[str, str] | None, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "run.py"), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=180)


@pytest.fixture
def lake(tmp_path: Path) -> tuple[Path, Path]:
    raw, compact = tmp_path / "raw", tmp_path / "compact"
    raw.mkdir()
    compact.mkdir()
    store = LocalStore(raw)
    for day in DAYS:
        for symbol in SYMBOLS[:2]:
            put_partition(store, PartitionSpec(stream="trade", symbol=symbol, date=day,
                                               files=2, rows_per_file=40), tmp_path)
    return raw, compact


def _cli(lake: tuple[Path, Path], tmp_path: Path, *args: str
         ) -> subprocess.CompletedProcess[str]:
    raw, compact = lake
    return _run(None, tmp_path, "--raw", str(raw), "--compact", str(compact), "--today", TODAY,
                "--tmp-dir", str(tmp_path / "tmp"), *args)


def _state(compact: Path) -> dict[str, Any]:
    return json.loads((compact / STATE_KEY).read_text())


# ------------------------------------------------------------------ shards


def test_shards_split_the_partitions_exactly_and_stably() -> None:
    pids = [PartitionId(ex, st, sy, day) for ex in ("binance", "okx") for st in ("bbo", "trade")
            for sy in SYMBOLS for day in DAYS]
    for n in (1, 2, 5):
        owners = [[k for k in range(n) if Shard(k, n).owns(p)] for p in pids]
        assert all(len(o) == 1 for o in owners)  # every partition in exactly one shard
    assert [Shard(0, 3).owns(p) for p in pids] == [Shard(0, 3).owns(p) for p in pids]
    assert Shard.parse("auto/4", {"JOB_COMPLETION_INDEX": "2"}) == Shard(2, 4)
    assert Shard.parse("auto/4", {"AWS_BATCH_JOB_ARRAY_INDEX": "3"}) == Shard(3, 4)
    for bad in ("3", "4/4", "x/2", "auto/2"):
        with pytest.raises(ValueError, match="--shard"):
            Shard.parse(bad, {})


def test_n_shard_processes_compact_every_partition_once_and_never_move_readiness(
    moto_server: str, bucket_factory: Any, tmp_path: Path
) -> None:
    raw_bucket, compact_bucket = bucket_factory(), bucket_factory()
    raw = make_s3_store(moto_server, raw_bucket)
    pids = []
    for symbol in SYMBOLS:
        for stream in ("trade", "bbo"):
            spec = PartitionSpec(stream=stream, symbol=symbol, date=DAYS[-1], files=2,
                                 rows_per_file=30)
            put_partition(raw, spec, tmp_path)
            pids.append(spec.partition)
    n = 3
    with S3Proxy(moto_server) as proxy:
        env = cli_environment(proxy.endpoint, raw_bucket, compact_bucket)
        procs = [subprocess.Popen(
            [sys.executable, str(REPO / "run.py"), "--mode", "backfill", "--date-from", DAYS[-1],
             "--today", TODAY, "--shard", f"auto/{n}", "--tmp-dir", str(tmp_path / "tmp")],
            env={**env, "JOB_COMPLETION_INDEX": str(k)}, cwd=tmp_path, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE) for k in range(n)]
        outs = [p.communicate(timeout=180) for p in procs]
        uploads = Counter(unquote(s.path.split("/", 2)[2]) for s in proxy.requests
                          if s.method == "PUT" and s.path.endswith("/data.parquet"))
    for proc, (_out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, err
    assert uploads == Counter({p.data_key: 1 for p in pids})  # exactly once, all of them
    compact = make_s3_store(moto_server, compact_bucket)
    doc = json.loads(compact.get_bytes(STATE_KEY)[0])
    assert {k: e["status"] for k, e in doc["partitions"].items()} == {
        p.state_key: "success" for p in pids}  # no state update lost
    assert doc["last_compacted_date"] is None
    assert list(compact.list_objects(LOCKS_PREFIX)) == []


# ------------------------------------------------------------------ backfill without a range


def test_a_backfill_without_a_range_takes_the_newest_days_not_yet_compacted(
    lake: tuple[Path, Path], tmp_path: Path
) -> None:
    r = _cli(lake, tmp_path, "--mode", "backfill", "--date-from", DAYS[2])
    assert r.returncode == 0, r.stderr
    r = _cli(lake, tmp_path, "--mode", "backfill", "--max-days", "2")
    assert r.returncode == 0, r.stderr
    assert f"backfill run over {DAYS[3]}, {DAYS[1]}:" in r.stdout  # newest first, 1123 done
    entries = _state(lake[1])["partitions"]
    assert {k.rsplit("/", 1)[1] for k in entries} == {DAYS[1], DAYS[2], DAYS[3]}
    assert _state(lake[1])["last_compacted_date"] is None


def test_symbols_file_and_max_partitions_narrow_the_plan(
    lake: tuple[Path, Path], tmp_path: Path
) -> None:
    listing = tmp_path / "symbols.txt"
    listing.write_text("# the run's symbols\nETHUSDT\n\n")
    r = _cli(lake, tmp_path, "--mode", "backfill", "--date-from", DAYS[0], "--date-to",
             DAYS[-1], "--symbols-file", str(listing), "--max-partitions", "3", "--dry-run")
    assert r.returncode == 0, r.stderr
    compacting = [line for line in r.stdout.splitlines() if line.startswith("  compact ")]
    capped = [line for line in r.stdout.splitlines() if "beyond --max-partitions" in line]
    assert len(compacting) == 3 and len(capped) == 1
    assert all("/ethusdt/" in line for line in compacting + capped)
    empty = tmp_path / "none.txt"
    empty.write_text("# nothing\n")
    r = _cli(lake, tmp_path, "--symbols-file", str(empty))
    assert r.returncode == 2 and "--symbols-file" in r.stderr and "Traceback" not in r.stderr


def test_a_capped_run_never_moves_readiness(lake: tuple[Path, Path]) -> None:
    raw, compact = LocalStore(lake[0]), LocalStore(lake[1])
    state = StateStore(compact)
    plan = build_plan(raw, compact, state, PlanOptions(
        mode=Mode.CATCH_UP, today=date(2026, 11, 25), max_partitions=1))
    assert plan.ready_days == []
    assert [p.reason for p in plan.partitions].count(Reason.CAPPED) == 1  # 2 partitions
    assert sum(p.action is Action.COMPACT for p in plan.partitions) == 1


# ------------------------------------------------------------------ cleanup


def test_cleanup_is_a_dry_run_until_apply_then_removes_and_holds_readiness_back(
    lake: tuple[Path, Path], tmp_path: Path
) -> None:
    raw, compact = lake
    first = _cli(lake, tmp_path, "--mode", "backfill", "--date-from", DAYS[0], "--date-to",
                 DAYS[-1])
    assert first.returncode == 0, first.stdout + first.stderr
    state = StateStore(LocalStore(compact))
    state.advance_last_compacted(DAYS[-1])
    state.flush()
    raw_before = store_listing(LocalStore(raw))
    compact_before = store_listing(LocalStore(compact))

    dry = _cli(lake, tmp_path, "--mode", "cleanup", "--date-from", DAYS[1], "--date-to",
               DAYS[2], "--symbols", "btcusdt")
    assert dry.returncode == 0, dry.stderr
    assert "would remove trade" not in dry.stdout
    assert dry.stdout.count("  would remove ") == 2 and "add --apply" in dry.stdout
    assert store_listing(LocalStore(compact)) == compact_before

    done = _cli(lake, tmp_path, "--mode", "cleanup", "--date-from", DAYS[1], "--date-to",
                DAYS[2], "--symbols", "btcusdt", "--apply")
    assert done.returncode == 0, done.stderr
    assert f"last_compacted_date: {DAYS[-1]} -> {DAYS[0]}" in done.stdout
    doc = _state(compact)
    assert doc["last_compacted_date"] == DAYS[0]
    gone = {f"binance/trade/btcusdt/{d}" for d in DAYS[1:3]}
    assert not gone & set(doc["partitions"]) and len(doc["partitions"]) == 6
    for key in gone:
        pid = PartitionId(*key.split("/"))
        assert not (compact / pid.meta_key).exists() and not (compact / pid.data_key).exists()
    assert store_listing(LocalStore(raw)) == raw_before  # never touches raw
    assert list(LocalStore(compact).list_objects(LOCKS_PREFIX)) == []
    # the next catch-up compacts them again and readiness catches up
    again = _cli(lake, tmp_path)
    assert again.returncode == 0, again.stderr
    assert _state(compact)["last_compacted_date"] == DAYS[-1]


# ------------------------------------------------------------------ verify


#: An older compactor, which took footer statistics on trust for constant columns.
_TRUSTING = """
import sys
from compressor.merge import reading as merge_reading
merge_reading._check_constant = lambda *args: None
from compressor.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_verify_deep_compares_the_published_columns_with_the_raw_files(
    lake: tuple[Path, Path], tmp_path: Path
) -> None:
    """A raw file whose statistics say `exchange` is constant while one row is not: an
    output published with the statistics' value on every row passes every other check
    (sha256, rows, order, seq); only comparing with the raw rows finds it."""
    raw, compact = lake
    pid = PartitionId("binance", "trade", SYMBOLS[0], DAYS[1])
    spec = PartitionSpec(stream="trade", symbol=SYMBOLS[0], date=DAYS[1], files=2,
                         rows_per_file=40)
    victim = sorted((raw / pid.prefix).glob("*.parquet"))[1]
    _lying_statistics(victim, raw_table(spec, 1), "exchange", "plain")
    trusting = subprocess.run(
        [sys.executable, "-c", _TRUSTING, "--raw", str(raw), "--compact", str(compact),
         "--today", TODAY, "--tmp-dir", str(tmp_path / "tmp"), "--mode", "backfill",
         "--date-from", DAYS[0], "--date-to", DAYS[-1]],
        env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path, capture_output=True,
        text=True, timeout=180)
    assert trusting.returncode == 0, trusting.stderr
    assert set(pq.read_table(compact / pid.data_key).column("exchange").to_pylist()) == {
        "binance"}  # one row's value was lost
    store = LocalStore(compact)
    before = store_listing(store)

    deep = _cli(lake, tmp_path, "--mode", "verify", "--date-from", DAYS[0], "--date-to",
                DAYS[-1], "--deep")
    assert deep.returncode == 1, deep.stdout + deep.stderr
    problems = [line for line in deep.stdout.splitlines() if ": " in line
                and not line.startswith("verify (")]
    assert problems == [f"{pid.state_key}: column 'exchange' differs from the raw files'"]
    assert "8 partitions checked, 1 problems" in deep.stdout
    assert store_listing(store) == before  # read-only


def test_verify_finds_mismatched_pairs_hand_edits_and_state_disagreements(
    lake: tuple[Path, Path], tmp_path: Path
) -> None:
    raw, compact = lake
    assert _cli(lake, tmp_path, "--mode", "backfill", "--date-from", DAYS[0], "--date-to",
                DAYS[-1]).returncode == 0
    clean = _cli(lake, tmp_path, "--mode", "verify", "--date-from", DAYS[0], "--date-to",
                 DAYS[-1], "--deep")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "8 partitions checked, 0 problems" in clean.stdout

    store = LocalStore(compact)
    a, b, c = (PartitionId("binance", "trade", sym, day) for sym, day in
               (("btcusdt", DAYS[0]), ("ethusdt", DAYS[1]), ("btcusdt", DAYS[2])))
    store.put_bytes(a.data_key, b"bit rot")  # another data.parquet than meta.json names
    meta = Meta.from_bytes(store.get_bytes(b.meta_key)[0], b.meta_key)
    edited = Meta(**{**meta.__dict__, "sha256": "f" * 64})  # a hand edit of meta.json
    store.put_bytes(b.meta_key, edited.to_bytes())
    state = StateStore(store)
    entry = state.get(c)
    assert entry is not None
    from dataclasses import replace
    state.record(c, replace(entry, rows=entry.rows + 1))
    state.flush()
    before = store_listing(store)

    cheap = _cli(lake, tmp_path, "--mode", "verify", "--date-from", DAYS[0], "--date-to",
                 DAYS[-1])
    assert cheap.returncode == 1
    lines = cheap.stdout.splitlines()
    assert any(line.startswith(f"{a.state_key}: meta.json names data.parquet") for line in lines)
    assert any(line.startswith(f"{c.state_key}: the state says") for line in lines)
    assert not any(line.startswith(b.state_key) for line in lines)  # only --deep sees it
    deep = _cli(lake, tmp_path, "--mode", "verify", "--date-from", DAYS[0], "--date-to",
                DAYS[-1], "--deep")
    assert deep.returncode == 1
    assert f"{b.state_key}: data.parquet has another sha256" in deep.stdout
    assert store_listing(store) == before  # read-only


def test_days_before_the_first_run_are_never_called_ready_or_clean(
    lake: tuple[Path, Path], tmp_path: Path
) -> None:
    """A first run on an empty state compacts yesterday only and sets last_compacted_date
    to it (docs/operations.md "compacted/_state.json"): the earlier raw days hold nothing,
    yet readers' rule calls them ready. The report and verify (cheap and deep) say what they
    are and how to backfill them, and verify counts them as problems (exit 1)."""
    raw, compact = lake
    first = _cli(lake, tmp_path)  # catch-up, fresh start
    assert first.returncode == 0
    assert _state(compact)["last_compacted_date"] == DAYS[-1]
    older = DAYS[:-1]
    assert (f"the 3 raw days before it ({DAYS[0]}..{DAYS[-2]}) are not compacted, yet readers "
            f"will take them as ready: backfill them: quantlab-compact --mode backfill "
            f"--date-from {DAYS[0]} --date-to {DAYS[-2]}") in first.stderr

    report = _cli(lake, tmp_path, "--quality-report", "--json", "--date-from", DAYS[0],
                  "--date-to", DAYS[-1])
    assert report.returncode == 0, report.stderr
    days = {d["day"]: d for d in json.loads(report.stdout)["days"]}
    assert (days[DAYS[-1]]["status"], days[DAYS[-1]]["ready"]) == ("ready", True)
    for day in older:
        assert (days[day]["status"], days[day]["ready"]) == ("not_compacted", False)
        assert days[day]["rows_change"] is None
        note = " ".join(days[day]["notes"])
        assert f"older than the first run (the first compacted day is {DAYS[-1]})" in note
        assert f"--mode backfill --date-from {day} --date-to {day}" in note
    text = _cli(lake, tmp_path, "--quality-report", "--date-from", DAYS[0], "--date-to",
                DAYS[-1]).stdout
    rows = {line[:8]: line for line in text.splitlines()}
    assert rows[DAYS[0]].split()[:2] == [DAYS[0], "no"]
    assert "not compacted, older than the first run" in rows[DAYS[0]]

    for deep in ((), ("--deep",)):
        verify = _cli(lake, tmp_path, "--mode", "verify", "--date-from", DAYS[0], "--date-to",
                      DAYS[-1], *deep)
        assert verify.returncode == 1, verify.stdout + verify.stderr
        lines = verify.stdout.splitlines()
        assert lines[-1].endswith(f"{len(older)} problems")
        for day, line in zip(older, lines, strict=False):
            assert line.startswith(f"{day}: 2 raw partitions, not compacted (older than the "
                                   "first run)"), line
            assert line.endswith(f"--mode backfill --date-from {day} --date-to {day}")

    assert _cli(lake, tmp_path, "--mode", "backfill", "--date-from", DAYS[0], "--date-to",
                older[-1]).returncode == 0
    late = PartitionSpec(stream="trade", symbol="solusdt", date=DAYS[1], files=2,
                         rows_per_file=40)
    put_partition(LocalStore(raw), late, tmp_path)  # a new partition on a ready day
    verify = _cli(lake, tmp_path, "--mode", "verify", "--date-from", DAYS[0], "--date-to",
                  DAYS[-1])
    assert verify.returncode == 1
    assert verify.stdout.splitlines()[:-1] == [
        f"{late.partition.state_key}: in raw, not compacted, yet last_compacted_date "
        f"{DAYS[-1]} covers its day; backfill it: quantlab-compact --mode backfill "
        f"--date-from {DAYS[1]} --date-to {DAYS[1]}"]
    report = _cli(lake, tmp_path, "--quality-report", "--json", "--date-from", DAYS[0],
                  "--date-to", DAYS[-1])
    assert [d["status"] for d in json.loads(report.stdout)["days"]] == ["ready"] * 4
