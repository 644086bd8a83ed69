"""What became of one partition in a run, and how a failure is classified.

An outcome's `Status` decides the run's exit code (docs/operations.md "Command line") and whether
its day may count as done (docs/guarantees.md "How a run works"); `classify` turns an exception
out of a compaction into the status, the raw key at fault and the one-line error the
state records (docs/operations.md "Runbook": a partition quarantined or failed).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from compressor.layout import PartitionId
from compressor.lease import LeaseLost
from compressor.merge import MergeAborted
from compressor.partition.compact import BadInputError
from compressor.partition.fetch import RawUnreadableError
from compressor.partition.verify import VerificationError
from compressor.storage.base import StoreError
from compressor.text import one_line


class Status(enum.StrEnum):
    SUCCESS = "success"
    UP_TO_DATE = "up to date"
    NO_DATA = "no data"
    FAILED = "failed"
    QUARANTINED = "quarantined"
    #: Quarantined by an earlier run and left alone (see --retry-quarantine).
    STILL_QUARANTINED = "still quarantined"
    #: Another run holds the partition's lease and is working on it.
    BUSY = "busy elsewhere"
    #: The run was asked to stop before reaching the partition.
    NOT_RUN = "not run"
    #: Rows of its day may still arrive under the next day's folder (docs/guarantees.md
    #: "Rows belong to their event day"): a later run compacts it; the day is not ready.
    WAITING = "waiting for the next day"


DONE = frozenset({Status.SUCCESS, Status.UP_TO_DATE, Status.NO_DATA})
PROBLEMS = frozenset({Status.FAILED, Status.QUARANTINED, Status.STILL_QUARANTINED})

#: Events that end a partition's story in a run (each partition gets one in the JSON log).
FINAL_EVENTS = frozenset({"published", "skipped", "failed", "quarantined"})
#: The JSON log's final event of an outcome ("skipped" for any status not listed).
EVENT_OF = {Status.SUCCESS: "published", Status.FAILED: "failed",
            Status.QUARANTINED: "quarantined"}


@dataclass(frozen=True)
class PartitionOutcome:
    pid: PartitionId
    status: Status
    rows: int = 0
    size_bytes: int = 0
    seconds: float = 0.0
    error: str | None = None
    failed_key: str | None = None
    #: The raw listing the outcome was judged on (None: no raw data files).
    fingerprint: str | None = None
    #: Of a compaction that published: raw files and bytes merged, output row groups,
    #: corrupt raw files left out (--skip-corrupt).
    files_in: int = 0
    bytes_in: int = 0
    row_groups: int = 0
    corrupt_skipped: int = 0
    #: Seconds per step this attempt reached: list (the re-check under the lease), fetch,
    #: merge, verify, upload (docs/operations.md "Observability").
    timings: Mapping[str, float] = field(default_factory=dict, compare=False)

    @property
    def done(self) -> bool:
        return self.status in DONE


#: Failures with a clear one-line story (no traceback in the log).
EXPECTED = (StoreError, OSError, VerificationError, MergeAborted, LeaseLost, BadInputError)


def classify(exc: Exception) -> tuple[Status, str | None, str]:
    """(status, failing key, one-line error) for an exception out of compact_partition."""
    if isinstance(exc, BadInputError):
        return Status.QUARANTINED, exc.key, one_line(str(exc))
    if isinstance(exc, MergeAborted):
        return Status.FAILED, None, "interrupted"
    if isinstance(exc, RawUnreadableError):
        return Status.FAILED, exc.key, one_line(str(exc))
    if isinstance(exc, LeaseLost):
        return Status.FAILED, None, one_line(str(exc))
    if isinstance(exc, StoreError | OSError | VerificationError):
        return Status.FAILED, None, one_line(f"{type(exc).__name__}: {exc}")
    return Status.FAILED, None, one_line(f"unexpected {type(exc).__name__}: {exc}")
