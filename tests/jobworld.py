"""End-to-end harness for the fault, bad-input and security tests (issue 4).

Every job run here is `python run.py` as a subprocess, with KNOWN SECRET
credentials: a raw key pair, a separate compact key pair, and a password in
the endpoint URL's userinfo (`http://user:password@127.0.0.1:port`). moto
accepts any credentials, so the job works normally with them. Each run's
stdout and stderr are checked for the secrets right away; when the test ends
the `jw` fixture also scans every object of both buckets (state, metas, data,
leases, state backups) and every file the job left under the test's tmp and
cwd directories. A secret anywhere fails the test.

Import the fixture into a test module with `from tests.jobworld import jw`.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import boto3
import pytest

from compressor.demo import PartitionSpec
from compressor.layout import PartitionId
from compressor.merge import WORKER_MODULE
from compressor.meta import Meta, check_data_file
from compressor.storage import S3Store, Store
from tests.conftest import make_s3_store, put_partition
from tests.support.s3server import moto_server as start_moto_server

REPO = Path(__file__).resolve().parents[1]
TODAY = "20261125"
DAY = "20261124"

#: The secrets every run is given; none may show up anywhere the job writes.
RAW_ACCESS_KEY = "qlcRawAccessKEY5ecret1"
RAW_SECRET_KEY = "qlcRawSecretKEY5ecret2wXyZ"
COMPACT_ACCESS_KEY = "qlcCompactAccessKEY5ecret3"
COMPACT_SECRET_KEY = "qlcCompactSecretKEY5ecret4wXyZ"
ENDPOINT_USER = "qlcEndpointUSER5ecret5"
ENDPOINT_PASSWORD = "qlcEndpointPASS5ecret6"
SECRETS = (RAW_ACCESS_KEY, RAW_SECRET_KEY, COMPACT_ACCESS_KEY, COMPACT_SECRET_KEY,
           ENDPOINT_USER, ENDPOINT_PASSWORD)


def with_userinfo(url: str, user: str = ENDPOINT_USER, password: str = ENDPOINT_PASSWORD) -> str:
    """`http://host:port` -> `http://user:password@host:port`."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, f"{user}:{password}@{parts.netloc}", parts.path, "", ""))


def find_secrets(data: bytes | str, secrets: tuple[str, ...] = SECRETS) -> list[str]:
    """The secrets that occur in `data` (also in lower case, URL- or JSON-escaped forms)."""
    text = data if isinstance(data, str) else data.decode("utf-8", "replace")
    low = text.lower()
    return [s for s in secrets if s in text or s.lower() in low]


@dataclass
class Result:
    code: int
    out: str
    err: str
    seconds: float = 0.0

    @property
    def err_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.strip()]


@dataclass
class JobWorld:
    """Fresh raw + compact buckets on the moto server, a cwd and a TMPDIR per test."""

    env: dict[str, str]
    raw: S3Store
    compact: S3Store
    cwd: Path
    tmp: Path
    moto: str
    outputs: list[str] = field(default_factory=list)
    #: Files written on purpose with secrets in them (e.g. a .env); not scanned.
    exempt: set[Path] = field(default_factory=set)
    #: Extra stores the job wrote to (e.g. a bucket on another server) to scan at the end.
    extra_stores: list[Store] = field(default_factory=list)

    # ------------------------------------------------------------------ running

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, str(REPO / "run.py"), *args]

    def run(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Result:
        started = time.monotonic()
        proc = subprocess.run(self.argv(*args), env=env or self.env, cwd=self.cwd,
                              capture_output=True, text=True, timeout=timeout)
        result = Result(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)
        self._check_output(result)
        return result

    def popen(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(*args), env=env or self.env, cwd=self.cwd,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(self, proc: subprocess.Popen[str], timeout: float = 60) -> Result:
        started = time.monotonic()
        out, err = proc.communicate(timeout=timeout)
        result = Result(proc.returncode, out, err, time.monotonic() - started)
        self._check_output(result)
        return result

    def _check_output(self, result: Result) -> None:
        self.outputs.extend([result.out, result.err])
        leaked = find_secrets(result.out + result.err)
        assert not leaked, f"secret(s) {leaked} in the job's output:\n{result.err[-3000:]}"

    def env_with(self, **changes: str | None) -> dict[str, str]:
        env = dict(self.env)
        for key, value in changes.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    # ------------------------------------------------------------------- data

    def add(self, spec: PartitionSpec) -> list[str]:
        return put_partition(self.raw, spec, self.cwd.parent / "gen")

    def state(self) -> dict[str, Any]:
        return json.loads(self.compact.get_bytes("compacted/_state.json")[0])

    def entries(self) -> dict[str, dict[str, Any]]:
        return dict(self.state()["partitions"])

    def locks(self, store: Store | None = None) -> list[str]:
        return [o.key for o in (store or self.compact).list_objects("compacted/locks/")]

    def tmp_leftovers(self, tmp_dir: Path | None = None) -> list[Path]:
        root = tmp_dir or self.tmp / "quantlab-compact"
        return sorted(root.glob("qlc-part-*")) if root.is_dir() else []

    def outputs_of(self, store: Store | None = None) -> dict[str, dict[str, Any]]:
        """state_key -> meta for each published partition; asserts each pair is consistent."""
        store = store or self.compact
        metas: dict[str, dict[str, Any]] = {}
        for info in store.list_objects("exchange="):
            if not info.key.endswith("/meta.json"):
                continue
            pid = PartitionId.from_prefix(info.key[: -len("meta.json")])
            body = store.get_bytes(info.key)[0]
            meta = Meta.from_bytes(body, info.key)
            local = self.cwd.parent / "check.parquet"
            data = store.get_file(pid.data_key, local)  # NotFound: a meta without its data
            assert meta.data_etag is None or meta.describes(data), (info.key, data)
            assert check_data_file(meta, local) == [], info.key
            metas[pid.state_key] = json.loads(body)
        return metas

    def data_sha256(self, store: Store | None = None) -> dict[str, str]:
        """state_key -> sha256 of the data.parquet bytes, for every data.parquet."""
        store = store or self.compact
        out = {}
        for info in store.list_objects("exchange="):
            if info.key.endswith("/data.parquet"):
                pid = PartitionId.from_prefix(info.key[: -len("data.parquet")])
                out[pid.state_key] = hashlib.sha256(store.get_bytes(info.key)[0]).hexdigest()
        return out

    # ---------------------------------------------------------------- secrets

    def assert_no_secrets_anywhere(self) -> None:
        """No secret in any output, any object of either bucket, or any file left behind."""
        for store in (self.raw, self.compact, *self.extra_stores):
            try:
                infos = list(store.list_objects(""))
            except Exception:  # noqa: BLE001 - a store a test broke on purpose
                continue
            for info in infos:
                leaked = find_secrets(store.get_bytes(info.key)[0])
                assert not leaked, f"secret(s) {leaked} in object {info.key} of {store.uri}"
        for root in (self.tmp, self.cwd):
            for path in root.rglob("*"):
                if path.is_file() and not path.is_symlink() and path not in self.exempt:
                    leaked = find_secrets(path.read_bytes())
                    assert not leaked, f"secret(s) {leaked} in file {path}"
        for text in self.outputs:
            assert not find_secrets(text)


def make_world(cli_env: dict[str, str], moto_server: str, tmp_path: Path) -> JobWorld:
    cwd = tmp_path / "cwd"
    tmp = tmp_path / "tmpdir"
    cwd.mkdir()
    tmp.mkdir()
    env = dict(cli_env)
    env.update({
        "S3_ENDPOINT": with_userinfo(moto_server),
        "S3_ACCESS_KEY": RAW_ACCESS_KEY,
        "S3_SECRET_KEY": RAW_SECRET_KEY,
        "S3_COMPACT_ACCESS_KEY": COMPACT_ACCESS_KEY,
        "S3_COMPACT_SECRET_KEY": COMPACT_SECRET_KEY,
        "TMPDIR": str(tmp),  # the job's default --tmp-dir is $TMPDIR/quantlab-compact
        "PYTHONUNBUFFERED": "1",
    })
    return JobWorld(
        env,
        make_s3_store(moto_server, cli_env["S3_BUCKET"]),
        make_s3_store(moto_server, cli_env["S3_COMPACT_BUCKET"]),
        cwd,
        tmp,
        moto_server,
    )


@pytest.fixture
def jw(cli_env: dict[str, str], moto_server: str, tmp_path: Path) -> Iterator[JobWorld]:
    """A JobWorld whose every output and written object is searched for the secrets."""
    world = make_world(cli_env, moto_server, tmp_path)
    yield world
    world.assert_no_secrets_anywhere()


# --------------------------------------------------------------------------- helpers


def spec(symbol: str = "btcusdt", **kw: Any) -> PartitionSpec:
    base: dict[str, Any] = {"exchange": "binance", "stream": "trade", "symbol": symbol,
                            "date": DAY, "files": 4, "rows_per_file": 60}
    base.update(kw)
    return PartitionSpec(**base)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str,
             proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"job exited ({proc.returncode}) before {what}:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


SIGNALS = {"SIGTERM": signal.SIGTERM, "SIGINT": signal.SIGINT}


def one_line_error(result: Result) -> str:
    """The single stderr line of an exit-2 run (asserting there is exactly one)."""
    lines = result.err_lines
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    return lines[0]


# --------------------------------------------------------------------------- auth server


@pytest.fixture(scope="session")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A moto server that enforces IAM authentication (INITIAL_NO_AUTH_ACTION_COUNT):
    its first 3 requests create a user, its policy and an access key; then every
    request must be signed with that key."""
    log = tmp_path_factory.mktemp("moto-auth") / "moto.log"
    with start_moto_server(log, env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"}) as url:
        iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="qlc")
        iam.put_user_policy(UserName="qlc", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="qlc")["AccessKey"]
        s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id=key["AccessKeyId"],
                          aws_secret_access_key=key["SecretAccessKey"])
        for bucket in ("qlc-auth-raw", "qlc-auth-compact"):
            s3.create_bucket(Bucket=bucket)
        # a raw store holds exchange= folders (an empty one is the wrong --raw); the
        # runs here plan another day, so this object is never read
        s3.put_object(Bucket="qlc-auth-raw", Body=b"x",
                      Key="exchange=binance/stream=trade/symbol=btcusdt/date=20200101/p.parquet")
        yield {"url": url, "access": key["AccessKeyId"], "secret": key["SecretAccessKey"]}


def slice_workers(marker: str | None = None) -> list[int]:
    """Process ids of running slice processes (compressor.merge.slices), those with
    `marker` in their environment when it is given."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            environ = Path(f"/proc/{entry}/environ").read_bytes() if marker else b""
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if WORKER_MODULE.encode() in cmdline and state != "Z":
            if marker is None or marker.encode() in environ:
                found.append(int(entry))
    return found
