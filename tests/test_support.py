"""tests/support/: the servers and the fault proxy that tests and benches share.

The benches import them outside pytest, so they may import neither pytest nor the
fixtures, and the environment they build for `run.py` must point at this checkout.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

from tests.support.s3server import cli_environment

REPO = Path(__file__).resolve().parents[1]
SUPPORT = REPO / "tests" / "support"


def test_support_imports_neither_pytest_nor_the_tests():
    wrong = []
    for path in sorted(SUPPORT.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            wrong += [f"{path.name}: {m}" for m in modules
                      if m.split(".")[0] == "pytest"
                      or (m.startswith("tests") and not m.startswith("tests.support"))]
    assert wrong == []


def test_the_run_environment_puts_this_checkout_first():
    env = cli_environment("http://127.0.0.1:1", "raw", "compact")
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)
