"""The `pld` command: clear messages and exit codes, never a traceback, on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from pld_desktop.resources import demo_csv


def pld(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pld_desktop.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_init_and_status(tmp_path: Path) -> None:
    proj = tmp_path / "bank.pld"
    r = pld("init", str(proj), "--csv", str(demo_csv()), "--text", "message", "--label", "label", "--id", "id",
            "--template", "Channel: {channel}\\nMessage: {message}", "--task", "Triage bank messages.")
    assert r.returncode == 0, r.stderr
    assert "105 rows" in r.stdout and "test is locked" in r.stdout
    s = pld("status", str(proj), "--json")
    assert s.returncode == 0, s.stderr
    status = json.loads(s.stdout)
    assert status["rows"] == 105 and sum(status["splits"].values()) == 105
    assert set(status["labels"]) == {"complaint", "fraud_report", "question"}


def test_init_with_unknown_column_is_a_clear_error(tmp_path: Path) -> None:
    proj = tmp_path / "bad.pld"
    r = pld("init", str(proj), "--csv", str(demo_csv()), "--text", "mesage", "--label", "label")
    assert r.returncode == 2
    assert "mesage" in r.stderr and "message" in r.stderr
    assert "Traceback" not in r.stderr
    assert not proj.exists()


def test_init_on_a_latin1_file(tmp_path: Path) -> None:
    csv = tmp_path / "latin1.csv"
    csv.write_bytes("text,label\nun caf\xe9 noir,a\nthe tea,b\n".encode("latin-1") * 1)
    r = pld("init", str(tmp_path / "x.pld"), "--csv", str(csv), "--text", "text", "--label", "label")
    assert r.returncode == 2 and "UTF-8" in r.stderr and "Traceback" not in r.stderr


def test_export_before_any_rules_is_a_clear_error(tmp_path: Path) -> None:
    proj = tmp_path / "bank.pld"
    assert pld("init", str(proj), "--csv", str(demo_csv()), "--text", "message", "--label", "label").returncode == 0
    r = pld("export", str(proj), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "no rule set" in r.stderr and "Traceback" not in r.stderr


def test_opening_a_non_project(tmp_path: Path) -> None:
    r = pld("status", str(demo_csv()))
    assert r.returncode == 2 and "not a PLD project" in r.stderr
