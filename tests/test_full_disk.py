"""A full disk is exit 1 (README: "1 failed ... full disk") for init, run, eval, export and demo alike, with a
message that says so, no traceback, nothing left behind and the project intact. The disk is a tiny tmpfs filled
to its last block (needs root and mount; skipped elsewhere), plus ENOSPC raised from the export's own writes."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pld_desktop import cli
from pld_desktop.core.pipeline import run_pipeline
from pld_desktop.core.progress import SilentProgress
from pld_desktop.resources import demo_csv

from .fakes import FakeBackends
from .helpers import make_project, settings

EXIT_FAILED = 1


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _integrity(path: Path) -> str:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def _fill(folder: Path) -> Path:
    """Write a filler file until the disk refuses (ENOSPC); returns it (unlink it to free the space)."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MB tmpfs (a project on the demo data is ~0.5-1 MB); unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode(errors='replace').strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _pld(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    monkeypatch.setattr("pld_desktop.backends.factory.DefaultBackends", lambda **_: FakeBackends())
    capsys.readouterr()
    code = cli.main(list(argv))
    return code, capsys.readouterr().err


def _says_full(code: int, err: str) -> None:
    assert code == EXIT_FAILED, err
    low = err.lower()
    assert err.startswith("error:") and ("full" in low or "no space left" in low), err
    assert "Traceback" not in err and "internal error" not in err, err


def _project_through(folder: Path, phases: list[int]) -> Path:
    project = make_project(folder, "p.pld")
    if phases:
        assert run_pipeline(project, settings(), FakeBackends(), SilentProgress(), phases=phases).status == "done"
    path = project.path
    project.close()
    return path


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in ("filler", "p.pld", "demo.pld"))


def test_init_onto_a_full_disk_exits_1_and_leaves_nothing(small_disk: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    filler = _fill(small_disk)
    code, err = _pld(monkeypatch, capsys, "init", str(small_disk / "new.pld"), "--csv", str(demo_csv()),
                     "--text", "message", "--label", "label", "--id", "id")
    _says_full(code, err)
    assert "rollback" not in err
    assert _leftovers(small_disk) == [], "no partial project, journal or lock is left behind"
    filler.unlink()


@pytest.mark.parametrize("command", ["run", "eval"])
def test_run_and_eval_on_a_full_disk_exit_1_and_keep_the_project(command: str, small_disk: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    source = _project_through(tmp_path, [1, 2] if command == "eval" else [])
    path = small_disk / "p.pld"
    shutil.copy(source, path)
    filler = _fill(small_disk)
    before = _digest(path)
    argv = ["run", str(path), "--phase", "1", "--quiet"] if command == "run" else ["eval", str(path), "--quiet"]
    code, err = _pld(monkeypatch, capsys, *argv)
    _says_full(code, err)
    assert _digest(path) == before
    assert _leftovers(small_disk) == []
    filler.unlink()
    assert _integrity(path) == "ok"
    # With space again, the same command does its work.
    code, err = _pld(monkeypatch, capsys, *argv)
    assert code == 0, err


def test_export_onto_a_full_disk_exits_1_and_leaves_no_partial_file(small_disk: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = _project_through(tmp_path, [1, 2])
    out = small_disk / "exports"
    out.mkdir()
    filler = _fill(small_disk)
    code, err = _pld(monkeypatch, capsys, "export", str(path), "--out", str(out))
    _says_full(code, err)
    assert list(out.iterdir()) == [], "no half-written export or temp file"
    filler.unlink()


def test_demo_onto_a_full_disk_exits_1(small_disk: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    folder = small_disk / "demo"
    folder.mkdir()
    filler = _fill(small_disk)
    code, err = _pld(monkeypatch, capsys, "demo", "--dir", str(folder), "--quiet")
    _says_full(code, err)
    assert _leftovers(folder) == []
    filler.unlink()


def test_export_writes_refused_with_enospc_exit_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """The same without a tmpfs: the export's data reaches the disk at fsync, which says ENOSPC (as a full disk
    does when the written pages were only cached)."""
    path = _project_through(tmp_path, [1, 2])
    out = tmp_path / "exports"

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("pld_desktop.core.export.os.fsync", no_space)
    code, err = _pld(monkeypatch, capsys, "export", str(path), "--out", str(out))
    assert code == EXIT_FAILED and "No space left on device" in err and "Traceback" not in err, err
    assert not out.exists() or list(out.iterdir()) == []
