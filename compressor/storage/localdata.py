"""LocalStore's data path: the merge reads the raw files where they lie (see
compressor/storage/base.py, "The data path"), no copy made.

Separate from local.py as S3Store's data path is from s3.py (s3data.py): handing
out a real path to a file is its own promise (under the root, no symlink
followed, and `changed` tells a file replaced since), with its own cache of
resolved directories. It knows the store by a protocol (LocalSource), so local.py
imports it and it never imports local.py.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Protocol

from .base import (
    InPlaceReader,
    LocalObject,
    NotFound,
    ObjectInfo,
    ObjectSource,
    StoreError,
    StoreReader,
    md5_file,
)
from .localfiles import cached_etag, remember_etag, unreadable, validate_key


class LocalSource(ObjectSource, Protocol):
    """What the data path uses of the LocalStore it belongs to (local.py's LocalStore
    is one)."""

    uri: str

    def _real_root(self) -> str: ...


class LocalReader(StoreReader, InPlaceReader):
    """LocalStore's data path: the files themselves (see compressor/storage/base.py);
    `read` and `read_to_file` go through the store, as a StoreReader's do.

    `locate` hands out the real path of a key's file: under the store's real root,
    no symlink in it, the file itself a regular file opened without following a
    symlink. Its size and ETag (md5, from the xattr cache while the file's size and
    mtime are those it was computed for) are what a listing would say. `changed`
    compares the file's (device, inode, size, mtime) with those seen by `locate`:
    a file replaced (LocalStore writes replace), rewritten in place or removed
    since has changed. A directory swapped for a symlink after `locate` makes the
    path reach another file, which has changed too.

    One reader serves one partition's fetch (`LocalStore.data_reader()` makes a new
    one each time), which locates thousands of files in one directory: the store's
    real root and each directory's real path are resolved once for the reader's
    lifetime instead of per file. A cached path is trusted only when the kernel
    agrees: after the open, the path /proc/self/fd gives for the file must be the
    path handed out (so the file opened was exactly there, under the root, when it
    was opened). Otherwise (no /proc, or a directory moved or swapped for a
    symlink since it was cached) the directory is resolved again for that file,
    as it would be without the cache, and must still be under the root.
    """

    in_memory = True
    store: LocalSource

    def __init__(self, store: LocalSource) -> None:
        super().__init__(store)
        self._root: str | None = None
        #: key of a directory ('' for the root) -> its real path, under the real root
        self._dirs: dict[str, str] = {}

    def _real_dir(self, key: str, dir_key: str) -> tuple[str, str]:
        """(real root, real path of the directory `dir_key`), resolved once per reader.

        StoreError if that directory resolves outside the root (a symlink out)."""
        root = self._root
        if root is None:
            root = self._root = self.store._real_root()
        real = self._dirs.get(dir_key)
        if real is None:
            real = os.path.realpath(os.path.join(root, *dir_key.split("/"))) if dir_key else root
            if real != root and not real.startswith(root + os.sep):
                raise StoreError(f"key {key!r} resolves outside the store root")
            self._dirs[dir_key] = real  # a race between threads stores the same value
        return root, real

    def locate(self, key: str) -> LocalObject:
        validate_key(key)
        dir_key, _, name = key.rpartition("/")
        root, directory = self._real_dir(key, dir_key)
        real = os.path.join(directory, name)
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError):
            self.store._real_root()  # StoreConfigError if the root itself is gone
            raise NotFound(f"key {key!r} not found in {self.store.uri}") from None
        except PermissionError as exc:
            raise unreadable(key, exc) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise StoreError(
                    f"key {key!r} is a symlink; the local store does not follow them"
                ) from None
            raise StoreError(f"cannot read key {key!r}: {exc.strerror}") from None
        try:
            if _opened_path(fd) != real:  # resolved now, as without the cache (docstring)
                root = self.store._real_root()
                real = os.path.join(os.path.realpath(os.path.dirname(real)), name)
                if not real.startswith(root + os.sep):
                    raise StoreError(f"key {key!r} resolves outside the store root")
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise NotFound(f"key {key!r} not found in {self.store.uri} (not a file)")
            etag = cached_etag(fd, st)
            if etag is None:
                with os.fdopen(os.dup(fd), "rb") as fh:
                    etag = md5_file(fh).hex()
                remember_etag(fd, etag, st)
        except OSError as exc:
            raise StoreError(f"cannot read key {key!r}: {exc.strerror}") from None
        finally:
            os.close(fd)
        return LocalObject(Path(real), ObjectInfo(key, st.st_size, etag), _stamp(st))

    def changed(self, obj: LocalObject) -> bool:
        try:
            st = os.lstat(obj.path)
        except OSError:
            return True
        return not stat.S_ISREG(st.st_mode) or _stamp(st) != obj.stamp


def _opened_path(fd: int) -> str | None:
    """The path the kernel has for an open file (real: no symlink in it), None where
    /proc/self/fd is not there to ask. (A file unlinked since it was opened reads
    '<path> (deleted)'.)"""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _stamp(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
