"""The lake the trials run on: its days and partitions, and plain access to a bucket."""

from __future__ import annotations

import uuid
from pathlib import Path

import boto3

from compressor.demo import PartitionSpec
from compressor.layout import PartitionId
from compressor.storage.base import ObjectInfo, normalize_etag
from tests.support.s3server import (
    TEST_ACCESS_KEY,
    TEST_REGION,
    TEST_SECRET_KEY,
)

REPO = Path(__file__).resolve().parents[2]

TODAY = "20261125"
DAYS = ("20261123", "20261124")
BEFORE = "20261122"
PARTS = (("binance", "trade", "btcusdt"), ("okx", "bbo", "ethusdt"),
         ("bybit", "mark_price", "solusdt"))
FAULTS = ("kill", "pause", "skew")
#: Scenarios per fault kind (see the package docstring, bench/chaos/__init__.py).
SCENARIOS = {"kill": ("fresh", "overwrite", "pair"), "pause": ("fresh", "overwrite"),
             "skew": ("fresh", "overwrite")}
#: One block of trials: every five consecutive trials (from the first) hold each kind.
DECK = ("kill", "kill", "kill", "pause", "skew")
#: meta.json keys that must equal the reference run's (the rest are timings and stamps).
META_MUST_MATCH = ("schema_version", "rows", "ts_event_min", "ts_event_max", "ordering_columns",
                   "sha256", "size_bytes", "source_files", "source_fingerprint", "stream_type",
                   "day_quality", "post_filter_version")
#: Kinds of S3 request a kill or a pause can be aimed at; the last three are the publish phase.
TARGETS = ("lock", "state", "raw-get", "meta-delete", "data", "meta-put")
PUBLISH = ("meta-delete", "data", "meta-put")
RUN_TIMEOUT_S = 120
#: data.parquet here is ~10-20 KiB: below this, uploads are single PUTs; above, multipart.
MULTIPART_THRESHOLD = "4096"
#: Lease TTL of the pause trials' runs (QLC_LEASE_TTL_S). Their clock allowance is then
#: lease_skew(TTL) (a quarter of it), so a paused run's lease is taken over about
#: 1.25 TTL after its last renewal. Renewals come every TTL/3: much shorter and a busy
#: 2-core machine makes live runs lose theirs.
DEFAULT_LEASE_TTL_S = 10.0
#: Clock skews of the two runs of a skew trial (seconds; the job refuses more than 15 min).
SKEWS = (-300.0, 360.0)
#: Log lines of the job that mean a lease was judged dead and taken over or removed.
TAKEOVER_MARKS = ("took over lease", "removed a lease left behind")
#: The pause trials' late raw file goes to the paused partition with this probability.
LATE_FILE_P = 0.7


def _pids() -> list[PartitionId]:
    return [PartitionId(ex, st, sy, d) for d in DAYS for ex, st, sy in PARTS]


def _pid_of_key(key: str) -> PartitionId | None:
    """The partition an S3 key (compact output or raw file) belongs to, if any."""
    for pid in _pids():
        if pid.prefix in key or pid.lock_key in key:
            return pid
    return None


def _spec(pid: PartitionId, files: int, rows: int) -> PartitionSpec:
    n = [p[:3] for p in PARTS].index((pid.exchange, pid.stream, pid.symbol))
    return PartitionSpec(exchange=pid.exchange, stream=pid.stream, symbol=pid.symbol,
                         date=pid.date, files=files, rows_per_file=rows, seed=n)



# --------------------------------------------------------------------------- S3 helpers


class Bucket:
    """Plain boto3 access to one bucket, straight to the server (never through a proxy).

    ETags come back normalized (unquoted), as compressor.storage's ObjectInfo has them.
    """

    def __init__(self, endpoint: str, name: str) -> None:
        self.name = name
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name=TEST_REGION,
                                   aws_access_key_id=TEST_ACCESS_KEY,
                                   aws_secret_access_key=TEST_SECRET_KEY)

    def create(self) -> Bucket:
        self.client.create_bucket(Bucket=self.name)
        return self

    def keys(self, prefix: str = "") -> list[str]:
        out: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.name, Prefix=prefix):
            out.extend(o["Key"] for o in page.get("Contents", []))
        return out

    def get(self, key: str) -> tuple[bytes, str] | None:
        try:
            resp = self.client.get_object(Bucket=self.name, Key=key)
        except self.client.exceptions.NoSuchKey:
            return None
        return resp["Body"].read(), normalize_etag(resp["ETag"])

    def head(self, key: str) -> ObjectInfo | None:
        try:
            resp = self.client.head_object(Bucket=self.name, Key=key)
        except self.client.exceptions.ClientError:
            return None
        return ObjectInfo(key, int(resp["ContentLength"]), resp["ETag"])

    def etag(self, key: str) -> str | None:
        info = self.head(key)
        return None if info is None else info.etag

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=self.name, Key=key, Body=body)

    def copy_from(self, other: Bucket) -> None:
        for key in other.keys():
            self.client.copy_object(Bucket=self.name, Key=key,
                                    CopySource={"Bucket": other.name, "Key": key})


def new_bucket(endpoint: str) -> Bucket:
    return Bucket(endpoint, f"qlc-chaos-{uuid.uuid4().hex[:12]}").create()


