"""Crash proof (issue 4): bench/chaos.py, 5 trials, as part of the test suite.

Each trial SIGKILLs a real run against a moto S3 server (random delay, or at a
chosen S3 request such as the publish phase's), re-runs cleanly and compares
every output byte for byte with a reference run (see bench/chaos.py). The
checks it relies on are themselves tested below on hand-made bad buckets.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]


def _chaos() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chaos", REPO / "bench" / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["chaos"] = module
    spec.loader.exec_module(module)
    return module


def test_five_chaos_trials_have_no_divergence(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "chaos.py"), "--trials", "5", "--seed", "1",
         "--work", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "chaos: 5 trials" in proc.stdout
    kills = re.search(r"^kills: (\d+) SIGKILL", proc.stdout, re.MULTILINE)
    assert kills is not None and int(kills.group(1)) >= 2, proc.stdout
    assert re.search(r"^divergences: 0$", proc.stdout, re.MULTILINE), proc.stdout


@pytest.fixture
def chaos() -> ModuleType:
    return _chaos()


def test_the_observer_flags_a_meta_json_without_its_data(
    chaos: ModuleType, moto_server: str
) -> None:
    bucket = chaos.new_bucket(moto_server)
    prefix = "exchange=okx/stream=bbo/symbol=ethusdt/date=20261124/"
    bucket.put(prefix + "meta.json", json.dumps({"sha256": "0" * 64, "rows": 1}).encode())
    observer = chaos.Observer(bucket)
    observer.observe()
    assert observer.violations == [f"{prefix}meta.json visible without its data.parquet"]

    bucket.put(prefix + "data.parquet", b"not the bytes meta.json describes")
    observer.violations.clear()
    observer.observe()
    assert observer.violations == [f"{prefix}meta.json: data.parquet beside it has another sha256"]

    bucket.put("compacted/_state.json", b'{"schema_version": 1, "partitions": [')
    bucket.put(prefix + "meta.json", json.dumps(
        {"sha256": hashlib.sha256(b"not the bytes meta.json describes").hexdigest()}).encode())
    observer.violations.clear()
    observer.observe()
    assert len(observer.violations) == 2
    assert "unreadable" in observer.violations[0]
    assert "_state.json does not parse" in observer.violations[1]


def test_the_final_check_flags_any_difference_from_the_reference(
    chaos: ModuleType, moto_server: str, tmp_path: Path
) -> None:
    pids = chaos._pids()
    reference = chaos.new_bucket(moto_server)
    data = {p.state_key: f"data {p.state_key}".encode() for p in pids}
    meta = {p.state_key: {**{k: f"{k} {p.state_key}" for k in chaos.META_MUST_MATCH},
                          "rows": 7} for p in pids}
    for p in pids:
        reference.put(p.data_key, data[p.state_key])
        reference.put(p.meta_key, json.dumps(meta[p.state_key]).encode())
    entries = {p.state_key: {"status": "success", "rows": 7, "total_size_bytes": 1,
                             "attempts": 1, "updated_at": "2026-11-25T02:31:07.412Z",
                             "day_quality_post": meta[p.state_key]["day_quality"]}
               for p in pids}
    doc = {"schema_version": 1, "last_compacted_date": chaos.DAYS[-1],
           "updated_at": "2026-11-25T02:31:07.412Z", "partitions": entries}
    reference.put(chaos.STATE_KEY, json.dumps(doc).encode())
    bench = chaos.Chaos.__new__(chaos.Chaos)  # only its reference is needed to compare
    bench.reference = chaos.Reference(data, meta, chaos.DAYS[-1], reference)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    assert bench.check_final(reference, chaos.DAYS[-1], tmp) == []

    trial = chaos.new_bucket(moto_server)
    trial.copy_from(reference)
    first = pids[0]
    trial.put(first.data_key, b"one byte off")
    trial.put("compacted/locks/okx/bbo/ethusdt/20261124.lock", b"{}")
    (tmp / "qlc-part-1-abc").mkdir()
    problems = bench.check_final(trial, chaos.DAYS[-1], tmp)
    assert problems == [
        f"{first.data_key}: not byte-identical to the reference",
        "leases left behind after a clean run: ['compacted/locks/okx/bbo/ethusdt/20261124.lock']",
        "temp dirs left behind: ['qlc-part-1-abc']",
    ]
    assert bench.check_final(trial, chaos.BEFORE, None)[-2] == (
        f"last_compacted_date {chaos.DAYS[-1]}, expected {chaos.BEFORE}")
