"""One writer per project: a lock file beside the .pld naming the run (pid, host, start time) that holds it.

The lock is an advisory `flock` on `<project>.lock`, so the kernel releases it on any exit of the holder,
SIGKILL included; a lock file left behind by a dead process is therefore stale by construction and is taken
over. The file's JSON body only says *who* holds it, for the "in use by another run (pid N)" message.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from .project import DiskFull, ProjectFileError, ProjectInUse

try:  # POSIX; on other systems the lock degrades to the pid check below
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]  # no module: the pid check alone


def describe_in_use(path: Path, holder: dict[str, Any]) -> str:
    pid = holder.get("pid", "?")
    parts = [f"{Path(path).name} is in use by another run (pid {pid}"]
    if holder.get("host") and holder["host"] != socket.gethostname():
        parts.append(f" on {holder['host']}")
    if holder.get("started_at"):
        parts.append(", started " + time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder["started_at"]))))
    if holder.get("command"):
        parts.append(f", '{holder['command']}'")
    parts.append("); wait for it to finish or stop it, then try again.")
    return "".join(parts)


def lock_path(project_path: str | os.PathLike[str]) -> Path:
    p = Path(project_path)
    return p.with_name(p.name + ".lock")


def _read_holder(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """Held for the duration of a run (or of replacing a project); `release()` or the process's exit frees it.

    Re-entrant within a process: a second `acquire` on the same project by the same process (e.g. `pld demo`
    building then running) nests instead of refusing itself.
    """

    _held: ClassVar[dict[str, RunLock]] = {}  # real holders in this process, by lock-file path

    def __init__(self, project_path: str | os.PathLike[str], command: str = "run") -> None:
        self.project_path = Path(project_path)
        self.path = lock_path(self.project_path)
        self.command = command
        self._fd: int | None = None
        self._depth = 0
        self._thread: int | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> RunLock:
        key = str(self.path.resolve())
        outer = RunLock._held.get(key)
        if outer is not None and outer is not self and outer._thread != threading.get_ident():
            # Another thread of this process runs on the project (the window's run while its import dialog
            # would replace the file): that is another run too.
            raise ProjectInUse(describe_in_use(self.project_path, _read_holder(self.path)))
        if outer is not None and outer is not self:
            outer._depth += 1
            self._fd, self._outer = -1, outer  # nested: the outer holder keeps the real lock
            return self
        if self._fd is not None:
            self._depth += 1
            return self
        for _ in range(5):  # the file can be unlinked by a releasing holder between open and flock
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                kind = DiskFull if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ProjectFileError
                raise kind(f"Cannot lock {self.project_path.name} for this run: cannot create "
                           f"{self.path.name} ({exc.strerror or exc}).") from None
            try:
                if fcntl is not None:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        raise ProjectInUse(describe_in_use(self.project_path, _read_holder(self.path))) from None
                else:  # pragma: no cover - no flock: trust a live pid
                    holder = _read_holder(self.path)
                    if holder.get("pid") not in (None, os.getpid()) and _pid_alive(holder.get("pid")):
                        raise ProjectInUse(describe_in_use(self.project_path, holder))
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    os.close(fd)
                    continue
            except BaseException:
                os.close(fd)
                raise
            body = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started_at": time.time(),
                               "command": self.command}).encode()
            try:  # who holds it is only for messages; a full disk must not stop the lock itself
                os.ftruncate(fd, 0)
                os.pwrite(fd, body, 0)
            except OSError:
                pass
            self._fd, self._depth, self._thread = fd, 1, threading.get_ident()
            RunLock._held[key] = self
            return self
        raise ProjectInUse(describe_in_use(self.project_path, _read_holder(self.path)))

    def release(self) -> None:
        if self._fd is None:
            return
        if self._fd == -1:  # nested in another holder of this process
            outer = self._outer
            self._fd = None
            outer.release()  # the last of the nested holders to let go frees the real lock
            return
        self._depth -= 1
        if self._depth > 0:
            return
        RunLock._held.pop(str(self.path.resolve()), None)
        try:
            # Unlink while still holding the lock, so no one can take a lock on a file that is about to vanish
            # unnoticed (acquire checks that the inode it locked is still the one at the path).
            self.path.unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None


def holder_of(project_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The live run holding the project's lock (its pid, host, start time), or None when none does.

    A lock file whose holder has died is not a holder (the kernel dropped its flock), so this is how a phase
    left "running" by a killed process is told apart from one that really runs.
    """
    path = lock_path(project_path)
    if not path.exists():
        return None
    key = str(path.resolve())
    if key in RunLock._held:
        return _read_holder(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        if fcntl is None:  # pragma: no cover
            holder = _read_holder(path)
            return holder if _pid_alive(holder.get("pid")) else None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(path) or {"pid": "?"}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
