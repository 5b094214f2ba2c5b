"""Side-by-side testing view: two prompts on the same examples, metrics, disagreements, McNemar and a try-it box."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
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
from PySide6.QtGui import QColor, QFont, QKeyEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSplitter,
    QTableView,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.compare import (
    ComparisonResult,
    ComparisonRow,
    ExampleSet,
    PromptChoice,
    classify_both,
    compare_prompts,
    default_pair,
    prompt_choices,
    resolve_prompt,
)
from ..core.dataset import ColumnMapping, render_template
from ..core.project import Project
from ..core.protocols import Prediction
from ..core.settings import load_settings
from .tasks import QtProgress, TaskRunner

AMBER = QColor(255, 213, 79, 110)      # a row where A and B disagree
RIGHT = QColor("#2e7d32")
WRONG = QColor("#c62828")
ModelIndex = QModelIndex | QPersistentModelIndex


# ---------------------------------------------------------------------------
# Background work: one backends provider for the view, used only from worker threads
# ---------------------------------------------------------------------------
class StudentHost:
    """Creates the backends (through the factory) and the student on the first worker thread that needs them.

    Threading contract: `student()` and `close()` are called from worker threads or after every worker has
    finished, never while the GUI waits for a model load. The student itself serialises calls on its own owner
    thread (LlamaStudent), so a try-it classification and a running comparison can share it; their calls
    interleave item by item instead of the try-it waiting for the whole comparison.
    """

    def __init__(self, factory: Callable[[], Any] | None) -> None:
        self._factory = factory
        self._backends: Any = None
        self._lock = threading.Lock()

    def student(self, settings: Any) -> Any:
        with self._lock:
            if self._backends is None:
                from ..backends.factory import window_backends
                self._backends = (self._factory or window_backends)()
            return self._backends.student(settings)

    def loaded(self) -> bool:
        """Whether the student has been created (the first call after this loads the model file)."""
        return self._backends is not None

    def close(self) -> None:
        with self._lock:
            if self._backends is not None:
                self._backends.close()
                self._backends = None


def compare_task(project_path: Path, host: StudentHost, a: PromptChoice, b: PromptChoice,
                 examples: ExampleSet) -> Callable[[QtProgress], ComparisonResult]:
    """A task for TaskRunner: `compare_prompts` with its own project connection; cooperative cancel through
    the progress object (Cancelled)."""
    def run(progress: QtProgress) -> ComparisonResult:  # worker thread
        if not host.loaded():
            progress.begin("Loading the student model (the first run takes a few seconds)", 0)
        with Project.open(project_path) as project:
            settings = load_settings(project)
            student = host.student(settings)
            return compare_prompts(project, student, a, b, examples, progress, settings=settings)
    return run


def classify_task(project_path: Path, host: StudentHost, a: PromptChoice, b: PromptChoice,
                  text: str) -> Callable[[QtProgress], tuple[Prediction, Prediction]]:
    """A task for TaskRunner: `classify_both` for the try-it box (prompts resolved on the worker thread, not
    the GUI's); returns (prediction A, prediction B)."""
    def run(_progress: QtProgress) -> tuple[Prediction, Prediction]:  # worker thread
        with Project.open(project_path, read_only=True) as project:
            settings = load_settings(project)
            pa, pb = resolve_prompt(project, a, settings), resolve_prompt(project, b, settings)
            labels = project.labels()
        student = host.student(settings)
        first, second = classify_both(student, pa.text, pb.text, text, labels)
        return first, second
    return run


# ---------------------------------------------------------------------------
# The per-example table
# ---------------------------------------------------------------------------
class ComparisonTableModel(QAbstractTableModel):
    """One row per compared example; disagreement and correctness come from `data()` roles, not from painting."""

    DisagreeRole = Qt.ItemDataRole.UserRole + 1
    SortRole = Qt.ItemDataRole.UserRole + 2
    HEADERS = ("Example", "Text", "Gold", "A", "Conf. A", "B", "Conf. B")

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._rows: list[ComparisonRow] = []

    def set_rows(self, rows: Sequence[ComparisonRow]) -> None:
        self.beginResetModel()
        self._rows = list(rows)
        self.endResetModel()

    def row(self, n: int) -> ComparisonRow:
        return self._rows[n]

    def rowCount(self, parent: ModelIndex = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: ModelIndex = QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.HEADERS)

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return self.HEADERS[section]
        return None

    def data(self, index: ModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        r, col = self._rows[index.row()], index.column()
        if role == self.DisagreeRole:
            return r.disagree
        if role == Qt.ItemDataRole.DisplayRole:
            values = (r.key, " ".join(r.text.split()), r.gold or "—", r.pred_a, f"{r.conf_a:.2f}", r.pred_b,
                      f"{r.conf_b:.2f}")
            return values[col]
        if role == self.SortRole:
            return (r.key, r.text, r.gold or "", r.pred_a, r.conf_a, r.pred_b, r.conf_b)[col]
        if role == Qt.ItemDataRole.ToolTipRole and col == 1:
            return r.text
        if role == Qt.ItemDataRole.BackgroundRole and r.disagree:
            return AMBER
        if role == Qt.ItemDataRole.ForegroundRole and col in (3, 5):
            correct = r.correct("a" if col == 3 else "b")
            return None if correct is None else (RIGHT if correct else WRONG)
        if role == Qt.ItemDataRole.FontRole and col in (3, 5) and r.correct("a" if col == 3 else "b") is False:
            font = QFont()
            font.setBold(True)
            return font
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (4, 6):
            return Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
        return None


class DisagreementFilter(QSortFilterProxyModel):
    """Sorts by `SortRole` and, when asked, shows only the rows where A and B disagree."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._only = False
        self.setSortRole(ComparisonTableModel.SortRole)

    def set_disagreements_only(self, only: bool) -> None:
        self.beginFilterChange()
        self._only = only
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def filterAcceptsRow(self, source_row: int, source_parent: ModelIndex) -> bool:
        if not self._only:
            return True
        index = self.sourceModel().index(source_row, 0, source_parent)
        return bool(index.data(ComparisonTableModel.DisagreeRole))


# ---------------------------------------------------------------------------
# Small display helpers
# ---------------------------------------------------------------------------
def _table(rows: int, cols: int) -> QTableWidget:
    t = QTableWidget(rows, cols)
    t.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    t.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
    t.verticalHeader().setDefaultSectionSize(22)
    t.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    t.setSizeAdjustPolicy(QAbstractItemView.SizeAdjustPolicy.AdjustToContents)
    t.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
    return t


def _cell(text: str, *, align_right: bool = False, colour: QColor | None = None,
          bold: bool = False) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    if align_right:
        item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
    if colour is not None:
        item.setForeground(colour)
    if bold:
        font = item.font()
        font.setBold(True)
        item.setFont(font)
    return item


def _fit_height(t: QTableWidget) -> None:
    t.resizeColumnsToContents()
    height = t.horizontalHeader().height() + sum(t.rowHeight(i) for i in range(t.rowCount())) + 2 * t.frameWidth()
    t.setFixedHeight(height + 2)


class ConfusionMatrix(QGroupBox):
    """Gold labels down, predictions across; cells shaded by their share of the gold row (green right, red wrong)."""

    def __init__(self, title: str) -> None:
        super().__init__(title)
        self.table = _table(0, 0)
        self.table.setToolTip("Rows: gold label. Columns: predicted label. Darker = larger share of the row.")
        lay = QVBoxLayout(self)
        lay.setContentsMargins(6, 6, 6, 6)
        lay.addWidget(self.table)

    def show_matrix(self, labels: Sequence[str], matrix: Sequence[Sequence[int]]) -> None:
        n = len(labels)
        self.table.clear()
        self.table.setRowCount(n)
        self.table.setColumnCount(n)
        self.table.setHorizontalHeaderLabels(list(labels))
        self.table.setVerticalHeaderLabels(list(labels))
        for i in range(n):
            total = sum(matrix[i]) if i < len(matrix) else 0
            for j in range(n):
                value = matrix[i][j] if i < len(matrix) else 0
                item = _cell(str(value), bold=(i == j and value > 0))
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                if value:
                    share = value / max(total, 1)
                    base = QColor(46, 125, 50) if i == j else QColor(198, 40, 40)
                    base.setAlpha(int(35 + 170 * share))
                    item.setBackground(base)
                    if share > 0.6:
                        item.setForeground(QColor("white"))
                item.setToolTip(f"gold {labels[i]}, predicted {labels[j]}: {value} of {total}")
                self.table.setItem(i, j, item)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        _fit_height(self.table)


class TryBox(QPlainTextEdit):
    """The try-it input: Ctrl+Return (or Ctrl+Enter) submits; plain Return still starts a new line.

    Handled in keyPressEvent rather than with a QShortcut: it then works whenever the box has focus, whatever
    window it is embedded in (a widget-context shortcut did not fire reliably there).
    """

    submitted = Signal()

    def keyPressEvent(self, event: QKeyEvent) -> None:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter) and \
                event.modifiers() & Qt.KeyboardModifier.ControlModifier:
            self.submitted.emit()
            event.accept()
            return
        super().keyPressEvent(event)


# ---------------------------------------------------------------------------
# The view
# ---------------------------------------------------------------------------
class CompareView(QWidget):
    """Pick two prompts and an example set, run them side by side in the background, read the differences.

    Every model call runs on a worker thread (compare_task / classify_task on the view's two TaskRunners); the
    GUI thread only reads the
    project to fill the pickers. Call `shutdown()` before the view goes away (closeEvent does it when it is a
    window of its own) so running work stops and the models are released.
    """

    finished = Signal(object)             # ComparisonResult
    failed = Signal(str)                  # message in words (also after Cancel)
    classified = Signal(object, object)   # Prediction A, Prediction B of the try-it box

    def __init__(self, project_path: str | Path, backends_factory: Callable[[], Any] | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.project_path = Path(project_path)
        self.host = StudentHost(backends_factory)
        self._comparing: ExampleSet | None = None   # the examples of the comparison running on compare_runner
        self.compare_runner = TaskRunner(self, name="pld-compare")
        self.compare_runner.begun.connect(self._on_begun)
        self.compare_runner.reported.connect(self._on_progress)
        self.compare_runner.succeeded.connect(self._on_finished)
        self.compare_runner.failed.connect(lambda _message, exc: self._on_failed(str(exc) or type(exc).__name__,
                                                                                 False))
        self.compare_runner.cancelled.connect(self._on_compare_cancelled)
        self.try_runner = TaskRunner(self, name="pld-try-it")
        self.try_runner.succeeded.connect(lambda pair: self._on_classified(*pair))
        self.try_runner.failed.connect(lambda _message, exc: self._on_classify_failed(str(exc) or type(exc).__name__))
        self.result: ComparisonResult | None = None
        self._loaded_csv: ExampleSet | None = None
        self._last_example_index = 0
        self._stale_try = False
        self._last_defaults: list[Any] = [None, None]
        self._build()
        self.refresh_choices()

    # -- construction -------------------------------------------------------------
    def _build(self) -> None:
        outer = QVBoxLayout(self)

        pick = QGridLayout()
        self.prompt_a = self._prompt_combo()
        self.prompt_b = self._prompt_combo()
        self.examples = QComboBox()
        self.examples.setToolTip("Which examples both prompts are scored on")
        self.examples.activated.connect(self._on_example_choice)
        self.load_csv_btn = QPushButton("Load CSV…")
        self.load_csv_btn.setToolTip("A CSV with a header: a 'text' column (or the project's own text columns) "
                                     "and optionally a 'label' column")
        self.load_csv_btn.clicked.connect(self.choose_csv)
        self.run_btn = QPushButton("Run")
        self.run_btn.setToolTip("Score both prompts on the chosen examples (results on project splits are saved "
                                "and reused)")
        self.run_btn.clicked.connect(self.run)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setToolTip("Stop after the example in progress")
        self.cancel_btn.clicked.connect(self.cancel)
        pick.addWidget(QLabel("<b>Prompt A</b>"), 0, 0)
        pick.addWidget(self.prompt_a, 0, 1)
        pick.addWidget(QLabel("<b>Prompt B</b>"), 0, 2)
        pick.addWidget(self.prompt_b, 0, 3)
        pick.addWidget(QLabel("<b>Examples</b>"), 1, 0)
        ex_row = QHBoxLayout()
        ex_row.addWidget(self.examples, 1)
        ex_row.addWidget(self.load_csv_btn)
        pick.addLayout(ex_row, 1, 1)
        run_row = QHBoxLayout()
        run_row.addStretch(1)
        run_row.addWidget(self.run_btn)
        run_row.addWidget(self.cancel_btn)
        pick.addLayout(run_row, 1, 2, 1, 2)
        pick.setColumnStretch(1, 1)
        pick.setColumnStretch(3, 1)
        outer.addLayout(pick)

        self.paste = QPlainTextEdit()
        self.paste.setPlaceholderText("One input per line. To score a line, add a tab and its gold label "
                                      "(as pasted from a spreadsheet: text<TAB>label).")
        self.paste.setMaximumHeight(90)
        self.paste.setVisible(False)
        outer.addWidget(self.paste)

        status_row = QHBoxLayout()
        self.bar = QProgressBar()
        self.bar.setFormat("%v / %m")
        self.bar.setMaximumWidth(260)
        self.status = QLabel("Choose two prompts and the examples, then Run.")
        self.status.setWordWrap(True)
        status_row.addWidget(self.bar)
        status_row.addWidget(self.status, 1)
        outer.addLayout(status_row)

        self.verdict = QLabel("")
        self.verdict.setWordWrap(True)
        self.verdict.setTextFormat(Qt.TextFormat.RichText)
        self.verdict.setFrameShape(QFrame.Shape.StyledPanel)
        self.verdict.setMargin(6)
        self.verdict.setVisible(False)
        outer.addWidget(self.verdict)

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self._metrics_panel())
        split.addWidget(self._examples_panel())
        split.setStretchFactor(0, 2)
        split.setStretchFactor(1, 3)
        split.setSizes([560, 840])
        outer.addWidget(split, 1)
        outer.addWidget(self._try_panel())
        self._update_buttons()

    def _prompt_combo(self) -> QComboBox:
        combo = QComboBox()
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        combo.setMinimumContentsLength(28)
        combo.currentIndexChanged.connect(lambda _i, c=combo: c.setToolTip(c.currentText()))
        return combo

    def _metrics_panel(self) -> QWidget:
        inner = QWidget()
        lay = QVBoxLayout(inner)
        lay.setContentsMargins(0, 0, 6, 0)
        self.summary = _table(4, 2)
        self.summary.setHorizontalHeaderLabels(["A", "B"])
        self.summary.setVerticalHeaderLabels(["Macro-F1", "Accuracy", "Scored examples", "Latency p50 (s)"])
        self.summary.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.per_class = _table(0, 4)
        self.per_class.setHorizontalHeaderLabels(["F1 A", "F1 B", "B − A", "Support"])
        self.per_class.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.names = QLabel("")
        self.names.setWordWrap(True)
        self.names.setTextFormat(Qt.TextFormat.RichText)
        lay.addWidget(self.names)
        lay.addWidget(self.summary)
        lay.addWidget(QLabel("<b>Per-class F1</b>"))
        lay.addWidget(self.per_class)
        # Stacked, not side by side: each matrix gets the panel's width, so label headers stay readable.
        self.confusion_a = ConfusionMatrix("Confusion matrix A (rows: gold, columns: predicted)")
        self.confusion_b = ConfusionMatrix("Confusion matrix B (rows: gold, columns: predicted)")
        lay.addWidget(self.confusion_a)
        lay.addWidget(self.confusion_b)
        lay.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidget(inner)
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        return scroll

    def _examples_panel(self) -> QWidget:
        box = QWidget()
        lay = QVBoxLayout(box)
        lay.setContentsMargins(6, 0, 0, 0)
        top = QHBoxLayout()
        self.only_disagree = QCheckBox("Disagreements only")
        self.only_disagree.setToolTip("Show only the examples where A and B give different labels")
        self.only_disagree.toggled.connect(self._on_filter)
        self.row_count = QLabel("")
        top.addWidget(self.only_disagree)
        top.addStretch(1)
        top.addWidget(self.row_count)
        lay.addLayout(top)
        self.model = ComparisonTableModel(self)
        self.proxy = DisagreementFilter(self)
        self.proxy.setSourceModel(self.model)
        self.table = QTableView()
        self.table.setModel(self.proxy)
        self.table.setSortingEnabled(True)
        self.table.sortByColumn(-1, Qt.SortOrder.AscendingOrder)  # keep the examples' own order until asked
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setWordWrap(False)
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(22)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        lay.addWidget(self.table, 1)
        legend = QLabel("<span style='background:rgba(255,213,79,0.45)'>&nbsp;amber&nbsp;</span> A and B disagree"
                        " &nbsp;·&nbsp; <span style='color:#2e7d32'>green</span> right, "
                        "<b style='color:#c62828'>red</b> wrong (when the gold label is known)")
        legend.setTextFormat(Qt.TextFormat.RichText)
        lay.addWidget(legend)
        return box

    def _try_panel(self) -> QWidget:
        """One field per input column of the project; the template renders them into the text the student reads."""
        box = QGroupBox("Try it")
        lay = QHBoxLayout(box)
        self._mapping = self._read_mapping()
        columns = list(self._mapping.text_columns) if self._mapping is not None else ["text"]
        fields = QGridLayout()
        self.try_fields: dict[str, TryBox] = {}
        for row, column in enumerate(columns):
            field = TryBox()
            field.submitted.connect(self.classify)
            field.setPlaceholderText(f"{column}  (Classify: Ctrl+Return)")
            field.setToolTip(f"The value of the input column '{column}'")
            # Several columns share the box's height; one column keeps the taller single box.
            field.setMaximumHeight(64 if len(columns) == 1 else 34)
            field.textChanged.connect(self._show_rendered)
            if len(columns) > 1:
                fields.addWidget(QLabel(column), row, 0)
            fields.addWidget(field, row, 1)
            self.try_fields[column] = field
        self.try_text = next(iter(self.try_fields.values()))  # the first field (the only one for one column)
        self.rendered = QLabel("")
        self.rendered.setWordWrap(True)
        self.rendered.setTextFormat(Qt.TextFormat.RichText)
        self.rendered.setToolTip("The text the student reads: the project's template filled with the fields")
        fields.addWidget(self.rendered, len(columns), 0, 1, 2)
        self.classify_btn = QPushButton("Classify")
        self.classify_btn.setToolTip("Classify the input with prompt A and prompt B (Ctrl+Return)")
        self.classify_btn.clicked.connect(self.classify)
        answers = QGridLayout()
        self.try_a = QLabel("A: —")
        self.try_b = QLabel("B: —")
        for lab in (self.try_a, self.try_b):
            lab.setTextFormat(Qt.TextFormat.RichText)
            lab.setMinimumWidth(320)
        answers.addWidget(self.try_a, 0, 0)
        answers.addWidget(self.try_b, 1, 0)
        lay.addLayout(fields, 1)
        lay.addWidget(self.classify_btn)
        lay.addLayout(answers)
        for combo in (self.prompt_a, self.prompt_b):  # an answer belongs to the prompts it came from
            combo.currentIndexChanged.connect(self.clear_try_answers)
        return box

    def _read_mapping(self) -> ColumnMapping | None:
        try:
            with Project.open(self.project_path, read_only=True) as project:
                info = project.dataset_info() or {}
            return ColumnMapping.from_json(info["mapping"]) if info.get("mapping") else None
        except Exception:
            return None

    def try_input(self) -> str:
        """The try-it fields rendered through the project's template, exactly as the dataset's rows were."""
        if self._mapping is None:
            return self.try_text.toPlainText().strip()
        record = {c: f.toPlainText() for c, f in self.try_fields.items()}
        if not any(v.strip() for v in record.values()):
            return ""
        return render_template(self._mapping.template, self._mapping.text_columns, record)

    def _show_rendered(self) -> None:
        try:
            text = self.try_input()
        except Exception as exc:
            self.rendered.setText(f"<span style='color:#c62828'>{_escape(str(exc))}</span>")
            return
        self.rendered.setText(f"<span style='color:gray'>The student reads:</span> {_escape(text)}" if text else "")

    def clear_try_answers(self) -> None:
        """Forget the try-it answers: they were given by the prompts picked before."""
        if self.classifying():
            self._stale_try = True  # the answer in flight is dropped when it arrives
        self.try_a.setText("A: —")
        self.try_b.setText("B: —")
        self.try_a.setToolTip("")
        self.try_b.setToolTip("")

    # -- pickers --------------------------------------------------------------------
    def refresh_choices(self) -> None:
        """Re-read versions and split sizes from the project (call after the rules change); keeps selections."""
        with Project.open(self.project_path, read_only=True) as project:
            choices = prompt_choices(project)
            default_a, default_b = default_pair(project)  # the working version vs zero-shot
            counts = project.split_counts()
        before = [c.currentData().key if c.currentData() is not None else None for c in (self.prompt_a, self.prompt_b)]
        for i, (combo, default) in enumerate(((self.prompt_a, default_a), (self.prompt_b, default_b))):
            keep = combo.currentData().key if combo.currentData() is not None else default.key
            if keep == self._last_defaults[i]:
                keep = default.key  # the user left the default: it follows the working version
            combo.blockSignals(True)
            combo.clear()
            for choice in choices:
                combo.addItem(choice.label, choice)
                combo.setItemData(combo.count() - 1, choice.label, Qt.ItemDataRole.ToolTipRole)
            index = next((i for i, c in enumerate(choices) if c.key == keep), 0)
            combo.setCurrentIndex(index)
            combo.setToolTip(combo.currentText())
            combo.blockSignals(False)
        self._last_defaults = [default_a.key, default_b.key]
        after = [c.currentData().key if c.currentData() is not None else None for c in (self.prompt_a, self.prompt_b)]
        if after != before or any(k and k[0] == "current_edit" for k in after):
            self.clear_try_answers()  # the answers shown came from other prompts

        current = self.examples.currentData()
        self.examples.clear()
        self.examples.addItem(f"Dev split ({counts.get('dev', 0)} examples)", "split:dev")
        self.examples.addItem(f"Test split ({counts.get('test', 0)} examples, locked: evaluation only)",
                              "split:test")
        self.examples.setItemData(1, "The locked test split: fine for a final check, but choosing rules by their "
                                     "test score makes that score optimistic.", Qt.ItemDataRole.ToolTipRole)
        self.examples.addItem(f"Train split ({counts.get('train', 0)} examples)", "split:train")
        self.examples.addItem("Pasted rows", "pasted")
        if self._loaded_csv is not None:
            self.examples.addItem(f"CSV: {self._loaded_csv.description}", "csv")
        self.examples.addItem("Load CSV…", "load")
        index = max(0, self.examples.findData(current)) if current not in (None, "load") else 0
        self.examples.setCurrentIndex(index)
        self._last_example_index = index
        self.paste.setVisible(self.examples.currentData() == "pasted")

    def _on_example_choice(self, index: int) -> None:
        if self.examples.itemData(index) == "load":
            self.examples.setCurrentIndex(self._last_example_index)  # back to the previous set unless a file loads
            self.choose_csv()
            return
        self._last_example_index = index
        self.paste.setVisible(self.examples.itemData(index) == "pasted")
        if self.examples.itemData(index) == "pasted":
            self.paste.setFocus()

    def choose_csv(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Rows to test", str(self.project_path.parent),
                                              "CSV files (*.csv *.tsv *.txt);;All files (*)")
        if path:
            self.load_csv(Path(path))

    def load_csv(self, path: Path) -> bool:
        """Read rows to test from a CSV and select them; a bad file is explained and nothing changes."""
        try:
            with Project.open(self.project_path, read_only=True) as project:
                labels = project.labels()
                info = project.dataset_info() or {}
            mapping = ColumnMapping.from_json(info["mapping"]) if info.get("mapping") else None
            self._loaded_csv = ExampleSet.from_csv(path, labels, mapping)
        except Exception as exc:
            self._show_error(f"Cannot use {path.name}: {exc}")
            return False
        self.refresh_choices()
        index = self.examples.findData("csv")
        self.examples.setCurrentIndex(index)
        self._on_example_choice(index)
        n_gold = sum(r.label is not None for r in self._loaded_csv.rows)
        self.status.setText(f"Loaded {len(self._loaded_csv.rows)} rows from {path.name} ({n_gold} with a gold label).")
        return True

    def _example_set(self) -> ExampleSet:
        data = self.examples.currentData()
        if isinstance(data, str) and data.startswith("split:"):
            return ExampleSet.from_split(data.split(":", 1)[1])
        if data == "csv" and self._loaded_csv is not None:
            return self._loaded_csv
        if data == "pasted":
            with Project.open(self.project_path, read_only=True) as project:
                labels = project.labels()
            return ExampleSet.from_pasted(self.paste.toPlainText(), labels)
        raise ValueError("Choose the examples to test on.")

    def select_prompts(self, a: PromptChoice | tuple[str, int | None],
                       b: PromptChoice | tuple[str, int | None]) -> None:
        """Select prompt A and B by choice or by (kind, rule_set_id)."""
        for combo, want in ((self.prompt_a, a), (self.prompt_b, b)):
            key = want.key if isinstance(want, PromptChoice) else tuple(want)
            for i in range(combo.count()):
                if combo.itemData(i).key == key:
                    combo.setCurrentIndex(i)
                    break
            else:
                raise ValueError(f"No prompt {key} in the picker.")

    def select_examples(self, kind: str, split: str | None = None) -> None:
        data = f"split:{split}" if kind == "split" else kind
        index = self.examples.findData(data)
        if index < 0:
            raise ValueError(f"No example set {data} in the picker.")
        self.examples.setCurrentIndex(index)
        self._on_example_choice(index)

    # -- running ------------------------------------------------------------------------
    def comparing(self) -> bool:
        """Whether a comparison is running (the student is in use)."""
        return self.compare_runner.busy()

    def classifying(self) -> bool:
        """Whether the try-it box is waiting for its answers."""
        return self.try_runner.busy()

    def run(self) -> None:
        if self.comparing():
            return
        try:
            examples = self._example_set()
        except ValueError as exc:
            self._show_error(str(exc))
            return
        a, b = self.prompt_a.currentData(), self.prompt_b.currentData()
        self.bar.setRange(0, 0)  # busy until the first stage says how many items
        self.status.setStyleSheet("")
        self.status.setText(f"Comparing on {examples.description}…")
        self._comparing = examples
        self.compare_runner.start(compare_task(self.project_path, self.host, a, b, examples))
        self._update_buttons()

    def cancel(self) -> None:
        if self.comparing():
            self.compare_runner.cancel()
            self.status.setText("Stopping after the example in progress…")

    def _on_begun(self, stage: str, total: int) -> None:
        self.bar.setRange(0, max(total, 0))
        self.bar.setValue(0)
        self.status.setText(stage + "…")

    def _on_progress(self, done: int, total: int, message: str) -> None:
        progress = self.compare_runner.progress
        if progress is None:
            return
        self.bar.setRange(0, max(total, 1))
        self.bar.setValue(min(done, max(total, 1)))
        eta = progress.eta_seconds()
        eta_text = f", about {eta:.0f} s left" if eta is not None and done < total else ""
        self.status.setText(f"{progress.stage}: {done}/{total}{eta_text}")

    def _end_worker(self) -> None:
        self._comparing = None
        self.bar.setRange(0, 1)
        self._update_buttons()

    def _on_finished(self, result: ComparisonResult) -> None:
        self._end_worker()
        self.bar.setRange(0, len(result.rows))
        self.bar.setValue(len(result.rows))
        self.show_result(result)
        self.status.setStyleSheet("")
        self.status.setText(f"Compared on {result.examples}: A and B disagree on {result.n_disagree} of "
                            f"{len(result.rows)} examples." + (" " + " ".join(result.notes) if result.notes else ""))
        self.finished.emit(result)

    def _on_compare_cancelled(self) -> None:
        kept = ("Predictions made so far are saved in the project; Run again to resume."
                if self._comparing is not None and self._comparing.split
                else "Your pasted or loaded rows are not saved; Run again to redo them.")
        self._on_failed(f"Stopped. {kept}", True)

    def _on_failed(self, message: str, cancelled: bool) -> None:
        self._end_worker()
        if cancelled:
            self.status.setStyleSheet("")
            self.status.setText(message)
        else:
            self._show_error(message)
        self.failed.emit(message)

    def _show_error(self, message: str) -> None:
        self.status.setStyleSheet("color: #c62828")
        self.status.setText(message)

    def _update_buttons(self) -> None:
        running = self.comparing()
        self.run_btn.setEnabled(not running)
        self.cancel_btn.setEnabled(running)
        for w in (self.prompt_a, self.prompt_b, self.examples, self.load_csv_btn):
            w.setEnabled(not running)
        self.classify_btn.setEnabled(not self.classifying())

    # -- results ------------------------------------------------------------------------
    def show_result(self, result: ComparisonResult) -> None:
        self.result = result
        name_a = result.prompt_a.choice.label or result.prompt_a.label
        name_b = result.prompt_b.choice.label or result.prompt_b.label
        self.names.setText(f"<b>A</b> = {_escape(name_a)}<br><b>B</b> = {_escape(name_b)}"
                           f"<br><span style='color:gray'>on the {_escape(result.examples)}</span>")
        ma, mb = result.metrics_a, result.metrics_b
        pairs: list[tuple[str, str]] = []
        if ma is not None and mb is not None:
            lat_a = ma.get("latency_p50_s")
            lat_b = mb.get("latency_p50_s")
            pairs = [(f"{ma['macro_f1']:.3f}", f"{mb['macro_f1']:.3f}"),
                     (f"{ma['accuracy']:.3f}", f"{mb['accuracy']:.3f}"),
                     (str(ma["n"]), str(mb["n"])),
                     (f"{lat_a:.3f}" if lat_a is not None else "—", f"{lat_b:.3f}" if lat_b is not None else "—")]
            better = [(float(x) > float(y), float(y) > float(x)) for x, y in pairs[:2]]
        else:
            pairs = [("—", "—")] * 2 + [("0", "0"), ("—", "—")]
            better = [(False, False)] * 2
        for i, (x, y) in enumerate(pairs):
            wins = better[i] if i < 2 else (False, False)
            self.summary.setItem(i, 0, _cell(x, align_right=True, bold=wins[0]))
            self.summary.setItem(i, 1, _cell(y, align_right=True, bold=wins[1]))
        _fit_height(self.summary)
        self.summary.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)

        labels = result.labels
        self.per_class.setRowCount(len(labels) if ma else 0)
        self.per_class.setVerticalHeaderLabels(labels)
        if ma is not None and mb is not None:
            for i, lab in enumerate(labels):
                fa, fb = ma["per_class"][lab]["f1"], mb["per_class"][lab]["f1"]
                delta = fb - fa
                colour = RIGHT if delta > 0.0005 else WRONG if delta < -0.0005 else None
                self.per_class.setItem(i, 0, _cell(f"{fa:.3f}", align_right=True))
                self.per_class.setItem(i, 1, _cell(f"{fb:.3f}", align_right=True))
                self.per_class.setItem(i, 2, _cell(f"{delta:+.3f}", align_right=True, colour=colour))
                self.per_class.setItem(i, 3, _cell(str(ma["per_class"][lab]["support"]), align_right=True))
            self.confusion_a.show_matrix(labels, ma["confusion_matrix"])
            self.confusion_b.show_matrix(labels, mb["confusion_matrix"])
        else:
            self.confusion_a.show_matrix(labels, [])
            self.confusion_b.show_matrix(labels, [])
        _fit_height(self.per_class)
        self.per_class.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)

        detail = ""
        if result.p_value is not None:
            detail = (f"<br><span style='color:gray'>Only A right: {result.only_a_right} · only B right: "
                      f"{result.only_b_right} · different labels on "
                      f"{result.n_disagree} of {len(result.rows)} examples</span>")
        self.verdict.setText(f"<b>{_escape(result.verdict)}</b>{detail}")
        self.verdict.setVisible(True)
        self.model.set_rows(result.rows)
        self._update_count()

    def _on_filter(self, only: bool) -> None:
        self.proxy.set_disagreements_only(only)
        self._update_count()

    def _update_count(self) -> None:
        total = self.model.rowCount()
        shown = self.proxy.rowCount()
        self.row_count.setText(f"{shown} of {total} examples shown" if total else "")

    # -- try it -------------------------------------------------------------------------
    def classify(self) -> None:
        if self.classifying():
            return
        try:
            text = self.try_input()
        except Exception as exc:
            self.try_a.setText(f"<span style='color:#c62828'>{_escape(str(exc))}</span>")
            self.try_b.setText("")
            return
        if not text:
            self.try_a.setText("<span style='color:#c62828'>Type some text to classify first.</span>")
            self.try_b.setText("")
            return
        self._stale_try = False
        waiting = "classifying…" if self.host.loaded() else "loading the student model, then classifying…"
        self.try_a.setText(f"A: <i>{waiting}</i>")
        self.try_b.setText(f"B: <i>{waiting}</i>")
        self.try_runner.start(classify_task(self.project_path, self.host, self.prompt_a.currentData(),
                                            self.prompt_b.currentData(), text))
        self._update_buttons()

    def _end_try(self) -> None:
        self._update_buttons()

    def _on_classified(self, pa: Prediction, pb: Prediction) -> None:
        self._end_try()
        if self._stale_try:  # the prompts changed while it ran: this answer is not theirs
            return
        for lab, side, pred in ((self.try_a, "A", pa), (self.try_b, "B", pb)):
            lab.setText(f"<b>{side}: {_escape(pred.label)}</b> &nbsp;confidence {pred.probs.get(pred.label, 0):.0%}")
            lab.setToolTip(", ".join(f"{k} {v:.2f}" for k, v in sorted(pred.probs.items(), key=lambda kv: -kv[1])))
        self.classified.emit(pa, pb)

    def _on_classify_failed(self, message: str) -> None:
        self._end_try()
        self.try_a.setText(f"<span style='color:#c62828'>{_escape(message)}</span>")
        self.try_b.setText("")

    # -- lifetime -----------------------------------------------------------------------
    def shutdown(self) -> None:
        """Stop running work, wait for the worker threads, release the models."""
        self.compare_runner.cancel()
        self.compare_runner.wait()
        self.try_runner.wait()
        self.host.close()

    def closeEvent(self, event: Any) -> None:
        self.shutdown()
        super().closeEvent(event)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
