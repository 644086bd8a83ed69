"""The command's entry point (`quantlab-compact`, `run.py`): start the spare slice
processes, then import and run the command line (compressor.cli).

Why first: importing the job (pyarrow, numpy, boto3) takes this process about a third
of a second, during which the other cores are idle. A slice process started now
imports in that time, so the first merge of one big partition finds it ready
(docs/guarantees.md "How a run works"). Only the standard library and the merge
package's face (which loads merge/slices.py alone, standard library only) are
imported before it. The command line stops the spares its arguments do not need as
soon as it has parsed them, and every spare when it ends.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from compressor.merge import spare_limit, spares_for, start_spare_slices

#: Arguments after which the command compacts nothing: no spare is started for them.
_NO_MERGE = frozenset({"-h", "--help", "--version", "--dry-run", "--quality-report",
                       "--repair-state"})


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not _NO_MERGE.intersection(args):
        try:
            limit = spare_limit(os.environ)
        except ValueError:  # the command line names the variable, exit 2
            limit = 0
        start_spare_slices(spares_for(os.cpu_count() or 1, None, limit))
    from compressor.cli import main as cli_main

    return cli_main(args)
