"""The external tools some tests need (docs/architecture.md "Development"): chromium and
libfaketime.

Without them the README's test command still passes on a bare machine (those tests
skip with a one-line reason); with QLC_REQUIRE_TOOLS=1, as .ci/run sets, they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REQUIRE_TOOLS_ENV, require_tool

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_TEST = "tests/test_report.py::test_html_page_renders_the_heatmap_in_chromium"


def test_a_present_tool_is_its_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_TOOLS_ENV, "1")
    assert require_tool("sh") == shutil.which("sh")
    assert require_tool("libx", found="/some/libx.so") == "/some/libx.so"


def test_a_missing_tool_skips_with_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REQUIRE_TOOLS_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"^qlc-no-such-tool is not installed "
                       r"\(apt-get install -y qlc-pkg\)$"):
        require_tool("qlc-no-such-tool", package="qlc-pkg")


def test_a_missing_tool_fails_where_tools_are_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(REQUIRE_TOOLS_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="QLC_REQUIRE_TOOLS=1 requires it"):
        require_tool("libqlcmissing", found="", package="qlc-pkg")


def _pytest_without_path_tools(extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The chromium test in a fresh pytest whose PATH holds no chromium."""
    env = {k: v for k, v in os.environ.items() if k != REQUIRE_TOOLS_ENV}
    env.update(PATH=str(Path(sys.executable).parent), PYTHONPATH=str(REPO), **extra_env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           CHROMIUM_TEST], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize(("required", "outcome"), [("", "1 skipped"), ("1", "1 failed")])
def test_the_chromium_test_without_chromium(required: str, outcome: str) -> None:
    proc = _pytest_without_path_tools({REQUIRE_TOOLS_ENV: required} if required else {})
    out = proc.stdout
    assert outcome in out, out[-2000:]
    assert "chromium is not installed (apt-get install -y chromium)" in out, out[-2000:]
