"""Shared fixtures: a real S3 server (moto, as a subprocess over HTTP), buckets, envs, stores.

No boto3 mocking anywhere: every S3 test talks HTTP to a moto server process
on 127.0.0.1, optionally through tests/support/s3proxy.py to count requests or inject
faults.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from compressor.storage import LocalStore, ObjectInfo, S3Store, Store, TransientStoreError
from tests.support.rgwserver import RGW, missing_binaries, rgw_server
from tests.support.s3proxy import S3Proxy
from tests.support.s3server import (  # noqa: F401 - free_port and the keys: re-exported for tests
    TEST_ACCESS_KEY,
    TEST_REGION,
    TEST_SECRET_KEY,
    free_port,
)
from tests.support.s3server import moto_server as start_moto_server

# Every command the suite runs would start a spare slice process (docs/guarantees.md
# "How a run works") that its small lakes never use: about 0.3 s of CPU per run, 40%
# more CPU for the whole suite. Off for the suite; the spare tests turn it back on.
os.environ.setdefault("MERGE_SPARE_SLICES", "0")


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Endpoint URL of a moto S3 server subprocess on 127.0.0.1, for the whole session."""
    with start_moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        yield url


def admin_client(endpoint: str) -> Any:
    """A plain boto3 client with the test credentials, to act behind a store's back."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=TEST_ACCESS_KEY,
        aws_secret_access_key=TEST_SECRET_KEY,
        region_name=TEST_REGION,
    )


@pytest.fixture(scope="session")
def _admin_client(moto_server: str) -> Any:
    return admin_client(moto_server)


@pytest.fixture
def bucket_factory(_admin_client: Any) -> Callable[[], str]:
    """Creates a fresh, empty bucket with a unique name on each call."""

    def make() -> str:
        name = f"qlc-test-{uuid.uuid4().hex[:16]}"
        _admin_client.create_bucket(Bucket=name)
        return name

    return make


@pytest.fixture
def s3_bucket(bucket_factory: Callable[[], str]) -> str:
    """A fresh empty bucket for this test."""
    return bucket_factory()


@pytest.fixture
def s3_env(moto_server: str) -> dict[str, str]:
    """Only the S3_* variables pointing at the test server: for open_store(uri, env, ...)."""
    return {
        "S3_ENDPOINT": moto_server,
        "S3_ACCESS_KEY": TEST_ACCESS_KEY,
        "S3_SECRET_KEY": TEST_SECRET_KEY,
        "S3_REGION": TEST_REGION,
    }


@pytest.fixture
def cli_env(s3_env: dict[str, str], bucket_factory: Callable[[], str]) -> dict[str, str]:
    """A full environment for running the CLI as a subprocess against the test server.

    Fresh raw and compact buckets (S3_BUCKET, S3_COMPACT_BUCKET); AWS_* variables
    and config files of the machine are masked so nothing real is ever used.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    env.update(s3_env)
    env.update(
        {
            "S3_BUCKET": bucket_factory(),
            "S3_COMPACT_BUCKET": bucket_factory(),
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
            "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]
            ).rstrip(os.pathsep),
        }
    )
    return env


def make_s3_store(endpoint: str, bucket: str, **kwargs: object) -> S3Store:
    """An S3Store on the test server with the test credentials; kwargs tune retries etc."""
    return S3Store(
        bucket,
        endpoint_url=endpoint,
        access_key=TEST_ACCESS_KEY,
        secret_key=TEST_SECRET_KEY,
        region=TEST_REGION,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="session")
def rgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RGW]:
    """A real Ceph RGW (tests/support/rgwserver.py) for the whole session; the tests that use it
    are marked `rgw`. Without Debian's ceph packages they skip (`require_tool`)."""
    for name in missing_binaries()[:1]:
        require_tool(name, package="ceph-mon ceph-osd radosgw")
    with rgw_server(tmp_path_factory.mktemp("rgw") / "cluster") as server:
        yield server


def rgw_client(server: RGW) -> Any:
    """A plain boto3 client of the RGW user, to act behind a store's back."""
    return boto3.client("s3", endpoint_url=server.endpoint, aws_access_key_id=server.access_key,
                        aws_secret_access_key=server.secret_key, region_name=TEST_REGION)


def rgw_bucket(server: RGW) -> str:
    name = f"qlc-test-{uuid.uuid4().hex[:16]}"
    rgw_client(server).create_bucket(Bucket=name)
    return name


def make_rgw_store(server: RGW, bucket: str, **kwargs: Any) -> S3Store:
    """An S3Store on the RGW, probed as a run probes its compact store (so it knows which
    conditional requests the gateway honours)."""
    store = S3Store(bucket, endpoint_url=server.endpoint, access_key=server.access_key,
                    secret_key=server.secret_key, region=TEST_REGION, **kwargs)
    store.check_conditional_writes("compacted/probes/")
    store.on_rgw = True  # type: ignore[attr-defined]  # for tests that reopen it elsewhere
    return store


@pytest.fixture(params=["local", "s3", pytest.param("rgw", marks=pytest.mark.rgw)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """The same contract, once per backend: a LocalStore, an S3Store on a fresh moto bucket,
    and one on a fresh bucket of a real Ceph RGW."""
    if request.param == "local":
        root = tmp_path / "store-root"
        root.mkdir()
        return LocalStore(root)
    if request.param == "rgw":
        server = request.getfixturevalue("rgw")
        return make_rgw_store(server, rgw_bucket(server), max_attempts=3, read_timeout=10.0)
    endpoint = request.getfixturevalue("moto_server")
    bucket = request.getfixturevalue("s3_bucket")
    return make_s3_store(endpoint, bucket, max_attempts=3, read_timeout=10.0)


@pytest.fixture
def s3proxy(moto_server: str) -> Iterator[S3Proxy]:
    """A counting, fault-injecting proxy in front of the moto server (tests/support/s3proxy.py)."""
    with S3Proxy(moto_server) as proxy:
        yield proxy


# =============================================================================
# Job-level helpers (discovery, planning, publish, CLI tests). Appended by the
# owner of compressor/job/; everything above belongs to the storage fixtures.
# =============================================================================


def put_partition(store: Store, spec: Any, scratch: Path) -> list[str]:
    """Generate `spec` (a generator.PartitionSpec) and upload every object it makes,
    strays included, through the storage layer. Returns the data keys in key order."""
    from compressor.demo import write_partition

    root = scratch / f"gen-{uuid.uuid4().hex[:8]}"
    paths = write_partition(spec, root)
    directory = root / spec.partition.prefix
    for path in sorted(directory.iterdir()):
        store.put_file(spec.partition.prefix + path.name, path)
    return [spec.partition.prefix + p.name for p in paths]


def store_listing(store: Store) -> dict[str, tuple[int, str]]:
    """Every object of a store: key -> (size, etag). For before/after comparisons."""
    return {o.key: (o.size, o.etag) for o in store.list_objects("")}


class FlakyLocalStore(LocalStore):
    """A real LocalStore that raises chosen errors on chosen operations and keys.

    `fail(op, prefix, error, times)` makes `op` ('list_objects', 'get_bytes', 'get_file',
    'put_bytes', 'put_file', 'delete', 'remove_stale_partials') raise `error` for keys (or listing
    prefixes) starting with `prefix`, `times` times (None: until `clear()`).
    """

    OPS = ("list_objects", "get_bytes", "get_file", "put_bytes", "put_file", "delete",
           "remove_stale_partials")

    def __init__(self, root: Path | str) -> None:
        super().__init__(root)
        self.faults: list[list[Any]] = []

    def fail(self, op: str, prefix: str = "", error: BaseException | None = None,
             times: int | None = None) -> None:
        assert op in self.OPS, op
        self.faults.append([op, prefix, error or TransientStoreError(
            f"injected {op} fault on {prefix!r}"), times])

    def clear(self) -> None:
        self.faults.clear()

    def _fault(self, op: str, key: str) -> None:
        for fault in self.faults:
            name, prefix, error, times = fault
            if name == op and key.startswith(prefix) and times != 0:
                if times is not None:
                    fault[3] = times - 1
                raise error

    def list_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        self._fault("list_objects", prefix)
        return super().list_objects(prefix)

    def get_bytes(self, key: str) -> tuple[bytes, str]:
        self._fault("get_bytes", key)
        return super().get_bytes(key)

    def get_file(self, key: str, path: Path) -> ObjectInfo:
        self._fault("get_file", key)
        return super().get_file(key, path)

    def put_bytes(self, key: str, data: bytes, *, if_match: str | None = None,
                  if_none_match: bool = False) -> str:
        self._fault("put_bytes", key)
        return super().put_bytes(key, data, if_match=if_match, if_none_match=if_none_match)

    def put_file(self, key: str, path: Path, *, if_match: str | None = None,
                 if_none_match: bool = False) -> ObjectInfo:
        self._fault("put_file", key)
        return super().put_file(key, path, if_match=if_match, if_none_match=if_none_match)

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        self._fault("delete", key)
        super().delete(key, if_match=if_match)

    def remove_stale_partials(self, max_age_s: float = 86400.0) -> int:
        self._fault("remove_stale_partials", "")
        return super().remove_stale_partials(max_age_s)


#: Set (to 1) where the full suite must run, e.g. by .ci/run: a missing tool fails its
#: tests instead of skipping them.
REQUIRE_TOOLS_ENV = "QLC_REQUIRE_TOOLS"


def require_tool(name: str, *, found: str | None = None, package: str | None = None) -> str:
    """The path of an external tool a test needs (docs/architecture.md "Development").

    On a machine without it the test is skipped with a one-line reason saying what to
    install, so the README's test command passes on a bare machine; with
    QLC_REQUIRE_TOOLS=1 (CI installs every tool) it fails instead, so CI never skips
    it silently. `found`: the path when the caller looks it up itself (a library, not
    a program on PATH); otherwise `name` is looked up on PATH.
    """
    path = found if found is not None else shutil.which(name)
    if path:
        return path
    reason = f"{name} is not installed (apt-get install -y {package or name})"
    if os.environ.get(REQUIRE_TOOLS_ENV) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_TOOLS_ENV}=1 requires it", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
def read_only_view(tmp_path: Path) -> Iterator[Callable[[Path], Path]]:
    """`view(src)`: `src` again, through a read-only bind mount (EROFS on any write).

    A real read-only filesystem: tests run as root, whom file modes do not stop.
    Needs root (CI runs as root); skipped where mounts are not allowed."""
    mounts: list[Path] = []

    def view(src: Path) -> Path:
        mount = tmp_path / f"ro-{len(mounts)}-{src.name}"
        mount.mkdir()
        for cmd in (["mount", "--bind", str(src), str(mount)],
                    ["mount", "-o", "remount,ro,bind", str(mount)]):
            try:
                done = subprocess.run(cmd, capture_output=True, text=True)
            except OSError as exc:  # no mount(8) at all
                pytest.skip(f"cannot make a read-only bind mount here: {exc}")
            if done.returncode != 0:  # a bind already made is undone below
                pytest.skip(f"cannot make a read-only bind mount here: {done.stderr.strip()}")
            if mount not in mounts:
                mounts.append(mount)
        return mount

    try:
        yield view
    finally:
        for mount in mounts:
            subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB filesystem (tmpfs) for a temp dir; needs root (CI runs as root)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def old_checkout(commit: str, dest: Path) -> Path:
    """The repository as of `commit`, extracted under `dest` (git archive; CI clones the
    full history): upgrade tests run the old code on a store, then the new code."""
    archive = subprocess.run(["git", "-C", str(Path(__file__).resolve().parents[1]),
                              "archive", commit], capture_output=True, check=False)
    if archive.returncode:
        pytest.fail(f"git archive {commit}: {archive.stderr.decode()[-300:]}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4
            tar.extractall(dest, filter="data")
        else:
            tar.extractall(dest)  # noqa: S202 - our own repository's archive
    return dest
