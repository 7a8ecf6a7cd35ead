"""The layer picture of ARCHITECTURE.md, checked on the source: core/ never imports Streamlit,
each core sub-package imports only the ones its row of ARCHITECTURE.md's "Who may import whom"
table allows (the table is read from the file, so the document stays true), no core module imports
itself through a circle of imports (counting imports inside functions and under
``TYPE_CHECKING``), no import sits inside a function without a reason written below, the
registries keyed by method name agree, the pages reach core only through its public API
(``core.__all__``), and that API loads lazily."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import core
from core.engine.methods import EXACT, METHODS, SHOWN
from core.training.defaults import DEFAULTS, FIRST_ORDER, OPTIMIZERS, TWO_LEVEL_OPTIMIZERS
from core.views.figures import METHOD_COLORS
from core.views.labels import FACTOR_NAMES, METHOD_LABELS, OPTIMIZER_LABELS

ROOT = Path(__file__).resolve().parents[1]


def allowed_imports(text: str) -> dict[str, set[str]]:
    """The table under ARCHITECTURE.md's heading "Who may import whom": sub-package → the other
    sub-packages it may import (``| `core.paper` | `core.engine`, `core.views` |``; ``—``: none)."""
    section = text.split("## Who may import whom", 1)[1].split("\n## ", 1)[0]
    table: dict[str, set[str]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not cells[0].startswith("`core."):
            continue
        names = re.findall(r"`core\.(\w+)`", cells[1])
        table[cells[0].strip("`").removeprefix("core.")] = set(names)
    return table


ALLOWED = allowed_imports((ROOT / "ARCHITECTURE.md").read_text())
# the core sub-packages, as the table lists them
LAYERS = tuple(ALLOWED)


def _resolve(node: ast.Import | ast.ImportFrom, package: str) -> list[tuple[str, list[str]]]:
    """(absolute module, imported names) of one import statement; relative imports are resolved
    against ``package``, the importing file's package."""
    if isinstance(node, ast.Import):
        return [(alias.name, []) for alias in node.names]
    module = node.module or ""
    if node.level:
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        module = ".".join(base + ([module] if module else []))
    return [(module, [alias.name for alias in node.names])]


def _package(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) for every import statement in ``path``, at any
    depth (module level, inside functions, under ``if TYPE_CHECKING:``)."""
    return [
        (module, names, node.lineno)
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for module, names in _resolve(node, _package(path))
    ]


def _function_imports(path: Path) -> list[tuple[str, int]]:
    """(absolute module, line) for every import statement inside a function of ``path``."""
    found = []
    for fn in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    found += [(m, node.lineno) for m, _ in _resolve(node, _package(path))]
    return found


def _layer(module: str, names: list[str]) -> list[str]:
    """The core sub-packages an import reaches (``from core import engine`` counts too)."""
    parts = module.split(".")
    if parts[0] != "core":
        return []
    if len(parts) > 1:
        return [parts[1]] if parts[1] in LAYERS else []
    return [n for n in names if n in LAYERS]


CORE_FILES = sorted((ROOT / "core").rglob("*.py"))
PAGE_FILES = sorted((ROOT / "pages").rglob("*.py")) + [ROOT / "app.py"]

# Imports inside a function, each with why it waits (file, module → reason). Every other import
# sits at the top of its module; one moved into a function to dodge a circle still counts in
# the circle test below.
LAZY_IMPORTS: dict[tuple[str, str], str] = {
    ("core/server/workers.py", "torch"): (
        "the pool's side of this module is stdlib only; a worker process's main loop imports "
        "torch after moving its stdout to stderr, so nothing printed on import can corrupt the "
        "replies"
    ),
    ("core/training/data.py", "sklearn.datasets"): (
        "scikit-learn takes about 0.8 s to import and only the bundled digits dataset needs it"
    ),
    ("core/training/runner.py", "pandas"): (
        "worker processes load the runner but never build a table "
        "(test_a_worker_process_loads_no_plotting_or_tables)"
    ),
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(files: list[Path]) -> dict[str, set[str]]:
    """Module → the modules of ``files`` it imports, at any depth; ``from package import name``
    counts the submodule ``package.name`` where that is one of ``files``."""
    modules = {_module_name(p) for p in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        edges = set()
        for module, names, _ in _imports(path):
            edges |= {module} & modules
            edges |= {f"{module}.{name}" for name in names} & modules
        graph[_module_name(path)] = edges - {_module_name(path)}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One circle of imports as [m₀, m₁, …, m₀], or [] when there is none (depth-first search;
    a module met again while still on the stack closes a circle)."""
    done: set[str] = set()
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(module: str) -> list[str]:
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph.get(module, ())):
            if target in on_stack:
                return stack[stack.index(target) :] + [target]
            if target not in done and (cycle := visit(target)):
                return cycle
        stack.pop()
        on_stack.discard(module)
        done.add(module)
        return []

    for module in sorted(graph):
        if module not in done and (cycle := visit(module)):
            return cycle
    return []


def test_the_scan_sees_every_layer():
    """Guards the checks below against passing on an empty file list, and ARCHITECTURE.md's
    table against missing a sub-package of core/ or naming one that is not there."""
    packages = {p.parent.name for p in (ROOT / "core").glob("*/__init__.py")}
    assert set(LAYERS) == packages, "ARCHITECTURE.md's table and core/'s sub-packages differ"
    seen = {p.relative_to(ROOT / "core").parts[0] for p in CORE_FILES}
    assert set(LAYERS) <= seen
    assert len(PAGE_FILES) >= 10


def test_the_table_is_read_as_written():
    """The parser on a table whose answer is known, and the directions the issue fixed: the
    paper package sits above the views, which never import it."""
    text = (
        "## Who may import whom\n\n| package | may import |\n|---|---|\n"
        "| `core.a` | — |\n| `core.b` | `core.a` |\n| `core.c` | `core.a`, `core.b` |\n\n"
        "## Next\n| `core.z` | `core.a` |\n"
    )
    assert allowed_imports(text) == {"a": set(), "b": {"a"}, "c": {"a", "b"}}
    assert ALLOWED["paper"] == {"engine", "training", "views"}
    assert "paper" not in ALLOWED["views"] and "paper" not in ALLOWED["server"]
    assert ALLOWED["engine"] == set()


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_core_never_imports_streamlit_and_respects_the_layers(path):
    rel = path.relative_to(ROOT / "core").parts
    own = rel[0] if rel[0] in LAYERS else None
    for module, names, line in _imports(path):
        assert module.split(".")[0] != "streamlit", f"{path}:{line} imports Streamlit"
        assert module.split(".")[0] != "pages", f"{path}:{line} imports the UI"
        if own is None:  # core/__init__.py, the CLI and core/settings.py sit outside the table
            continue
        for layer in _layer(module, names):
            assert layer == own or layer in ALLOWED[own], (
                f"{path}:{line}: core.{own} imports core.{layer}, which ARCHITECTURE.md's "
                "table does not allow"
            )


def test_no_import_circle_in_core():
    cycle = find_cycle(import_graph(CORE_FILES))
    assert not cycle, "import circle: " + " → ".join(cycle)


def test_the_circle_check_finds_a_circle(tmp_path, monkeypatch):
    """A deliberate circle a → b (inside a function) → a, resolved from relative imports."""
    package = tmp_path / "core" / "demo"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import f\n")
    (package / "b.py").write_text("def f():\n    from . import a\n    return a\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    files = sorted(package.rglob("*.py"))
    assert find_cycle(import_graph(files)) == ["core.demo.a", "core.demo.b", "core.demo.a"]
    (package / "b.py").write_text("def f():\n    return 1\n")
    assert find_cycle(import_graph(files)) == []


def test_imports_inside_functions_have_a_written_reason():
    found = {
        (str(path.relative_to(ROOT)), module): line
        for path in CORE_FILES
        for module, line in _function_imports(path)
    }
    unexplained = sorted(f"{file}:{line} imports {module}" for (file, module), line in
                         found.items() if (file, module) not in LAZY_IMPORTS)  # fmt: skip
    assert not unexplained, "imports inside functions without a reason in LAZY_IMPORTS: " + (
        "; ".join(unexplained)
    )
    stale = sorted(set(LAZY_IMPORTS) - set(found))
    assert not stale, f"LAZY_IMPORTS lists imports that no longer exist: {stale}"


def test_the_registries_keyed_by_method_name_agree():
    """One entry per method in each layer that needs it (README, "Where to add")."""
    assert EXACT == ("exact",)
    assert (*EXACT, *METHODS) == SHOWN
    assert (*FIRST_ORDER, *METHODS, *EXACT, *TWO_LEVEL_OPTIMIZERS) == OPTIMIZERS
    assert list(DEFAULTS) == list(OPTIMIZERS) == list(OPTIMIZER_LABELS)
    assert list(METHOD_LABELS) == list(SHOWN) == list(METHOD_COLORS)
    assert set(FACTOR_NAMES) <= set(METHODS)


@pytest.mark.parametrize("path", PAGE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_pages_use_core_public_api_only(path):
    for module, names, line in _imports(path):
        if module.split(".")[0] != "core":
            continue
        assert module == "core", f"{path}:{line}: import from core's public API, not {module}"
        unknown = set(names) - set(core.__all__)
        assert not unknown, f"{path}:{line}: {sorted(unknown)} not in core.__all__"


def test_every_public_name_resolves():
    for name in core.__all__:
        assert getattr(core, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        core.nope  # noqa: B018


def test_a_worker_process_loads_no_plotting_or_tables():
    """``python -m core.server.workers`` must stay light: the public API loads lazily."""
    code = (
        "import sys, core.server.workers\n"
        "print(sorted(m for m in ('plotly', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"
