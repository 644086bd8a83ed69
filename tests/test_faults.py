"""Issue 4, "Signals" and "Store faults": end to end, `python run.py` as a subprocess.

Signals: SIGTERM/SIGINT during the download and during the merge start no new
partition, abort the running one within 10 s, delete its temp files, release
its lease, record it `failed` ("interrupted") and exit 143/130; a second
signal exits at once, with no partial output visible. Store faults: a
fault-injecting proxy (tests/support/s3proxy.py) between the job and the moto server.

Every run uses known secret credentials and is searched for them (tests/jobworld.py).
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from compressor.demo import write_partition
from tests import jobworld
from tests.conftest import make_s3_store
from tests.jobworld import (
    DAY,
    SIGNALS,
    TODAY,
    JobWorld,
    slice_workers,
    spec,
    wait_for,
    with_userinfo,
)
from tests.support.s3proxy import ALL_FAULT_KINDS, FAULT_KINDS, S3Proxy

jw = jobworld.jw  # the fixture

#: Knobs that make a merge of a small partition take ~20 s (tiny batches, fan-in 2, spills).
SLOW_MERGE = {"MERGE_BATCH_SIZE": "16", "MAX_OPEN_FILES": "2"}
#: A partition whose files all span the day: the merge spills every file, then merges.
BIG = spec("btcusdt", stream="bbo", files=40, rows_per_file=5000, layout="spans_day")
SMALL = spec("ethusdt", exchange="okx")


def _assert_interrupted_cleanly(jw: JobWorld, interrupted: str, tmp_dir: Path) -> None:
    """Only the running partition has an entry (failed, interrupted); nothing else left."""
    entries = jw.entries()
    assert list(entries) == [interrupted]  # no new partition was started
    entry = entries[interrupted]
    assert (entry["status"], entry["error"]) == ("failed", "interrupted")
    assert jw.locks() == []  # the lease was released
    assert jw.outputs_of() == {}
    assert jw.tmp_leftovers(tmp_dir) == []  # its temp files are gone, right at exit


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_signal_during_download_stops_cleanly(jw: JobWorld, name: str) -> None:
    for day in ("20261123", DAY):
        jw.add(replace(BIG, date=day, files=4, rows_per_file=60))
        jw.add(replace(SMALL, date=day))
    tmp_dir = jw.tmp / "scratch"
    with S3Proxy(jw.moto) as proxy:
        proxy.delay = 1.0
        proxy.set_faults(1.0, ["delay"], ops=["GET"])  # every raw download stalls
        env = jw.env_with(S3_ENDPOINT=with_userinfo(proxy.endpoint),
                          S3_COMPACT_ENDPOINT=with_userinfo(jw.moto),
                          S3_READ_TIMEOUT="0.5", S3_MAX_ATTEMPTS="20")
        # one worker: exactly one partition is running when the signal arrives
        proc = jw.popen("--mode", "backfill", "--date-from", "20261123", "--date-to", DAY,
                        "--today", TODAY, "--tmp-dir", str(tmp_dir), "--workers", "1",
                        env=env)
        wait_for(lambda: proxy.counts().get("GET", 0) > 0, 30, "the first download", proc)
        proc.send_signal(SIGNALS[name])
        result = jw.finish(proc, timeout=30)
    assert result.code == 128 + SIGNALS[name], result.err
    assert result.seconds < 10
    assert name in result.err and "stopped by a signal" in result.out
    _assert_interrupted_cleanly(jw, "binance/bbo/btcusdt/20261123", tmp_dir)

    r = jw.run("--mode", "backfill", "--date-from", "20261123", "--date-to", DAY,
               "--today", TODAY, "--tmp-dir", str(tmp_dir))
    assert r.code == 0, r.err
    assert {e["status"] for e in jw.entries().values()} == {"success"}
    assert len(jw.outputs_of()) == 4


def _slow_merge_run(jw: JobWorld, *extra: str) -> tuple[object, Path]:
    """Start a daily run whose first partition (BIG, raw on a local dir) merges slowly."""
    raw_dir = jw.cwd.parent / "raw"
    if not raw_dir.exists():
        write_partition(BIG, raw_dir)
        write_partition(SMALL, raw_dir)
    tmp_dir = jw.tmp / "scratch"
    env = jw.env_with(**SLOW_MERGE)
    proc = jw.popen("--mode", "daily", "--today", TODAY, "--raw", str(raw_dir),
                    "--tmp-dir", str(tmp_dir), "--memory-budget", "1M", "--workers", "1",
                    *extra, env=env)
    return proc, tmp_dir


def _merging(tmp_dir: Path) -> bool:
    return any(tmp_dir.glob("qlc-part-*/spill/merge-*/spill-*"))


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_signal_during_merge_aborts_it_within_10s(jw: JobWorld, name: str) -> None:
    proc, tmp_dir = _slow_merge_run(jw)
    wait_for(lambda: _merging(tmp_dir), 30, "the merge to start", proc)  # type: ignore[arg-type]
    time.sleep(0.3)
    proc.send_signal(SIGNALS[name])  # type: ignore[attr-defined]
    result = jw.finish(proc, timeout=30)  # type: ignore[arg-type]
    assert result.code == 128 + SIGNALS[name], result.err
    assert result.seconds < 10, f"merge took {result.seconds:.1f}s to stop"
    assert f"{BIG.partition.state_key}: failed: interrupted" in result.err
    _assert_interrupted_cleanly(jw, BIG.partition.state_key, tmp_dir)

    r = jw.run("--mode", "daily", "--today", TODAY, "--raw", str(jw.cwd.parent / "raw"),
               "--tmp-dir", str(tmp_dir))
    assert r.code == 0, r.err
    assert set(jw.outputs_of()) == {BIG.partition.state_key, SMALL.partition.state_key}
    assert jw.state()["last_compacted_date"] == DAY


def test_second_signal_during_merge_exits_at_once(jw: JobWorld) -> None:
    proc, tmp_dir = _slow_merge_run(jw)
    wait_for(lambda: _merging(tmp_dir), 30, "the merge to start", proc)  # type: ignore[arg-type]
    proc.send_signal(signal.SIGINT)  # type: ignore[attr-defined]
    proc.send_signal(signal.SIGINT)  # type: ignore[attr-defined]
    result = jw.finish(proc, timeout=30)  # type: ignore[arg-type]
    assert result.code == 130, result.err
    assert result.seconds < 3
    assert jw.outputs_of() == {}  # nothing visible
    assert [o.key for o in jw.compact.list_objects("exchange=")] == []
    r = jw.run("--mode", "daily", "--today", TODAY, "--raw", str(jw.cwd.parent / "raw"),
               "--tmp-dir", str(tmp_dir))
    assert r.code == 0, r.err  # the dead run's lease (same host) is taken over at once
    assert jw.tmp_leftovers(tmp_dir) == []  # and its temp dir removed
    assert set(jw.outputs_of()) == {BIG.partition.state_key, SMALL.partition.state_key}


def test_second_signal_during_publish_leaves_no_mismatched_pair(jw: JobWorld) -> None:
    """An --overwrite killed by a second SIGTERM while data.parquet uploads: the partition
    is invisible (old meta.json deleted, new one not yet put), never inconsistent."""
    jw.add(replace(SMALL, symbol="adausdt"))  # published first: its upload will stall
    jw.add(SMALL)
    assert jw.run("--mode", "daily", "--today", TODAY).code == 0
    before = jw.data_sha256()
    with S3Proxy(jw.moto) as proxy:
        proxy.delay = 20.0
        proxy.fail_next("delay", ops={"PUT"}, path_contains="/data.parquet")
        env = jw.env_with(S3_COMPACT_ENDPOINT=with_userinfo(proxy.endpoint),
                          S3_READ_TIMEOUT="30")
        # one worker: partitions publish in plan order, adausdt first
        proc = jw.popen("--mode", "daily", "--today", TODAY, "--overwrite", "--workers", "1",
                        env=env)
        wait_for(lambda: proxy.fault_counts["delay"] == 1, 30, "the data upload", proc)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert proc.poll() is None  # the first signal lets the upload go on
        proc.send_signal(signal.SIGTERM)
        result = jw.finish(proc, timeout=10)
    assert result.code == 143, result.err
    assert result.seconds < 3
    metas = jw.outputs_of()  # every visible meta.json matches its data.parquet
    assert set(metas) == {"okx/trade/ethusdt/20261124"}  # adausdt: invisible, not mismatched
    assert jw.data_sha256() == before  # the interrupted upload never landed
    r = jw.run("--mode", "daily", "--today", TODAY)
    assert r.code == 0, r.err
    assert jw.data_sha256() == before
    assert len(jw.outputs_of()) == 2


# --------------------------------------------------------------------------- store faults


def _two_days(jw: JobWorld) -> None:
    for day in ("20261123", DAY):
        jw.add(replace(SMALL, date=day))
        jw.add(replace(SMALL, date=day, exchange="bybit", stream="bbo", files=6))


def test_a_quarter_of_requests_failing_still_gives_identical_bytes(jw: JobWorld) -> None:
    """503 SlowDown, 500, resets, read timeouts, and writes applied whose reply is lost, on
    25 % of all requests (raw and compact): retried with backoff; the day completes,
    byte-identical to a fault-free run."""
    jw.add(replace(SMALL, files=3))
    jw.add(replace(SMALL, exchange="bybit", stream="bbo", files=3))
    args = ("--mode", "daily", "--today", TODAY)
    assert jw.run(*args).code == 0  # the fault-free reference, into the first compact bucket
    expected = jw.data_sha256()
    assert len(expected) == 2
    faulty_bucket = jw.compact.bucket + "-f"
    faulty = make_s3_store(jw.moto, faulty_bucket)
    faulty._client.create_bucket(Bucket=faulty_bucket)
    jw.extra_stores.append(faulty)
    with S3Proxy(jw.moto) as proxy:
        proxy.set_faults(0.25, ALL_FAULT_KINDS, seed=10, delay=0.6)
        env = jw.env_with(S3_ENDPOINT=with_userinfo(proxy.endpoint),
                          S3_COMPACT_BUCKET=faulty_bucket, S3_MAX_ATTEMPTS="10",
                          S3_READ_TIMEOUT="0.4", S3_CONNECT_TIMEOUT="1")
        result = jw.run(*args, env=env)
        faults = dict(proxy.fault_counts)
    assert result.code == 0, result.err
    assert set(faults) == set(ALL_FAULT_KINDS), faults  # every kind really happened
    assert jw.data_sha256(faulty) == expected  # byte-identical to the fault-free run
    assert len(jw.outputs_of(faulty)) == 2
    state = json.loads(faulty.get_bytes("compacted/_state.json")[0])
    assert {e["status"] for e in state["partitions"].values()} == {"success"}
    assert state["last_compacted_date"] == DAY


def test_too_many_faults_fail_partitions_retryably_then_converge(jw: JobWorld) -> None:
    _two_days(jw)
    with S3Proxy(jw.moto) as proxy:
        proxy.set_faults(1.0, FAULT_KINDS, seed=1, delay=0.6, ops=["GET"])  # raw downloads
        env = jw.env_with(S3_ENDPOINT=with_userinfo(proxy.endpoint),
                          S3_COMPACT_ENDPOINT=with_userinfo(jw.moto),
                          S3_MAX_ATTEMPTS="2", S3_READ_TIMEOUT="0.3", S3_CONNECT_TIMEOUT="1")
        result = jw.run("--today", TODAY, "--mode", "backfill", "--date-from", "20261123",
                        "--date-to", DAY, env=env)
    assert result.code == 1, result.err
    entries = jw.entries()
    assert len(entries) == 4
    assert {e["status"] for e in entries.values()} == {"failed"}  # retryable, never quarantined
    assert "quarantined" not in result.out + result.err
    for key, entry in entries.items():
        assert "\n" not in entry["error"] and "after 2 attempts" in entry["error"]
        assert "failed_key" not in entry
        # one clear line per failed partition, in the log and in the report
        assert len([x for x in result.err_lines if f"{key}: failed:" in x]) == 1
        assert len([x for x in result.out.splitlines() if f"failed: {key}:" in x]) == 1
    assert "Traceback" not in result.err
    assert jw.outputs_of() == {} and jw.locks() == []
    r = jw.run("--today", TODAY, "--mode", "backfill", "--date-from", "20261123",
               "--date-to", DAY)
    assert r.code == 0, r.err
    assert {e["status"] for e in jw.entries().values()} == {"success"}
    assert len(jw.outputs_of()) == 4


def test_verification_polls_the_stop_request(tmp_path: Path) -> None:
    """After the merge, the re-read of a big output is abortable too (issue 4: within 10 s)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from compressor.merge import MergeAborted
    from compressor.partition.verify import verify_output

    path = tmp_path / "out.parquet"
    n = 600_000
    pq.write_table(pa.table({"ts_event": pa.array(range(n), pa.int64()),
                             "seq": pa.array(range(n), pa.int64())}), path)
    assert verify_output(path, n).rows == n
    polls: list[int] = []

    def stop_on_second_poll() -> bool:
        polls.append(1)
        return len(polls) >= 2

    with pytest.raises(MergeAborted):
        verify_output(path, n, stop_on_second_poll)
    assert len(polls) == 2


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="slice processes need two cores")
def test_a_plan_without_sliced_merges_stops_the_spare_before_compacting(jw: JobWorld) -> None:
    """docs/guarantees.md "How a run works": the slice process started before the plan
    is stopped as soon as the plan shows no merge that would use it."""
    marker = f"QLC_TEST_{uuid.uuid4().hex}"
    raw_dir = jw.cwd.parent / "raw"
    write_partition(BIG, raw_dir)
    write_partition(SMALL, raw_dir)
    tmp_dir = jw.tmp / "scratch"
    proc = jw.popen("--mode", "daily", "--today", TODAY, "--raw", str(raw_dir),
                    "--tmp-dir", str(tmp_dir), "--memory-budget", "1M", "--workers", "1",
                    env=jw.env_with(MERGE_SPARE_SLICES=None, **{marker: "1"}))
    wait_for(lambda: any(tmp_dir.rglob("merge-*")), 30, "the first merge", proc)
    assert slice_workers(marker) == []
    result = jw.finish(proc, timeout=60)
    assert result.code == 0, result.err
    assert set(jw.outputs_of()) == {BIG.partition.state_key, SMALL.partition.state_key}


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="slice processes need two cores")
@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_signal_to_every_process_during_a_sliced_merge(jw: JobWorld, name: str) -> None:
    """Ctrl-C in a terminal and `systemctl stop` signal the job and its slice processes
    alike: the job still stops as "interrupted", and no slice process is left."""
    marker = f"QLC_TEST_{uuid.uuid4().hex}"
    raw_dir = jw.cwd.parent / "raw"
    write_partition(BIG, raw_dir)
    write_partition(SMALL, raw_dir)
    tmp_dir = jw.tmp / "scratch"
    env = jw.env_with(**SLOW_MERGE, MERGE_PARALLEL_MIN_FILES="2", **{marker: "1"})
    proc = jw.popen("--mode", "daily", "--today", TODAY, "--raw", str(raw_dir),
                    "--tmp-dir", str(tmp_dir), "--memory-budget", "1M", "--workers", "1",
                    env=env)
    # the run's spare slice process starts before the plan: wait for its job
    wait_for(lambda: any(tmp_dir.rglob("slice-*.json")), 30, "the slice process", proc)
    time.sleep(0.3)
    for pid in [proc.pid, *slice_workers(marker)]:
        os.kill(pid, SIGNALS[name])
    result = jw.finish(proc, timeout=30)
    assert result.code == 128 + SIGNALS[name], result.err
    assert f"{BIG.partition.state_key}: failed: interrupted" in result.err
    _assert_interrupted_cleanly(jw, BIG.partition.state_key, tmp_dir)
    assert slice_workers(marker) == []

    r = jw.run("--mode", "daily", "--today", TODAY, "--raw", str(raw_dir),
               "--tmp-dir", str(tmp_dir), env=jw.env_with(MERGE_PARALLEL_MIN_FILES="2"))
    assert r.code == 0, r.err
    assert set(jw.outputs_of()) == {BIG.partition.state_key, SMALL.partition.state_key}
