"""The rule tree's layout: wrapped rule text gets its whole height, the short columns fit their widest text (without
ResizeToContents, which measured every cell at every layout), and a run's end reloads the editor in place."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QRect, Qt
from PySide6.QtGui import QFont, QFontMetrics, QUndoStack

from pld_desktop.core.project import CHOSEN_RULE_SET, Project
from pld_desktop.ui import rule_delegate
from pld_desktop.ui.rules_model import COL_IMPACT, COL_LABEL, COL_NUMBER, COL_TEXT, RulesModel
from pld_desktop.ui.rules_view import RulesEditor

LONG = ("If the message names a fee, a charge or a refund together with a card, a branch or the app, and it also "
        "says that the customer waited for days, was told different things by different staff members and asks "
        "for the money back before the end of the week, answer complaint.")


def _editor(qtbot, project: Project, width: int = 1600) -> RulesEditor:  # type: ignore[no-untyped-def]
    editor = RulesEditor(project, n_ctx=4096)
    qtbot.addWidget(editor)
    editor.resize(width, 700)
    editor.show()
    qtbot.waitExposed(editor)
    return editor


def _row_of(editor: RulesEditor, uid: str) -> int:
    proxy = editor.proxy
    return next(r for r in range(proxy.rowCount()) if proxy.index(r, COL_NUMBER).data() == uid)


def test_rule_text_wraps_to_its_whole_height(qtbot, distilled_project: Project) -> None:  # type: ignore[no-untyped-def]
    editor = _editor(qtbot, distilled_project)
    model, tree = editor.model, editor.tree
    first, second = (model.index(r, COL_NUMBER).data() for r in range(2))
    assert model.setData(model.index(0, COL_TEXT), LONG)
    qtbot.waitUntil(lambda: tree.visualRect(editor.proxy.index(_row_of(editor, first), COL_TEXT)).height() > 0)
    tall = tree.visualRect(editor.proxy.index(_row_of(editor, first), COL_TEXT))
    assert tree.columnWidth(COL_TEXT) > 200  # the rule column takes the room the short columns leave
    short = tree.visualRect(editor.proxy.index(_row_of(editor, second), COL_TEXT))
    # The text is drawn inside the cell's margins: measured here a little narrower than the delegate measures it.
    wrapped = tree.fontMetrics().boundingRect(QRect(0, 0, tree.columnWidth(COL_TEXT) - 16, 100000),
                                              int(Qt.TextFlag.TextWordWrap), " ".join(LONG.split()))
    assert tall.height() >= wrapped.height() > 2 * tree.fontMetrics().height()  # every line of the rule shows
    assert short.height() < tall.height()
    # Narrower column, taller row: the height follows the width.
    editor.resize(1200, 700)
    qtbot.waitUntil(lambda: tree.visualRect(editor.proxy.index(_row_of(editor, first), COL_TEXT)).height()
                    > tall.height())


def test_heights_are_measured_once_per_text_width_and_font(qtbot, distilled_project: Project) -> None:  # type: ignore[no-untyped-def]
    rule_delegate._TEXT_HEIGHTS.clear()
    editor = _editor(qtbot, distilled_project)
    qtbot.waitUntil(lambda: bool(rule_delegate._TEXT_HEIGHTS))
    qtbot.wait(50)
    texts = {editor.model.index(r, COL_TEXT).data() for r in range(editor.model.rowCount())}
    assert texts <= {key[0] for key in rule_delegate._TEXT_HEIGHTS}
    measured = set(rule_delegate._TEXT_HEIGHTS)
    # A second editor of the same size on the same rules (the end of a run, another version) measures none again.
    again = _editor(qtbot, distilled_project)
    qtbot.waitUntil(lambda: again.tree.visualRect(again.proxy.index(0, COL_TEXT)).height() > 0)
    qtbot.wait(50)
    assert set(rule_delegate._TEXT_HEIGHTS) == measured


def test_short_columns_fit_their_widest_text(qtbot, distilled_project: Project) -> None:  # type: ignore[no-untyped-def]
    editor = _editor(qtbot, distilled_project)
    header, fm = editor.tree.header(), editor.tree.fontMetrics()
    labels = editor.model.labels
    assert header.sectionResizeMode(COL_LABEL) != header.ResizeMode.ResizeToContents
    assert header.sectionSize(COL_LABEL) >= max(fm.horizontalAdvance(label) for label in labels)
    # The impact column grows once impact texts arrive (the model's dataChanged), at most one layout later.
    texts = {editor.model.index(r, COL_IMPACT).data() for r in range(editor.model.rowCount())} - {None}
    widest = max((fm.horizontalAdvance(str(t)) for t in texts), default=0)
    assert header.sectionSize(COL_IMPACT) >= widest
    # A rule that hurts shows its impact in bold: the column fits the bold text.
    from pld_desktop.core.impact import RuleImpact
    uid = editor.model.index(0, COL_NUMBER).data()
    editor.model.impact = {uid: RuleImpact(uid, 1, labels[0], "t", 0.1, -0.123,
                                           [{"example": "e", "gold": "g", "with": "a", "without": "b"}] * 12)}
    editor.model.dataChanged.emit(editor.model.index(0, 0), editor.model.index(0, COL_IMPACT))
    shown = str(editor.model.index(0, COL_IMPACT).data())
    assert "hurts" in shown
    bold = QFont(editor.tree.font())
    bold.setBold(True)
    qtbot.waitUntil(lambda: header.sectionSize(COL_IMPACT) >= QFontMetrics(bold).horizontalAdvance(shown))
    # A column the user made wider than its text stays as wide through later fits.
    header.resizeSection(COL_LABEL, header.sectionSize(COL_LABEL) + 120)
    wide = header.sectionSize(COL_LABEL)
    editor.model.reload_conflicts()
    qtbot.wait(20)
    assert header.sectionSize(COL_LABEL) == wide


def test_editor_reloads_in_place_after_a_run(qtbot, distilled_path: Path) -> None:  # type: ignore[no-untyped-def]
    project = Project.open(distilled_path)
    editor = _editor(qtbot, project)
    shown = editor.model.rule_set_id
    # The run (another connection, as the pipeline's) writes a new version and makes it the working one.
    other = Project.open(distilled_path)
    writer = RulesModel(other, shown, QUndoStack())
    assert writer.setData(writer.index(0, COL_TEXT), "If the message asks for a refund, answer complaint.")
    new_id = writer.rule_set_id
    other.close()
    assert new_id != shown
    tree = editor.tree
    editor.reload_after_run()
    assert editor.tree is tree and editor.model.rule_set_id == new_id
    assert editor.versions.currentData() == new_id and editor.versions.count() == len(project.rule_sets())
    assert editor.prompt_view.toPlainText() == project.rule_set(new_id).prompt_text
    # Nothing new: the same version stays, with its undo history.
    assert editor.model.setData(editor.model.index(1, COL_TEXT), "If the message praises the staff, answer praise.")
    edited = editor.model.rule_set_id
    editor.reload_after_run()
    assert editor.model.rule_set_id == edited and editor.undo_stack.canUndo()
    project.close()


def test_reloading_conflicts_announces_only_the_rows_that_changed(qtbot, distilled_project: Project) -> None:  # type: ignore[no-untyped-def]
    model = RulesModel(distilled_project, distilled_project.rule_set_pointer(CHOSEN_RULE_SET), QUndoStack())
    rows: list[tuple[int, int]] = []
    model.dataChanged.connect(lambda first, last, *_: rows.append((first.row(), last.row())))
    model.reload_conflicts()
    assert rows == []  # nothing new: no row is measured and laid out again
    uids = [model.index(r, COL_NUMBER).data() for r in range(model.rowCount())]
    a, b = uids[-2], uids[-1]
    distilled_project.add_conflict(model.rule_set_id, a, b, "similarity", "a test conflict", {"similarity": 0.99})
    model.reload_conflicts()
    assert sorted(rows) == [(len(uids) - 2, len(uids) - 2), (len(uids) - 1, len(uids) - 1)]
    assert any(c["other"] == b for c in model.conflicts_of(a))
