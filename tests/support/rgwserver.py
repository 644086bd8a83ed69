"""A real single-node Ceph cluster with the RADOS Gateway on 127.0.0.1 (stdlib only).

Debian's `ceph-mon`, `ceph-osd` and `radosgw` packages: one monitor, one memstore
OSD (data in RAM, pool size 1), no manager, auth `none`, and radosgw's beast
frontend on a free port. Boots in about 10-15 s on 2 cores. Shared by the test
fixtures (tests/conftest.py) and the bench:

    with rgw_server(workdir) as rgw:
        ... boto3 / run.py against rgw.endpoint with rgw.access_key, rgw.secret_key ...

Settings that matter (each found on a real boot): the monitor must be addressed
with the v1 protocol only (`ms bind msgr2 = false` and a `v1:` monmap entry) or the
CLI tools hang, and with auth `none` radosgw needs `ms mon client mode = crc`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.s3server import free_port

#: The binaries a boot needs (Debian: ceph-mon, ceph-osd, radosgw).
BINARIES = ("ceph-mon", "ceph-osd", "radosgw", "radosgw-admin", "monmaptool", "ceph")
ACCESS_KEY = "qlc-rgw-access-key"
SECRET_KEY = "qlc-rgw-secret-key-do-not-leak"
BOOT_TIMEOUT_S = 60.0
#: Boots tried before giving up (a boot on a loaded machine now and then hangs).
BOOT_TRIES = 2
#: OSD starts tried within one boot, and how long each may take to become active.
OSD_TRIES = 4
OSD_BOOT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RGW:
    endpoint: str
    access_key: str
    secret_key: str
    version: str
    boot_seconds: float


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if shutil.which(name) is None]


def _conf(root: Path, mon_port: int, rgw_port: int) -> str:
    return f"""[global]
fsid = {uuid.uuid4()}
mon host = v1:127.0.0.1:{mon_port}
mon initial members = a
ms bind msgr2 = false
ms mon client mode = crc
auth cluster required = none
auth service required = none
auth client required = none
osd objectstore = memstore
memstore device bytes = 4294967296
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
mon allow pool size one = true
mon warn on pool no redundancy = false
mon data avail warn = 1
mon data avail crit = 0
osd crush chooseleaf type = 0
run dir = {root}/run
admin socket = {root}/run/$name.asok
log file = {root}/log/$name.log
pid file = {root}/run/$name.pid
mon data = {root}/mon/$cluster-$id
osd data = {root}/osd/$cluster-$id
keyring = {root}/keyring
[client.rgw.qlc]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw data = {root}/rgw
rgw dns name = 127.0.0.1
"""


def _run(argv: list[str], root: Path, timeout: float = 60.0) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=root)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} failed ({done.returncode}): "
                           f"{(done.stderr or done.stdout)[-1500:]}")
    return done.stdout


def _wait_http(url: str, deadline: float, log: Path) -> None:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.2)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
    raise RuntimeError(f"radosgw did not answer at {url} in time: {tail}")


@contextmanager
def rgw_server(root: Path) -> Iterator[RGW]:
    """Boot the cluster under `root` (created), yield its gateway, stop and remove it.
    A boot that does not answer in BOOT_TIMEOUT_S is tried again from scratch."""
    for attempt in range(1, BOOT_TRIES + 1):
        try:
            booting = _cluster(root / f"try{attempt}")
            server = booting.__enter__()
        except RuntimeError:
            if attempt == BOOT_TRIES:
                raise
            continue
        try:
            yield server
        finally:
            booting.__exit__(None, None, None)
        return


@contextmanager
def _cluster(root: Path) -> Iterator[RGW]:
    started = time.monotonic()
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("run", "log", "mon", "osd/ceph-0", "rgw"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "keyring").touch()
    mon_port, rgw_port = free_port(), free_port()
    conf = root / "ceph.conf"
    conf.write_text(_conf(root, mon_port, rgw_port))
    c = ["-c", str(conf)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        _run(["monmaptool", "--create", "--addv", "a", f"[v1:127.0.0.1:{mon_port}]",
              "--fsid", _fsid(conf), str(root / "monmap")], root)
        _run(["ceph-mon", *c, "--mkfs", "-i", "a", "--monmap", str(root / "monmap")], root)
        procs.append(_daemon(["ceph-mon", *c, "-f", "-i", "a"], root, "mon"))
        # the OSD's uuid given to both the monitor and its mkfs: without it the OSD's
        # boot-time "osd create" can find osd.0 under another uuid ('wrong fsid') and hang
        osd_uuid = str(uuid.uuid4())
        osd_id = _run(["ceph", *c, "--connect-timeout", "30", "osd", "create", osd_uuid],
                      root).strip()
        procs.append(_start_osd(c, root, osd_id, osd_uuid))
        procs.append(_daemon(["radosgw", *c, "-f", "-n", "client.rgw.qlc"], root, "rgw"))
        endpoint = f"http://127.0.0.1:{rgw_port}"
        _wait_http(endpoint + "/", time.monotonic() + BOOT_TIMEOUT_S,
                   root / "log" / "client.rgw.qlc.log")
        _run(["radosgw-admin", *c, "-n", "client.rgw.qlc", "user", "create", "--uid", "qlc",
              "--display-name", "qlc", "--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY],
             root)
        version = _run(["radosgw", "--version"], root).split("(")[0].strip()
        yield RGW(endpoint, ACCESS_KEY, SECRET_KEY, version, time.monotonic() - started)
    finally:
        for proc in reversed(procs):
            _stop(proc)
        if os.environ.get("QLC_KEEP_RGW") != "1":
            shutil.rmtree(root, ignore_errors=True)


def _start_osd(c: list[str], root: Path, osd_id: str, osd_uuid: str) -> subprocess.Popen[bytes]:
    """mkfs and start the OSD until it is active, OSD_TRIES times at most.

    A young monitor sometimes takes the OSD's first command before the OSD has its
    monmap: the command carries a zero fsid, the monitor answers 'wrong fsid', and the
    OSD gives up its init (seen on the first boot of a test session, 3 times in 4
    there). A fresh mkfs and start under the same uuid then boots; the cluster stays."""
    log = root / "log" / f"osd.{osd_id}.log"
    for attempt in range(1, OSD_TRIES + 1):
        data = root / "osd" / f"ceph-{osd_id}"
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        if log.exists():
            log.rename(log.with_name(f"osd.{osd_id}.try{attempt - 1}.log"))
        _run(["ceph-osd", *c, "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid], root)
        proc = _daemon(["ceph-osd", *c, "-f", "-i", osd_id], root, f"osd.try{attempt}")
        if _osd_active(proc, log, time.monotonic() + OSD_BOOT_TIMEOUT_S):
            return proc
        _stop(proc)
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else "(no log)"
    raise RuntimeError(f"ceph-osd did not become active in {OSD_TRIES} tries: {tail}")


def _osd_active(proc: subprocess.Popen[bytes], log: Path, deadline: float) -> bool:
    """True once the OSD's log says it is active; False when it failed its init,
    exited, or the deadline passed."""
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if "state: booting -> active" in text:
            return True
        if "wrong fsid" in text or "init unable" in text or proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def _fsid(conf: Path) -> str:
    for line in conf.read_text().splitlines():
        if line.startswith("fsid = "):
            return line.split("=", 1)[1].strip()
    raise RuntimeError("no fsid in ceph.conf")


def _daemon(argv: list[str], root: Path, name: str) -> subprocess.Popen[bytes]:
    out = open(root / "log" / f"{name}.stdout", "wb")  # noqa: SIM115 - kept by the process
    return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=root,
                            start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
