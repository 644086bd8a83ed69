"""A moto S3 server subprocess on 127.0.0.1 (stdlib + moto only, no pytest).

Shared by the test fixtures (tests/conftest.py) and bench/chaos/ (the chaos bench):

    with moto_server(log_path) as endpoint:
        ... boto3 / run.py against `endpoint` ...
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

#: Fake credentials the tests and the chaos bench use; moto accepts any.
TEST_ACCESS_KEY = "qlc-test-access-key"
TEST_SECRET_KEY = "qlc-test-secret-key-do-not-leak"
TEST_REGION = "us-east-1"

# moto checks If-Match / If-None-Match on PutObject and then writes in a
# separate step, without a lock, in a threaded server; real S3 makes the check
# and the write one atomic step. Serialising mutating requests makes the test
# server honest for the concurrency tests (leases, state CAS) without changing
# anything else about moto.
MOTO_LAUNCHER = """
import sys, threading
import moto.server as ms
_lock = threading.Lock()
_call = ms.DomainDispatcherApplication.__call__
def _serialised(self, environ, start_response):
    if environ.get("REQUEST_METHOD") in ("PUT", "POST", "DELETE"):
        with _lock:
            return _call(self, environ, start_response)
    return _call(self, environ, start_response)
ms.DomainDispatcherApplication.__call__ = _serialised
# moto 5 checks If-None-Match on CompleteMultipartUpload but not If-Match, which AWS
# honours (docs/operations.md "Store compatibility"); under the lock above, check and complete are
# one step, as on S3.
from moto.s3.exceptions import PreconditionFailed
from moto.s3.responses import S3Response
_post = S3Response._key_response_post
def _complete_if_match(self, request, body, bucket_name, query, key_name):
    expected = self.headers.get("If-Match")
    if query.get("uploadId") and expected is not None:
        existing = self.backend.get_object(bucket_name, key_name)
        if existing is None or existing.etag.strip('"') != expected.strip().strip('"'):
            raise PreconditionFailed("If-Match")
    return _post(self, request, body, bucket_name, query, key_name)
S3Response._key_response_post = _complete_if_match
ms.main(sys.argv[1:])
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_up(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited early: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/moto-api/", timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto server did not answer at {url} within {timeout}s")


@contextmanager
def moto_server(
    log: Path, timeout: float = 30.0, env: Mapping[str, str] | None = None
) -> Iterator[str]:
    """Start a moto S3 server subprocess; yields its endpoint URL; stops it on exit.

    `env`: extra environment for the server (e.g. INITIAL_NO_AUTH_ACTION_COUNT).
    """
    port = free_port()
    server_env = {**os.environ, **(env or {}), "MOTO_PORT": str(port)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", MOTO_LAUNCHER, "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=server_env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url, proc, log, timeout)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def cli_environment(endpoint: str, raw_bucket: str, compact_bucket: str) -> dict[str, str]:
    """A full environment for running `run.py` against `endpoint` with the test credentials.

    AWS_* variables and config files of the machine are masked so nothing real is used.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    repo = str(Path(__file__).resolve().parents[2])
    env.update(
        {
            "S3_ENDPOINT": endpoint,
            "S3_ACCESS_KEY": TEST_ACCESS_KEY,
            "S3_SECRET_KEY": TEST_SECRET_KEY,
            "S3_REGION": TEST_REGION,
            "S3_BUCKET": raw_bucket,
            "S3_COMPACT_BUCKET": compact_bucket,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
            "PYTHONPATH": os.pathsep.join([repo, env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        }
    )
    return env
