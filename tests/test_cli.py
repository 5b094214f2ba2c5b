"""The `pld` command: clear messages and exit codes, never a traceback, on bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from pld_desktop.resources import demo_csv

from . import rawdb
from .helpers import CliResult

PldMain = Callable[..., CliResult]  # the conftest fixture: `pld` run in this process (argument and input errors)


def pld(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`pld` in its own process: for the exit status and output of the real command."""
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


def test_init_with_unknown_column_is_a_clear_error(tmp_path: Path, pld_main: PldMain) -> None:
    proj = tmp_path / "bad.pld"
    r = pld_main("init", str(proj), "--csv", str(demo_csv()), "--text", "mesage", "--label", "label")
    assert r.returncode == 2
    assert "mesage" in r.stderr and "message" in r.stderr
    assert "Traceback" not in r.stderr
    assert not proj.exists()


def test_init_on_a_latin1_file(tmp_path: Path, pld_main: PldMain) -> None:
    csv = tmp_path / "latin1.csv"
    csv.write_bytes("text,label\nun caf\xe9 noir,a\nthe tea,b\n".encode("latin-1") * 1)
    r = pld_main("init", str(tmp_path / "x.pld"), "--csv", str(csv), "--text", "text", "--label", "label")
    assert r.returncode == 2 and "UTF-8" in r.stderr and "Traceback" not in r.stderr


def test_export_before_any_rules_is_a_clear_error(tmp_path: Path, pld_main: PldMain) -> None:
    proj = tmp_path / "bank.pld"
    r = pld_main("init", str(proj), "--csv", str(demo_csv()), "--text", "message", "--label", "label")
    assert r.returncode == 0, r.stderr
    r = pld_main("export", str(proj), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "no rule set" in r.stderr and "Traceback" not in r.stderr


def test_opening_a_non_project(tmp_path: Path, pld_main: PldMain) -> None:
    r = pld_main("status", str(demo_csv()))
    assert r.returncode == 2 and "not a PLD project" in r.stderr


# ---------------------------------------------------------------------------
# OpenAI-compatible teacher and student options
# ---------------------------------------------------------------------------
def _openai_extraction_script(body: dict) -> tuple[int, dict, dict]:
    """The fake OpenAI server answers each extraction request the way the FakeTeacher would."""
    from types import SimpleNamespace

    from tests.fakes import FakeTeacher
    from tests.openai_server import ok_reply

    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    reply = FakeTeacher()._reply(SimpleNamespace(kind="extraction", user=user), {})  # type: ignore[arg-type]
    return 200, ok_reply(json.dumps(reply)), {}


def test_run_phase_1_with_an_openai_compatible_teacher(tmp_path: Path) -> None:
    import os

    from tests.openai_server import OPENAI_KEY as KEY
    from tests.openai_server import FakeOpenAI

    proj = tmp_path / "bank.pld"
    assert pld("init", str(proj), "--csv", str(demo_csv()), "--text", "message", "--label", "label",
               "--id", "id").returncode == 0
    server = FakeOpenAI()
    server.script = _openai_extraction_script
    env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring"}
    try:
        r = subprocess.run([sys.executable, "-m", "pld_desktop.cli", "run", str(proj), "--phase", "1",
                            "--teacher", "openai", "--teacher-base-url", server.url.removesuffix("/v1"),
                            "--teacher-openai-model", "served-model", "--concurrency", "3", "--quiet"],
                           capture_output=True, text=True, timeout=600, env=env)
    finally:
        server.close()
    assert r.returncode == 0, r.stderr
    assert KEY not in r.stdout + r.stderr
    status = json.loads(pld("status", str(proj), "--json").stdout)
    train = status["splits"]["train"]
    assert status["phases"]["Extraction"]["state"] == "done" and status["micro_rules"] == train
    assert status["teacher"]["calls"] == train == len(server.requests)
    sent = server.requests[0]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == f"Bearer {KEY}"
    assert sent["body"]["model"] == "served-model" and sent["body"]["response_format"]["type"] == "json_schema"
    from pld_desktop.core.project import Project
    from pld_desktop.core.settings import load_settings
    with Project.open(proj, read_only=True) as project:  # the choice is saved for reruns; the key is not
        saved = load_settings(project)
        assert (saved.teacher, saved.teacher_openai_model, saved.teacher_concurrency) == ("openai", "served-model", 3)
        assert saved.teacher_openai_base_url == server.url.removesuffix("/v1")
        models = {c["model"] for c in rawdb.query(project, "SELECT DISTINCT model FROM teacher_calls")}
        assert models == {f"openai:served-model@{server.url}"}  # the bare address gets /v1, as the server expects
    assert KEY.encode() not in proj.read_bytes()


def test_openai_options_are_checked_before_anything_runs(tmp_path: Path, pld_main: PldMain) -> None:
    proj = tmp_path / "bank.pld"
    r = pld_main("init", str(proj), "--csv", str(demo_csv()), "--text", "message", "--label", "label")
    assert r.returncode == 0, r.stderr
    r = pld_main("run", str(proj), "--phase", "1", "--teacher", "openai", "--teacher-openai-model", "m")
    assert r.returncode == 2 and "--teacher-base-url" in r.stderr and "Traceback" not in r.stderr
    r = pld_main("run", str(proj), "--phase", "1", "--teacher", "openai", "--teacher-base-url", "localhost:11434")
    assert r.returncode == 2 and "--teacher-openai-model" in r.stderr
    r = pld_main("run", str(proj), "--phase", "1", "--teacher", "openai", "--teacher-base-url", "localhost:11434",
                 "--teacher-openai-model", "m")
    assert r.returncode == 2 and "--teacher-base-url" in r.stderr and "not an http(s) URL" in r.stderr
    r = pld_main("eval", str(proj), "--student-backend", "openai")
    assert r.returncode == 2 and "--student-base-url" in r.stderr
    r = pld_main("run", str(proj), "--student-concurrency", "0")
    assert r.returncode == 2 and "at least 1" in r.stderr
    status = json.loads(pld_main("status", str(proj), "--json").stdout)
    assert all(ph["state"] == "pending" for ph in status["phases"].values()), status["phases"]


def test_student_server_options_reach_the_settings() -> None:
    from pld_desktop.cli import _apply_run_overrides, build_parser
    from pld_desktop.core.settings import RunSettings

    args = build_parser().parse_args(["run", "p.pld", "--student-backend", "openai", "--student-base-url",
                                      "http://127.0.0.1:8080/v1", "--student-model", "gemma", "--student-concurrency",
                                      "6", "--student-prompt-format", "chat", "--student-top-logprobs", "50"])
    settings = RunSettings(student_gguf="/models/keep.gguf")
    _apply_run_overrides(settings, args)
    assert (settings.student_backend, settings.student_base_url, settings.student_model) == \
        ("openai", "http://127.0.0.1:8080/v1", "gemma")
    assert (settings.student_concurrency, settings.student_prompt_format, settings.student_top_logprobs) == \
        (6, "chat", 50)
    assert settings.student_gguf == "/models/keep.gguf" and settings.teacher == "local"  # untouched
    # Naming a GGUF switches a saved server student back to the in-process one.
    _apply_run_overrides(settings, build_parser().parse_args(["run", "p.pld", "--student", "/models/b.gguf"]))
    assert (settings.student_backend, settings.student_gguf) == ("llama", "/models/b.gguf")
