"""One rule, one problem, on every surface: the same invalid settings give the same problems (rule and setting)
through check_settings, `pld run` (in-process) and the models dialog, each naming the settings its own way."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pld_desktop.cli import CLI_NAMES
from pld_desktop.core.project import Project
from pld_desktop.core.settings import RunSettings, load_settings, save_settings
from pld_desktop.core.settings_check import SettingsError, check_settings
from pld_desktop.resources import demo_csv
from pld_desktop.ui.models_dialog import DIALOG_NAMES, ModelsDialog

from .helpers import CliResult

PldMain = Callable[..., CliResult]  # the conftest fixture

CASES: dict[str, dict[str, Any]] = {
    "openai_teacher_without_address_or_model": dict(teacher="openai"),
    "openai_teacher_bad_url_and_spaced_model": dict(teacher="openai", teacher_openai_base_url="localhost:11434",
                                                    teacher_openai_model="qwen 7b"),
    "openai_teacher_bad_port": dict(teacher="openai", teacher_openai_base_url="http://127.0.0.1:99999/v1",
                                    teacher_openai_model="m"),
    "server_student_without_address": dict(student_backend="openai"),
    "server_student_ftp": dict(student_backend="openai", student_base_url="ftp://127.0.0.1:8080/v1"),
    "gemini_name_with_spaces_and_bad_url": dict(teacher="gemini", teacher_model="gemini 2.5",
                                                teacher_base_url="localhost:8080"),
    "student_file_is_not_gguf": dict(student_gguf=str(Path(__file__))),
}


def problems_of(settings: RunSettings) -> list[Any]:
    with pytest.raises(SettingsError) as raised:
        check_settings(settings)
    return raised.value.problems


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_the_same_settings_give_the_same_problems_everywhere(case: str, tmp_path: Path, pld_main: PldMain,
                                                             qtbot: Any, no_keyring: None) -> None:
    proj = tmp_path / "p.pld"
    assert pld_main("init", str(proj), "--csv", str(demo_csv()), "--text", "message", "--label", "label",
                    "--id", "id").returncode == 0
    with Project.open(proj) as project:
        settings = dataclasses.replace(load_settings(project), **CASES[case])
        save_settings(project, settings)
    expected = problems_of(settings)
    assert expected and all(p.setting in DIALOG_NAMES for p in expected)  # every case is one the dialog edits

    r = pld_main("run", str(proj), "--phase", "1", "--yes", "--quiet")
    assert r.returncode == 2 and f"error: {SettingsError(expected, CLI_NAMES)}" in r.stderr, r.stderr

    dialog = ModelsDialog(settings)
    qtbot.addWidget(dialog)
    dialog.accept()
    assert dialog.result() != ModelsDialog.DialogCode.Accepted
    assert dialog.error_label.text() == "\n".join(p.words(DIALOG_NAMES) for p in expected)
    assert problems_of(dialog.settings()) == expected  # the dialog judged the settings it holds, as given


def test_one_sentence_names_the_option_on_the_cli_and_the_field_in_the_window(qtbot: Any, no_keyring: None) -> None:
    [address, model] = problems_of(RunSettings(teacher="openai"))
    assert address.words(CLI_NAMES) == (
        "--teacher openai needs the server's address: --teacher-base-url "
        "(e.g. http://127.0.0.1:11434/v1 for Ollama, http://127.0.0.1:8000/v1 for vLLM).")
    assert address.words(DIALOG_NAMES) == (
        "The teacher on an OpenAI-compatible server needs the server's address: OpenAI-compatible server › Base URL "
        "(e.g. http://127.0.0.1:11434/v1 for Ollama, http://127.0.0.1:8000/v1 for vLLM).")
    assert model.words(CLI_NAMES) == ("--teacher openai needs the served model's name: --teacher-openai-model "
                                      "(e.g. qwen2.5:7b-instruct on Ollama).")
    assert model.words(DIALOG_NAMES) == ("The teacher on an OpenAI-compatible server needs the served model's name: "
                                         "OpenAI-compatible server › Model (e.g. qwen2.5:7b-instruct on Ollama).")
    # The dialog's own buttons say the same for the one address they check.
    dialog = ModelsDialog(RunSettings(student_backend="openai"))
    qtbot.addWidget(dialog)
    dialog.server_check_btn.click()
    [student] = problems_of(RunSettings(student_backend="openai"))
    assert dialog.student_result.text() == student.words(DIALOG_NAMES)


def test_the_names_are_for_settings_that_exist() -> None:
    fields = {f.name for f in dataclasses.fields(RunSettings)}
    for names in (CLI_NAMES, DIALOG_NAMES):
        assert {key.split("=")[0] for key in names} <= fields
