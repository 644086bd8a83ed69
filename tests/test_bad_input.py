"""Issue 4, "Bad input and bad configuration": end to end, `python run.py` as a subprocess.

Corrupt raw objects and contract violations quarantine their partition (naming
the key, and the column where there is one) while the others go on; a
malformed state is never overwritten; temp disk full, missing bucket, wrong
credentials, unreachable endpoint and a clock far off each give one clear line;
odd keys in the raw bucket are data, never a crash, and the local store stays
inside its root.

Every run uses known secret credentials and is searched for them (tests/jobworld.py).
"""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from compressor.demo import (
    CORRUPT_KINDS,
    PartitionSpec,
    file_bytes,
    file_names,
    raw_table,
    special_files,
    write_partition,
)
from tests import jobworld
from tests.conftest import free_port
from tests.jobworld import (
    DAY,
    SECRETS,
    TODAY,
    JobWorld,
    find_secrets,
    one_line_error,
    spec,
    with_userinfo,
)
from tests.support.s3proxy import S3Proxy

jw = jobworld.jw  # the fixtures
auth_server = jobworld.auth_server

DAILY = ("--mode", "daily", "--today", TODAY)


def _bad_key(jw: JobWorld, good: PartitionSpec, data: bytes) -> str:
    """Upload `good`, plus `data` under a key between its 2nd and 3rd files."""
    names = file_names(good)
    jw.add(good)
    key = good.partition.prefix + names[1].replace(".parquet", "-x.parquet")
    jw.raw.put_bytes(key, data)
    return key


def _corrupt(kind: str) -> bytes:
    """An object of the generator's corrupt `kind`."""
    every = spec("zzz", files=len(CORRUPT_KINDS), corrupt=len(CORRUPT_KINDS))
    slot = next(i for i, k in special_files(every).items() if k == kind)
    return file_bytes(every, slot)


def _assert_quarantined(jw: JobWorld, result: jobworld.Result, pid_key: str, key: str,
                        column: str | None = None) -> None:
    entry = jw.entries()[pid_key]
    assert entry["status"] == "quarantined", entry
    assert entry["failed_key"] == key
    assert key in entry["error"] and "\n" not in entry["error"]
    if column:
        assert repr(column) in entry["error"]
    log_lines = [x for x in result.err_lines if f"{pid_key}: quarantined:" in x]
    assert len(log_lines) == 1 and key in log_lines[0], result.err
    if column:
        assert repr(column) in log_lines[0]
    assert f"quarantined: {pid_key}: " in result.out


# --------------------------------------------------------------------------- raw objects


def test_each_corrupt_kind_quarantines_its_partition_naming_the_key(jw: JobWorld) -> None:
    good = spec("btcusdt")
    jw.add(good)
    bad: dict[str, str] = {}
    for n, kind in enumerate(CORRUPT_KINDS):
        part = spec(f"c{n}{kind.replace('_', '')}")
        bad[part.partition.state_key] = _bad_key(jw, part, _corrupt(kind))
    assert _corrupt("zero_bytes") == b""

    result = jw.run(*DAILY)
    assert result.code == 1, result.err
    for pid_key, key in bad.items():
        _assert_quarantined(jw, result, pid_key, key)
    assert jw.entries()[good.partition.state_key]["status"] == "success"  # the others go on
    assert set(jw.outputs_of()) == {good.partition.state_key}
    assert jw.state()["last_compacted_date"] is None
    assert "Traceback" not in result.err

    again = jw.run(*DAILY)  # nothing repaired: still quarantined, not retried
    assert again.code == 1 and again.out.count("  still quarantined: ") == len(bad)
    retry = jw.run(*DAILY, "--retry-quarantine", "--skip-corrupt")
    assert retry.code == 0, retry.err
    for pid_key, key in bad.items():
        assert jw.entries()[pid_key]["skipped_files"] == [key]
    assert len(jw.outputs_of()) == len(bad) + 1


def _parquet(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def test_contract_violations_quarantine_naming_file_and_column(jw: JobWorld) -> None:
    base = spec("btcusdt", files=4)
    table = raw_table(base, 1)
    price = table.schema.get_field_index("price")
    ts = table.column("ts_event").to_pylist()
    cases = {
        # a column whose type cannot be unified with the same column in the other files
        "conflict": (table.set_column(price, "price", table.column(price).cast(pa.string())),
                     "price"),
        "missing": (table.drop_columns(["ts_event"]), "ts_event"),
        "nullts": (table.set_column(0, "ts_event", pa.array([None] + ts[1:], pa.int64())),
                   "ts_event"),
        "floatts": (table.set_column(0, "ts_event", table.column(0).cast(pa.float64())),
                    "ts_event"),
    }
    keys = {}
    for symbol, (bad_table, column) in cases.items():
        part = replace(base, symbol=symbol)
        keys[part.partition.state_key] = (_bad_key(jw, part, _parquet(bad_table)), column)
    jw.add(replace(base, symbol="okusdt"))

    result = jw.run(*DAILY)
    assert result.code == 1, result.err
    for pid_key, (key, column) in keys.items():
        _assert_quarantined(jw, result, pid_key, key, column)
    assert set(jw.outputs_of()) == {"binance/trade/okusdt/20261124"}

    # the runbook's "accept losing that object's rows": a file whose own ts_event is
    # unusable is left out, named like a corrupt one; a type conflict is between files
    # (the odd one may be an earlier file), so it stays quarantined, saying what to do
    retry = jw.run(*DAILY, "--retry-quarantine", "--skip-corrupt")
    assert retry.code == 1, retry.err
    metas = jw.outputs_of()  # each pair checked: meta.json describes its data.parquet
    for pid_key, (key, _) in keys.items():
        entry = jw.entries()[pid_key]
        if "/symbol=conflict/" in key:
            assert entry["status"] == "quarantined" and pid_key not in metas
            assert "--skip-corrupt does not skip a type conflict" in entry["error"]
            continue
        assert entry["status"] == "success" and entry["skipped_files"] == [key]
        assert metas[pid_key]["skipped_files"] == [key]
        assert metas[pid_key]["source_files"] == base.files  # of base.files + 1 listed
        assert f"{key}: unusable, skipped (--skip-corrupt)" in retry.err


# --------------------------------------------------------------------------- state


_VALID_ENTRY = {"status": "success", "rows": 10, "total_size_bytes": 100, "attempts": 1,
                "started_at": "2026-11-24T02:30:00.000Z", "updated_at": "2026-11-24T02:31:00.000Z"}


@pytest.mark.parametrize(
    ("body", "kept"),
    [
        (b"\x00\xff not json at all", 0),
        (json.dumps({"schema_version": 1, "last_compacted_date": 20261120,
                     "updated_at": None, "partitions": {}}).encode(), 0),
        (json.dumps({"schema_version": 1, "last_compacted_date": "20261120", "updated_at": None,
                     "partitions": {"okx/bbo/ethusdt/20261120": _VALID_ENTRY,
                                    "okx/bbo/ethusdt/20261121": {**_VALID_ENTRY, "rows": "ten"}}}
                    ).encode(), 1),
    ],
    ids=["not-json", "date-is-a-number", "entry-with-wrong-type"],
)
def test_malformed_state_is_never_overwritten_and_repair_works(
    jw: JobWorld, body: bytes, kept: int
) -> None:
    jw.add(spec())
    jw.compact.put_bytes("compacted/_state.json", body)
    result = jw.run(*DAILY)
    assert result.code == 2
    line = one_line_error(result)
    assert "compacted/_state.json" in line and "--repair-state" in line
    assert jw.compact.get_bytes("compacted/_state.json")[0] == body  # untouched
    assert jw.outputs_of() == {} and jw.locks() == []

    repaired = jw.run("--repair-state")
    assert repaired.code == 0, repaired.err
    assert f"kept {kept} entries" in repaired.out
    backups = [o.key for o in jw.compact.list_objects("compacted/_state.json.corrupt-")]
    assert len(backups) == 1 and jw.compact.get_bytes(backups[0])[0] == body
    assert len(jw.entries()) == kept

    result = jw.run(*DAILY, "--empty-day-grace", "0")  # the days without raw data count
    assert result.code == 0, result.err
    assert jw.state()["last_compacted_date"] == DAY


# --------------------------------------------------------------------------- temp disk


@pytest.mark.parametrize("phase", ["raw-too-big", "merge"])
def test_temp_disk_full_fails_the_partition_with_one_clear_line(
    jw: JobWorld, tiny_disk: Path, tmp_path: Path, phase: str
) -> None:
    # raw-too-big: the raw files alone overflow 1 MiB; merge: they fit (merged in place,
    # not copied), the spills do not
    big = spec("btcusdt", stream="bbo", files=12, rows_per_file=3000 if phase == "raw-too-big"
               else 2100, layout="spans_day")
    small = spec("ethusdt", files=2, rows_per_file=20)
    raw = tmp_path / "raw"
    write_partition(big, raw)
    write_partition(small, raw)
    raw_bytes = sum(p.stat().st_size for p in raw.rglob("*.parquet") if "btcusdt" in str(p))
    assert (raw_bytes > 1 << 20) == (phase == "raw-too-big"), raw_bytes
    args = (*DAILY, "--raw", str(raw), "--memory-budget", "1M")

    result = jw.run(*args, "--tmp-dir", str(tiny_disk))
    assert result.code == 1, result.err
    entry = jw.entries()[big.partition.state_key]
    assert entry["status"] == "failed"  # retryable, not quarantined
    assert entry["error"].startswith("TempSpaceError: temp disk full: ")
    assert "\n" not in entry["error"]
    assert f" free in {tiny_disk};" in entry["error"] and "--tmp-dir" in entry["error"]
    lines = [x for x in result.err_lines if big.partition.state_key in x and "failed" in x]
    assert len(lines) == 1 and "temp disk full" in lines[0], result.err
    assert "Traceback" not in result.err
    assert jw.entries()[small.partition.state_key]["status"] == "success"  # others go on
    assert list(tiny_disk.iterdir()) == []  # its temp files are gone

    again = jw.run(*args, "--tmp-dir", str(tmp_path / "roomy"))
    assert again.code == 0, again.err
    assert len(jw.outputs_of()) == 2


def test_tmp_dir_that_is_not_a_directory_exits_2(jw: JobWorld) -> None:
    jw.add(spec())
    not_a_dir = jw.cwd / "a-file"
    not_a_dir.write_text("x")
    result = jw.run(*DAILY, "--tmp-dir", str(not_a_dir))
    assert result.code == 2
    line = one_line_error(result)
    assert "--tmp-dir" in line and str(not_a_dir) in line
    assert jw.locks() == [] and jw.outputs_of() == {}


# --------------------------------------------------------------------------- stores


@pytest.mark.parametrize("which", ["S3_BUCKET", "S3_COMPACT_BUCKET"])
def test_missing_bucket_exits_2_naming_it(jw: JobWorld, which: str) -> None:
    result = jw.run(*DAILY, env=jw.env_with(**{which: "qlc-no-such-bucket-x"}))
    assert result.code == 2
    line = one_line_error(result)
    assert "'qlc-no-such-bucket-x' does not exist" in line


@pytest.mark.parametrize("which", ["S3_ENDPOINT", "S3_COMPACT_ENDPOINT"])
def test_unreachable_endpoint_exits_2_quickly(jw: JobWorld, which: str) -> None:
    dead = with_userinfo(f"http://127.0.0.1:{free_port()}")
    result = jw.run(*DAILY, env=jw.env_with(**{which: dead}))
    assert result.code == 2
    line = one_line_error(result)
    assert "cannot reach S3 endpoint http://127.0.0.1:" in line
    assert result.seconds < 10


class SilentServer:
    """A TCP listener on 127.0.0.1 that accepts every connection and never answers: an
    endpoint that is up but is no S3 server (a wrong port, a hung proxy)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            self.accepted.append(conn)  # held open, never read from or written to

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    yield server
    server.close()


def test_an_endpoint_that_never_answers_is_waited_for_aloud_then_exits_2(
        jw: JobWorld, silent_server: SilentServer) -> None:
    """It took 8.5 silent minutes: now each try is a log line with its number, and the
    start-up gives up within S3_CHECK_TIMEOUT seconds (60 by default; 10 here: tries
    of 2.5 s, the pauses between them 0.5 s, 1 s, ...)."""
    result = jw.run(*DAILY, env=jw.env_with(S3_ENDPOINT=with_userinfo(silent_server.url),
                                            S3_CHECK_TIMEOUT="10"))
    assert result.code == 2, result.err
    lines = result.err_lines
    waits = [line for line in lines if "waiting for S3 endpoint" in line]
    assert len(waits) >= 2, result.err
    for n, line in enumerate(waits, 1):
        assert f"(bucket '{jw.env['S3_BUCKET']}'): try {n}: no answer (ReadTimeoutError)" in line
    assert lines[-1].startswith("quantlab-compact: error: S3 endpoint http://127.0.0.1:")
    assert f"gave no usable answer for bucket '{jw.env['S3_BUCKET']}' within 10s " \
           f"({len(waits) + 1} tries" in lines[-1]
    assert "S3_CHECK_TIMEOUT" in lines[-1] and "Traceback" not in result.err
    assert len(silent_server.accepted) == len(waits) + 1


def test_s3_check_timeout_must_be_a_positive_number(jw: JobWorld) -> None:
    result = jw.run(*DAILY, env=jw.env_with(S3_CHECK_TIMEOUT="soon"))
    assert result.code == 2
    assert "S3_CHECK_TIMEOUT must be a number, not 'soon'" in one_line_error(result)


@pytest.mark.parametrize(("offset", "side"), [(3600, "behind"), (-7200, "ahead of")])
def test_clock_far_off_exits_2(jw: JobWorld, offset: int, side: str) -> None:
    jw.add(spec())
    with S3Proxy(jw.moto) as proxy:
        env = jw.env_with(S3_ENDPOINT=with_userinfo(proxy.endpoint))
        proxy.date_offset = offset  # the server's clock, as this host sees it
        result = jw.run(*DAILY, env=env)
        assert result.code == 2
        line = one_line_error(result)
        assert f"clock is {abs(offset) // 60} min {side} the S3 server" in line
        assert "NTP" in line
        assert jw.outputs_of() == {} and jw.locks() == []
        proxy.date_offset = 90  # within the limit: runs
        result = jw.run(*DAILY, env=env)
    assert result.code == 0, result.err


# ----------------------------------------------------------------- wrong credentials


@pytest.mark.parametrize(
    ("raw_pair", "compact_pair", "code"),
    [
        ("good", "good", "ok"),
        ("unknown", "good", "InvalidAccessKeyId"),
        ("wrong-secret", "good", "SignatureDoesNotMatch"),
        ("good", "wrong-secret", "SignatureDoesNotMatch"),
    ],
)
def test_wrong_credentials_exit_2_with_one_line(
    jw: JobWorld, auth_server: dict[str, str], raw_pair: str, compact_pair: str, code: str
) -> None:
    pairs = {
        "good": (auth_server["access"], auth_server["secret"]),
        "unknown": (jobworld.RAW_ACCESS_KEY, jobworld.RAW_SECRET_KEY),
        "wrong-secret": (auth_server["access"], jobworld.COMPACT_SECRET_KEY),
    }
    env = jw.env_with(
        S3_ENDPOINT=with_userinfo(auth_server["url"]), S3_BUCKET="qlc-auth-raw",
        S3_COMPACT_BUCKET="qlc-auth-compact",
        S3_ACCESS_KEY=pairs[raw_pair][0], S3_SECRET_KEY=pairs[raw_pair][1],
        S3_COMPACT_ACCESS_KEY=pairs[compact_pair][0],
        S3_COMPACT_SECRET_KEY=pairs[compact_pair][1],
    )
    result = jw.run(*DAILY, "--dry-run", env=env)
    assert not find_secrets(result.out + result.err, (*SECRETS, auth_server["secret"]))
    if code == "ok":  # the server really authenticates: the right pair works
        assert result.code == 0, result.err
        return
    assert result.code == 2
    line = one_line_error(result)
    bucket = "qlc-auth-raw" if raw_pair != "good" else "qlc-auth-compact"
    assert code in line and bucket in line and "credentials" in line


# --------------------------------------------------------------------------- odd keys


def test_odd_raw_keys_are_data_or_ignored_never_a_crash(jw: JobWorld) -> None:
    good = spec("btcusdt")
    keys = jw.add(good)
    body = jw.raw.get_bytes(keys[1])[0]
    prefix = good.partition.prefix
    data_keys = [prefix + "part 1795478400-000001 copy.parquet",  # a space
                 prefix + "part-ünïcødé-€.parquet"]  # unicode
    ignored = [
        prefix + "../escape.parquet",  # '..': not directly under the partition
        prefix + "/leading.parquet",  # empty segment
        "/" + prefix + "part-1795478400-000002.parquet",  # leading slash: not the layout
        "exchange=binance/stream=trade/symbol=../date=20261124/part-1.parquet",
        "exchange=binance/stream=trade/symbol=./date=20261124/part-1.parquet",
        "exchange=../stream=trade/symbol=btcusdt/date=20261124/part-1.parquet",
        "exchange=binance/stream=trade/symbol=btcusdt/date=../part-1.parquet",
    ]
    for key in data_keys + ignored:
        jw.raw.put_bytes(key, body)
    spaced = replace(good, symbol="btc usdt")
    jw.add(spaced)  # a partition whose symbol has a space: data too

    result = jw.run(*DAILY)
    assert result.code == 0, result.err
    metas = jw.outputs_of()
    assert set(metas) == {good.partition.state_key, "binance/trade/btc usdt/20261124"}
    assert metas[good.partition.state_key]["source_files"] == good.files + len(data_keys)
    assert "symbol=../" in result.err and "symbol=./" in result.err  # ignored, with why
    assert f"{good.partition.state_key}: ignoring 2 .parquet object(s) not directly" in result.err
    assert "Traceback" not in result.err

    # the same lake compacted into a local directory: nothing is written outside its root
    box = jw.cwd.parent / "box"
    root = box / "compact"
    root.mkdir(parents=True)
    result = jw.run(*DAILY, "--compact", str(root))
    assert result.code == 0, result.err
    outside = sorted(p.relative_to(box) for p in box.rglob("*") if root not in p.parents)
    assert outside == [Path("compact")]
    written = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert "exchange=binance/stream=trade/symbol=btc usdt/date=20261124/data.parquet" in written
    assert all(".." not in p.split("/") for p in written)


def test_local_raw_store_never_reads_outside_its_root(jw: JobWorld, tmp_path: Path) -> None:
    good = spec("btcusdt")
    raw = tmp_path / "lake" / "raw"
    paths = write_partition(good, raw)
    secret_dir = tmp_path / "lake" / "private"
    outside = write_partition(replace(good, symbol="ethusdt", files=2), secret_dir)
    # a symlinked file and a symlinked partition directory, both pointing out of the root
    (paths[0].parent / "part-9999999999-000000.parquet").symlink_to(outside[0])
    (raw / "exchange=binance/stream=trade/symbol=ethusdt").symlink_to(
        secret_dir / "exchange=binance/stream=trade/symbol=ethusdt")
    before = {p: p.stat().st_mtime_ns for p in secret_dir.rglob("*")}

    result = jw.run(*DAILY, "--raw", str(raw))
    assert result.code == 0, result.err
    metas = jw.outputs_of()
    assert set(metas) == {good.partition.state_key}  # the symlinked partition is not seen
    assert metas[good.partition.state_key]["source_files"] == good.files  # nor the file
    assert {p: p.stat().st_mtime_ns for p in secret_dir.rglob("*")} == before


@pytest.mark.parametrize("endpoint", [
    f"http://{jobworld.ENDPOINT_USER}:{jobworld.ENDPOINT_PASSWORD}@127.0.0.1:notaport",
    f"http://{jobworld.ENDPOINT_USER}:{jobworld.ENDPOINT_PASSWORD}@[::1",
    f"http://{jobworld.ENDPOINT_USER}:{jobworld.ENDPOINT_PASSWORD}@",
    "ftp://127.0.0.1:9",
], ids=["bad-port", "bad-ipv6", "no-host", "not-http"])
def test_malformed_endpoint_exits_2_with_one_line(jw: JobWorld, endpoint: str) -> None:
    result = jw.run(*DAILY, env=jw.env_with(S3_ENDPOINT=endpoint))
    assert result.code == 2
    line = one_line_error(result)
    assert "endpoint" in line
