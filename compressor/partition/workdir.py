"""Per-partition temp dirs, and which ones a run may remove (docs/operations.md "Deployment").

A pid names no process outside its PID namespace: two containers that share a
hostname and a temp volume (a Kubernetes pod's containers, `docker run` with the
same `--hostname`) each see the other's pids as dead. So a temp dir's owner is
not judged by a pid. Each dir holds `.owner.lock`, locked (flock, exclusive) by
the process that made it for as long as it uses the dir; the kernel drops the
lock when that process ends, however it ends, in every namespace. A run removes
another run's dir only when it can take that lock itself: its owner is then
provably gone. A dir is made under a hidden staging name, locked, then renamed
into place, so a `qlc-part-*` dir without a lock file is one its maker already
gave up (a download that outlived its partition wrote into it again) and is
removed too. Dirs in the format of earlier versions (`qlc-part-<pid>-<random>`,
no lock) are left alone, with a warning: their owner cannot be told. The same
rule serves a run's own leftovers: its dirs in use are locked by itself.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

#: Per-partition temp dirs are named `<TMP_PREFIX><pid>.<random>` under the tmp root.
TMP_PREFIX = "qlc-part-"
OWNER_LOCK = ".owner.lock"
_STAGING_PREFIX = ".qlc-new-"
_LEGACY = re.compile(re.escape(TMP_PREFIX) + r"\d+-")


@contextmanager
def work_dir(root: Path) -> Iterator[Path]:
    """A fresh temp dir under `root`, locked as ours until the block ends, then removed."""
    staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=root))
    fd = -1
    try:
        fd = os.open(staging / OWNER_LOCK, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path = root / f"{TMP_PREFIX}{os.getpid()}.{staging.name[len(_STAGING_PREFIX):]}"
        os.rename(staging, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def clean_stale_tmp(tmp_root: Path) -> list[Path]:
    """Remove the temp dirs whose owner is provably gone (module docstring); returns them."""
    removed = []
    for path in sorted(tmp_root.glob(f"{TMP_PREFIX}*")) if tmp_root.is_dir() else ():
        if not path.is_dir() or path.is_symlink():
            continue
        if _LEGACY.match(path.name) and not (path / OWNER_LOCK).exists():
            log.warning("left %s alone: made by an earlier version, whose owner cannot be "
                        "told; remove it by hand once no run of that version is running", path)
            continue
        if _remove_if_unowned(path):
            removed.append(path)
    return removed


def _remove_if_unowned(path: Path) -> bool:
    try:
        fd = os.open(path / OWNER_LOCK, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:  # given up by its maker (module docstring), or just removed
        shutil.rmtree(path, ignore_errors=True)
        return not path.exists()
    except OSError as exc:
        log.warning("left %s alone: cannot open its owner lock (%s)", path, exc.strerror)
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its owner is running, in whatever namespace
        shutil.rmtree(path, ignore_errors=True)
        return True
    finally:
        os.close(fd)
