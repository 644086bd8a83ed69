"""The job: execute a Plan partition by partition and report what became of each.

Three concepts, one module each, importing downward only:

- `run`: the run loop over the planned partitions (`Job`, `RunReport`): workers,
  days in order, waiting for partitions busy elsewhere, the readiness move.
- `lifecycle`: one partition's attempt: lease -> re-check -> act (compact, relabel,
  sync its state entry, or record its failure).
- `outcome`: what became of a partition (`Status`, `PartitionOutcome`) and how a
  failure is classified (`classify`).

Callers outside import from `compressor.job` (docs/guarantees.md "How a run works").
"""

from compressor.job.lifecycle import JobObserver
from compressor.job.outcome import PartitionOutcome, Status, classify
from compressor.job.run import BUSY_POLL_S, BUSY_WAIT_S, REPORT_PROBLEMS, Job, RunReport

__all__ = [
    "BUSY_POLL_S",
    "BUSY_WAIT_S",
    "REPORT_PROBLEMS",
    "Job",
    "JobObserver",
    "PartitionOutcome",
    "RunReport",
    "Status",
    "classify",
]
