"""The command's entry point (compressor/launch.py): spare slice processes are started
before the job's imports for a command that may merge, and stopped as soon as the
command line shows it will not (docs/guarantees.md "How a run works")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from compressor import cli, launch
from compressor.merge.slices import SPARES, keep_spare_slices

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """What launch asked to start; the CLI itself is not run."""
    counts: list[int] = []
    monkeypatch.setattr(launch, "start_spare_slices", counts.append)
    monkeypatch.setattr(cli, "main", lambda argv: 0)
    return counts


@pytest.mark.parametrize("argv", [["--help"], ["--dry-run"], ["--quality-report", "--days", "3"],
                                  ["--repair-state"], ["--version"]])
def test_no_spares_for_a_command_that_cannot_merge(started: list[int], argv: list[str]) -> None:
    assert launch.main(argv) == 0
    assert started == []


@pytest.mark.parametrize("argv", [[], ["--mode", "daily"], ["--mode", "backfill",
                                                             "--date-from", "20261124"]])
def test_spares_for_a_command_that_may_merge(
    started: list[int], argv: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MERGE_SPARE_SLICES", raising=False)  # the default, not the suite's 0
    assert launch.main(argv) == 0
    assert started == [min(3, (os.cpu_count() or 1) - 1)]


@pytest.mark.parametrize(("value", "want"), [("0", 0), ("1", 1), ("x", 0), ("9", 0)])
def test_merge_spare_slices_bounds_them(
    started: list[int], monkeypatch: pytest.MonkeyPatch, value: str, want: int
) -> None:
    """0..3 is the most spares; a bad value starts none (the CLI then exits 2 on it)."""
    monkeypatch.setenv("MERGE_SPARE_SLICES", value)
    assert launch.main([]) == 0
    assert started == [min(want, max(0, (os.cpu_count() or 1) - 1))]


def test_a_bad_merge_spare_slices_is_a_usage_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MERGE_SPARE_SLICES", "many")
    (tmp_path / "raw" / "exchange=binance").mkdir(parents=True)
    code = cli.main(["--raw", str(tmp_path / "raw"), "--compact", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2
    assert "error: MERGE_SPARE_SLICES: expected 0 to 3, got 'many'" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("mode", ["verify", "cleanup"])
def test_a_mode_that_does_not_merge_stops_the_spares_before_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    seen: list[int] = []
    monkeypatch.setattr(cli, mode, lambda *args: seen.append(SPARES.count()) or 0)
    SPARES.start(1)
    try:
        (tmp_path / "raw" / "exchange=binance").mkdir(parents=True)
        (tmp_path / "compact").mkdir()
        code = cli.main(["--mode", mode, "--raw", str(tmp_path / "raw"),
                         "--compact", str(tmp_path / "compact"), "--date-from", "20261124"])
    finally:
        keep_spare_slices(0)
    assert code == 0 and seen == [0]


def test_the_console_script_and_run_py_go_through_launch() -> None:
    """Both entry points start with compressor.launch, which imports no pyarrow before
    it has started the spares."""
    assert "from compressor.launch import main" in (ROOT / "run.py").read_text()
    assert 'quantlab-compact = "compressor.launch:main"' in (ROOT / "pyproject.toml").read_text()
    code = ("import sys, compressor.launch; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('pyarrow', 'numpy', 'boto3', 'obstore')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"
