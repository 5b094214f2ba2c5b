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


RUNNER_MODULE = "tasks.py"  # ui/tasks.py: the one background-task runner (TaskRunner, TaskKeeper)


def _background_mechanisms(tree: ast.AST) -> list[str]:
    """QThread subclasses, threads started by hand and executors in a module's syntax tree."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                name = base.attr if isinstance(base, ast.Attribute) else getattr(base, "id", "")
                if name in ("QThread", "QRunnable"):
                    found.append(f"class {node.name}({name})")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("Thread", "Timer", "ThreadPoolExecutor", "QThreadPool", "start_new_thread"):
                found.append(f"{name}(...) at line {node.lineno}")
    return found


def _live_sets(tree: ast.Module) -> list[str]:
    """Module-level names that keep finished or running work alive (`_LIVE_...`)."""
    names = []
    for node in tree.body:
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        names += [t.id for t in targets if isinstance(t, ast.Name) and t.id.upper().startswith("_LIVE")]
    return names


def test_background_work_in_the_ui_goes_through_the_one_runner() -> None:
    offenders = {}
    for path in sorted((PACKAGE / "ui").rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        hits = _live_sets(tree)
        if path.name != RUNNER_MODULE:
            hits += _background_mechanisms(tree)
        if hits:
            offenders[str(path.relative_to(PACKAGE))] = hits
    assert offenders == {}, "use ui.tasks.TaskRunner (it owns the threads) instead"


def test_the_architecture_check_sees_what_it_forbids() -> None:
    sample = ast.parse(
        "import threading\nfrom PySide6.QtCore import QThread\n"
        "_LIVE_JOBS: set = set()\n"
        "class Worker(QThread):\n    pass\n"
        "threading.Thread(target=print).start()\n")
    assert _live_sets(sample) == ["_LIVE_JOBS"]
    assert _background_mechanisms(sample) == ["class Worker(QThread)", "Thread(...) at line 6"]
