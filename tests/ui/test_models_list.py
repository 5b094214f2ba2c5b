"""The models dialog's "On this machine" tab (ui/models_list.py): the list, Use as student / teacher, fetch with
progress, a keychain token for a gated repo, and cancel; against a temp home and the local Hub server."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub.constants
import pytest

from pld_desktop.backends import model_fetch
from pld_desktop.core.settings import RunSettings
from pld_desktop.ui.models_dialog import ModelsDialog
from tests.fake_hub import FakeHub, HubFile, HubRepo
from tests.gguf_files import write_tiny_gguf
from tests.helpers import MemoryKeyring, home_with_three_stores

TOKEN = "hf_dialog_token_0123456789"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "OLLAMA_MODELS", "LLAMA_CACHE", "HF_TOKEN",
                "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / ".cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / ".config"))
    return tmp_path


@pytest.fixture
def hub(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    data = write_tiny_gguf(tmp_path_factory.mktemp("src") / "g.gguf", name="Gated Tiny",
                           weight_elements=6_000_000).read_bytes()
    server = FakeHub(repos={"org/gated-GGUF": HubRepo({"g.gguf": HubFile(data)}, gated=True, token=TOKEN),
                            "org/open-GGUF": HubRepo({"o.gguf": HubFile(data)})}).start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setattr(model_fetch, "_USER_OFFLINE", False)  # the test session itself runs offline (conftest)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    yield server
    server.stop()


def _dialog(qtbot) -> ModelsDialog:  # type: ignore[no-untyped-def]
    dialog = ModelsDialog(RunSettings(student_n_ctx=2048))
    qtbot.addWidget(dialog)
    dialog.tabs.setCurrentIndex(dialog.tabs.count() - 1)  # showing the tab starts the scan
    panel = dialog.model_list
    qtbot.waitUntil(lambda: not panel.busy() and bool(panel.result.text()), timeout=60_000)
    return dialog


def _row(dialog: ModelsDialog, source: str) -> int:
    return next(i for i, m in enumerate(dialog.model_list.models) if m.source == source)


def test_the_list_shows_each_store_and_fills_in_student_and_teacher(qtbot, home: Path) -> None:  # type: ignore[no-untyped-def]
    paths = home_with_three_stores(home)
    dialog = _dialog(qtbot)
    panel = dialog.model_list
    table = panel.table
    assert table.rowCount() == 3
    archs = {table.item(r, 1).text(): table.item(r, 2).text() for r in range(3)}
    assert archs == {"Hugging Face cache": "gemma3", "LM Studio": "qwen2", "Ollama": "llama"}
    ollama = _row(dialog, "Ollama")
    assert table.item(ollama, 0).text() == "smollm2:135m"
    assert table.item(ollama, 8).text().endswith("✔")  # it fits
    assert "2,048 tokens of context" in table.item(ollama, 8).toolTip()  # sized for the dialog's context setting

    assert not panel.student_btn.isEnabled()  # nothing selected yet
    table.selectRow(_row(dialog, "LM Studio"))
    panel.student_btn.click()
    table.selectRow(ollama)
    panel.teacher_btn.click()
    settings = dialog.settings()
    assert settings.student_gguf == str(paths["lmstudio"]) and settings.student_backend == "llama"
    assert settings.teacher == "local" and settings.teacher_gguf == str(paths["ollama"])


def test_fetch_a_gated_model_with_the_keychain_token(qtbot, home: Path, hub: FakeHub,  # type: ignore[no-untyped-def]
                                                      memory_keyring: MemoryKeyring) -> None:
    dialog = _dialog(qtbot)
    panel = dialog.model_list
    assert panel.table.rowCount() == 0 and "No GGUF models found" in panel.result.text()
    panel.fetch_combo.setCurrentText("org/gated-GGUF:g.gguf")
    panel.fetch_btn.click()
    qtbot.waitUntil(lambda: not panel.busy(), timeout=60_000)
    assert "gated" in panel.result.text() and "No Hugging Face token" in panel.result.text()

    dialog.hf_key.edit.setText(TOKEN)
    dialog.hf_key.save_btn.click()
    assert memory_keyring.store[("pld-desktop", "huggingface-token")] == TOKEN
    seen: list[int] = []
    panel.fetch_btn.click()
    panel.runner.reported.connect(lambda done, total, msg: seen.append(done))
    qtbot.waitUntil(lambda: not panel.busy() and panel.table.rowCount() == 1, timeout=120_000)
    assert panel.result.text().startswith("✔ org/gated-GGUF/g.gguf") and "sha256 verified" in panel.result.text()
    assert seen and max(seen) > 0
    chosen = panel.selected()
    assert chosen is not None and chosen.label == "org/gated-GGUF/g.gguf" and chosen.name == "Gated Tiny"
    assert any(r["authorization"] == f"Bearer {TOKEN}" for r in hub.requests)


def test_cancel_stops_the_download_and_keeps_the_part(qtbot, home: Path, hub: FakeHub) -> None:  # type: ignore[no-untyped-def]
    dialog = _dialog(qtbot)
    panel = dialog.model_list
    data = hub.repos["org/open-GGUF"].files["o.gguf"].content
    partial = (home / ".cache" / "huggingface" / "hub" / "models--org--open-GGUF" / "blobs"
               / (hashlib.sha256(data).hexdigest() + ".incomplete"))
    hub.stall_after = 12 << 20
    panel.fetch_combo.setCurrentText("org/open-GGUF:o.gguf")
    panel.fetch_btn.click()
    qtbot.waitUntil(lambda: partial.exists() and partial.stat().st_size >= 10 << 20, timeout=60_000)
    assert not panel.cancel_btn.isHidden() and panel.busy()
    panel.cancel_btn.click()
    hub.stall_after = None  # the connection drops; the next bytes find the cancel flag
    qtbot.waitUntil(lambda: not panel.busy(), timeout=60_000)
    assert "Cancelled" in panel.result.text() and "resumes" in panel.result.text()
    assert 10 << 20 <= partial.stat().st_size < len(data)


@pytest.mark.slow
def test_probe_from_the_list_times_the_real_student(qtbot, home: Path,  # type: ignore[no-untyped-def]
                                                    project_with_rules: Path) -> None:
    home_with_three_stores(home)
    dialog = ModelsDialog(RunSettings(student_n_ctx=1024), project_path=project_with_rules)
    qtbot.addWidget(dialog)
    dialog.tabs.setCurrentIndex(dialog.tabs.count() - 1)
    panel = dialog.model_list
    qtbot.waitUntil(lambda: not panel.busy() and panel.table.rowCount() == 3, timeout=60_000)
    panel.table.selectRow(_row(dialog, "Hugging Face cache"))  # the bundled Gemma 3 270M behind an HF layout
    panel.probe_btn.click()
    assert panel.busy() and not panel.probe_btn.isEnabled()
    qtbot.waitUntil(lambda: not panel.busy(), timeout=300_000)
    text = panel.result.text()
    assert text.startswith("✔ Gemma 3 270m"), text
    assert "Prompt: version 1" in text and "per example over 4 examples" in text
