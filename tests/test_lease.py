"""Partition leases: exclusivity, takeover rules, renewal, fencing, safe release.

Run against both stores through the shared `store` fixture.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from compressor.layout import PartitionId
from compressor.lease import (
    LeaseLost,
    LeaseManager,
    LeaseOwner,
    LeaseRecord,
    _boot_id,
    pid_alive,
    pid_namespace,
    process_start_id,
)
from compressor.storage.base import Store, TransientStoreError
from compressor.text import parse_utc_iso
from tests.test_state import CountingStore, open_spec, store_spec

PID = PartitionId("binance", "trade", "btcusdt", "20240101")
T0 = 1_700_000_000.0
HOST = socket.gethostname()


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def manager(store: Store, clock: Clock | None = None, *, host: str = HOST, pid: int | None = None,
            run: str = "run", ttl: float = 600, start: str | None = None,
            boot: str | None = "this", pidns: str | None = "this", **kw: Any) -> LeaseManager:
    """A run's manager; its owner shares this process table unless boot/pidns say not."""
    owner = LeaseOwner(host, os.getpid() if pid is None else pid, run, start,
                       _boot_id() if boot == "this" else boot,
                       pid_namespace() if pidns == "this" else pidns)
    return LeaseManager(store, owner=owner, ttl_s=ttl, skew_s=30, auto_renew=False,
                        clock=clock or Clock(), **kw)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # exited and reaped
    return proc.pid


# ------------------------------------------------------------------ the lock object


def test_acquire_writes_lock_document(store: Store) -> None:
    lease = manager(store, run="r1").acquire(PID)
    assert lease is not None
    data, _ = store.get_bytes("compacted/locks/binance/trade/btcusdt/20240101.lock")
    doc = json.loads(data)
    assert doc["owner"] == {"host": HOST, "pid": os.getpid(), "run_id": "r1",
                            "boot": _boot_id(), "pidns": pid_namespace()}
    assert doc["token"] == lease.token and len(doc["token"]) >= 16
    assert doc["acquired_at"].endswith("Z") and doc["expires_at"].endswith("Z")
    assert parse_utc_iso(doc["expires_at"]) - parse_utc_iso(doc["acquired_at"]) == 600


def test_live_holder_is_not_taken(store: Store) -> None:
    first = manager(store, run="r1").acquire(PID)
    assert first is not None
    # same host, holder pid alive (this process), not expired
    assert manager(store, run="r2").acquire(PID) is None
    # another host, not expired: its pid means nothing here
    other = PartitionId("okx", "bbo", "ethusdt", "20240101")
    assert manager(store, host="elsewhere", pid=dead_pid(), run="x").acquire(other) is not None
    assert manager(store, run="r3").acquire(other) is None
    first.check_held()


def test_exclusive_between_threads(store: Store) -> None:
    parts = [PartitionId("bybit", "bbo", f"s{i}", "20240101") for i in range(6)]
    workers = 8
    barrier = threading.Barrier(workers)
    won: dict[int, list[str]] = {}

    def work(w: int) -> None:
        mgr = manager(store, run=f"t{w}")
        barrier.wait()
        won[w] = [p.symbol for p in parts if mgr.acquire(p) is not None]

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = sorted(s for symbols in won.values() for s in symbols)
    assert winners == sorted(p.symbol for p in parts)  # each exactly once


def _process_acquirer(spec: tuple[str, str, str], w: int, parts: list[PartitionId],
                      start: Any, done: Any, out: Any) -> None:
    mgr = LeaseManager(open_spec(spec), owner=LeaseOwner.current(f"p{w}"),
                       auto_renew=False)
    start.wait()
    got = [p.symbol for p in parts if mgr.acquire(p) is not None]
    out.put((w, got))
    done.wait()  # keep living (and holding) until every process has tried


@pytest.mark.parametrize("n", [2, 4])
def test_exclusive_between_processes(store: Store, n: int) -> None:
    parts = [PartitionId("okx", "trade", f"s{i}", "20240101") for i in range(8)]
    ctx = multiprocessing.get_context("spawn")
    start, done, out = ctx.Event(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_process_acquirer,
                         args=(store_spec(store), w, parts, start, done, out)) for w in range(n)]
    for p in procs:
        p.start()
    time.sleep(0.3)
    start.set()
    results = [out.get(timeout=60) for _ in range(n)]
    done.set()
    for p in procs:
        p.join(30)
    assert [p.exitcode for p in procs] == [0] * n
    winners = sorted(s for _, got in results for s in got)
    assert winners == sorted(p.symbol for p in parts)


# ------------------------------------------------------------------ takeover


def test_expired_lease_taken_over(store: Store) -> None:
    clock_a, clock_b = Clock(T0), Clock(T0)
    a = manager(store, clock_a, host="host-a", pid=1, run="a").acquire(PID)
    assert a is not None
    b_mgr = manager(store, clock_b, run="b")
    clock_b.t = T0 + 600 + 29  # past expires_at but within the skew allowance
    assert b_mgr.acquire(PID) is None
    clock_b.t = T0 + 600 + 31
    b = b_mgr.acquire(PID)
    assert b is not None and b.token != a.token
    doc = json.loads(store.get_bytes(PID.lock_key)[0])
    assert doc["owner"]["run_id"] == "b"


def test_dead_local_pid_taken_over_at_once(store: Store) -> None:
    gone = dead_pid()
    crashed = manager(store, pid=gone, run="crashed").acquire(PID)
    assert crashed is not None  # fresh lease, far from expiry
    taker = manager(store, run="next").acquire(PID)
    assert taker is not None
    assert json.loads(store.get_bytes(PID.lock_key)[0])["owner"]["run_id"] == "next"


@pytest.fixture
def live_child() -> Any:
    """A real process on this host that outlives the test's checks."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield child
    finally:
        child.kill()
        child.wait()


def test_reused_pid_taken_over_at_once(store: Store, live_child: Any) -> None:
    """The recorded process is gone and its pid now belongs to another (live) one:
    the start id differs, so the owner is dead."""
    real = process_start_id(live_child.pid)
    assert real is not None
    boot, _, ticks = real.rpartition(":")
    assert boot and int(ticks) > 0
    stale = manager(store, pid=live_child.pid, run="before-reuse", start=f"{boot}:1"
                    ).acquire(PID)
    assert stale is not None  # fresh, far from expiry, pid alive
    taker = manager(store, run="next").acquire(PID)
    assert taker is not None
    assert json.loads(store.get_bytes(PID.lock_key)[0])["owner"]["run_id"] == "next"
    # the same pid and start ticks before another boot: not the same process either
    other = PartitionId("okx", "trade", "btcusdt", "20240101")
    assert manager(store, pid=live_child.pid, run="last-boot", start=f"another-boot:{ticks}"
                   ).acquire(other) is not None
    assert manager(store, run="next").acquire(other) is not None


def test_live_process_with_its_start_id_is_not_taken(store: Store, live_child: Any) -> None:
    held = manager(store, pid=live_child.pid, run="child",
                   start=process_start_id(live_child.pid)).acquire(PID)
    assert held is not None
    assert manager(store, run="next").acquire(PID) is None
    held.check_held()


def test_lock_without_start_id_falls_back_to_the_pid(store: Store, live_child: Any) -> None:
    """An owner without a start id, in our process table: the pid alone decides."""
    held = manager(store, pid=live_child.pid, run="no-start").acquire(PID)
    assert held is not None
    assert manager(store, run="next").acquire(PID) is None
    other = PartitionId("okx", "trade", "btcusdt", "20240101")
    assert manager(store, pid=dead_pid(), run="no-start").acquire(other) is not None
    assert manager(store, run="next").acquire(other) is not None


def test_a_lock_of_an_older_version_is_judged_by_its_expiry_alone(store: Store) -> None:
    """Lock objects of earlier versions name no boot id and no PID namespace: a dead
    pid there may be a live run in another container with the same hostname."""
    doc = {"owner": {"host": HOST, "pid": dead_pid(), "run_id": "old-version"},
           "acquired_at": "2023-11-14T22:13:20Z", "expires_at": "2023-11-14T22:23:20Z",
           "token": "t" * 32}
    store.put_bytes(PID.lock_key, json.dumps(doc).encode())
    assert manager(store, run="next").acquire(PID) is None  # T0 = acquired_at: not expired
    assert manager(store, run="next").reap_stale() == []
    assert manager(store, Clock(T0 + 600 + 31), run="next").acquire(PID) is not None


@pytest.mark.parametrize("differs", ["pidns", "boot"])
def test_a_dead_pid_of_another_namespace_or_boot_is_not_taken_for_a_dead_run(
    store: Store, differs: str
) -> None:
    """Same hostname, another PID namespace (a container beside us) or another boot:
    its pid says nothing here. Its lease stays until it expires, and reap_stale keeps it."""
    kw = {differs: "elsewhere"}
    held = manager(store, pid=dead_pid(), run="container-a", **kw).acquire(PID)
    assert held is not None
    assert manager(store, run="container-b").acquire(PID) is None
    assert manager(store, run="container-b").reap_stale() == []
    held.check_held()
    for unknown in ("boot", "pidns"):  # either side cannot tell: nothing proven either
        assert manager(store, run="hidden", **{unknown: None}).acquire(PID) is None
    assert manager(store, Clock(T0 + 600 + 31), run="container-b").acquire(PID) is not None


def test_malformed_lock_taken_over(store: Store) -> None:
    store.put_bytes(PID.lock_key, b"not a lease")
    lease = manager(store).acquire(PID)
    assert lease is not None
    lease.check_held()


def test_takeover_race_has_one_winner(store: Store) -> None:
    manager(store, host="host-a", pid=1, run="old").acquire(PID)
    clock = Clock(T0 + 10_000)  # long expired for everyone below
    takers = [manager(store, clock, run=f"t{i}") for i in range(6)]
    barrier = threading.Barrier(len(takers))
    got: list[bool] = []

    def work(mgr: LeaseManager) -> None:
        barrier.wait()
        got.append(mgr.acquire(PID) is not None)

    threads = [threading.Thread(target=work, args=(m,)) for m in takers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == [False] * 5 + [True]


# ------------------------------------------------------------------ renewal


def test_renew_keeps_it(store: Store) -> None:
    clock_a, clock_b = Clock(T0), Clock(T0)
    a = manager(store, clock_a, host="host-a", pid=1, run="a").acquire(PID)
    assert a is not None
    clock_a.t = T0 + 500
    a.renew()
    assert a.expires_at == T0 + 1100
    clock_b.t = T0 + 700  # past the first expiry: without the renewal this would take it
    assert manager(store, clock_b, run="b").acquire(PID) is None
    clock_a.t = T0 + 700
    a.check_held()


def test_background_renewer_keeps_it(store: Store) -> None:
    owner = LeaseOwner("host-a", 1, "a")
    with LeaseManager(store, owner=owner, ttl_s=1.5, skew_s=0.2) as mgr:
        lease = mgr.acquire(PID)
        assert lease is not None
        first_expiry = lease.expires_at
        time.sleep(2.5)  # longer than the TTL
        assert lease.expires_at > first_expiry + 1
        other = LeaseManager(store, owner=LeaseOwner("host-b", 2, "b"), ttl_s=1.5, skew_s=0.2,
                             auto_renew=False)
        assert other.acquire(PID) is None
        lease.check_held()
    assert store.head(PID.lock_key) is None  # close() released it


def test_renew_due_only_when_due(store: Store) -> None:
    clock = Clock(T0)
    counting = CountingStore(store)
    mgr = manager(counting, clock)
    assert mgr.acquire(PID) is not None
    puts = counting.puts
    clock.t = T0 + 100
    assert mgr.renew_due() == 0 and counting.puts == puts
    clock.t = T0 + 201  # ttl/3 later
    assert mgr.renew_due() == 1 and counting.puts == puts + 1


def test_renew_failures_retry_then_lose(store: Store) -> None:
    clock = Clock(T0)
    counting = CountingStore(store)
    mgr = manager(counting, clock)
    lease = mgr.acquire(PID)
    assert lease is not None
    counting.fail_puts, counting.error = 10**6, TransientStoreError("503 SlowDown")
    clock.t = T0 + 300
    assert mgr.renew_due() == 0 and not lease.lost  # will retry
    clock.t = T0 + 580  # within skew of expiry and still not renewed
    mgr.renew_due()
    assert lease.lost
    with pytest.raises(LeaseLost):
        lease.check_held()


# ------------------------------------------------------------------ fencing and release


def test_fencing_detects_stolen_lease(store: Store) -> None:
    clock_a, clock_b = Clock(T0), Clock(T0 + 700)
    a = manager(store, clock_a, host="host-a", pid=1, run="a").acquire(PID)
    assert a is not None
    a.check_held()
    b = manager(store, clock_b, run="b").acquire(PID)  # a paused past its expiry
    assert b is not None
    with pytest.raises(LeaseLost, match="taken over by host .* run b"):
        a.check_held()
    assert a.lost
    with pytest.raises(LeaseLost):
        a.renew()
    assert a.release() is False
    b.check_held()  # a's release did not touch b's lease
    assert json.loads(store.get_bytes(PID.lock_key)[0])["token"] == b.token


def test_renew_after_steal_is_lost(store: Store) -> None:
    a = manager(store, Clock(T0), host="host-a", pid=1, run="a").acquire(PID)
    b = manager(store, Clock(T0 + 700), run="b").acquire(PID)
    assert a is not None and b is not None
    with pytest.raises(LeaseLost, match="taken over or deleted"):
        a.renew()
    b.check_held()


def test_fencing_refuses_expiring_lease(store: Store) -> None:
    clock = Clock(T0)
    lease = manager(store, clock).acquire(PID)
    assert lease is not None
    clock.t = T0 + 600 - 31
    lease.check_held()
    clock.t = T0 + 600 - 29  # within the skew margin: do not publish
    with pytest.raises(LeaseLost, match="expired"):
        lease.check_held()


def test_fencing_detects_deleted_lock(store: Store) -> None:
    lease = manager(store).acquire(PID)
    assert lease is not None
    store.delete(PID.lock_key)
    with pytest.raises(LeaseLost, match="deleted"):
        lease.check_held()


def test_release_deletes_own_and_frees(store: Store) -> None:
    mgr = manager(store, run="a")
    lease = mgr.acquire(PID)
    assert lease is not None and mgr.held() == [lease]
    assert lease.release() is True
    assert store.head(PID.lock_key) is None and mgr.held() == []
    assert lease.release() is False  # twice is harmless
    assert manager(store, run="b").acquire(PID) is not None


def test_release_keeps_someone_elses_lease(store: Store) -> None:
    a = manager(store, Clock(T0), host="host-a", pid=1, run="a").acquire(PID)
    assert a is not None
    b = manager(store, Clock(T0 + 700), run="b").acquire(PID)
    assert b is not None
    before = store.get_bytes(PID.lock_key)
    assert a.release() is False
    assert store.get_bytes(PID.lock_key) == before


def test_release_paused_past_expiry_never_deletes_the_next_holders_lock(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The holder pauses right before its release's delete (GC, SIGSTOP, a slow network)
    until its lease expires and the next run takes it over: the delete, If-Match the
    ETag of the holder's last write, must fail rather than remove the new lock."""
    a = manager(store, Clock(T0), host="host-a", pid=1, run="a").acquire(PID)
    assert a is not None
    b_mgr = manager(store, Clock(T0 + 700), run="b")
    taken: list[Any] = []
    real_delete = store.delete

    def paused_delete(key: str, *, if_match: str | None = None) -> None:
        if not taken:
            taken.append(b_mgr.acquire(PID))  # meanwhile, past a's expiry
        real_delete(key, if_match=if_match)

    monkeypatch.setattr(store, "delete", paused_delete)
    assert a.release() is False
    b = taken[0]
    assert b is not None
    b.check_held()
    assert json.loads(store.get_bytes(PID.lock_key)[0])["token"] == b.token
    assert a.release() is False  # and it does not try again


def test_context_manager_releases(store: Store) -> None:
    lease = manager(store).acquire(PID)
    assert lease is not None
    with lease:
        assert store.head(PID.lock_key) is not None
    assert store.head(PID.lock_key) is None


# ------------------------------------------------------------------ helpers


def test_pid_alive() -> None:
    assert pid_alive(os.getpid())
    assert not pid_alive(dead_pid())
    assert not pid_alive(0) and not pid_alive(-5)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 10
    while time.time() < deadline:  # exited but not reaped yet
        with open(f"/proc/{zombie.pid}/stat", "rb") as fh:
            if b") Z " in fh.read():
                break
        time.sleep(0.02)
    assert not pid_alive(zombie.pid)
    zombie.wait()


def test_current_owner_records_its_start_id(store: Store) -> None:
    owner = LeaseOwner.current("r1")
    assert owner.pid == os.getpid()
    assert owner.start is not None and owner.start == process_start_id(os.getpid())
    with open("/proc/sys/kernel/random/boot_id") as fh:
        assert owner.start.startswith(fh.read().strip() + ":")
    assert LeaseManager(store, owner=owner, auto_renew=False).acquire(PID) is not None
    doc = json.loads(store.get_bytes(PID.lock_key)[0])
    assert doc["owner"] == {"host": HOST, "pid": os.getpid(), "run_id": "r1",
                            "start": owner.start, "boot": _boot_id(),
                            "pidns": str(os.stat("/proc/self/ns/pid").st_ino)}
    assert process_start_id(dead_pid()) is None and process_start_id(0) is None


def test_lease_record_round_trip_and_rejects() -> None:
    rec = LeaseRecord(LeaseOwner("h", 3, "r"), T0, T0 + 600, "tok")
    assert LeaseRecord.from_bytes(rec.to_bytes()) == rec
    with_start = LeaseRecord(LeaseOwner("h", 3, "r", "boot:42", "b00t", "4026531836"),
                             T0, T0 + 600, "tok")
    assert LeaseRecord.from_bytes(with_start.to_bytes()) == with_start
    for bad in (b"[]", b"{}", b'{"owner": {"host": "h", "pid": "3", "run_id": "r"}}',
                rec.to_bytes().replace(b"tok", b""),
                with_start.to_bytes().replace(b'"boot:42"', b"42"),
                with_start.to_bytes().replace(b'"4026531836"', b"4026531836")):
        with pytest.raises(ValueError):
            LeaseRecord.from_bytes(bad)


def test_ttl_must_exceed_skew(store: Store) -> None:
    with pytest.raises(ValueError, match="ttl"):
        LeaseManager(store, ttl_s=50, skew_s=30)


# ------------------------------------------------------------------ leftovers of dead runs


def test_reap_stale_removes_only_locks_of_runs_that_are_gone(store: Store) -> None:
    pids = [PartitionId("binance", "trade", f"sym{n}usdt", "20240101") for n in range(5)]
    assert manager(store, pid=dead_pid(), run="killed").acquire(pids[0]) is not None
    assert manager(store, host="host-a", pid=1, run="old", clock=Clock(T0 - 700)
                   ).acquire(pids[1]) is not None  # expired 100 s ago (> skew)
    store.put_bytes(pids[2].lock_key, b"{torn")
    live_here = manager(store, run="alive").acquire(pids[3])
    live_there = manager(store, host="host-b", pid=1, run="remote").acquire(pids[4])
    assert live_here is not None and live_there is not None

    removed = manager(store, run="next").reap_stale()

    assert sorted(removed) == sorted(p.lock_key for p in pids[:3])
    left = sorted(o.key for o in store.list_objects("compacted/locks/"))
    assert left == sorted(p.lock_key for p in pids[3:])
    live_here.check_held()
    live_there.check_held()


def test_reap_stale_leaves_a_lock_replaced_after_its_takeover(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """reap_stale deletes If-Match its own takeover record: if another run replaced it
    in between, that run's lock stays."""
    assert manager(store, pid=dead_pid(), run="killed").acquire(PID) is not None
    theirs: list[str] = []
    real_delete = store.delete

    def racing_delete(key: str, *, if_match: str | None = None) -> None:
        if not theirs:
            theirs.append(store.put_bytes(key, b"another run's lock", if_match=if_match))
        real_delete(key, if_match=if_match)

    monkeypatch.setattr(store, "delete", racing_delete)
    assert manager(store, run="next").reap_stale() == []
    assert store.get_bytes(PID.lock_key) == (b"another run's lock", theirs[0])


def test_release_of_a_deleted_lock_is_false(store: Store) -> None:
    lease = manager(store).acquire(PID)
    assert lease is not None
    store.delete(PID.lock_key)  # e.g. an operator cleaning compacted/locks/
    assert lease.release() is False
    assert manager(store, run="b").acquire(PID) is not None
