"""The store's clock: the one time every run sharing a compact store agrees on.

Lease expiry (a lease is taken over `skew` seconds after its expires_at) and
the state's "the newer attempt wins" rule compare times written by different
runs, possibly on different hosts (docs/operations.md, "Two runs at once"). Each host's own
clock may be off by anything NTP failed to fix; the store's clock is common to
all of them. A StoreClock is the host's clock plus the offset measured once
against the store (Store.clock_offset: the S3 server's `Date` header, right
within about ±1 s; 0.0 for a local directory), so runs on hosts whose clocks
differ by minutes still agree within a second or two.

The offset is measured once per run: the host clock's later drift (seconds a
day at worst) stays within the leases' skew allowance.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from compressor.storage.base import Store

#: How far one Date-header measurement may be off (1 s resolution plus the round trip).
MEASUREMENT_NOISE_S = 2.0


class StoreClock:
    """A callable returning the store's time now (epoch seconds): host_clock() + offset."""

    def __init__(self, offset: float = 0.0, host_clock: Callable[[], float] = time.time) -> None:
        self.offset = offset
        self.host_clock = host_clock

    @classmethod
    def measure(cls, store: Store, host_clock: Callable[[], float] = time.time) -> StoreClock:
        """Measure the offset against `store` (one request on S3; StoreError as any).

        An offset within MEASUREMENT_NOISE_S is taken as 0: the host clock is then as
        good as the store's as far as one request can tell, and two runs on the same
        host (or on NTP-synced hosts) keep stamping on clocks that agree to the
        millisecond instead of on two measurements that may differ by a second. That
        matters for "the newer attempt wins" between a dead run and the run that took
        its lease over moments later (bench/chaos/ found it)."""
        offset = store.clock_offset(host_clock)
        return cls(0.0 if abs(offset) < MEASUREMENT_NOISE_S else offset, host_clock)

    @classmethod
    def fixed(cls, offset: float = 0.0) -> StoreClock:
        """A clock `offset` seconds off this host's, without asking any store (tests, dry runs)."""
        return cls(offset)

    def __call__(self) -> float:
        return self.host_clock() + self.offset

    def __repr__(self) -> str:
        return f"StoreClock(offset={self.offset:+.3f}s)"
