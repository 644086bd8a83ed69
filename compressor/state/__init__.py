"""The job's state at `compacted/_state.json`: what is done, per partition and per day.

Three concepts, one module each, importing downward only:

- `document`: the document's shape (BRIEF §2), its entries (`PartitionState`) and
  their strict validation, parsing and deterministic serialization;
- `merge`: how two writers' entries combine (`merge_entries`, newer attempt wins)
  and how `last_compacted_date` may move (`ready_date`, `vouched_watermark`);
- `store`: `StateStore`, which reads the document and writes queued updates by
  batched compare-and-swap, and repairs a malformed one (`backup_and_reset`).

Callers import from `compressor.state` (docs/operations.md "compacted/_state.json").
"""

from compressor.state.document import (
    FAILURE_STATUSES,
    REPAIR_HINT,
    SCHEMA_VERSION,
    STATUSES,
    PartitionState,
    StateCorruptError,
    empty_document,
    parse_document,
    serialize_document,
)
from compressor.state.merge import merge_entries, ready_date, vouched_watermark
from compressor.state.store import (
    RepairResult,
    StateConflictError,
    StateSnapshot,
    StateStore,
    event_day_from_of,
)

__all__ = [
    "FAILURE_STATUSES",
    "REPAIR_HINT",
    "SCHEMA_VERSION",
    "STATUSES",
    "PartitionState",
    "event_day_from_of",
    "RepairResult",
    "StateConflictError",
    "StateCorruptError",
    "StateSnapshot",
    "StateStore",
    "empty_document",
    "merge_entries",
    "parse_document",
    "ready_date",
    "serialize_document",
    "vouched_watermark",
]
