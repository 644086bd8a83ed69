"""The reader: what a consumer sees of the compact bucket while the runs work."""

from __future__ import annotations

import threading
from collections import defaultdict
from pathlib import Path

from bench.chaos.lake import Bucket
from compressor.layout import LOCKS_PREFIX, STATE_KEY
from compressor.lease import LeaseRecord
from compressor.meta import Meta, MetaError, Published, check_data_file
from compressor.state import StateCorruptError, parse_document
from compressor.storage.base import ObjectInfo

# --------------------------------------------------------------------------- the reader


class Reader:
    """Reads the compact bucket over and over while runs work, as a consumer would.

    Every visible meta.json is checked against the data.parquet beside it (see the package
    docstring); `inconsistent` gets one line per pair that disagreed while
    meta.json stayed the same across the read, `violations` anything else that is
    wrong (unparsable state or lock, reader errors).
    """

    def __init__(self, bucket: Bucket, scratch: Path) -> None:
        self.bucket = bucket
        self.scratch = scratch
        self.rounds = 0
        self.pairs = 0
        self.deep = 0
        self.raced = 0
        self.inconsistent: list[str] = []
        self.violations: list[str] = []
        #: meta.json key -> every ETag seen there (a skew trial's "published twice" check)
        self.meta_etags: dict[str, set[str]] = defaultdict(set)
        self._deep_done: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Reader:
        self.scratch.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._loop, name="reader", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.observe()  # and once more, at rest

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.observe()
            except Exception as exc:  # a reader error is a finding, not a crash of the bench
                self.violations.append(f"reader error: {type(exc).__name__}: {exc}")
            self._stop.wait(0.01)

    def observe(self) -> None:
        self.rounds += 1
        keys = self.bucket.keys()
        for key in keys:
            if key.endswith("/meta.json"):
                self._check_pair(key)
            elif key.startswith(LOCKS_PREFIX):
                self._check_lock(key)
        if STATE_KEY in keys:
            got = self.bucket.get(STATE_KEY)
            if got is not None:
                try:
                    parse_document(got[0])
                except StateCorruptError as exc:
                    self.violations.append(f"_state.json does not parse: {exc}")

    def _check_pair(self, meta_key: str) -> None:
        got = self.bucket.get(meta_key)
        if got is None:
            return
        body, meta_etag = got
        self.pairs += 1
        self.meta_etags[meta_key].add(meta_etag)
        try:
            meta = Meta.from_bytes(body, meta_key)
        except MetaError as exc:  # meta.json is written whole: no read race makes this
            self.inconsistent.append(f"{meta_key}: malformed: {exc.problem}")
            return
        data_key = meta_key[: -len("meta.json")] + "data.parquet"
        deep = meta.data_etag is None or meta_etag not in self._deep_done
        fetched: tuple[bytes, str] | None = None
        if deep:
            fetched = self.bucket.get(data_key)
            data = None if fetched is None else ObjectInfo(data_key, len(fetched[0]), fetched[1])
        else:
            data = self.bucket.head(data_key)
        problems = self.pair_problems(meta, meta_etag, data, fetched)
        if not problems:
            if deep:
                self._deep_done.add(meta_etag)
            return
        if self.bucket.etag(meta_key) != meta_etag:
            self.raced += 1  # replaced by a writer while we read: not one moment in time
            return
        self.inconsistent.append(f"{meta_key}: {'; '.join(problems)}")

    def pair_problems(self, meta: Meta, meta_etag: str, data: ObjectInfo | None,
                      fetched: tuple[bytes, str] | None) -> list[str]:
        """What is wrong between meta.json and the data.parquet read beside it."""
        if data is None:
            return ["meta.json visible without its data.parquet"]
        problems = []
        if meta.data_etag is not None:
            mismatch = Published(meta, meta_etag, data).mismatch()
            if mismatch is not None:
                problems.append(mismatch)
        if fetched is not None:
            self.deep += 1
            path = self.scratch / "reader-data.parquet"
            path.write_bytes(fetched[0])
            problems += check_data_file(meta, path)
        return problems

    def _check_lock(self, key: str) -> None:
        got = self.bucket.get(key)
        if got is None:
            return
        try:
            LeaseRecord.from_bytes(got[0])
        except ValueError as exc:
            self.violations.append(f"{key}: lock object does not parse: {exc}")


#: The name the bench had before the reader checked ETags.
Observer = Reader


