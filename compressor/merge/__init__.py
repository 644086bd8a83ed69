"""The merge: many small raw Parquet files -> one sorted data.parquet (docs/guarantees.md
"How a run works"). This module is the package's face: everything outside it imports from
`compressor.merge` only, and the names below are all it offers.

Inside: `schema` learns what it can from the footers, `writer` plans and writes the
merge, `slices` runs later slices in processes of their own whose side is `worker`,
`memory` picks Arrow's allocator, `errors` holds the typed errors, each naming the
input at fault. The package knows files and Arrow buffers only: no store, CLI,
state, lease, job or logging setup (tests/test_merge_package.py walks its imports).

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
    from compressor.merge.memory import choose_memory_pool
    from compressor.merge.schema import (
        SEQ,
        MemoryInput,
        Source,
        conform,
        read_columns,
        scan_inputs,
        source_name,
        to_ms_array,
    )
    from compressor.merge.slices import WORKER_MODULE, SliceFailed
    from compressor.merge.writer import (
        DEFAULT_MEMORY_BUDGET,
        MergeResult,
        MergeSettings,
        merge_files,
        plan_runs,
    )

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
    "SEQ": "schema",
    "MemoryInput": "schema",
    "Source": "schema",
    "conform": "schema",
    "read_columns": "schema",
    "scan_inputs": "schema",
    "source_name": "schema",
    "to_ms_array": "schema",
    "WORKER_MODULE": "slices",
    "SliceFailed": "slices",
    "DEFAULT_MEMORY_BUDGET": "writer",
    "MergeResult": "writer",
    "MergeSettings": "writer",
    "merge_files": "writer",
    "plan_runs": "writer",
}

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
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
    "merge_files",
    "plan_runs",
    "read_columns",
    "scan_inputs",
    "source_name",
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
