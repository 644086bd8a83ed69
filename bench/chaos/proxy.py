"""The fault proxy: which S3 request is which, and the SIGKILL or SIGSTOP aimed at one."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import unquote

from bench.chaos.lake import _pid_of_key
from compressor.layout import LOCKS_PREFIX, STATE_KEY
from compressor.text import utc_iso
from tests.support.s3proxy import S3Proxy, Seen


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


