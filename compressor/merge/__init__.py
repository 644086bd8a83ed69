"""The merge: many small raw Parquet files -> one sorted data.parquet (docs/guarantees.md
"How a run works"). This module is the package's face: everything outside it imports from
`compressor.merge` only, and the names below are all it offers.

Inside, from the bottom up: `errors` holds the typed errors, each naming the input at
fault; `inputs` is one input (a file or bytes, its footer, what a failed read means);
`reading` reads its rows; `schema` learns what it can from all the footers;
`settings` is MergeSettings and MergeResult; `sorting` loads and sorts rows; `plan`
cuts the inputs into runs; `spill` writes, reads and k-way merges sorted runs; `runs`
executes a plan; `output` writes data.parquet; `slice_merge` is the merge in slices,
whose processes `slices` starts and `worker` runs; `writer` is the entry
(`merge_files`); `memory` picks Arrow's allocator. The package knows files and Arrow
buffers only: no store, CLI, state, lease, job or logging setup
(tests/test_merge_package.py walks its imports).

The names are loaded on first use, not here: `python -m compressor.merge.worker`
imports this package before its first line, and a slice process must ask Linux to
end it with its parent before the quarter second pyarrow takes to import (see
worker.py). So importing this package imports no more than the standard library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from compressor.merge.errors import (
        BadTsEventTypeError,
        CorruptFileError,
        MergeAborted,
        MergeInputError,
        MergeResourceError,
        MissingTsEventError,
        NullTsEventError,
        SchemaConflictError,
    )
    from compressor.merge.inputs import SEQ, MemoryInput, Source, source_name
    from compressor.merge.memory import choose_memory_pool
    from compressor.merge.plan import plan_runs
    from compressor.merge.reading import read_columns, to_ms_array
    from compressor.merge.schema import conform, scan_inputs
    from compressor.merge.settings import DEFAULT_MEMORY_BUDGET, MergeResult, MergeSettings
    from compressor.merge.slices import (
        MAX_SPARE_SLICES,
        WORKER_MODULE,
        SliceFailed,
        keep_spare_slices,
        spare_limit,
        spares_for,
        start_spare_slices,
    )
    from compressor.merge.writer import merge_files

#: Each name the face offers -> the module of this package that defines it.
_HOME = {
    "BadTsEventTypeError": "errors",
    "CorruptFileError": "errors",
    "MergeAborted": "errors",
    "MergeInputError": "errors",
    "MergeResourceError": "errors",
    "MissingTsEventError": "errors",
    "NullTsEventError": "errors",
    "SchemaConflictError": "errors",
    "choose_memory_pool": "memory",
    "SEQ": "inputs",
    "MemoryInput": "inputs",
    "Source": "inputs",
    "conform": "schema",
    "read_columns": "reading",
    "scan_inputs": "schema",
    "source_name": "inputs",
    "to_ms_array": "reading",
    "WORKER_MODULE": "slices",
    "MAX_SPARE_SLICES": "slices",
    "SliceFailed": "slices",
    "keep_spare_slices": "slices",
    "start_spare_slices": "slices",
    "spares_for": "slices",
    "spare_limit": "slices",
    "DEFAULT_MEMORY_BUDGET": "settings",
    "MergeResult": "settings",
    "MergeSettings": "settings",
    "merge_files": "writer",
    "plan_runs": "plan",
}

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "MAX_SPARE_SLICES",
    "SEQ",
    "WORKER_MODULE",
    "BadTsEventTypeError",
    "CorruptFileError",
    "MemoryInput",
    "MergeAborted",
    "MergeInputError",
    "MergeResourceError",
    "MergeResult",
    "MergeSettings",
    "MissingTsEventError",
    "NullTsEventError",
    "SchemaConflictError",
    "SliceFailed",
    "Source",
    "choose_memory_pool",
    "conform",
    "keep_spare_slices",
    "merge_files",
    "plan_runs",
    "read_columns",
    "scan_inputs",
    "source_name",
    "spare_limit",
    "spares_for",
    "start_spare_slices",
    "to_ms_array",
]


def __getattr__(name: str) -> Any:
    """Load a face name from its module on first use (PEP 562), then keep it here."""
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
