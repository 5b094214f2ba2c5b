"""Shared test setup: headless Qt, offline model hubs, the --fast flag that skips real-model tests, and the
fixtures several test modules use (a distilled project built once, keychains, fake servers, QSettings)."""

from __future__ import annotations

import os

# Before any Qt or Hugging Face import (both read these at import time).
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The per-machine trust store (accepted servers and model files) of the tests, never the user's own; `pld`
# subprocesses inherit it.
# Each pytest-xdist worker gets its own: the workers inherit the environment of the process that started them.
if not os.environ.get("PLD_CONFIG_DIR") or os.environ.get("PYTEST_XDIST_WORKER"):
    import tempfile
    os.environ["PLD_CONFIG_DIR"] = tempfile.mkdtemp(
        prefix=f"pld-test-config-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-")

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pld_desktop.core.project import Project

    from .fake_gemini import FakeGemini
    from .helpers import CliResult, MemoryKeyring
    from .openai_server import FakeOpenAI


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fast", action="store_true", default=False,
                     help="skip the slow tests that run the real bundled models")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--fast"):
        return
    skip = pytest.mark.skip(reason="real-model test skipped by --fast")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# ---------------------------------------------------------------------------
# A distilled project: the four phases run once on the demo CSV with the test doubles
# ---------------------------------------------------------------------------
@pytest.fixture(scope="session")
def distilled_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project after a full run (phases 1-4, `helpers.settings()`, FakeBackends), built once per session.

    Shared by every test that asks for it: read it or copy it, never change it (`distilled_path` is a copy).
    """
    from pld_desktop.core.pipeline import run_pipeline
    from pld_desktop.core.progress import SilentProgress

    from .fakes import FakeBackends
    from .helpers import make_project, settings

    folder = tmp_path_factory.mktemp("distilled")
    project = make_project(folder)
    assert run_pipeline(project, settings(), FakeBackends(), SilentProgress()).status == "done"
    project.close()
    return folder / "p.pld"


@pytest.fixture
def distilled_path(distilled_file: Path, tmp_path: Path) -> Path:
    """This test's own copy of the distilled project, at tmp_path / "p.pld"."""
    shutil.copy(distilled_file, tmp_path / "p.pld")
    return tmp_path / "p.pld"


@pytest.fixture
def distilled_project(distilled_path: Path) -> Iterator[Project]:
    """This test's own copy of the distilled project, opened (closed after the test)."""
    from pld_desktop.core.project import Project

    with Project.open(distilled_path) as opened:
        yield opened


@pytest.fixture
def project_with_rules(tmp_path: Path) -> Path:
    """A tiny project (6 examples a label) with three hand-written rules as its chosen rule set; no phase run."""
    from pld_desktop.core.project import Project
    from pld_desktop.core.prompts import PromptRule, build_rules_prompt, sha256_text
    from pld_desktop.core.settings import RunSettings

    from .crash_harness import make_project, tiny_csv
    from .helpers import PROBE_RULES

    task = "Classify the customer message."
    path = make_project(tmp_path / "p.pld", tiny_csv(tmp_path / "t.csv", per_label=6),
                        RunSettings(task=task, student_n_ctx=1024))
    with Project.open(path) as project:
        labels = project.labels()
        prompt = build_rules_prompt(task, labels, [PromptRule(r.text, r.label) for r in PROBE_RULES], {})
        rs_id = project.add_rule_set(parent_id=None, reason="probe test", origin="synthesis", round=None,
                                     task=task, labels=list(labels), meanings={},
                                     rules=PROBE_RULES, prompt_text=prompt, prompt_sha256=sha256_text(prompt))
        project.set_setting("chosen_rule_set_id", rs_id)
    return path


# ---------------------------------------------------------------------------
# Keychains, fake servers, QSettings
# ---------------------------------------------------------------------------
@pytest.fixture
def memory_keyring() -> Iterator[MemoryKeyring]:
    """An in-memory OS keychain installed as keyring's backend for this test; `.store` holds what was saved."""
    import keyring

    from .helpers import MemoryKeyring

    previous = keyring.get_keyring()
    ring = MemoryKeyring()
    keyring.set_keyring(ring)
    yield ring
    keyring.set_keyring(previous)


@pytest.fixture
def no_keyring() -> Iterator[None]:
    """No usable OS keychain for this test (keyring's fail backend)."""
    import keyring
    from keyring.backends import fail

    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    yield
    keyring.set_keyring(previous)


@pytest.fixture
def fake_gemini() -> Iterator[FakeGemini]:
    """A started FakeGemini; use `fake_gemini.base_url` as the client's base URL."""
    from .fake_gemini import FakeGemini

    with FakeGemini() as server:
        yield server


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A scripted OpenAI REST server on 127.0.0.1 (openai_server.FakeOpenAI), shut down after the test."""
    from .openai_server import FakeOpenAI

    server = FakeOpenAI()
    yield server
    server.close()


@pytest.fixture
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own QSettings (recent files, geometry) and never touches the user's."""
    from PySide6.QtCore import QSettings

    QSettings.setDefaultFormat(QSettings.Format.IniFormat)
    QSettings.setPath(QSettings.Format.IniFormat, QSettings.Scope.UserScope, str(tmp_path / "qsettings"))
    monkeypatch.setattr(QSettings, "__init__", _ini_settings_init(tmp_path / "qsettings" / "pld.ini"))


def _ini_settings_init(path: Path) -> Any:
    from PySide6.QtCore import QSettings

    original = QSettings.__init__

    def init(self: QSettings, *args: Any) -> None:
        if args:
            original(self, *args)
        else:
            original(self, str(path), QSettings.Format.IniFormat)
    return init


# ---------------------------------------------------------------------------
# `pld` in-process
# ---------------------------------------------------------------------------
@pytest.fixture
def pld_main() -> Callable[..., CliResult]:
    """`pld_main("init", ...)` runs the CLI's main(argv) in this process (`helpers.pld_in_process`)."""
    from .helpers import pld_in_process

    return pld_in_process
