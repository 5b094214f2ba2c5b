"""The Results tab: the history of every scored rule-set version on dev and test, with the baselines and deltas,
the working version and the pipeline's choice marked; scores a version on dev (or, explicitly, on test)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QObject,
    QPersistentModelIndex,
    QSortFilterProxyModel,
    Qt,
    Signal,
)
from PySide6.QtGui import QBrush, QColor, QFont
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QStackedWidget,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from ..core.project import Project, ProjectFileError
from ..core.scoring import History, HistoryRow, Score, version_history
from .charts_extra import is_dark_palette
from .tasks import PipelineTask, TaskRunner, start_pipeline

ModelIndex = QModelIndex | QPersistentModelIndex
VersionRole = Qt.ItemDataRole.UserRole + 1   # the row's rule-set id (None on a baseline row)
SortRole = Qt.ItemDataRole.UserRole + 2
UP = QColor("#2e7d32")
DOWN = QColor("#c62828")
STALE = QColor(128, 128, 128)


def score_job(rule_set_id: int, split: str) -> Callable[[Any, Any, Any, Any], str]:
    """The runner's job that scores `rule_set_id` on `split` (with its parent and both baselines)."""
    def job(project: Project, backends: Any, settings: Any, progress: Any) -> str:
        from ..core.scoring import score_version
        student = backends.student(settings)
        return score_version(project, student, rule_set_id, split=split, settings=settings,
                             progress=progress).summary()
    return job


def _delta(own: Score | None, other: Score | None) -> float | None:
    """own - other when both exist and were scored alike (same student, same number of examples)."""
    if own is None or other is None or own.n != other.n or own.student_sha256 != other.student_sha256:
        return None
    return own.macro_f1 - other.macro_f1


class HistoryModel(QAbstractTableModel):
    """Baselines first (zero-shot, k-shot), then every scored version, newest first. Read-only."""

    HEADERS = ("Prompt", "Marked", "Dev macro-F1", "Δ parent", "Δ zero-shot", "Δ k-shot",
               "Test macro-F1", "Δ parent (test)", "Dev / test n", "Made by")
    COL_VERSION, COL_MARKS, COL_DEV, COL_DEV_PARENT, COL_DEV_ZERO, COL_DEV_FEW, COL_TEST, \
        COL_TEST_PARENT, COL_N, COL_ORIGIN = range(10)

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.history = History()
        self._rows: list[tuple[str, HistoryRow | None, dict[str, Score | None]]] = []
        self.few_shot_k = 5
        self.stale = False

    def set_history(self, history: History, few_shot_k: int = 5) -> None:
        self.beginResetModel()
        self.history = history
        self.few_shot_k = few_shot_k
        rows: list[tuple[str, HistoryRow | None, dict[str, Score | None]]] = []
        for kind, name in (("zero_shot", "Zero-shot"), ("few_shot", f"{few_shot_k}-shot")):
            scores = {split: history.baselines.get(split, {}).get(kind) for split in ("dev", "test")}
            if any(scores.values()):
                rows.append((name, None, scores))
        for r in reversed(history.scored):
            rows.append((f"v{r.rule_set_id}", r, {"dev": r.dev, "test": r.test}))
        self._rows = rows
        self.endResetModel()

    def set_stale(self, stale: bool) -> None:
        self.stale = stale
        if self._rows:
            self.dataChanged.emit(self.index(0, 0), self.index(len(self._rows) - 1, len(self.HEADERS) - 1))

    def rowCount(self, parent: ModelIndex = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: ModelIndex = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.HEADERS)

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation != Qt.Orientation.Horizontal:
            return None
        if role == Qt.ItemDataRole.DisplayRole:
            return self.HEADERS[section].replace("k-shot", f"{self.few_shot_k}-shot")
        if role == Qt.ItemDataRole.ToolTipRole:
            return {self.COL_DEV_PARENT: "Dev macro-F1 minus the parent version's (same student, same examples)",
                    self.COL_DEV_ZERO: "Dev macro-F1 minus the zero-shot baseline's on dev",
                    self.COL_DEV_FEW: f"Dev macro-F1 minus the {self.few_shot_k}-shot baseline's on dev",
                    self.COL_TEST_PARENT: "Test macro-F1 minus the parent version's on test",
                    self.COL_MARKS: "working = the version every view and export uses; "
                                    "pipeline's choice = the closed loop's best on dev"}.get(section)
        return None

    def values(self, row: int) -> tuple[Any, ...]:
        """The row's raw values, one per column (numbers stay numbers; None where there is nothing)."""
        name, hr, scores = self._rows[row]
        dev, test = scores.get("dev"), scores.get("test")
        base = self.history.baselines
        if hr is None:
            marks, origin = "baseline", "built from the task and labels" + ("" if name == "Zero-shot" else
                                                                            " and training examples")
            parent_dev = zero = few = parent_test = None
        else:
            marks = ", ".join(m for m, on in (("working", hr.is_working),
                                              ("pipeline's choice", hr.is_pipeline_choice)) if on)
            origin = " ".join((hr.reason or hr.origin).split())
            origin = origin if len(origin) <= 110 else origin[:109] + "…"
            parent_dev, parent_test = hr.dev_delta_vs_parent, hr.test_delta_vs_parent
            zero = _delta(dev, base.get("dev", {}).get("zero_shot"))
            few = _delta(dev, base.get("dev", {}).get("few_shot"))
        n = f"{dev.n if dev else '—'} / {test.n if test else '—'}"
        return (name, marks, dev.macro_f1 if dev else None, parent_dev, zero, few,
                test.macro_f1 if test else None, parent_test, n, origin)

    def data(self, index: ModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        _name, hr, _scores = self._rows[index.row()]
        col = index.column()
        value = self.values(index.row())[col]
        delta_cols = (self.COL_DEV_PARENT, self.COL_DEV_ZERO, self.COL_DEV_FEW, self.COL_TEST_PARENT)
        if role == VersionRole:
            return hr.rule_set_id if hr is not None else None
        if role == SortRole:
            if col == self.COL_VERSION:
                return hr.rule_set_id if hr is not None else -1
            return value if value is not None else float("-inf") if col in (self.COL_DEV, self.COL_TEST,
                                                                              *delta_cols) else ""
        if role == Qt.ItemDataRole.DisplayRole:
            if value is None:
                return "—" if col not in (self.COL_MARKS, self.COL_ORIGIN) else ""
            if col in delta_cols:
                return f"{value:+.3f}"
            if col in (self.COL_DEV, self.COL_TEST):
                return f"{value:.3f}"
            return str(value)
        if role == Qt.ItemDataRole.ToolTipRole and hr is not None and col in (self.COL_VERSION, self.COL_ORIGIN):
            return f"v{hr.rule_set_id} (parent {'v' + str(hr.parent_id) if hr.parent_id else 'none'}): {hr.reason}"
        if role == Qt.ItemDataRole.ForegroundRole:
            if self.stale:
                return QBrush(STALE)
            if col in delta_cols and value is not None and abs(value) >= 0.0005:
                colour = UP if value > 0 else DOWN
                return QBrush(colour.lighter(170) if is_dark_palette() else colour)  # legible on a dark base
            return None
        if role == Qt.ItemDataRole.FontRole:
            font = QFont()
            font.setBold(hr is not None and hr.is_working)
            font.setItalic(self.stale or hr is None)
            return font
        if role == Qt.ItemDataRole.TextAlignmentRole and self.COL_DEV <= col <= self.COL_N:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None


class ResultsView(QWidget):
    """The Results tab. Scoring runs on the view's TaskRunner (a `PipelineTask` with a job); the GUI thread only
    reads the history. Call `shutdown()` before the view goes away."""

    scoring_finished = Signal(str, str)   # status, message

    def __init__(self, project_path: str | Path, backends_factory: Callable[[], Any] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.project_path = Path(project_path)
        self.backends_factory = backends_factory
        self.runner = TaskRunner(self, serial=True, name="pld-score")  # serial: a score after the last one's
        self.runner.begun.connect(self._on_begun)                    # models are freed
        self.runner.reported.connect(self._on_progress)
        self.runner.succeeded.connect(lambda outcome: self._on_finished(*outcome))
        self.runner.failed.connect(lambda message, _exc: self._on_finished("failed", message))
        self.working: int | None = None
        self.auto = False   # the running score was started by the window when the student was idle
        outer = QVBoxLayout(self)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        outer.addWidget(self.summary)
        row = QHBoxLayout()
        self.dev_btn = QPushButton("Score on dev")
        self.dev_btn.setToolTip("Score the selected version (else the working version) on the dev split, with its "
                                "parent and the baselines on the same examples. Cached: an unchanged prompt is free.")
        self.dev_btn.clicked.connect(lambda: self.score("dev"))
        self.test_btn = QPushButton("Score on test…")
        self.test_btn.setToolTip("The final check on the locked test split; asks first, and counts the versions "
                                 "scored on test")
        self.test_btn.clicked.connect(lambda: self.score("test"))
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.clicked.connect(self.cancel)
        self.bar = QProgressBar()
        self.bar.setMaximumWidth(220)
        self.bar.setFormat("%v / %m")
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.bar.setVisible(False)  # shown while a score runs
        for w in (self.dev_btn, self.test_btn, self.cancel_btn, self.bar):
            row.addWidget(w)
        row.addWidget(self.status, 1)
        outer.addLayout(row)
        self.stale_note = QLabel("<b>Stale:</b> a run is in progress; these scores are from before it and update "
                                 "when it finishes.")
        self.stale_note.setStyleSheet("background: rgba(255,213,79,0.45); color: #212121; padding: 4px")
        self.stale_note.setVisible(False)
        outer.addWidget(self.stale_note)
        self.model = HistoryModel(self)
        self.proxy = QSortFilterProxyModel(self)
        self.proxy.setSourceModel(self.model)
        self.proxy.setSortRole(SortRole)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(-1, Qt.SortOrder.AscendingOrder)  # the model's order (baselines, newest) at first
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        self.table.setAlternatingRowColors(True)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.table.selectionModel().selectionChanged.connect(self._update_buttons)
        self.placeholder = QLabel("No scores yet.\n\nRun the phases (F5), or edit the rules and press "
                                  "'Score on dev': every scored version appears here with its baselines.")
        self.placeholder.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.placeholder.setWordWrap(True)
        self.stack = QStackedWidget()
        self.stack.addWidget(self.placeholder)
        self.stack.addWidget(self.table)
        outer.addWidget(self.stack, 1)
        self.reload()

    # -- reading -------------------------------------------------------------------------------
    def reload(self) -> None:
        try:
            with Project.open(self.project_path, read_only=True) as project:
                from ..core.settings import load_settings
                history = version_history(project)
                k = load_settings(project).few_shot_k
        except (ProjectFileError, OSError) as exc:
            self.summary.setText(f"Cannot read the scores: {exc}")
            return
        self.working = history.working_rule_set
        self.model.set_history(history, k)
        self.stack.setCurrentIndex(0 if history.is_empty else 1)
        working = f"v{history.working_rule_set}" if history.working_rule_set else "none yet"
        choice = f"v{history.pipeline_choice}" if history.pipeline_choice else "none yet"
        n = history.test_use_count
        caution = (" The more versions are compared on test, the less the best test score proves; choose on dev."
                   if n > 1 else "")
        self.summary.setText(f"Working version: <b>{working}</b> &nbsp;·&nbsp; pipeline's choice: {choice}"
                             f" &nbsp;·&nbsp; <b>scored on test: {n} version{'s' if n != 1 else ''}</b>.{caution}")
        self._update_buttons()

    def target_version(self) -> int | None:
        """The selected version, else the working version."""
        rows = self.table.selectionModel().selectedRows()
        if rows:
            rs_id = rows[0].data(VersionRole)
            if rs_id is not None:
                return int(rs_id)
        return self.working

    # -- scoring -------------------------------------------------------------------------------
    def score(self, split: str, rule_set_id: int | None = None, *, confirm: bool = True, auto: bool = False) -> bool:
        """Score a version (default: the selected, else the working one) on `split` in the background."""
        if self.runner.busy():
            return False
        rs_id = rule_set_id or self.target_version()
        if rs_id is None:
            self.status.setText("There is no rule set yet: run phases 1 and 2 first.")
            return False
        if split == "test" and confirm:
            n = self.model.history.test_use_count
            answer = QMessageBox.question(
                self, "Score on the locked test split?",
                f"Score v{rs_id} on the test split?\n\n{n} version{'s have' if n != 1 else ' has'} been scored on "
                f"test so far. Every version you compare on test makes the best test score more optimistic: "
                f"compare versions on dev, and use test as the final check.")
            if answer != QMessageBox.StandardButton.Yes:
                return False
        self.auto = auto
        self.bar.setRange(0, 0)
        self.bar.setVisible(True)
        self.status.setText(f"Scoring v{rs_id} on {split}" + (" (in the background, the student was idle)…"
                                                             if auto else "…"))
        start_pipeline(self.runner, PipelineTask(self.project_path, [], backends_factory=self.backends_factory,
                                                 job=score_job(rs_id, split)))
        self._update_buttons()
        return True

    def cancel(self) -> None:
        if self.runner.busy():
            self.runner.cancel()
            self.status.setText("Stopping after the example in progress…")

    def busy(self) -> bool:
        return self.runner.busy()

    def _on_begun(self, stage: str, total: int) -> None:
        self.bar.setRange(0, max(total, 0))
        self.status.setText(stage + "…")

    def _on_progress(self, done: int, total: int, message: str) -> None:
        progress = self.runner.progress
        if progress is None:
            return
        self.bar.setRange(0, max(total, 1))
        self.bar.setValue(min(done, max(total, 1)))
        self.status.setText(f"{progress.stage}: {done}/{total}")

    def _on_finished(self, status: str, message: str) -> None:
        self.bar.setVisible(False)
        self.status.setStyleSheet("color: #c62828" if status == "failed" else "")
        self.status.setText(message)
        self.reload()
        self.scoring_finished.emit(status, message)

    # -- display ---------------------------------------------------------------------------------
    def set_stale(self, stale: bool) -> None:
        """Mark the shown scores as from before the run in progress (greyed, with a note)."""
        self.model.set_stale(stale)
        self.stale_note.setVisible(stale)
        self._update_buttons()

    def _update_buttons(self, *_: Any) -> None:
        running = self.runner.busy()
        target = self.target_version()
        label = f" v{target}" if target else ""
        self.dev_btn.setText(f"Score{label} on dev")
        self.test_btn.setText(f"Score{label} on test…")
        for b in (self.dev_btn, self.test_btn):
            b.setEnabled(not running and target is not None and not self.model.stale)
        self.cancel_btn.setEnabled(running)

    def shutdown(self) -> None:
        """Stop a running score and wait for its thread; its outcome still arrives (queued) if the view stays."""
        if self.runner.busy():
            self.runner.cancel()
            self.runner.wait()
