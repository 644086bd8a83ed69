"""Partition leases: one run at a time works on a partition-day.

Two runs may cover the same day, on one host or on several (docs/operations.md, "Two runs
at once"); each partition is compacted under a lease (docs/guarantees.md, "How a run
works", step 2.1). A lease is the object
`compacted/locks/<ex>/<stream>/<sym>/<YYYYMMDD>.lock`::

    {"owner": {"host": str, "pid": int, "run_id": str, "start": str (optional),
               "boot": str (optional), "pidns": str (optional)},
     "acquired_at": ISO-8601 UTC "Z", "expires_at": ISO-8601 UTC "Z", "token": str}

- acquire: create it with If-None-Match. When it exists, take it over with If-Match
  on the ETag just read if it expired (now > expires_at + skew), if its owner
  provably shared our process table and that process is gone (a crashed run must
  not block the next one for a TTL), or if it is not a lease document at all.
  Otherwise someone holds it: None.
- renew: rewrite it with a later expires_at, If-Match on the ETag of our own last
  write. Losing that CAS means someone took it over: the lease is lost. A background
  thread renews every held lease every TTL/3.
- check_held (fencing, right before each publishing write): re-read the object; it
  must carry our token and still have more than `skew` seconds to live, else LeaseLost.
- release: delete it If-Match the ETag of our own last write, in one request. A
  holder paused past its expiry (GC, SIGSTOP, a slow network) may find the lock taken
  over by the next run: that delete then fails (PreconditionFailed) and the next
  holder's lock stays. A renew-then-delete would leave a window between the two.
  Leftovers of dead runs are removed the same way (reap_stale).

Owner identity: a run is its `run_id` (random per run). Whether its process is
still running can be asked of the kernel only when it ran in our process table:
same `host`, same `boot` (the kernel's boot id) AND same `pidns` (the inode of
/proc/self/ns/pid). Containers that share a hostname but not a PID namespace
(a Kubernetes pod's containers, `docker run --hostname`) differ in `pidns`; where
either side cannot read one of them (the systemd unit's ProcSubset=pid hides the
boot id, lock objects of earlier versions carry neither) nothing is proven,
and a lease is judged by its renewal alone: live until it expires.

Process identity: a pid alone is not one. After a crash (or a reboot) the same pid
may belong to an unrelated process, which would keep a dead run's lease "alive" for
a whole TTL. So the owner records `start`, "<boot_id>:<starttime>" on Linux (the
kernel's boot id and field 22 of /proc/<pid>/stat, the start time in clock ticks
since boot): its holder runs only while that pid is alive AND has the same start
id. Where /proc is missing start is absent, and lock objects written before it
existed parse the same: then the pid alone decides, in our process table.

Clocks: `clock` should be the store's clock (compressor.clock.StoreClock), so every
run compares expires_at against the same time whatever its host's clock says. What
is left between two runs (the offsets' ±1 s error, drift during a run) is covered
by `skew`: another run's lease counts as expired only `skew` seconds after its
expires_at, and its holder considers it lost `skew` seconds before.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from compressor.layout import LOCKS_PREFIX, PartitionId
from compressor.storage.base import NotFound, PreconditionFailed, Store, StoreError
from compressor.text import one_line, parse_utc_iso, utc_iso

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 600.0
DEFAULT_SKEW_S = 30.0
#: How many times acquire retries when the object vanishes between its create and read.
_ACQUIRE_ROUNDS = 5


class LeaseLost(Exception):
    """We no longer hold the lease: taken over, deleted or expired. Do not publish."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: lease lost: {reason}")


@dataclass(frozen=True)
class LeaseOwner:
    """Who holds a lease (module docstring). `start`: see process_start_id; `boot`,
    `pidns`: the kernel boot id and PID namespace inode (each None where unknown)."""

    host: str
    pid: int
    run_id: str
    start: str | None = None
    boot: str | None = None
    pidns: str | None = None

    @classmethod
    def current(cls, run_id: str | None = None) -> LeaseOwner:
        pid = os.getpid()
        return cls(socket.gethostname(), pid, run_id or uuid.uuid4().hex, process_start_id(pid),
                   _boot_id(), pid_namespace())

    def shares_process_table(self, other: LeaseOwner) -> bool:
        """True only when `other` provably ran in our process table: same host, and the
        same known boot id and PID namespace. Its pid then names its process here."""
        return (other.host == self.host and self.boot is not None and self.pidns is not None
                and other.boot == self.boot and other.pidns == self.pidns)

    def describe(self) -> str:
        return f"host {self.host} pid {self.pid} run {self.run_id}"


@dataclass(frozen=True)
class LeaseRecord:
    """The content of a lock object; times are epoch seconds."""

    owner: LeaseOwner
    acquired_at: float
    expires_at: float
    token: str

    def to_bytes(self) -> bytes:
        owner: dict[str, Any] = {"host": self.owner.host, "pid": self.owner.pid,
                                 "run_id": self.owner.run_id}
        for name in ("start", "boot", "pidns"):
            value = getattr(self.owner, name)
            if value is not None:
                owner[name] = value
        doc = {
            "owner": owner,
            "acquired_at": utc_iso(self.acquired_at),
            "expires_at": utc_iso(self.expires_at),
            "token": self.token,
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> LeaseRecord:
        """Parse a lock object; ValueError naming what is wrong."""
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"not JSON ({one_line(str(exc), 120)})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("owner"), dict):
            raise ValueError("expected an object with an owner object")
        owner = doc["owner"]
        host, pid, run_id = owner.get("host"), owner.get("pid"), owner.get("run_id")
        if not isinstance(host, str) or not isinstance(run_id, str):
            raise ValueError("owner.host and owner.run_id must be strings")
        if not isinstance(pid, int) or isinstance(pid, bool):
            raise ValueError(f"owner.pid: expected an integer, got {pid!r}")
        for name in ("start", "boot", "pidns"):  # absent in lock objects of older versions
            if owner.get(name) is not None and not isinstance(owner[name], str):
                raise ValueError(f"owner.{name}: expected a string, got {owner[name]!r}")
        token = doc.get("token")
        if not isinstance(token, str) or not token:
            raise ValueError("token: expected a non-empty string")
        return cls(
            owner=LeaseOwner(host, pid, run_id, owner.get("start"), owner.get("boot"),
                             owner.get("pidns")),
            acquired_at=_time_field(doc, "acquired_at"),
            expires_at=_time_field(doc, "expires_at"),
            token=token,
        )


def _time_field(doc: dict[str, Any], name: str) -> float:
    try:
        return parse_utc_iso(doc.get(name))
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists on this host and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return True
    state = stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3]
    return state not in (b"Z", b"X")


@functools.cache
def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


@functools.cache
def pid_namespace() -> str | None:
    """The inode of this process's PID namespace (`/proc/self/ns/pid`), None if hidden."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return None


def process_start_id(pid: int) -> str | None:
    """'<boot_id>:<starttime>' of a process on this host, None where /proc can't tell.

    starttime is field 22 of /proc/<pid>/stat: clock ticks after boot at which the
    process started. With the boot id, no other process (even after a reboot) has the
    same pair, so it tells a pid reused by another process from the one recorded.
    Where the boot id is hidden (the service's `ProcSubset=pid` hides /proc/sys), the
    boot part is `-`: a reused pid whose new process started at the very same tick
    after another boot is the only case it then misses.
    """
    if pid <= 0:
        return None
    boot = _boot_id() or "-"
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')': split
    # after its last ')'. The rest starts with field 3, so field 22 is the 20th.
    fields = stat[stat.rfind(b")") + 1 :].split()
    try:
        return f"{boot}:{int(fields[19])}"
    except (IndexError, ValueError):
        return None


class Lease:
    """A lease this process holds on one partition. Made by LeaseManager.acquire."""

    def __init__(self, manager: LeaseManager, key: str, record: LeaseRecord, etag: str) -> None:
        self.manager = manager
        self.key = key
        self._record = record
        self._etag = etag
        self._lock = threading.Lock()
        self._lost_reason: str | None = None
        self._released = False
        self.last_renewed = manager.clock()

    @property
    def token(self) -> str:
        return self._record.token

    @property
    def expires_at(self) -> float:
        return self._record.expires_at

    @property
    def lost(self) -> bool:
        return self._lost_reason is not None

    def _mark_lost(self, reason: str) -> LeaseLost:
        if self._lost_reason is None:
            self._lost_reason = reason
            log.warning("%s: lease lost: %s", self.key, reason)
            self.manager._forget(self)
        return LeaseLost(self.key, self._lost_reason)

    def renew(self) -> None:
        """Push expires_at a TTL away by CAS on our last ETag; LeaseLost if we lost it."""
        with self._lock:
            self._renew_locked()

    def _renew_locked(self) -> None:
        if self._lost_reason is not None:
            raise LeaseLost(self.key, self._lost_reason)
        if self._released:
            raise LeaseLost(self.key, "already released")
        now = self.manager.clock()
        record = replace(self._record, expires_at=now + self.manager.ttl_s)
        try:
            etag = self.manager.store.put_bytes(self.key, record.to_bytes(), if_match=self._etag)
        except (PreconditionFailed, NotFound):
            raise self._mark_lost("the lock object changed: taken over or deleted") from None
        self._record, self._etag, self.last_renewed = record, etag, now

    def check_held(self) -> None:
        """Fencing: re-read the lock; raise LeaseLost unless it is ours and not expiring."""
        with self._lock:
            if self._lost_reason is not None or self._released:
                raise LeaseLost(self.key, self._lost_reason or "already released")
            try:
                data, _ = self.manager.store.get_bytes(self.key)
            except NotFound:
                raise self._mark_lost("the lock object was deleted") from None
            try:
                current = LeaseRecord.from_bytes(data)
            except ValueError as exc:
                raise self._mark_lost(f"the lock object is malformed: {exc}") from None
            if current.token != self.token:
                raise self._mark_lost(f"taken over by {current.owner.describe()}")
            if self.manager.clock() > current.expires_at - self.manager.skew_s:
                raise self._mark_lost(f"expired at {utc_iso(current.expires_at)}")

    def release(self) -> bool:
        """Delete the lock if it is still ours. False when it was not (nothing deleted).

        One delete If-Match the ETag of our last write (module docstring): when the
        lock changed since, someone else holds it now and it is left alone. Store
        errors are logged, not raised: an unreleased lease expires by itself.
        """
        with self._lock:
            if self._released or self._lost_reason is not None:
                return False
            try:
                self.manager.store.delete(self.key, if_match=self._etag)
            except PreconditionFailed:
                log.warning("%s: lease was taken over or deleted before its release; "
                            "left the lock alone", self.key)
                return False
            except StoreError as exc:
                log.warning("%s: could not release lease (%s); it expires by itself",
                            self.key, one_line(str(exc), 200))
                return False
            finally:
                self._released = True
                self.manager._forget(self)
            return True

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class LeaseManager:
    """Acquires partition leases for one run and renews them in one background thread."""

    def __init__(
        self,
        store: Store,
        *,
        owner: LeaseOwner | None = None,
        ttl_s: float = DEFAULT_TTL_S,
        skew_s: float = DEFAULT_SKEW_S,
        auto_renew: bool = True,
        clock: Callable[[], float] = time.time,
        is_alive: Callable[[int], bool] = pid_alive,
    ) -> None:
        if ttl_s <= 2 * skew_s:
            raise ValueError(f"lease ttl {ttl_s}s must exceed twice the clock skew {skew_s}s")
        self.store = store
        self.owner = owner or LeaseOwner.current()
        self.ttl_s = ttl_s
        self.skew_s = skew_s
        self.auto_renew = auto_renew
        self.clock = clock
        self.is_alive = is_alive
        self._held: dict[str, Lease] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- acquiring -----------------------------------------------------------------

    def acquire(self, partition: PartitionId) -> Lease | None:
        """The partition's lease, or None when another live run holds it."""
        key = partition.lock_key
        for _ in range(_ACQUIRE_ROUNDS):
            record = self._new_record()
            try:
                etag = self.store.put_bytes(key, record.to_bytes(), if_none_match=True)
                return self._hold(partition, record, etag)
            except PreconditionFailed:
                pass
            try:
                data, etag = self.store.get_bytes(key)
            except NotFound:
                continue  # released between our create and our read: try again
            reason = self._takeover_reason(data)
            if reason is None:
                return None
            try:
                new_etag = self.store.put_bytes(key, record.to_bytes(), if_match=etag)
            except PreconditionFailed:
                return None  # renewed or taken over by someone else meanwhile
            except NotFound:
                continue
            log.info("%s: took over lease: %s", key, reason)
            return self._hold(partition, record, new_etag)
        return None

    def reap_stale(self) -> list[str]:
        """Delete lock objects left by runs that are gone; returns their keys.

        A run killed after it published a partition (or while it held a lease on one
        that a later run finds up to date) leaves a lock no run will lease again, so it
        would stay in compacted/locks/ for good. Every lock that acquire would take over
        (expired, dead process on this host, malformed) is taken over by CAS, so a
        holder that renewed meanwhile keeps it, then deleted If-Match the takeover's
        ETag, so a lock replaced in between is not deleted either.
        """
        removed = []
        for info in self.store.list_objects(LOCKS_PREFIX):
            try:
                data, etag = self.store.get_bytes(info.key)
            except NotFound:
                continue
            reason = self._takeover_reason(data)
            if reason is None:
                continue
            try:
                ours = self.store.put_bytes(info.key, self._new_record().to_bytes(),
                                            if_match=etag)
            except (PreconditionFailed, NotFound):
                continue  # renewed, taken or released meanwhile: not ours to remove
            try:
                self.store.delete(info.key, if_match=ours)
            except PreconditionFailed:
                continue  # replaced since our takeover: whoever did holds it now
            log.info("%s: removed a lease left behind: %s", info.key, reason)
            removed.append(info.key)
        return removed

    def _new_record(self) -> LeaseRecord:
        now = self.clock()
        return LeaseRecord(self.owner, now, now + self.ttl_s, uuid.uuid4().hex)

    def _takeover_reason(self, data: bytes) -> str | None:
        """Why the existing lock may be taken over, or None when its holder is alive."""
        try:
            current = LeaseRecord.from_bytes(data)
        except ValueError as exc:
            return f"the lock object is malformed ({exc})"
        now = self.clock()
        if now > current.expires_at + self.skew_s:
            return f"{current.owner.describe()} let it expire at {utc_iso(current.expires_at)}"
        owner = current.owner
        if self.owner.shares_process_table(owner):
            if not self.is_alive(owner.pid):
                return f"{owner.describe()} is no longer running on this host"
            if owner.start is not None:
                now_start = process_start_id(owner.pid)
                if now_start is not None and now_start != owner.start:
                    return (f"{owner.describe()} is no longer running on this host "
                            "(its pid now belongs to another process)")
        return None

    def worth_waiting(self, partition: PartitionId) -> bool:
        """Whether a run that found the partition busy should wait and try again.

        True when the lock is gone (just released), malformed or expired (acquire takes
        it over), or its holder runs on this host (a live one finishes or dies soon; a
        dead one is taken over at once when it provably shared our process table, else
        when its lease expires). False for a live lease of another host: we cannot see
        that run, so it is left to it.
        """
        try:
            data, _ = self.store.get_bytes(partition.lock_key)
        except NotFound:
            return True
        if self._takeover_reason(data) is not None:
            return True
        return LeaseRecord.from_bytes(data).owner.host == self.owner.host

    def _hold(self, partition: PartitionId, record: LeaseRecord, etag: str) -> Lease:
        lease = Lease(self, partition.lock_key, record, etag)
        with self._lock:
            self._held[lease.key] = lease
            if self.auto_renew and self._thread is None:
                self._thread = threading.Thread(
                    target=self._renew_loop, name="lease-renewer", daemon=True
                )
                self._thread.start()
        return lease

    def _forget(self, lease: Lease) -> None:
        with self._lock:
            if self._held.get(lease.key) is lease:
                del self._held[lease.key]

    def held(self) -> list[Lease]:
        with self._lock:
            return list(self._held.values())

    # -- renewing ------------------------------------------------------------------

    @property
    def renew_interval_s(self) -> float:
        return self.ttl_s / 3

    def renew_due(self) -> int:
        """Renew every held lease whose last renewal is a renew interval old; returns count.

        A lease whose renewal failed on a store error is retried on the next call; one
        that could not be renewed before it would expire is marked lost.
        """
        renewed = 0
        now = self.clock()
        for lease in self.held():
            if now - lease.last_renewed < self.renew_interval_s:
                continue
            try:
                lease.renew()
                renewed += 1
            except LeaseLost:
                pass
            except StoreError as exc:
                self._renew_failed(lease, exc)
        return renewed

    def _renew_failed(self, lease: Lease, exc: StoreError) -> None:
        log.warning("%s: lease renewal failed (%s); retrying", lease.key, one_line(str(exc), 200))
        if self.clock() > lease.expires_at - self.skew_s:
            with lease._lock:
                lease._mark_lost("could not renew it before it expired")

    def _renew_loop(self) -> None:
        tick = max(0.05, self.renew_interval_s / 6)
        while not self._stop.wait(tick):
            try:
                self.renew_due()
            except Exception:  # keep renewing the others whatever happens
                log.exception("lease renewer")

    def close(self) -> None:
        """Stop the renewer and release every lease still held."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5)
        for lease in self.held():
            lease.release()

    def __enter__(self) -> LeaseManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
