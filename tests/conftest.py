"""Shared fixtures: a real S3 server (moto, as a subprocess over HTTP), buckets, envs, stores.

No boto3 mocking anywhere: every S3 test talks HTTP to a moto server process
on 127.0.0.1, optionally through tests/s3proxy.py to count requests or inject
faults.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from compressor.storage import LocalStore, S3Store, Store
from tests.s3proxy import S3Proxy
from tests.s3server import (  # noqa: F401 - free_port and the keys: re-exported for tests
    TEST_ACCESS_KEY,
    TEST_REGION,
    TEST_SECRET_KEY,
    free_port,
)
from tests.s3server import moto_server as start_moto_server


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Endpoint URL of a moto S3 server subprocess on 127.0.0.1, for the whole session."""
    with start_moto_server(tmp_path_factory.mktemp("moto") / "moto.log") as url:
        yield url


@pytest.fixture(scope="session")
def _admin_client(moto_server: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=moto_server,
        aws_access_key_id=TEST_ACCESS_KEY,
        aws_secret_access_key=TEST_SECRET_KEY,
        region_name=TEST_REGION,
    )


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


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """The same contract, once per backend: a LocalStore, then an S3Store on a fresh bucket."""
    if request.param == "local":
        root = tmp_path / "store-root"
        root.mkdir()
        return LocalStore(root)
    endpoint = request.getfixturevalue("moto_server")
    bucket = request.getfixturevalue("s3_bucket")
    return make_s3_store(endpoint, bucket, max_attempts=3, read_timeout=10.0)


@pytest.fixture
def s3proxy(moto_server: str) -> Iterator[S3Proxy]:
    """A counting, fault-injecting proxy in front of the moto server (see tests/s3proxy.py)."""
    with S3Proxy(moto_server) as proxy:
        yield proxy


# =============================================================================
# Job-level helpers (discovery, planning, publish, CLI tests). Appended by the
# owner of compressor/job.py; everything above belongs to the storage fixtures.
# =============================================================================


def put_partition(store: Store, spec: Any, scratch: Path) -> list[str]:
    """Generate `spec` (a generator.PartitionSpec) and upload every object it makes,
    strays included, through the storage layer. Returns the data keys in key order."""
    from compressor.generator import write_partition

    root = scratch / f"gen-{uuid.uuid4().hex[:8]}"
    paths = write_partition(spec, root)
    directory = root / spec.partition.prefix
    for path in sorted(directory.iterdir()):
        store.put_file(spec.partition.prefix + path.name, path)
    return [spec.partition.prefix + p.name for p in paths]


def store_listing(store: Store) -> dict[str, tuple[int, str]]:
    """Every object of a store: key -> (size, etag). For before/after comparisons."""
    return {o.key: (o.size, o.etag) for o in store.list_objects("")}
