"""The child side of a slice process (compressor.merge.slices).

`python -m compressor.merge.worker PARENT_PID` imports what it needs, then waits for
the path of its SliceJob (a JSON file) on its stdin (it may be started before its
job is known: slices.Spares); an empty stdin ends it quietly. Given its job, it
scans its slice's footers and sends ("scanned", SliceSummary); sorts the slice
into the job's target file (Arrow IPC, uncompressed); sends ("done", figures). Any
failure is sent as ("error", described) and ends the process with status 1, so the
parent raises what a one-process merge would have raised.

Before anything else, with the standard library only, it asks Linux to kill it when
its parent dies and then checks that the parent is still the one that started it: a
job killed with SIGKILL while its slices are still importing pyarrow (a quarter of a
second) leaves none of them running on (docs/guarantees.md "Guarantees under failure").
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

#: prctl(2) option: the signal this process gets when its parent thread dies.
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """PR_SET_PDEATHSIG, then exit at once if `parent` is already gone (the signal only
    covers a death after it is set). Best effort where prctl is missing: then a closed
    pipe ends the process at its next message."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


# First of all, before the imports take their quarter second: a terminal's Ctrl-C and
# systemd's stop reach every process of the job, and the job handles them (docs/guarantees.md
# "Failure classes"), ending its slice processes itself.
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if __name__ == "__main__":
    _die_with_parent(int(sys.argv[1]))

from pathlib import Path  # noqa: E402

from compressor.merge.memory import choose_memory_pool  # noqa: E402
from compressor.merge.settings import MergeSettings  # noqa: E402
from compressor.merge.slice_merge import scan_slice, sort_slice  # noqa: E402
from compressor.merge.slices import SliceJob, describe_error, send  # noqa: E402


def main() -> int:
    choose_memory_pool()
    out = sys.stdout.buffer
    line = sys.stdin.buffer.readline().rstrip(b"\n")
    if not line:  # a spare the job did not need
        return 0
    job = SliceJob.from_json(Path(os.fsdecode(line)).read_bytes())
    try:
        scanned = scan_slice([Path(p) for p in job.paths])
        send(out, ("scanned", scanned.summary()))
        figures = sort_slice(scanned, MergeSettings(**job.settings), job.target,
                             work_dir=Path(job.work_dir))
    except BaseException as exc:  # everything goes to the parent, which decides
        send(out, ("error", describe_error(exc)))
        return 1
    send(out, ("done", figures))
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    os._exit(code)  # no interpreter teardown: the parent is waiting on this status
