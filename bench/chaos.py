#!/usr/bin/env python3
"""Chaos bench: real runs of the job killed, paused past their lease or run on skewed clocks.

Usage (from the repository root, with the project's venv):

    python bench/chaos.py [--trials 50] [--seed 1] [-v] [--keep --work DIR]
                          [--faults kill,pause,skew] [--scenarios fresh,overwrite,pair]

It starts its own moto S3 server on 127.0.0.1 (tests/support/s3server.py), writes a small
raw lake (DAYS x PARTITIONS, collector-shaped, compressor/generator.py) and makes a
reference compaction with one clean run. Then, per trial, in a fresh compact bucket,
one fault (kinds are dealt in blocks of five: kill, kill, kill, pause, skew, shuffled):

- ``kill``: SIGKILL, in one of three scenarios:
  - ``fresh``: a catch-up over every raw day, nothing compacted yet;
  - ``overwrite``: a backfill ``--overwrite`` over a bucket that already holds the
    reference outputs (exercises the replace order of data.parquet and meta.json);
  - ``pair``: two catch-up runs started together, one of them killed; the survivor
    must finish everything alone (same-host dead-pid lease takeover).
  The run is killed either after a random delay drawn over the duration of an
  unkilled run of the same scenario, or at the n-th S3 request of one kind (lease,
  state, raw GET, and the publish phase: meta.json delete, data.parquet upload,
  meta.json put), the request either applied or dropped. Some of the leases the
  dead run left are rewritten as leases of another host that already expired.
- ``pause``: SIGSTOP (``fresh`` or ``overwrite``), at a random moment or at the n-th
  S3 request of one kind, that request either applied at once or held at the proxy
  until the run is continued (so it lands after a takeover: "just before the
  data.parquet upload / meta.json put"). The runs get a short lease TTL
  (``QLC_LEASE_TTL_S``, --lease-ttl). A second run is started at once, waits for the
  paused run's lease to expire, takes it over and publishes; in most trials a late
  raw file is first added to the partition the paused run was working on, so the
  two runs hold different listings. The paused run is continued (SIGCONT) either as
  soon as its lease was taken over or once the second run is done; both finish.
- ``skew``: two runs started together, as two hosts (their own host names), with
  their clocks skewed by libfaketime (-300 s and +360 s). Neither may take over the
  other's live lease: no "took over lease" in their logs, no partition's
  data.parquet or meta.json written twice (counted at the proxies), no meta.json
  published twice (seen by the reader), no state entry with an extra attempt.

Each trial ends with a clean re-run (catch-up, or a backfill without --overwrite) in
the same tmp dir. Every job run talks to the store through a proxy
(tests/support/s3proxy.py) that sees each request and fires the kill or the pause; half the
trials upload data.parquet multipart.

While the runs work, a reader reads the compact bucket over and over: for every
visible meta.json, the data.parquet beside it must be the one it names (cheap check:
``data_etag`` and ``size_bytes`` against the data object's ETag and size) and, the
first time each meta.json version is seen (always, for a meta.json without
``data_etag``), its bytes must have the sha256, size and row count meta.json states
(deep check, compressor.meta.check_data_file). A writer may replace the pair between
the reader's GET of meta.json and its read of data.parquet, so a disagreement is an
*inconsistent pair* only when meta.json still has the same ETag after the data read.
``_state.json`` and every lock must parse. After the re-run: every data.parquet is
byte-identical to the reference (to a second reference with the late file, where one
was added), every meta.json agrees with it on everything but timings, every state
entry is success with the right rows, last_compacted_date is right, no lease is left
and no temp dir of a dead run remains; any difference is a *divergence*.

It prints counts per fault kind, the reader's counts, inconsistent pairs and
divergences (both must be 0), and exits 1 on any of them. With --keep, the work
directory stays, and with it every failing trial's logs (trial-NNN/<run>/stderr).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import boto3  # noqa: E402

from compressor.generator import (  # noqa: E402
    PartitionSpec,
    file_bytes,
    file_names,
    write_partition,
)
from compressor.layout import LOCKS_PREFIX, STATE_KEY, PartitionId  # noqa: E402
from compressor.lease import DEFAULT_SKEW_S, LeaseRecord  # noqa: E402
from compressor.meta import Meta, MetaError, Published, check_data_file  # noqa: E402
from compressor.state import StateCorruptError, StateStore, parse_document  # noqa: E402
from compressor.storage import S3Store  # noqa: E402
from compressor.storage.base import ObjectInfo, normalize_etag  # noqa: E402
from compressor.text import utc_iso  # noqa: E402
from tests.support.s3proxy import S3Proxy, Seen  # noqa: E402
from tests.support.s3server import (  # noqa: E402
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
FAULTS = ("kill", "pause", "skew")
#: Scenarios per fault kind (see the module docstring).
SCENARIOS = {"kill": ("fresh", "overwrite", "pair"), "pause": ("fresh", "overwrite"),
             "skew": ("fresh", "overwrite")}
#: One block of trials: every five consecutive trials (from the first) hold each kind.
DECK = ("kill", "kill", "kill", "pause", "skew")
#: meta.json keys that must equal the reference run's (the rest are timings and stamps).
META_MUST_MATCH = ("schema_version", "rows", "ts_event_min", "ts_event_max", "ordering_columns",
                   "sha256", "size_bytes", "source_files", "source_fingerprint", "stream_type",
                   "day_quality", "post_filter_version")
#: Kinds of S3 request a kill or a pause can be aimed at; the last three are the publish phase.
TARGETS = ("lock", "state", "raw-get", "meta-delete", "data", "meta-put")
PUBLISH = ("meta-delete", "data", "meta-put")
RUN_TIMEOUT_S = 120
#: data.parquet here is ~10-20 KiB: below this, uploads are single PUTs; above, multipart.
MULTIPART_THRESHOLD = "4096"
#: Lease TTL of the pause trials' runs (QLC_LEASE_TTL_S). Their clock allowance is then
#: lease_skew(TTL) (a quarter of it), so a paused run's lease is taken over about
#: 1.25 TTL after its last renewal. Renewals come every TTL/3: much shorter and a busy
#: 2-core machine makes live runs lose theirs.
DEFAULT_LEASE_TTL_S = 10.0
#: Clock skews of the two runs of a skew trial (seconds; the job refuses more than 15 min).
SKEWS = (-300.0, 360.0)
#: Log lines of the job that mean a lease was judged dead and taken over or removed.
TAKEOVER_MARKS = ("took over lease", "removed a lease left behind")
#: The pause trials' late raw file goes to the paused partition with this probability.
LATE_FILE_P = 0.7
FAKETIME_INSTALL = "apt-get install -y faketime"
#: Runs run.py (argv[1]) as one host of a skew trial: socket.gethostname() answers
#: $QLC_CHAOS_HOST. Under libfaketime, time.sleep waits on an Event instead: with the
#: monotonic clock faked, Python's timed waits (sem_clockwait) hang; with it left alone
#: (FAKETIME_DONT_FAKE_MONOTONIC=1, as here), libfaketime 0.9.10 mangles the absolute
#: clock_nanosleep that time.sleep uses since Python 3.11 (EINVAL, libfaketime #426).
HOST_SHIM = """
import os, runpy, socket, sys, threading, time
_hostname = socket.gethostname
socket.gethostname = lambda: os.environ.get("QLC_CHAOS_HOST") or _hostname()
def _sleep(seconds):
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    threading.Event().wait(seconds)
if os.environ.get("FAKETIME"):
    time.sleep = _sleep
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def lease_skew(ttl_s: float) -> float:
    """The job's lease clock allowance for a TTL (runner.RunConfig.lease_skew_s): a
    quarter of a shortened TTL, at most DEFAULT_SKEW_S."""
    return min(DEFAULT_SKEW_S, ttl_s / 4)


def _pids() -> list[PartitionId]:
    return [PartitionId(ex, st, sy, d) for d in DAYS for ex, st, sy in PARTS]


def _pid_of_key(key: str) -> PartitionId | None:
    """The partition an S3 key (compact output or raw file) belongs to, if any."""
    for pid in _pids():
        if pid.prefix in key or pid.lock_key in key:
            return pid
    return None


def _spec(pid: PartitionId, files: int, rows: int) -> PartitionSpec:
    n = [p[:3] for p in PARTS].index((pid.exchange, pid.stream, pid.symbol))
    return PartitionSpec(exchange=pid.exchange, stream=pid.stream, symbol=pid.symbol,
                         date=pid.date, files=files, rows_per_file=rows, seed=n)


# --------------------------------------------------------------------------- S3 helpers


class Bucket:
    """Plain boto3 access to one bucket, straight to the server (never through a proxy).

    ETags come back normalized (unquoted), as compressor.storage's ObjectInfo has them.
    """

    def __init__(self, endpoint: str, name: str) -> None:
        self.name = name
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name=TEST_REGION,
                                   aws_access_key_id=TEST_ACCESS_KEY,
                                   aws_secret_access_key=TEST_SECRET_KEY)

    def create(self) -> Bucket:
        self.client.create_bucket(Bucket=self.name)
        return self

    def keys(self, prefix: str = "") -> list[str]:
        out: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.name, Prefix=prefix):
            out.extend(o["Key"] for o in page.get("Contents", []))
        return out

    def get(self, key: str) -> tuple[bytes, str] | None:
        try:
            resp = self.client.get_object(Bucket=self.name, Key=key)
        except self.client.exceptions.NoSuchKey:
            return None
        return resp["Body"].read(), normalize_etag(resp["ETag"])

    def head(self, key: str) -> ObjectInfo | None:
        try:
            resp = self.client.head_object(Bucket=self.name, Key=key)
        except self.client.exceptions.ClientError:
            return None
        return ObjectInfo(key, int(resp["ContentLength"]), resp["ETag"])

    def etag(self, key: str) -> str | None:
        info = self.head(key)
        return None if info is None else info.etag

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


def writes_of(requests: list[Seen], name: str) -> Counter[str]:
    """Per partition, the completed writes of `name` (data.parquet or meta.json) seen."""
    out: Counter[str] = Counter()
    for seen in requests:
        path = unquote(seen.path)
        if path.endswith("/" + name) and seen.op in ("PUT", "COMPLETE_MULTIPART"):
            pid = _pid_of_key(path)
            if pid is not None and seen.fault is None:
                out[pid.state_key] += 1
    return out


# --------------------------------------------------------------------------- faketime


def faketime_library() -> str | None:
    """libfaketime's multi-threaded preload library (Debian package `faketime`), if any."""
    for pattern in ("/usr/lib/*/faketime/libfaketimeMT.so.1",
                    "/usr/lib/faketime/libfaketimeMT.so.1",
                    "/usr/local/lib/faketime/libfaketimeMT.so.1"):
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def skew_environment(library: str, seconds: float) -> dict[str, str]:
    """Variables that run a process with its wall clock `seconds` off (monotonic untouched)."""
    return {"LD_PRELOAD": library, "FAKETIME": f"{seconds:+.0f}s",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1", "DONT_FAKE_MONOTONIC": "1"}


def check_faketime(library: str | None, work: Path) -> str:
    """The library, after checking the venv's python (through HOST_SHIM) sees time.time()
    skewed by it and can still sleep and wait."""
    if library is None:
        raise SystemExit(f"skew trials need libfaketime: {FAKETIME_INSTALL} "
                         "(or leave them out with --faults kill,pause)")
    probe = work / "faketime-probe.py"
    probe.write_text("import threading, time\n"
                     "threading.Event().wait(0.05)\ntime.sleep(0.05)\nprint(time.time())\n")
    for skew in SKEWS:
        env = {**os.environ, **skew_environment(library, skew)}
        run = subprocess.run([sys.executable, "-c", HOST_SHIM, str(probe)], env=env,
                             capture_output=True, text=True, timeout=30)
        try:
            off = float(run.stdout) - time.time()
        except ValueError:
            off = float("nan")
        if not abs(off - skew) < 5:
            raise SystemExit(f"libfaketime ({library}) did not skew python's time.time() by "
                             f"{skew:+.0f}s (off by {off:+.1f}s): {run.stderr.strip()[-300:]}")
    return library


# --------------------------------------------------------------------------- upload times


class UploadClock:
    """Real initiation times for multipart uploads, which moto does not report.

    moto 5.2 lists every incomplete multipart upload as initiated at
    2010-11-10T20:48:33Z, so the start-up cleanup of any run (`remove_stale_partials`:
    uploads older than a day) aborts the uploads of runs still working, and moto then
    answers their next UploadPart with a 500 (not NoSuchUpload): the run fails the
    partition after its retries (exit 1). Two runs starting together hit that whenever
    one starts its cleanup after the other began an upload: the old `pair` flake. The
    bench's proxies note when each upload was created and put that time in
    ListMultipartUploads answers, as S3 does.
    """

    MOTO_INITIATED = b"<Initiated>2010-11-10T20:48:33.000Z</Initiated>"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._created: dict[bytes, bytes] = {}

    def created(self, payload: bytes) -> None:
        found = re.search(rb"<UploadId>([^<]+)</UploadId>", payload)
        if found is not None:
            stamp = utc_iso(time.time()).encode()
            with self._lock:
                self._created[found.group(1)] = stamp

    def rewrite(self, payload: bytes) -> bytes:
        def one(upload: re.Match[bytes]) -> bytes:
            block = upload.group(0)
            found = re.search(rb"<UploadId>([^<]+)</UploadId>", block)
            with self._lock:
                stamp = self._created.get(found.group(1)) if found else None
            if stamp is None:
                return block
            return block.replace(self.MOTO_INITIATED, b"<Initiated>" + stamp + b"</Initiated>")

        return re.sub(rb"<Upload>.*?</Upload>", one, payload, flags=re.DOTALL)

    def install(self, proxy: S3Proxy) -> None:
        """Make a started proxy record upload creations and rewrite upload listings."""
        server = proxy._server
        assert server is not None, "proxy not started"
        base: Any = server.RequestHandlerClass
        clock = self

        def forward(handler: Any, body: bytes, op: str) -> tuple[int, str, Any, bytes]:
            status, reason, headers, payload = base._forward(handler, body, op)
            if status == 200 and op == "CREATE_MULTIPART":
                clock.created(payload)
            elif status == 200 and op == "LIST_UPLOADS":
                payload = clock.rewrite(payload)
            return status, reason, headers, payload

        server.RequestHandlerClass = type("ChaosHandler", (base,), {"_forward": forward})


# --------------------------------------------------------------------------- the fault proxy


@dataclass(frozen=True)
class Target:
    kind: str
    nth: int
    #: kill: the request reaches the server after the kill (else it is dropped);
    #: pause: it is forwarded at once (else held at the proxy until the run is continued).
    forward: bool

    def describe(self, action: str = "kill") -> str:
        if action == "pause":
            return f"{self.kind} #{self.nth} ({'applied' if self.forward else 'held'})"
        return f"{self.kind} #{self.nth} ({'applied' if self.forward else 'dropped'})"


class KillingProxy(S3Proxy):
    """The test proxy, which also SIGKILLs or SIGSTOPs the victim at the n-th request of a kind.

    A pause aimed at a request may hold that request (not forwarded) until resume().
    """

    def __init__(self, upstream: str, raw_bucket: str) -> None:
        super().__init__(upstream)
        self.raw_bucket = raw_bucket
        self.kinds: Counter[str] = Counter()
        self.target: Target | None = None
        self.action = "kill"
        self.victim: subprocess.Popen[bytes] | None = None
        self.killed_at: str | None = None
        self.paused_at: str | None = None
        #: the path of the request the pause was aimed at (None for a timed pause)
        self.paused_path: str | None = None
        self.paused = threading.Event()
        self._release = threading.Event()
        self._holding = 0
        #: a pidfd of the victim: a signal never reaches another process that got its pid
        #: once it was reaped (pid_max is 32768 on many hosts, and threads take pids too)
        self._pidfd: int | None = None
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

    def __enter__(self) -> KillingProxy:
        return self.start()

    def arm(self, target: Target | None, victim: subprocess.Popen[bytes] | None,
            action: str = "kill") -> None:
        with self._kill_lock:
            self._release.set()  # never leave a held request behind
            self.kinds.clear()
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            if victim is not None:
                try:
                    self._pidfd = os.pidfd_open(victim.pid)
                except (AttributeError, OSError):  # Linux < 5.3: plain pids
                    self._pidfd = None
            self.target, self.victim, self.action = target, victim, action
            self.killed_at = self.paused_at = self.paused_path = None
            self.paused.clear()
            self._release = threading.Event()
            self.first_request_at = None
        self.reset_counts()

    def kill_now(self, why: str) -> bool:
        with self._kill_lock:
            return self._kill(why)

    def pause_now(self, why: str) -> bool:
        with self._kill_lock:
            return self._pause(why)

    def resume(self) -> None:
        """Forward the held request (if any), then SIGCONT the victim."""
        with self._kill_lock:
            release, held = self._release, self._holding
        release.set()
        if held:
            time.sleep(0.3)  # let the held request land and its answer wait in the socket
        with self._kill_lock:
            self._signal(signal.SIGCONT)

    def _signal(self, sig: int) -> bool:
        """Send `sig` to the victim if it still runs (never to a process reusing its pid)."""
        victim = self.victim
        if victim is None or victim.poll() is not None:
            return False
        try:
            if self._pidfd is not None:
                signal.pidfd_send_signal(self._pidfd, sig)
            else:
                os.kill(victim.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def _kill(self, why: str) -> bool:
        if self.killed_at is not None or not self._signal(signal.SIGKILL):
            return False
        self.killed_at = why
        return True

    def _pause(self, why: str) -> bool:
        if self.paused_at is not None or not self._signal(signal.SIGSTOP):
            return False
        self.paused_at = why
        self.paused.set()
        return True

    def _record(self, method: str, path: str, query: str, *args: Any, **kwargs: Any) -> Seen:
        seen = super()._record(method, path, query, *args, **kwargs)
        if self.first_request_at is None:
            self.first_request_at = time.monotonic()
        kind = request_kind(method, unquote(path), self.raw_bucket)
        if kind is None:
            return seen
        hold: threading.Event | None = None
        with self._kill_lock:
            self.kinds[kind] += 1
            t = self.target
            if t is not None and t.kind == kind and self.kinds[kind] == t.nth:
                if self.action == "pause":
                    if self._pause(t.describe("pause")):
                        self.paused_path = unquote(path)
                        if not t.forward:
                            hold = self._release
                            self._holding += 1
                elif self._kill(t.describe()) and not t.forward:
                    return replace(seen, fault="reset")
        if hold is not None:  # outside the lock: resume() needs it
            hold.wait(timeout=1800)
            with self._kill_lock:
                self._holding -= 1
        return seen


# --------------------------------------------------------------------------- the reader


class Reader:
    """Reads the compact bucket over and over while runs work, as a consumer would.

    Every visible meta.json is checked against the data.parquet beside it (see the
    module docstring); `inconsistent` gets one line per pair that disagreed while
    meta.json stayed the same across the read, `violations` anything else that is
    wrong (unparsable state or lock, reader errors).
    """

    def __init__(self, bucket: Bucket, scratch: Path) -> None:
        self.bucket = bucket
        self.scratch = scratch
        self.rounds = 0
        self.pairs = 0
        self.deep = 0
        self.raced = 0
        self.inconsistent: list[str] = []
        self.violations: list[str] = []
        #: meta.json key -> every ETag seen there (a skew trial's "published twice" check)
        self.meta_etags: dict[str, set[str]] = defaultdict(set)
        self._deep_done: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Reader:
        self.scratch.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._loop, name="reader", daemon=True)
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
                self.violations.append(f"reader error: {type(exc).__name__}: {exc}")
            self._stop.wait(0.01)

    def observe(self) -> None:
        self.rounds += 1
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
        body, meta_etag = got
        self.pairs += 1
        self.meta_etags[meta_key].add(meta_etag)
        try:
            meta = Meta.from_bytes(body, meta_key)
        except MetaError as exc:  # meta.json is written whole: no read race makes this
            self.inconsistent.append(f"{meta_key}: malformed: {exc.problem}")
            return
        data_key = meta_key[: -len("meta.json")] + "data.parquet"
        deep = meta.data_etag is None or meta_etag not in self._deep_done
        fetched: tuple[bytes, str] | None = None
        if deep:
            fetched = self.bucket.get(data_key)
            data = None if fetched is None else ObjectInfo(data_key, len(fetched[0]), fetched[1])
        else:
            data = self.bucket.head(data_key)
        problems = self.pair_problems(meta, meta_etag, data, fetched)
        if not problems:
            if deep:
                self._deep_done.add(meta_etag)
            return
        if self.bucket.etag(meta_key) != meta_etag:
            self.raced += 1  # replaced by a writer while we read: not one moment in time
            return
        self.inconsistent.append(f"{meta_key}: {'; '.join(problems)}")

    def pair_problems(self, meta: Meta, meta_etag: str, data: ObjectInfo | None,
                      fetched: tuple[bytes, str] | None) -> list[str]:
        """What is wrong between meta.json and the data.parquet read beside it."""
        if data is None:
            return ["meta.json visible without its data.parquet"]
        problems = []
        if meta.data_etag is not None:
            mismatch = Published(meta, meta_etag, data).mismatch()
            if mismatch is not None:
                problems.append(mismatch)
        if fetched is not None:
            self.deep += 1
            path = self.scratch / "reader-data.parquet"
            path.write_bytes(fetched[0])
            problems += check_data_file(meta, path)
        return problems

    def _check_lock(self, key: str) -> None:
        got = self.bucket.get(key)
        if got is None:
            return
        try:
            LeaseRecord.from_bytes(got[0])
        except ValueError as exc:
            self.violations.append(f"{key}: lock object does not parse: {exc}")


#: The name the bench had before the reader checked ETags.
Observer = Reader


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
    trials: Counter[str] = field(default_factory=Counter)
    scenarios: Counter[str] = field(default_factory=Counter)
    #: per fault kind: trials with a divergence, divergences, inconsistent pairs
    diverged_trials: Counter[str] = field(default_factory=Counter)
    divergence_count: Counter[str] = field(default_factory=Counter)
    inconsistent: Counter[str] = field(default_factory=Counter)
    divergences: list[str] = field(default_factory=list)
    inconsistent_pairs: list[str] = field(default_factory=list)
    # kill
    kills: int = 0
    timed_kills: int = 0
    request_kills: int = 0
    publish_kills: int = 0
    finished_before_kill: int = 0
    leases_left: int = 0
    leases_made_foreign: int = 0
    tmp_dirs_left: int = 0
    # pause
    pauses: int = 0
    timed_pauses: int = 0
    request_pauses: int = 0
    publish_pauses: int = 0
    held_requests: int = 0
    finished_before_pause: int = 0
    takeovers: int = 0
    late_files: int = 0
    paused_exits: Counter[int] = field(default_factory=Counter)
    lease_ttl_s: float = DEFAULT_LEASE_TTL_S
    # skew
    skew_runs: int = 0
    stolen: int = 0
    compacted_twice: int = 0
    # reader
    rounds: int = 0
    pairs: int = 0
    deep: int = 0
    raced: int = 0
    seconds: float = 0.0
    kept: list[str] = field(default_factory=list)


@dataclass
class TrialRecord:
    """One trial under way: its name, work dir and what went wrong."""

    n: int
    fault: str
    scenario: str
    name: str
    dir: Path
    problems: list[str] = field(default_factory=list)


class Chaos:
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

    # -- choosing a trial --------------------------------------------------------

    def next_fault(self) -> str:
        """The next kind from the deck: every aligned block of len(DECK) trials holds each."""
        if not self._deck:
            deck = [f for f in DECK if f in self.faults] or list(self.faults)
            self.rng.shuffle(deck)
            self._deck = deck
        return self._deck.pop(0)

    def draw_scenario(self, fault: str) -> str:
        choices = [s for s in SCENARIOS[fault] if self.scenarios is None or s in self.scenarios]
        return self.rng.choice(choices or list(SCENARIOS[fault]))

    def draw_moment(self, calibration: Calibration, action: str
                    ) -> tuple[Target | None, float, str]:
        """(request target, or None and a delay) of a kill or pause, and its description."""
        rng = self.rng
        if rng.random() < 0.5:  # over the part of the run that talks to the store
            delay = rng.uniform(calibration.first_request_s, calibration.seconds)
            return None, delay, f"{action} after {delay:.2f}s"
        kinds = [k for k in TARGETS if calibration.kinds[k]]
        publish = [k for k in kinds if k in PUBLISH]
        kind = rng.choice(publish if publish and rng.random() < 0.6 else kinds)
        target = Target(kind, rng.randint(1, calibration.kinds[kind]), rng.random() < 0.5)
        return target, 0.0, f"{action} at {target.describe(action)}"

    # -- one trial -----------------------------------------------------------------

    def trial(self, n: int, proxy: KillingProxy, plain: S3Proxy) -> None:
        fault = self.next_fault()
        proxy.arm(None, None)
        plain.reset_counts()
        if fault == "kill":
            self.kill_trial(n, proxy, plain)
        elif fault == "pause":
            self.pause_trial(n, proxy, plain)
        else:
            self.skew_trial(n, proxy, plain)

    def _begin(self, n: int, fault: str, scenario: str, detail: str) -> TrialRecord:
        self.totals.trials[fault] += 1
        self.totals.scenarios[scenario] += 1
        trial_dir = self.work / f"trial-{n:03d}"
        (trial_dir / "tmp").mkdir(parents=True)
        return TrialRecord(n, fault, scenario, f"trial {n} ({fault}: {scenario}, {detail})",
                           trial_dir)

    def _end(self, rec: TrialRecord, reader: Reader, outcome: str, final: list[str]) -> None:
        t = self.totals
        t.rounds += reader.rounds
        t.pairs += reader.pairs
        t.deep += reader.deep
        t.raced += reader.raced
        inconsistent = sorted(set(reader.inconsistent))  # one line per distinct finding
        problems = rec.problems + sorted(set(reader.violations)) + final
        self.log(f"{rec.name}: {outcome}; {reader.rounds} reader rounds, {reader.pairs} pairs "
                 f"read; {'OK' if not problems and not inconsistent else 'FAILED'}")
        t.inconsistent[rec.fault] += len(inconsistent)
        for p in inconsistent:
            line = f"{rec.name}: {p}"
            t.inconsistent_pairs.append(line)
            print(f"INCONSISTENT PAIR {line}", flush=True)
        t.diverged_trials[rec.fault] += bool(problems)
        t.divergence_count[rec.fault] += len(problems)
        for p in problems:
            line = f"{rec.name}: {p}"
            t.divergences.append(line)
            print(f"DIVERGENCE {line}", flush=True)
        if problems or inconsistent:
            t.kept.append(str(rec.dir))
        elif not self.keep_all:
            shutil.rmtree(rec.dir, ignore_errors=True)

    def _rerun(self, rec: TrialRecord, bucket: Bucket, raw: Bucket | None = None) -> None:
        rerun = self._spawn(self.command(rec.scenario, rec.dir / "tmp", rerun=True),
                            self.env(bucket, raw=raw), rec.dir / "rerun")
        code = self._wait(rerun)
        if code != 0:
            rec.problems.append(f"re-run exit {code}: {_tail(rec.dir / 'rerun')}")

    def _leftovers(self, bucket: Bucket, tmp: Path) -> tuple[int, int]:
        """Leases and temp dirs a killed or paused run left; some leases made foreign."""
        left_locks = bucket.keys(LOCKS_PREFIX)
        left_tmp = list(tmp.glob("qlc-part-*"))
        self.totals.leases_left += len(left_locks)
        self.totals.tmp_dirs_left += len(left_tmp)
        for key in left_locks:
            if self.found_rng.random() < 0.3:
                self._make_foreign_and_expired(bucket, key)
        return len(left_locks), len(left_tmp)

    # .. kill .....................................................................

    def kill_trial(self, n: int, proxy: KillingProxy, plain: S3Proxy) -> None:
        rng = self.rng
        scenario = self.draw_scenario("kill")
        multipart = rng.random() < 0.5
        calibration = self.calibrate(scenario, multipart, proxy)
        target, delay, plan = self.draw_moment(calibration, "kill")
        rec = self._begin(n, "kill", scenario, f"{'multipart, ' if multipart else ''}{plan}")
        bucket = self.prepare(scenario)
        tmp = rec.dir / "tmp"
        t = self.totals
        with Reader(bucket, rec.dir / "reader") as reader:
            survivor = None
            if scenario == "pair":
                survivor = self._spawn(self.command(scenario, tmp),
                                       self.env(bucket, plain.endpoint, multipart),
                                       rec.dir / "survivor")
            victim = self._spawn(self.command(scenario, tmp),
                                 self.env(bucket, proxy.endpoint, multipart), rec.dir / "victim")
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
                    rec.problems.append(f"victim exit {code} after the kill, not SIGKILL")
                t.kills += 1
                if target is None:
                    t.timed_kills += 1
                else:
                    t.request_kills += 1
                    t.publish_kills += target.kind in PUBLISH
            else:
                t.finished_before_kill += 1
                if code != 0:
                    rec.problems.append(f"unkilled run exit {code}: {_tail(rec.dir / 'victim')}")
            proxy.arm(None, None)
            if survivor is not None:
                code = self._wait(survivor)
                if code != 0:
                    rec.problems.append(f"survivor exit {code}: {_tail(rec.dir / 'survivor')}")
                else:  # the survivor alone must have done everything; a lease the dead run
                    # held when it was killed (say on a partition the survivor had already
                    # published) stays until the next run's start-up reaps it
                    dead = victim.pid if killed_at is not None else None
                    rec.problems += [f"after the survivor: {p}" for p in self.check_final(
                        bucket, self.expected_lcd(scenario), None, leases_of_dead=dead)]
            leases, tmps = self._leftovers(bucket, tmp)
            self._rerun(rec, bucket)
        final = self.check_final(bucket, self.expected_lcd(scenario), tmp)
        outcome = f"killed ({killed_at})" if killed_at else "finished first"
        self._end(rec, reader, f"{outcome}; leftovers: {leases} leases, {tmps} temp dirs", final)

    # .. pause ....................................................................

    def pause_trial(self, n: int, proxy: KillingProxy, plain: S3Proxy) -> None:
        rng = self.rng
        t = self.totals
        scenario = self.draw_scenario("pause")
        multipart = rng.random() < 0.5
        calibration = self.calibrate(scenario, multipart, proxy)
        target, delay, plan = self.draw_moment(calibration, "pause")
        late = rng.random() < LATE_FILE_P
        after = rng.choice(("takeover", "second run done"))
        # a catch-up waits for a busy partition of a ready day (same host); a backfill
        # leaves it, so its second run starts once the paused run's leases expired
        at_once = scenario == "fresh" and rng.random() < 0.5
        rec = self._begin(n, "pause", scenario, f"{'multipart, ' if multipart else ''}{plan}, "
                          f"second run {'at once' if at_once else 'after the expiry'}, "
                          f"continued once the {after}{', late file' if late else ''}")
        raw = self.raw_copy() if late else self.raw
        bucket = self.prepare(scenario)
        tmp = rec.dir / "tmp"
        ttl = self.lease_ttl_s
        cap = RUN_TIMEOUT_S + 3 * ttl + 60
        ref = self.reference
        outcome = "finished first"
        with Reader(bucket, rec.dir / "reader") as reader:
            victim = self._spawn(self.command(scenario, tmp),
                                 self.env(bucket, proxy.endpoint, multipart, raw=raw, ttl_s=ttl),
                                 rec.dir / "paused")
            proxy.arm(target, victim, action="pause")
            timer = None
            if target is None:
                timer = threading.Timer(delay, proxy.pause_now, args=(plan,))
                timer.start()
            while not proxy.paused.wait(0.05) and victim.poll() is None:
                pass
            if timer is not None:
                timer.cancel()
            if proxy.paused_at is None:
                t.finished_before_pause += 1
                code = self._wait(victim)
                if code != 0:
                    rec.problems.append(f"unpaused run exit {code}: {_tail(rec.dir / 'paused')}")
            else:
                t.pauses += 1
                if target is None:
                    t.timed_pauses += 1
                else:
                    t.request_pauses += 1
                    t.publish_pauses += target.kind in PUBLISH
                    t.held_requests += not target.forward
                time.sleep(0.3)  # a request it sent just before the SIGSTOP lands
                held = self._leases_of(bucket, victim.pid)
                honoured = self._check_ttl(rec, held, ttl)
                late_pid = None
                if late:
                    late_pid = self._late_target(held, proxy.paused_path)
                    raw.put(*self.late_file(late_pid))
                    ref = self.late_reference(late_pid)
                    t.late_files += 1
                deadline = time.monotonic() + cap
                if honoured and held and not at_once:  # expired for anyone, skew margin too
                    expiry = max(r.expires_at for r in held.values()) + lease_skew(ttl) + 2
                    self._wait_until(lambda: time.time() > expiry, deadline)
                second = self._spawn(self.command(scenario, tmp),
                                     self.env(bucket, plain.endpoint, multipart, raw=raw,
                                              ttl_s=ttl), rec.dir / "second")
                if honoured and after == "takeover" and held:
                    self._wait_taken_over(bucket, held, second, deadline)
                elif honoured:
                    self._wait_until(lambda: second.poll() is not None, deadline)
                proxy.resume()
                paused_code = self._wait(victim, cap)
                t.paused_exits[paused_code] += 1
                if paused_code not in (0, 1):  # 1: it lost its lease (it says so)
                    rec.problems.append(f"paused run exit {paused_code}: "
                                        f"{_tail(rec.dir / 'paused')}")
                code = self._wait(second, cap)
                if code != 0:
                    rec.problems.append(f"second run exit {code}: {_tail(rec.dir / 'second')}")
                took = any(_log_has(rec.dir / "second", mark) for mark in TAKEOVER_MARKS)
                t.takeovers += took
                outcome = (f"paused ({proxy.paused_at}) holding {len(held)} leases"
                           f"{f', late file in {late_pid.state_key}' if late_pid else ''}; "
                           f"{'taken over' if took else 'no takeover'}; paused run exit "
                           f"{paused_code}")
            proxy.arm(None, None)
            leases, tmps = self._leftovers(bucket, tmp)
            self._rerun(rec, bucket, raw)
        assert ref is not None
        final = self.check_final(bucket, self.expected_lcd(scenario), tmp, ref)
        self._end(rec, reader, f"{outcome}; leftovers: {leases} leases, {tmps} temp dirs", final)

    def _leases_of(self, bucket: Bucket, pid: int) -> dict[str, LeaseRecord]:
        """The leases process `pid` holds (lock key -> its record), read now."""
        out = {}
        for key in bucket.keys(LOCKS_PREFIX):
            got = bucket.get(key)
            if got is None:
                continue
            try:
                record = LeaseRecord.from_bytes(got[0])
            except ValueError:
                continue
            if record.owner.pid == pid:
                out[key] = record
        return out

    def _check_ttl(self, rec: TrialRecord, held: dict[str, LeaseRecord], ttl: float) -> bool:
        """Whether the paused run's leases have the TTL the bench asked for."""
        for key, record in held.items():
            left = record.expires_at - time.time()
            if left > ttl + 5:
                rec.problems.append(f"QLC_LEASE_TTL_S={ttl:g} not honoured: the paused run's "
                                    f"lease {key} expires in {left:.0f}s")
                return False
        return True

    def _late_target(self, held: dict[str, LeaseRecord], path: str | None) -> PartitionId:
        """The partition the paused run was working on (its lease, or the request's path)."""
        for key in sorted(held):
            for pid in _pids():
                if key == pid.lock_key:
                    return pid
        found = None if path is None else _pid_of_key(path)
        return found if found is not None else self.found_rng.choice(_pids())

    def _wait_taken_over(self, bucket: Bucket, held: dict[str, LeaseRecord],
                         second: subprocess.Popen[bytes], deadline: float) -> None:
        def taken() -> bool:
            for key, record in held.items():
                got = bucket.get(key)
                if got is not None:
                    try:
                        if LeaseRecord.from_bytes(got[0]).token == record.token:
                            return False
                    except ValueError:
                        pass
            return True

        self._wait_until(lambda: second.poll() is not None or taken(), deadline)

    @staticmethod
    def _wait_until(done: Callable[[], bool], deadline: float) -> None:
        while not done() and time.monotonic() < deadline:
            time.sleep(0.1)

    # .. skew .....................................................................

    def skew_trial(self, n: int, proxy: KillingProxy, plain: S3Proxy) -> None:
        rng = self.rng
        t = self.totals
        scenario = self.draw_scenario("skew")
        multipart = rng.random() < 0.5
        skews = list(SKEWS)
        rng.shuffle(skews)
        rec = self._begin(n, "skew", scenario, f"{'multipart, ' if multipart else ''}clocks "
                          f"{skews[0]:+.0f}s / {skews[1]:+.0f}s")
        bucket = self.prepare(scenario)
        tmp = rec.dir / "tmp"
        before_state = self._attempts(bucket)
        before_meta = {k: bucket.etag(k) for k in bucket.keys("exchange=")
                       if k.endswith("/meta.json")}
        with Reader(bucket, rec.dir / "reader") as reader:
            runs = []
            for i, (skew, via) in enumerate(zip(skews, (proxy, plain), strict=True)):
                name = f"host-{'ab'[i]}"
                runs.append((name, self._spawn(
                    self.command(scenario, tmp, host=f"chaos-{name}"),
                    self.env(bucket, via.endpoint, multipart, skew_s=skew, host=f"chaos-{name}"),
                    rec.dir / name)))
            for name, proc in runs:
                code = self._wait(proc)
                t.skew_runs += 1
                if code != 0:
                    rec.problems.append(f"{name} exit {code}: {_tail(rec.dir / name)}")
                for mark in TAKEOVER_MARKS:
                    lines = _log_lines(rec.dir / name, mark)
                    t.stolen += len(lines)
                    rec.problems += [f"{name} took a live lease of the other run: {line}"
                                     for line in lines]
            requests = proxy.requests + plain.requests
            for what in ("data.parquet", "meta.json"):
                for skey, count in sorted(writes_of(requests, what).items()):
                    if count > 1:
                        t.compacted_twice += what == "data.parquet"
                        rec.problems.append(f"{skey}: {what} written {count} times by the two "
                                            "runs (compacted twice)")
            for key, etags in sorted(reader.meta_etags.items()):
                new = etags - {before_meta.get(key)}
                if len(new) > 1:
                    rec.problems.append(f"{key}: the reader saw {len(new)} meta.json versions "
                                        "published by the two runs")
            for skey, attempts in sorted(self._attempts(bucket).items()):
                if attempts > before_state.get(skey, 0) + 1:
                    rec.problems.append(f"state {skey}: {attempts} attempts after the two runs, "
                                        f"{before_state.get(skey, 0)} before")
            self._rerun(rec, bucket)
        final = self.check_final(bucket, self.expected_lcd(scenario), tmp)
        self._end(rec, reader, "both runs done", final)

    @staticmethod
    def _attempts(bucket: Bucket) -> dict[str, int]:
        got = bucket.get(STATE_KEY)
        if got is None:
            return {}
        entries = parse_document(got[0])["partitions"]
        return {k: int(v.get("attempts", 0)) for k, v in entries.items()}

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


def run(trials: int, seed: int, files: int, rows: int, work: Path, verbose: bool, *,
        lease_ttl_s: float = DEFAULT_LEASE_TTL_S, faults: tuple[str, ...] = FAULTS,
        scenarios: tuple[str, ...] | None = None, keep_all: bool = False) -> Totals:
    rng = random.Random(seed)
    started = time.monotonic()
    faketime = check_faketime(faketime_library(), work) if "skew" in faults else None
    with moto_server(work / "moto.log") as endpoint:
        chaos = Chaos(endpoint, work, rng, verbose, files=files, rows=rows,
                      lease_ttl_s=lease_ttl_s, faults=faults, scenarios=scenarios,
                      faketime=faketime, keep_all=keep_all)
        chaos.write_lake()
        chaos.make_reference()
        # the second run goes through a plain proxy: both runs see the same latency, and
        # the proxy's If-Match check on multipart completes (which moto ignores) applies
        with KillingProxy(endpoint, chaos.raw.name) as proxy, S3Proxy(endpoint) as plain:
            uploads = UploadClock()
            uploads.install(proxy)
            uploads.install(plain)
            for n in range(1, trials + 1):
                chaos.trial(n, proxy, plain)
    chaos.totals.seconds = time.monotonic() - started
    return chaos.totals


def summary(t: Totals) -> str:
    def tail(kind: str) -> str:
        return (f"{t.divergence_count[kind]} divergences"
                + (f" (in {t.diverged_trials[kind]} trials)" if t.divergence_count[kind] else "")
                + f", {t.inconsistent[kind]} inconsistent pairs")

    kinds = ", ".join(f"{t.trials[k]} {k}" for k in FAULTS if t.trials[k])
    scenarios = ", ".join(f"{n} {s}" for s, n in sorted(t.scenarios.items()))
    exits = ", ".join(f"{n} exit {c}" for c, n in sorted(t.paused_exits.items())) or "none"
    lines = [f"chaos: {sum(t.trials.values())} trials ({kinds}; scenarios: {scenarios}) "
             f"in {t.seconds:.0f}s"]
    if t.trials["kill"]:
        lines.append(
            f"kill: {t.trials['kill']} trials, {t.kills} SIGKILL ({t.timed_kills} after a random "
            f"delay, {t.request_kills} at an S3 request, {t.publish_kills} of them in the publish "
            f"phase); {t.finished_before_kill} runs finished before their kill; {tail('kill')}")
    if t.trials["pause"]:
        lines.append(
            f"pause: {t.trials['pause']} trials, {t.pauses} SIGSTOP ({t.timed_pauses} after a "
            f"random delay, {t.request_pauses} at an S3 request, {t.publish_pauses} of them in "
            f"the publish phase, {t.held_requests} holding that request until SIGCONT), lease "
            f"TTL {t.lease_ttl_s:g}s; {t.takeovers} leases taken over by the second run, "
            f"{t.late_files} late raw files; paused runs: {exits}; {t.finished_before_pause} "
            f"runs finished before their pause; {tail('pause')}")
    if t.trials["skew"]:
        lines.append(
            f"skew: {t.trials['skew']} trials, {t.skew_runs} runs as two hosts with clocks at "
            f"{SKEWS[0]:+.0f}s / {SKEWS[1]:+.0f}s: {t.stolen} live leases taken over, "
            f"{t.compacted_twice} partitions compacted twice; {tail('skew')}")
    lines += [
        f"left by the killed and paused runs: {t.leases_left} leases ({t.leases_made_foreign} "
        f"turned into expired leases of another host), {t.tmp_dirs_left} temp dirs"
        + ("; all gone after the re-runs" if not t.divergences else ""),
        f"reader: {t.rounds} rounds, {t.pairs} meta.json read with their data.parquet "
        f"({t.deep} deep checks of the bytes), {t.raced} replaced by a writer during the read",
        f"inconsistent pairs: {len(t.inconsistent_pairs)}",
        f"divergences: {len(t.divergences)}"
        + (f" (in {sum(t.diverged_trials.values())} trials)" if t.divergences else ""),
    ]
    return "\n".join(lines)


def _choices(text: str, allowed: tuple[str, ...], flag: str) -> tuple[str, ...]:
    chosen = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [c for c in chosen if c not in allowed]
    if bad or not chosen:
        raise SystemExit(f"{flag}: expected a comma list of {', '.join(allowed)}, got {text!r}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--files", type=int, default=6, help="raw files per partition-day")
    p.add_argument("--rows", type=int, default=80, help="rows per raw file")
    p.add_argument("--faults", default=",".join(FAULTS),
                   help=f"comma list of fault kinds to deal (default {','.join(FAULTS)})")
    p.add_argument("--scenarios", help="comma list: only these scenarios (of fresh, "
                   "overwrite, pair) where a fault kind has them")
    p.add_argument("--lease-ttl", type=float, default=DEFAULT_LEASE_TTL_S,
                   help="QLC_LEASE_TTL_S of the pause trials' runs (default %(default)g)")
    p.add_argument("--work", type=Path, help="work directory (default: a new temp dir)")
    p.add_argument("--keep", action="store_true",
                   help="keep the work directory (and in it every failing trial's logs)")
    p.add_argument("--keep-all", action="store_true",
                   help="with --keep, keep every trial's logs, not only the failing ones")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per trial")
    args = p.parse_args(argv)
    faults = _choices(args.faults, FAULTS, "--faults")
    scenarios = (_choices(args.scenarios, ("fresh", "overwrite", "pair"), "--scenarios")
                 if args.scenarios else None)
    work = args.work or Path(tempfile.mkdtemp(prefix="qlc-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        totals = run(args.trials, args.seed, args.files, args.rows, work, args.verbose,
                     lease_ttl_s=args.lease_ttl, faults=faults, scenarios=scenarios,
                     keep_all=args.keep and args.keep_all)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(summary(totals), flush=True)
    failed = bool(totals.divergences or totals.inconsistent_pairs)
    if failed and args.keep:
        print("logs of the failing trials: " + " ".join(totals.kept))
    elif failed:
        print("(re-run with --keep to inspect the failing trials' logs)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
