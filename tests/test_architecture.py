"""The layer picture of the README's Architecture section, checked on the source: core/ never
imports Streamlit, each core sub-package imports only the ones below it, the pages reach core
only through its public API (``core.__all__``), and that API loads lazily."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import core

ROOT = Path(__file__).resolve().parents[1]
# bottom to top: a sub-package may import itself and the ones before it
LAYERS = ("engine", "training", "views", "server")


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(absolute module, imported names, line) for every import statement in ``path``; relative
    imports are resolved against the file's package."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            found.append((module, [alias.name for alias in node.names], node.lineno))
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


def test_the_scan_sees_every_layer():
    """Guards the checks below against passing on an empty file list."""
    seen = {p.relative_to(ROOT / "core").parts[0] for p in CORE_FILES if len(p.parts) > 1}
    assert set(LAYERS) <= seen
    assert len(PAGE_FILES) >= 10


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_core_never_imports_streamlit_and_respects_the_layers(path):
    rel = path.relative_to(ROOT / "core").parts
    own = LAYERS.index(rel[0]) if rel[0] in LAYERS else None
    for module, names, line in _imports(path):
        assert module.split(".")[0] != "streamlit", f"{path}:{line} imports Streamlit"
        assert module.split(".")[0] != "pages", f"{path}:{line} imports the UI"
        if own is None:  # core/__init__.py and the CLI sit on top of everything
            continue
        for layer in _layer(module, names):
            assert LAYERS.index(layer) <= own, (
                f"{path}:{line}: core.{rel[0]} imports core.{layer}, a layer above it"
            )


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
