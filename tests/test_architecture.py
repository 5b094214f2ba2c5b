"""The layering the house style asks for: the core, the backends and the CLI never import Qt."""

from __future__ import annotations

import ast
import re
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


# ---------------------------------------------------------------------------
# Storage behind one door: SQL, sqlite3 and the rule-set pointer keys live in one module each
# ---------------------------------------------------------------------------
STORAGE = {Path("core/project.py")}  # the only modules that may hold SQL or touch sqlite3
SQL = re.compile(r"\b(SELECT\b.*\bFROM|INSERT\s+(OR\s+\w+\s+)?INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM|REPLACE\s+INTO|"
                 r"CREATE\s+(TABLE|INDEX|TRIGGER|VIEW)|DROP\s+(TABLE|INDEX|TRIGGER|VIEW)|ALTER\s+TABLE|PRAGMA\s+\w+)\b",
                 re.DOTALL)
RAW_CALLS = re.compile(r"\.(execute|executemany|executescript|query)\(|\bsqlite3\b|\bsqlite_utils\b|\.db\[")
# Each setting key that names a rule-set version, and the one module allowed to spell it out.
POINTER_KEYS = {"chosen_rule_set_id": Path("core/project.py"), "synthesis_rule_set_id": Path("core/project.py"),
                "edited_rule_set_id": Path("core/project.py"), "edited_over_chosen_id": Path("core/working.py")}


def _sources() -> list[tuple[Path, str, ast.AST]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        out.append((path.relative_to(PACKAGE), text, ast.parse(text, filename=str(path))))
    return out


def _strings(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string literal (f-string parts included) with its line."""
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def sql_outside_storage() -> dict[str, list[str]]:
    offenders: dict[str, list[str]] = {}
    for rel, text, tree in _sources():
        if rel in STORAGE:
            continue
        hits = [f"{rel}:{line}: {value[:60]!r}" for line, value in _strings(tree) if SQL.search(value)]
        hits += [f"{rel}:{n}: {line.strip()[:60]}" for n, line in enumerate(text.splitlines(), 1)
                 if RAW_CALLS.search(line)]
        if hits:
            offenders[str(rel)] = hits
    return offenders


def test_sql_and_sqlite3_only_in_the_storage_layer() -> None:
    assert sql_outside_storage() == {}


def test_the_sql_check_sees_sql() -> None:
    # The check itself: every way SQL used to leak out of the storage layer is caught.
    for sample in ('rows = project.query("SELECT key FROM clusterings")',
                   'conn.execute(f"INSERT INTO clusters ({cols}) VALUES (?)")',
                   'x = "DELETE FROM micro_rules"', "import sqlite3", "project.db['settings']"):
        tree = ast.parse(sample)
        assert any(SQL.search(v) for _, v in _strings(tree)) or RAW_CALLS.search(sample), sample
    for harmless in ('"Select a version"', '"update the app to open it"', '"from the teacher"'):
        assert not SQL.search(ast.literal_eval(harmless)), harmless


def test_rule_set_pointer_keys_are_spelled_out_in_one_place() -> None:
    offenders = [f"{rel}:{line}: {value!r}" for rel, _, tree in _sources() for line, value in _strings(tree)
                 if value in POINTER_KEYS and POINTER_KEYS[value] != rel]
    assert offenders == []
    homes = {key: [v for _, v in _strings(ast.parse((PACKAGE / home).read_text()))].count(key)
             for key, home in POINTER_KEYS.items()}
    assert homes == dict.fromkeys(POINTER_KEYS, 1)  # defined once, as one constant
