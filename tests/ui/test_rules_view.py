"""The rule editor: the tree model (qtmodeltester, undoable edits saved as versions, conflicts, drag-reorder),
the filter proxy and the RulesEditor widget, on a project the pipeline built with the test doubles."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import QModelIndex, Qt
from PySide6.QtGui import QBrush, QIcon, QUndoStack

from pld_desktop.core.project import Project
from pld_desktop.core.rule_edits import HEAD_SETTING, Add, Delete, Duplicate, Move, RuleEdit
from pld_desktop.ui.rules_model import (
    COL_ENABLED,
    COL_LABEL,
    COL_TEXT,
    CONFLICT_BACKGROUND,
    ConflictRole,
    KindRole,
    RulesModel,
    UidRole,
)
from pld_desktop.ui.rules_view import RulesEditor, RulesFilterProxy

from ..fakes import FakeBackends
from ..helpers import make_project, settings


@pytest.fixture
def project_path(distilled_path: Path) -> Path:
    return distilled_path  # this test's copy of the session's distilled project (conftest)


@pytest.fixture
def project(distilled_project: Project) -> Project:
    return distilled_project  # the same copy, opened


@pytest.fixture
def model(project: Project, qapp) -> RulesModel:  # type: ignore[no-untyped-def]
    return RulesModel(project, project.get_setting("chosen_rule_set_id"), QUndoStack())


def uids(model: RulesModel) -> list[str]:
    return [r.uid for r in model.rules()]


def test_model_passes_the_model_tester(model: RulesModel, qtmodeltester) -> None:  # type: ignore[no-untyped-def]
    assert model.rowCount() == len(model.record.rules) >= 3
    rule = model.index(0, 0)
    assert model.rowCount(rule) == len(model.record.rules[0].micro_rule_ids) > 0
    micro = model.index(0, 0, rule)
    example = model.index(0, 0, micro)
    assert (rule.data(KindRole), micro.data(KindRole), example.data(KindRole)) == ("rule", "micro", "example")
    assert example.parent() == micro and micro.parent() == rule and not rule.parent().isValid()
    assert micro.siblingAtColumn(COL_LABEL).data() == rule.siblingAtColumn(COL_LABEL).data()
    assert "(train)" in example.siblingAtColumn(COL_LABEL).data()
    qtmodeltester.check(model)
    # Still consistent after structural edits.
    model.push(Duplicate(uids(model)[0]))
    model.push(Move(uids(model)[0], 4))
    model.push(Delete(uids(model)[2]))
    qtmodeltester.check(model)


def _set(col: int, value: Any, role: Qt.ItemDataRole = Qt.ItemDataRole.EditRole
         ) -> Callable[[RulesModel], bool]:
    return lambda m: m.setData(m.index(1, col), value, role)


def _push(edit_of: Callable[[RulesModel], RuleEdit]) -> Callable[[RulesModel], bool]:
    return lambda m: m.push(edit_of(m))


def _drag_first_to_row(row: int) -> Callable[[RulesModel], bool]:
    def run(m: RulesModel) -> bool:
        mime = m.mimeData([m.index(0, 0), m.index(0, COL_TEXT)])
        assert m.canDropMimeData(mime, Qt.DropAction.MoveAction, row, 0, QModelIndex())
        return m.dropMimeData(mime, Qt.DropAction.MoveAction, row, 0, QModelIndex())
    return run


EDITS = {
    "text": _set(COL_TEXT, "If the message mentions a refund, answer complaint."),
    "label": _set(COL_LABEL, "question"),
    "enabled": _set(COL_ENABLED, Qt.CheckState.Unchecked.value, Qt.ItemDataRole.CheckStateRole),
    "move": _push(lambda m: Move(uids(m)[0], 3)),
    "add": _push(lambda m: Add("If the message mentions a mortgage, answer question.", "question", 2)),
    "delete": _push(lambda m: Delete(uids(m)[1])),
    "duplicate": _push(lambda m: Duplicate(uids(m)[1])),
    "drag": _drag_first_to_row(4),
}


@pytest.mark.parametrize("kind", list(EDITS))
def test_every_edit_round_trips_through_the_undo_stack(model: RulesModel, project: Project, kind: str) -> None:
    saved: list[int] = []
    model.version_saved.connect(saved.append)
    start_id, original = model.rule_set_id, model.rules()
    assert EDITS[kind](model) is True
    edited = model.rules()
    assert edited != original and model.undo_stack.count() == 1
    edit_id = model.rule_set_id
    assert saved == [edit_id] and edit_id > start_id
    assert project.rule_set(edit_id).parent_id == start_id and project.rule_set(edit_id).origin == "edit"
    model.undo_stack.undo()
    assert model.rules() == original  # text, label, enabled and order all restored
    assert [model.index(r, COL_TEXT).data() for r in range(model.rowCount())] == [r.text for r in original]
    undo_id = model.rule_set_id
    assert undo_id > edit_id and project.rule_set(undo_id).reason.startswith("undo: ")
    assert project.rule_set(undo_id).prompt_text == project.rule_set(start_id).prompt_text
    model.undo_stack.redo()
    assert model.rules() == edited and model.rule_set_id > undo_id
    assert project.rule_set(model.rule_set_id).reason.startswith("redo: ")
    assert saved == [edit_id, undo_id, model.rule_set_id]
    assert project.get_setting(HEAD_SETTING) == model.rule_set_id


def test_drop_reorders_several_rules_and_keeps_their_order(model: RulesModel) -> None:
    before = uids(model)
    mime = model.mimeData([model.index(0, 0), model.index(2, 0)])
    assert model.dropMimeData(mime, Qt.DropAction.MoveAction, 5, 0, QModelIndex())
    assert uids(model) == [before[1], before[3], before[4], before[0], before[2]] + before[5:]
    assert not model.dropMimeData(mime, Qt.DropAction.CopyAction, 0, 0, QModelIndex())
    model.undo_stack.undo()
    assert uids(model) == before


def test_refused_edits_save_nothing_and_say_why(model: RulesModel, project: Project) -> None:
    errors: list[str] = []
    model.edit_failed.connect(errors.append)
    versions = len(project.rule_sets())
    assert not model.setData(model.index(0, COL_LABEL), "spam")
    assert not model.setData(model.index(0, COL_TEXT), "   ")
    assert not model.setData(model.index(0, COL_TEXT), model.index(0, COL_TEXT).data())  # unchanged: no version
    assert len(project.rule_sets()) == versions and model.undo_stack.count() == 0
    assert "'spam' is not a label" in errors[0] and "needs some text" in errors[1]


def test_conflicts_colour_icon_tooltip_and_role(model: RulesModel) -> None:
    model.push(Add("If the message mentions a mortgage, answer question.", "question", 0))
    fresh, conflicted = model.index(0, COL_TEXT), model.index(1, COL_TEXT)
    found = conflicted.data(ConflictRole)
    assert found and {"other", "source", "reason", "evidence"} <= set(found[0])
    assert model.index(1, 5).data() == len(found)
    brush = conflicted.data(Qt.ItemDataRole.BackgroundRole)
    assert isinstance(brush, QBrush) and brush.color() == CONFLICT_BACKGROUND
    icon = conflicted.data(Qt.ItemDataRole.DecorationRole)
    assert isinstance(icon, QIcon) and not icon.isNull()
    assert found[0]["reason"] in conflicted.data(Qt.ItemDataRole.ToolTipRole)
    assert fresh.data(ConflictRole) == [] and fresh.data(Qt.ItemDataRole.BackgroundRole) is None
    assert fresh.data(Qt.ItemDataRole.DecorationRole) is None
    assert fresh.data(UidRole).startswith("E")
    # A duplicate is a conflict found without any model, shown on both rules at once.
    model.push(Duplicate(fresh.data(UidRole)))
    assert [c["source"] for c in model.index(0, 0).data(ConflictRole)] == ["duplicate"]
    assert model.index(1, 0).data(ConflictRole)[0]["other"] == model.index(0, 0).data(UidRole)


def test_filter_proxy_by_text_and_conflicts_only(model: RulesModel) -> None:
    model.push(Add("If the message mentions a mortgage, answer question.", "question", 0))
    proxy = RulesFilterProxy()
    proxy.setSourceModel(model)
    assert proxy.rowCount() == model.rowCount()
    proxy.set_conflicts_only(True)
    shown = [proxy.index(r, 0).data(UidRole) for r in range(proxy.rowCount())]
    assert shown == [u for u in uids(model) if model.conflicts_of(u)] and model.rules()[0].uid not in shown
    proxy.set_conflicts_only(False)
    proxy.set_text("SCAM")
    assert proxy.rowCount() == 1
    kept = proxy.index(0, 0)
    source = proxy.mapToSource(kept)
    assert "scam" in source.siblingAtColumn(COL_TEXT).data()
    assert proxy.rowCount(kept) == model.rowCount(source) > 0  # a matching rule keeps its micro-rules
    proxy.set_text("fraud_report")  # the label column counts too
    assert proxy.rowCount() == sum(1 for r in model.rules() if r.label == "fraud_report")
    proxy.set_text("no rule says this")
    assert proxy.rowCount() == 0


def test_edits_are_persisted_in_the_project_file(model: RulesModel, project_path: Path) -> None:
    chosen = model.rule_set_id
    model.setData(model.index(0, COL_TEXT), "If the message mentions an overdraft, answer complaint.")
    model.push(Move(uids(model)[0], 2))
    model.setData(model.index(3, COL_ENABLED), Qt.CheckState.Unchecked.value, Qt.ItemDataRole.CheckStateRole)
    head, rules = model.rule_set_id, model.rules()
    model.project.close()
    with Project.open(project_path, read_only=True) as reopened:
        assert reopened.get_setting(HEAD_SETTING) == head
        assert reopened.get_setting("chosen_rule_set_id") == chosen
        rs = reopened.rule_set(head)
        assert list(rs.rules) == rules
        assert rules[3].enabled is False
        assert "3. If the message mentions an overdraft, answer complaint. -> complaint" in rs.prompt_text
        numbered = [line for line in rs.prompt_text.splitlines() if line[:1].isdigit()]
        assert len(numbered) == len(rules) - 1  # the disabled rule is kept but not prompted
        chain, rid = [], head
        while rid is not None:
            chain.append(rid)
            rid = reopened.rule_set(rid).parent_id
        assert chain[3] == chosen  # three edits, three versions, each the child of the one before
        assert reopened.integrity_check() == "ok"


# ---------------------------------------------------------------------------
# The widget
# ---------------------------------------------------------------------------
def test_editor_widget_keyboard_toolbar_versions_and_export(qtbot, project_path: Path,  # type: ignore[no-untyped-def]
                                                           tmp_path: Path) -> None:
    editor = RulesEditor(project_path, n_ctx=4096)
    qtbot.addWidget(editor)
    editor.show()
    editor.activateWindow()
    qtbot.waitUntil(editor.isActiveWindow)  # shortcuts only fire in the active window
    model, tree = editor.model, editor.tree
    start = model.rule_set_id
    assert editor.prompt_view.toPlainText() == model.record.prompt_text and editor.prompt_view.isReadOnly()
    assert "approximate" in editor.token_label.text() and "4,096" in editor.token_label.text()
    assert editor.versions.count() == len(editor.project.rule_sets())
    assert editor.versions.currentData() == start and "pipeline's choice" in editor.versions.currentText()

    # Select the second rule; the side panel shows its conflicts and provenance.
    tree.setFocus()
    editor.select_uid(uids(model)[1])
    second = uids(model)[1]
    assert second in editor.rule_title.text()
    assert editor.conflict_list.topLevelItemCount() == len(model.conflicts_of(second)) > 0
    assert "Merged from" in editor.provenance.text()

    # Delete key deletes; Ctrl+Z undoes; Ctrl+Shift+Z redoes; each saves a version and says so.
    with qtbot.waitSignal(editor.version_saved, timeout=2000) as blocker:
        qtbot.keyClick(tree, Qt.Key.Key_Delete)
    assert second not in uids(model) and blocker.args == [model.rule_set_id]
    assert editor.versions.currentData() == model.rule_set_id and "working" in editor.versions.currentText()
    assert editor.prompt_view.toPlainText() == editor.project.rule_set(model.rule_set_id).prompt_text
    qtbot.keyClick(tree, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert uids(model)[1] == second
    qtbot.keyClick(tree, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert second not in uids(model)

    # Toolbar: duplicate, move down, add (opens the editor on the new rule's text).
    editor.select_uid(uids(model)[0])
    first = uids(model)[0]
    editor.duplicate_action.trigger()
    assert uids(model)[1].startswith("E") and editor.current_uid() == uids(model)[1]
    editor.select_uid(first)
    editor.down_action.trigger()
    assert uids(model)[1] == first and editor.current_uid() == first
    editor.add_action.trigger()
    assert uids(model)[2].startswith("E") and tree.state() == tree.State.EditingState
    tree.closePersistentEditor(tree.currentIndex())

    # F2 on the # column edits the rule text.
    tree.setFocus()
    editor.select_uid(first)
    assert tree.currentIndex().column() == 0
    qtbot.keyClick(tree, Qt.Key.Key_F2)
    assert tree.state() == tree.State.EditingState and tree.currentIndex().column() == COL_TEXT

    # Filter widgets drive the proxy.
    editor.filter_box.setText("scam")
    assert editor.proxy.rowCount() == 1 and "1 of" in editor.shown_label.text()
    editor.filter_box.clear()
    editor.conflicts_only.setChecked(True)
    assert editor.proxy.rowCount() < model.rowCount()  # the hand-added rule has no conflict
    editor.conflicts_only.setChecked(False)

    # Export writes the shown version; the signal names it.
    with qtbot.waitSignal(editor.export_requested) as req:
        editor.handle_export = False
        editor.export_action.trigger()
    assert req.args == [model.rule_set_id]
    written = editor.export_to(tmp_path / "out")
    assert sorted(p.suffix for p in written) == [".json", ".md", ".txt"]
    assert (tmp_path / "out" / f"p-rules-v{model.rule_set_id}.txt").read_text() == model.record.prompt_text

    # Picking another version loads it (and clears the undo history that belonged to the other one).
    row = editor.versions.findData(start)
    editor.versions.setCurrentIndex(row)
    editor.versions.activated.emit(row)
    assert model.rule_set_id == start and model.undo_stack.count() == 0
    assert editor.prompt_view.toPlainText() == editor.project.rule_set(start).prompt_text
    editor.close()


def test_editor_counts_tokens_with_the_given_counter(qtbot, project: Project) -> None:  # type: ignore[no-untyped-def]
    editor = RulesEditor(project, token_counter=lambda text: len(text.split()), n_ctx=100)
    qtbot.addWidget(editor)
    words = len(editor.model.record.prompt_text.split())
    assert f"{words:,} tokens" in editor.token_label.text() and "approximate" not in editor.token_label.text()
    assert "too long" in editor.token_label.text()  # more than 100 tokens: the student could not read it


def test_editor_refuses_a_project_without_rules(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    make_project(tmp_path, "empty.pld").close()
    with pytest.raises(Exception, match="no rules yet"):
        RulesEditor(tmp_path / "empty.pld")


@pytest.mark.slow
def test_real_student_tokens_and_real_embedder_conflicts(qtbot, project: Project) -> None:  # type: ignore[no-untyped-def]
    """The embedded Gemma tokenizer counts the preview; the embedded MiniLM finds a conflict an edit created."""
    from pld_desktop.backends.embedder import SentenceTransformerEmbedder
    from pld_desktop.backends.llama_student import LlamaStudent
    from pld_desktop.core.rule_edits import SetLabel, SetText, add_model_conflicts

    student = LlamaStudent(n_ctx=2048)
    try:
        editor = RulesEditor(project, token_counter=student.count_tokens, n_ctx=student.n_ctx)
        qtbot.addWidget(editor)
        exact = student.count_tokens(editor.model.record.prompt_text)
        assert f"{exact:,} tokens" in editor.token_label.text() and 50 < exact < 2048
        model = editor.model
        rules = model.rules()
        complaint = next(r for r in rules if r.label == "complaint")
        question = next(r for r in rules if r.label == "question")
        model.push(SetText(question.uid, complaint.text.replace("answer complaint", "answer question")))
        assert f"{student.count_tokens(model.record.prompt_text):,} tokens" in editor.token_label.text()
    finally:
        student.close()
    embedder = SentenceTransformerEmbedder()
    added = add_model_conflicts(project, embedder, model.rule_set_id, settings())
    pairs = {frozenset((c.rule_a, c.rule_b)) for c in project.conflicts(model.rule_set_id)
             if c.source == "similarity"}
    assert added > 0 and frozenset((complaint.uid, question.uid)) in pairs
    # The editor keeps working on the enriched version, even with its tokenizer gone (closed student).
    model.push(SetLabel(question.uid, "complaint"))
    assert "tokenizer failed" in editor.token_label.text()
    assert model.rules()[[r.uid for r in model.rules()].index(question.uid)].label == "complaint"


# ---------------------------------------------------------------------------
# Conflicts from the embedder, found on a background thread
# ---------------------------------------------------------------------------
def _make_similar_pair(editor: RulesEditor) -> tuple[str, str]:
    """Reword a question rule into a complaint rule's wording (label kept): a similarity conflict for the embedder."""
    from pld_desktop.core.rule_edits import SetText
    rules = editor.model.rules()
    complaint = next(r for r in rules if r.label == "complaint")
    question = next(r for r in rules if r.label == "question")
    assert editor.model.push(SetText(question.uid, complaint.text.replace("answer complaint",
                                                                                "answer question")))
    return complaint.uid, question.uid


def _similarity_partners(editor: RulesEditor, uid: str) -> set[str]:
    return {c["other"] for c in editor.model.conflicts_of(uid) if c["source"] == "similarity"}


def test_find_conflicts_runs_in_the_background_and_refreshes_the_view(qtbot, project: Project) -> None:
    backends = FakeBackends()
    embedded: list[int] = []
    embed = backends.e.embed
    backends.e.embed = lambda texts: (embedded.append(len(texts)), embed(texts))[1]  # type: ignore[method-assign]
    editor = RulesEditor(project, backends_factory=lambda: backends)
    qtbot.addWidget(editor)
    complaint, question = _make_similar_pair(editor)
    searched = editor.model.rule_set_id
    before = len(project.conflicts(searched))
    assert complaint not in _similarity_partners(editor, question)  # the edit alone ran no model
    editor.select_uid(question)
    shown_before = editor.conflict_list.topLevelItemCount()
    undo_steps = editor.undo_stack.count()

    with qtbot.waitSignal(editor.conflict_search_finished, timeout=30000) as done:
        editor.find_conflicts_action.trigger()
        assert editor.searching() and not editor.search_row.isHidden()
        assert not editor.find_conflicts_action.isEnabled() and "v" in editor.search_label.text()
    status, added = done.args
    assert status == "done" and added == len(project.conflicts(searched)) - before > 0
    assert embedded == [1]  # only the reworded rule was new; the micro-rules came from the project's cache
    assert complaint in _similarity_partners(editor, question)
    assert question in _similarity_partners(editor, complaint)  # both sides of the pair
    assert editor.conflict_list.topLevelItemCount() > shown_before  # the side panel shows it at once
    sources = [editor.conflict_list.topLevelItem(i).text(1) for i in range(editor.conflict_list.topLevelItemCount())]
    assert "similarity" in sources
    assert editor.model.index_of_uid(complaint).data(ConflictRole)  # and the tree's conflict role
    assert "new conflict" in editor.status.text() and f"v{searched}" in editor.status.text()
    assert editor.search_row.isHidden() and editor.find_conflicts_action.isEnabled() and not editor.searching()
    assert editor.model.rule_set_id == searched and editor.undo_stack.count() == undo_steps  # no reset, no version

    # A second run finds nothing new and adds no duplicates.
    with qtbot.waitSignal(editor.conflict_search_finished, timeout=30000) as again:
        editor.find_conflicts_action.trigger()
    assert again.args == ["done", 0] and "no new conflicts" in editor.status.text()
    assert len(project.conflicts(searched)) == before + added


class _BlockingEmbedder:
    """An embedder with nothing cached (its own model id) that blocks until the test lets it go."""

    model_id = "blocking-embedder"

    def __init__(self) -> None:
        import threading
        self.entered = threading.Event()
        self.release = threading.Event()
        self.inner = FakeBackends().e

    def embed(self, texts: Any) -> Any:
        self.entered.set()
        assert self.release.wait(30)
        return self.inner.embed(texts)


def test_find_conflicts_can_be_cancelled(qtbot, project: Project) -> None:  # type: ignore[no-untyped-def]
    backends = FakeBackends()
    blocking = _BlockingEmbedder()
    backends.e = blocking  # type: ignore[assignment]
    editor = RulesEditor(project, backends_factory=lambda: backends)
    qtbot.addWidget(editor)
    searched = editor.model.rule_set_id
    before = project.conflicts(searched)
    editor.find_conflicts_action.trigger()
    qtbot.waitUntil(blocking.entered.is_set, timeout=10000)
    qtbot.waitUntil(lambda: editor.search_bar.maximum() > 0, timeout=5000)  # the embedding stage has a size
    assert "embedding" in editor.search_label.text()
    editor.search_cancel.click()
    assert not editor.search_cancel.isEnabled() and "Stopping" in editor.search_label.text()
    with qtbot.waitSignal(editor.conflict_search_finished, timeout=30000) as done:
        blocking.release.set()
    assert done.args == ["cancelled", 0]
    assert "cancelled" in editor.status.text() and editor.find_conflicts_action.isEnabled()
    assert project.conflicts(searched) == before


def test_find_conflicts_failure_is_shown_in_words(qtbot, project: Project) -> None:  # type: ignore[no-untyped-def]
    class NoEmbedder(FakeBackends):
        closed = False

        def embedder(self, settings: object) -> Any:
            raise FileNotFoundError("The embedder folder /nowhere/minilm does not exist.")

        def close(self) -> None:
            NoEmbedder.closed = True

    editor = RulesEditor(project, backends_factory=NoEmbedder)
    qtbot.addWidget(editor)
    with qtbot.waitSignal(editor.conflict_search_finished, timeout=30000) as done:
        editor.find_conflicts_action.trigger()
    assert done.args == ["failed", 0]
    assert "conflict search failed" in editor.status.text() and "/nowhere/minilm" in editor.status.text()
    assert editor.find_conflicts_action.isEnabled()
    # The models are released on the worker after the outcome is posted (the window does not wait for it).
    qtbot.waitUntil(lambda: NoEmbedder.closed, timeout=30000)


def test_conflicts_found_after_an_edit_are_not_shown_on_the_new_version(qtbot, project: Project) -> None:
    backends = FakeBackends()
    blocking = _BlockingEmbedder()
    backends.e = blocking  # type: ignore[assignment]
    editor = RulesEditor(project, backends_factory=lambda: backends)
    qtbot.addWidget(editor)
    complaint, question = _make_similar_pair(editor)
    searched = editor.model.rule_set_id
    editor.find_conflicts_action.trigger()
    qtbot.waitUntil(blocking.entered.is_set, timeout=10000)
    editor.model.push(Move(uids(editor.model)[0], 2))  # the user keeps editing: a new version
    with qtbot.waitSignal(editor.conflict_search_finished, timeout=30000) as done:
        blocking.release.set()
    assert done.args[0] == "done" and done.args[1] > 0
    assert any({c.rule_a, c.rule_b} == {complaint, question} and c.source == "similarity"
               for c in project.conflicts(searched))
    assert f"v{searched}" in editor.status.text() and "edited since" in editor.status.text()


def test_closing_the_editor_stops_the_search(qtbot, project_path: Path) -> None:  # type: ignore[no-untyped-def]
    import threading

    from pld_desktop.ui.tasks import task_keeper
    backends = FakeBackends()
    blocking = _BlockingEmbedder()
    backends.e = blocking  # type: ignore[assignment]
    editor = RulesEditor(project_path, backends_factory=lambda: backends)
    qtbot.addWidget(editor)
    searched = editor.model.rule_set_id
    with Project.open(project_path, read_only=True) as before:
        stored = before.conflicts(searched)
    editor.find_conflicts_action.trigger()
    qtbot.waitUntil(blocking.entered.is_set, timeout=10000)
    threading.Timer(0.3, blocking.release.set).start()  # the embedder returns while close() is waiting
    editor.close()  # cancels, then waits for the thread before the project closes
    assert not editor.searching() and all(t.isFinished() for t in task_keeper().running())
    qtbot.waitUntil(lambda: not task_keeper().running(), timeout=5000)  # dropped once its end is delivered
    with Project.open(project_path, read_only=True) as reopened:
        assert reopened.conflicts(searched) == stored  # stopped before anything was written
        assert reopened.integrity_check() == "ok"


@pytest.mark.slow
def test_find_conflicts_with_the_real_embedder(qtbot, project: Project) -> None:  # type: ignore[no-untyped-def]
    """The default backends factory loads the embedded MiniLM on the worker thread and finds the edited pair."""
    editor = RulesEditor(project)  # no backends_factory: DefaultBackends, as in the app
    qtbot.addWidget(editor)
    complaint, question = _make_similar_pair(editor)
    with qtbot.waitSignal(editor.conflict_search_finished, timeout=180000) as done:
        editor.find_conflicts_action.trigger()
    assert done.args[0] == "done" and done.args[1] > 0, editor.status.text()
    assert complaint in _similarity_partners(editor, question)
