"""The job end to end on a real Ceph RGW (Debian's radosgw 16.2), started by the suite.

RGW 16.2 differs from AWS in ways moto cannot show (docs/operations.md "Store compatibility"):
If-Match compared unquoted, DeleteObject and CompleteMultipartUpload ignoring
conditions, an empty ETag from CompleteMultipartUpload, and a 500 for a lost
conditional race. These tests run `python run.py` against it as a user would:
daily, catch-up, a re-run that does nothing, `--mode verify --deep`, a data.parquet
above the multipart threshold, and two runs at once. The storage contract suite runs
on it too (tests/test_storage.py, the `store` fixture's `rgw` case).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from compressor.demo import PartitionSpec
from compressor.layout import PartitionId
from compressor.meta import Meta, check_data_file
from compressor.state import StateStore
from compressor.storage import PreconditionFailed, S3Store
from tests.conftest import make_rgw_store, put_partition, rgw_bucket, rgw_client
from tests.support.rgwserver import RGW

pytestmark = pytest.mark.rgw

REPO = Path(__file__).resolve().parents[1]
PAIRS = (("binance", "trade", "btcusdt"), ("okx", "bbo", "ethusdt"))


@dataclass
class Run:
    code: int
    out: str
    err: str


@dataclass
class RgwWorld:
    rgw: RGW
    env: dict[str, str]
    raw: S3Store
    compact: S3Store
    cwd: Path

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(REPO / "run.py"), "--tmp-dir", str(self.cwd / "tmp"), *args],
            env=env or self.env, cwd=self.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)

    def run(self, *args: str, env: dict[str, str] | None = None) -> Run:
        proc = self.start(*args, env=env)
        out, err = proc.communicate(timeout=300)
        assert self.rgw.secret_key not in out + err and self.rgw.access_key not in out + err
        return Run(proc.returncode, out, err)

    def add_days(self, *days: str, files: int = 4, rows: int = 60) -> None:
        for day in days:
            for ex, stream, sym in PAIRS:
                put_partition(self.raw, PartitionSpec(exchange=ex, stream=stream, symbol=sym,
                                                      date=day, files=files, rows_per_file=rows),
                              self.cwd)

    def state(self) -> dict[str, Any]:
        return json.loads(self.compact.get_bytes("compacted/_state.json")[0])

    def outputs(self) -> dict[str, Meta]:
        """state_key -> meta of every published pair; asserts each pair is whole."""
        metas = {}
        for info in self.compact.list_objects("exchange="):
            if not info.key.endswith("/meta.json"):
                continue
            pid = PartitionId.from_prefix(info.key[: -len("meta.json")])
            meta = Meta.from_bytes(self.compact.get_bytes(info.key)[0], info.key)
            local = self.cwd / "check.parquet"
            data = self.compact.get_file(pid.data_key, local)
            assert meta.describes(data), (info.key, meta, data)
            assert check_data_file(meta, local) == [], info.key
            metas[pid.state_key] = meta
        return metas


@pytest.fixture
def world(rgw: RGW, tmp_path: Path) -> RgwWorld:
    raw_bucket, compact_bucket = rgw_bucket(rgw), rgw_bucket(rgw)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    env.update({
        "S3_ENDPOINT": rgw.endpoint, "S3_ACCESS_KEY": rgw.access_key,
        "S3_SECRET_KEY": rgw.secret_key, "S3_REGION": "us-east-1",
        "S3_BUCKET": raw_bucket, "S3_COMPACT_BUCKET": compact_bucket,
        "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true", "PYTHONPATH": str(REPO),
    })
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    return RgwWorld(rgw, env, make_rgw_store(rgw, raw_bucket), make_rgw_store(rgw, compact_bucket),
                    cwd)


def test_the_job_on_rgw_daily_catch_up_rerun_and_deep_verify(world: RgwWorld) -> None:
    world.add_days("20261123", "20261124")
    daily = world.run("--mode", "daily", "--today", "20261125")
    assert daily.code == 0, daily.err
    # what the job does differently on this server is said, never silent
    for fallback in ("If-Match is sent unquoted", "DeleteObject ignores If-Match",
                     "CompleteMultipartUpload ignores If-None-Match/If-Match"):
        assert fallback in daily.err, daily.err
    assert set(world.outputs()) == {f"{ex}/{st}/{sym}/20261124" for ex, st, sym in PAIRS}
    assert world.state()["last_compacted_date"] == "20261124"

    world.add_days("20261125", "20261126")
    catch_up = world.run("--today", "20261127")
    assert catch_up.code == 0, catch_up.err
    metas = world.outputs()
    # the lookback brings 20261123 in too (docs/guarantees.md "How a run works")
    assert {k.rsplit("/", 1)[1] for k in metas} == {"20261123", "20261124", "20261125",
                                                     "20261126"}
    state = world.state()
    assert state["last_compacted_date"] == "20261126"
    assert {e["status"] for e in state["partitions"].values()} == {"success"}
    for key, meta in metas.items():
        assert state["partitions"][key]["rows"] == meta.rows

    before = {o.key: o.etag for o in world.compact.list_objects("exchange=")}
    again = world.run("--today", "20261127")
    assert again.code == 0, again.err
    assert {o.key: o.etag for o in world.compact.list_objects("exchange=")} == before

    deep = world.run("--mode", "verify", "--date-from", "20261124", "--date-to", "20261126",
                     "--deep")
    assert deep.code == 0, deep.out + deep.err
    assert "0 problems" in deep.out + deep.err


def test_a_data_parquet_above_the_multipart_threshold_on_rgw(world: RgwWorld) -> None:
    """RGW 16.2's CompleteMultipartUpload ignores conditions: a conditional publish of a
    multipart-sized data.parquet goes as one conditional PUT, and its meta.json names
    the right ETag (not the empty one RGW's complete answers)."""
    world.add_days("20261124", files=6, rows=4000)
    env = {**world.env, "S3_MULTIPART_THRESHOLD": str(64 << 10)}
    first = world.run("--mode", "daily", "--today", "20261125", env=env)
    assert first.code == 0, first.err
    metas = world.outputs()
    assert len(metas) == 2 and all(m.size_bytes > 64 << 10 for m in metas.values())
    assert all(m.data_etag and "-" not in m.data_etag for m in metas.values())  # one PUT
    over = world.run("--mode", "backfill", "--date-from", "20261124", "--date-to", "20261124",
                     "--overwrite", env=env)
    assert over.code == 0, over.err
    assert set(world.outputs()) == set(metas)
    deep = world.run("--mode", "verify", "--date-from", "20261124", "--date-to", "20261124",
                     "--deep", env=env)
    assert deep.code == 0, deep.out + deep.err
    uploads = rgw_client(world.rgw).list_multipart_uploads(Bucket=world.compact.bucket)
    assert uploads.get("Uploads", []) == []


def test_two_runs_at_once_on_rgw(world: RgwWorld) -> None:
    world.add_days("20261122", "20261123", "20261124")
    state = StateStore(world.compact)
    state.advance_last_compacted("20261121")
    state.flush()
    procs = [world.start("--today", "20261125", "--workers", "1") for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    for code, _out, err in results:
        assert code == 0, err
    metas = world.outputs()
    assert {k.rsplit("/", 1)[1] for k in metas} == {"20261122", "20261123", "20261124"}
    doc = world.state()
    assert doc["last_compacted_date"] == "20261124"
    assert {e["status"] for e in doc["partitions"].values()} == {"success"}
    assert len(doc["partitions"]) == 6


def test_rgw_conditional_upload_above_the_threshold_is_one_put(rgw: RGW, tmp_path: Path) -> None:
    store = make_rgw_store(rgw, rgw_bucket(rgw), multipart_threshold=1 << 20,
                           multipart_chunksize=5 << 20)
    assert not store.features.conditional_multipart
    big = tmp_path / "big"
    big.write_bytes(os.urandom((5 << 20) + 1000))
    unconditional = store.put_file("plain/data.parquet", big)  # a real multipart upload
    assert unconditional.etag.endswith("-2") and store.head("plain/data.parquet") == unconditional
    created = store.put_file("cond/data.parquet", big, if_none_match=True)
    assert "-" not in created.etag and store.head("cond/data.parquet") == created
    with pytest.raises(PreconditionFailed):
        store.put_file("cond/data.parquet", big, if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.put_file("cond/data.parquet", big, if_match=unconditional.etag)
    assert store.put_file("cond/data.parquet", big, if_match=created.etag).etag == created.etag
