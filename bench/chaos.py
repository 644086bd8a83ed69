#!/usr/bin/env python3
"""Chaos bench: real runs of the job SIGKILLed at random moments, then a clean re-run.

Usage (from the repository root, with the project's venv):

    python bench/chaos.py [--trials 50] [--seed 1] [-v]

It starts its own moto S3 server on 127.0.0.1 (tests/s3server.py), writes a small
raw lake (DAYS x PARTITIONS, collector-shaped, compressor/generator.py) and makes a
reference compaction with one clean run. Then, per trial, in a fresh compact bucket:

1. scenario (drawn at random):
   - ``fresh``: a catch-up over every raw day, nothing compacted yet;
   - ``overwrite``: a backfill ``--overwrite`` over a bucket that already holds the
     reference outputs (exercises the delete-meta / upload-data / put-meta order);
   - ``pair``: two catch-up runs started together, one of them killed; the survivor
     must finish everything alone (same-host dead-pid lease takeover);
2. the run is killed with SIGKILL, either after a random delay drawn over the
   duration of an unkilled run of the same scenario, or at the n-th S3 request of
   one kind (lease, state, raw GET, and the publish phase: meta.json delete,
   data.parquet upload, meta.json put), the request either applied or dropped.
   It goes through a proxy (tests/s3proxy.py) that sees each request;
   half the trials upload data.parquet multipart;
3. some of the leases the dead run left are rewritten as leases of another host
   that already expired (the other takeover rule);
4. a clean re-run (catch-up, or a backfill without --overwrite), same tmp dir.

While the killed run and the re-run work, an observer reads the compact bucket over
and over: every meta.json must have its data.parquet beside it with the sha256 and
row count it states, _state.json must parse, every lock must parse. After the re-run:
every data.parquet is byte-identical to the reference, every meta.json agrees with it
on everything but timings, every state entry is success with the right rows,
last_compacted_date is right, no lease is left and no temp dir of a dead run remains.

It prints trials, kills, divergences (must be 0) and exits 1 on any divergence.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import boto3  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from compressor.generator import PartitionSpec, write_partition  # noqa: E402
from compressor.layout import LOCKS_PREFIX, STATE_KEY, PartitionId  # noqa: E402
from compressor.lease import LeaseRecord  # noqa: E402
from compressor.state import StateCorruptError, StateStore, parse_document  # noqa: E402
from compressor.storage import S3Store  # noqa: E402
from compressor.text import utc_iso  # noqa: E402
from tests.s3proxy import S3Proxy, Seen  # noqa: E402
from tests.s3server import (  # noqa: E402
    TEST_ACCESS_KEY,
    TEST_REGION,
    TEST_SECRET_KEY,
    cli_environment,
    moto_server,
)

TODAY = "20261125"
DAYS = ("20261123", "20261124")
BEFORE = "20261122"
PARTS = (("binance", "trade", "btcusdt"), ("okx", "bbo", "ethusdt"),
         ("bybit", "mark_price", "solusdt"))
SCENARIOS = ("fresh", "overwrite", "pair")
#: meta.json keys that must equal the reference run's (the rest are timings and stamps).
META_MUST_MATCH = ("schema_version", "rows", "ts_event_min", "ts_event_max", "ordering_columns",
                   "sha256", "size_bytes", "source_files", "source_fingerprint", "stream_type",
                   "day_quality", "post_filter_version")
#: Kinds of S3 request a kill can be aimed at; the last three are the publish phase.
TARGETS = ("lock", "state", "raw-get", "meta-delete", "data", "meta-put")
PUBLISH = ("meta-delete", "data", "meta-put")
RUN_TIMEOUT_S = 120
#: data.parquet here is ~10-20 KiB: below this, uploads are single PUTs; above, multipart.
MULTIPART_THRESHOLD = "4096"


def _pids() -> list[PartitionId]:
    return [PartitionId(ex, st, sy, d) for d in DAYS for ex, st, sy in PARTS]


# --------------------------------------------------------------------------- S3 helpers


class Bucket:
    """Plain boto3 access to one bucket, straight to the server (never through a proxy)."""

    def __init__(self, endpoint: str, name: str) -> None:
        self.name = name
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name=TEST_REGION,
                                   aws_access_key_id=TEST_ACCESS_KEY,
                                   aws_secret_access_key=TEST_SECRET_KEY)

    def create(self) -> Bucket:
        self.client.create_bucket(Bucket=self.name)
        return self

    def keys(self, prefix: str = "") -> list[str]:
        out = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.name, Prefix=prefix):
            out.extend(o["Key"] for o in page.get("Contents", []))
        return out

    def get(self, key: str) -> tuple[bytes, str] | None:
        try:
            resp = self.client.get_object(Bucket=self.name, Key=key)
        except self.client.exceptions.NoSuchKey:
            return None
        return resp["Body"].read(), resp["ETag"]

    def etag(self, key: str) -> str | None:
        try:
            return str(self.client.head_object(Bucket=self.name, Key=key)["ETag"])
        except self.client.exceptions.ClientError:
            return None

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=body)

    def copy_from(self, other: Bucket) -> None:
        for key in other.keys():
            self.client.copy_object(Bucket=self.name, Key=key,
                                    CopySource={"Bucket": other.name, "Key": key})


def new_bucket(endpoint: str) -> Bucket:
    return Bucket(endpoint, f"qlc-chaos-{uuid.uuid4().hex[:12]}").create()


def request_kind(method: str, path: str, raw_bucket: str) -> str | None:
    """Which TARGETS kind an S3 request (path-style, unquoted) is, if any."""
    if method == "GET" and path.startswith(f"/{raw_bucket}/exchange="):
        return "raw-get"
    if method not in ("PUT", "POST", "DELETE"):
        return None
    if f"/{LOCKS_PREFIX}" in path:
        return "lock"
    if path.endswith("/" + STATE_KEY):
        return "state"
    if path.endswith("/meta.json"):
        return "meta-delete" if method == "DELETE" else "meta-put"
    if path.endswith("/data.parquet") and method != "DELETE":
        return "data"
    return None


# --------------------------------------------------------------------------- the killer


@dataclass(frozen=True)
class Target:
    kind: str
    nth: int
    forward: bool  # the request reaches the server after the kill (else it is dropped)

    def describe(self) -> str:
        return f"{self.kind} #{self.nth} ({'applied' if self.forward else 'dropped'})"


class KillingProxy(S3Proxy):
    """The test proxy, which also SIGKILLs the victim at the n-th request of a kind."""

    def __init__(self, upstream: str, raw_bucket: str) -> None:
        super().__init__(upstream)
        self.raw_bucket = raw_bucket
        self.kinds: Counter[str] = Counter()
        self.target: Target | None = None
        self.victim: subprocess.Popen[bytes] | None = None
        self.killed_at: str | None = None
        #: time.monotonic() of the first request since arm() (None before it).
        self.first_request_at: float | None = None
        self._kill_lock = threading.Lock()

    def start(self) -> KillingProxy:
        super().start()
        server = self._server
        assert server is not None
        default = server.handle_error

        def handle_error(request: Any, client_address: Any) -> None:
            # a killed client resets its connections: expected here, not worth a traceback
            if not isinstance(sys.exc_info()[1], ConnectionError):
                default(request, client_address)

        server.handle_error = handle_error  # type: ignore[method-assign]
        return self

    def arm(self, target: Target | None, victim: subprocess.Popen[bytes] | None) -> None:
        with self._kill_lock:
            self.kinds.clear()
            self.target, self.victim, self.killed_at = target, victim, None
            self.first_request_at = None

    def kill_now(self, why: str) -> bool:
        with self._kill_lock:
            return self._kill(why)

    def _kill(self, why: str) -> bool:
        victim = self.victim
        if victim is None or self.killed_at is not None or victim.poll() is not None:
            return False
        try:
            os.kill(victim.pid, signal.SIGKILL)
        except ProcessLookupError:
            return False
        self.killed_at = why
        return True

    def _record(self, method: str, path: str, query: str, *args: Any, **kwargs: Any) -> Seen:
        seen = super()._record(method, path, query, *args, **kwargs)
        if self.first_request_at is None:
            self.first_request_at = time.monotonic()
        kind = request_kind(method, unquote(path), self.raw_bucket)
        if kind is None:
            return seen
        with self._kill_lock:
            self.kinds[kind] += 1
            t = self.target
            if t is not None and t.kind == kind and self.kinds[kind] == t.nth:
                if self._kill(t.describe()) and not t.forward:
                    return replace(seen, fault="reset")
        return seen


# --------------------------------------------------------------------------- the observer


class Observer:
    """Reads the compact bucket over and over while runs work; collects violations."""

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket
        self.observations = 0
        self.violations: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Observer:
        self._thread = threading.Thread(target=self._loop, name="observer", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.observe()  # and once more, at rest

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.observe()
            except Exception as exc:  # a reader error is a finding, not a crash of the bench
                self.violations.append(f"observer error: {type(exc).__name__}: {exc}")
            self._stop.wait(0.01)

    def observe(self) -> None:
        self.observations += 1
        keys = self.bucket.keys()
        for key in keys:
            if key.endswith("/meta.json"):
                self._check_pair(key)
            elif key.startswith(LOCKS_PREFIX):
                self._check_lock(key)
        if STATE_KEY in keys:
            got = self.bucket.get(STATE_KEY)
            if got is not None:
                try:
                    parse_document(got[0])
                except StateCorruptError as exc:
                    self.violations.append(f"_state.json does not parse: {exc}")

    def _check_pair(self, meta_key: str) -> None:
        got = self.bucket.get(meta_key)
        if got is None:
            return
        body, etag = got
        data_key = meta_key[: -len("meta.json")] + "data.parquet"
        data = self.bucket.get(data_key)
        if self.bucket.etag(meta_key) != etag:
            return  # republished while we looked: not one moment in time
        try:
            meta = json.loads(body)
        except ValueError:
            self.violations.append(f"{meta_key}: not JSON")
            return
        if data is None:
            self.violations.append(f"{meta_key} visible without its data.parquet")
            return
        if hashlib.sha256(data[0]).hexdigest() != meta.get("sha256"):
            self.violations.append(f"{meta_key}: data.parquet beside it has another sha256")
            return
        try:
            rows = pq.read_metadata(pa.BufferReader(data[0])).num_rows
        except Exception as exc:
            self.violations.append(f"{data_key}: unreadable ({exc})")
            return
        if rows != meta.get("rows"):
            self.violations.append(f"{meta_key}: rows {meta.get('rows')}, data has {rows}")

    def _check_lock(self, key: str) -> None:
        got = self.bucket.get(key)
        if got is None:
            return
        try:
            LeaseRecord.from_bytes(got[0])
        except ValueError as exc:
            self.violations.append(f"{key}: lock object does not parse: {exc}")


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


@dataclass
class Totals:
    trials: int = 0
    kills: int = 0
    timed_kills: int = 0
    request_kills: int = 0
    publish_kills: int = 0
    finished_before_kill: int = 0
    observations: int = 0
    leases_left: int = 0
    leases_made_foreign: int = 0
    tmp_dirs_left: int = 0
    divergences: list[str] = field(default_factory=list)
    diverged_trials: int = 0
    scenarios: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0


class Chaos:
    def __init__(self, endpoint: str, work: Path, rng: random.Random, verbose: bool) -> None:
        self.endpoint = endpoint
        self.work = work
        self.rng = rng
        self.verbose = verbose
        self.raw = new_bucket(endpoint)
        self.calibrations: dict[tuple[str, bool], Calibration] = {}
        self.totals = Totals()
        self.reference: Reference | None = None

    # -- setup -------------------------------------------------------------------

    def write_lake(self, files: int, rows: int) -> None:
        store = S3Store(self.raw.name, endpoint_url=self.endpoint, access_key=TEST_ACCESS_KEY,
                        secret_key=TEST_SECRET_KEY, region=TEST_REGION)
        gen = self.work / "gen"
        for day in DAYS:
            for n, (ex, st, sy) in enumerate(PARTS):
                spec = PartitionSpec(exchange=ex, stream=st, symbol=sy, date=day, files=files,
                                     rows_per_file=rows, seed=n)
                for path in write_partition(spec, gen):
                    store.put_file(spec.partition.prefix + path.name, path)
        shutil.rmtree(gen)

    def env(self, compact: Bucket, endpoint: str | None = None, multipart: bool = False
            ) -> dict[str, str]:
        env = cli_environment(endpoint or self.endpoint, self.raw.name, compact.name)
        if multipart:
            env["S3_MULTIPART_THRESHOLD"] = MULTIPART_THRESHOLD
        return env

    def command(self, scenario: str, tmp: Path, rerun: bool = False) -> list[str]:
        if scenario == "overwrite":
            mode = ["--mode", "backfill", "--date-from", DAYS[0], "--date-to", DAYS[-1]]
            if not rerun:
                mode.append("--overwrite")
        else:
            mode = ["--mode", "catch-up"]
        return [sys.executable, str(REPO / "run.py"), *mode, "--today", TODAY,
                "--tmp-dir", str(tmp)]

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

    def make_reference(self) -> None:
        bucket = self.prepare("fresh")
        tmp = self.work / "reference-tmp"
        proc = subprocess.run(self.command("fresh", tmp), env=self.env(bucket), cwd=self.work,
                              capture_output=True, timeout=RUN_TIMEOUT_S)
        if proc.returncode != 0:
            raise SystemExit(f"reference run failed ({proc.returncode}):\n"
                             f"{proc.stderr.decode()[-3000:]}")
        data, meta = {}, {}
        for pid in _pids():
            got_meta, got_data = bucket.get(pid.meta_key), bucket.get(pid.data_key)
            if got_meta is None or got_data is None:
                raise SystemExit(f"reference run did not publish {pid.state_key}")
            meta[pid.state_key] = json.loads(got_meta[0])
            data[pid.state_key] = got_data[0]
        got_state = bucket.get(STATE_KEY)
        assert got_state is not None
        lcd = parse_document(got_state[0])["last_compacted_date"]
        if lcd != DAYS[-1]:
            raise SystemExit(f"reference run left last_compacted_date {lcd}, not {DAYS[-1]}")
        self.reference = Reference(data, meta, lcd, bucket)

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

    # -- one trial -----------------------------------------------------------------

    def trial(self, n: int, proxy: KillingProxy, plain: S3Proxy) -> None:
        rng = self.rng
        scenario = rng.choice(SCENARIOS)
        multipart = rng.random() < 0.5
        calibration = self.calibrate(scenario, multipart, proxy)
        target: Target | None = None
        delay = 0.0
        if rng.random() < 0.5:  # over the part of the run that talks to the store
            delay = rng.uniform(calibration.first_request_s, calibration.seconds)
            plan = f"kill after {delay:.2f}s"
        else:
            kinds = [k for k in TARGETS if calibration.kinds[k]]
            publish = [k for k in kinds if k in PUBLISH]
            kind = rng.choice(publish if publish and rng.random() < 0.6 else kinds)
            target = Target(kind, rng.randint(1, calibration.kinds[kind]), rng.random() < 0.5)
            plan = f"kill at {target.describe()}"
        name = f"trial {n} ({scenario}{', multipart' if multipart else ''}, {plan})"
        self.totals.trials += 1
        self.totals.scenarios[scenario] += 1

        bucket = self.prepare(scenario)
        trial_dir = self.work / f"trial-{n:03d}"
        tmp = trial_dir / "tmp"
        trial_dir.mkdir(parents=True)
        problems: list[str] = []
        with Observer(bucket) as observer:
            survivor = None
            if scenario == "pair":
                survivor = self._spawn(self.command(scenario, tmp),
                                       self.env(bucket, plain.endpoint, multipart),
                                       trial_dir / "survivor")
            victim = self._spawn(self.command(scenario, tmp),
                                 self.env(bucket, proxy.endpoint, multipart), trial_dir / "victim")
            proxy.arm(target, victim)
            timer = None
            if target is None:
                timer = threading.Timer(delay, proxy.kill_now, args=(plan,))
                timer.start()
            code = self._wait(victim)
            if timer is not None:
                timer.cancel()
            killed_at = proxy.killed_at
            if killed_at is not None:
                if code != -signal.SIGKILL:
                    problems.append(f"victim exit {code} after the kill, not SIGKILL")
                self.totals.kills += 1
                if target is None:
                    self.totals.timed_kills += 1
                else:
                    self.totals.request_kills += 1
                    self.totals.publish_kills += target.kind in PUBLISH
            else:
                self.totals.finished_before_kill += 1
                if code != 0:
                    problems.append(f"unkilled run exit {code}: {_tail(trial_dir / 'victim')}")
            proxy.arm(None, None)
            if survivor is not None:
                code = self._wait(survivor)
                if code != 0:
                    problems.append(f"survivor exit {code}: {_tail(trial_dir / 'survivor')}")
                else:  # the survivor alone must have done everything
                    problems += [f"after the survivor: {p}" for p in
                                 self.check_final(bucket, self.expected_lcd(scenario), None)]
            left_locks = bucket.keys(LOCKS_PREFIX)
            left_tmp = list(tmp.glob("qlc-part-*"))
            self.totals.leases_left += len(left_locks)
            self.totals.tmp_dirs_left += len(left_tmp)
            for key in left_locks:
                if rng.random() < 0.3:
                    self._make_foreign_and_expired(bucket, key)
            rerun = self._spawn(self.command(scenario, tmp, rerun=True), self.env(bucket),
                                trial_dir / "rerun")
            code = self._wait(rerun)
            if code != 0:
                problems.append(f"re-run exit {code}: {_tail(trial_dir / 'rerun')}")
        self.totals.observations += observer.observations
        problems += sorted(set(observer.violations))  # one line per distinct finding
        problems += self.check_final(bucket, self.expected_lcd(scenario), tmp)
        outcome = f"killed ({killed_at})" if killed_at else "finished first"
        self.log(f"{name}: {outcome}; leftovers: {len(left_locks)} leases, "
                 f"{len(left_tmp)} temp dirs; {observer.observations} observations; "
                 f"{'OK' if not problems else 'DIVERGED'}")
        self.totals.diverged_trials += bool(problems)
        for p in problems:
            line = f"{name}: {p}"
            self.totals.divergences.append(line)
            print(f"DIVERGENCE {line}", flush=True)
        if not problems:
            shutil.rmtree(trial_dir, ignore_errors=True)

    def _spawn(self, cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        log.mkdir(parents=True, exist_ok=True)
        with open(log / "stdout", "wb") as out, open(log / "stderr", "wb") as err:
            return subprocess.Popen(cmd, env=env, cwd=log, stdout=out, stderr=err)

    def _wait(self, proc: subprocess.Popen[bytes]) -> int:
        try:
            return proc.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return -999

    def _make_foreign_and_expired(self, bucket: Bucket, key: str) -> None:
        """Turn a dead run's lease into one of another host that expired a while ago."""
        got = bucket.get(key)
        if got is None:
            return
        doc = json.loads(got[0])
        doc["owner"]["host"] = "some-other-host"
        doc["expires_at"] = utc_iso(time.time() - 3600)
        bucket.put(key, json.dumps(doc).encode())
        self.totals.leases_made_foreign += 1

    # -- the final comparison --------------------------------------------------------

    def check_final(self, bucket: Bucket, lcd: str | None, tmp: Path | None) -> list[str]:
        assert self.reference is not None
        ref = self.reference
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
        locks = bucket.keys(LOCKS_PREFIX)
        if locks:
            problems.append(f"leases left behind after a clean run: {locks}")
        if tmp is not None:
            left = [p.name for p in tmp.glob("qlc-part-*")]
            if left:
                problems.append(f"temp dirs left behind: {left}")
        return problems


def _tail(log: Path, lines: int = 5) -> str:
    try:
        text = (log / "stderr").read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:])


def run(trials: int, seed: int, files: int, rows: int, work: Path, verbose: bool) -> Totals:
    rng = random.Random(seed)
    started = time.monotonic()
    with moto_server(work / "moto.log") as endpoint:
        chaos = Chaos(endpoint, work, rng, verbose)
        chaos.write_lake(files, rows)
        chaos.make_reference()
        # the pair's survivor goes through a plain proxy: both runs see the same latency
        with KillingProxy(endpoint, chaos.raw.name) as proxy, S3Proxy(endpoint) as plain:
            for n in range(1, trials + 1):
                chaos.trial(n, proxy, plain)
    chaos.totals.seconds = time.monotonic() - started
    return chaos.totals


def summary(t: Totals) -> str:
    scenarios = ", ".join(f"{n} {s}" for s, n in sorted(t.scenarios.items()))
    return "\n".join([
        f"chaos: {t.trials} trials ({scenarios}) in {t.seconds:.0f}s",
        f"kills: {t.kills} SIGKILL ({t.timed_kills} after a random delay, {t.request_kills} at "
        f"an S3 request, {t.publish_kills} of them in the publish phase); "
        f"{t.finished_before_kill} runs finished before their kill",
        f"left by the killed runs: {t.leases_left} leases ({t.leases_made_foreign} turned into "
        f"expired leases of another host), {t.tmp_dirs_left} temp dirs; all gone after the re-runs"
        if not t.divergences else
        f"left by the killed runs: {t.leases_left} leases, {t.tmp_dirs_left} temp dirs",
        f"observations of the compact bucket while runs worked: {t.observations}",
        f"divergences: {len(t.divergences)}"
        + (f" (in {t.diverged_trials} trials)" if t.divergences else ""),
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--files", type=int, default=6, help="raw files per partition-day")
    p.add_argument("--rows", type=int, default=80, help="rows per raw file")
    p.add_argument("--work", type=Path, help="work directory (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per trial")
    args = p.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="qlc-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        totals = run(args.trials, args.seed, args.files, args.rows, work, args.verbose)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(summary(totals), flush=True)
    if totals.divergences and not args.keep:
        print("(re-run with --keep to inspect the diverging trials' logs)")
    return 1 if totals.divergences else 0


if __name__ == "__main__":
    sys.exit(main())
