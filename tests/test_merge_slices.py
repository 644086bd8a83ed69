"""Slice processes (compressor/merge/slices.py): the same bytes, the same errors, no orphans.

A merge with `processes` > 1 reads and sorts contiguous slices of its inputs in
processes of its own (docs/guarantees.md "How a run works"). Whatever it does, the output must be
byte-identical to the one-process merge, a bad input must be named exactly as the
one-process merge names it, and no slice process may outlive its merge: not on a
stop request, not when one dies, not when the job itself is killed with -9.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compressor.demo import PartitionSpec, write_partition
from compressor.discovery import list_partition
from compressor.job import Status, classify
from compressor.merge import (
    MergeAborted,
    MergeInputError,
    MergeResourceError,
    MergeSettings,
    SliceFailed,
    keep_spare_slices,
    merge_files,
    start_spare_slices,
)
from compressor.merge.slices import SPARES
from compressor.partition.compact import CompactSettings, compact_partition
from compressor.partition.fetch import TempSpaceError, check_room, no_space
from compressor.storage import LocalStore
from tests.conftest import put_partition
from tests.jobworld import slice_workers
from tests.test_merge import specs  # the merge tests' own partitions, so both see the same inputs

SMALL_GROUPS = 97


def run(paths: list[Path], out: Path, tmp: Path, **overrides: int):
    config = {"output_buffer_size": SMALL_GROUPS, "parallel_min_files": 2, **overrides}
    result = merge_files(paths, out, tmp_dir=tmp, settings=MergeSettings(**config))
    return out.read_bytes(), result


def my_slice_workers() -> list[int]:
    mine = []
    for pid in slice_workers():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[1]) == os.getpid():
            mine.append(pid)
    return mine


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=specs().filter(lambda spec: spec.files >= 2),  # at least two slices
       processes=st.sampled_from([2, 3, 5]), small_budget=st.booleans())
def test_slices_give_the_bytes_and_figures_of_one_process(
    spec: PartitionSpec, processes: int, small_budget: bool, tmp_path_factory
):
    tmp = tmp_path_factory.mktemp("slices")
    paths = write_partition(spec, tmp / "raw")
    one, one_result = run(paths, tmp / "one.parquet", tmp)
    budget = {"memory_budget": 1, "max_open_files": 2, "batch_size": 7} if small_budget else {}
    sliced, result = run(paths, tmp / "sliced.parquet", tmp, processes=processes, **budget)
    assert sliced == one
    for figure in ("rows", "input_rows", "input_files", "empty_files", "bytes_in",
                   "unsorted_rows_in_files", "ts_event_min", "ts_event_max", "row_groups"):
        assert getattr(result, figure) == getattr(one_result, figure), figure
    assert list(tmp.glob("merge-*")) == []
    assert my_slice_workers() == []


def test_ties_across_the_cut_go_to_the_earlier_slice(tmp_path):
    spec = PartitionSpec(files=40, rows_per_file=200, tie_fraction=0.9, layout="spans_day",
                         seed=11)
    paths = write_partition(spec, tmp_path / "raw")
    one, _ = run(paths, tmp_path / "one.parquet", tmp_path)
    sliced, result = run(paths, tmp_path / "sliced.parquet", tmp_path, processes=4)
    assert sliced == one
    assert result.passes >= 2 and result.spill_runs >= 4  # it really ran in slices


def test_slices_that_disagree_on_the_schema_fall_back_to_one_process(tmp_path, caplog):
    spec = PartitionSpec(files=30, rows_per_file=100, schema_drift=True, seed=9)
    paths = write_partition(spec, tmp_path / "raw")
    one, _ = run(paths, tmp_path / "one.parquet", tmp_path)
    with caplog.at_level(logging.INFO, logger="compressor.merge.writer"):
        sliced, result = run(paths, tmp_path / "sliced.parquet", tmp_path, processes=3)
    assert sliced == one
    assert "schemas differ: merging in one process" in caplog.text
    assert result.spill_runs == 0  # the one-process merge's figures
    assert my_slice_workers() == []


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_a_bad_file_in_any_slice_is_named_as_one_process_names_it(tmp_path, seed):
    spec = PartitionSpec(files=24, rows_per_file=80, corrupt=2, seed=seed)
    paths = write_partition(spec, tmp_path / "raw")
    with pytest.raises(MergeInputError) as one:
        run(paths, tmp_path / "one.parquet", tmp_path)
    with pytest.raises(MergeInputError) as sliced:
        run(paths, tmp_path / "sliced.parquet", tmp_path, processes=3)
    assert type(sliced.value) is type(one.value)
    assert (sliced.value.path, sliced.value.column, sliced.value.reason) == (
        one.value.path, one.value.column, one.value.reason)
    assert not (tmp_path / "sliced.parquet").exists()
    assert list(tmp_path.glob("merge-*")) == []
    assert my_slice_workers() == []


def test_an_input_that_cannot_be_opened_is_a_resource_error_naming_it(tmp_path):
    paths = write_partition(PartitionSpec(files=12, rows_per_file=50), tmp_path / "raw")
    paths[10].unlink()
    paths[10].mkdir()  # a directory where a file was listed: opening it fails, not its bytes
    with pytest.raises(MergeResourceError) as one:
        run(paths, tmp_path / "one.parquet", tmp_path)
    with pytest.raises(MergeResourceError) as sliced:
        run(paths, tmp_path / "sliced.parquet", tmp_path, processes=3)
    assert str(sliced.value) == str(one.value)
    assert sliced.value.path == str(paths[10]) and sliced.value.errno == one.value.errno


def test_a_stop_request_ends_the_slice_processes(tmp_path):
    paths = write_partition(PartitionSpec(files=60, rows_per_file=400), tmp_path / "raw")
    polls = iter(range(10**6))
    with pytest.raises(MergeAborted):
        merge_files(paths, tmp_path / "out.parquet", tmp_dir=tmp_path,
                    settings=MergeSettings(output_buffer_size=SMALL_GROUPS, processes=3,
                                           parallel_min_files=2),
                    should_stop=lambda: next(polls) > 5)
    assert not (tmp_path / "out.parquet").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]
    assert my_slice_workers() == []


def test_a_slice_process_that_dies_fails_the_merge_as_a_resource_error(tmp_path):
    paths = write_partition(PartitionSpec(files=300, rows_per_file=300, seed=2),
                            tmp_path / "raw", workers=4)
    killed: list[int] = []

    def kill_the_slices() -> None:  # as the OOM killer would: at once, without a word
        deadline = time.monotonic() + 20
        while not killed and time.monotonic() < deadline:
            killed.extend(my_slice_workers())
            time.sleep(0.005)
        for pid in killed:
            os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_the_slices)
    killer.start()
    try:
        with pytest.raises(MergeResourceError) as failed:
            merge_files(paths, tmp_path / "out.parquet", tmp_dir=tmp_path,
                        settings=MergeSettings(output_buffer_size=SMALL_GROUPS, processes=3,
                                               parallel_min_files=2))
    finally:
        killer.join()
    assert killed, "no slice process was running"
    assert "killed by signal 9" in str(failed.value)
    assert failed.value.path in set(map(str, paths))  # names the slice's first input
    assert not (tmp_path / "out.parquet").exists()
    assert list(tmp_path.glob("merge-*")) == []
    assert my_slice_workers() == []


def test_a_job_killed_with_sigkill_leaves_no_slice_process(tmp_path):
    write_partition(PartitionSpec(files=900, rows_per_file=300, seed=4),
                    tmp_path / "raw", workers=4)
    marker = f"QLC_TEST_{uuid.uuid4().hex}"
    script = (
        "import sys; from pathlib import Path; "
        "from compressor.merge import MergeSettings, merge_files; "
        "paths = sorted(Path(sys.argv[1]).rglob('*.parquet')); "
        "merge_files(paths, Path(sys.argv[2]), tmp_dir=Path(sys.argv[3]), "
        "settings=MergeSettings(processes=3, parallel_min_files=2, memory_budget=1))"
    )
    env = {**os.environ, marker: "1"}
    job = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "raw"),
                            str(tmp_path / "out.parquet"), str(tmp_path)], env=env)
    try:
        deadline = time.monotonic() + 30
        while len(slice_workers(marker)) < 2 and job.poll() is None:  # slices 2 and 3
            assert time.monotonic() < deadline, "the slice processes never started"
            time.sleep(0.02)
        assert job.poll() is None, "the merge ended before it could be killed"
        job.kill()
        job.wait()
        _assert_gone_within(marker, 10)
    finally:
        _kill_all(job, marker)


def test_a_full_temp_disk_in_a_slice_process_is_the_same_resource_error(tmp_path, tiny_disk):
    """A real 1 MiB tmpfs as the merge's temp dir. Disjoint files: this process's slice
    goes straight to the output (on a roomy disk) and writes nothing there, so it is the
    slice processes, writing their sorted rows, that fill it."""
    spec = PartitionSpec(files=12, rows_per_file=3000, layout="disjoint", seed=5)
    paths = write_partition(spec, tmp_path / "raw")
    with pytest.raises(OSError) as failed:
        merge_files(paths, tmp_path / "out.parquet", tmp_dir=tiny_disk,
                    settings=MergeSettings(processes=3, parallel_min_files=2))
    error = failed.value
    assert not isinstance(error, SliceFailed)
    assert error.errno == errno.ENOSPC and no_space(error)
    assert "\n" not in str(error) and "No space left on device" in str(error)
    status, key, line = classify(error)
    assert status is Status.FAILED and key is None
    assert line.startswith("OSError: [Errno 28] ") and "unexpected" not in line
    assert not (tmp_path / "out.parquet").exists()
    assert list(tiny_disk.iterdir()) == []
    assert my_slice_workers() == []

    # a partition a little smaller (its raw files fit the disk, so the job's check
    # before fetching lets it through), compacted from a local raw store (merged in
    # place): the job's one clear line, as in one process
    (tmp_path / "lake").mkdir()
    (tmp_path / "compact").mkdir()
    raw = LocalStore(tmp_path / "lake")
    put_partition(raw, replace(spec, rows_per_file=2400), tmp_path)
    partition = list_partition(raw, spec.partition)
    check_room(partition, tiny_disk)
    settings = CompactSettings(tmp_root=tiny_disk, merge=MergeSettings(
        processes=3, parallel_min_files=2))
    with pytest.raises(TempSpaceError) as compacted:
        compact_partition(partition, raw, LocalStore(tmp_path / "compact"), settings)
    status, _, line = classify(compacted.value)
    assert status is Status.FAILED and line.startswith("TempSpaceError: temp disk full: ")
    assert list(tiny_disk.iterdir()) == []
    assert my_slice_workers() == []


#: Holds a slice process at interpreter start-up (before compressor.merge.worker's first line)
#: until the file its environment names exists: the parent can then be killed while
#: its slices are still starting, every time.
_GATE = """
import os, time
gate = os.environ.get("QLC_TEST_SLICE_GATE")
with open("/proc/self/cmdline", "rb") as fh:
    if gate and b"compressor.merge.worker" in fh.read():
        while not os.path.exists(gate):
            time.sleep(0.01)
"""


def test_a_job_killed_while_its_slices_start_leaves_no_slice_process(tmp_path):
    """The parent dies before its slices could ask to die with it: each slice must see
    that it lost its parent and end, not read its inputs. Its last input is a FIFO that
    no one writes, so a slice that goes on blocks on it for ever."""
    paths = write_partition(PartitionSpec(files=6, rows_per_file=20, seed=3), tmp_path / "raw")
    fifo = tmp_path / "raw" / "zz-never-written.parquet"
    os.mkfifo(fifo)
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(_GATE)
    gate = tmp_path / "gate"
    marker = f"QLC_TEST_{uuid.uuid4().hex}"
    script = (
        "import sys; from pathlib import Path; "
        "from compressor.merge import MergeSettings, merge_files; "
        "merge_files([Path(p) for p in sys.argv[3:]], Path(sys.argv[1]), "
        "tmp_dir=Path(sys.argv[2]), settings=MergeSettings(processes=3, parallel_min_files=2))"
    )
    env = {**os.environ, marker: "1", "QLC_TEST_SLICE_GATE": str(gate),
           "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.getcwd()])}
    job = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "out.parquet"),
                            str(tmp_path), *map(str, paths), str(fifo)], env=env)
    try:
        deadline = time.monotonic() + 30
        while len(slice_workers(marker)) < 2:  # slices 2 and 3, held at start-up
            assert job.poll() is None, "the merge ended before it could be killed"
            assert time.monotonic() < deadline, "the slice processes never started"
            time.sleep(0.01)
        job.kill()
        job.wait()
        gate.touch()  # the slices start now, their parent already gone
        _assert_gone_within(marker, 20)
    finally:
        _kill_all(job, marker)


# ------------------------------------------------------------- spares started ahead


def _started(count: int) -> list[int]:
    """This process's slice processes, once `count` of them have exec'd (a child just
    forked still shows this process's command line)."""
    deadline = time.monotonic() + 20
    while len(found := my_slice_workers()) < count:
        assert time.monotonic() < deadline, f"only {found} of {count} started"
        time.sleep(0.01)
    return found


def test_spares_started_ahead_are_the_slice_processes_the_merge_uses(tmp_path):
    """docs/guarantees.md "How a run works": a run starts its slice processes before it
    plans; the merge takes them (none is left idle) and the bytes are a one-process
    merge's."""
    paths = write_partition(PartitionSpec(files=40, rows_per_file=200, seed=5), tmp_path / "raw")
    one, _ = run(paths, tmp_path / "one.parquet", tmp_path)
    start_spare_slices(2)
    try:
        spares = _started(2)
        assert SPARES.count() == 2
        sliced, result = run(paths, tmp_path / "sliced.parquet", tmp_path, processes=3)
        assert SPARES.count() == 0  # both taken
    finally:
        keep_spare_slices(0)
    assert sliced == one
    assert result.passes >= 2  # it really ran in slices
    assert set(spares).isdisjoint(my_slice_workers()) and my_slice_workers() == []


def test_a_spare_that_died_is_replaced_by_a_new_process(tmp_path):
    paths = write_partition(PartitionSpec(files=20, rows_per_file=100, seed=6), tmp_path / "raw")
    one, _ = run(paths, tmp_path / "one.parquet", tmp_path)
    start_spare_slices(1)
    try:
        (spare,) = _started(1)
        os.kill(spare, signal.SIGKILL)  # the OOM killer, while it waited for its job
        deadline = time.monotonic() + 10
        while spare in my_slice_workers():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        sliced, _ = run(paths, tmp_path / "sliced.parquet", tmp_path, processes=2)
    finally:
        keep_spare_slices(0)
    assert sliced == one
    assert my_slice_workers() == []


def test_spares_the_plan_does_not_need_are_stopped(tmp_path):
    start_spare_slices(3)
    try:
        assert len(_started(3)) == 3
        keep_spare_slices(1)
        assert SPARES.count() == 1 and len(my_slice_workers()) == 1
    finally:
        keep_spare_slices(0)
    assert SPARES.count() == 0 and my_slice_workers() == []


def test_spares_of_a_job_killed_with_sigkill_end_with_it(tmp_path):
    """A job killed while its spares wait for their jobs (during its plan) leaves none."""
    marker = f"QLC_TEST_{uuid.uuid4().hex}"
    script = ("import time; from compressor.merge import start_spare_slices; "
              "start_spare_slices(2); time.sleep(60)")
    job = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, marker: "1"})
    try:
        deadline = time.monotonic() + 30
        while len(slice_workers(marker)) < 2:
            assert job.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        job.kill()
        job.wait()
        _assert_gone_within(marker, 10)
    finally:
        _kill_all(job, marker)


def test_inputs_in_memory_stay_in_this_process(tmp_path):
    paths = write_partition(PartitionSpec(files=10, rows_per_file=50), tmp_path / "raw")
    one, _ = run(paths, tmp_path / "one.parquet", tmp_path)
    memory = [pa.py_buffer(p.read_bytes()) for p in paths]
    sliced, result = run(memory, tmp_path / "mem.parquet", tmp_path, processes=3)
    assert sliced == one
    assert result.passes == 1 and result.spill_runs == 0  # no slices: one process


def _assert_gone_within(marker: str, seconds: float) -> None:
    """Every slice process of `marker` ends within `seconds`."""
    deadline = time.monotonic() + seconds
    while slice_workers(marker):
        assert time.monotonic() < deadline, f"left running: {slice_workers(marker)}"
        time.sleep(0.05)


def _kill_all(job: subprocess.Popen[bytes], marker: str) -> None:
    job.kill()
    for pid in slice_workers(marker):
        os.kill(pid, signal.SIGKILL)


def test_a_slice_process_imports_this_checkout(tmp_path):
    """The child's PYTHONPATH starts with the directory that holds this `compressor`
    package: a job run from a checkout that is not installed (or beside another
    install) starts slices of its own code, not whatever `compressor` is installed."""
    from compressor.merge.slices import _child_env

    first = Path(_child_env()["PYTHONPATH"].split(os.pathsep)[0])
    assert (first / "compressor" / "merge" / "slices.py").resolve() == Path(
        sys.modules["compressor.merge.slices"].__file__).resolve()


def test_a_slice_process_ignores_a_compressor_in_the_working_directory(tmp_path, monkeypatch):
    paths = write_partition(PartitionSpec(files=12, rows_per_file=50, seed=8), tmp_path / "raw")
    one, _ = run(paths, tmp_path / "one.parquet", tmp_path)
    other = tmp_path / "cwd" / "compressor"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("raise ImportError('the wrong compressor')\n")
    monkeypatch.chdir(other.parent)
    sliced, result = run(paths, tmp_path / "sliced.parquet", tmp_path, processes=2)
    assert sliced == one and result.passes >= 2
