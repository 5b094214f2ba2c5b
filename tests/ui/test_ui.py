"""The main window end to end, offscreen: new project -> import -> run all phases -> edit, undo -> compare -> export
-> quit -> reopen, plus closing while a phase runs and opening bad files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QMimeData, QUrl
from PySide6.QtWidgets import QMessageBox

from pld_desktop.core.project import Project
from pld_desktop.resources import demo_csv
from pld_desktop.ui.app import TAB_NAMES, MainWindow, _dropped_file
from pld_desktop.ui.import_dialog import ImportDialog
from pld_desktop.ui.results_view import HistoryModel

from ..fakes import FakeBackends, FakeTeacher
from ..heartbeat import GuiHeartbeat
from ..helpers import make_project

pytestmark = pytest.mark.usefixtures("isolated_settings")  # each test gets its own QSettings (conftest)


def _import_through_the_dialog(qtbot: Any, window: MainWindow, csv: Path, target: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Drive File > New Project from CSV as a user would: the dialog opens, the user presses Create."""
    def fake_exec(dialog: ImportDialog) -> int:
        qtbot.waitUntil(lambda: not dialog.is_busy(), timeout=30000)
        assert dialog.ok_button.isEnabled(), dialog.problems()
        with qtbot.waitSignal(dialog.project_created, timeout=30000):
            dialog.start_create(target)
        return ImportDialog.DialogCode.Accepted
    monkeypatch.setattr(ImportDialog, "exec", fake_exec)
    window.new_project(csv)


def _assert_results_history(window: MainWindow) -> None:
    """The Results tab lists both baselines, and the pipeline's choice with its test score."""
    model = window.views["results"].model
    names = [model.values(r)[0] for r in range(model.rowCount())]
    assert names[:2] == ["Zero-shot", "5-shot"], names
    choice = model.history.pipeline_choice
    row = names.index(f"v{choice}")
    assert "pipeline's choice" in model.values(row)[1] and model.values(row)[HistoryModel.COL_TEST] is not None


class _HeartbeatTeacher(FakeTeacher):
    """The fake teacher, which waits inside its first call until the GUI thread has turned a few times."""

    def __init__(self, heartbeat: GuiHeartbeat) -> None:
        super().__init__()
        self.heartbeat = heartbeat

    def generate(self, request: Any) -> Any:
        self.heartbeat.check_from_worker()
        return super().generate(request)


def test_full_gui_flow(qtbot: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    heartbeat = GuiHeartbeat()
    window = MainWindow(backends_factory=lambda: FakeBackends(teacher=_HeartbeatTeacher(heartbeat)))
    qtbot.addWidget(window)
    window.show()
    assert window.stack.currentIndex() == 0, "a new user starts on the welcome page"

    # New project from a CSV through the import dialog.
    target = tmp_path / "bank.pld"
    _import_through_the_dialog(qtbot, window, demo_csv(), target, monkeypatch)
    assert window.project_path == target.resolve()
    assert "bank.pld" in window.windowTitle() and "105 rows" in window.title.text()
    assert window.stack.currentIndex() == 1

    # Run all phases in the background; the event loop keeps turning.
    window.run_all()
    assert window.worker is not None and not window.run_btn.isEnabled() and window.cancel_btn.isEnabled()
    with qtbot.waitSignal(window.runner.succeeded, timeout=120000) as blocker:
        pass
    heartbeat.stop()
    assert blocker.args[0][0] == "done", blocker.args
    assert heartbeat.proven is True, "the event loop kept turning while the phases ran"
    qtbot.waitUntil(lambda: window.worker is None)
    assert all("done" in card.state.text() for card in window.cards.values())
    assert "calls" in window.cards[1].teacher.text()
    _assert_results_history(window)

    # The rules editor shows the pipeline's choice with conflicts highlighted.
    editor = window.views["rules"]
    window.tabs.setCurrentIndex(TAB_NAMES.index("Rules"))
    start_version = editor.model.rule_set_id
    first = editor.model.index(0, 1)
    original = first.data()
    editor.conflicts_only.setChecked(True)
    assert editor.proxy.rowCount() >= 1, "the fake run produces conflicts"
    editor.conflicts_only.setChecked(False)

    # Edit a rule (a new version), then undo it through the window's Edit menu (another new version).
    assert editor.model.setData(first, "If the message says the card was stolen, answer fraud_report.")
    edited = editor.model.rule_set_id
    assert edited != start_version
    undo = next(a for a in window.edit_menu.actions() if a.text().startswith("Undo"))
    undo.trigger()
    assert editor.model.index(0, 1).data() == original
    assert editor.model.rule_set_id not in (start_version, edited)
    with Project.open(target, read_only=True) as project:
        assert project.rule_set(edited).parent_id == start_version
        assert project.get_setting("edited_rule_set_id") == editor.model.rule_set_id

    # Compare the edited version with the pipeline's choice on the dev split.
    compare = window.views["compare"]
    compare.refresh_choices()
    compare.select_prompts(("version", edited), ("version", start_version))
    compare.select_examples("split", "dev")
    with qtbot.waitSignal(compare.finished, timeout=60000) as done:
        compare.run()
    result = done.args[0]
    assert len(result.rows) > 0 and 0.0 <= result.p_value <= 1.0

    # Export the current version: .txt is exactly the version's prompt.
    out = tmp_path / "exports"
    out.mkdir()
    monkeypatch.setattr("pld_desktop.ui.app.QFileDialog.getExistingDirectory", lambda *a, **k: str(out))
    written = window.export(("txt", "md", "json"))
    assert sorted(p.suffix for p in written) == [".json", ".md", ".txt"]
    current = window._current_rule_set_id()
    with Project.open(target, read_only=True) as project:
        assert written[0].read_text(encoding="utf-8") == project.rule_set(current).prompt_text
    assert json.loads(next(p for p in written if p.suffix == ".json").read_text())["rule_set"]["id"] == current

    # Quit on the Rules tab, reopen: the data, versions, evaluations and the last view are back.
    window.tabs.setCurrentIndex(TAB_NAMES.index("Rules"))
    window.close()
    assert window.project is None
    again = MainWindow(backends_factory=FakeBackends)
    qtbot.addWidget(again)
    assert str(target.resolve()) in again._recent()
    again.open_project(target)
    assert again.tabs.currentIndex() == TAB_NAMES.index("Rules")
    assert again.views["rules"].model.rule_set_id == current
    _assert_results_history(again)

    # "Score on dev" scores the working version, its parent
    # and both baselines on dev. (Undo made its prompt equal v1's, so the history already knows its dev score.)
    results = again.views["results"]
    with qtbot.waitSignal(results.scoring_finished, timeout=60000) as scored:
        assert results.score("dev")
    assert scored.args[0] == "done", scored.args
    names = [results.model.values(r)[0] for r in range(results.model.rowCount())]
    values = results.model.values(names.index(f"v{current}"))
    assert "working" in values[HistoryModel.COL_MARKS]
    for col in (HistoryModel.COL_DEV, HistoryModel.COL_DEV_PARENT, HistoryModel.COL_DEV_ZERO, HistoryModel.COL_DEV_FEW):
        assert values[col] is not None, HistoryModel.HEADERS[col]
    assert all("done" in card.state.text() for card in again.cards.values())
    again.close()


def test_closing_while_a_phase_runs_asks_then_stops_cleanly(qtbot: Any, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    make_project(tmp_path).close()
    window = MainWindow(backends_factory=lambda: FakeBackends(FakeTeacher(delay_s=0.1, max_concurrency=2)))
    qtbot.addWidget(window)
    window.show()
    window.open_project(tmp_path / "p.pld")
    answers = [QMessageBox.StandardButton.No, QMessageBox.StandardButton.Yes]
    monkeypatch.setattr("pld_desktop.ui.app.QMessageBox.question", lambda *a, **k: answers.pop(0))
    window.run_phases([1])
    worker = window.worker
    assert worker is not None
    qtbot.waitUntil(lambda: window.cards[1].bar.value() > 0, timeout=30000)
    window.close()
    assert window.isVisible() and window.worker is not None, "'No' keeps the window and the run"
    with qtbot.waitSignal(window.runner.succeeded, timeout=60000) as blocker:
        window.close()  # 'Yes': cancel, then close once the worker stops
    assert blocker.args[0][0] == "cancelled"
    qtbot.waitUntil(lambda: not window.isVisible(), timeout=10000)
    with Project.open(tmp_path / "p.pld", read_only=True) as project:
        assert project.integrity_check() == "ok"
        assert project.phase_states()[1]["state"] == "cancelled"
        kept = len(project.micro_rule_example_ids())
        assert 0 < kept < len(project.examples(split="train")), "completed items are kept for a resume"


def test_opening_a_bad_file_warns_and_keeps_the_window(qtbot: Any, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.pld"
    bad.write_text("not a project")
    before = bad.read_bytes()
    shown: list[str] = []
    monkeypatch.setattr("pld_desktop.ui.app.QMessageBox.warning", lambda *a: shown.append(a[2]))
    window = MainWindow()
    qtbot.addWidget(window)
    window.open_project(bad)
    assert shown and "not a PLD project" in shown[0]
    assert window.project_path is None and bad.read_bytes() == before


def test_dropping_files(qtbot: Any, tmp_path: Path) -> None:
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(tmp_path / "x.csv"))])
    assert _dropped_file(mime) == tmp_path / "x.csv"
    mime.setUrls([QUrl.fromLocalFile(str(tmp_path / "a.csv")), QUrl.fromLocalFile(str(tmp_path / "b.csv"))])
    assert _dropped_file(mime) is None, "one file at a time"
    mime.setUrls([QUrl.fromLocalFile(str(tmp_path / "x.exe"))])
    assert _dropped_file(mime) is None


def test_unreadable_csv_is_refused_before_the_dialog(qtbot: Any, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    shown: list[str] = []
    monkeypatch.setattr("pld_desktop.ui.app.QMessageBox.warning", lambda *a: shown.append(a[2]))
    window = MainWindow()
    qtbot.addWidget(window)
    window.new_project(tmp_path / "missing.csv")
    assert shown and "missing.csv" in shown[0]
    assert window.project is None
