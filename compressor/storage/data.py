"""The data path: how the fetch reads raw objects' bytes for the merge.

The Store interface is the control plane (listing, conditional writes, state,
leases). Reading thousands of tiny raw objects per partition is a different
job, with its own costs: `Store.data_reader()` gives the cheapest way a store
has to do it.

- LocalStore: `LocalReader` (in local.py), which hands out the files where
  they lie (`locate`), no copy at all;
- S3Store: `ObstoreReader` (in s3data.py), GETs through obstore, which holds
  no GIL while it waits and copies and costs about a fifth of boto3's CPU per
  object (bench/README.md, "Fetch cost");
- any other store (and a subclass that overrides how objects are read): this
  module's `StoreReader`, through the store's own `get_file`, as before.

Errors are the Store's: NotFound, ObjectUnreadable, StoreError and its kinds,
their messages naming the key, never a credential.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from .base import ObjectInfo

if TYPE_CHECKING:
    from .base import Store


@dataclass(frozen=True)
class ObjectData:
    """One object's bytes, and its size and ETag as the store served them."""

    data: pa.Buffer
    info: ObjectInfo


@dataclass(frozen=True)
class LocalObject:
    """An object of a local store, as the file that holds it.

    `path` is real (no symlink in it) and under the store's root; `stamp` is
    (st_dev, st_ino, st_size, st_mtime_ns) of the file when `info` was taken:
    a file replaced or rewritten since then has another stamp.
    """

    path: Path
    info: ObjectInfo
    stamp: tuple[int, int, int, int]


class DataReader(ABC):
    """Reads whole objects of one store for the merge."""

    #: Whether `read` keeps the bytes in memory cheaply. False: the store's objects
    #: are best read as files (`read_to_file`), whatever the memory budget.
    in_memory = True

    @abstractmethod
    def read(self, key: str) -> ObjectData:
        """The object's bytes. Raises NotFound, ObjectUnreadable, StoreError."""

    @abstractmethod
    def read_to_file(self, key: str, path: Path) -> ObjectInfo:
        """Write the object to local `path` (atomically: a partial file is never seen there)."""


class InPlaceReader(DataReader):
    """A reader whose objects are local files the merge can read where they lie."""

    @abstractmethod
    def locate(self, key: str) -> LocalObject:
        """The object's file, its info (size, ETag) and stamp. Raises NotFound,
        ObjectUnreadable, StoreError (a key that is not a regular file under the root)."""

    @abstractmethod
    def changed(self, obj: LocalObject) -> bool:
        """Whether the file is no longer the one `locate` found (replaced, rewritten, gone)."""


class StoreReader(DataReader):
    """Through the Store interface: `get_file` (today's fetch), `get_bytes` for `read`.

    Objects are read as files (`in_memory` False): a store with no data path of its
    own is a wrapper or a test double, and its `get_file` is what it intercepts.
    """

    in_memory = False

    def __init__(self, store: Store) -> None:
        self.store = store

    def read(self, key: str) -> ObjectData:
        data, etag = self.store.get_bytes(key)
        return ObjectData(pa.py_buffer(data), ObjectInfo(key, len(data), etag))

    def read_to_file(self, key: str, path: Path) -> ObjectInfo:
        return self.store.get_file(key, path)
