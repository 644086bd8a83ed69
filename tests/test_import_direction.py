"""Imports point down: the arrows the layout promises, read from the source itself.

Every import counts, also one made inside a function or only for the type checker
(`if TYPE_CHECKING:`): either is an arrow a reader has to follow, and a circle of
them means neither module can be understood without the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _module_path(name: str) -> Path:
    path = ROOT.joinpath(*name.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imports_of(name: str) -> set[str]:
    """Every compressor module `name` imports, anywhere in its file (relative ones
    resolved, `from package import module` counted as the module)."""
    path = _module_path(name)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*parts, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names
                         if _module_path(f"{module}.{alias.name}").exists())
    return {m for m in found if m.startswith("compressor")}


def _reaches(name: str, target: str) -> bool:
    return any(m == target or m.startswith(target + ".") for m in imports_of(name))


@pytest.mark.parametrize("module", ["compressor.planning", "compressor.state",
                                    "compressor.state.document", "compressor.state.merge",
                                    "compressor.state.store"])
def test_planning_and_state_import_nothing_from_quality(module: str) -> None:
    """The day label and its rules version sit below both (compressor.labels)."""
    assert not _reaches(module, "compressor.quality"), sorted(imports_of(module))


def test_day_labels_import_nothing_of_the_project() -> None:
    assert imports_of("compressor.labels") == set()


def test_storage_base_imports_no_other_store_module() -> None:
    """The Store interface and its data path are the bottom of the storage package."""
    assert imports_of("compressor.storage.base") == set()


def test_s3_data_path_does_not_import_the_s3_store() -> None:
    """s3.py builds its data path (s3data.py); the shared boto3 session that the data
    path and the store's clients (s3connect.py) use is below them (s3session.py)."""
    assert not _reaches("compressor.storage.s3data", "compressor.storage.s3")
    assert "compressor.storage.s3session" in imports_of("compressor.storage.s3data")
    assert "compressor.storage.s3session" in imports_of("compressor.storage.s3connect")
    assert imports_of("compressor.storage.s3session") == set()


@pytest.mark.parametrize(("module", "above"), [
    ("compressor.job.outcome", ["compressor.job.lifecycle", "compressor.job.run"]),
    ("compressor.job.lifecycle", ["compressor.job.run"]),
    ("compressor.state.document", ["compressor.state.merge", "compressor.state.store"]),
    ("compressor.state.merge", ["compressor.state.store"]),
    ("compressor.quality.windows.parse", ["compressor.quality.windows.rules",
                                          "compressor.quality.windows.day",
                                          "compressor.quality.windows.store"]),
    ("compressor.quality.windows.rules", ["compressor.quality.windows.day",
                                          "compressor.quality.windows.store"]),
    ("compressor.quality.windows.day", ["compressor.quality.windows.store"]),
    ("compressor.quality.report.model", ["compressor.quality.report.partitions",
                                         "compressor.quality.report.gather",
                                         "compressor.quality.report.terminal",
                                         "compressor.quality.report.json_doc"]),
    ("compressor.quality.report.partitions", ["compressor.quality.report.gather"]),
])
def test_package_modules_import_downward(module: str, above: list[str]) -> None:
    """job: run (the loop) -> lifecycle (one partition) -> outcome (what became of it);
    state: store (CAS writes) -> merge (the rule) -> document (shape, validation);
    quality.windows: store (the Store) -> day (slots, label) -> rules -> parse;
    quality.report: gather -> partitions -> model, and the renderers -> model."""
    for higher in above:
        assert not _reaches(module, higher), (module, higher)
    package = module.rpartition(".")[0]
    assert package not in imports_of(module)  # the package's face is above its modules


@pytest.mark.parametrize("module", ["compressor.quality.windows.parse",
                                    "compressor.quality.windows.rules",
                                    "compressor.quality.windows.day"])
def test_window_scoring_touches_no_store(module: str) -> None:
    """Scoring windows and days is pure: only quality.windows.store reads or writes."""
    assert not _reaches(module, "compressor.storage"), sorted(imports_of(module))


@pytest.mark.parametrize("module", ["compressor.quality.report.terminal",
                                    "compressor.quality.report.json_doc",
                                    "compressor.quality.html"])
def test_report_renderers_read_only_the_model(module: str) -> None:
    """The report is gathered once (report.gather) and shown three ways: a renderer
    imports the model and its sibling renderers, never a store or the gathering."""
    renderers = {"compressor.quality.report.terminal", "compressor.quality.report.json_doc"}
    allowed = {"compressor.labels", "compressor.quality.report.model", *renderers}
    assert imports_of(module) <= allowed, sorted(imports_of(module) - allowed)


def test_s3_probe_does_not_import_the_s3_store() -> None:
    """s3.py runs the probe at check(); the probe knows the store by a protocol."""
    assert not _reaches("compressor.storage.s3probe", "compressor.storage.s3")


def test_duplicate_counting_knows_only_arrow_numpy_and_the_piece_size() -> None:
    """quality/duplicates.py (exact duplicate rows, repeated trade_ids) and quality/pieces.py
    are below the accumulator (metrics.py): pure Arrow/numpy, no merge, store or state."""
    face = {"compressor.quality"}  # `from compressor.quality import pieces`
    assert imports_of("compressor.quality.duplicates") - face == {"compressor.quality.pieces"}
    assert imports_of("compressor.quality.pieces") == set()
    assert "compressor.quality.duplicates" in imports_of("compressor.quality.metrics")


@pytest.mark.parametrize("module", ["compressor.storage.s3compat", "compressor.storage.s3connect",
                                    "compressor.storage.s3errors",
                                    "compressor.storage.s3multipart"])
def test_s3_store_modules_do_not_import_the_s3_store(module: str) -> None:
    """The fallbacks, reaching the bucket, the error mapping and multipart uploads each
    know the S3Store by a protocol: s3.py imports them, never the other way."""
    assert not _reaches(module, "compressor.storage.s3")
    assert module in imports_of("compressor.storage.s3")


@pytest.mark.parametrize(("module", "below"), [
    ("compressor.storage.localdata", {"compressor.storage.base", "compressor.storage.localfiles"}),
    ("compressor.storage.localwrite", {"compressor.storage.base", "compressor.storage.localfiles"}),
    ("compressor.storage.localfiles", {"compressor.storage.base"}),
])
def test_local_store_modules_import_only_below_the_local_store(module: str, below: set[str]
                                                               ) -> None:
    """local.py imports its data path, its writes and its file rules; they know the
    LocalStore by a protocol (or not at all), and the file rules sit below both."""
    assert imports_of(module) == below
    assert module in imports_of("compressor.storage.local")


def test_s3_error_mapping_imports_only_the_store_interface() -> None:
    """What a failure means is decided from the error alone: below every S3 module."""
    assert imports_of("compressor.storage.s3errors") == {"compressor.storage.base"}


def _all_modules() -> list[str]:
    names = []
    for path in sorted((ROOT / "compressor").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_no_import_circle_anywhere() -> None:
    """Follow every arrow from every module; none leads back to where it started. A
    module's import of its own package (`__init__`, run first by Python anyway) is the
    one arrow not followed: the package's face sits above the modules it re-exports."""
    graph = {m: {i for i in imports_of(m) if not m.startswith(i + ".")}
             for m in _all_modules()}

    def circle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            module, path = stack.pop()
            for nxt in sorted(graph.get(module, ())):
                if nxt == start:
                    return [*path, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    circles = [c for m in graph if (c := circle_from(m))]
    assert not circles, " -> ".join(circles[0])


#: The merge package's modules, bottom up (docs/architecture.md): each imports only
#: modules before it. The slices' conversation (slices.py) sits below the merge in
#: slices that uses it, and knows nothing of the merge's data path.
MERGE_ORDER = ["errors", "inputs", "reading", "schema", "settings", "sorting", "plan",
               "spill", "runs", "output", "slices", "slice_merge", "writer"]
#: The demo package's modules, bottom up.
DEMO_ORDER = ["spec", "rows", "windows", "lake"]


@pytest.mark.parametrize(("package", "order"), [("compressor.merge", MERGE_ORDER),
                                                ("compressor.demo", DEMO_ORDER)])
def test_package_layers_import_downward(package: str, order: list[str]) -> None:
    wrong = []
    for n, name in enumerate(order):
        above = {f"{package}.{later}" for later in order[n + 1:]}
        wrong += [f"{name} -> {m}" for m in imports_of(f"{package}.{name}") & above]
    assert wrong == []


def test_slices_conversation_knows_no_data_path() -> None:
    assert imports_of("compressor.merge.slices") <= {"compressor.merge",
                                                     "compressor.merge.errors"}


def test_demo_data_imports_only_the_key_layout() -> None:
    """Test data is made the way the collector makes it, from the key names alone:
    nothing of the compactor it is meant to test."""
    for name in ["", *(f".{m}" for m in DEMO_ORDER)]:
        found = imports_of(f"compressor.demo{name}")
        assert {m for m in found if not m.startswith("compressor.demo")} <= {
            "compressor.layout"}, name
