"""The bench: its lake, the reference runs the trials are compared with, the comparison,
and starting and waiting for runs."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.chaos.lake import (
    BEFORE,
    DAYS,
    DEFAULT_LEASE_TTL_S,
    FAULTS,
    META_MUST_MATCH,
    MULTIPART_THRESHOLD,
    REPO,
    RUN_TIMEOUT_S,
    TODAY,
    Bucket,
    _pids,
    _spec,
    new_bucket,
)
from bench.chaos.proxy import KillingProxy
from bench.chaos.report import Totals
from bench.chaos.skew import HOST_SHIM, skew_environment
from compressor.demo import (
    file_bytes,
    file_names,
    write_partition,
)
from compressor.layout import LOCKS_PREFIX, STATE_KEY, PartitionId
from compressor.lease import LeaseRecord
from compressor.state import StateCorruptError, StateStore, parse_document
from compressor.storage import S3Store
from compressor.storage.base import normalize_etag
from tests.support.s3server import (
    TEST_ACCESS_KEY,
    TEST_REGION,
    TEST_SECRET_KEY,
    cli_environment,
)

# --------------------------------------------------------------------------- the bench


@dataclass
class Reference:
    data: dict[str, bytes]
    meta: dict[str, dict[str, Any]]
    last_compacted_date: str | None
    bucket: Bucket


@dataclass
class Calibration:
    #: from the start of the process to its first S3 request, and to its exit
    first_request_s: float
    seconds: float
    kinds: Counter[str]



class Bench:
    """What every trial shares: the raw lake, the references, the final comparison."""

    def __init__(self, endpoint: str, work: Path, rng: random.Random, verbose: bool, *,
                 files: int = 6, rows: int = 80, lease_ttl_s: float = DEFAULT_LEASE_TTL_S,
                 faults: tuple[str, ...] = FAULTS,
                 scenarios: tuple[str, ...] | None = None,
                 faketime: str | None = None, keep_all: bool = False) -> None:
        self.endpoint = endpoint
        self.work = work
        self.rng = rng
        #: for choices made on what a trial found (leftover leases...): the plan of every
        #: trial (kind, scenario, moment, ...) depends on the seed alone
        self.found_rng = random.Random(rng.random())
        self.verbose = verbose
        self.files = files
        self.rows = rows
        self.lease_ttl_s = lease_ttl_s
        self.faults = faults
        self.scenarios = scenarios
        self.faketime = faketime
        self.keep_all = keep_all
        self.raw = new_bucket(endpoint)
        self.calibrations: dict[tuple[str, bool], Calibration] = {}
        self.totals = Totals(lease_ttl_s=lease_ttl_s)
        self.reference: Reference | None = None
        #: partition state_key -> the reference with one late raw file in that partition
        self.late_references: dict[str, Reference] = {}
        self._deck: list[str] = []

    # -- setup -------------------------------------------------------------------

    def write_lake(self, files: int | None = None, rows: int | None = None) -> None:
        self.files, self.rows = files or self.files, rows or self.rows
        store = S3Store(self.raw.name, endpoint_url=self.endpoint, access_key=TEST_ACCESS_KEY,
                        secret_key=TEST_SECRET_KEY, region=TEST_REGION)
        gen = self.work / "gen"
        for pid in _pids():
            spec = _spec(pid, self.files, self.rows)
            for path in write_partition(spec, gen):
                store.put_file(spec.partition.prefix + path.name, path)
        shutil.rmtree(gen)

    def late_file(self, pid: PartitionId) -> tuple[str, bytes]:
        """A raw file that arrives late in `pid`: the next file the collector would write."""
        spec = _spec(pid, self.files + 1, self.rows)
        return pid.prefix + file_names(spec)[-1], file_bytes(spec, self.files)

    def raw_copy(self) -> Bucket:
        bucket = new_bucket(self.endpoint)
        bucket.copy_from(self.raw)
        return bucket

    def env(self, compact: Bucket, endpoint: str | None = None, multipart: bool = False, *,
            raw: Bucket | None = None, ttl_s: float | None = None, skew_s: float | None = None,
            host: str | None = None) -> dict[str, str]:
        env = cli_environment(endpoint or self.endpoint, (raw or self.raw).name, compact.name)
        if multipart:
            env["S3_MULTIPART_THRESHOLD"] = MULTIPART_THRESHOLD
        if ttl_s is not None:
            env["QLC_LEASE_TTL_S"] = f"{ttl_s:g}"
        if skew_s is not None:
            assert self.faketime is not None
            env.update(skew_environment(self.faketime, skew_s))
        if host is not None:
            env["QLC_CHAOS_HOST"] = host
        return env

    def command(self, scenario: str, tmp: Path, rerun: bool = False,
                host: str | None = None) -> list[str]:
        if scenario == "overwrite":
            mode = ["--mode", "backfill", "--date-from", DAYS[0], "--date-to", DAYS[-1]]
            if not rerun:
                mode.append("--overwrite")
        else:
            mode = ["--mode", "catch-up"]
        python = [sys.executable] if host is None else [sys.executable, "-c", HOST_SHIM]
        return [*python, str(REPO / "run.py"), *mode, "--today", TODAY, "--tmp-dir", str(tmp)]

    def prepare(self, scenario: str) -> Bucket:
        """A compact bucket in the scenario's starting state."""
        bucket = new_bucket(self.endpoint)
        if scenario == "overwrite":
            assert self.reference is not None
            bucket.copy_from(self.reference.bucket)
        else:
            store = S3Store(bucket.name, endpoint_url=self.endpoint, access_key=TEST_ACCESS_KEY,
                            secret_key=TEST_SECRET_KEY, region=TEST_REGION)
            state = StateStore(store)
            state.advance_last_compacted(BEFORE)
            state.flush()
        return bucket

    def _reference_run(self, raw: Bucket, what: str) -> Reference:
        bucket = self.prepare("fresh")
        tmp = self.work / "reference-tmp"
        proc = subprocess.run(self.command("fresh", tmp), env=self.env(bucket, raw=raw),
                              cwd=self.work, capture_output=True, timeout=RUN_TIMEOUT_S)
        if proc.returncode != 0:
            raise SystemExit(f"{what} run failed ({proc.returncode}):\n"
                             f"{proc.stderr.decode()[-3000:]}")
        data, meta = {}, {}
        for pid in _pids():
            got_meta, got_data = bucket.get(pid.meta_key), bucket.get(pid.data_key)
            if got_meta is None or got_data is None:
                raise SystemExit(f"{what} run did not publish {pid.state_key}")
            meta[pid.state_key] = json.loads(got_meta[0])
            data[pid.state_key] = got_data[0]
        got_state = bucket.get(STATE_KEY)
        assert got_state is not None
        lcd = parse_document(got_state[0])["last_compacted_date"]
        if lcd != DAYS[-1]:
            raise SystemExit(f"{what} run left last_compacted_date {lcd}, not {DAYS[-1]}")
        return Reference(data, meta, lcd, bucket)

    def make_reference(self) -> None:
        self.reference = self._reference_run(self.raw, "reference")

    def late_reference(self, pid: PartitionId) -> Reference:
        """The reference for a raw lake with `late_file(pid)` added (made once per pid)."""
        if pid.state_key not in self.late_references:
            raw = self.raw_copy()
            raw.put(*self.late_file(pid))
            ref = self._reference_run(raw, f"reference with a late file in {pid.state_key}")
            base = self.reference
            assert base is not None
            for other in _pids():  # a late file changes its own partition only
                if other != pid and ref.data[other.state_key] != base.data[other.state_key]:
                    raise SystemExit(f"a late file in {pid.state_key} changed {other.state_key}")
            if ref.data[pid.state_key] == base.data[pid.state_key]:
                raise SystemExit(f"the late file did not change {pid.state_key}")
            self.late_references[pid.state_key] = ref
        return self.late_references[pid.state_key]

    def calibrate(self, scenario: str, multipart: bool, proxy: KillingProxy) -> Calibration:
        """An unkilled run of the scenario through the proxy: its duration and requests.

        With multipart uploads each data.parquet (one part here) takes three requests
        (create, part, complete) instead of one PUT: derived, not run again.
        """
        key = (scenario if scenario != "pair" else "fresh", False)
        if multipart:
            single = self.calibrate(scenario, False, proxy)
            kinds = Counter(single.kinds)
            kinds["data"] *= 3
            return Calibration(single.first_request_s, single.seconds, kinds)
        if key not in self.calibrations:
            bucket = self.prepare(key[0])
            tmp = self.work / f"calibrate-{key[0]}-{int(multipart)}"
            proxy.arm(None, None)
            started = time.monotonic()
            proc = subprocess.run(self.command(key[0], tmp),
                                  env=self.env(bucket, proxy.endpoint, multipart),
                                  cwd=self.work, capture_output=True, timeout=RUN_TIMEOUT_S)
            seconds = time.monotonic() - started
            if proc.returncode != 0:
                raise SystemExit(f"calibration run failed:\n{proc.stderr.decode()[-3000:]}")
            problems = self.check_final(bucket, self.expected_lcd(key[0]), tmp)
            if problems:
                raise SystemExit(f"calibration run diverged: {problems}")
            assert proxy.first_request_at is not None
            first = proxy.first_request_at - started
            self.calibrations[key] = Calibration(first, seconds, Counter(proxy.kinds))
            self.log(f"calibrated {key[0]}: first request after {first:.2f}s, exit after "
                     f"{seconds:.2f}s, {dict(proxy.kinds)}")
        return self.calibrations[key]

    def expected_lcd(self, scenario: str) -> str | None:
        assert self.reference is not None
        return self.reference.last_compacted_date

    def log(self, text: str) -> None:
        if self.verbose:
            print(text, flush=True)

    # .. processes ................................................................

    def _spawn(self, cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        log.mkdir(parents=True, exist_ok=True)
        with open(log / "stdout", "wb") as out, open(log / "stderr", "wb") as err:
            return subprocess.Popen(cmd, env=env, cwd=log, stdout=out, stderr=err)

    def _wait(self, proc: subprocess.Popen[bytes], timeout: float = RUN_TIMEOUT_S) -> int:
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return -999

    # -- the final comparison --------------------------------------------------------

    def check_final(self, bucket: Bucket, lcd: str | None, tmp: Path | None,
                    ref: Reference | None = None, *,
                    leases_of_dead: int | None = None) -> list[str]:
        """Differences from the reference (`ref`, default the plain one); leases held by
        the process `leases_of_dead` (a killed run) are not counted as left behind."""
        ref = ref or self.reference
        assert ref is not None
        problems = []
        metas = sorted(k for k in bucket.keys("exchange=") if k.endswith("/meta.json"))
        if metas != sorted(p.meta_key for p in _pids()):
            problems.append(f"published meta.json set differs: {metas}")
        for pid in _pids():
            key = pid.state_key
            got_meta, got_data = bucket.get(pid.meta_key), bucket.get(pid.data_key)
            if got_data is None or got_data[0] != ref.data[key]:
                problems.append(f"{pid.data_key}: not byte-identical to the reference")
            if got_meta is None:
                continue
            meta = json.loads(got_meta[0])
            for field_name in META_MUST_MATCH:
                if meta.get(field_name) != ref.meta[key][field_name]:
                    problems.append(f"{pid.meta_key}: {field_name} differs from the reference")
            data_etag = meta.get("data_etag")
            if got_data is not None and data_etag is not None and (
                    normalize_etag(data_etag) != got_data[1]):
                problems.append(f"{pid.meta_key}: data_etag {data_etag} but data.parquet is "
                                f"{got_data[1]}")
        got_state = bucket.get(STATE_KEY)
        if got_state is None:
            return [*problems, "no _state.json"]
        try:
            doc = parse_document(got_state[0])
        except StateCorruptError as exc:
            return [*problems, f"_state.json does not parse: {exc}"]
        if doc["last_compacted_date"] != lcd:
            problems.append(f"last_compacted_date {doc['last_compacted_date']}, expected {lcd}")
        entries = doc["partitions"]
        if set(entries) != {p.state_key for p in _pids()}:
            problems.append(f"state partitions {sorted(entries)}")
        for pid in _pids():
            entry = entries.get(pid.state_key) or {}
            want = ref.meta[pid.state_key]
            if entry.get("status") != "success" or entry.get("rows") != want["rows"]:
                problems.append(f"state {pid.state_key}: {entry.get('status')} "
                                f"rows {entry.get('rows')}, expected success rows {want['rows']}")
            elif entry.get("day_quality_post") != want["day_quality"]:
                problems.append(f"state {pid.state_key}: day_quality_post differs")
        locks = [k for k in bucket.keys(LOCKS_PREFIX)
                 if leases_of_dead is None or _lease_pid(bucket, k) != leases_of_dead]
        if locks:
            problems.append(f"leases left behind after a clean run: {locks}")
        if tmp is not None:
            left = [p.name for p in tmp.glob("qlc-part-*")]
            if left:
                problems.append(f"temp dirs left behind: {left}")
        return problems



def _lease_pid(bucket: Bucket, key: str) -> int | None:
    got = bucket.get(key)
    try:
        return None if got is None else LeaseRecord.from_bytes(got[0]).owner.pid
    except ValueError:
        return None


def _stderr(log: Path) -> list[str]:
    try:
        return (log / "stderr").read_text(errors="replace").strip().splitlines()
    except OSError:
        return []


def _log_lines(log: Path, mark: str) -> list[str]:
    return [line.strip() for line in _stderr(log) if mark in line]


def _log_has(log: Path, mark: str) -> bool:
    return bool(_log_lines(log, mark))


def _tail(log: Path, lines: int = 5) -> str:
    """Why a run failed, in one line: its ERROR lines (the first three), the last lines of
    its log, and the problem lines of its report (stdout; the log alone can look cut short)."""
    text = _stderr(log)
    errors = [line for line in text[:-lines] if " ERROR " in line or "Traceback" in line][:3]
    try:
        report = (log / "stdout").read_text(errors="replace").strip().splitlines()
    except OSError:
        report = []
    parts = [*errors, *(["..."] if errors else []), *text[-lines:]]
    if report:
        parts += ["report:", *report[:6]]
    return " | ".join(parts) if parts else "(no log)"

