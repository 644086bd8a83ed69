"""Which allocator Arrow uses in this process (docs/operations.md "Configuration").

pyarrow's wheels default to mimalloc. On the 17,280-file day, a merge in two slices
peaked at 356 MB of RSS with mimalloc and 313 MB with jemalloc, in the same CPU
time (bench/README.md "Whole job"): jemalloc hands freed row groups back to the
OS sooner. So the job and its slice processes use jemalloc where the wheel has
it, unless ARROW_DEFAULT_MEMORY_POOL names a pool (the operator's choice wins).
It is a process setting, made once by the entry points before any allocation.
"""

from __future__ import annotations

import os

import pyarrow as pa


def choose_memory_pool() -> str:
    """Make jemalloc Arrow's default pool when allowed and available; the pool's name."""
    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        try:
            pa.set_memory_pool(pa.jemalloc_memory_pool())
        except NotImplementedError:  # a pyarrow built without jemalloc
            pass
    return pa.default_memory_pool().backend_name
