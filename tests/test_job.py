"""compressor/job.py's own logic, on local stores with generator data (no mocks).

- the state: failing writes never stop a run, and a run that ends early (an unusable
  store, an interrupt) still flushes what it did.

Faults are injected by tests.conftest.FlakyLocalStore, a real LocalStore that raises
chosen errors on chosen operations and keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from compressor.generator import PartitionSpec
from compressor.job import Job, Status
from compressor.layout import LOCKS_PREFIX, STATE_KEY, PartitionId
from compressor.lease import LeaseManager
from compressor.planning import Mode, PlanOptions, build_plan
from compressor.publish import CompactSettings
from compressor.state import StateStore
from compressor.storage import StoreConfigError, StoreError
from tests.conftest import FlakyLocalStore, put_partition

TODAY = date(2026, 11, 24)
DAYS = ("20261121", "20261122", "20261123")
BEFORE = "20261120"
PARTS = (("binance", "trade", "btcusdt"), ("okx", "bbo", "ethusdt"))


@dataclass
class Lake:
    raw: FlakyLocalStore
    compact: FlakyLocalStore
    settings: CompactSettings
    pids: dict[str, list[PartitionId]]  # day -> its partitions, in plan order

    def job(self, state: StateStore | None = None, **kw: Any) -> Job:
        """A catch-up run: over DAYS at first (last_compacted_date starts at BEFORE)."""
        state = state or StateStore(self.compact)
        plan = build_plan(self.raw, self.compact, state,
                          PlanOptions(mode=Mode.CATCH_UP, today=TODAY))
        leases = LeaseManager(self.compact, auto_renew=False)
        return Job(plan, self.raw, self.compact, state, self.settings, leases,
                   sleep=lambda s: None, **kw)

    def state_doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.compact.get_bytes(STATE_KEY)[0])
        return doc

    def statuses(self) -> dict[str, str]:
        return {k: v["status"] for k, v in self.state_doc()["partitions"].items()}

    def published(self) -> set[str]:
        return {pid.state_key for pids in self.pids.values() for pid in pids
                if self.compact.head(pid.meta_key) is not None}


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    for name in ("raw", "compact"):
        (tmp_path / name).mkdir()
    raw = FlakyLocalStore(tmp_path / "raw")
    pids: dict[str, list[PartitionId]] = {}
    for d, day in enumerate(DAYS):
        for n, (ex, st, sy) in enumerate(PARTS):
            spec = PartitionSpec(exchange=ex, stream=st, symbol=sy, date=day, files=3,
                                 rows_per_file=40, seed=10 * d + n)
            put_partition(raw, spec, tmp_path)
            pids.setdefault(day, []).append(spec.partition)
    compact = FlakyLocalStore(tmp_path / "compact")
    state = StateStore(compact)
    state.advance_last_compacted(BEFORE)
    state.flush()
    settings = CompactSettings(tmp_root=tmp_path / "work", download_workers=2)
    return Lake(raw, compact, settings, pids)


# --------------------------------------------------------------------------- state failures


def test_state_writes_refused_for_a_while_never_stop_the_run(lake: Lake) -> None:
    """A write failure that is not a transient one (any StoreError): queued, retried."""
    lake.compact.fail("put_bytes", STATE_KEY, StoreError("put _state.json: refused"), times=3)
    report = lake.job(StateStore(lake.compact, flush_every=1)).run()  # every record flushes
    assert report.count(Status.SUCCESS) == 6 and report.ok and report.state_error is None
    assert set(lake.statuses().values()) == {"success"} and len(lake.statuses()) == 6
    assert lake.state_doc()["last_compacted_date"] == DAYS[-1]


def test_state_writes_refused_to_the_end_are_reported(lake: Lake) -> None:
    lake.compact.fail("put_bytes", STATE_KEY, StoreError("put _state.json: refused"))
    report = lake.job(StateStore(lake.compact, flush_every=1)).run()
    assert report.count(Status.SUCCESS) == 6 and len(lake.published()) == 6
    assert not report.ok and report.state_error == "put _state.json: refused"
    assert report.render().splitlines()[-1] == "  state not saved: put _state.json: refused"
    assert lake.state_doc()["partitions"] == {}

    lake.compact.clear()  # the next run finds the outputs and rebuilds the state from them
    again = lake.job().run()
    assert again.count(Status.UP_TO_DATE) == 6 and again.ok
    assert set(lake.statuses().values()) == {"success"}
    assert lake.state_doc()["last_compacted_date"] == DAYS[-1]


def test_a_state_made_malformed_mid_run_is_reported_and_never_overwritten(lake: Lake) -> None:
    state = StateStore(lake.compact, flush_every=1)
    job = lake.job(state)  # plans with the valid state loaded
    lake.compact.put_bytes(STATE_KEY, b"{ half a state")  # someone else's bad write

    report = job.run()

    assert report.count(Status.SUCCESS) == 6 and len(lake.published()) == 6
    assert not report.ok and "malformed state" in (report.state_error or "")
    assert lake.compact.get_bytes(STATE_KEY)[0] == b"{ half a state"


@pytest.mark.parametrize("error", [StoreConfigError("get: AccessDenied (HTTP 403)"),
                                   KeyboardInterrupt()], ids=["unusable store", "interrupt"])
def test_a_run_that_ends_early_still_saves_what_it_did(lake: Lake, error: BaseException) -> None:
    first, second = lake.pids[DAYS[0]]
    lake.raw.fail("get_file", second.prefix, error)
    job = lake.job()  # default batching: nothing is written before the end of the day

    with pytest.raises(type(error)):
        job.run()

    statuses = lake.statuses()
    assert statuses == {first.state_key: "success", second.state_key: "in_progress"}
    assert lake.state_doc()["last_compacted_date"] == BEFORE
    assert list(lake.compact.list_objects(LOCKS_PREFIX)) == []
