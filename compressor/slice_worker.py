"""The child side of a slice process (compressor.merge_slices).

`python -m compressor.slice_worker JOB_FILE` reads its SliceJob (JSON), then: scans
its slice's footers and sends ("scanned", SliceSummary); sorts the slice into the
job's target file (Arrow IPC, uncompressed); sends ("done", figures). Any failure is
sent as ("error", described) and ends the process with status 1, so the parent
raises what a one-process merge would have raised.
"""

from __future__ import annotations

import signal

# First of all, before the imports take their quarter second: a terminal's Ctrl-C and
# systemd's stop reach every process of the job, and the job handles them (docs/guarantees.md
# "Failure classes"), ending its slice processes itself.
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)

import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from compressor.memory_pool import choose_memory_pool  # noqa: E402
from compressor.merge_slices import SliceJob, describe_error, die_with_parent, send  # noqa: E402
from compressor.merge_writer import MergeSettings, scan_slice, sort_slice  # noqa: E402


def main() -> int:
    die_with_parent()
    choose_memory_pool()
    out = sys.stdout.buffer
    job = SliceJob.from_json(Path(sys.argv[1]).read_bytes())
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
