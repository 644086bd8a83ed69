"""Crash proof (issue 4): `python -m bench.chaos`, 5 trials, as part of the test suite.

Each trial kills (SIGKILL), pauses (SIGSTOP past a short lease TTL while a second run
takes over) or clock-skews (two hosts at -300 s / +360 s) real runs against a moto S3
server, re-runs cleanly and compares every output byte for byte with a reference run;
a reader checks every visible meta.json against its data.parquet meanwhile (see
bench/chaos/). Each block of five trials holds each fault kind; seed 29 makes the
pause one hold a data.parquet upload until a second run has taken over and published
the partition with a late raw file, and two of its kills are aimed at S3 requests.
The checks they rely on are themselves tested below on hand-made bad buckets.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bench.chaos.bench import Reference
from bench.chaos.lake import BEFORE, DAYS, META_MUST_MATCH, Bucket, _pids, new_bucket
from bench.chaos.proxy import writes_of
from bench.chaos.reader import Reader
from bench.chaos.skew import faketime_library
from bench.chaos.trials import Chaos
from compressor.layout import STATE_KEY
from compressor.meta import Meta
from tests.conftest import require_tool
from tests.support.s3proxy import Seen

REPO = Path(__file__).resolve().parents[1]
PREFIX = "exchange=okx/stream=bbo/symbol=ethusdt/date=20261124/"


def test_five_chaos_trials_have_no_divergence(tmp_path: Path) -> None:
    require_tool("libfaketime", found=faketime_library(), package="faketime")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--trials", "5", "--seed", "29",
         "--work", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=420, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    out = proc.stdout
    assert re.search(r"^chaos: 5 trials \(3 kill, 1 pause, 1 skew;", out, re.MULTILINE), out
    kills = re.search(r"^kill: 3 trials, (\d+) SIGKILL", out, re.MULTILINE)
    assert kills is not None and int(kills.group(1)) >= 2, out
    assert re.search(r"^pause: 1 trials, 1 SIGSTOP \(0 after a random delay, 1 at an S3 request, "
                     r"1 of them in the publish phase, 1 holding", out, re.MULTILINE), out
    assert re.search(r"^skew: 1 trials, 2 runs .*: 0 live leases taken over, 0 partitions",
                     out, re.MULTILINE), out
    assert re.search(r"^inconsistent pairs: 0$", out, re.MULTILINE), out
    assert re.search(r"^divergences: 0$", out, re.MULTILINE), out


def _parquet(rows: int) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"ts_event": list(range(rows)), "seq": list(range(rows))}), sink)
    return sink.getvalue()


def _meta(data: bytes, rows: int, data_etag: str | None) -> bytes:
    return Meta(rows=rows, ts_event_min=0, ts_event_max=rows - 1,
                sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data), source_files=1,
                source_fingerprint="f" * 64, stream_type="bbo", data_etag=data_etag).to_bytes()


def test_the_reader_flags_a_meta_json_that_does_not_match_its_data(
    moto_server: str, tmp_path: Path
) -> None:
    bucket = new_bucket(moto_server)
    reader = Reader(bucket, tmp_path)
    data = _parquet(5)
    bucket.put(PREFIX + "meta.json", _meta(data, 5, None))
    reader.observe()
    assert reader.inconsistent == [f"{PREFIX}meta.json: meta.json visible without its "
                                   "data.parquet"]

    bucket.put(PREFIX + "data.parquet", _parquet(6))  # a meta.json without data_etag: deep
    reader.inconsistent.clear()
    reader.observe()
    assert len(reader.inconsistent) == 1
    assert "another sha256" in reader.inconsistent[0]
    assert "holds 6 rows, meta.json states 5" in reader.inconsistent[0]

    bucket.put(PREFIX + "data.parquet", data)  # the right bytes, named by their ETag
    bucket.put(PREFIX + "meta.json", _meta(data, 5, bucket.etag(PREFIX + "data.parquet")))
    reader.inconsistent.clear()
    reader.observe()
    reader.observe()
    assert reader.inconsistent == [] and reader.deep == 2 and reader.pairs == 4

    bucket.put(PREFIX + "data.parquet", _parquet(6))  # replaced under an unchanged meta.json
    reader.observe()  # the cheap check (meta.json version already deep-checked) sees it
    assert reader.deep == 2
    assert len(reader.inconsistent) == 1
    assert re.search(r"meta\.json names data\.parquet \w+ \(\d+ bytes\) but \w+ \(\d+ bytes\) "
                     "is there", reader.inconsistent[0]), reader.inconsistent

    bucket.put(PREFIX + "meta.json", b'{"schema_version": 1}')
    bucket.put("compacted/_state.json", b'{"schema_version": 1, "partitions": [')
    reader.inconsistent.clear()
    reader.observe()
    assert reader.inconsistent == [f"{PREFIX}meta.json: malformed: rows: missing"]
    assert len(reader.violations) == 1 and "_state.json does not parse" in reader.violations[0]


def test_the_reader_does_not_flag_a_pair_replaced_while_it_reads(
    moto_server: str, tmp_path: Path
) -> None:
    """meta.json read, then the writer publishes a new pair, then data.parquet read."""
    old, new = _parquet(5), _parquet(7)
    bucket = new_bucket(moto_server)
    bucket.put(PREFIX + "data.parquet", old)
    bucket.put(PREFIX + "meta.json", _meta(old, 5, bucket.etag(PREFIX + "data.parquet")))

    class Racing(Bucket):
        def get(self, key: str) -> Any:
            if key.endswith("data.parquet"):  # the writer gets in between
                bucket.put(PREFIX + "data.parquet", new)
                bucket.put(PREFIX + "meta.json", _meta(new, 7, bucket.etag(key)))
            return super().get(key)

    racing = Racing(moto_server, bucket.name)
    reader = Reader(racing, tmp_path)
    reader.observe()
    assert reader.inconsistent == [] and reader.raced == 1


def test_writes_are_counted_per_partition() -> None:
    seen = Seen
    path = f"/b/{PREFIX}data.parquet"
    requests = [seen("PUT", "PUT", path, "", None), seen("POST", "CREATE_MULTIPART", path, "",
                                                         None),
                seen("PUT", "UPLOAD_PART", path, "partNumber=1", None),
                seen("POST", "COMPLETE_MULTIPART", path, "uploadId=x", None),
                seen("PUT", "PUT", path, "", "reset"),
                seen("PUT", "PUT", f"/b/{PREFIX}meta.json", "", None)]
    assert writes_of(requests, "data.parquet") == {"okx/bbo/ethusdt/20261124": 2}
    assert writes_of(requests, "meta.json") == {"okx/bbo/ethusdt/20261124": 1}


def test_the_final_check_flags_any_difference_from_the_reference(
    moto_server: str, tmp_path: Path
) -> None:
    pids = _pids()
    reference = new_bucket(moto_server)
    data = {p.state_key: f"data {p.state_key}".encode() for p in pids}
    meta = {p.state_key: {**{k: f"{k} {p.state_key}" for k in META_MUST_MATCH},
                          "rows": 7, "day_quality": "GOOD"} for p in pids}
    for p in pids:
        reference.put(p.data_key, data[p.state_key])
        reference.put(p.meta_key, json.dumps(meta[p.state_key]).encode())
    entries = {p.state_key: {"status": "success", "rows": 7, "total_size_bytes": 1,
                             "attempts": 1, "updated_at": "2026-11-25T02:31:07.412Z",
                             "day_quality_post": meta[p.state_key]["day_quality"]}
               for p in pids}
    doc = {"schema_version": 1, "last_compacted_date": DAYS[-1],
           "updated_at": "2026-11-25T02:31:07.412Z", "partitions": entries}
    reference.put(STATE_KEY, json.dumps(doc).encode())
    bench = Chaos.__new__(Chaos)  # only its reference is needed to compare
    bench.reference = Reference(data, meta, DAYS[-1], reference)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    assert bench.check_final(reference, DAYS[-1], tmp) == []

    trial = new_bucket(moto_server)
    trial.copy_from(reference)
    first, second = pids[0], pids[1]
    trial.put(first.data_key, b"one byte off")
    trial.put(second.meta_key, json.dumps({**meta[second.state_key],
                                           "data_etag": "0" * 32}).encode())
    trial.put("compacted/locks/okx/bbo/ethusdt/20261124.lock", b"{}")
    (tmp / "qlc-part-1-abc").mkdir()
    problems = bench.check_final(trial, DAYS[-1], tmp)
    assert problems == [
        f"{first.data_key}: not byte-identical to the reference",
        f"{second.meta_key}: data_etag {'0' * 32} but data.parquet is "
        f"{trial.etag(second.data_key)}",
        "leases left behind after a clean run: ['compacted/locks/okx/bbo/ethusdt/20261124.lock']",
        "temp dirs left behind: ['qlc-part-1-abc']",
    ]
    assert bench.check_final(trial, BEFORE, None)[-2] == (
        f"last_compacted_date {DAYS[-1]}, expected {BEFORE}")
