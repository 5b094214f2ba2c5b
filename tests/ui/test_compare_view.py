"""The side-by-side view: runs in the background, shows metrics and disagreements, filters, and the try-it box."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import pytest
from PySide6.QtCore import Qt

from pld_desktop.core.project import Project
from pld_desktop.core.protocols import ModelIdentity, Prediction
from pld_desktop.ui.compare_view import CompareView, ComparisonTableModel

from ..fakes import FakeBackends, FakeStudent
from ..heartbeat import GuiHeartbeat


@pytest.fixture()
def project_path(distilled_path: Path) -> Path:
    return distilled_path  # this test's copy of the session's distilled project (conftest)


class SlowStudent(FakeStudent):
    """A fake student that takes a while per call and records the threads it was called from."""

    def __init__(self, delay_s: float, heartbeat: GuiHeartbeat | None = None) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.heartbeat = heartbeat
        self.threads: set[int] = set()
        # Its own identity, so the pipeline's saved dev predictions (keyed by student) are not reused.
        self.identity = ModelIdentity("slow-student", "/dev/null", "5" * 64, 0, "fake")

    def classify(self, system_prompt: str, text: str, labels: Sequence[str]) -> Prediction:
        import threading
        self.threads.add(threading.get_ident())
        if self.heartbeat is not None:
            self.heartbeat.check_from_worker()
        time.sleep(self.delay_s)
        return super().classify(system_prompt, text, labels)


def make_view(qtbot, path: Path,  # type: ignore[no-untyped-def]
              student: FakeStudent | None = None) -> tuple[CompareView, list[FakeBackends]]:
    made: list[FakeBackends] = []

    def factory() -> FakeBackends:
        made.append(FakeBackends(student=student))
        return made[-1]

    view = CompareView(path, factory)
    qtbot.addWidget(view)
    view.resize(1400, 900)
    return view, made


def test_compare_runs_in_background_and_shows_everything(qtbot,  # type: ignore[no-untyped-def]
                                                         project_path: Path) -> None:
    import threading
    heartbeat = GuiHeartbeat()
    student = SlowStudent(0.01, heartbeat)
    view, made = make_view(qtbot, project_path, student)
    with Project.open(project_path, read_only=True) as project:
        chosen = project.get_setting("chosen_rule_set_id")
        n_dev = len(project.examples(split="dev"))
        labels = project.labels()
    assert view.prompt_a.currentData().key == ("version", chosen), "A defaults to the chosen version"
    assert view.prompt_b.currentData().kind == "zero_shot"
    assert not made, "no backend is created until there is work"
    view.select_examples("split", "dev")
    with qtbot.waitSignal(view.finished, timeout=60000) as blocker:
        view.run()
        assert not view.run_btn.isEnabled() and view.cancel_btn.isEnabled()
    heartbeat.stop()
    result = blocker.args[0]
    assert student.calls > 0, "the comparison ran the student (its identity differs from the pipeline's)"
    assert heartbeat.proven is True, "the event loop kept turning while the student worked"
    assert threading.get_ident() not in student.threads, "the GUI thread never calls the student"
    assert view.run_btn.isEnabled() and not view.cancel_btn.isEnabled()
    assert view.model.rowCount() == len(result.rows) == n_dev
    # Metrics side by side, per-class F1, two confusion matrices, the verdict.
    assert view.summary.item(0, 0).text() == f"{result.metrics_a['macro_f1']:.3f}"
    assert view.summary.item(0, 1).text() == f"{result.metrics_b['macro_f1']:.3f}"
    assert view.per_class.rowCount() == len(labels)
    assert view.confusion_a.table.rowCount() == len(labels)
    total = sum(int(view.confusion_b.table.item(i, j).text()) for i in range(len(labels)) for j in range(len(labels)))
    assert total == n_dev
    assert view.verdict.isVisibleTo(view) and result.verdict in view.verdict.text()
    # Disagreements are highlighted by the model and can be filtered.
    disagree = [i for i in range(view.model.rowCount()) if view.model.row(i).disagree]
    assert disagree and len(disagree) < n_dev
    first = view.model.index(disagree[0], 0)
    assert first.data(ComparisonTableModel.DisagreeRole) is True
    assert first.data(Qt.ItemDataRole.BackgroundRole) is not None
    view.only_disagree.setChecked(True)
    assert view.proxy.rowCount() == len(disagree) == result.n_disagree
    assert f"{len(disagree)} of {n_dev}" in view.row_count.text()
    view.only_disagree.setChecked(False)
    assert view.proxy.rowCount() == n_dev
    # A second run of the same comparison reuses the saved predictions (no student call).
    calls = student.calls
    with qtbot.waitSignal(view.finished, timeout=30000):
        view.run()
    assert student.calls == calls
    assert len(made) == 1, "the backends are created once per view"
    view.shutdown()


def test_cancel_stops_and_says_so(qtbot, project_path: Path) -> None:  # type: ignore[no-untyped-def]
    student = SlowStudent(0.05)
    view, _ = make_view(qtbot, project_path, student)
    view.select_examples("split", "train")
    with qtbot.waitSignal(view.failed, timeout=30000) as blocker:
        view.run()
        assert view.comparing()
        qtbot.waitUntil(lambda: view.bar.value() >= 2, timeout=20000)
        assert "left" in view.status.text(), "progress shows an ETA"
        view.cancel()
    assert blocker.args[0].startswith("Stopped.") and "resume" in blocker.args[0]
    assert student.calls < 40 and view.run_btn.isEnabled()
    view.shutdown()


def test_pasted_rows_errors_and_try_it_box(qtbot, project_path: Path) -> None:  # type: ignore[no-untyped-def]
    view, _ = make_view(qtbot, project_path)
    view.select_examples("pasted")
    assert view.paste.isVisibleTo(view)
    view.paste.setPlainText("my card was stolen\tfraud\n")
    view.run()
    assert not view.comparing() and "not one of the labels" in view.status.text()
    view.paste.setPlainText("my card was stolen\tfraud_report\nwhy is there a fee?\n")
    with qtbot.waitSignal(view.finished, timeout=30000) as blocker:
        view.run()
    assert len(blocker.args[0].rows) == 2 and view.model.rowCount() == 2
    assert view.model.index(1, 2).data() == "—"  # no gold label on the second line
    # Try it: Ctrl+Return in the box classifies with both prompts.
    view.try_text.setPlainText("Someone I don't know took money, it was stolen")
    view.try_text.setFocus()
    with qtbot.waitSignal(view.classified, timeout=30000) as blocker:
        qtbot.keyClick(view.try_text, Qt.Key.Key_Return, Qt.KeyboardModifier.ControlModifier)
    pa, pb = blocker.args
    assert pa.label in view.try_a.text() and pb.label in view.try_b.text()
    assert "%" in view.try_a.text()
    assert view.try_text.toPlainText().count("\n") == 0, "Ctrl+Return submits, it does not add a line"
    view.try_text.setPlainText("   ")
    view.classify()
    assert "Type some text" in view.try_a.text() and not view.classifying()
    view.shutdown()


def test_load_csv_and_bad_csv(qtbot, project_path: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    view, _ = make_view(qtbot, project_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("words\nhello\n", encoding="utf-8")
    assert not view.load_csv(bad)
    assert "needs a header row" in view.status.text()
    good = tmp_path / "good.csv"
    good.write_text("text,label\nI never made this payment,fraud_report\nwhat are your opening hours?,question\n",
                    encoding="utf-8")
    assert view.load_csv(good)
    assert view.examples.currentData() == "csv" and "good.csv" in view.examples.currentText()
    with qtbot.waitSignal(view.finished, timeout=30000) as blocker:
        view.run()
    assert blocker.args[0].metrics_a["n"] == 2
    view.shutdown()
