"""Every module of ``kernels/`` imports only numpy, numba, the standard library and other kernels
modules (relative, or absolute ``kernels.*``), so the kernels never depend on the detector or on
third-party services."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

KERNELS = Path(__file__).resolve().parents[2] / "kernels"
ALLOWED = {"numpy", "numba", "kernels"} | set(sys.stdlib_module_names)


def imported_roots(path: Path) -> list[tuple[int, str]]:
    """(line, top-level module) of every absolute import in a source file."""
    roots = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            roots += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.append((node.lineno, (node.module or "").split(".")[0]))
    return roots


def test_kernels_package_has_modules():
    assert (KERNELS / "__init__.py").exists()
    assert len(list(KERNELS.glob("*.py"))) > 1


@pytest.mark.parametrize("path", sorted(KERNELS.glob("*.py")), ids=lambda p: p.name)
def test_kernel_module_imports_only_numpy_numba_stdlib(path):
    offending = [(line, root) for line, root in imported_roots(path) if root not in ALLOWED]
    assert not offending, f"{path.name} imports {offending}"


def test_the_check_catches_forbidden_imports(tmp_path):
    source = tmp_path / "bad.py"
    source.write_text(
        "import os\nfrom detector import config\nimport aiokafka.x\nfrom . import hll\n"
        "from kernels.hll import item_hash\nimport llvmlite\n"
    )
    roots = [root for _, root in imported_roots(source) if root not in ALLOWED]
    assert roots == ["detector", "aiokafka", "llvmlite"]
