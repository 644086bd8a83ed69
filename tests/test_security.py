"""Issue 4, "Security": secrets never appear in any output or written object; `.env`
is read from the given path only, with a warning when others can read it.

The secrets are the ones of tests/jobworld.py: a raw key pair, a compact key
pair and a password in the endpoint URL's userinfo. Every other end-to-end test
of issue 4 (test_faults.py, test_bad_input.py) runs with them too and is
scanned the same way; the test here goes through every failure in one lake.
"""

from __future__ import annotations

import signal
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from compressor.demo import CORRUPT_KINDS, file_bytes, file_names, special_files
from compressor.lease import LeaseManager, LeaseOwner
from tests import jobworld
from tests.conftest import free_port
from tests.jobworld import (
    COMPACT_ACCESS_KEY,
    ENDPOINT_PASSWORD,
    RAW_ACCESS_KEY,
    RAW_SECRET_KEY,
    SECRETS,
    TODAY,
    JobWorld,
    find_secrets,
    spec,
    wait_for,
    with_userinfo,
)
from tests.support.s3proxy import S3Proxy

jw = jobworld.jw  # the fixtures
auth_server = jobworld.auth_server

DAILY = ("--mode", "daily", "--today", TODAY)


def test_the_scan_finds_secrets_in_every_form() -> None:
    assert find_secrets(f"x {RAW_SECRET_KEY} y") == [RAW_SECRET_KEY]
    assert find_secrets(b'{"e": "http://u:' + ENDPOINT_PASSWORD.lower().encode() + b'@h"}')
    assert find_secrets("nothing here") == []


def test_no_secret_anywhere_through_every_partition_failure(jw: JobWorld) -> None:
    """One lake through the partition-level failures of issue 4, then every output, object
    and file is searched (the `jw` fixture sweeps again at teardown)."""
    good = spec("btcusdt")
    bad = spec("ethusdt", files=len(CORRUPT_KINDS), corrupt=1)
    jw.add(good)
    jw.add(bad)
    codes: dict[str, int] = {}

    with S3Proxy(jw.moto) as proxy:
        via_proxy = jw.env_with(S3_ENDPOINT=with_userinfo(proxy.endpoint))
        # a corrupt object (quarantine), JSON logs, everything through the proxy
        codes["quarantine"] = jw.run(*DAILY, "--log-format", "json", env=via_proxy).code
        used = {seen.access_key for seen in proxy.requests}
        assert used == {RAW_ACCESS_KEY, COMPACT_ACCESS_KEY}  # the secrets were really in use
        # throttling and resets until retries run out (failed, retryable)
        proxy.set_faults(1.0, ["slowdown", "reset"], ops=["GET"], seed=2)
        codes["faults"] = jw.run(*DAILY, "--overwrite", env=jw.env_with(
            S3_ENDPOINT=with_userinfo(proxy.endpoint), S3_COMPACT_ENDPOINT=with_userinfo(jw.moto),
            S3_MAX_ATTEMPTS="2")).code
        # interrupted while downloading
        proxy.set_faults(1.0, ["delay"], ops=["GET"], delay=1.0)
        proxy.reset_counts()
        proc = jw.popen(*DAILY, "--overwrite", env=jw.env_with(
            S3_ENDPOINT=with_userinfo(proxy.endpoint), S3_COMPACT_ENDPOINT=with_userinfo(jw.moto),
            S3_READ_TIMEOUT="0.5", S3_MAX_ATTEMPTS="20"))
        wait_for(lambda: proxy.counts().get("GET", 0) > 0, 30, "a download", proc)
        proc.send_signal(signal.SIGTERM)
        codes["sigterm"] = jw.finish(proc).code
        proxy.clear_faults()

    # a partition leased by another run
    holder = LeaseManager(jw.compact, owner=LeaseOwner("elsewhere", 1, "r"), auto_renew=False)
    assert holder.acquire(good.partition) is not None
    codes["busy"] = jw.run(*DAILY, "--overwrite").code
    # malformed state, the run that refuses it, the repair
    state = jw.compact.get_bytes("compacted/_state.json")[0]
    jw.compact.put_bytes("compacted/_state.json", state[:-7])
    codes["bad-state"] = jw.run(*DAILY).code
    codes["repair"] = jw.run("--repair-state").code
    # the operator fixes the object; the day completes
    (slot,) = special_files(bad)
    fixed = replace(bad, corrupt=0)
    jw.raw.put_bytes(bad.partition.prefix + file_names(bad)[slot], file_bytes(fixed, slot))
    codes["fixed"] = jw.run(*DAILY, "--retry-quarantine").code

    assert codes == {"quarantine": 1, "faults": 1, "sigterm": 143, "busy": 1, "bad-state": 2,
                     "repair": 0, "fixed": 0}
    assert len(jw.outputs) == 2 * len(codes)
    assert any(o.key.startswith("compacted/_state.json.corrupt-")
               for o in jw.compact.list_objects("compacted/"))
    jw.assert_no_secrets_anywhere()


def test_no_secret_anywhere_through_every_run_failure(
    jw: JobWorld, auth_server: dict[str, str]
) -> None:
    """The run-level failures (exit 2) and read-only actions, with the same secrets."""
    jw.add(spec())
    codes: dict[str, int] = {}
    with S3Proxy(jw.moto) as proxy:
        proxy.date_offset = 7200  # the clock far off
        codes["clock"] = jw.run(*DAILY, env=jw.env_with(
            S3_ENDPOINT=with_userinfo(proxy.endpoint))).code
    codes["missing-bucket"] = jw.run(*DAILY, env=jw.env_with(S3_COMPACT_BUCKET="qlc-nope-x")).code
    dead = with_userinfo(f"http://127.0.0.1:{free_port()}")
    codes["unreachable"] = jw.run(*DAILY, env=jw.env_with(S3_ENDPOINT=dead)).code
    codes["bad-tmp"] = jw.run(*DAILY, "--tmp-dir", "/proc/version").code
    codes["wrong-credentials"] = jw.run(*DAILY, env=jw.env_with(
        S3_ENDPOINT=with_userinfo(auth_server["url"]), S3_BUCKET="qlc-auth-raw",
        S3_COMPACT_BUCKET="qlc-auth-compact")).code
    codes["half-pair"] = jw.run(*DAILY, env=jw.env_with(S3_COMPACT_SECRET_KEY=None)).code
    codes["usage"] = jw.run("--mode", "backfill", "--date-from", "tomorrow").code
    codes["ok"] = jw.run(*DAILY, "--log-format", "json").code
    codes["report"] = jw.run("--quality-report", "--today", TODAY).code
    codes["dry-run"] = jw.run(*DAILY, "--dry-run").code
    assert codes == {"clock": 2, "missing-bucket": 2, "unreachable": 2, "bad-tmp": 2,
                     "wrong-credentials": 2, "half-pair": 2, "usage": 2, "ok": 0, "report": 0,
                     "dry-run": 0}
    jw.assert_no_secrets_anywhere()


# --------------------------------------------------------------------------- .env


def _env_file(path: Path, jw: JobWorld, **values: str) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)
    jw.exempt.add(path)
    return path


def test_env_file_is_read_only_from_the_given_path(jw: JobWorld) -> None:
    jw.add(spec())
    env = jw.env_with(S3_BUCKET=None)
    real = {"S3_BUCKET": jw.env["S3_BUCKET"]}
    # a .env in a parent directory is never picked up (no upward search)
    _env_file(jw.cwd.parent / ".env", jw, **real)
    r = jw.run(*DAILY, "--dry-run", env=env)
    assert r.code == 2 and "'quantlab-raw' does not exist" in r.err  # the built-in default
    # ./.env (the working directory) is the default
    _env_file(jw.cwd / ".env", jw, **real)
    r = jw.run(*DAILY, "--dry-run", env=env)
    assert r.code == 0, r.err
    # with --env-file, that file only: ./.env is not read at all
    _env_file(jw.cwd / ".env", jw, S3_BUCKET="qlc-from-cwd-x")
    given = _env_file(jw.cwd.parent / "given.env", jw, **real)
    r = jw.run(*DAILY, "--env-file", str(given), env=env)
    assert r.code == 0, r.err
    assert "qlc-from-cwd-x" not in r.out + r.err
    r = jw.run(*DAILY, "--dry-run", env=env)  # and ./.env is really what it says
    assert r.code == 2 and "'qlc-from-cwd-x' does not exist" in r.err


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640, 0o604, 0o644], ids=lambda m: f"{m:o}")
def test_env_file_readable_by_others_warns_in_one_line(jw: JobWorld, mode: int) -> None:
    jw.add(spec())
    path = _env_file(jw.cwd.parent / "qlc.env", jw, S3_ACCESS_KEY=RAW_ACCESS_KEY,
                     S3_SECRET_KEY=RAW_SECRET_KEY, S3_BUCKET=jw.env["S3_BUCKET"])
    path.chmod(mode)
    env = jw.env_with(S3_BUCKET=None, S3_SECRET_KEY=None, S3_ACCESS_KEY=None)
    r = jw.run(*DAILY, "--dry-run", "--env-file", str(path), env=env)
    assert r.code == 0, r.err
    warnings = [x for x in r.err_lines if "readable by other users" in x]
    others = bool(mode & (stat.S_IRGRP | stat.S_IROTH))
    assert len(warnings) == (1 if others else 0), r.err
    if others:
        assert str(path) in warnings[0] and f"{mode:o}" in warnings[0]
        assert "chmod 600" in warnings[0]
    assert not find_secrets(r.out + r.err, SECRETS)


def test_stores_never_show_secrets_in_repr_or_uri(jw: JobWorld) -> None:
    from compressor.storage import open_store

    env = jw.env_with(S3_COMPACT_ENDPOINT=with_userinfo("http://127.0.0.1:9"))
    for role in ("raw", "compact"):
        store = open_store(f"s3://{jw.env['S3_BUCKET']}/pre", env, role=role)
        shown = f"{store!r} {store.uri} {getattr(store, 'endpoint', '')} {vars(store)}"
        assert not find_secrets(shown), shown
