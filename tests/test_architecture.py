"""The layering the house style asks for: the core, the backends and the CLI never import Qt."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pld_desktop

PACKAGE = Path(pld_desktop.__file__).parent
QT = ("PySide6", "shiboken6", "PyQt5", "PyQt6")


def qt_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        found += [n for n in names if n.split(".")[0] in QT]
    return found


def test_no_qt_outside_the_ui_package() -> None:
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "ui":
            continue
        if hits := qt_imports(path):
            offenders[str(rel)] = hits
    assert offenders == {}


def test_import_linter_contract_is_kept() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "import-linter is a dev dependency"
    r = subprocess.run([exe], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert r.returncode == 0, r.stdout + r.stderr
