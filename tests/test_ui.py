"""The first desktop window: opens a project, runs the phases on a background thread, shows the results."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QTimer

from pld_desktop.ui.app import MainWindow

from .fakes import FakeBackends
from .test_pipeline import make_project


def test_window_runs_all_phases_in_the_background(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    make_project(tmp_path).close()
    window = MainWindow(backends_factory=FakeBackends)
    qtbot.addWidget(window)
    window.open_project(tmp_path / "p.pld")
    assert "p.pld" in window.windowTitle()
    assert "105 rows" in window.title.text()
    ticks = []
    timer = QTimer()
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start(5)
    window.run_all()
    assert window.worker is not None and not window.run_btn.isEnabled()
    with qtbot.waitSignal(window.worker.finished_with, timeout=60000) as blocker:
        pass
    timer.stop()
    assert blocker.args[0] == "done"
    assert len(ticks) > 3, "the event loop kept turning while the phases ran"
    qtbot.waitUntil(lambda: window.worker is None)
    assert window.rules.topLevelItemCount() >= 3
    flagged = [window.rules.topLevelItem(i) for i in range(window.rules.topLevelItemCount())
               if window.rules.topLevelItem(i).text(3)]
    assert flagged and "with R" in flagged[0].toolTip(3)  # conflicts are shown with their reason
    assert "Answer with exactly one label" in window.prompt.toPlainText()
    assert window.results.rowCount() == 3
    assert all(card.state.text().find("done") >= 0 for card in window.cards.values())


def test_opening_a_bad_file_warns_and_keeps_the_window(qtbot, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad.pld"
    bad.write_text("not a project")
    shown = []
    monkeypatch.setattr("pld_desktop.ui.app.QMessageBox.warning", lambda *a: shown.append(a[2]))
    window = MainWindow()
    qtbot.addWidget(window)
    window.open_project(bad)
    assert shown and "not a PLD project" in shown[0]
    assert window.project_path is None
