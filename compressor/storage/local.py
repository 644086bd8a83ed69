"""A directory on the local filesystem with the semantics of an S3 bucket.

Keys map to files under `root` ('a/b/c' -> root/a/b/c). The guarantees the job
relies on, and how they are kept:

- Atomic writes: content goes to a temp file in the target's directory, is
  fsynced, then `os.replace`d over the target; the directory is fsynced too.
- Conditional writes and deletes (if_match / if_none_match) and every commit
  step (replace, unlink, removal of emptied directories) run under an exclusive
  `flock` on the key's parent directory, so check-then-act is atomic between
  threads and between processes on this machine. No lock files are left behind.
- Listing follows S3: key order is lexicographic by UTF-8 bytes, prefixes are
  plain string prefixes, a "directory" exists only while it holds an object,
  and the store's own temp files are never listed.
- No key can leave the root: '..', '.', empty segments, absolute keys, NUL and
  backslashes are rejected, and symlinks are neither listed nor followed out
  of the root.
- ETag: md5 hex of the content (unquoted, like S3Store). It is computed while
  writing and cached in an extended attribute, so listings don't re-read files.

S3 allows both 'a' and 'a/b' as keys; a filesystem does not. Writing one while
the other exists raises StoreError naming the key.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from .base import (
    CHUNK,
    TMP_MARK,
    DataReader,
    InPlaceReader,
    LocalObject,
    NotFound,
    ObjectInfo,
    ObjectUnreadable,
    PreconditionFailed,
    Store,
    StoreConfigError,
    StoreError,
    StoreReader,
    md5_file,
    normalize_etag,
    temp_name,
)

_XATTR = "user.qlc.md5"
#: How often a write is retried when a concurrent delete removed its directory.
_DIR_RACE_RETRIES = 50


class LocalStore(Store):
    """S3 semantics on a local directory; see the module docstring."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.uri = str(self.root)

    # ----------------------------------------------------------------- checks

    def check(self) -> None:
        """The root is a readable directory. Not whether it is writable: read-only modes
        (docs/operations.md "Command line": --dry-run, --quality-report, --mode verify) must work on
        a read-only store; a run that writes learns it from check_conditional_writes."""
        if not self.root.exists():
            raise StoreConfigError(f"local store root {self.uri!r} does not exist")
        if not self.root.is_dir():
            raise StoreConfigError(f"local store root {self.uri!r} is a file, not a directory")
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise StoreConfigError(f"local store root {self.uri!r} is not readable")

    def check_conditional_writes(self, prefix: str) -> None:
        """Whether this store can be written at all, then the probe (Store's).

        Conditional writes here hold by construction (flock, module docstring), so the
        probe can only fail for want of writing: a read-only root, a file where a
        directory of the key should be. That is named as it is, not taken for a store
        that ignores conditions.
        """
        key = f"{prefix}writable-{uuid.uuid4().hex}"
        try:
            self.put_bytes(key, b"", if_none_match=True)
            self.delete(key)
        except StoreConfigError:
            raise
        except StoreError as exc:
            raise StoreConfigError(f"local store {self.uri!r} cannot be written: {exc}") from None
        super().check_conditional_writes(prefix)

    def clock_offset(self, host_clock: Callable[[], float] = time.time) -> float:
        """0.0: every process using a local directory runs on the host that has it."""
        return 0.0

    def _real_root(self) -> str:
        real = os.path.realpath(self.root)
        if not os.path.isdir(real):
            raise StoreConfigError(f"local store root {self.uri!r} is missing or not a directory")
        return real

    def _path(self, key: str) -> str:
        """The file path of an object key; StoreError if the key is not a safe object key."""
        _validate_key(key)
        root = self._real_root()
        path = os.path.join(root, *key.split("/"))
        parent = os.path.realpath(os.path.dirname(path))
        if parent != root and not parent.startswith(root + os.sep):
            raise StoreError(f"key {key!r} resolves outside the store root")
        if os.path.islink(path):
            raise StoreError(f"key {key!r} is a symlink; the local store does not follow them")
        return path

    # ---------------------------------------------------------------- listing

    def list_prefixes(self, prefix: str) -> list[str]:
        dir_part, _, start = prefix.rpartition("/")
        found = []
        for name, is_dir, path in self._children(dir_part, start):
            if is_dir and _has_object(path):
                found.append(f"{dir_part}/{name}/" if dir_part else f"{name}/")
        return found

    def list_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        dir_part, _, start = prefix.rpartition("/")
        base = f"{dir_part}/" if dir_part else ""
        yield from self._walk(dir_part, base, start)

    def _walk(self, dir_key: str, base: str, start: str) -> Iterator[ObjectInfo]:
        for name, is_dir, path in self._children(dir_key, start):
            if is_dir:
                yield from self._walk(base + name, f"{base}{name}/", "")
            else:
                info = _file_info(base + name, path)
                if info is not None:
                    yield info

    def _children(self, dir_key: str, start: str) -> list[tuple[str, bool, str]]:
        """Entries of a directory whose names start with `start`, in S3 key order.

        A directory sorts as its name plus '/', which puts every key below it
        exactly where S3 would (e.g. 'a-b' < 'a/x' < 'a0').
        """
        directory = self._real_root()
        if dir_key:
            _validate_prefix_dir(dir_key)
            directory = os.path.join(directory, *dir_key.split("/"))
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise StoreError(f"cannot list {dir_key or '/'!r}: {exc.strerror}") from None
        out = []
        for entry in entries:
            if not _listable(entry.name) or not entry.name.startswith(start):
                continue
            if entry.is_symlink():
                continue
            is_dir = entry.is_dir(follow_symlinks=False)
            if is_dir or entry.is_file(follow_symlinks=False):
                out.append((entry.name, is_dir, entry.path))
        out.sort(key=lambda e: (e[0] + "/" if e[1] else e[0]).encode("utf-8"))
        return out

    # ------------------------------------------------------------------ reads

    def head(self, key: str) -> ObjectInfo | None:
        return _file_info(key, self._path(key), of_head=True)

    def get_bytes(self, key: str) -> tuple[bytes, str]:
        path = self._path(key)
        with self._open_object(key, path) as src:
            data = src.read()
        return data, hashlib.md5(data).hexdigest()

    def get_file(self, key: str, path: Path) -> ObjectInfo:
        src_path = self._path(key)
        with self._open_object(key, src_path) as src:
            size, etag = _atomic_copy(src, Path(path))
        return ObjectInfo(key, size, etag)

    def data_reader(self) -> DataReader:
        """In place (LocalReader): the merge reads the raw files where they lie.

        A subclass that overrides get_file or get_bytes (a wrapper, a test double
        injecting faults) changes how objects are read: it keeps that, through the
        default reader.
        """
        cls = type(self)
        if cls.get_file is not LocalStore.get_file or cls.get_bytes is not LocalStore.get_bytes:
            return super().data_reader()
        return LocalReader(self)

    @contextmanager
    def _open_object(self, key: str, path: str) -> Iterator[BinaryIO]:
        try:
            fh = open(path, "rb")  # noqa: SIM115 - closed below
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(f"key {key!r} not found in {self.uri}") from None
        except PermissionError as exc:
            raise _unreadable(key, exc) from None
        except OSError as exc:
            raise StoreError(f"cannot read key {key!r}: {exc.strerror}") from None
        with fh:
            yield fh

    # ----------------------------------------------------------------- writes

    def put_file(
        self,
        key: str,
        path: Path,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        target = self._path(key)
        try:
            src = open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise StoreError(f"cannot read local file {str(path)!r}: {exc.strerror}") from None
        with src:
            tmp, size, etag = self._write_tmp(key, target, lambda out: _copy(src, out))

        def precondition() -> None:
            self._check_condition(key, target, if_match, if_none_match)

        self._commit(key, target, tmp, precondition)
        return ObjectInfo(key, size, etag)

    def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
    ) -> str:
        target = self._path(key)
        tmp, _, etag = self._write_tmp(key, target, lambda out: _write_all(out, data))

        def precondition() -> None:
            self._check_condition(key, target, if_match, if_none_match)

        self._commit(key, target, tmp, precondition)
        return etag

    def _check_condition(
        self, key: str, target: str, if_match: str | None, if_none_match: bool
    ) -> None:
        """Runs under the directory lock, right before the replace."""
        if if_match is None and not if_none_match:
            return
        current = _file_info(key, target)
        if if_none_match and current is not None:
            raise PreconditionFailed(f"key {key!r} already exists (if_none_match)")
        if if_match is not None:
            if current is None:
                raise PreconditionFailed(f"key {key!r} does not exist (if_match)")
            if current.etag != normalize_etag(if_match):
                raise PreconditionFailed(f"key {key!r} changed since it was read (if_match)")

    def _write_tmp(
        self, key: str, target: str, fill: Callable[[BinaryIO], str]
    ) -> tuple[str, int, str]:
        """Write a temp file beside `target`; returns (tmp path, size, md5 hex)."""
        directory, name = os.path.split(target)
        for _ in range(_DIR_RACE_RETRIES):
            self._makedirs(key, directory)
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
                    _remember_etag(out.fileno(), etag)
            except BaseException as exc:
                _unlink_quietly(tmp)
                if isinstance(exc, OSError):
                    raise StoreError(f"cannot write key {key!r}: {exc.strerror}") from None
                raise
            return tmp, size, etag
        raise StoreError(f"cannot write key {key!r}: its directory keeps disappearing")

    def _makedirs(self, key: str, directory: str) -> None:
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
                    f"cannot write key {key!r}: {self._blocking_file(key)!r} is a file, "
                    "not a directory (an existing object)"
                ) from None
            except FileNotFoundError:
                self._real_root()  # StoreConfigError when the root itself is gone
                continue
            except OSError as exc:
                raise StoreError(f"cannot write key {key!r}: {exc.strerror}") from None
        raise StoreError(f"cannot write key {key!r}: its directory keeps disappearing")

    def _blocking_file(self, key: str) -> str:
        """The first parent of `key` that exists as something other than a directory."""
        root, parts = self._real_root(), key.split("/")[:-1]
        for n in range(1, len(parts) + 1):
            if not os.path.isdir(os.path.join(root, *parts[:n])):
                return "/".join(parts[:n])
        return "/".join(parts)

    def _commit(self, key: str, target: str, tmp: str, precondition: Callable[[], None]) -> None:
        """Check the precondition and replace the target, atomically under the dir lock."""
        directory = os.path.dirname(target)
        try:
            with _dir_lock(directory):
                precondition()
                os.replace(tmp, target)
                _fsync_dir(directory)
        except IsADirectoryError:
            raise StoreError(
                f"cannot write key {key!r}: other keys exist below it as a prefix"
            ) from None
        except OSError as exc:
            raise StoreError(f"cannot write key {key!r}: {exc.strerror}") from None
        finally:
            _unlink_quietly(tmp)

    def delete(self, key: str, *, if_match: str | None = None) -> None:
        """See Store.delete. With if_match the ETag check and the unlink are one step
        under the directory lock that conditional writes take, so a concurrent
        conditional write lands either before the check or after the unlink."""
        target = self._path(key)
        directory = os.path.dirname(target)
        try:
            with _dir_lock(directory):
                if if_match is not None:
                    self._check_condition(key, target, if_match, False)
                try:
                    os.unlink(target)
                except (FileNotFoundError, NotADirectoryError):
                    return
                except IsADirectoryError:
                    return  # a prefix, not an object: S3 has nothing to delete either
                _fsync_dir(directory)
                self._prune_dirs(directory)
        except (FileNotFoundError, NotADirectoryError):
            # the directory does not exist, so neither does the key
            if if_match is not None:
                raise PreconditionFailed(f"key {key!r} does not exist (if_match)") from None
            return
        except OSError as exc:
            raise StoreError(f"cannot delete key {key!r}: {exc.strerror}") from None

    def remove_stale_partials(self, max_age_s: float = 86400.0) -> int:
        """Delete temp files older than `max_age_s` left by killed writers; returns the count.

        Walks the whole tree: call it on the compact store, not on a huge raw lake.
        """
        cutoff = time.time() - max_age_s
        removed = 0
        for directory, _dirs, files in os.walk(self._real_root()):
            for name in files:
                if not name.startswith(TMP_MARK):
                    continue
                path = os.path.join(directory, name)
                try:
                    if os.lstat(path).st_mtime < cutoff:
                        os.unlink(path)
                        removed += 1
                except OSError:
                    continue
        return removed

    def _prune_dirs(self, directory: str) -> None:
        """Remove emptied directories up to the root, as S3 prefixes vanish with their keys.

        The caller holds the lock of `directory`; writers re-check after locking
        that their directory still exists (see _dir_lock).
        """
        root = self._real_root()
        while directory != root and directory.startswith(root + os.sep):
            try:
                os.rmdir(directory)
            except OSError:
                return
            directory = os.path.dirname(directory)


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
    store: LocalStore

    def __init__(self, store: LocalStore) -> None:
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
        _validate_key(key)
        dir_key, _, name = key.rpartition("/")
        root, directory = self._real_dir(key, dir_key)
        real = os.path.join(directory, name)
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW)
        except (FileNotFoundError, NotADirectoryError):
            self.store._real_root()  # StoreConfigError if the root itself is gone
            raise NotFound(f"key {key!r} not found in {self.store.uri}") from None
        except PermissionError as exc:
            raise _unreadable(key, exc) from None
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
            etag = _cached_etag(fd, st)
            if etag is None:
                with os.fdopen(os.dup(fd), "rb") as fh:
                    etag = md5_file(fh).hex()
                _remember_etag(fd, etag, st)
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


# --------------------------------------------------------------------- helpers


def _validate_key(key: str) -> None:
    if not isinstance(key, str) or not key:
        raise StoreError(f"invalid key {key!r}: empty")
    if key.startswith("/"):
        raise StoreError(f"invalid key {key!r}: absolute")
    if "\x00" in key or "\\" in key:
        raise StoreError(f"invalid key {key!r}: contains NUL or backslash")
    for segment in key.split("/"):
        if segment in ("", ".", ".."):
            raise StoreError(f"invalid key {key!r}: empty, '.' or '..' segment")
        if segment.startswith(TMP_MARK):
            raise StoreError(f"invalid key {key!r}: segment reserved for temp files")
        if len(segment.encode("utf-8", "surrogatepass")) > 255:
            raise StoreError(f"invalid key {key!r}: segment longer than 255 bytes")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise StoreError(f"invalid key {key!r}: not valid UTF-8") from None


def _validate_prefix_dir(dir_key: str) -> None:
    """The directory part of a listing prefix must itself be a safe key path."""
    try:
        _validate_key(dir_key)
    except StoreError:
        raise StoreError(f"invalid listing prefix {dir_key + '/'!r}") from None


def _listable(name: str) -> bool:
    if name.startswith(TMP_MARK):
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False  # not representable as an S3 key
    return True


def _has_object(directory: str) -> bool:
    """Whether a directory holds at least one listable object, at any depth."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return False
    for entry in entries:
        if not _listable(entry.name) or entry.is_symlink():
            continue
        if entry.is_file(follow_symlinks=False):
            return True
        if entry.is_dir(follow_symlinks=False) and _has_object(entry.path):
            return True
    return False


def _unreadable(key: str, exc: OSError) -> ObjectUnreadable:
    return ObjectUnreadable(f"cannot read key {key!r}: {exc.strerror}: the object cannot be "
                            "read with this user's permissions")


def _file_info(key: str, path: str, *, of_head: bool = False) -> ObjectInfo | None:
    """ObjectInfo of a file, its ETag from the xattr cache when still valid.

    A PermissionError is ObjectUnreadable for a HEAD of the key (`of_head`), as on
    S3; a plain StoreError in listings, which S3 answers without reading objects.
    """
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            etag = _cached_etag(fh.fileno(), st)
            if etag is None:
                etag = md5_file(fh).hex()
                _remember_etag(fh.fileno(), etag, st)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    except PermissionError as exc:
        if of_head:
            raise _unreadable(key, exc) from None
        raise StoreError(f"cannot read key {key!r}: {exc.strerror}") from None
    except OSError as exc:
        raise StoreError(f"cannot read key {key!r}: {exc.strerror}") from None
    return ObjectInfo(key, st.st_size, etag)


def _cached_etag(fd: int, st: os.stat_result) -> str | None:
    try:
        value = os.getxattr(fd, _XATTR).decode()
    except (OSError, AttributeError, UnicodeDecodeError):
        return None
    parts = value.split(" ")
    if len(parts) == 3 and parts[1] == str(st.st_size) and parts[2] == str(st.st_mtime_ns):
        return parts[0]
    return None


def _remember_etag(fd: int, etag: str, st: os.stat_result | None = None) -> None:
    """Cache the md5 with the size and mtime it is valid for; best effort."""
    st = st or os.fstat(fd)
    try:
        os.setxattr(fd, _XATTR, f"{etag} {st.st_size} {st.st_mtime_ns}".encode())
    except (OSError, AttributeError):
        pass


def _copy(src: BinaryIO, out: BinaryIO) -> str:
    digest = hashlib.md5()
    while chunk := src.read(CHUNK):
        digest.update(chunk)
        out.write(chunk)
    return digest.hexdigest()


def _write_all(out: BinaryIO, data: bytes) -> str:
    out.write(data)
    return hashlib.md5(data).hexdigest()


def _atomic_copy(src: BinaryIO, dest: Path) -> tuple[int, str]:
    """Copy an open object to a local path via a temp file and rename; (size, md5).

    No fsync: the destination is scratch space (a download for the merge), where
    a crash loses nothing; the rename alone keeps a partial copy from being seen.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / temp_name(dest.name)
    try:
        with open(tmp, "wb") as out:
            etag = _copy(src, out)
            size = out.tell()
        os.replace(tmp, dest)
    except OSError as exc:
        _unlink_quietly(str(tmp))
        raise StoreError(f"cannot write local file {str(dest)!r}: {exc.strerror}") from None
    except BaseException:
        _unlink_quietly(str(tmp))
        raise
    return size, etag


@contextmanager
def _dir_lock(directory: str) -> Iterator[None]:
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


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


__all__ = ["LocalStore"]
