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


BACKEND_NAMES = ("teacher", "student", "embedder", "backend", "reply")


def backend_probes(path: Path) -> list[str]:
    """`getattr(x, ...)` / `hasattr(x, ...)` calls whose object is named like a backend (or a teacher's reply)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "hasattr")
                and node.args and isinstance(node.args[0], ast.Name)
                and any(word in node.args[0].id.lower() for word in BACKEND_NAMES)):
            found.append(f"{node.func.id}({node.args[0].id}, ...) line {node.lineno}")
    return found


def test_optional_backend_abilities_are_declared_not_probed() -> None:
    """An optional ability is a runtime-checkable protocol in core/protocols.py, asked with isinstance."""
    offenders = {str(p.relative_to(PACKAGE)): hits for p in PACKAGE.rglob("*.py") if (hits := backend_probes(p))}
    assert offenders == {}


def test_the_protocols_module_is_not_named_after_the_backends_package() -> None:
    assert (PACKAGE / "core" / "protocols.py").is_file()
    assert not (PACKAGE / "core" / "backends.py").exists()


def test_optional_abilities_are_recognised_by_their_protocols() -> None:
    from pld_desktop.backends.llama_student import LlamaStudent
    from pld_desktop.backends.openai_student import OpenAIStudent
    from pld_desktop.core.protocols import BatchTeacher, ConcurrentStudent

    from .fakes import FakeStudent, FakeTeacher

    assert issubclass(OpenAIStudent, ConcurrentStudent) and not issubclass(LlamaStudent, ConcurrentStudent)
    assert not isinstance(FakeStudent(), ConcurrentStudent)
    assert not isinstance(FakeTeacher(), BatchTeacher)
