"""The merge package's borders (compressor/merge/, docs/architecture.md).

The merge knows files and Arrow buffers only: it imports nothing of the store, the
CLI, the state, the leases, the job or the logging setup, so it can be read, tested
and benchmarked alone. Everything outside it goes through its face,
`compressor.merge`, and importing that face loads no more than the standard
library (a slice process must ask to die with its parent before pyarrow loads).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import compressor.merge as merge

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "compressor" / "merge"
#: Libraries that mean a store, a CLI or a logging setup.
FOREIGN = ("boto3", "botocore", "obstore", "argparse", "dotenv", "logging.config")


def _imports(path: Path) -> Iterator[tuple[str, list[str]]]:
    """(module, names) of every import in `path`, relative ones made absolute."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{module}" if module else base
            yield module, [alias.name for alias in node.names]


def _inside(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_merge_imports_only_itself_of_the_project():
    wrong = []
    for path in sorted(PACKAGE.glob("*.py")):
        for module, names in _imports(path):
            if _inside(module, "compressor"):
                ok = _inside(module, "compressor.merge") or names == ["__version__"]
            else:
                ok = not any(_inside(module, lib) for lib in FOREIGN)
            if not ok:
                wrong.append(f"{path.name}: {module} {names}")
    assert wrong == []


def test_the_merge_sets_up_no_logging():
    calls = [
        f"{path.name}:{node.lineno}"
        for path in sorted(PACKAGE.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute)
        and node.attr in {"basicConfig", "addHandler", "setLevel", "dictConfig"}
    ]
    assert calls == []


def test_callers_outside_use_the_face_only():
    """compressor/ and bench/ import `compressor.merge` and names of its face, never a
    module inside it (the tests may, to reach inside)."""
    sources = [*(REPO / "compressor").rglob("*.py"), *(REPO / "bench").rglob("*.py"),
               REPO / "run.py"]
    wrong = []
    for path in sorted(p for p in sources if PACKAGE not in p.parents):
        for module, names in _imports(path):
            if _inside(module, "compressor.merge") and (
                module != "compressor.merge" or set(names) - set(merge.__all__)
            ):
                wrong.append(f"{path.relative_to(REPO)}: {module} {names}")
    assert wrong == []


def test_every_face_name_resolves():
    for name in merge.__all__:
        assert getattr(merge, name) is not None, name


def test_importing_the_face_loads_the_standard_library_only():
    code = (
        "import json, sys; before = set(sys.modules); import compressor.merge; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    loaded = json.loads(out)
    assert "compressor.merge" in loaded
    foreign = [m for m in loaded if m.split(".")[0] not in sys.stdlib_module_names
               and m.split(".")[0] != "compressor"]
    assert foreign == []
