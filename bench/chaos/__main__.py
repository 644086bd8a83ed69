"""Chaos bench: real runs of the job killed, paused past their lease or run on skewed clocks.

`python -m bench.chaos` (see the package docstring): start a moto server, write the lake
and its reference, run the trials, print the summary, exit 1 on any finding.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.chaos.lake import DEFAULT_LEASE_TTL_S, FAULTS
from bench.chaos.proxy import KillingProxy, UploadClock
from bench.chaos.report import Totals, summary
from bench.chaos.skew import check_faketime, faketime_library
from bench.chaos.trials import Chaos
from tests.support.s3proxy import S3Proxy
from tests.support.s3server import moto_server


def run(trials: int, seed: int, files: int, rows: int, work: Path, verbose: bool, *,
        lease_ttl_s: float = DEFAULT_LEASE_TTL_S, faults: tuple[str, ...] = FAULTS,
        scenarios: tuple[str, ...] | None = None, keep_all: bool = False) -> Totals:
    rng = random.Random(seed)
    started = time.monotonic()
    faketime = check_faketime(faketime_library(), work) if "skew" in faults else None
    with moto_server(work / "moto.log") as endpoint:
        chaos = Chaos(endpoint, work, rng, verbose, files=files, rows=rows,
                      lease_ttl_s=lease_ttl_s, faults=faults, scenarios=scenarios,
                      faketime=faketime, keep_all=keep_all)
        chaos.write_lake()
        chaos.make_reference()
        # the second run goes through a plain proxy: both runs see the same latency, and
        # the proxy's If-Match check on multipart completes (which moto ignores) applies
        with KillingProxy(endpoint, chaos.raw.name) as proxy, S3Proxy(endpoint) as plain:
            uploads = UploadClock()
            uploads.install(proxy)
            uploads.install(plain)
            for n in range(1, trials + 1):
                chaos.trial(n, proxy, plain)
    chaos.totals.seconds = time.monotonic() - started
    return chaos.totals



def _choices(text: str, allowed: tuple[str, ...], flag: str) -> tuple[str, ...]:
    chosen = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [c for c in chosen if c not in allowed]
    if bad or not chosen:
        raise SystemExit(f"{flag}: expected a comma list of {', '.join(allowed)}, got {text!r}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--trials", type=int, default=50)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--files", type=int, default=6, help="raw files per partition-day")
    p.add_argument("--rows", type=int, default=80, help="rows per raw file")
    p.add_argument("--faults", default=",".join(FAULTS),
                   help=f"comma list of fault kinds to deal (default {','.join(FAULTS)})")
    p.add_argument("--scenarios", help="comma list: only these scenarios (of fresh, "
                   "overwrite, pair) where a fault kind has them")
    p.add_argument("--lease-ttl", type=float, default=DEFAULT_LEASE_TTL_S,
                   help="QLC_LEASE_TTL_S of the pause trials' runs (default %(default)g)")
    p.add_argument("--work", type=Path, help="work directory (default: a new temp dir)")
    p.add_argument("--keep", action="store_true",
                   help="keep the work directory (and in it every failing trial's logs)")
    p.add_argument("--keep-all", action="store_true",
                   help="with --keep, keep every trial's logs, not only the failing ones")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per trial")
    args = p.parse_args(argv)
    faults = _choices(args.faults, FAULTS, "--faults")
    scenarios = (_choices(args.scenarios, ("fresh", "overwrite", "pair"), "--scenarios")
                 if args.scenarios else None)
    work = args.work or Path(tempfile.mkdtemp(prefix="qlc-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        totals = run(args.trials, args.seed, args.files, args.rows, work, args.verbose,
                     lease_ttl_s=args.lease_ttl, faults=faults, scenarios=scenarios,
                     keep_all=args.keep and args.keep_all)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(summary(totals), flush=True)
    failed = bool(totals.divergences or totals.inconsistent_pairs)
    if failed and args.keep:
        print("logs of the failing trials: " + " ".join(totals.kept))
    elif failed:
        print("(re-run with --keep to inspect the failing trials' logs)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
