"""The model settings dialog: settings round trip, the API key kept out of the project, real background checks."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from pld_desktop.backends import model_probe
from pld_desktop.backends.model_probe import StudentCheck
from pld_desktop.core.settings import RunSettings, load_settings, save_settings
from pld_desktop.ui.models_dialog import ModelsDialog
from pld_desktop.ui.tasks import task_keeper

from ..fake_gemini import FakeGemini, FakeResponse, quota_exhausted, server_error, success, success_body
from ..helpers import MemoryKeyring, make_project
from ..openai_server import OPENAI_KEY, FakeOpenAI, ok_reply, start_llama_server, stop_server

KEY = "AIzaSyTEST-planted-key-0123456789"


@pytest.fixture(autouse=True)
def no_env_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def open_dialog(qtbot, settings: RunSettings) -> ModelsDialog:  # type: ignore[no-untyped-def]
    dialog = ModelsDialog(settings)
    qtbot.addWidget(dialog)
    return dialog


def wait_idle(qtbot, dialog: ModelsDialog, timeout: int = 60000) -> None:  # type: ignore[no-untyped-def]
    qtbot.waitUntil(lambda: not dialog.busy(), timeout=timeout)


# ---------------------------------------------------------------------------
def test_settings_round_trip_and_edits(qtbot, no_keyring) -> None:  # type: ignore[no-untyped-def]
    original = RunSettings(teacher="gemini", teacher_model="gemini-2.5-pro", teacher_base_url="http://127.0.0.1:9/",
                           teacher_concurrency=3, price_in_per_million=1.25, price_out_per_million=10.0,
                           student_n_ctx=8192, student_threads=2, dbscan_eps=0.33, label_meanings={"a": "b"})
    dialog = open_dialog(qtbot, original)
    assert dialog.settings() == original  # nothing shown is changed by merely opening the dialog
    dialog.local_radio.setChecked(True)
    assert not dialog.gemini_box.isEnabled() and dialog.local_box.isEnabled()
    dialog.gemini_model.setCurrentText("gemini-3-pro-preview")
    dialog.concurrency.setValue(12)
    dialog.base_url.clear()
    dialog.threads.setValue(0)
    dialog.n_ctx.setValue(2048)
    s = dialog.settings()
    assert (s.teacher, s.teacher_model, s.teacher_concurrency) == ("local", "gemini-3-pro-preview", 12)
    assert s.teacher_base_url is None and s.student_threads is None and s.student_n_ctx == 2048
    assert s.dbscan_eps == 0.33 and s.label_meanings == {"a": "b"}  # fields the dialog does not show are kept


def test_bad_paths_keep_the_dialog_open_with_a_message(qtbot, tmp_path: Path, no_keyring) -> None:
    dialog = open_dialog(qtbot, RunSettings())
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello")
    dialog.student_gguf.setText(str(not_gguf))
    dialog.embedder_path.setText(str(tmp_path / "missing"))
    dialog.gemini_radio.setChecked(True)
    dialog.base_url.setText("localhost:8080")
    dialog.accept()
    assert dialog.result() != ModelsDialog.DialogCode.Accepted
    text = dialog.error_label.text()
    assert "not a GGUF model file" in text and "does not exist" in text and "http://" in text
    dialog.student_gguf.clear()
    dialog.embedder_path.clear()
    dialog.base_url.clear()
    dialog.accept()
    assert dialog.result() == ModelsDialog.DialogCode.Accepted


def test_key_goes_to_the_keychain_not_the_settings(qtbot, tmp_path: Path, memory_keyring: MemoryKeyring) -> None:
    dialog = open_dialog(qtbot, RunSettings(teacher="gemini"))
    assert "No key is set" in dialog.key_status.text()
    dialog.api_key.setText(KEY)
    dialog.save_key_btn.click()
    assert memory_keyring.store[("pld-desktop", "gemini-api-key")] == KEY
    assert dialog.api_key.text() == ""
    assert "OS keychain" in dialog.key_status.text() and KEY not in dialog.key_status.text()
    assert dialog.forget_key_btn.isEnabled()
    settings = dialog.settings()
    assert KEY not in json.dumps(settings.to_json())
    project = make_project(tmp_path)
    save_settings(project, settings)
    assert load_settings(project).teacher == "gemini"
    project.close()
    assert KEY.encode() not in (tmp_path / "p.pld").read_bytes()
    dialog.forget_key_btn.click()
    assert memory_keyring.store == {}
    assert "No key is set" in dialog.key_status.text()


def test_a_typed_key_is_saved_on_ok(qtbot, memory_keyring: MemoryKeyring) -> None:  # type: ignore[no-untyped-def]
    dialog = open_dialog(qtbot, RunSettings())
    dialog.api_key.setText(KEY)
    dialog.accept()
    assert dialog.result() == ModelsDialog.DialogCode.Accepted
    assert memory_keyring.store[("pld-desktop", "gemini-api-key")] == KEY


def test_environment_key_is_reported_by_name(qtbot, memory_keyring, monkeypatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    dialog = open_dialog(qtbot, RunSettings())
    assert "environment variable GEMINI_API_KEY" in dialog.key_status.text()
    assert KEY not in dialog.key_status.text()


def test_without_a_keychain_the_dialog_points_to_the_env_var(qtbot, no_keyring) -> None:  # type: ignore[no-untyped-def]
    dialog = open_dialog(qtbot, RunSettings(teacher="gemini"))
    assert "No OS keychain is available" in dialog.key_status.text()
    assert "GEMINI_API_KEY" in dialog.key_status.text()
    assert not dialog.save_key_btn.isEnabled()
    dialog.api_key.setText(KEY)
    dialog.accept()  # the typed key cannot be stored: say so instead of dropping it
    assert dialog.result() != ModelsDialog.DialogCode.Accepted
    assert "GEMINI_API_KEY" in dialog.error_label.text() and KEY not in dialog.error_label.text()


# ---------------------------------------------------------------------------
# Test connection against the fake Gemini server (the real google-genai client underneath)
# ---------------------------------------------------------------------------
def gemini_dialog(qtbot, server: FakeGemini) -> ModelsDialog:  # type: ignore[no-untyped-def]
    dialog = open_dialog(qtbot, RunSettings(teacher="gemini", teacher_base_url=server.base_url))
    dialog.api_key.setText(KEY)  # typed, not saved: used for this test call only
    return dialog


def test_connection_succeeds(qtbot, fake_gemini: FakeGemini, no_keyring) -> None:  # type: ignore[no-untyped-def]
    fake_gemini.expected_key = KEY
    fake_gemini.enqueue(success("OK"))
    dialog = gemini_dialog(qtbot, fake_gemini)
    dialog.test_btn.click()
    assert dialog.busy() and not dialog.busy_bar.isHidden() and not dialog.test_btn.isEnabled()
    wait_idle(qtbot, dialog)
    text = dialog.teacher_result.text()
    assert "Connected to Gemini" in text and "gemini-2.5-flash" in text
    assert KEY not in text
    assert [r.key_matched for r in fake_gemini.requests] == [True]


@pytest.mark.parametrize("response, words", [(quota_exhausted(), "quota exhausted"),
                                             (server_error(), "server error")])
def test_connection_failure_is_reported_in_words(qtbot, fake_gemini: FakeGemini, no_keyring, response,
                                                 words: str) -> None:
    fake_gemini.always(response)
    dialog = gemini_dialog(qtbot, fake_gemini)
    dialog.test_btn.click()
    wait_idle(qtbot, dialog)
    text = dialog.teacher_result.text()
    assert text.startswith("✘ Failed:") and words in text
    assert KEY not in text
    assert len(fake_gemini.requests) == 1  # a connection test does not retry


def test_rejected_key_is_redacted(qtbot, fake_gemini: FakeGemini, no_keyring) -> None:  # type: ignore[no-untyped-def]
    fake_gemini.expected_key = "the-right-key-000"
    dialog = gemini_dialog(qtbot, fake_gemini)
    dialog.test_btn.click()
    wait_idle(qtbot, dialog)
    assert "API key was rejected" in dialog.teacher_result.text()
    assert KEY not in dialog.teacher_result.text()


def test_missing_key_is_explained_without_a_call(qtbot, fake_gemini: FakeGemini, no_keyring) -> None:
    dialog = open_dialog(qtbot, RunSettings(teacher="gemini", teacher_base_url=fake_gemini.base_url))
    dialog.test_btn.click()
    assert not dialog.busy()
    assert "No Gemini API key" in dialog.teacher_result.text()
    assert fake_gemini.requests == []


def test_cancelled_check_ignores_the_late_result(qtbot, fake_gemini: FakeGemini, no_keyring) -> None:
    fake_gemini.always(FakeResponse(200, success_body("OK"), delay_s=1.0))
    dialog = gemini_dialog(qtbot, fake_gemini)
    dialog.test_btn.click()
    assert dialog.busy()
    dialog.cancel_btn.click()
    assert not dialog.busy() and dialog.test_btn.isEnabled()
    assert "Cancelled" in dialog.teacher_result.text()
    qtbot.waitUntil(lambda: not task_keeper().running(), timeout=30000)  # the abandoned check has ended
    qtbot.wait(50)  # let the late result's queued signal arrive
    assert "Cancelled" in dialog.teacher_result.text()


# ---------------------------------------------------------------------------
# Student: load and check
# ---------------------------------------------------------------------------
def test_student_check_on_a_broken_file(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    broken = tmp_path / "cut.gguf"
    broken.write_bytes(b"GGUF" + struct.pack("<I", 3) + struct.pack("<QQ", 291, 40) + b"\x00" * 64)
    dialog = open_dialog(qtbot, RunSettings(student_gguf=str(broken)))
    dialog.check_btn.click()
    wait_idle(qtbot, dialog)
    text = dialog.student_result.text()
    assert "Could not load the student" in text and "truncated or corrupted" in text
    assert dialog.last_student_check is None
    dialog.student_gguf.setText(str(tmp_path / "nowhere.gguf"))
    dialog.check_btn.click()
    wait_idle(qtbot, dialog)
    assert "not found" in dialog.student_result.text()


@pytest.mark.slow
def test_student_check_on_the_bundled_model(qtbot) -> None:  # type: ignore[no-untyped-def]
    from pld_desktop.backends.bundled import bundled_student_path

    dialog = open_dialog(qtbot, RunSettings(student_n_ctx=1024))
    dialog.check_btn.click()
    wait_idle(qtbot, dialog, timeout=180000)
    check = dialog.last_student_check
    assert isinstance(check, StudentCheck), dialog.student_result.text()
    assert check.size_bytes == bundled_student_path().stat().st_size
    assert check.architecture == "gemma3" and 2e8 < check.n_params < 3.5e8
    assert check.n_ctx == 1024 and check.n_ctx_train >= 8192
    text = dialog.student_result.text()
    assert "Gemma 3" in text and "MB" in text and "gemma3" in text and f"{check.n_ctx_train:,}" in text


@pytest.mark.slow
def test_local_teacher_connection_is_a_real_call(qtbot) -> None:  # type: ignore[no-untyped-def]
    dialog = open_dialog(qtbot, RunSettings(teacher="local"))
    dialog.test_btn.click()
    wait_idle(qtbot, dialog, timeout=180000)
    text = dialog.teacher_result.text()
    assert "local teacher" in text and "SmolLM2" in text and "answered" in text, text


# ---------------------------------------------------------------------------
# OpenAI-compatible servers: teacher and student (the fake server of test_openai_teacher)
# ---------------------------------------------------------------------------
def free_port_url() -> str:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def test_openai_settings_round_trip_and_modes(qtbot, no_keyring) -> None:  # type: ignore[no-untyped-def]
    original = RunSettings(teacher="openai", teacher_openai_base_url="http://127.0.0.1:11434/v1",
                           teacher_openai_model="qwen2.5:7b", teacher_concurrency=2, student_backend="openai",
                           student_base_url="http://127.0.0.1:8080", student_model="gemma", student_concurrency=3,
                           student_prompt_format="chat", student_top_logprobs=50, student_gguf="/keep/me.gguf")
    dialog = open_dialog(qtbot, original)
    assert dialog.settings() == original
    assert dialog.openai_box.isEnabled() and dialog.remote_box.isEnabled()
    assert not dialog.openai_box.isHidden() and dialog.gemini_box.isHidden()
    assert dialog.student_server_box.isEnabled() and dialog.student_local_box.isHidden()
    dialog.local_radio.setChecked(True)
    assert not dialog.openai_box.isEnabled() and not dialog.remote_box.isEnabled() and dialog.local_box.isEnabled()
    dialog.student_llama_radio.setChecked(True)
    assert not dialog.student_local_box.isHidden() and dialog.student_server_box.isHidden()
    s = dialog.settings()
    assert (s.teacher, s.student_backend) == ("local", "llama")
    # The hidden choices keep their values for a later switch back.
    assert (s.teacher_openai_base_url, s.teacher_openai_model) == ("http://127.0.0.1:11434/v1", "qwen2.5:7b")
    assert (s.student_base_url, s.student_model, s.student_prompt_format) == ("http://127.0.0.1:8080", "gemma", "chat")
    dialog.openai_radio.setChecked(True)
    dialog.student_server_radio.setChecked(True)
    dialog.student_model.setCurrentText("")
    dialog.prompt_format.setCurrentIndex(dialog.prompt_format.findData("completion"))
    dialog.top_logprobs.setValue(20)
    s = dialog.settings()
    assert (s.teacher, s.student_backend, s.student_model) == ("openai", "openai", None)
    assert (s.student_prompt_format, s.student_top_logprobs) == ("completion", 20)


def test_openai_fields_are_checked_on_ok(qtbot, no_keyring) -> None:  # type: ignore[no-untyped-def]
    dialog = open_dialog(qtbot, RunSettings(teacher="openai", student_backend="openai"))
    dialog.accept()
    assert dialog.result() != ModelsDialog.DialogCode.Accepted
    text = dialog.error_label.text()
    # The CLI's sentences (core.settings_check), naming this dialog's fields.
    assert ("The teacher on an OpenAI-compatible server needs the server's address: OpenAI-compatible server › "
            "Base URL (e.g. http://127.0.0.1:11434/v1 for Ollama") in text
    assert "needs the served model's name: OpenAI-compatible server › Model" in text
    assert "The student on an OpenAI-compatible server needs the server's address: Student server › Base URL" in text
    dialog.openai_url.setText("127.0.0.1:11434")
    dialog.openai_model.setCurrentText("qwen2.5:7b")
    dialog.student_url.setText("ftp://127.0.0.1:8080")
    dialog.accept()
    text = dialog.error_label.text()
    assert "OpenAI-compatible server › Base URL: The server URL '127.0.0.1:11434' is not an http(s) URL" in text
    assert "Student server › Base URL: The server URL 'ftp://127.0.0.1:8080' is not an http(s) URL" in text
    dialog.openai_url.setText("http://127.0.0.1:11434")
    dialog.student_url.setText("http://127.0.0.1:8080/v1")
    dialog.accept()
    assert dialog.result() == ModelsDialog.DialogCode.Accepted


def test_openai_key_is_bound_to_its_server(qtbot, tmp_path: Path,  # type: ignore[no-untyped-def]
                                           memory_keyring: MemoryKeyring) -> None:
    """A key saved beside a server address is that server's keychain entry: the student's server (another
    origin) does not see it, and nothing else (Gemini, the project file) does either."""
    dialog = open_dialog(qtbot, RunSettings(teacher="openai", teacher_openai_base_url="http://127.0.0.1:1/v1",
                                            teacher_openai_model="m", student_backend="openai",
                                            student_base_url="http://127.0.0.1:2/v1"))
    assert "No key is set" in dialog.openai_key.status.text() and "need none" in dialog.openai_key.status.text()
    dialog.openai_key.edit.setText(OPENAI_KEY)
    dialog.openai_key.save_btn.click()
    teacher_entry = ("pld-desktop", "openai-api-key@http://127.0.0.1:1")
    assert memory_keyring.store == {teacher_entry: OPENAI_KEY}  # not the Gemini entry, not any server's
    assert "saved for http://127.0.0.1:1 only" in dialog.openai_key.status.text()
    assert "No key is set" in dialog.student_key.status.text()  # another server: the key is not offered to it
    assert not dialog.student_key.forget_btn.isEnabled() and not dialog.forget_key_btn.isEnabled()
    dialog.openai_key.forget_btn.click()
    assert memory_keyring.store == {} and "No key is set" in dialog.openai_key.status.text()
    dialog.student_key.edit.setText(OPENAI_KEY)  # typed, then OK: saved for the student's server, not dropped
    dialog.accept()
    assert dialog.result() == ModelsDialog.DialogCode.Accepted
    assert memory_keyring.store == {("pld-desktop", "openai-api-key@http://127.0.0.1:2"): OPENAI_KEY}
    settings = dialog.settings()
    assert OPENAI_KEY not in json.dumps(settings.to_json())
    project = make_project(tmp_path)
    save_settings(project, settings)
    project.close()
    assert OPENAI_KEY.encode() not in (tmp_path / "p.pld").read_bytes()


def test_a_stored_server_key_goes_only_to_that_server(memory_keyring: MemoryKeyring) -> None:
    from pld_desktop.backends import secrets
    from pld_desktop.backends.factory import DefaultBackends
    secrets.set_api_key(OPENAI_KEY, "openai", server="https://api.example.test/v1")
    assert secrets.get_api_key("openai", server="https://API.example.test:443/other") == OPENAI_KEY  # same origin
    for other in ("http://api.example.test/v1", "https://api.example.test:8443/v1", "https://evil.test/v1", None):
        assert secrets.get_api_key("openai", server=other) is None, other
    # The backends read the key for the server they will call, so a project naming another server gets none.
    seen: list[str | None] = []
    import pld_desktop.backends.openai_teacher as ot
    real = ot.OpenAITeacher

    class Recording(real):  # type: ignore[misc, valid-type]
        def __init__(self, base_url: str, model: str, *, api_key: str | None = None, **kw: object) -> None:
            seen.append(api_key)
            raise RuntimeError("stop before any request")

    ot.OpenAITeacher = Recording
    try:
        for url in ("https://evil.test/v1", "https://api.example.test/v1"):
            with pytest.raises(RuntimeError, match="stop before"):
                DefaultBackends(trust=None).teacher(RunSettings(teacher="openai", teacher_openai_base_url=url,
                                                                teacher_openai_model="m"))
    finally:
        ot.OpenAITeacher = real
    assert seen == [None, OPENAI_KEY]


def test_openai_environment_key_is_named(qtbot, memory_keyring, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    dialog = open_dialog(qtbot, RunSettings(teacher="openai"))
    assert "environment variable OPENAI_API_KEY" in dialog.openai_key.status.text()
    assert "No key is set" in dialog.key_status.text()  # Gemini's entry is a different key
    assert OPENAI_KEY not in dialog.openai_key.status.text()


def test_openai_key_without_a_keychain_names_the_right_variable(qtbot, no_keyring) -> None:
    dialog = open_dialog(qtbot, RunSettings(teacher="openai", teacher_openai_base_url="http://127.0.0.1:1/v1",
                                            teacher_openai_model="m"))
    assert "OPENAI_API_KEY" in dialog.openai_key.status.text() and not dialog.openai_key.save_btn.isEnabled()
    dialog.openai_key.edit.setText(OPENAI_KEY)
    dialog.accept()
    assert dialog.result() != ModelsDialog.DialogCode.Accepted
    text = dialog.error_label.text()
    assert "OPENAI_API_KEY" in text and "GEMINI_API_KEY" not in text and OPENAI_KEY not in text


def openai_teacher_dialog(qtbot, url: str, model: str = "served-model") -> ModelsDialog:  # type: ignore[no-untyped-def]
    dialog = open_dialog(qtbot, RunSettings(teacher="openai", teacher_openai_base_url=url,
                                            teacher_openai_model=model))
    dialog.openai_key.edit.setText(OPENAI_KEY)  # typed, not saved: used for this test call only
    return dialog


def test_openai_teacher_connection_succeeds(qtbot, fake_openai: FakeOpenAI, no_keyring) -> None:
    fake_openai.script = lambda body: (200, ok_reply('{"answer": "OK"}'), {})
    dialog = openai_teacher_dialog(qtbot, fake_openai.url)
    dialog.test_btn.click()
    assert dialog.busy() and not dialog.test_btn.isEnabled()
    wait_idle(qtbot, dialog)
    text = dialog.teacher_result.text()
    assert text.startswith("✔") and "served-model answered" in text and "valid JSON" in text, text
    assert "30 tokens" in text and OPENAI_KEY not in text
    assert [dialog.openai_model.itemText(i) for i in range(dialog.openai_model.count())] == ["served-model"]
    sent = fake_openai.requests[0]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == f"Bearer {OPENAI_KEY}"
    assert sent["body"]["model"] == "served-model" and sent["body"]["response_format"]["type"] == "json_schema"
    assert len(fake_openai.requests) == 1


def test_openai_teacher_without_a_model_lists_the_served_ones(qtbot, fake_openai: FakeOpenAI, no_keyring) -> None:
    dialog = openai_teacher_dialog(qtbot, fake_openai.url.removesuffix("/v1"), model="")
    dialog.test_btn.click()
    wait_idle(qtbot, dialog)
    text = dialog.teacher_result.text()
    assert "it lists served-model" in text and "Choose the teacher model" in text, text
    assert fake_openai.requests == []  # listing only: no generation was attempted
    assert dialog.openai_model.count() == 1 and dialog.openai_model.currentText() == ""


def test_openai_teacher_failures_are_reported_in_words(qtbot, fake_openai: FakeOpenAI, no_keyring) -> None:
    fake_openai.script = lambda body: (401, {"error": {"message": f"Incorrect API key provided: {OPENAI_KEY}"}}, {})
    dialog = openai_teacher_dialog(qtbot, fake_openai.url)
    dialog.test_btn.click()
    wait_idle(qtbot, dialog)
    text = dialog.teacher_result.text()
    assert text.startswith("✘ Failed:") and "API key was rejected" in text and OPENAI_KEY not in text
    assert len(fake_openai.requests) == 1  # a connection test does not retry

    down = openai_teacher_dialog(qtbot, free_port_url())
    down.test_btn.click()
    wait_idle(qtbot, down)
    text = down.teacher_result.text()
    assert text.startswith("✘ Failed:") and "Could not reach" in text and "Is it running?" in text, text

    bad = openai_teacher_dialog(qtbot, "localhost:11434")
    bad.test_btn.click()
    assert not bad.busy() and "not an http(s) URL" in bad.teacher_result.text()


def logprob_server_script(body: dict) -> tuple[int, dict, dict]:  # type: ignore[type-arg]
    """A completion server with logprobs and no grammar (like vLLM): " weather" is far likelier than " food"."""
    if "grammar" in body:
        return 400, {"error": {"message": "Unrecognized request argument supplied: grammar"}}, {}
    top = {" weather": -0.1, " food": -2.4, " the": -3.0}
    logprobs = {"tokens": [" weather"], "token_logprobs": [-0.1], "top_logprobs": [top]}
    return 200, {"choices": [{"index": 0, "text": " weather", "finish_reason": "length", "logprobs": logprobs}]}, {}


def test_student_server_check_classifies_one_text(qtbot, fake_openai: FakeOpenAI, no_keyring) -> None:
    import math
    fake_openai.script = logprob_server_script
    dialog = open_dialog(qtbot, RunSettings(student_backend="openai", student_base_url=fake_openai.url,
                                            student_top_logprobs=7))
    dialog.student_key.edit.setText(OPENAI_KEY)
    dialog.server_check_btn.click()
    assert dialog.busy() and not dialog.server_check_btn.isEnabled()
    wait_idle(qtbot, dialog)
    check = dialog.last_server_check
    assert check is not None, dialog.student_result.text()
    assert (check.model, check.scoring, check.grammar, check.label) == ("served-model", "logprobs", False, "weather")
    assert check.probs["weather"] == pytest.approx(1 / (1 + math.exp(-2.3)))
    text = dialog.student_result.text()
    assert text.startswith("✔") and "it lists served-model" in text and "weather 0.91" in text and "food 0.09" in text
    assert "next-token logprobs" in text and OPENAI_KEY not in text
    assert dialog.student_model.count() == 1 and dialog.student_model.currentText() == ""  # offered, not forced
    prompts = [r for r in fake_openai.requests if r["path"] == "/v1/completions" and "grammar" not in r["body"]]
    assert prompts and all(r["body"]["logprobs"] == 7 and r["auth"] == f"Bearer {OPENAI_KEY}" for r in prompts)
    assert any(model_probe.PROBE_TEXT in r["body"]["prompt"] for r in prompts)


def test_student_server_down_or_without_logprobs(qtbot, fake_openai: FakeOpenAI, no_keyring) -> None:
    dialog = open_dialog(qtbot, RunSettings(student_backend="openai", student_base_url=free_port_url()))
    dialog.server_check_btn.click()
    wait_idle(qtbot, dialog)
    text = dialog.student_result.text()
    assert text.startswith("✘ Could not use the student server:") and "Is it running?" in text, text
    assert dialog.last_server_check is None

    def no_logprobs(body: dict) -> tuple[int, dict, dict]:  # type: ignore[type-arg]
        if "grammar" in body or "prompt" in body:
            return 400, {"error": {"message": "unsupported"}}, {}
        return 200, {"choices": [{"message": {"content": '{"label": "food"}'}, "finish_reason": "stop"}]}, {}
    fake_openai.script = no_logprobs
    dialog.student_url.setText(fake_openai.url)
    dialog.server_check_btn.click()
    wait_idle(qtbot, dialog)
    text = dialog.student_result.text()
    assert "constrained answers" in text and "probability 1.0" in text and "food (weather 0.00, food 1.00)" in text

    dialog.student_url.clear()
    dialog.server_check_btn.click()
    assert not dialog.busy() and "needs the server's address: Student server › Base URL" in dialog.student_result.text()


def test_cancelled_server_check_ignores_the_late_result(qtbot, fake_openai: FakeOpenAI, no_keyring) -> None:
    import time

    def slow(body: dict) -> tuple[int, dict, dict]:  # type: ignore[type-arg]
        time.sleep(0.5)
        return logprob_server_script(body)
    fake_openai.script = slow
    dialog = open_dialog(qtbot, RunSettings(student_backend="openai", student_base_url=fake_openai.url))
    dialog.server_check_btn.click()
    dialog.cancel_btn.click()
    assert not dialog.busy() and dialog.server_check_btn.isEnabled() and "Cancelled" in dialog.student_result.text()
    qtbot.waitUntil(lambda: not task_keeper().running(), timeout=30000)  # the abandoned check has ended
    qtbot.wait(50)
    assert "Cancelled" in dialog.student_result.text() and dialog.last_server_check is None


@pytest.mark.slow
def test_student_server_check_on_llama_cpp_server(qtbot) -> None:  # type: ignore[no-untyped-def]
    """The bundled Gemma 3 270M behind llama_cpp.server: listed, logprob-scored, one real classification."""
    pytest.importorskip("uvicorn")
    from pld_desktop.backends.bundled import bundled_student_path
    proc, url = start_llama_server(bundled_student_path(), "--n_ctx", "2048")
    try:
        dialog = open_dialog(qtbot, RunSettings(student_backend="openai", student_base_url=url))
        dialog.server_check_btn.click()
        wait_idle(qtbot, dialog, timeout=180000)
        check = dialog.last_server_check
        assert check is not None, dialog.student_result.text()
        assert check.scoring == "logprobs" and check.models and check.model in check.models
        assert f"context {check.n_ctx:,} tokens" in dialog.student_result.text()
        assert set(check.probs) == set(model_probe.PROBE_LABELS)
        assert sum(check.probs.values()) == pytest.approx(1.0) and 0.0 < max(check.probs.values()) < 1.0
        assert check.label in dialog.student_result.text()
    finally:
        stop_server(proc)
