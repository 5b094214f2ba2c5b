"""The rule editor: a filterable rule tree with undoable edits, a side panel (conflicts, provenance, prompt preview)
and a picker over the saved rule-set versions."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QItemSelectionModel,
    QModelIndex,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import QAction, QCloseEvent, QFontDatabase, QKeyEvent, QKeySequence, QUndoStack
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QStyle,
    QToolBar,
    QToolButton,
    QTreeView,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..backends.tokenizer import TokenizerLoading
from ..core.domain import Rule
from ..core.export import export_rule_set
from ..core.progress import Cancelled
from ..core.project import Project, ProjectFileError
from ..core.rule_edits import Add, Compound, Delete, Duplicate, Move, RuleEdit, editor_start_version
from ..core.rule_edits import rule_contents as _content
from .rule_delegate import ColumnFitter, LabelDelegate
from .rules_model import (
    COL_CONFLICTS,
    COL_ENABLED,
    COL_IMPACT,
    COL_LABEL,
    COL_MICRO,
    COL_NUMBER,
    COL_TEXT,
    ConflictRole,
    RulesModel,
    SortRole,
    UidRole,
)
from .tasks import PipelineTask, QtProgress, TaskRunner, start_pipeline

_Index = QModelIndex | QPersistentModelIndex

class ConflictSearch:
    """A task for TaskRunner: core.rule_edits.add_model_conflicts for one saved version on its own Project
    connection; returns how many conflicts it added. Cancellation is cooperative (checked before the search and
    between embedding batches); a model load cannot be interrupted. `release()` (the runner's `after`) frees
    the embedder."""

    def __init__(self, project_path: Path, rule_set_id: int, backends_factory: Callable[[], Any]) -> None:
        self.project_path = project_path
        self.rule_set_id = rule_set_id
        self.backends_factory = backends_factory
        self._backends: Any = None

    def __call__(self, progress: QtProgress) -> int:  # on the worker thread
        from ..core.rule_edits import add_model_conflicts
        from ..core.settings import load_settings

        backends = self._backends = self.backends_factory()
        with Project.open(self.project_path) as project:  # SQLite: one connection per thread
            settings = load_settings(project)
            embedder = backends.embedder(settings)
            if progress.cancelled():  # the model load itself cannot be interrupted; check after it
                raise Cancelled("cancelled by the user")
            return add_model_conflicts(project, embedder, self.rule_set_id, settings, progress)

    def release(self) -> None:  # on the worker thread, after the outcome is posted
        backends, self._backends = self._backends, None
        if backends is not None:
            backends.close()


def conflict_recompute_job(rule_set_id: int, rules: set[str]) -> Callable[[Any, Any, Any, Any], str]:
    """The runner's job after edits settle: similarity and co-firing conflicts of the `rules` edited since the
    last pass, in `rule_set_id` (core.rule_edits.add_model_conflicts; pairs of unchanged rules were carried)."""
    def job(project: Project, backends: Any, settings: Any, progress: Any) -> str:
        from ..core.rule_edits import add_model_conflicts
        embedder = backends.embedder(settings)
        added = add_model_conflicts(project, embedder, rule_set_id, settings, progress, only=set(rules))
        return f"{added} new conflict{'s' if added != 1 else ''} for the edited rule{'s' if len(rules) != 1 else ''}"
    return job


def impact_job(rule_set_id: int) -> Callable[[Any, Any, Any, Any], str]:
    """The runner's job for the impact column: core.impact.rule_impact on dev for `rule_set_id`."""
    def job(project: Project, backends: Any, settings: Any, progress: Any) -> str:
        from ..core.impact import rule_impact
        report = rule_impact(project, backends.student(settings), rule_set_id, settings=settings, progress=progress)
        hurt = sum(r.hurts for r in report.rules)
        return (f"Rule impact of v{rule_set_id} on {report.n} dev examples: {hurt} of {len(report.rules)} enabled "
                f"rule{'s' if len(report.rules) != 1 else ''} lower dev macro-F1")
    return job


class RulesFilterProxy(QSortFilterProxyModel):
    """Filters top-level rules by text (rule, label or uid) and by "has conflicts"; a kept rule keeps its children."""

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._needle = ""
        self._conflicts_only = False

    def set_text(self, text: str) -> None:
        self.beginFilterChange()  # Qt 6.9+: replaces the deprecated invalidateFilter()
        self._needle = " ".join(text.split()).lower()
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def set_conflicts_only(self, on: bool) -> None:
        self.beginFilterChange()
        self._conflicts_only = bool(on)
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def filterAcceptsRow(self, source_row: int, source_parent: _Index) -> bool:
        if source_parent.isValid():
            return True  # children are shown whenever their rule is
        model = self.sourceModel()
        index = model.index(source_row, 0, source_parent)
        if self._conflicts_only and not model.data(index, ConflictRole):
            return False
        if not self._needle:
            return True
        haystack = " ".join(str(model.data(model.index(source_row, col, source_parent)) or "")
                            for col in (COL_NUMBER, COL_TEXT, COL_LABEL)).lower()
        return self._needle in haystack


class RulesTree(QTreeView):
    """The rule tree; F2 edits the rule text whichever cell of the row is current."""

    def keyPressEvent(self, event: QKeyEvent) -> None:
        current = self.currentIndex()
        if event.key() == Qt.Key.Key_F2 and current.isValid() and current.column() not in (COL_TEXT, COL_LABEL):
            target = current.siblingAtColumn(COL_TEXT)
            if target.flags() & Qt.ItemFlag.ItemIsEditable:
                self.setCurrentIndex(target)
                self.edit(target)
                return
        super().keyPressEvent(event)


class RulesEditor(QWidget):
    """Edit a project's rules. Every edit saves a new rule-set version (see core.rule_edits.save_version).

    Call only from the GUI thread. Given a path, the editor opens the project itself and closes it with the widget.
    """

    version_saved = Signal(int)
    export_requested = Signal(int)
    version_picked = Signal(int)     # the user picked a saved version (it became the working version)
    job_finished = Signal(str, str)  # kind ("impact" | "conflicts"), status ("done" | "cancelled" | "failed")
    conflict_search_finished = Signal(str, int)  # status ("done" | "cancelled" | "failed"), conflicts added

    def __init__(self, project: Project | str | os.PathLike[str], parent: QWidget | None = None, *,
                 rule_set_id: int | None = None, token_counter: Callable[[str], int] | None = None,
                 n_ctx: int = 4096, handle_export: bool = True,
                 backends_factory: Callable[[], Any] | None = None) -> None:
        super().__init__(parent)
        # A callable returning a BackendProvider (None: the real models); only its embedder is used here.
        self.backends_factory = backends_factory
        self._search: ConflictSearch | None = None  # the embedder's conflict search running on search_runner
        self.search_runner = TaskRunner(self, name="pld-conflict-search")
        self.search_runner.begun.connect(self._on_search_begun)
        self.search_runner.reported.connect(self._on_search_reported)
        self.search_runner.succeeded.connect(lambda added: self._on_search_finished("done", added, ""))
        self.search_runner.cancelled.connect(lambda: self._on_search_finished("cancelled", 0, ""))
        self.search_runner.failed.connect(lambda message, _exc: self._on_search_finished("failed", 0, message))
        self.job: PipelineTask | None = None     # a background impact or conflict pass (one at a time)
        # serial: a job starts once the last one's models are freed
        self.job_runner = TaskRunner(self, serial=True, name="pld-rules-job")
        self.job_runner.begun.connect(self._on_job_begun)
        self.job_runner.reported.connect(self._on_job_reported)
        self.job_runner.succeeded.connect(lambda outcome: self._on_job_finished(*outcome))
        self.job_runner.failed.connect(lambda message, _exc: self._on_job_finished("failed", message))
        self.job_kind = ""
        self._job_version: int | None = None
        # Conflicts of edited rules are recomputed once edits settle; this is the version they were last
        # recomputed for (or opened at), so the pass covers every rule edited since.
        self._conflicts_base: dict[str, tuple[str, str]] | None = None
        self.auto_conflicts = True
        self._owns_project = not isinstance(project, Project)
        self.project = project if isinstance(project, Project) else Project.open(Path(project))
        start = rule_set_id or editor_start_version(self.project)
        if start is None:
            if self._owns_project:
                self.project.close()
            raise ProjectFileError("This project has no rules yet: run phases 1 and 2 first.")
        self.token_counter = token_counter
        self.n_ctx = n_ctx
        self.handle_export = handle_export
        self.undo_stack = QUndoStack(self)
        self.model = RulesModel(self.project, start, self.undo_stack, self)
        self.proxy = RulesFilterProxy(self)
        self.proxy.setSourceModel(self.model)
        self._build()
        self.model.version_saved.connect(self._on_version_saved)
        self.model.edit_failed.connect(self._show_error)
        self.model.version_loaded.connect(lambda _id: self._refresh_version_view())
        self._refresh_versions()
        self._refresh_version_view()
        self._conflicts_base = _content(self.model.rules())
        # call-arg: PySide6 takes a signal's slot as a keyword argument; its QTimer stub does not list them.
        self._conflict_timer = QTimer(self, interval=1500, singleShot=True, timeout=self._start_conflict_pass)  # type: ignore[call-arg]

    # -- building -------------------------------------------------------------------------------
    def _build(self) -> None:
        top = self._build_version_row()
        self._build_toolbar()
        filters = self._build_filter_row()
        self._build_tree()
        side, rule_lay = self._build_side_panel()
        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.addWidget(self.tree)
        self.splitter.addWidget(side)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 2)
        self.splitter.setSizes([780, 520])

        self.status = QLabel()
        self.status.setWordWrap(True)

        self._build_progress_rows()
        self._build_fix_row(rule_lay)

        lay = QVBoxLayout(self)
        lay.addLayout(top)
        lay.addWidget(self.toolbar)
        lay.addLayout(filters)
        lay.addWidget(self.splitter, 1)
        lay.addWidget(self.search_row)
        lay.addWidget(self.job_row)
        lay.addWidget(self.status)

    def _build_version_row(self) -> QHBoxLayout:
        """The version picker."""
        self.versions = QComboBox()
        self.versions.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.versions.setMinimumContentsLength(60)
        self.versions.activated.connect(self._pick_version)
        top = QHBoxLayout()
        top.addWidget(QLabel("Version:"))
        top.addWidget(self.versions, 1)
        return top

    def _toolbar_action(self, text: str, icon: QStyle.StandardPixmap, slot: Callable[[], object], tip: str,
                        keys: QKeySequence | None = None) -> QAction:
        act = QAction(self.style().standardIcon(icon), text, self)
        act.setToolTip(tip + (f" ({keys.toString(QKeySequence.SequenceFormat.NativeText)})" if keys else ""))
        act.triggered.connect(slot)
        act.setProperty("help_name", f"Rules: {tip[0].lower()}{tip[1:]}")  # Help > Keyboard Shortcuts
        if keys is not None:
            act.setShortcut(keys)
        self.toolbar.addAction(act)
        return act

    def _build_toolbar(self) -> None:
        """Add, delete, duplicate, move, undo/redo, export, find conflicts, rule impact."""
        style = self.style()
        action = self._toolbar_action
        self.toolbar = QToolBar()
        self.toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)

        self.add_action = action("Add", QStyle.StandardPixmap.SP_FileDialogNewFolder, self.add_rule,
                                 "Add a rule after the selected one", QKeySequence("Ins"))
        self.delete_action = action("Delete", QStyle.StandardPixmap.SP_TrashIcon, self.delete_selected,
                                    "Delete the selected rules", QKeySequence(QKeySequence.StandardKey.Delete))
        self.duplicate_action = action("Duplicate", QStyle.StandardPixmap.SP_FileLinkIcon, self.duplicate_selected,
                                       "Duplicate the selected rule", QKeySequence("Ctrl+D"))
        self.up_action = action("Move up", QStyle.StandardPixmap.SP_ArrowUp, lambda: self.move_selected(-1),
                                "Move the selected rule up (earlier rules win)", QKeySequence("Alt+Up"))
        self.down_action = action("Move down", QStyle.StandardPixmap.SP_ArrowDown, lambda: self.move_selected(1),
                                  "Move the selected rule down", QKeySequence("Alt+Down"))
        self.toolbar.addSeparator()
        self.undo_action = self.undo_stack.createUndoAction(self, "Undo")
        self.undo_action.setIcon(style.standardIcon(QStyle.StandardPixmap.SP_ArrowBack))
        self.undo_action.setShortcut(QKeySequence.StandardKey.Undo)
        self.redo_action = self.undo_stack.createRedoAction(self, "Redo")
        self.redo_action.setIcon(style.standardIcon(QStyle.StandardPixmap.SP_ArrowForward))
        self.redo_action.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
        self.toolbar.addAction(self.undo_action)
        self.toolbar.addAction(self.redo_action)
        self.toolbar.addSeparator()
        self.export_action = action("Export…", QStyle.StandardPixmap.SP_DialogSaveButton, self.export_current,
                                    "Export this version as .txt, .md and .json")
        self.toolbar.addSeparator()
        self.find_conflicts_action = action(
            "Find conflicts", QStyle.StandardPixmap.SP_FileDialogContentsView,
            self.find_conflicts,
            "Embed the rules of this version and add the conflicts phase 2 would find: very similar rules with "
            "different labels, and rules that fire on the same training items but lead to different labels")

        self.impact_action = action(
            "Rule impact", QStyle.StandardPixmap.SP_FileDialogDetailedView, self.compute_impact,
            "Score this version on dev without each enabled rule in turn (in the background): the column "
            "'Without it' shows the change in dev macro-F1 and the examples that flip; rules that hurt are marked")

        # Undo/redo name the edit ("Undo relabelled R8 as complaint"): icons only, so the toolbar fits 1280 px;
        # the text stays in the tooltip and in the Edit menu.
        for act in (self.undo_action, self.redo_action):
            button = self.toolbar.widgetForAction(act)
            if isinstance(button, QToolButton):  # a toolbar shows its actions as tool buttons
                button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonIconOnly)

    def _build_filter_row(self) -> QHBoxLayout:
        """The text filter, "Show conflicts only" and how many rules are shown."""
        self.filter_box = QLineEdit()
        self.filter_box.setPlaceholderText("Filter rules by text, label or id…")
        self.filter_box.setClearButtonEnabled(True)
        self.filter_box.textChanged.connect(self._on_filter)
        self.conflicts_only = QCheckBox("Show conflicts only")
        self.conflicts_only.toggled.connect(self._on_conflicts_only)
        self.shown_label = QLabel()
        filters = QHBoxLayout()
        filters.addWidget(self.filter_box, 1)
        filters.addWidget(self.conflicts_only)
        filters.addWidget(self.shown_label)
        return filters

    def _build_tree(self) -> None:
        """The rule tree: editing, drag and drop, wrapping text, sorting, and the shortcuts that act on it."""
        self.tree = RulesTree()
        self.tree.setModel(self.proxy)
        self.tree.setItemDelegate(LabelDelegate(lambda: self.model.labels, self.tree))
        self.tree.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.tree.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.tree.setEditTriggers(QAbstractItemView.EditTrigger.DoubleClicked
                                  | QAbstractItemView.EditTrigger.EditKeyPressed)
        self.tree.setDragDropMode(QAbstractItemView.DragDropMode.InternalMove)
        self.tree.setDefaultDropAction(Qt.DropAction.MoveAction)
        self.tree.setDragEnabled(True)
        self.tree.setAcceptDrops(True)
        self.tree.setDropIndicatorShown(True)
        self.tree.setAlternatingRowColors(True)
        # Rules are read and signed off, so their whole text wraps instead of being cut at the column edge.
        self.tree.setUniformRowHeights(False)
        self.tree.setWordWrap(True)
        header = self.tree.header()
        header.setStretchLastSection(False)
        for col in (COL_NUMBER, COL_LABEL, COL_ENABLED, COL_MICRO, COL_CONFLICTS, COL_IMPACT):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.Interactive)
        header.setSectionResizeMode(COL_TEXT, QHeaderView.ResizeMode.Stretch)
        self.column_fitter = ColumnFitter(self.tree, self.model)  # widths from the texts, not ResizeToContents
        self.column_fitter.fit()
        # Sortable (by impact above all); "#" ascending is the prompt's order, the only one drags make sense in.
        self.proxy.setSortRole(SortRole)
        # No sort at build: the model's rows are already in prompt order ("#" ascending), and a sort asks the model
        # ~3k times (0.1 s of the GUI thread at 200 rules). Enabling sorts by the indicator, so it is "none" then,
        # and "#" is shown without the signal that would sort; a click on a header sorts as usual.
        header.setSortIndicator(-1, Qt.SortOrder.AscendingOrder)
        self.tree.setSortingEnabled(True)
        blocked = header.blockSignals(True)
        header.setSortIndicator(COL_NUMBER, Qt.SortOrder.AscendingOrder)
        header.blockSignals(blocked)
        header.sortIndicatorChanged.connect(self._on_sort_changed)
        header.resizeSection(COL_NUMBER, 64)
        header.sectionResized.connect(lambda col, *_: self.tree.scheduleDelayedItemsLayout()
                                      if col == COL_TEXT else None)
        self.tree.selectionModel().selectionChanged.connect(lambda *_: self._on_selection())
        # Delete acts on the tree only, so the key still deletes characters in the filter box and in editors.
        self.delete_action.setShortcutContext(Qt.ShortcutContext.WidgetShortcut)
        self.tree.addAction(self.delete_action)
        for act in (self.add_action, self.duplicate_action, self.up_action, self.down_action, self.undo_action,
                    self.redo_action):
            act.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            self.addAction(act)

    def _build_side_panel(self) -> tuple[QSplitter, QVBoxLayout]:
        """The selected rule, its conflicts and the live prompt; returns the panel and the selected rule's layout."""
        # Side panel: the selected rule, its conflicts, the live prompt.
        self.rule_title = QLabel()
        self.rule_title.setWordWrap(True)
        self.rule_title.setTextFormat(Qt.TextFormat.RichText)
        self.provenance = QLabel()
        self.provenance.setWordWrap(True)
        self.provenance.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        rule_box = QGroupBox("Selected rule")
        rule_lay = QVBoxLayout(rule_box)
        rule_lay.addWidget(self.rule_title)
        rule_lay.addWidget(self.provenance)
        rule_lay.addStretch(1)

        self.conflict_list = QTreeWidget()
        self.conflict_list.setHeaderLabels(["With", "Found by", "Reason", "Evidence"])
        self.conflict_list.setRootIsDecorated(False)
        self.conflict_list.setWordWrap(True)
        self.conflict_list.setAlternatingRowColors(True)
        self.conflict_list.itemDoubleClicked.connect(self._jump_to_conflict)
        ch = self.conflict_list.header()
        ch.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        ch.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        ch.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        ch.setSectionResizeMode(3, QHeaderView.ResizeMode.Interactive)
        ch.setStretchLastSection(False)
        ch.resizeSection(3, 130)
        self.conflict_box = QGroupBox("Conflicts")
        conflict_lay = QVBoxLayout(self.conflict_box)
        conflict_lay.addWidget(self.conflict_list)

        self.token_label = QLabel()
        self.token_label.setWordWrap(True)
        self.prompt_view = QPlainTextEdit()
        self.prompt_view.setReadOnly(True)
        self.prompt_view.setLineWrapMode(QPlainTextEdit.LineWrapMode.WidgetWidth)
        self.prompt_view.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        prompt_box = QGroupBox("System prompt of this version (exact text)")
        prompt_lay = QVBoxLayout(prompt_box)
        prompt_lay.addWidget(self.token_label)
        prompt_lay.addWidget(self.prompt_view)

        side = QSplitter(Qt.Orientation.Vertical)
        side.addWidget(rule_box)
        side.addWidget(self.conflict_box)
        side.addWidget(prompt_box)
        side.setStretchFactor(0, 0)
        side.setStretchFactor(1, 1)
        side.setStretchFactor(2, 2)
        side.setSizes([130, 260, 400])
        return side, rule_lay

    def _build_progress_rows(self) -> None:
        """The rows shown only while a conflict search, or an impact or conflict pass, runs."""
        # Shown only while the conflict search runs.
        self.search_label = QLabel()
        self.search_bar = QProgressBar()
        self.search_bar.setMaximumWidth(220)
        self.search_cancel = QPushButton("Cancel search")
        self.search_cancel.setToolTip("Stop the conflict search; nothing is added to this version")
        self.search_cancel.clicked.connect(self.cancel_conflict_search)
        self.search_row = QWidget()
        search_lay = QHBoxLayout(self.search_row)
        search_lay.setContentsMargins(0, 0, 0, 0)
        search_lay.addWidget(self.search_label, 1)
        search_lay.addWidget(self.search_bar)
        search_lay.addWidget(self.search_cancel)
        self.search_row.hide()

        # Shown only while a background impact or conflict pass runs.
        self.job_label = QLabel()
        self.job_bar = QProgressBar()
        self.job_bar.setMaximumWidth(220)
        self.job_cancel = QPushButton("Cancel")
        self.job_cancel.clicked.connect(self.cancel_job)
        self.job_row = QWidget()
        job_lay = QHBoxLayout(self.job_row)
        job_lay.setContentsMargins(0, 0, 0, 0)
        job_lay.addWidget(self.job_label, 1)
        job_lay.addWidget(self.job_bar)
        job_lay.addWidget(self.job_cancel)
        self.job_row.hide()

    def _build_fix_row(self, rule_lay: QVBoxLayout) -> None:
        """One-click fixes of a rule whose text names another label than its label field."""
        self.fix_label_btn = QPushButton()
        self.fix_label_btn.clicked.connect(lambda: self.fix_mismatch("label"))
        self.fix_text_btn = QPushButton()
        self.fix_text_btn.clicked.connect(lambda: self.fix_mismatch("text"))
        self.fix_row = QWidget()
        fix_lay = QHBoxLayout(self.fix_row)
        fix_lay.setContentsMargins(0, 0, 0, 0)
        fix_lay.addWidget(self.fix_label_btn)
        fix_lay.addWidget(self.fix_text_btn)
        fix_lay.addStretch(1)
        self.fix_row.hide()
        rule_lay.insertWidget(2, self.fix_row)

    # -- selection helpers -------------------------------------------------------------------------
    def _source(self, proxy_index: _Index) -> QModelIndex:
        return self.proxy.mapToSource(proxy_index)

    def selected_uids(self) -> list[str]:
        """Uids of the selected rules in list order (a selected micro-rule or example counts as its rule)."""
        uids: set[str] = set()
        for idx in self.tree.selectionModel().selectedRows():
            src = self._source(idx)
            while src.parent().isValid():
                src = src.parent()
            uids.add(src.data(UidRole))
        return [r.uid for r in self.model.rules() if r.uid in uids]

    def current_uid(self) -> str | None:
        uids = self.selected_uids()
        if uids:
            return uids[0]
        src = self._source(self.tree.currentIndex())
        while src.isValid() and src.parent().isValid():
            src = src.parent()
        return src.data(UidRole) if src.isValid() else None

    def select_uid(self, uid: str, column: int = 0) -> None:
        src = self.model.index_of_uid(uid, column)
        proxy = self.proxy.mapFromSource(src)
        if proxy.isValid():
            flags = QItemSelectionModel.SelectionFlag.ClearAndSelect | QItemSelectionModel.SelectionFlag.Rows
            self.tree.selectionModel().setCurrentIndex(proxy, flags)
            self.tree.scrollTo(proxy)

    # -- actions ----------------------------------------------------------------------------------
    def _push(self, edit: RuleEdit) -> bool:
        self.status.clear()
        return self.model.push(edit)

    def add_rule(self) -> None:
        uid = self.current_uid()
        rules = self.model.rules()
        pos = next((i for i, r in enumerate(rules) if r.uid == uid), None)
        label = rules[pos].label if pos is not None else self.model.labels[0]
        index = pos + 1 if pos is not None else len(rules)
        if self._push(Add(f"If …, answer {label}.", label, index)):
            new_uid = self.model.rules()[index].uid
            self.select_uid(new_uid, COL_TEXT)
            self.tree.edit(self.tree.currentIndex())

    def delete_selected(self) -> None:
        uids = self.selected_uids()
        if not uids:
            return
        after = self._neighbour_after(uids)
        edit: RuleEdit = Delete(uids[0]) if len(uids) == 1 else Compound(tuple(Delete(u) for u in uids),
                                                                        f"deleted {', '.join(uids)}")
        if self._push(edit) and after is not None:
            self.select_uid(after)

    def _neighbour_after(self, uids: list[str]) -> str | None:
        order = [r.uid for r in self.model.rules()]
        last = max(order.index(u) for u in uids)
        rest = [u for u in order[last + 1:] if u not in uids] or [u for u in order if u not in uids][-1:]
        return rest[0] if rest else None

    def duplicate_selected(self) -> None:
        uid = self.current_uid()
        if uid is not None and self._push(Duplicate(uid)):
            rules = self.model.rules()
            self.select_uid(rules[[r.uid for r in rules].index(uid) + 1].uid)

    def move_selected(self, step: int) -> None:
        uid = self.current_uid()
        if uid is None:
            return
        order = [r.uid for r in self.model.rules()]
        target = order.index(uid) + step
        if 0 <= target < len(order) and self._push(Move(uid, target)):
            self.select_uid(uid)

    def export_current(self) -> None:
        rs_id = self.model.rule_set_id
        self.export_requested.emit(rs_id)
        if not self.handle_export:
            return
        folder = QFileDialog.getExistingDirectory(self, "Export this rule-set version to",
                                                  str(self.project.path.parent))
        if folder:
            self.export_to(Path(folder))

    def export_to(self, folder: Path) -> list[Path]:
        try:
            written = export_rule_set(self.project, folder, rule_set_id=self.model.rule_set_id)
        except (OSError, ValueError, RuntimeError, ProjectFileError) as exc:
            self._show_error(f"Export failed: {exc}")
            return []
        self.status.setText(f"Exported v{self.model.rule_set_id}: " + ", ".join(p.name for p in written)
                            + f" in {folder}")
        return written

    # -- conflicts from the embedder (background) -------------------------------------------------
    def searching(self) -> bool:
        return self._search is not None

    def find_conflicts(self) -> None:
        """Start the embedder's conflict pass on the shown version in the background."""
        if self._search is not None:
            return
        if len(self.model.rules()) < 2:
            self.status.setText("A conflict needs two rules; this version has fewer.")
            return
        from ..backends.factory import window_backends

        task = ConflictSearch(Path(self.project.path), self.model.rule_set_id, self.backends_factory or window_backends)
        self._search = task
        self.status.clear()
        self.search_label.setText(f"Finding conflicts in v{task.rule_set_id}: loading the embedder…")
        self.search_bar.setRange(0, 0)  # busy until the first stage says how many items it has
        self.search_cancel.setEnabled(True)
        self.search_row.show()
        self.find_conflicts_action.setEnabled(False)
        self.search_runner.start(task, after=task.release)

    def cancel_conflict_search(self) -> None:
        if self._search is None:
            return
        self.search_runner.cancel()
        self.search_cancel.setEnabled(False)
        self.search_label.setText("Stopping the conflict search (a model that is loading finishes first)…")

    def _on_search_begun(self, stage: str, total: int) -> None:
        if self._search is None:
            return
        stage = stage.split(": ", 1)[-1]  # the core names its stage after phase 2; here it is the editor's
        self.search_label.setText(f"Finding conflicts in v{self._search.rule_set_id}: {stage}…")
        self.search_bar.setRange(0, max(1, total))
        self.search_bar.setValue(0)

    def _on_search_reported(self, done: int, total: int, _message: str) -> None:
        if self._search is None:
            return
        self.search_bar.setRange(0, max(1, total))
        self.search_bar.setValue(done)

    def _on_search_finished(self, status: str, added: int, message: str) -> None:
        task = self._search
        if task is None:
            return
        self._search = None
        self.search_row.hide()
        self.find_conflicts_action.setEnabled(True)
        searched = task.rule_set_id
        if status == "failed":
            self._show_error(message, prefix="The conflict search failed")
        elif status == "cancelled":
            self.status.setText(f"Conflict search cancelled; nothing was added to v{searched}.")
        else:
            found = f"{added} new conflict{'s' if added != 1 else ''}" if added else "no new conflicts"
            if searched == self.model.rule_set_id:
                self._reload_conflicts()
                self.status.setText(f"The embedder found {found} in v{searched}.")
            else:
                # The user edited meanwhile: the conflicts belong to the version that was searched.
                self.status.setText(f"The embedder found {found} in v{searched}, but you have edited since "
                                    f"(now v{self.model.rule_set_id}); run the search again for this version.")
        self.conflict_search_finished.emit(status, added)

    def _reload_conflicts(self) -> None:
        """Re-read the shown version's conflicts from the project without resetting the tree (selection,
        expansion and the undo history stay)."""
        self.model.reload_conflicts()
        self._after_conflicts_changed()

    def _after_conflicts_changed(self) -> None:
        self.proxy.set_conflicts_only(self.conflicts_only.isChecked())  # re-filter: conflicts changed
        self._update_shown()
        self._on_selection()

    def shutdown(self) -> None:
        """Stop a running search or job and wait for its thread (the window or the project is closing)."""
        self._search = None
        self.search_runner.shutdown(wait=True)  # ends at the next cancellation check; a model load finishes first
        self._conflict_timer.stop()
        self.job = None
        self.job_runner.shutdown(wait=True)

    # -- background jobs: rule impact, conflicts of edited rules ------------------------------------------------
    def compute_impact(self) -> bool:
        """Score the shown version on dev without each enabled rule, in the background."""
        if self.job is not None and self.job_kind == "conflicts":
            self.cancel_job()  # the conflict pass is redone after; impact was asked for
        if self.job is not None:
            return False
        rs_id = self.model.rule_set_id
        return self._start_job("impact", rs_id, impact_job(rs_id), f"Rule impact of v{rs_id}: loading the student…")

    def _start_job(self, kind: str, rs_id: int, job: Callable[[Any, Any, Any, Any], str], text: str) -> bool:
        from ..backends.factory import window_backends
        self.job = PipelineTask(Path(self.project.path), [], backends_factory=self.backends_factory or window_backends,
                                job=job)
        self.job_kind, self._job_version = kind, rs_id
        self.job_label.setText(text)
        self.job_bar.setRange(0, 0)
        self.job_cancel.setEnabled(True)
        self.job_row.show()
        self.impact_action.setEnabled(False)
        start_pipeline(self.job_runner, self.job)
        return True

    def cancel_job(self) -> None:
        if self.job is not None:
            self.job_runner.cancel()
            self.job_cancel.setEnabled(False)

    def _on_job_begun(self, stage: str, total: int) -> None:
        if self.job is None:
            return
        what = "Rule impact" if self.job_kind == "impact" else "Checking the edited rules' conflicts"
        self.job_label.setText(f"{what} (v{self._job_version}): {stage.split(': ', 1)[-1]}…")
        self.job_bar.setRange(0, max(0, total))

    def _on_job_reported(self, done: int, total: int, _message: str) -> None:
        if self.job is None:
            return
        self.job_bar.setRange(0, max(1, total))
        self.job_bar.setValue(done)

    def _on_job_finished(self, status: str, message: str) -> None:
        if self.job is None:
            return
        kind, rs_id = self.job_kind, self._job_version
        self.job, self.job_kind, self._job_version = None, "", None
        self.job_row.hide()
        self.impact_action.setEnabled(True)
        if status == "failed":
            self._show_error(message, prefix="Rule impact failed" if kind == "impact" else "The conflict check failed")
        elif kind == "impact":
            if rs_id == self.model.rule_set_id:
                self.model.reload_impact()
            self.status.setText(message if status == "done" else
                                "Rule impact stopped; the rules scored so far are kept and reused.")
        elif status == "done" and rs_id == self.model.rule_set_id:
            self.model.reload_conflicts()
            self._after_conflicts_changed()
            self.status.setText(f"Conflicts rechecked in the background for v{rs_id}: {message}.")
        self.job_finished.emit(kind, status)
        if self._pending_conflict_rules():
            self._conflict_timer.start()  # edits arrived while it ran (or it was stopped): check again

    def _pending_conflict_rules(self) -> set[str]:
        """Rules of the shown version whose text or label changed since the last conflict pass."""
        if self._conflicts_base is None:
            return set()
        now = _content(self.model.rules())
        return {u for u, c in now.items() if self._conflicts_base.get(u) != c}

    def _start_conflict_pass(self) -> None:
        if not self.auto_conflicts:
            return
        if self.job is not None or self._search is not None:
            self._conflict_timer.start()  # after the running job
            return
        edited = self._pending_conflict_rules()
        if not edited or len(self.model.rules()) < 2:
            return
        rs_id = self.model.rule_set_id
        self._conflicts_base = _content(self.model.rules())
        self._start_job("conflicts", rs_id, conflict_recompute_job(rs_id, edited),
                        f"Checking the conflicts of {', '.join(sorted(edited))} (v{rs_id}) in the background…")

    def _on_sort_changed(self, column: int, order: Qt.SortOrder) -> None:
        # Dropping a rule between rows only means "this position in the prompt" when rows show prompt order.
        self.tree.setDragEnabled(column == COL_NUMBER and order == Qt.SortOrder.AscendingOrder)

    # -- label mismatch: one-click fixes ------------------------------------------------------------
    def mismatch_of(self, uid: str) -> dict[str, Any] | None:
        """The rule's label-mismatch conflict (its text names another label than its label field), if any."""
        from ..core.rule_edits import LABEL_MISMATCH
        return next((c for c in self.model.conflicts_of(uid) if c["source"] == LABEL_MISMATCH), None)

    def fix_mismatch(self, which: str) -> bool:
        """Fix the selected rule's label mismatch: "label" sets the label to the text's, "text" rewrites the
        text to name the label. Both are ordinary undoable edits."""
        from ..core.rule_edits import RuleEditError, fix_label_to_text, fix_text_to_label
        uid = self.current_uid()
        if uid is None or self.mismatch_of(uid) is None:
            return False
        try:
            fix = fix_label_to_text if which == "label" else fix_text_to_label
            edit = fix(self.model.rules(), uid, self.model.labels)
        except RuleEditError as exc:
            self._show_error(str(exc))
            return False
        ok = self._push(edit)
        if ok:
            self.select_uid(uid)
        return ok

    # -- reactions --------------------------------------------------------------------------------
    def _on_filter(self, text: str) -> None:
        self.proxy.set_text(text)
        self._update_shown()

    def _on_conflicts_only(self, on: bool) -> None:
        self.proxy.set_conflicts_only(on)
        self._update_shown()

    def _update_shown(self) -> None:
        total = self.model.rowCount()
        shown = self.proxy.rowCount()
        self.shown_label.setText(f"{shown} of {total} rules" if shown != total else f"{total} rules")

    def _show_error(self, message: str, prefix: str = "Not saved") -> None:
        self.status.setText(f"<span style='color:#c62828'><b>{_html(prefix)}:</b> {_html(message)}</span>")

    def _on_version_saved(self, rs_id: int) -> None:
        self._refresh_versions()
        self._refresh_version_view()
        self.version_saved.emit(rs_id)
        if self._pending_conflict_rules():
            self._conflict_timer.start()  # restarted by every edit: one pass once the edits settle

    def _pick_version(self, row: int) -> None:
        rs_id = self.versions.itemData(row)
        if rs_id is not None and rs_id != self.model.rule_set_id:
            from ..core.working import set_working_rule_set
            self.model.load_version(int(rs_id))
            set_working_rule_set(self.project, int(rs_id))  # a picked version is the working version
            self._conflicts_base = _content(self.model.rules())
            self.tree.expandToDepth(-1)
            self.version_picked.emit(int(rs_id))

    def reload_after_run(self) -> None:
        """Show what a run left, in place: the working version (which may be a new one), its conflicts and impact,
        and the version list. Rebuilding the editor instead re-created every widget and measured the tree again
        (~1 s of the GUI thread with 200 rules). Loading another version clears the undo history, as picking does."""
        start = editor_start_version(self.project)
        if start is not None and start != self.model.rule_set_id:
            self.model.reload_version(start)
            self._conflicts_base = _content(self.model.rules())
            self.tree.expandToDepth(-1)
        else:
            self.model.reload_conflicts()
        self._refresh_versions()
        self._refresh_version_view()

    def _refresh_versions(self) -> None:
        from ..core.working import pipeline_choice, working_rule_set
        chosen = pipeline_choice(self.project)
        working = working_rule_set(self.project)
        self.versions.blockSignals(True)
        self.versions.clear()
        for row in reversed(self.project.rule_sets()):  # newest first
            marks = []
            if row.id == working:
                marks.append("working")
            if row.id == chosen:
                marks.append("pipeline's choice")
            mark = f"  [{', '.join(marks)}]" if marks else ""
            reason = " ".join(str(row.reason).split())
            if len(reason) > 90:
                reason = reason[:89] + "…"
            self.versions.addItem(f"v{row.id} · {row.origin}{mark} · {reason}", row.id)
            self.versions.setItemData(self.versions.count() - 1, str(row.reason), Qt.ItemDataRole.ToolTipRole)
        self.versions.setCurrentIndex(self.versions.findData(self.model.rule_set_id))
        self.versions.blockSignals(False)

    def _refresh_version_view(self) -> None:
        rs = self.model.record
        if self.versions.currentData() != rs.id:
            self.versions.blockSignals(True)
            self.versions.setCurrentIndex(self.versions.findData(rs.id))
            self.versions.blockSignals(False)
        if self.prompt_view.toPlainText() != rs.prompt_text:
            self.prompt_view.setPlainText(rs.prompt_text)
        self.token_label.setText(self._token_text(rs.prompt_text))
        self._update_shown()
        self._on_selection()

    def _token_text(self, prompt: str) -> str:
        n: int | None = None
        why = "approximate: characters ÷ 4"
        if self.token_counter is not None:
            try:
                n = int(self.token_counter(prompt))
                counted = f"{n:,} tokens"
            except TokenizerLoading as exc:  # counted off the GUI thread; the label is refreshed when done
                why = f"approximate: the student's tokenizer is {exc}"
            except Exception as exc:
                why = f"approximate: the student's tokenizer failed ({exc})"
        if n is None:
            n = len(prompt) // 4  # no tokenizer: about four characters per token for English text
            counted = f"≈ {n:,} tokens ({_html(why)})"
        share = n / self.n_ctx if self.n_ctx else 0.0
        colour = "#c62828" if share > 1 else ("#ef6c00" if share > 0.8 else "#2e7d32")
        note = " — too long: the student cannot read it" if share > 1 else (
            " — little room left for the input" if share > 0.8 else "")
        enabled = sum(1 for r in self.model.record.rules if r.enabled)
        return (f"<span style='color:{colour}'><b>{counted}</b> of the student's {self.n_ctx:,}-token context "
                f"({share:.0%}){note}</span> · {enabled} of {len(self.model.record.rules)} rules enabled")

    def _on_selection(self) -> None:
        uid = self.current_uid()
        rule = next((r for r in self.model.rules() if r.uid == uid), None) if uid else None
        self.delete_action.setEnabled(bool(self.selected_uids()))
        for act in (self.duplicate_action, self.up_action, self.down_action):
            act.setEnabled(rule is not None)
        if rule is not None:
            order = [r.uid for r in self.model.rules()]
            self.up_action.setEnabled(order.index(rule.uid) > 0)
            self.down_action.setEnabled(order.index(rule.uid) < len(order) - 1)
        self.conflict_list.clear()
        self.fix_row.hide()
        if rule is None:
            self.rule_title.setText("<i>Select a rule to see its conflicts and where it comes from.</i>")
            self.provenance.setText(f"Version v{self.model.rule_set_id}: {self.model.record.reason}")
            self.conflict_box.setTitle("Conflicts")
            return
        state = "" if rule.enabled else " <i>(disabled: not in the prompt)</i>"
        self.rule_title.setText(f"<b>{_html(rule.uid)}</b> → <b>{_html(rule.label)}</b>{state}<br>"
                                f"{_html(rule.text)}")
        self.provenance.setText(self._provenance_text(rule))
        found = self.model.conflicts_of(rule.uid)
        self.conflict_box.setTitle(f"Conflicts of {rule.uid} ({len(found)})" if found
                                   else f"Conflicts of {rule.uid}: none found")
        for c in found:
            ev = _evidence_text(c["evidence"])
            reason = c["reason"]
            if c.get("changed_since"):
                reason = f"[rule changed since: {', '.join(c['changed_since'])}] {reason}"
            other = "itself" if c["other"] == rule.uid else c["other"]
            item = QTreeWidgetItem([other, c["source"], reason, ev])
            for col, text in enumerate((other, c["source"], reason, ev)):
                item.setToolTip(col, text)
            if c.get("changed_since"):
                item.setToolTip(2, "The teacher named this conflict before the rule was edited; it is kept so you "
                                   "can check whether the edit resolved it.\n\n" + reason)
            item.setData(0, Qt.ItemDataRole.UserRole, c["other"])
            self.conflict_list.addTopLevelItem(item)
        mismatch = self.mismatch_of(rule.uid)
        self.fix_row.setVisible(mismatch is not None)
        if mismatch is not None:
            said = mismatch["evidence"].get("text_label", "?")
            self.fix_label_btn.setText(f"Set the label to '{said}'")
            self.fix_label_btn.setToolTip(f"The text says {said}: make the label {said} (undoable)")
            self.fix_text_btn.setText(f"Make the text say '{rule.label}'")
            self.fix_text_btn.setToolTip(f"Rewrite the label the text names into {rule.label} (undoable)")

    def _provenance_text(self, rule: Rule) -> str:
        micro_ids = rule.micro_rule_ids
        parts = [f"Origin: {rule.origin or 'unknown'}."]
        if micro_ids:
            index = self.model.index_of_uid(rule.uid)
            golds: Counter[str] = Counter()
            for row in range(self.model.rowCount(index)):
                micro = self.model.index(row, 0, index)
                for erow in range(self.model.rowCount(micro)):
                    label = self.model.index(erow, COL_LABEL, micro).data() or ""
                    golds[label.split(" (")[0]] += 1
            gold = ", ".join(f"{lab} {n}" for lab, n in golds.most_common())
            parts.append(f"Merged from {len(micro_ids)} micro-rule(s) on {len(rule.example_ids)} "
                         f"training example(s)" + (f"; their gold labels: {gold}." if gold else "."))
        else:
            parts.append("No micro-rules behind it (written or rewritten by hand or by the teacher).")
        if rule.from_rules:
            parts.append("Rewritten from: " + ", ".join(rule.from_rules) + ".")
        if rule.cluster_id is not None:
            parts.append(f"Cluster {rule.cluster_id}.")
        parts.append(f"Shown version: v{self.model.rule_set_id} ({self.model.record.origin}).")
        return " ".join(parts)

    def _jump_to_conflict(self, item: QTreeWidgetItem, _column: int) -> None:
        uid = item.data(0, Qt.ItemDataRole.UserRole)
        if uid and not self.proxy.mapFromSource(self.model.index_of_uid(uid)).isValid():
            self.filter_box.clear()
            self.conflicts_only.setChecked(False)
        if uid:
            self.select_uid(uid)
            self.tree.setFocus()

    def closeEvent(self, event: QCloseEvent) -> None:
        self.shutdown()
        if self._owns_project:
            self.project.close()
            self._owns_project = False
        super().closeEvent(event)


def _evidence_text(evidence: Any) -> str:
    """Conflict evidence in words ("63 training items, e.g. 12, 15") rather than raw JSON."""
    if not isinstance(evidence, dict):
        return str(evidence)
    if "examples" in evidence:
        items = [str(x) for x in evidence.get("examples", [])]
        count = evidence.get("count", len(items))
        return f"{count} training item(s), e.g. {', '.join(items[:5])}"
    if "cosine" in evidence:
        return f"cosine similarity {evidence['cosine']}"
    if evidence.get("named_by"):
        where = f" in round {evidence['round']}" if "round" in evidence else ""
        return f"named by the {evidence['named_by']}{where}"
    return "; ".join(f"{k}: {v}" for k, v in evidence.items()) or json.dumps(evidence)


def _html(text: str) -> str:
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
