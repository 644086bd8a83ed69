"""Concurrency proof (issue 4): N runs of `run.py` started together on the same days.

N processes (2 and 4) run at once against the moto server, through the counting
proxy (tests/support/s3proxy.py). Whatever the interleaving:

- every partition is compacted exactly once: one data.parquet PUT per partition
  over all the runs, and its state entry says attempts == 1;
- every data.parquet is byte-identical to a single reference run's, and every
  meta.json agrees with it on everything that is not a timing figure;
- no state update is lost: every partition is `success` with the right rows,
  and last_compacted_date is where a single catch-up would put it;
- every run exits 0 and no lease is left behind.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import boto3
import pytest

from compressor.demo import PartitionSpec, file_bytes
from compressor.discovery import Partition, list_partition
from compressor.job import Job, Status
from compressor.layout import LOCKS_PREFIX, STATE_KEY, PartitionId
from compressor.lease import LeaseManager, LeaseOwner
from compressor.partition.compact import CompactSettings, compact_partition
from compressor.planning import Action, Mode, PlanOptions, build_plan
from compressor.state import StateStore
from compressor.storage import LocalStore, S3Store
from tests import jobworld
from tests.conftest import FlakyLocalStore, make_s3_store, put_partition
from tests.jobworld import JobWorld, spec, wait_for
from tests.support.s3proxy import S3Proxy
from tests.support.s3server import TEST_ACCESS_KEY, TEST_REGION, TEST_SECRET_KEY, cli_environment

REPO = Path(__file__).resolve().parents[1]
jw = jobworld.jw  # the fixture
TODAY = "20261125"
DAYS = ("20261123", "20261124")
PARTS = (("binance", "trade", "btcusdt"), ("okx", "bbo", "ethusdt"),
         ("bybit", "mark_price", "solusdt"))
#: meta.json keys that must equal the reference run's (the rest are timings and stamps).
META_MUST_MATCH = ("schema_version", "rows", "ts_event_min", "ts_event_max", "ordering_columns",
                   "sha256", "size_bytes", "source_files", "source_fingerprint", "stream_type",
                   "day_quality", "post_filter_version")


def _pids() -> list[PartitionId]:
    return [PartitionId(ex, st, sy, d) for d in DAYS for ex, st, sy in PARTS]


@dataclass
class Lake:
    """A raw bucket with DAYS x PARTS, and a single run's outputs to compare with."""

    endpoint: str
    raw_bucket: str
    reference_data: dict[str, bytes]
    reference_meta: dict[str, dict[str, Any]]


def _new_bucket(endpoint: str) -> str:
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=TEST_ACCESS_KEY,
                          aws_secret_access_key=TEST_SECRET_KEY, region_name=TEST_REGION)
    name = f"qlc-test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name)
    return name


def _run(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "run.py"), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=180)


def _outputs(store: S3Store) -> tuple[dict[str, bytes], dict[str, dict[str, Any]]]:
    data, metas = {}, {}
    for pid in _pids():
        if store.head(pid.meta_key) is not None:
            metas[pid.state_key] = json.loads(store.get_bytes(pid.meta_key)[0])
            data[pid.state_key] = store.get_bytes(pid.data_key)[0]
    return data, metas


@pytest.fixture(scope="module")
def lake(moto_server: str, tmp_path_factory: pytest.TempPathFactory) -> Lake:
    scratch = tmp_path_factory.mktemp("lake")
    raw_bucket = _new_bucket(moto_server)
    raw = make_s3_store(moto_server, raw_bucket)
    for day in DAYS:
        for n, (ex, st, sy) in enumerate(PARTS):
            put_partition(raw, PartitionSpec(exchange=ex, stream=st, symbol=sy, date=day,
                                             files=6, rows_per_file=80, seed=n), scratch)
    compact_bucket = _new_bucket(moto_server)
    env = cli_environment(moto_server, raw_bucket, compact_bucket)
    r = _run(env, scratch, "--mode", "backfill", "--date-from", DAYS[0], "--date-to", DAYS[-1],
             "--today", TODAY, "--tmp-dir", str(scratch / "tmp"))
    assert r.returncode == 0, r.stderr
    data, metas = _outputs(make_s3_store(moto_server, compact_bucket))
    assert set(metas) == {p.state_key for p in _pids()}
    return Lake(moto_server, raw_bucket, data, metas)


@pytest.fixture
def proxy(moto_server: str) -> Iterator[S3Proxy]:
    with S3Proxy(moto_server) as p:
        yield p


def _start_together(commands: list[list[str]], env: dict[str, str], cwd: Path
                    ) -> list[subprocess.CompletedProcess[str]]:
    """Start every command before waiting for any; their results in the same order."""
    procs = [subprocess.Popen([sys.executable, str(REPO / "run.py"), *cmd], env=env, cwd=cwd,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd in commands]
    results = []
    for cmd, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=180)
        results.append(subprocess.CompletedProcess(cmd, proc.returncode, out, err))
    return results


BACKFILL = ["--mode", "backfill", "--date-from", DAYS[0], "--date-to", DAYS[-1]]
CATCH_UP = ["--mode", "catch-up"]


@pytest.mark.parametrize("mix", ["backfill", "catch-up", "mixed"])
@pytest.mark.parametrize("n", [2, 4])
def test_n_runs_at_once_compact_each_partition_once_identically(
    lake: Lake, proxy: S3Proxy, tmp_path: Path, n: int, mix: str
) -> None:
    compact_bucket = _new_bucket(lake.endpoint)
    compact = make_s3_store(lake.endpoint, compact_bucket)
    if mix != "backfill":  # catch-up then covers exactly DAYS
        state = StateStore(compact)
        state.advance_last_compacted("20261122")
        state.flush()
    env = cli_environment(proxy.endpoint, lake.raw_bucket, compact_bucket)
    modes = {"backfill": [BACKFILL] * n, "catch-up": [CATCH_UP] * n,
             "mixed": [BACKFILL, CATCH_UP] * (n // 2)}[mix]
    # one shared tmp root, as on the VM: runs must not clean each other's work dirs;
    # four runs each run four partitions at once (--workers), two runs one at a time
    workers = "4" if n == 4 else "1"
    commands = [[*m, "--today", TODAY, "--tmp-dir", str(tmp_path / "tmp"), "--workers", workers]
                for m in modes]
    proxy.reset_counts()

    results = _start_together(commands, env, tmp_path)

    for r in results:
        assert r.returncode == 0, (r.args, r.stdout, r.stderr)
        assert "Traceback" not in r.stderr
    # exactly once: one upload of each data.parquet over all runs
    uploads = Counter(unquote(s.path.split("/", 2)[2]) for s in proxy.requests
                      if s.method in ("PUT", "POST") and s.path.endswith("/data.parquet")
                      and "partNumber" not in s.query)
    assert uploads == Counter({p.data_key: 1 for p in _pids()})
    # byte-identical to the single reference run
    data, metas = _outputs(compact)
    assert data == lake.reference_data
    for key, meta in metas.items():
        ref = lake.reference_meta[key]
        assert {k: meta.get(k) for k in META_MUST_MATCH} == {k: ref[k] for k in META_MUST_MATCH}
    # no state update lost
    doc = json.loads(compact.get_bytes(STATE_KEY)[0])
    entries = doc["partitions"]
    assert set(entries) == {p.state_key for p in _pids()}
    for key, entry in entries.items():
        assert entry["status"] == "success", (key, entry)
        assert entry["rows"] == lake.reference_meta[key]["rows"]
        assert entry["attempts"] == 1, (key, entry)
        assert entry["day_quality_post"] == lake.reference_meta[key]["day_quality"]
    expected_lcd = None if mix == "backfill" else DAYS[-1]
    assert doc["last_compacted_date"] == expected_lcd
    # every lease released
    assert list(compact.list_objects(LOCKS_PREFIX)) == []
    assert not list((tmp_path / "tmp").glob("qlc-part-*"))


# --------------------------------------------------------------------------- the job's side,
# deterministic: another run's lease and publish are played in-process on local stores.


@dataclass
class Local:
    raw: LocalStore
    compact: LocalStore
    settings: CompactSettings
    pids: list[PartitionId]


@pytest.fixture
def local(tmp_path: Path) -> Local:
    for name in ("raw", "compact"):
        (tmp_path / name).mkdir()
    raw = LocalStore(tmp_path / "raw")
    pids = []
    for n, (ex, st, sy) in enumerate(PARTS[:2]):
        spec = PartitionSpec(exchange=ex, stream=st, symbol=sy, date=DAYS[-1], files=3,
                             rows_per_file=40, seed=n)
        put_partition(raw, spec, tmp_path)
        pids.append(spec.partition)
    return Local(raw, LocalStore(tmp_path / "compact"),
                 CompactSettings(tmp_root=tmp_path / "work", download_workers=2), pids)


def _daily_job(local: Local, sleep: Callable[[float], None], **kw: Any) -> Job:
    state = StateStore(local.compact)
    plan = build_plan(local.raw, local.compact, state,
                      PlanOptions(mode=Mode.DAILY, today=date(2026, 11, 25)))
    assert [p.action for p in plan.partitions] == [Action.COMPACT] * 2
    leases = LeaseManager(local.compact, auto_renew=False)
    return Job(plan, local.raw, local.compact, state, local.settings, leases=leases,
               sleep=sleep, busy_poll_s=0.01, **kw)


def _other_run(local: Local, host: str | None = None) -> LeaseManager:
    owner = LeaseOwner(host or socket.gethostname(), os.getpid(), "other-run")
    return LeaseManager(local.compact, owner=owner, auto_renew=False)


def test_a_run_waits_for_a_local_holder_and_does_not_redo_its_work(local: Local) -> None:
    """Busy on a ready day, same host: wait; the holder publishes; count it done, unredone."""
    other = _other_run(local)
    held = other.acquire(local.pids[0])
    assert held is not None
    sleeps: list[float] = []

    def other_run_finishes(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 2:  # the holder publishes, then releases
            part = list_partition(local.raw, local.pids[0])
            compact_partition(part, local.raw, local.compact, local.settings,
                              fence=held.check_held)
            held.release()

    job = _daily_job(local, other_run_finishes)
    report = job.run()

    assert [o.status for o in report.outcomes] == [Status.UP_TO_DATE, Status.SUCCESS]
    assert len(sleeps) >= 2 and report.ok
    assert report.last_compacted_after == DAYS[-1]
    doc = json.loads(local.compact.get_bytes(STATE_KEY)[0])
    assert doc["last_compacted_date"] == DAYS[-1]
    assert {v["status"] for v in doc["partitions"].values()} == {"success"}


def test_a_run_compacts_a_partition_its_holder_gave_up(local: Local) -> None:
    """The holder releases without publishing (it failed): the waiting run compacts it."""
    other = _other_run(local)
    held = other.acquire(local.pids[0])
    assert held is not None
    job = _daily_job(local, lambda s: held.release())
    report = job.run()
    assert [o.status for o in report.outcomes] == [Status.SUCCESS, Status.SUCCESS]
    assert report.last_compacted_after == DAYS[-1]


def test_a_live_local_holder_is_waited_for_only_so_long(local: Local) -> None:
    other = _other_run(local)
    assert other.acquire(local.pids[0]) is not None
    sleeps: list[float] = []
    job = _daily_job(local, sleeps.append, busy_wait_s=0.3)
    report = job.run()
    assert [o.status for o in report.outcomes] == [Status.BUSY, Status.SUCCESS]
    assert sleeps and report.ok  # busy elsewhere is not an error
    assert report.last_compacted_after is None  # but the day is not done


def test_a_lease_of_another_host_is_left_at_once(local: Local) -> None:
    other = _other_run(local, host="some-other-host")
    assert other.acquire(local.pids[0]) is not None
    sleeps: list[float] = []
    report = _daily_job(local, sleeps.append).run()
    assert [o.status for o in report.outcomes] == [Status.BUSY, Status.SUCCESS]
    assert sleeps == [] and report.last_compacted_after is None


def test_a_stop_request_ends_the_wait(local: Local) -> None:
    other = _other_run(local)
    assert other.acquire(local.pids[0]) is not None
    stop = {"asked": False}

    def ask_stop(seconds: float) -> None:
        stop["asked"] = True

    job = _daily_job(local, ask_stop, should_stop=lambda: stop["asked"])
    report = job.run()
    assert report.stopped
    assert [o.status for o in report.outcomes] == [Status.NOT_RUN, Status.SUCCESS]
    assert report.last_compacted_after is None


def _late_file(local: Local, pid: PartitionId) -> None:
    extra = PartitionSpec(exchange=pid.exchange, stream=pid.stream, symbol=pid.symbol,
                          date=pid.date, files=1, rows_per_file=25, seed=7)
    local.raw.put_bytes(pid.prefix + "part-1795564799-999999.parquet", file_bytes(extra, 0))


def _publish_as_other_run(local: Local, listed: Partition) -> None:
    other = _other_run(local)
    held = other.acquire(listed.pid)
    assert held is not None
    compact_partition(listed, local.raw, local.compact, local.settings, fence=held.check_held)
    held.release()


def test_a_newer_listing_published_meanwhile_is_not_overwritten(local: Local) -> None:
    """We planned before a late raw file; another run compacted with it: leave its output."""
    pid = local.pids[0]
    job = _daily_job(local, lambda s: None)  # plans now, without the late file
    _late_file(local, pid)
    newer = list_partition(local.raw, pid)
    _publish_as_other_run(local, newer)

    report = job.run()

    assert [o.status for o in report.outcomes] == [Status.UP_TO_DATE, Status.SUCCESS]
    meta = json.loads(local.compact.get_bytes(pid.meta_key)[0])
    assert meta["source_fingerprint"] == newer.fingerprint and meta["source_files"] == 4


def test_an_older_listing_published_meanwhile_is_replaced(local: Local) -> None:
    """Another run compacted a listing older than ours: ours is published over it."""
    pid = local.pids[0]
    older = list_partition(local.raw, pid)
    _late_file(local, pid)
    job = _daily_job(local, lambda s: None)  # plans now, with the late file
    _publish_as_other_run(local, older)

    report = job.run()

    assert [o.status for o in report.outcomes] == [Status.SUCCESS, Status.SUCCESS]
    meta = json.loads(local.compact.get_bytes(pid.meta_key)[0])
    assert meta["source_fingerprint"] == list_partition(local.raw, pid).fingerprint
    assert meta["source_files"] == 4


@pytest.mark.parametrize("failing", ["raw listing", "meta.json read"])
def test_a_recheck_that_cannot_read_fails_and_never_publishes_the_older_listing(
    local: Local, failing: str
) -> None:
    """Another run published a newer listing; our re-check cannot read: fail, retryably."""
    raw, compact = FlakyLocalStore(local.raw.root), FlakyLocalStore(local.compact.root)
    local = replace(local, raw=raw, compact=compact)
    pid = local.pids[0]
    job = _daily_job(local, lambda s: None)  # plans now, without the late file
    _late_file(local, pid)
    newer = list_partition(local.raw, pid)
    _publish_as_other_run(local, newer)
    published = local.compact.get_bytes(pid.data_key)[0]
    if failing == "raw listing":
        raw.fail("list_objects", pid.prefix)
    else:
        compact.fail("get_bytes", pid.meta_key)

    report = job.run()

    assert [o.status for o in report.outcomes] == [Status.FAILED, Status.SUCCESS]
    assert "could not re-check meta.json" in (report.outcomes[0].error or "")
    assert not report.ok and report.last_compacted_after is None
    raw.clear()
    compact.clear()
    meta = json.loads(local.compact.get_bytes(pid.meta_key)[0])
    assert meta["source_fingerprint"] == newer.fingerprint and meta["source_files"] == 4
    assert local.compact.get_bytes(pid.data_key)[0] == published
    doc = json.loads(local.compact.get_bytes(STATE_KEY)[0])
    entry = doc["partitions"][pid.state_key]
    assert entry["status"] == "failed" and "could not re-check" in entry["error"]


# --------------------------------------------------------------------------- containers:
# same hostname, another PID namespace (a Kubernetes pod's containers, `docker run
# --hostname`), one temp volume. The second run is started in a PID namespace of its
# own with `unshare --pid --fork --mount-proc` (as root): the live run's pid is no
# process there, exactly as another container sees it.


def _unshare_works() -> bool:
    try:
        return subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", "true"],
                              capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.mark.skipif(not _unshare_works(), reason="needs unshare --pid (root)")
def test_a_run_in_another_pid_namespace_never_reaps_a_live_runs_lease_or_temp_dir(
    jw: JobWorld,
) -> None:
    import signal

    live_day, other_day = "20261124", "20261123"
    jw.add(spec(date=live_day, files=300, rows_per_file=20))
    jw.add(spec(date=other_day, files=2))
    tmp = jw.tmp / "shared"
    common = ["--mode", "backfill", "--today", TODAY, "--tmp-dir", str(tmp)]
    live = jw.popen(*common, "--date-from", live_day)
    try:
        # caught while it holds its lease and works in its temp dir
        wait_for(lambda: bool(jw.locks()) and bool(jw.tmp_leftovers(tmp)), 60,
                 "the live run's lease and temp dir", live)
        live.send_signal(signal.SIGSTOP)
        work_dirs, locks = jw.tmp_leftovers(tmp), jw.locks()
        lock_doc = json.loads(jw.compact.get_bytes(locks[0])[0])
        other = subprocess.run(
            ["unshare", "--pid", "--fork", "--mount-proc",
             *jw.argv(*common, "--date-from", other_day)],
            env=jw.env, cwd=jw.cwd, capture_output=True, text=True, timeout=120)
        assert other.returncode == 0, other.stderr
        assert jw.locks() == locks, "the live run's lease was reaped"
        assert json.loads(jw.compact.get_bytes(locks[0])[0]) == lock_doc
        assert jw.tmp_leftovers(tmp) == work_dirs, "the live run's temp dir was removed"
    finally:
        live.send_signal(signal.SIGCONT)
    done = jw.finish(live)
    assert done.code == 0, done.err
    assert {k: e["status"] for k, e in jw.entries().items()} == {
        spec(date=live_day).partition.state_key: "success",
        spec(date=other_day).partition.state_key: "success"}
    assert set(jw.outputs_of()) == set(jw.entries())
    assert jw.locks() == [] and jw.tmp_leftovers(tmp) == []


def test_backfills_with_four_workers_on_a_local_store_record_every_partition(
        tmp_path: Path) -> None:
    """Two backfills with 4 workers each at once, twice, on local directories: leases
    are created and released (their emptied directories pruned) side by side in the
    same parents, and every partition must still end with a `success` entry."""
    from compressor.demo import write_demo_lake

    raw, compact = tmp_path / "raw", tmp_path / "compact"
    compact.mkdir()
    pids = write_demo_lake(raw, DAYS, exchanges=("binance", "bybit"), streams=("trade", "bbo"),
                           symbols=("btcusdt", "ethusdt", "solusdt", "xrpusdt", "adausdt"),
                           files_per_partition=1, rows_per_file=10)
    env = {k: v for k, v in os.environ.items() if not k.startswith("S3_")}
    for _ in range(2):
        results = _start_together(
            [["--raw", str(raw), "--compact", str(compact), *BACKFILL, "--overwrite",
              "--workers", "4", "--today", TODAY, "--tmp-dir", str(tmp_path / f"tmp{n}")]
             for n in range(2)], env, tmp_path)
        for r in results:
            assert r.returncode == 0, r.stderr
            assert "could not take the partition lease" not in r.stderr
        state = json.loads((compact / STATE_KEY).read_bytes())
        assert {k: e["status"] for k, e in state["partitions"].items()} == {
            p.state_key: "success" for p in pids}
    assert not any((compact / LOCKS_PREFIX).rglob("*.lock"))
