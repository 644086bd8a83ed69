#!/usr/bin/env python3
"""Write one collector-shaped raw partition-day for the benchmark (see bench/README.md).

python bench/generate.py --files 3000 --rows 1100 --out /tmp/lake
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from compressor.demo import (  # noqa: E402
    LAYOUTS,
    STREAM_COLUMNS,
    PartitionSpec,
    rows_in_file,
    special_files,
    write_partition,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--files", type=int, default=3000, help="objects in the partition (3000)")
    ap.add_argument("--rows", type=int, default=1100, help="mean rows per file (1100)")
    ap.add_argument("--stream", default="bbo", choices=sorted(STREAM_COLUMNS))
    ap.add_argument("--exchange", default="binance")
    ap.add_argument("--symbol", default="btcusdt")
    ap.add_argument("--date", default="20261124", help="partition day YYYYMMDD")
    ap.add_argument("--layout", default="edges", choices=LAYOUTS)
    ap.add_argument("--schema-drift", action="store_true", help="vary the schema over the day")
    ap.add_argument("--corrupt", type=int, default=0, help="damaged objects among the files")
    ap.add_argument("--empty", type=int, default=0, help="zero-row files among the files")
    ap.add_argument("--strays", action="store_true", help="also write ._* and .tmp objects")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="writer processes")
    ap.add_argument("--out", type=Path, required=True, help="lake root (partition goes under it)")
    args = ap.parse_args(argv)

    spec = PartitionSpec(
        exchange=args.exchange,
        stream=args.stream,
        symbol=args.symbol,
        date=args.date,
        files=args.files,
        rows_per_file=args.rows,
        seed=args.seed,
        layout=args.layout,
        schema_drift=args.schema_drift,
        corrupt=args.corrupt,
        empty=args.empty,
        strays=args.strays,
    )
    directory = args.out / spec.partition.prefix
    if directory.exists() and any(directory.iterdir()):
        print(f"error: {directory} is not empty; pick another --out", file=sys.stderr)
        return 2
    started = time.perf_counter()
    paths = write_partition(spec, args.out, workers=args.workers)
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in paths)
    specials = special_files(spec)
    rows = sum(rows_in_file(spec, i) for i in range(spec.files) if i not in specials)
    print(directory)
    print(
        f"{len(paths)} files, {rows:,} readable rows, {size / 2**20:.1f} MiB, "
        f"written in {seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
