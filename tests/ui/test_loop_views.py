"""The analyst's loop in the window (issue 11): the Results history and scoring, conflicts that follow edits, the
rule-impact column, the version diff, and the window's rough edges (item 7). Background work is real (the
window's runner on a worker thread with the test doubles); one slow test scores with the real student."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QPalette
from PySide6.QtWidgets import QMessageBox

from pld_desktop.core.dataset import ColumnMapping, SplitSettings, load_dataset
from pld_desktop.core.pipeline import run_pipeline
from pld_desktop.core.progress import SilentProgress
from pld_desktop.core.project import Project
from pld_desktop.core.rule_edits import Move, SetEnabled, SetLabel, SetText, save_version
from pld_desktop.core.working import working_rule_set
from pld_desktop.resources import demo_csv
from pld_desktop.ui.app import MainWindow
from pld_desktop.ui.diff_view import DiffView
from pld_desktop.ui.results_view import HistoryModel, ResultsView
from pld_desktop.ui.rules_model import COL_ENABLED, COL_IMPACT, ImpactRole, SortRole
from pld_desktop.ui.rules_view import RulesEditor
from pld_desktop.ui.tasks import QtProgress
from pld_desktop.ui.window_parts import PhaseCard, prompt_kinds_in_words

from ..fakes import FakeBackends
from ..helpers import make_project, settings

pytestmark = pytest.mark.usefixtures("isolated_settings")  # each test gets its own QSettings (conftest)


@pytest.fixture
def project_path(distilled_path: Path) -> Path:
    return distilled_path  # this test's copy of the session's distilled project (conftest)


def _edit(path: Path, make: Any) -> int:
    """Save one edit of the working version (as the editor does) and return the new version."""
    with Project.open(path) as project:
        rs_id = working_rule_set(project)
        assert rs_id is not None
        rules, _inverse = make(project.rule_set(rs_id).rules).apply(project.rule_set(rs_id).rules)
        return save_version(project, rs_id, rules, "edit: test")


def _names(model: HistoryModel) -> list[str]:
    return [model.values(r)[HistoryModel.COL_VERSION] for r in range(model.rowCount())]


# ---------------------------------------------------------------------------------------------------------------
# B. The Results tab as history
# ---------------------------------------------------------------------------------------------------------------
def test_results_placeholder_when_nothing_is_scored(qtbot: Any, tmp_path: Path) -> None:
    make_project(tmp_path).close()
    view = ResultsView(tmp_path / "p.pld", FakeBackends)
    qtbot.addWidget(view)
    assert view.stack.currentWidget() is view.placeholder and "No scores yet" in view.placeholder.text()
    assert not view.dev_btn.isEnabled() and not view.test_btn.isEnabled()  # no rule set to score
    assert "scored on test: 0 versions" in view.summary.text()


def test_history_model_marks_and_scores_an_edit_on_dev_then_test(qtbot: Any, qtmodeltester: Any,
                                                                  project_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    edited = _edit(project_path, lambda rules: SetEnabled(rules[0].uid, False))
    view = ResultsView(project_path, FakeBackends)
    qtbot.addWidget(view)
    qtmodeltester.check(view.model)
    assert view.stack.currentWidget() is view.table
    names = _names(view.model)
    assert names[:2] == ["Zero-shot", "5-shot"] and f"v{edited}" not in names, names
    assert view.target_version() == edited and view.dev_btn.text() == f"Score v{edited} on dev"
    assert "scored on test: 1 version" in view.summary.text()

    with qtbot.waitSignal(view.scoring_finished, timeout=60000) as done:
        assert view.score("dev")
        assert view.busy() and not view.dev_btn.isEnabled() and view.cancel_btn.isEnabled()
    assert done.args[0] == "done", done.args
    qtmodeltester.check(view.model)
    values = view.model.values(_names(view.model).index(f"v{edited}"))
    assert "working" in values[HistoryModel.COL_MARKS]
    for col in (HistoryModel.COL_DEV, HistoryModel.COL_DEV_PARENT, HistoryModel.COL_DEV_ZERO,
                HistoryModel.COL_DEV_FEW):
        assert values[col] is not None, HistoryModel.HEADERS[col]
    assert values[HistoryModel.COL_TEST] is None, "scoring on dev never touches the test split"
    assert "scored on test: 1 version" in view.summary.text()

    # Test is explicit: it asks, and a No scores nothing.
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.No)
    assert not view.score("test") and not view.busy()
    monkeypatch.setattr(QMessageBox, "question", lambda *a, **k: QMessageBox.StandardButton.Yes)
    with qtbot.waitSignal(view.scoring_finished, timeout=60000) as done:
        assert view.score("test")
    assert done.args[0] == "done"
    assert view.model.values(_names(view.model).index(f"v{edited}"))[HistoryModel.COL_TEST] is not None
    assert "scored on test: 2 versions" in view.summary.text() and "less the best test score proves" in \
        view.summary.text()


def test_results_are_marked_stale_during_a_run(qtbot: Any, project_path: Path) -> None:
    view = ResultsView(project_path, FakeBackends)
    qtbot.addWidget(view)
    index = view.model.index(0, HistoryModel.COL_DEV)
    assert index.data(Qt.ItemDataRole.ForegroundRole) is None
    view.set_stale(True)
    assert view.stale_note.isVisibleTo(view) and not view.dev_btn.isEnabled()
    assert index.data(Qt.ItemDataRole.ForegroundRole) is not None and index.data(Qt.ItemDataRole.FontRole).italic()
    view.set_stale(False)
    assert not view.stale_note.isVisibleTo(view) and view.dev_btn.isEnabled()


def test_the_window_scores_an_edit_on_dev_when_the_student_is_idle(qtbot: Any, project_path: Path) -> None:
    window = MainWindow(backends_factory=FakeBackends)
    qtbot.addWidget(window)
    window.open_project(project_path)
    window._auto_score_timer.setInterval(10)
    editor, results = window.views["rules"], window.views["results"]
    editor.auto_conflicts = False
    uid = editor.model.rules()[0].uid
    with qtbot.waitSignal(results.scoring_finished, timeout=60000) as done:
        assert editor.model.push(SetEnabled(uid, False))
    assert done.args[0] == "done" and results.auto
    edited = editor.model.rule_set_id
    values = results.model.values(_names(results.model).index(f"v{edited}"))
    assert values[HistoryModel.COL_DEV] is not None and values[HistoryModel.COL_DEV_ZERO] is not None
    assert values[HistoryModel.COL_TEST] is None  # the background never scores on test
    window.close()


# ---------------------------------------------------------------------------------------------------------------
# C. Conflicts in the editor follow edits
# ---------------------------------------------------------------------------------------------------------------
def test_label_mismatch_shows_with_one_click_fixes_either_way(qtbot: Any, project_path: Path) -> None:
    editor = RulesEditor(project_path, backends_factory=FakeBackends)
    qtbot.addWidget(editor)
    editor.auto_conflicts = False
    rule = editor.model.rules()[0]
    other = next(lab for lab in editor.model.labels if lab != rule.label)
    assert editor.mismatch_of(rule.uid) is None
    assert editor.model.push(SetLabel(rule.uid, other))
    editor.select_uid(rule.uid)
    mismatch = editor.mismatch_of(rule.uid)
    assert mismatch is not None and mismatch["reason"] == f"text says {rule.label}, label is {other}"
    assert editor.fix_row.isVisibleTo(editor) and rule.label in editor.fix_label_btn.text()
    assert "itself" in [editor.conflict_list.topLevelItem(i).text(0)
                        for i in range(editor.conflict_list.topLevelItemCount())]

    assert editor.fix_mismatch("label")  # the label follows the text
    assert editor.model.rules()[0].label == rule.label and editor.mismatch_of(rule.uid) is None
    assert not editor.fix_row.isVisibleTo(editor)
    editor.undo_stack.undo()
    assert editor.mismatch_of(rule.uid) is not None
    assert editor.fix_mismatch("text")  # or the text follows the label
    fixed = editor.model.rules()[0]
    assert fixed.label == other and other in fixed.text and editor.mismatch_of(rule.uid) is None
    editor.close()


def test_edited_rules_conflicts_are_rechecked_in_the_background(qtbot: Any, project_path: Path) -> None:
    editor = RulesEditor(project_path, backends_factory=FakeBackends)
    qtbot.addWidget(editor)
    editor._conflict_timer.setInterval(10)
    rules = editor.model.rules()
    a = rules[0]
    b = next(r for r in rules if r.label != a.label)
    # Reword a's text to nearly b's (one word more): very similar rules with different labels.
    text = b.text.replace(f"answer {b.label}", f"clearly answer {a.label}")
    assert not any(c["other"] == b.uid and c["source"] == "similarity" for c in editor.model.conflicts_of(a.uid))
    with qtbot.waitSignal(editor.job_finished, timeout=60000) as done:
        assert editor.model.push(SetText(a.uid, text))
    assert done.args == ["conflicts", "done"]
    assert any(c["other"] == b.uid and c["source"] == "similarity" for c in editor.model.conflicts_of(a.uid))
    assert "rechecked in the background" in editor.status.text()
    editor.close()


def test_a_carried_teacher_conflict_says_the_rule_changed_since(qtbot: Any, project_path: Path) -> None:
    with Project.open(project_path) as project:  # a conflict the teacher named (the doubles' run names none)
        rs_id = working_rule_set(project)
        first, second = (r.uid for r in project.rule_set(rs_id).rules[:2])
        project.add_conflict(rs_id, first, second, "teacher", "both can match a short message",
                             {"named_by": "teacher"})
    editor = RulesEditor(project_path, backends_factory=FakeBackends)
    qtbot.addWidget(editor)
    editor.auto_conflicts = False
    teacher = next((uid, c) for uid in (r.uid for r in editor.model.rules())
                   for c in editor.model.conflicts_of(uid) if c["source"] == "teacher")
    uid, conflict = teacher
    assert not conflict["changed_since"]
    rule = next(r for r in editor.model.rules() if r.uid == uid)
    assert editor.model.push(SetText(uid, rule.text.replace("If", "When", 1)))
    kept = [c for c in editor.model.conflicts_of(uid) if c["source"] == "teacher"]
    assert kept and kept[0]["changed_since"] == [uid]
    editor.select_uid(uid)
    reasons = [editor.conflict_list.topLevelItem(i).text(2) for i in range(editor.conflict_list.topLevelItemCount())]
    assert any(r.startswith(f"[rule changed since: {uid}]") for r in reasons), reasons
    editor.undo_stack.undo()  # undo restores exactly the earlier conflict, unmarked
    assert [c["changed_since"] for c in editor.model.conflicts_of(uid) if c["source"] == "teacher"] == [[]]
    editor.close()


# ---------------------------------------------------------------------------------------------------------------
# D. Rule impact column and the diff view
# ---------------------------------------------------------------------------------------------------------------
def test_rule_impact_column_in_the_background_and_sortable(qtbot: Any, qtmodeltester: Any,
                                                           project_path: Path) -> None:
    editor = RulesEditor(project_path, backends_factory=FakeBackends)
    qtbot.addWidget(editor)
    editor.auto_conflicts = False
    assert editor.model.index(0, COL_IMPACT).data() is None  # not computed yet
    with qtbot.waitSignal(editor.job_finished, timeout=120000) as done:
        assert editor.compute_impact()
        assert editor.job_row.isVisibleTo(editor) and not editor.impact_action.isEnabled()
    assert done.args == ["impact", "done"]
    qtmodeltester.check(editor.model)
    enabled = [r.uid for r in editor.model.rules() if r.enabled]
    assert sorted(editor.model.impact) == sorted(enabled)
    for row in range(editor.model.rowCount()):
        impact = editor.model.index(row, COL_IMPACT).data(ImpactRole)
        shown = editor.model.index(row, COL_IMPACT).data()
        assert f"{len(impact.flips)} flip" in shown and (shown.startswith("⚠ hurts") == impact.hurts)
    # Sorted ascending by worth: the rule that is worth least (or hurts most) comes first.
    editor.tree.sortByColumn(COL_IMPACT, Qt.SortOrder.AscendingOrder)
    shown_deltas = [editor.proxy.index(r, COL_IMPACT).data(ImpactRole).delta for r in range(editor.proxy.rowCount())]
    assert shown_deltas == sorted(shown_deltas)
    assert not editor.tree.dragEnabled(), "drags only make sense in prompt order"
    editor.tree.sortByColumn(0, Qt.SortOrder.AscendingOrder)
    assert [editor.proxy.index(r, 0).data(SortRole) for r in range(editor.proxy.rowCount())] == \
        list(range(editor.proxy.rowCount())) and editor.tree.dragEnabled()
    editor.close()


def test_diff_view_names_added_removed_changed_and_moved_rules_with_reasons(qtbot: Any, project_path: Path) -> None:
    with Project.open(project_path) as project:
        start = working_rule_set(project)
        rules = project.rule_set(start).rules
    uid_text, uid_move = rules[0].uid, rules[2].uid
    _edit(project_path, lambda rs: SetText(uid_text, rs[0].text.replace("If", "When", 1)))
    end = _edit(project_path, lambda rs: Move(uid_move, 0))
    view = DiffView(project_path)
    qtbot.addWidget(view)
    assert (view.version_a.currentData(), view.version_b.currentData()) == (start, end)  # choice -> working
    rows = view.rows()
    assert ("changed: text", uid_text) in rows and any(k.startswith("moved") and u == uid_move for k, u in rows)
    assert view.reasons.topLevelItemCount() == 2 and f"v{start} → v{end}" in view.summary.text()
    view.swap()
    assert (view.version_a.currentData(), view.version_b.currentData()) == (end, start)
    view.select(start, start)
    assert view.rows() == [] and "the same rules" in view.summary.text()


# ---------------------------------------------------------------------------------------------------------------
# A. The window's rough edges
# ---------------------------------------------------------------------------------------------------------------
def test_phase3_card_says_it_stopped_early_and_phase4_names_prompts_in_words(qtbot: Any) -> None:
    card = PhaseCard(3)
    qtbot.addWidget(card)
    card.show_state("done", 2, 5, "", running_here=False, busy=False)
    assert card.counts.text() == "stopped after 2 of at most 5 rounds"
    assert card.bar.value() == card.bar.maximum() and card.bar.format() == "complete"
    four = PhaseCard(4)
    qtbot.addWidget(four)
    four.show_state("done", 3, 3, "pld macro-F1 0.612, zero_shot macro-F1 0.300, few_shot macro-F1 0.410",
                    running_here=False, busy=False)
    assert four.message.text() == "Rules macro-F1 0.612, Zero-shot macro-F1 0.300, 5-shot macro-F1 0.410"
    assert prompt_kinds_in_words("Phase 4: few-shot on 21 test examples in demo.pld", 3) == \
        "Phase 4: 3-shot on 21 test examples in demo.pld"
    assert prompt_kinds_in_words("pld macro-F1 0.1, pld_examples macro-F1 0.2; Phase 4: pld-examples on 9") == \
        "Rules macro-F1 0.1, Rules+examples macro-F1 0.2; Phase 4: Rules+examples on 9"


def test_eta_after_a_resume_uses_the_current_rate(monkeypatch: pytest.MonkeyPatch, qapp: Any) -> None:
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    progress = QtProgress()
    progress.begin("Phase 1", 100)
    clock[0] += 1.0
    progress.report(95, 100)   # 95 items restored from the project at once
    assert progress.eta_seconds() is None  # no rate yet
    clock[0] += 36.0
    progress.report(96, 100)   # one new item in 36 s: 4 left take about 144 s, not a second
    assert progress.eta_seconds() == pytest.approx(144.0)


def test_help_lists_the_shortcuts_and_how_a_run_works(qtbot: Any, project_path: Path) -> None:
    window = MainWindow(backends_factory=FakeBackends)
    qtbot.addWidget(window)
    window.open_project(project_path)
    window.views["rules"].auto_conflicts = False
    window.show_help(0)
    dialog = window.help_dialog
    rows = {dialog.shortcuts.item(r, 1).text(): dialog.shortcuts.item(r, 0).text()
            for r in range(dialog.shortcuts.rowCount())}
    assert rows["Run All Phases"] == "F5" and "Ctrl+Z" in rows.values() and "Rule impact" not in rows
    assert any("Try it" in name for name in rows)
    assert "locked" in dialog.how.toPlainText() and "working version" in dialog.how.toPlainText()
    dialog.close()
    window.close()


def test_side_by_side_defaults_to_the_working_version_vs_zero_shot(qtbot: Any, project_path: Path) -> None:
    edited = _edit(project_path, lambda rules: SetEnabled(rules[1].uid, False))
    window = MainWindow(backends_factory=FakeBackends)
    qtbot.addWidget(window)
    window.open_project(project_path)
    window.views["rules"].auto_conflicts = False
    compare = window.views["compare"]
    assert compare.prompt_a.currentData().key == ("version", edited)
    assert compare.prompt_b.currentData().kind == "zero_shot"
    window.close()


def test_try_it_has_a_field_per_input_column_and_forgets_old_answers(qtbot: Any, tmp_path: Path) -> None:
    from pld_desktop.ui.compare_view import CompareView
    template = "Channel: {channel}\nMessage: {message}"
    ds = load_dataset(demo_csv(), ColumnMapping(("message", "channel"), "label", template=template, id_column="id"),
                      SplitSettings())
    project = Project.create(tmp_path / "two.pld")
    project.store_dataset(ds, "bank_messages.csv")
    run_pipeline(project, settings(), FakeBackends(), SilentProgress())
    project.close()
    view = CompareView(tmp_path / "two.pld", FakeBackends)
    qtbot.addWidget(view)
    assert list(view.try_fields) == ["message", "channel"]
    view.try_fields["message"].setPlainText("My card was stolen")
    view.try_fields["channel"].setPlainText("chat")
    assert view.try_input() == "Channel: chat\nMessage: My card was stolen"
    assert "The student reads:" in view.rendered.text() and "Channel: chat" in view.rendered.text()
    with qtbot.waitSignal(view.classified, timeout=30000):
        view.classify()
        assert "loading the student model" in view.try_a.text()
    assert view.try_a.text().startswith("<b>A:")
    view.prompt_b.setCurrentIndex((view.prompt_b.currentIndex() + 1) % view.prompt_b.count())
    assert view.try_a.text() == "A: —" and view.try_b.text() == "B: —"
    view.shutdown()


def test_import_dialog_fits_small_screens(qtbot: Any) -> None:
    from pld_desktop.ui.import_dialog import ImportDialog
    dialog = ImportDialog(demo_csv())
    qtbot.addWidget(dialog)
    qtbot.waitUntil(lambda: not dialog.is_busy(), timeout=30000)
    hint = dialog.minimumSizeHint()
    # 1366x768 less a panel and the window frame: the form scrolls inside rather than push the buttons off.
    assert hint.height() <= 768 - 70 and hint.width() <= 1280 - 40, hint
    area = dialog.screen().availableGeometry()
    assert dialog.height() <= area.height() and dialog.width() <= area.width()


def test_dark_palette_keeps_charts_and_check_marks_legible(qtbot: Any, project_path: Path) -> None:
    from PySide6.QtCharts import QChart

    from pld_desktop.ui.charts_extra import new_chart
    from pld_desktop.ui.rules_model import RulesModel
    app = QGuiApplication.instance()
    old = app.palette()
    dark = QPalette(old)
    for role, colour in ((QPalette.ColorRole.Window, "#2b2b2b"), (QPalette.ColorRole.Base, "#1e1e1e"),
                         (QPalette.ColorRole.Text, "#e0e0e0"), (QPalette.ColorRole.WindowText, "#e0e0e0")):
        dark.setColor(role, QColor(colour))
    app.setPalette(dark)
    try:
        assert new_chart("x").theme() == QChart.ChartTheme.ChartThemeDark
        with Project.open(project_path) as project:
            model = RulesModel(project, working_rule_set(project))
            conflicted = next(r for r in range(model.rowCount()) if model.conflicts_of(model.rules()[r].uid))
            # The style draws the check mark in the item's text colour: it must be the palette's, not forced dark.
            assert model.index(conflicted, COL_ENABLED).data(Qt.ItemDataRole.ForegroundRole) is None
            assert model.index(conflicted, 1).data(Qt.ItemDataRole.ForegroundRole) is not None  # text stays dark
    finally:
        app.setPalette(old)
    assert new_chart("x").theme() == QChart.ChartTheme.ChartThemeLight


# ---------------------------------------------------------------------------------------------------------------
# The real student
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_score_on_dev_with_the_real_student(qtbot: Any, project_path: Path) -> None:
    """The Results tab's dev score through the window's runner on the bundled GGUF student (no test double)."""
    view = ResultsView(project_path, None)  # None: the real models
    qtbot.addWidget(view)
    with qtbot.waitSignal(view.scoring_finished, timeout=900000) as done:
        assert view.score("dev")
    assert done.args[0] == "done", done.args
    working = view.model.history.working_rule_set
    values = view.model.values(_names(view.model).index(f"v{working}"))
    assert 0.0 <= values[HistoryModel.COL_DEV] <= 1.0 and values[HistoryModel.COL_DEV_ZERO] is not None
    with Project.open(project_path, read_only=True) as project:
        students = {ev.student.get("model_id") or ev.student.get("path") for ev in project.evaluations_done()
                    if ev.split == "dev"}
    assert any(s and "fake" not in str(s) for s in students), students


def test_window_exports_name_the_working_version_including_deployment_files(qtbot: Any, project_path: Path,
                                                                             tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import csv

    from pld_desktop.core.deploy import DEPLOY_FORMATS
    from pld_desktop.core.scoring import score_version

    from ..fakes import FakeStudent
    edited = _edit(project_path, lambda rules: SetEnabled(rules[1].uid, False))
    with Project.open(project_path) as project:  # the CSV holds a scored version's predictions
        score_version(project, FakeStudent(), edited, split="dev")
    monkeypatch.setattr(QMessageBox, "warning", lambda *a, **k: pytest.fail(f"export warned: {a[2:]}"))
    window = MainWindow(backends_factory=FakeBackends)
    qtbot.addWidget(window)
    window.open_project(project_path)
    window.views["rules"].auto_conflicts = False
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr("pld_desktop.ui.app.QFileDialog.getExistingDirectory", lambda *a, **k: str(out))
    assert window.export_deploy_act.isEnabled()
    window.export_deploy_act.trigger()
    names = sorted(p.name for p in out.iterdir())
    assert len(names) >= len(DEPLOY_FORMATS) and all(f"-v{edited}" in n for n in names), names  # + a grammar
    assert f"version {edited}" in window.statusBar().currentMessage()
    [written] = window.export(("csv",))
    assert f"-v{edited}-" in written.name
    with written.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["rule_set"] for r in rows} == {f"v{edited}"}
    window.close()


def test_a_useless_round_says_why_it_failed(tmp_path: Path) -> None:
    """A resolution reply without rules is a failed attempt that names its reason (issue 12: useless rewrites are
    failures, retried with feedback); an unusable reply says the reply was unusable. Neither reads "teacher reply
    failed" unless a call failed, nor "no improvement"."""
    from pld_desktop.ui.clusters_view import read_loop_rounds

    from ..fakes import FakeTeacher

    class NoRulesTeacher(FakeTeacher):
        def _reply(self, request: Any, schema: dict) -> dict:
            if request.kind == "resolution":
                return {"root_cause": "nothing to change", "rules": [], "conflicts": []}
            return super()._reply(request, schema)

    for i, (teacher, expected) in enumerate(((NoRulesTeacher(), "failed attempt: the rule list is empty"),
                                             (FakeTeacher(invalid_for=("Examples the model got WRONG",)),
                                              "failed attempt: reply does not match the schema"))):
        project = make_project(tmp_path, f"round-{i}.pld")
        run_pipeline(project, settings(), FakeBackends(teacher=teacher), SilentProgress(), phases=[1, 2, 3])
        notes = [r["root_cause"] for r in read_loop_rounds(project) if r["dev_macro_f1"] is None]
        project.close()
        assert notes and all(n.startswith(expected) for n in notes), notes
