"""The checks a project file passes before it is opened, and the words for what goes wrong with it.

Nothing here writes to a file it judges, except rolling back a transaction a killed process left unfinished
(SQLite's own recovery). The errors are those of core.storage.errors.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
from pathlib import Path

from .errors import DiskFull, ProjectFileError, ProjectInUse, ProjectTooNew
from .schema import APPLICATION_ID, KNOWN_MIGRATIONS, MIGRATION_SET, SQLITE_MAGIC


def check_header(path: Path) -> None:
    """Refuse anything that is not an SQLite file with our application id, without writing to it."""
    if path.is_dir():
        raise ProjectFileError(f"{path} is a folder, not a project file.")
    try:
        with open(path, "rb") as fh:
            header = fh.read(100)
    except PermissionError:
        raise ProjectFileError(f"Cannot read {path}: permission denied.") from None
    except OSError as exc:
        raise ProjectFileError(f"Cannot read {path}: {exc.strerror}.") from None
    if len(header) < 100 or not header.startswith(SQLITE_MAGIC):
        raise ProjectFileError(f"{path.name} is not a PLD project file (it is not an SQLite database).")
    app_id = int.from_bytes(header[68:72], "big")
    if app_id != APPLICATION_ID:
        raise ProjectFileError(
            f"{path.name} is an SQLite database but not a PLD project file (application id {app_id:#x}).")


# How long an open waits for another connection's write lock before it says the file is in use. A run holds
# the write lock only while it commits one item, so a longer wait means a stuck or very large transaction.
BUSY_TIMEOUT_S = 30.0

# Integrity verdicts already reached in this process, by (path, mtime, size): PRAGMA quick_check reads every
# page (84-214 ms on a 100k-example project), and the window and the CLI open the same file many times.
_checked_ok: set[tuple[str, int, int]] = set()
_checked_lock = threading.Lock()


def _file_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_mtime_ns, st.st_size)


def is_locked_error(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def in_use_message(path: Path) -> str:
    """Words for a project another connection keeps locked: the run holding it (pid) when one does."""
    from ..run_lock import describe_in_use, holder_of
    holder = holder_of(path)
    if holder:
        return describe_in_use(path, holder)
    return (f"{path.name} is in use by another program or window (it stayed locked for {BUSY_TIMEOUT_S:.0f} s); "
            "close it there, then try again.")


def recover_hot_journal(path: Path) -> None:
    """Roll back a transaction a killed process left unfinished, before anything judges the file.

    A journal beside the file means either a live writer (its lock makes SQLite leave the journal alone) or a
    *hot* journal from a crash, which only a read-write connection can roll back; a read-only one fails with
    "attempt to write a readonly database", which is not damage. The first read on a read-write connection
    does the rollback (that is SQLite's own recovery; the journal holds the original pages).
    """
    journal = path.with_name(path.name + "-journal")
    try:
        if not journal.exists() or journal.stat().st_size == 0:
            return
    except OSError:
        return
    if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK):
        raise ProjectFileError(
            f"{path.name} has an unfinished transaction from a run that stopped abruptly, and it cannot be rolled "
            f"back here because the file or its folder is read-only. Open it once where it can be written. Do not "
            f"delete {journal.name}: it holds the pages that make the file whole again.")
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise ProjectFileError(f"Cannot open {path.name}: {exc}.") from None
    try:
        conn.execute("PRAGMA schema_version").fetchone()
    except sqlite3.OperationalError as exc:
        if is_locked_error(exc):
            raise ProjectInUse(in_use_message(path)) from None
        raise ProjectFileError(f"{path.name} has an unfinished transaction that could not be rolled back ({exc}). "
                               f"Keep {journal.name} beside it and restore a copy if this persists.") from None
    except sqlite3.DatabaseError:
        pass  # judged (and reported as damage) by the read-only checks that follow
    finally:
        conn.close()


def read_only_checks(path: Path) -> None:
    """Integrity and schema-version checks on a read-only connection (the file is never modified)."""
    uri = f"file:{path.resolve()}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as exc:
        raise ProjectFileError(f"Cannot open {path.name}: {exc}.") from None
    try:
        key = _file_key(path)
        with _checked_lock:
            known_ok = key in _checked_ok
        if not known_ok:
            try:
                result = conn.execute("PRAGMA quick_check").fetchone()[0]
            except sqlite3.OperationalError as exc:
                if is_locked_error(exc):
                    raise ProjectInUse(in_use_message(path)) from None
                raise ProjectFileError(f"{path.name} is damaged and cannot be opened ({exc}).") from None
            except sqlite3.DatabaseError as exc:
                raise ProjectFileError(f"{path.name} is damaged and cannot be opened ({exc}).") from None
            if result != "ok":
                raise ProjectFileError(f"{path.name} is damaged: {result}.")
        try:
            names = {r[0] for r in conn.execute(
                "SELECT name FROM _sqlite_migrations WHERE migration_set = ?", [MIGRATION_SET])}
        except sqlite3.OperationalError as exc:
            if is_locked_error(exc):
                raise ProjectInUse(in_use_message(path)) from None
            raise ProjectFileError(f"{path.name} is not a PLD project file (no schema record).") from None
        except sqlite3.DatabaseError:
            raise ProjectFileError(f"{path.name} is not a PLD project file (no schema record).") from None
        unknown = names - set(KNOWN_MIGRATIONS)
        if unknown:
            raise ProjectTooNew(
                f"{path.name} was written by a newer version of PLD Desktop (schema steps "
                f"{', '.join(sorted(unknown))}); update the app to open it. The file was not changed.")
        if not known_ok:
            with _checked_lock:
                _checked_ok.add(key)
    finally:
        conn.close()


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    text = str(exc)
    return ("disk" in text and "full" in text) or getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def write_error(path: Path, exc: sqlite3.Error) -> ProjectFileError:
    """The error to raise when a write to the project at `path` failed: DiskFull for a full disk."""
    return (DiskFull if is_disk_full(exc) else ProjectFileError)(friendly_sqlite_error(path, exc))


def friendly_sqlite_error(path: Path, exc: sqlite3.Error) -> str:
    text = str(exc)
    if ("disk" in text and "full" in text) or "database or disk is full" in text:
        return f"The disk holding {path.name} is full; nothing was lost, free some space and resume."
    if "readonly" in text:
        return f"{path.name} cannot be written (read-only file or folder)."
    if "locked" in text:
        return in_use_message(path)
    return f"Could not write to {path.name}: {text}."
