"""Raw SQL on a project file for tests: what is stored, read (or damaged) without going through `Project`.

The app reaches the file only through `pld_desktop.core.project.Project`; tests may look underneath it. Each
call opens its own connection and closes it, so it sees what the project committed and the project sees what
it wrote.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pld_desktop.core.project import Project


def _path(target: Project | Path | str) -> Path:
    return Path(target.path if isinstance(target, Project) else target).resolve()


def query(target: Project | Path | str, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """Rows of one read-only statement as dicts (column name -> value)."""
    conn = sqlite3.connect(f"file:{_path(target)}?mode=ro", uri=True)
    try:
        cur = conn.execute(sql, params)
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]
    finally:
        conn.close()


def execute(target: Project | Path | str, sql: str, params: Sequence[Any] = ()) -> None:
    """Run one writing statement and commit it (errors such as a trigger's RAISE propagate)."""
    conn = sqlite3.connect(_path(target))
    try:
        with conn:
            conn.execute(sql, params)
    finally:
        conn.close()
