#!/usr/bin/env python3
"""Client CPU and wall per raw object fetched from S3, for each candidate client.

    python bench/fetch_cost.py                 # 3,000 objects of ~30 KB, 3 reps, 16 at once
    python bench/fetch_cost.py --objects 1000 --reps 5 --clients obstore,boto3_get_object

Starts a moto S3 server in its own process (tests/support/s3server.py), uploads N objects,
then, for every rep, has each client fetch all of them with `--concurrency`
requests in flight (clients take turns within a rep). Measured in this process
only, so the server's own work is not counted: process CPU (user + system of
every thread, `time.process_time`) and wall time, each divided by N. Medians of
the reps. The table is in bench/README.md ("Fetch cost").

"py thread" is how far a pure-Python thread (a counting loop, standing for the
merge's Python work) gets during a second pass of the same fetch, relative to
how far it gets beside boto3_get_object in the same rep: a client that holds
the GIL starves it. (Per rep, the rate is also printed as a share of the
thread's rate alone; on a shared machine that baseline drifts, the ratio
between clients much less.)

Clients:
- boto3_get_file: today's fetch (S3Store.get_file, boto3 download to a temp file).
- boto3_get_object: boto3 get_object + Body.read() into memory.
- pyarrow_stream: pyarrow.fs.S3FileSystem.open_input_stream(...).read_buffer()
  (one GET; open_input_file would HEAD first).
- obstore: obstore.get(...).bytes() from a pool of threads (the GIL is released while
  it waits and copies).
- obstore_async: obstore.get_async(...) under asyncio, `--concurrency` at once.
- reader: compressor.storage's data-path reader as the fetch uses it (S3DataReader).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.s3server import (  # noqa: E402 - after the sys.path line
    TEST_ACCESS_KEY,
    TEST_REGION,
    TEST_SECRET_KEY,
    moto_server,
)

BUCKET = "qlc-fetch-cost"
PREFIX = "exchange=binance/stream=bbo/symbol=btcusdt/date=20261124/"
CLIENTS = ("boto3_get_file", "boto3_get_object", "pyarrow_stream", "obstore",
           "obstore_async", "reader")


def _boto3_client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=endpoint, region_name=TEST_REGION,
        aws_access_key_id=TEST_ACCESS_KEY, aws_secret_access_key=TEST_SECRET_KEY,
        config=Config(max_pool_connections=32, s3={"addressing_style": "path"},
                      request_checksum_calculation="when_required",
                      response_checksum_validation="when_required"),
    )


def upload(endpoint: str, count: int, size: int) -> list[str]:
    client = _boto3_client(endpoint)
    client.create_bucket(Bucket=BUCKET)
    keys = [f"{PREFIX}part-1764000000-{n:06d}.parquet" for n in range(count)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=BUCKET, Key=k,
                                                  Body=os.urandom(size)), keys))
    return keys


# ------------------------------------------------------------------ the clients
# Each factory returns fetch(key) -> number of bytes, set up (and warmed) outside
# the measured window.


def make_boto3_get_file(endpoint: str, scratch: Path) -> Callable[[str], int]:
    from tests.conftest import make_s3_store

    store = make_s3_store(endpoint, BUCKET)
    counter = iter(range(10**9))

    def fetch(key: str) -> int:
        return store.get_file(key, scratch / f"{next(counter):07d}.parquet").size

    return fetch


def make_boto3_get_object(endpoint: str, scratch: Path) -> Callable[[str], int]:
    client = _boto3_client(endpoint)

    def fetch(key: str) -> int:
        return len(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())

    return fetch


def make_pyarrow_stream(endpoint: str, scratch: Path) -> Callable[[str], int]:
    from pyarrow import fs

    host = endpoint.split("://", 1)[1]
    s3 = fs.S3FileSystem(access_key=TEST_ACCESS_KEY, secret_key=TEST_SECRET_KEY,
                         region=TEST_REGION, endpoint_override=host, scheme="http",
                         force_virtual_addressing=False)

    def fetch(key: str) -> int:
        with s3.open_input_stream(f"{BUCKET}/{key}", compression=None) as stream:
            return int(stream.read_buffer().size)

    return fetch


def _obstore(endpoint: str) -> Any:
    from obstore.store import S3Store

    return S3Store(BUCKET, endpoint=endpoint, access_key_id=TEST_ACCESS_KEY,
                   secret_access_key=TEST_SECRET_KEY, region=TEST_REGION,
                   virtual_hosted_style_request=False,
                   client_options={"allow_http": True, "pool_max_idle_per_host": "32"})


def make_obstore(endpoint: str, scratch: Path) -> Callable[[str], int]:
    import obstore

    store = _obstore(endpoint)

    def fetch(key: str) -> int:
        return len(obstore.get(store, key).bytes())

    return fetch


def make_reader(endpoint: str, scratch: Path) -> Callable[[str], int]:
    from compressor.storage import open_store

    env = {"S3_ENDPOINT": endpoint, "S3_ACCESS_KEY": TEST_ACCESS_KEY,
           "S3_SECRET_KEY": TEST_SECRET_KEY, "S3_REGION": TEST_REGION}
    reader = open_store(f"s3://{BUCKET}", env, role="raw").data_reader()

    def fetch(key: str) -> int:
        return int(reader.read(key).data.size)

    return fetch


def run_threads(fetch: Callable[[str], int], keys: list[str], concurrency: int) -> int:
    with ThreadPoolExecutor(concurrency) as pool:
        return sum(pool.map(fetch, keys))


def run_obstore_async(endpoint: str, keys: list[str], concurrency: int) -> Callable[[], int]:
    import obstore

    store = _obstore(endpoint)

    async def main(batch: list[str]) -> int:
        gate = asyncio.Semaphore(concurrency)

        async def one(key: str) -> int:
            async with gate:
                result = await obstore.get_async(store, key)
                return len(await result.bytes_async())

        return sum(await asyncio.gather(*(one(k) for k in batch)))

    asyncio.run(main(keys[:concurrency]))  # warm up
    return lambda: asyncio.run(main(keys))


class Spinner:
    """A pure-Python thread counting loop iterations: how much of the GIL it gets."""

    def __init__(self) -> None:
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, daemon=True)

    def _spin(self) -> None:
        while not self._stop.is_set():
            for _ in range(1000):
                pass
            self.count += 1

    def __enter__(self) -> Spinner:
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.rate = self.count / (time.perf_counter() - self._started)


def spin_alone(seconds: float = 1.0) -> float:
    with Spinner() as spinner:
        time.sleep(seconds)
    return spinner.rate


def measure(name: str, endpoint: str, keys: list[str], concurrency: int,
            scratch: Path) -> tuple[float, float, float]:
    """(CPU ms per object, wall ms per object, spinner rate) of one pass over `keys`."""
    if name == "obstore_async":
        go = run_obstore_async(endpoint, keys, concurrency)
    else:
        factory = globals()[f"make_{name}"]
        fetch = factory(endpoint, scratch)
        run_threads(fetch, keys[:concurrency], concurrency)  # warm up: connections, imports

        def go() -> int:
            return run_threads(fetch, keys, concurrency)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    total = go()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    assert total > 0
    with Spinner() as spinner:
        go()
    return cpu * 1000 / len(keys), wall * 1000 / len(keys), spinner.rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=3000)
    parser.add_argument("--size", type=int, default=30_000, help="bytes per object")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--clients", default=",".join(CLIENTS))
    args = parser.parse_args()
    clients = [c for c in args.clients.split(",") if c]
    unknown = set(clients) - set(CLIENTS)
    if unknown:
        parser.error(f"unknown clients {sorted(unknown)}; known: {', '.join(CLIENTS)}")
    results: dict[str, list[tuple[float, float, float]]] = {c: [] for c in clients}
    alone: list[float] = []
    with tempfile.TemporaryDirectory(prefix="qlc-fetch-cost-") as tmp, \
            moto_server(Path(tmp) / "moto.log") as endpoint:
        keys = upload(endpoint, args.objects, args.size)
        print(f"{len(keys)} objects of {args.size} bytes, {args.concurrency} in flight, "
              f"{args.reps} reps; load {os.getloadavg()[0]:.2f}", flush=True)
        for rep in range(args.reps):
            alone.append(spin_alone())
            for name in clients:
                scratch = Path(tmp) / f"{name}-{rep}"
                scratch.mkdir()
                cpu, wall, spin = measure(name, endpoint, keys, args.concurrency, scratch)
                results[name].append((cpu, wall, spin / alone[-1]))
                print(f"  rep {rep + 1} {name:17s} cpu {cpu:5.2f} ms/object  "
                      f"wall {wall:5.2f} ms/object  py thread {spin / alone[-1]:4.0%}",
                      flush=True)
    base_runs = results.get("boto3_get_object")
    base = statistics.median(cpu for cpu, _, _ in base_runs) if base_runs else 0.0
    print()
    print("| client | CPU ms/object | wall ms/object | CPU vs boto3 get_object "
          "| py thread vs boto3 get_object |")
    print("|---|---|---|---|---|")
    for name in clients:
        cpu = statistics.median(c for c, _, _ in results[name])
        wall = statistics.median(w for _, w, _ in results[name])
        ratio = f"{cpu / base:.2f}" if base else "-"
        spin = "-"
        if base_runs:
            pairs = zip(results[name], base_runs, strict=True)
            spin = f"{statistics.median(mine[2] / theirs[2] for mine, theirs in pairs):.2f}"
        print(f"| {name} | {cpu:.2f} | {wall:.2f} | {ratio} | {spin} |")
    print(f"\n(load at the end {os.getloadavg()[0]:.2f}; threads alive {threading.active_count()})")


if __name__ == "__main__":
    main()
