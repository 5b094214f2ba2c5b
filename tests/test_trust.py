"""Trust lives on this machine: a project file's servers and model files are used only once accepted here."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pld_desktop.backends.trust import (
    TrustStore,
    UntrustedSettingError,
    endpoint_id,
    reset_to_defaults,
    settings_in_use,
)
from pld_desktop.core.settings import RunSettings

from . import crash_harness as ch

KEY = "AIzaSyCOLLEAGUE-0123456789abcdefTRUST"


class RecordingServer:
    """An HTTP server on 127.0.0.1 that records every request (a quick 400: a run that does reach it fails fast)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                owner.requests.append((self.command, self.path, dict(self.headers)))
                body = b'{"error": {"code": 400, "message": "recorded", "status": "INVALID_ARGUMENT"}}'
                self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = _any

            def log_message(self, *args: object) -> None:
                pass
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> RecordingServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[RecordingServer]:
    with RecordingServer() as s:
        yield s


def foreign_project(tmp_path: Path, settings: RunSettings) -> Path:
    """A project prepared elsewhere: built without touching this machine's trust store."""
    from pld_desktop.core.dataset import ColumnMapping, SplitSettings, load_dataset
    from pld_desktop.core.project import Project
    from pld_desktop.core.settings import save_settings
    csv_path = ch.tiny_csv(tmp_path / "s.csv", per_label=4)
    ds = load_dataset(csv_path, ColumnMapping(("message",), "label", id_column="id"), SplitSettings())
    path = tmp_path / "shared.pld"

    def fill(project: Project) -> None:
        project.store_dataset(ds, csv_path.name)
        save_settings(project, settings)
    Project.build(path, fill)
    return path


def colleague_env(tmp_path: Path) -> dict[str, str]:
    # The colleague's machine: their own (empty) trust store and their Gemini key in the environment.
    return ch.pld_env(KEY, PLD_CONFIG_DIR=str(tmp_path / "colleague-config"))


def test_a_shared_project_sends_nothing_to_its_own_server(tmp_path: Path, server: RecordingServer) -> None:
    path = foreign_project(tmp_path, ch.gemini_settings(server.url))
    env = colleague_env(tmp_path)
    for command in (("run", str(path), "--yes"), ("run", str(path), "--phase", "1", "--yes")):
        r = ch.run_pld(*command, env=env, timeout=300)
        assert r.returncode == 2, r.stderr[-2000:]
        assert server.requests == []  # not one request, so neither the key nor an example left the machine
        assert endpoint_id(server.url) in r.stderr and "--trust-project-settings" in r.stderr, r.stderr
        assert KEY not in r.stdout + r.stderr
    # The test can fail: once accepted, the run does talk to that server.
    r = ch.run_pld("run", str(path), "--phase", "1", "--yes", "--trust-project-settings", env=env, timeout=300)
    assert server.requests, r.stderr[-2000:]
    assert TrustStore(tmp_path / "colleague-config" / "trusted.json").is_trusted(
        settings_in_use(ch.gemini_settings(server.url))[0])


def test_passing_the_option_again_accepts_it(tmp_path: Path, server: RecordingServer) -> None:
    path = foreign_project(tmp_path, ch.gemini_settings(server.url))
    env = colleague_env(tmp_path)
    ch.run_pld("run", str(path), "--phase", "1", "--yes", "--base-url", server.url, env=env, timeout=300)
    assert server.requests
    n = len(server.requests)
    # Remembered on this machine: a plain rerun is allowed now.
    # (A rerun does not resend given-up items, so acceptance shows as the absence of the refusal and of any
    # question about the server, not as new requests.)
    r = ch.run_pld("run", str(path), "--phase", "1", "--yes", env=env, timeout=300)
    assert "nothing was sent" not in r.stderr and "--trust-project-settings" not in r.stderr, r.stderr
    assert len(server.requests) >= n


def test_a_foreign_model_path_stops_eval_before_loading(tmp_path: Path) -> None:
    fake = tmp_path / "elsewhere" / "student.gguf"
    fake.parent.mkdir()
    fake.write_bytes(b"GGUF not really")
    path = foreign_project(tmp_path, RunSettings(student_gguf=str(fake)))
    r = ch.run_pld("eval", str(path), env=colleague_env(tmp_path), timeout=300)
    assert r.returncode == 2 and str(fake.resolve()) in r.stderr and "--student" in r.stderr, r.stderr


def test_factory_refuses_an_untrusted_backend(tmp_path: Path, server: RecordingServer) -> None:
    from pld_desktop.backends.factory import DefaultBackends
    store = TrustStore(tmp_path / "t.json")
    settings = RunSettings(teacher="openai", teacher_openai_base_url=server.url + "v1", teacher_openai_model="m")
    backends = DefaultBackends(trust=store)
    with pytest.raises(UntrustedSettingError, match="127.0.0.1"):
        backends.teacher(settings)
    assert server.requests == []
    store.trust(settings_in_use(settings))
    assert store.untrusted(settings) == []
    # Another port of the same host is another server.
    other = RunSettings(teacher="openai", teacher_openai_base_url="http://127.0.0.1:1/v1", teacher_openai_model="m")
    assert [i.field for i in store.untrusted(other)] == ["teacher_openai_base_url"]
    backends.close()


def test_every_default_provider_checks_this_machines_trust(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The window's views (compare, rules) build `DefaultBackends()` themselves: the guard is on by default."""
    from pld_desktop.backends.factory import DefaultBackends
    monkeypatch.setenv("PLD_CONFIG_DIR", str(tmp_path / "machine"))
    settings = RunSettings(student_backend="openai", student_base_url="http://192.0.2.7:9/v1")
    with pytest.raises(UntrustedSettingError, match="192.0.2.7"):
        DefaultBackends().student(settings)


def test_use_defaults_resets_to_the_bundled_models() -> None:
    settings = RunSettings(teacher="openai", teacher_openai_base_url="http://evil.example/v1",
                           student_backend="openai", student_base_url="http://evil.example:8080/v1",
                           student_gguf="/tmp/x.gguf")
    reset = reset_to_defaults(settings, settings_in_use(settings))
    assert settings_in_use(reset) == [] and reset.teacher == "local" and reset.student_backend == "llama"
    assert settings.teacher == "openai"  # a copy


def test_endpoint_id_normalises_scheme_host_and_port() -> None:
    assert endpoint_id("https://Example.COM/v1beta?x=1") == "https://example.com:443"
    assert endpoint_id("http://127.0.0.1:8080/v1") == "http://127.0.0.1:8080"
    assert endpoint_id("example.com") == "https://example.com:443"


@pytest.mark.parametrize("choice", ["Accept", "Use defaults", "Cancel"])
def test_window_asks_before_using_a_projects_server(qtbot: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    choice: str) -> None:
    from PySide6.QtWidgets import QMessageBox

    from pld_desktop.core.project import Project
    from pld_desktop.core.settings import load_settings, save_settings
    from pld_desktop.ui.app import MainWindow

    from .fakes import FakeBackends
    from .helpers import make_project
    monkeypatch.setenv("PLD_CONFIG_DIR", str(tmp_path / "config"))
    project = make_project(tmp_path)
    save_settings(project, RunSettings(teacher="openai", teacher_openai_base_url="http://192.0.2.7:9/v1",
                                       teacher_openai_model="m"))
    project.close()
    shown: list[str] = []

    def fake_exec(box: QMessageBox) -> int:
        shown.append(box.text())
        button = next(b for b in box.buttons() if b.text().replace("&", "") == choice)
        button.click()
        return 0
    monkeypatch.setattr(QMessageBox, "exec", fake_exec)
    window = MainWindow(backends_factory=lambda: FakeBackends())
    qtbot.addWidget(window)  # type: ignore[attr-defined]
    window.open_project(tmp_path / "p.pld")
    started: list[list[int]] = []

    def no_run(*args: object, **kwargs: object) -> None:  # the run itself is not this test's business
        started.append(list(args[1]))  # type: ignore[call-overload]
        raise RuntimeError("stop here")
    monkeypatch.setattr("pld_desktop.ui.app.PipelineTask", no_run)
    try:
        window.run_phases([1])
    except RuntimeError:
        pass
    assert shown and "http://192.0.2.7:9" in shown[0]
    store = TrustStore(tmp_path / "config" / "trusted.json")
    with Project.open(tmp_path / "p.pld", read_only=True) as p:
        settings = load_settings(p)
    if choice == "Accept":
        assert started == [[1]] and store.untrusted(settings) == []
    elif choice == "Use defaults":
        assert started == [[1]] and settings.teacher == "local" and settings.teacher_openai_base_url is None
    else:
        assert started == [] and store.untrusted(settings)
    window.close()
