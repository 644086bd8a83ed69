"""How a LocalStore writes: atomically, under a directory lock, in directories that a
concurrent delete may be pruning.

- Content goes to a temp file in the target's directory, is fsynced, then
  `os.replace`d over the target; the directory is fsynced too.
- The check of a condition and the replace (or, for a delete, the unlink and the
  removal of emptied directories) run under an exclusive `flock` on the key's
  parent directory, so check-then-act is atomic between threads and between
  processes on this machine. No lock files are left behind.
- A delete prunes emptied directories, as S3 prefixes vanish with their last key;
  a writer that loses its directory (or a parent of it) to such a prune creates
  the chain again, and a lock taken on a directory removed meanwhile is taken
  again on the live one.

Separate from local.py because these races are one concern, proven by their own
tests, and the store's methods read as S3's without them.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .base import CHUNK, StoreError, temp_name
from .localfiles import remember_etag

#: How often a write is retried when a concurrent delete removed its directory.
_DIR_RACE_RETRIES = 50


def write_tmp(
    real_root: Callable[[], str], key: str, target: str, fill: Callable[[BinaryIO], str]
) -> tuple[str, int, str]:
    """Write a temp file beside `target`, fsynced, its ETag remembered; returns (tmp
    path, size, md5 hex). `fill` writes the content and returns its md5 hex;
    `real_root()` is the store's real root (StoreConfigError when it is gone)."""
    directory, name = os.path.split(target)
    for _ in range(_DIR_RACE_RETRIES):
        _makedirs(real_root, key, directory)
        tmp = os.path.join(directory, temp_name(name))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            continue  # a concurrent delete removed the emptied directory
        except OSError as exc:
            raise StoreError(f"cannot write key {key!r}: {exc.strerror}") from None
        try:
            with os.fdopen(fd, "wb") as out:
                etag = fill(out)
                out.flush()
                os.fsync(out.fileno())
                size = os.fstat(out.fileno()).st_size
                remember_etag(out.fileno(), etag)
        except BaseException as exc:
            unlink_quietly(tmp)
            if isinstance(exc, OSError):
                raise StoreError(f"cannot write key {key!r}: {exc.strerror}") from None
            raise
        return tmp, size, etag
    raise StoreError(f"cannot write key {key!r}: its directory keeps disappearing")

def _makedirs(real_root: Callable[[], str], key: str, directory: str) -> None:
    """Create the key's directory and its parents.

    A concurrent delete prunes emptied directories (S3 prefixes vanish with their
    last key): between os.makedirs seeing a parent and creating the child below
    it, that parent may be removed (ENOENT). That is a race, not a missing root:
    create the chain again.
    """
    for _ in range(_DIR_RACE_RETRIES):
        try:
            os.makedirs(directory, exist_ok=True)
            return
        except (FileExistsError, NotADirectoryError):
            raise StoreError(
                f"cannot write key {key!r}: {_blocking_file(real_root(), key)!r} is a file, "
                "not a directory (an existing object)"
            ) from None
        except FileNotFoundError:
            real_root()  # StoreConfigError when the root itself is gone
            continue
        except OSError as exc:
            raise StoreError(f"cannot write key {key!r}: {exc.strerror}") from None
    raise StoreError(f"cannot write key {key!r}: its directory keeps disappearing")

def _blocking_file(root: str, key: str) -> str:
    """The first parent of `key` that exists as something other than a directory."""
    parts = key.split("/")[:-1]
    for n in range(1, len(parts) + 1):
        if not os.path.isdir(os.path.join(root, *parts[:n])):
            return "/".join(parts[:n])
    return "/".join(parts)


def commit(key: str, target: str, tmp: str, precondition: Callable[[], None]) -> None:
    """Check the precondition and replace the target, atomically under the dir lock."""
    directory = os.path.dirname(target)
    try:
        with dir_lock(directory):
            precondition()
            os.replace(tmp, target)
            fsync_dir(directory)
    except IsADirectoryError:
        raise StoreError(
            f"cannot write key {key!r}: other keys exist below it as a prefix"
        ) from None
    except OSError as exc:
        raise StoreError(f"cannot write key {key!r}: {exc.strerror}") from None
    finally:
        unlink_quietly(tmp)

def prune_dirs(real_root: Callable[[], str], directory: str) -> None:
    """Remove emptied directories up to the root, as S3 prefixes vanish with their keys.

    The caller holds the lock of `directory`; writers re-check after locking
    that their directory still exists (see dir_lock).
    """
    root = real_root()
    while directory != root and directory.startswith(root + os.sep):
        try:
            os.rmdir(directory)
        except OSError:
            return
        directory = os.path.dirname(directory)


def copy_hashed(src: BinaryIO, out: BinaryIO) -> str:
    digest = hashlib.md5()
    while chunk := src.read(CHUNK):
        digest.update(chunk)
        out.write(chunk)
    return digest.hexdigest()


def write_all(out: BinaryIO, data: bytes) -> str:
    out.write(data)
    return hashlib.md5(data).hexdigest()


def atomic_copy(src: BinaryIO, dest: Path) -> tuple[int, str]:
    """Copy an open object to a local path via a temp file and rename; (size, md5).

    No fsync: the destination is scratch space (a download for the merge), where
    a crash loses nothing; the rename alone keeps a partial copy from being seen.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / temp_name(dest.name)
    try:
        with open(tmp, "wb") as out:
            etag = copy_hashed(src, out)
            size = out.tell()
        os.replace(tmp, dest)
    except OSError as exc:
        unlink_quietly(str(tmp))
        raise StoreError(f"cannot write local file {str(dest)!r}: {exc.strerror}") from None
    except BaseException:
        unlink_quietly(str(tmp))
        raise
    return size, etag


@contextmanager
def dir_lock(directory: str) -> Iterator[None]:
    """Exclusive flock on a directory, re-checked to be the directory now at that path.

    A concurrent delete may remove (and a writer recreate) the directory while
    we wait for the lock; a lock on the removed inode protects nothing, so we
    retry until the locked inode is the live one. FileNotFoundError escapes if
    the directory is gone for good.
    """
    for _ in range(_DIR_RACE_RETRIES):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            locked = os.fstat(fd)
            try:
                live = os.stat(directory)
            except FileNotFoundError:
                live = None
            if live is not None and (live.st_ino, live.st_dev) == (locked.st_ino, locked.st_dev):
                yield
                return
        finally:
            os.close(fd)  # also releases the flock
        if live is None:
            raise FileNotFoundError(errno.ENOENT, "directory removed", directory)
    raise OSError(errno.EAGAIN, "directory keeps being replaced", directory)


def fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
