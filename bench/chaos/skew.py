"""Clock skew: two runs as two hosts, their wall clocks shifted by libfaketime."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.chaos.lake import SKEWS
from compressor.lease import DEFAULT_SKEW_S

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


