"""`--mode cleanup`: remove the compacted outputs and state entries of a range.

Plan, then execute: the plan lists every partition of the range (narrowed by the
usual filters) that has an output or a state entry, and is all a dry run (the
default) prints. With --apply each partition is removed under its lease,
meta.json first (readers stop seeing it at once, docs/guarantees.md "Guarantees under
failure"), then
data.parquet, each If-Match what was read under the lease. The raw store is never
touched: this module is never given it. last_compacted_date never moves forward;
when the range holds ready days it moves back to the day before the first one,
before anything is removed, and the partitions are marked `in_progress` meanwhile
(`StateStore.hold_back`): a catch-up running at the same time cannot move it over
them again (README "Readiness never lies").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from compressor.layout import PartitionId, format_day, parse_day
from compressor.lease import LeaseLost, LeaseManager
from compressor.meta import read_published
from compressor.state import StateStore
from compressor.storage.base import (
    NotFound,
    PreconditionFailed,
    Store,
    StoreConfigError,
    StoreError,
)
from compressor.text import one_line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CleanupPlan:
    """The partitions a cleanup removes (in day order) and the watermark it leaves."""

    partitions: list[PartitionId]
    last_compacted_date: str | None

    @property
    def first_day(self) -> str | None:
        return min((p.date for p in self.partitions), default=None)

    @property
    def watermark_after(self) -> str | None:
        lcd, first = self.last_compacted_date, self.first_day
        if lcd is None or first is None or lcd < first:
            return lcd
        return format_day(parse_day(first) - timedelta(days=1))

    def render(self, applied: bool = False) -> str:
        verb = "removed" if applied else "would remove"
        lines = [f"cleanup: {len(self.partitions)} partitions {verb} (meta.json, data.parquet, "
                 "state entry); the raw store is not touched"]
        lines += [f"  {verb} {p.state_key}" for p in self.partitions]
        if self.watermark_after != self.last_compacted_date:
            lines.append(f"last_compacted_date: {self.last_compacted_date} -> "
                         f"{self.watermark_after}")
        else:
            lines.append(f"last_compacted_date: {self.last_compacted_date or '-'} (unchanged)")
        if not applied:
            lines.append("dry run: nothing removed; add --apply to remove them")
        return "\n".join(lines)


@dataclass
class CleanupResult:
    removed: list[PartitionId] = field(default_factory=list)
    #: Partitions left alone, with why (held by another run, changed meanwhile, errors).
    problems: list[tuple[PartitionId, str]] = field(default_factory=list)
    last_compacted_date: str | None = None


def execute(plan: CleanupPlan, compact: Store, state: StateStore, leases: LeaseManager
            ) -> CleanupResult:
    """Mark the partitions and lower the watermark (one CAS write), remove each
    partition under its lease, then its state entries (one CAS write).

    The mark comes first so that no run's watermark passes a day while its outputs
    disappear (README "Readiness never lies")."""
    result = CleanupResult(last_compacted_date=plan.last_compacted_date)
    if plan.first_day is not None:
        state.hold_back([p.state_key for p in plan.partitions], plan.first_day)
    for pid in plan.partitions:
        problem = _remove(pid, compact, leases)
        if problem is None:
            result.removed.append(pid)
            log.info("%s: removed", pid.state_key)
        else:
            result.problems.append((pid, problem))
            log.error("%s: not removed: %s", pid.state_key, problem)
    if plan.first_day is not None:
        # the watermark moves back even if some removals failed: they are retried by
        # re-running the cleanup, and their day must not count as ready meanwhile
        result.last_compacted_date = state.forget(
            [p.state_key for p in result.removed], plan.first_day)
    return result


def _remove(pid: PartitionId, compact: Store, leases: LeaseManager) -> str | None:
    try:
        lease = leases.acquire(pid)
    except StoreConfigError:
        raise
    except StoreError as exc:
        return f"could not take its lease: {one_line(str(exc), 200)}"
    if lease is None:
        return "another run holds its lease; run the cleanup again later"
    try:
        now = read_published(compact, pid)
        lease.check_held()
        if now.meta_etag is not None:
            compact.delete(pid.meta_key, if_match=now.meta_etag)
        if now.data is not None:
            compact.delete(pid.data_key, if_match=now.data.etag)
        lease.check_held()
        for key in (pid.meta_key, pid.data_key):
            compact.remove_tombstone(key)
    except (PreconditionFailed, NotFound):
        return "its outputs changed while it was being removed; run the cleanup again"
    except StoreConfigError:
        raise
    except StoreError as exc:
        return one_line(str(exc), 300)
    except LeaseLost as exc:
        return one_line(str(exc), 300)
    finally:
        lease.release()
    return None
