"""core.settings_check: each rule names its setting; the words name settings the way the caller's surface does."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from pld_desktop.core.settings import RunSettings
from pld_desktop.core.settings_check import (
    DEFAULT_NAMES,
    SettingProblem,
    SettingsError,
    check_settings,
    gguf_problem,
    server_url_problem,
    settings_problems,
)


def rules(s: RunSettings) -> set[tuple[str, str]]:
    return {(p.rule, p.setting) for p in settings_problems(s)}


def test_each_rule_names_the_setting_at_fault(tmp_path: Path) -> None:
    assert settings_problems(RunSettings()) == []
    assert rules(RunSettings(teacher="openai")) == {("server-address-missing", "teacher_openai_base_url"),
                                                    ("served-model-name", "teacher_openai_model")}
    assert rules(RunSettings(teacher="openai", teacher_openai_base_url="localhost:11434",
                             teacher_openai_model="a b")) == {("server-address-invalid", "teacher_openai_base_url"),
                                                              ("served-model-name", "teacher_openai_model")}
    assert rules(RunSettings(student_backend="openai")) == {("server-address-missing", "student_base_url")}
    assert rules(RunSettings(student_backend="openai", student_base_url="http://h:99999/v1")) == \
        {("server-address-invalid", "student_base_url")}
    assert rules(RunSettings(teacher="gemini", teacher_model="gemini 2.5", teacher_base_url="ftp://x")) == \
        {("gemini-model-name", "teacher_model"), ("server-address-invalid", "teacher_base_url")}
    assert rules(RunSettings(teacher="local", teacher_batch=True)) == {("batch-needs-gemini", "teacher_batch")}
    assert rules(RunSettings(student_gguf=str(tmp_path / "gone.gguf"), embedder=str(tmp_path))) == \
        {("model-file", "student_gguf"), ("embedder-folder", "embedder")}
    assert rules(RunSettings(student_n_ctx=5, dbscan_eps=3.0, task=" ")) == \
        {("at-least", "student_n_ctx"), ("dbscan-eps", "dbscan_eps"), ("task-empty", "task")}
    # A server address the settings do not use is not checked (the hidden choice keeps its value).
    assert settings_problems(RunSettings(teacher="local", teacher_openai_base_url="nonsense")) == []


def test_the_caller_names_the_settings() -> None:
    problem = server_url_problem("teacher_openai_base_url", "", needed_by="teacher=openai")
    assert problem is not None
    assert problem.words({"teacher=openai": "--teacher openai", "teacher_openai_base_url": "--teacher-base-url"}) \
        == ("--teacher openai needs the server's address: --teacher-base-url "
            "(e.g. http://127.0.0.1:11434/v1 for Ollama, http://127.0.0.1:8000/v1 for vLLM).")
    # A name the caller does not give falls back to DEFAULT_NAMES (str() uses only those).
    assert problem.words({"teacher=openai": "X"}).startswith(
        "X needs the server's address: " + DEFAULT_NAMES["teacher_openai_base_url"])
    assert str(problem).startswith(DEFAULT_NAMES["teacher=openai"] + " needs the server's address: "
                                   + DEFAULT_NAMES["teacher_openai_base_url"])
    with pytest.raises(SettingsError) as raised:
        check_settings(RunSettings(teacher="local", teacher_batch=True), {"teacher_batch": "--batch"})
    assert str(raised.value) == "--batch needs the Gemini teacher."
    assert raised.value.problems == [SettingProblem("batch-needs-gemini", "teacher_batch",
                                                    "{teacher_batch} needs {teacher=gemini}.")]


def test_the_users_braces_are_not_placeholders(tmp_path: Path) -> None:
    url = "http://{teacher}:x/v1"
    problems = settings_problems(RunSettings(teacher="openai", teacher_openai_base_url=url, teacher_openai_model="m",
                                             embedder=str(tmp_path / "{embedder}")))
    said = [p.words({"teacher": "NAMED"}) for p in problems]
    assert len(said) == 2 and repr(url) in said[0] and "{embedder}" in said[1] and "NAMED" not in "".join(said)


def test_the_gguf_rule_reads_the_header(tmp_path: Path) -> None:
    def file(name: str, data: bytes) -> str:
        (tmp_path / name).write_bytes(data)
        return str(tmp_path / name)
    assert gguf_problem("student_gguf", file("ok.gguf", b"GGUF" + struct.pack("<I", 3) + b"\0" * 8)) is None
    said = {name: str(gguf_problem("student_gguf", path)) for name, path in {
        "text": file("a.gguf", b"hello"), "short": file("b.gguf", b"GGUF"), "old": file("c.gguf", b"GGUF\1\0\0\0"),
        "folder": str(tmp_path), "gone": str(tmp_path / "gone.gguf")}.items()}
    assert "not a GGUF model file" in said["text"] and "truncated" in said["short"]
    assert "GGUF version 1" in said["old"] and "not a file" in said["folder"] and "not found" in said["gone"]
    assert all(s.startswith("Student: ") for s in said.values())
