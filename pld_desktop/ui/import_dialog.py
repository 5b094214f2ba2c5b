"""The "Import a CSV" dialog: preview, column mapping, template, label chart, split, checks, then a new project."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from PySide6.QtCore import (
    QMimeData,
    QObject,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import QFont, QPaintEvent, QShowEvent, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QFrame,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QSplitter,
    QStyle,
    QTableView,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.dataset import (
    ColumnMapping,
    DatasetError,
    ImportedDataset,
    Problem,
    SplitSettings,
    build_dataset,
    preview_csv,
    read_csv,
    render_template,
)
from ..core.new_project import (
    FEW_ROWS_PER_LABEL,
    SourceTable,
    create_project,
    default_template,
    guess_mapping,
    label_count_warnings,
    label_counts,
    read_source,
)
from ..core.progress import Cancelled, Progress
from ..core.project import ProjectFileError
from ..core.prompts import DEFAULT_TASK
from .charts import CountBarChart
from .tasks import QtProgress, TaskRunner

__all__ = ["CSV_SUFFIXES", "ImportDialog", "PreviewModel", "create_project_from_dialog", "csv_paths_from_mime"]

CSV_SUFFIXES = (".csv", ".tsv", ".txt")
PREVIEW_ROWS = 50
NONE_CHOICE = "(none)"
# Edits are re-checked this long after the last keystroke, so typing in the template stays fluid on large files.
_CHECK_DELAY_MS = 250
_CELL_CHARS = 120  # characters of a cell shown in the preview table (the tooltip shows more)
_TOOLTIP_CHARS = 2000
# check_file reads files up to this size whole (a fraction of a second); larger ones only at the start.
_QUICK_CHECK_BYTES = 4 << 20


def csv_paths_from_mime(mime: QMimeData) -> list[Path]:
    """The local CSV/TSV/TXT files in a drag-and-drop payload (folders, remote URLs and other files are left out)."""
    if mime is None or not mime.hasUrls():
        return []
    paths: list[Path] = []
    for url in mime.urls():
        if not url.isLocalFile():
            continue
        path = Path(url.toLocalFile())
        if path.suffix.lower() in CSV_SUFFIXES and not path.is_dir():
            paths.append(path)
    return paths


def fitting_size(widget: QWidget, width: int, height: int) -> tuple[int, int]:
    """`width` x `height`, shrunk to the available area of the widget's screen (window frame and panel left)."""
    screen = widget.screen() or QApplication.primaryScreen()
    if screen is None:
        return width, height
    area = screen.availableGeometry()
    return min(width, area.width() - 40), min(height, area.height() - 70)


def _one_line(value: Any, limit: int) -> str:
    text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    text = text.replace("\r\n", "⏎").replace("\n", "⏎").replace("\r", "⏎")
    return text if len(text) <= limit else text[: limit - 1] + "…"


class PreviewModel(QStandardItemModel):
    """A read-only table over a DataFrame whose index holds spreadsheet row numbers (as read by the core).

    The cells are filled once, as Qt items: no Python `data()` runs while the view paints. A Python override is
    called once per cell and role, each call must take the GIL, and while the reader thread parses the file each
    take waited up to a switch interval, so the first paint of the preview stalled the window ~0.5 s."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._frame = pd.DataFrame()

    def set_frame(self, frame: pd.DataFrame) -> None:
        self._frame = frame
        self.clear()
        self.setColumnCount(len(frame.columns))
        self.setRowCount(len(frame))
        self.setHorizontalHeaderLabels([str(c) for c in frame.columns])
        # Spreadsheet row numbers, so "Row 7" in a problem matches what the user sees here.
        self.setVerticalHeaderLabels([str(r) for r in frame.index])
        for row in range(len(frame)):
            for column in range(len(frame.columns)):
                value = frame.iat[row, column]
                text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
                item = QStandardItem(_one_line(value, _CELL_CHARS))
                item.setToolTip(text if len(text) <= _TOOLTIP_CHARS else text[:_TOOLTIP_CHARS] + "…")
                item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
                self.setItem(row, column, item)

    def frame(self) -> pd.DataFrame:
        return self._frame

    def source_rows(self) -> list[int]:
        return [int(r) for r in self._frame.index]


def _check_dataset(source: SourceTable, mapping: ColumnMapping, split: SplitSettings
                   ) -> tuple[ImportedDataset | None, list[Problem]]:
    """Build the dataset as the importer will (on the worker thread); problems instead of exceptions."""
    try:
        dataset = build_dataset(source.frame, mapping, split, source_sha256=source.sha256, encoding=source.encoding)
    except DatasetError as exc:
        return None, list(exc.problems)
    except Exception as exc:
        return None, [Problem(f"The data could not be checked because of an unexpected error: {exc}.")]
    problems = list(dataset.warnings)
    if not mapping.keep_source_split:
        problems += label_count_warnings(dataset.label_counts, split)
    return dataset, problems


class ImportDialog(QDialog):
    """Choose how a CSV becomes a project: input columns and template, label, id/split/group, split, task.

    Every problem the importer finds is listed, in words with row numbers, before anything is written; the
    "Create project…" button stays disabled while any of them blocks. Reading the whole file, checking it and
    writing the project run on one background thread; each shows progress and can be cancelled.
    """

    checked = Signal()  # a check of the current settings finished (the problems list is up to date)
    project_created = Signal(Path)

    def __init__(self, csv_path: str | Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.csv_path = Path(csv_path)
        self.setWindowTitle(f"Import {self.csv_path.name}")
        self.setAcceptDrops(False)
        self.preview_frame: pd.DataFrame | None = None
        self.encoding = ""
        self.source: SourceTable | None = None
        self.file_error: str | None = None
        self.created_path: Path | None = None
        self._dataset: ImportedDataset | None = None
        self._counts_cache: dict[str, tuple[Any, Any]] = {}  # label column -> (the frame counted, its counts)
        self._problems: list[Problem] = []
        self._meanings: dict[str, str] = {}
        self._auto_template = ""
        self._updating = False  # True while widgets are filled by code, so their signals do not trigger checks
        self._busy: str | None = None  # "read" | "check" | "create" | None
        self._load_cancelled = False
        self._pending_read: Callable[[], SourceTable] | None = None  # the read waiting for the first paint
        self._close_when_done = False  # Cancel pressed while saving: close once the save has stopped
        self._create_progress: QtProgress | None = None
        # One thread at a time (a read, a check or a save) keeps the DataFrame single-reader; a job superseded by
        # newer settings or cancelled is abandoned (its outcome never arrives) and the next one waits for it.
        self._runner = TaskRunner(self, serial=True, name="pld-import")
        self._runner.succeeded.connect(lambda result: self._on_job_finished(result, None))
        self._runner.failed.connect(lambda _message, error: self._on_job_finished(None, error))
        self._runner.cancelled.connect(lambda: self._on_job_finished(None, Cancelled("cancelled by the user")))
        self._check_timer = QTimer(self)
        self._check_timer.setSingleShot(True)
        self._check_timer.setInterval(_CHECK_DELAY_MS)
        self._check_timer.timeout.connect(self._start_check)
        self._build()
        self._load_preview()

    # ------------------------------------------------------------------------------------------------------------
    # Building the widgets
    # ------------------------------------------------------------------------------------------------------------
    def _build(self) -> None:
        self.resize(*fitting_size(self, 1240, 860))
        root = QVBoxLayout(self)

        self.summary = QLabel(self.csv_path.name)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        bold = QFont(self.summary.font())
        bold.setBold(True)
        self.summary.setFont(bold)
        root.addWidget(self.summary)

        self.preview_model = PreviewModel(self)
        self.preview_view = QTableView()
        self.preview_view.setModel(self.preview_model)
        self.preview_view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.preview_view.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.preview_view.setWordWrap(False)
        self.preview_view.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        self.preview_view.horizontalHeader().setStretchLastSection(True)
        self.preview_view.verticalHeader().setDefaultSectionSize(22)
        self.preview_view.setMinimumHeight(120)
        self.preview_view.setToolTip("The first rows of the file; the numbers on the left are spreadsheet rows")
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.setChildrenCollapsible(False)
        splitter.addWidget(self.preview_view)

        self.form = QWidget()
        grid = QGridLayout(self.form)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.addWidget(self._build_columns_box(), 0, 0)
        grid.addWidget(self._build_text_box(), 0, 1)
        grid.addWidget(self._build_labels_box(), 0, 2)
        grid.setColumnStretch(0, 3)
        grid.setColumnStretch(1, 4)
        grid.setColumnStretch(2, 4)
        splitter.addWidget(self.form)

        problems_box = QGroupBox("Problems found (checked before anything is created)")
        problems_layout = QVBoxLayout(problems_box)
        self.problems_list = QListWidget()
        self.problems_list.setWordWrap(True)
        self.problems_list.setMinimumHeight(70)
        self.problems_list.itemClicked.connect(self._on_problem_clicked)
        problems_layout.addWidget(self.problems_list)
        splitter.addWidget(problems_box)
        splitter.setStretchFactor(0, 3)
        splitter.setStretchFactor(1, 5)
        splitter.setStretchFactor(2, 1)
        splitter.setSizes([240, 430, 150])  # room for about ten preview rows at the default size
        # On a small screen (1280x800, 1366x768) the form scrolls inside the dialog; the buttons stay in view.
        self.scroll_area = QScrollArea()
        self.scroll_area.setWidgetResizable(True)
        self.scroll_area.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll_area.setWidget(splitter)
        root.addWidget(self.scroll_area, 1)

        bottom = QHBoxLayout()
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.progress_bar = QProgressBar()
        self.progress_bar.setMaximumWidth(260)
        self.progress_bar.setTextVisible(True)
        self.progress_bar.hide()
        self.stop_btn = QPushButton("Cancel reading")
        self.stop_btn.clicked.connect(self._on_stop_clicked)
        self.stop_btn.hide()
        self.buttons = QDialogButtonBox()
        self.ok_button = self.buttons.addButton("Create project…", QDialogButtonBox.ButtonRole.AcceptRole)
        self.cancel_button = self.buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        self.ok_button.setEnabled(False)
        self.ok_button.setDefault(True)
        self.buttons.accepted.connect(self._on_create_clicked)
        self.buttons.rejected.connect(self.reject)
        bottom.addWidget(self.status, 1)
        bottom.addWidget(self.progress_bar)
        bottom.addWidget(self.stop_btn)
        bottom.addWidget(self.buttons)
        root.addLayout(bottom)

    def _build_columns_box(self) -> QWidget:
        box = QGroupBox("Columns")
        layout = QVBoxLayout(box)
        layout.addWidget(QLabel("Input text (tick one or more):"))
        self.text_columns = QListWidget()
        self.text_columns.setMinimumHeight(60)
        self.text_columns.setMaximumHeight(130)
        self.text_columns.itemChanged.connect(self._on_text_columns_changed)
        layout.addWidget(self.text_columns)
        form = QFormLayout()
        self.label_combo = QComboBox()
        self.id_combo = QComboBox()
        self.split_combo = QComboBox()
        self.group_combo = QComboBox()
        for combo in (self.label_combo, self.id_combo, self.split_combo, self.group_combo):
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(10)
        self.label_combo.currentIndexChanged.connect(self._on_label_changed)
        self.id_combo.currentIndexChanged.connect(self._settings_changed)
        self.split_combo.currentIndexChanged.connect(self._on_split_column_changed)
        self.group_combo.currentIndexChanged.connect(self._on_split_column_changed)
        form.addRow("Label:", self.label_combo)
        form.addRow("Id (optional):", self.id_combo)
        form.addRow("Split (optional):", self.split_combo)
        self.keep_split_check = QCheckBox("Keep the file's own train/dev/test split")
        self.keep_split_check.toggled.connect(self._on_split_column_changed)
        form.addRow("", self.keep_split_check)
        form.addRow("Group (optional):", self.group_combo)
        layout.addLayout(form)

        split_box = QGroupBox("Split into train / dev / test")
        split_grid = QGridLayout(split_box)
        defaults = SplitSettings()
        self.dev_spin = self._percent_spin(defaults.dev)
        self.test_spin = self._percent_spin(defaults.test)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2_147_483_647)
        self.seed_spin.setValue(defaults.seed)
        self.seed_spin.valueChanged.connect(self._settings_changed)
        self.train_label = QLabel()
        split_grid.addWidget(QLabel("Dev:"), 0, 0)
        split_grid.addWidget(self.dev_spin, 0, 1)
        split_grid.addWidget(QLabel("Test:"), 0, 2)
        split_grid.addWidget(self.test_spin, 0, 3)
        split_grid.addWidget(QLabel("Train:"), 1, 0)
        split_grid.addWidget(self.train_label, 1, 1)
        split_grid.addWidget(QLabel("Seed:"), 1, 2)
        split_grid.addWidget(self.seed_spin, 1, 3)
        split_grid.setColumnStretch(1, 1)
        split_grid.setColumnStretch(3, 1)
        self.split_note = QLabel()
        self.split_note.setWordWrap(True)
        split_grid.addWidget(self.split_note, 2, 0, 1, 4)
        layout.addWidget(split_box)
        layout.addStretch(1)
        return box

    def _percent_spin(self, fraction: float) -> QDoubleSpinBox:
        spin = QDoubleSpinBox()
        spin.setRange(0.0, 100.0)
        spin.setDecimals(1)
        spin.setSingleStep(5.0)
        spin.setSuffix(" %")
        spin.setValue(100.0 * fraction)
        spin.valueChanged.connect(self._settings_changed)
        spin.valueChanged.connect(self._update_labels)  # a 0 % split changes how many rows a label needs
        return spin

    def _build_text_box(self) -> QWidget:
        box = QGroupBox("Input text the model reads")
        layout = QVBoxLayout(box)
        head = QHBoxLayout()
        head.addWidget(QLabel("Template ({column} is replaced by the row's value; {{ and }} are braces):"), 1)
        self.reset_template_btn = QPushButton("Reset")
        self.reset_template_btn.setToolTip("Go back to the default template for the ticked columns")
        self.reset_template_btn.clicked.connect(self._reset_template)
        head.addWidget(self.reset_template_btn)
        layout.addLayout(head)
        self.template_edit = QPlainTextEdit()
        self.template_edit.setPlaceholderText("Empty: the ticked columns as they are")
        self.template_edit.setMinimumHeight(60)
        self.template_edit.setMaximumHeight(110)
        self.template_edit.textChanged.connect(self._on_template_changed)
        layout.addWidget(self.template_edit, 2)
        example_row = QHBoxLayout()
        example_row.addWidget(QLabel("Preview of example"))
        self.example_spin = QSpinBox()
        self.example_spin.setRange(1, 1)
        self.example_spin.valueChanged.connect(self._update_rendered)
        example_row.addWidget(self.example_spin)
        self.example_info = QLabel()
        example_row.addWidget(self.example_info, 1)
        layout.addLayout(example_row)
        self.rendered_view = QPlainTextEdit()
        self.rendered_view.setReadOnly(True)
        self.rendered_view.setMinimumHeight(70)
        self.rendered_view.setMaximumHeight(170)
        layout.addWidget(self.rendered_view, 3)
        layout.addWidget(QLabel("Task description (the first line of the student's prompt):"))
        self.task_edit = QPlainTextEdit(DEFAULT_TASK)
        self.task_edit.setMinimumHeight(44)
        self.task_edit.setMaximumHeight(70)
        layout.addWidget(self.task_edit, 1)
        layout.addStretch(0)
        return box

    def _build_labels_box(self) -> QWidget:
        box = QGroupBox("Labels")
        layout = QVBoxLayout(box)
        self.chart = CountBarChart(value_title="rows")
        layout.addWidget(self.chart, 3)
        self.label_note = QLabel()
        self.label_note.setWordWrap(True)
        self.label_note.setStyleSheet("color: #B00020;")
        self.label_note.hide()
        layout.addWidget(self.label_note)
        # Labels that differ only by case, Unicode form or invisible characters are listed in the problems;
        # merging them is the user's choice, never automatic.
        merge_row = QHBoxLayout()
        merge_row.addWidget(QLabel("Look-alike labels:"))
        self.merge_labels_combo = QComboBox()
        for text, value in (("keep separate", None), ("merge Unicode forms and invisible characters", "nfc"),
                            ("merge ignoring letter case too", "casefold")):
            self.merge_labels_combo.addItem(text, value)
        self.merge_labels_combo.currentIndexChanged.connect(self._on_label_changed)
        merge_row.addWidget(self.merge_labels_combo, 1)
        layout.addLayout(merge_row)
        layout.addWidget(QLabel("What each label means (optional; the student reads it):"))
        self.meanings_table = QTableWidget(0, 2)
        self.meanings_table.setHorizontalHeaderLabels(["Label", "Meaning"])
        self.meanings_table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.meanings_table.horizontalHeader().setStretchLastSection(True)
        self.meanings_table.verticalHeader().hide()
        self.meanings_table.setMinimumHeight(70)
        self.meanings_table.itemChanged.connect(self._on_meaning_edited)
        layout.addWidget(self.meanings_table, 2)
        return box

    # ------------------------------------------------------------------------------------------------------------
    # Reading the file
    # ------------------------------------------------------------------------------------------------------------
    @staticmethod
    def check_file(csv_path: str | Path) -> str | None:
        """Why `csv_path` cannot be read at all (missing, folder, binary, bad encoding, broken CSV...), or None.

        A small file is read whole; of a large one only the beginning, and the dialog reports the rest.
        """
        try:
            preview_csv(csv_path, n_rows=PREVIEW_ROWS)
            if Path(csv_path).stat().st_size <= _QUICK_CHECK_BYTES:
                read_csv(csv_path)
        except DatasetError as exc:
            return str(exc)
        except OSError as exc:  # the file vanished between the two reads
            return f"The file '{csv_path}' cannot be read: {exc.strerror or exc}."
        return None

    def _load_preview(self) -> None:
        try:
            frame, encoding = preview_csv(self.csv_path, n_rows=PREVIEW_ROWS)
        except DatasetError as exc:
            self._show_file_error(exc.problems)
            return
        self.preview_frame = frame
        self.encoding = encoding
        self.preview_model.set_frame(frame)
        self._fit_preview_columns()
        self._set_columns([str(c) for c in frame.columns])
        self._apply_mapping(guess_mapping(frame))
        self._update_summary()
        self._start_read()

    def _show_file_error(self, problems: list[Problem]) -> None:
        self.file_error = "\n".join(p.message for p in problems)
        self.form.setEnabled(False)
        self.preview_view.setEnabled(False)
        self.summary.setText(f"{self.csv_path.name} cannot be imported")
        self._show_problems(problems)
        self.status.setText("Choose another file, or fix this one and open it again.")
        self.ok_button.setEnabled(False)

    def _fit_preview_columns(self) -> None:
        header = self.preview_view.horizontalHeader()
        self.preview_view.resizeColumnsToContents()
        for column in range(self.preview_model.columnCount()):
            header.resizeSection(column, max(60, min(header.sectionSize(column), 420)))

    def _start_read(self) -> None:
        self._load_cancelled = False
        self._busy = "read"
        try:
            size = self.csv_path.stat().st_size
        except OSError:
            size = 0
        self._show_busy(f"Reading and checking the whole file ({size / 1e6:.1f} MB)…", "Cancel reading")
        path, label, cache = self.csv_path, self.label_combo.currentText(), self._counts_cache

        def read() -> SourceTable:
            # The label counts of the whole file are taken here too: on the GUI thread they cost ~150 ms at 100k.
            source = read_source(path)
            if label in source.frame.columns:
                cache[label] = (source.frame, label_counts(source.frame, label))
            return source

        self._pending_read = read
        if self.isVisible():
            self._launch_pending_read()
        else:
            # First paint, then read: every Qt virtual first called on a widget made from Python takes the GIL
            # once (PySide's override lookup), and while the reader parses each take waited up to a switch
            # interval; painting the new dialog under the read stalled the window ~0.5 s. A dialog that is never
            # shown (scripts, tests) starts reading at the next turn of the event loop.
            QTimer.singleShot(0, self._launch_read_if_hidden)

    def showEvent(self, event: QShowEvent) -> None:
        super().showEvent(event)
        if self._pending_read is not None:
            QTimer.singleShot(1000, self._launch_pending_read)  # in case no paint comes (a window never exposed)

    def paintEvent(self, event: QPaintEvent) -> None:
        super().paintEvent(event)
        if self._pending_read is not None:
            # The children paint after this, in the same pass; a call posted now runs once the pass is over.
            QTimer.singleShot(0, self._launch_pending_read)

    def _launch_read_if_hidden(self) -> None:
        if not self.isVisible():
            self._launch_pending_read()

    def _launch_pending_read(self) -> None:
        read, self._pending_read = self._pending_read, None
        if read is not None and self._busy == "read":
            self._submit(lambda _progress: read())

    def _on_read_finished(self, result: SourceTable | None, error: BaseException | None) -> None:
        if error is not None:
            problems = error.problems if isinstance(error, DatasetError) else [
                Problem(f"The file could not be read because of an unexpected error: {error}.")]
            self._show_file_error(problems)
            return
        assert result is not None
        self.source = result
        self.encoding = result.encoding
        columns = [str(c) for c in result.frame.columns]
        if columns != [self.text_columns.item(i).text() for i in range(self.text_columns.count())]:
            self._set_columns(columns)  # a column unnamed and empty in the preview but filled further down
        self._update_summary()
        self._update_labels()
        self._start_check()

    # ------------------------------------------------------------------------------------------------------------
    # Filling the widgets
    # ------------------------------------------------------------------------------------------------------------
    def _set_columns(self, columns: list[str]) -> None:
        """(Re)fill the column list and combos, keeping whatever was chosen that still exists."""
        previous = self.result_mapping() if self.text_columns.count() else None
        self._updating = True
        try:
            self.text_columns.clear()
            for name in columns:
                item = QListWidgetItem(name)
                item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsUserCheckable
                              | Qt.ItemFlag.ItemIsSelectable)
                item.setCheckState(Qt.CheckState.Unchecked)
                self.text_columns.addItem(item)
            self.label_combo.clear()
            self.label_combo.addItems(columns)
            for combo in (self.id_combo, self.split_combo, self.group_combo):
                combo.clear()
                combo.addItems([NONE_CHOICE, *columns])
        finally:
            self._updating = False
        if previous is not None:
            self._apply_mapping(previous, keep_template=True)

    def _apply_mapping(self, mapping: ColumnMapping, keep_template: bool = False) -> None:
        self._updating = True
        try:
            for i in range(self.text_columns.count()):
                item = self.text_columns.item(i)
                item.setCheckState(Qt.CheckState.Checked if item.text() in mapping.text_columns
                                   else Qt.CheckState.Unchecked)
            self.label_combo.setCurrentIndex(max(0, self.label_combo.findText(mapping.label_column)))
            for combo, value in ((self.id_combo, mapping.id_column), (self.split_combo, mapping.split_column),
                                 (self.group_combo, mapping.group_column)):
                combo.setCurrentIndex(max(0, combo.findText(value)) if value else 0)
            self.keep_split_check.setChecked(mapping.keep_source_split)
            if not keep_template:
                template = mapping.template if mapping.template is not None else default_template(
                    self._checked_columns())
                self._auto_template = default_template(self._checked_columns())
                self.template_edit.setPlainText(template)
        finally:
            self._updating = False
        self._update_split_widgets()
        self._update_labels()
        self._update_rendered()
        self._settings_changed()

    def _checked_columns(self) -> list[str]:
        return [self.text_columns.item(i).text() for i in range(self.text_columns.count())
                if self.text_columns.item(i).checkState() == Qt.CheckState.Checked]

    def _update_summary(self) -> None:
        frame = self.source.frame if self.source is not None else self.preview_frame
        if frame is None:
            return
        if self.source is not None:
            rows = f"{len(frame):,} rows"
        else:
            rows = f"first {len(frame):,} rows shown (reading the rest)"
        text = f"{self.csv_path.name}  ·  {rows}  ·  {len(frame.columns)} columns  ·  {self.encoding.upper()}"
        if self._dataset is not None:
            counts = self._dataset.split_counts()
            text += f"  ·  train {counts['train']:,} / dev {counts['dev']:,} / test {counts['test']:,}"
        self.summary.setText(text)
        self.summary.setToolTip(str(self.csv_path))

    # ------------------------------------------------------------------------------------------------------------
    # Reacting to edits
    # ------------------------------------------------------------------------------------------------------------
    def _on_text_columns_changed(self, _item: QListWidgetItem) -> None:
        if self._updating:
            return
        new_default = default_template(self._checked_columns())
        # Follow the columns only while the user has not written a template of their own.
        if self.template_edit.toPlainText() == self._auto_template:
            self._updating = True
            try:
                self.template_edit.setPlainText(new_default)
            finally:
                self._updating = False
        self._auto_template = new_default
        self._update_rendered()
        self._settings_changed()

    def _reset_template(self) -> None:
        self._auto_template = default_template(self._checked_columns())
        self.template_edit.setPlainText(self._auto_template)

    def _on_template_changed(self) -> None:
        if self._updating:
            return
        self._update_rendered()
        self._settings_changed()

    def _on_label_changed(self, _index: int) -> None:
        if self._updating:
            return
        self._update_labels()
        self._update_rendered()
        self._settings_changed()

    def _on_split_column_changed(self, *_: Any) -> None:
        if self._updating:
            return
        self._update_split_widgets()
        self._settings_changed()

    def _on_meaning_edited(self, item: QTableWidgetItem) -> None:
        if self._updating or item.column() != 1:
            return
        label_item = self.meanings_table.item(item.row(), 0)
        if label_item is not None:
            self._meanings[label_item.text()] = item.text()

    def _settings_changed(self, *_: Any) -> None:
        if self._updating or self.file_error is not None:
            return
        self._update_split_widgets()
        self._dataset = None  # the last check was for other settings
        self.ok_button.setEnabled(False)
        if self.source is not None and self._busy != "create":
            self.status.setText("Checking…")
            self._check_timer.start()

    def _update_split_widgets(self) -> None:
        split = self.split_settings()
        self.train_label.setText(f"{100 * split.train:.1f} %")
        self.keep_split_check.setEnabled(self.split_combo.currentIndex() > 0)
        keep = self.keep_split_check.isChecked() and self.split_combo.currentIndex() > 0
        group = self.group_combo.currentText() if self.group_combo.currentIndex() > 0 else None
        if keep:
            note = (f"The file's own split (column '{self.split_combo.currentText()}') is kept; the proportions "
                    "above only carve a missing dev or test split out of train.")
        else:
            note = "Stratified by label: every label is split in these proportions."
        if group:
            note += f" Grouped by '{group}': all rows of a group stay in one split, so proportions may drift."
        self.split_note.setText(note)

    def _update_labels(self, *_: Any) -> None:
        """The label chart, its inline warning and the meanings table for the chosen label column."""
        frame = self.source.frame if self.source is not None else self.preview_frame
        if frame is None:
            return
        column = self.label_combo.currentText()
        cached = self._counts_cache.get(column)
        if cached is not None and cached[0] is frame:
            counts = cached[1]
        else:
            counts = label_counts(frame, column)
            if self.source is not None and frame is self.source.frame:
                self._counts_cache[column] = (frame, counts)
        needed = sum(1 for r in self.split_settings().ratios() if r > 0)
        too_few = [label for label, n in counts.items() if n < needed]
        few = [label for label, n in counts.items() if needed <= n < FEW_ROWS_PER_LABEL]
        title = f"Rows per label in '{column}'"
        if self.source is None:
            title += f" (first {len(frame)} rows)"
        self.chart.set_counts(counts, highlighted=too_few + few, title=title)
        notes = []
        if len(counts) > 50:
            notes.append(f"'{column}' has {len(counts):,} different values; is it really the label column?")
        if too_few:
            notes.append("Too few rows to import (each label needs one in train, dev and test): "
                         + ", ".join(f"'{label}' ({counts[label]})" for label in too_few[:8])
                         + (f" and {len(too_few) - 8} more" if len(too_few) > 8 else "") + ".")
        if few:
            notes.append(f"Fewer than {FEW_ROWS_PER_LABEL} rows (scores will be noisy): "
                         + ", ".join(f"'{label}' ({counts[label]})" for label in few[:8])
                         + (f" and {len(few) - 8} more" if len(few) > 8 else "") + ".")
        self.label_note.setText(" ".join(notes))
        self.label_note.setVisible(bool(notes))
        self._fill_meanings(list(counts) if len(counts) <= 200 else [])

    def _fill_meanings(self, labels: list[str]) -> None:
        self._updating = True
        try:
            self.meanings_table.setRowCount(len(labels))
            for row, label in enumerate(labels):
                name = QTableWidgetItem(label)
                name.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
                self.meanings_table.setItem(row, 0, name)
                self.meanings_table.setItem(row, 1, QTableWidgetItem(self._meanings.get(label, "")))
        finally:
            self._updating = False

    def _update_rendered(self, *_: Any) -> None:
        frame = self.preview_frame
        if frame is None or len(frame) == 0:
            self.rendered_view.setPlainText("")
            return
        self.example_spin.setRange(1, len(frame))
        position = self.example_spin.value() - 1
        record = {str(k): ("" if v is None else str(v)) for k, v in frame.iloc[position].items()}
        template = self.template_edit.toPlainText()
        label_column = self.label_combo.currentText()
        self.example_info.setText(f"(row {frame.index[position]}; label '{record.get(label_column, '')}')")
        try:
            text = render_template(template if template.strip() else None, self._checked_columns(), record)
        except DatasetError as exc:
            self.rendered_view.setStyleSheet("color: #B00020;")
            self.rendered_view.setPlainText(str(exc))
            return
        self.rendered_view.setStyleSheet("")
        self.rendered_view.setPlainText(text if text else "(empty: this row has no input text)")

    # ------------------------------------------------------------------------------------------------------------
    # Checking
    # ------------------------------------------------------------------------------------------------------------
    def _start_check(self) -> None:
        if self.source is None or self.file_error is not None or self._busy == "create":
            return
        self._check_timer.stop()
        self._busy = "check"
        source, mapping, split = self.source, self.result_mapping(), self.split_settings()
        if len(source.frame) > 20_000:  # small files check in a blink; a progress bar would only flicker
            self._show_busy("Checking all rows…", "")
        self._submit(lambda _progress: _check_dataset(source, mapping, split))

    def _on_check_finished(self, result: tuple[ImportedDataset | None, list[Problem]]) -> None:
        dataset, problems = result
        self._dataset = dataset
        self._problems = problems
        self._show_problems(problems)
        blocking = [p for p in problems if p.is_error]
        self.ok_button.setEnabled(dataset is not None and not blocking)
        if dataset is not None:
            warnings = len(problems)
            self.status.setText(f"Ready to import {len(dataset.rows):,} rows with {len(dataset.labels)} labels"
                                + (f" ({warnings} warning{'s' if warnings != 1 else ''})." if warnings else "."))
        else:
            self.status.setText(f"{len(blocking)} problem{'s' if len(blocking) != 1 else ''} to fix before "
                                "importing.")
        self._update_summary()
        self.checked.emit()

    def _show_problems(self, problems: list[Problem]) -> None:
        self.problems_list.clear()
        style = self.style()
        ordered = [p for p in problems if p.is_error] + [p for p in problems if not p.is_error]
        for problem in ordered:
            icon = style.standardIcon(QStyle.StandardPixmap.SP_MessageBoxCritical if problem.is_error
                                      else QStyle.StandardPixmap.SP_MessageBoxWarning)
            item = QListWidgetItem(icon, problem.message)
            where = [w for w in (f"row {problem.row}" if problem.row else "",
                                 f"column '{problem.column}'" if problem.column else "") if w]
            item.setToolTip(("Error" if problem.is_error else "Warning (does not block the import)")
                            + (": " + ", ".join(where) if where else ""))
            item.setData(Qt.ItemDataRole.UserRole, problem.row)
            self.problems_list.addItem(item)
        if not problems:
            self.problems_list.addItem(QListWidgetItem("No problems found."))

    def _on_problem_clicked(self, item: QListWidgetItem) -> None:
        row = item.data(Qt.ItemDataRole.UserRole)
        if row is None:
            return
        rows = self.preview_model.source_rows()
        if row in rows:  # only the first rows are in the preview
            self.preview_view.selectRow(rows.index(row))

    # ------------------------------------------------------------------------------------------------------------
    # Background jobs
    # ------------------------------------------------------------------------------------------------------------
    def _show_busy(self, message: str, stop_text: str) -> None:
        self.status.setText(message)
        self.progress_bar.setRange(0, 0)  # indeterminate until a job reports numbers
        self.progress_bar.show()
        self.stop_btn.setText(stop_text)
        self.stop_btn.setEnabled(True)
        self.stop_btn.setVisible(bool(stop_text))

    def _hide_busy(self) -> None:
        self.progress_bar.hide()
        self.stop_btn.hide()

    def _submit(self, job: Callable[[QtProgress], Any], progress: QtProgress | None = None) -> None:
        """Run `job` on the dialog's background thread in place of any job still running (whose outcome is
        dropped: a read or check cancelled or superseded by newer settings)."""
        self._runner.abandon()
        self._runner.start(job, progress=progress)

    def _on_job_finished(self, result: Any, error: BaseException | None) -> None:
        kind, self._busy = self._busy, None
        self._hide_busy()
        if kind == "read":
            self._on_read_finished(result, error)
        elif kind == "check":
            if error is not None:
                result = (None, [Problem(f"The data could not be checked because of an unexpected error: {error}.")])
            self._on_check_finished(result)
        elif kind == "create":
            self._on_create_finished(result, error)

    def _on_stop_clicked(self) -> None:
        if self._busy == "read":
            self._runner.abandon()  # the read itself cannot be interrupted; its outcome is dropped
            self._busy = None
            self._load_cancelled = True
            self.progress_bar.hide()
            self.stop_btn.setText("Read the whole file")
            self.status.setText("Reading was cancelled. The preview shows the first rows; the whole file must be "
                                "checked before it can be imported.")
        elif self._busy == "create" and self._create_progress is not None:
            self._create_progress.cancel()
            self.stop_btn.setEnabled(False)
            self.status.setText("Cancelling…")
        elif self._load_cancelled:
            self._start_read()

    def is_busy(self) -> bool:
        """True while a read, check or save is running (or a check is about to start)."""
        return self._busy is not None or self._check_timer.isActive()

    # ------------------------------------------------------------------------------------------------------------
    # Results
    # ------------------------------------------------------------------------------------------------------------
    def result_mapping(self) -> ColumnMapping:
        """The column mapping as currently chosen."""
        def optional(combo: QComboBox) -> str | None:
            return combo.currentText() if combo.currentIndex() > 0 else None

        template = self.template_edit.toPlainText()
        split_column = optional(self.split_combo)
        return ColumnMapping(
            text_columns=tuple(self._checked_columns()),
            label_column=self.label_combo.currentText(),
            template=template if template.strip() else None,
            id_column=optional(self.id_combo),
            split_column=split_column,
            group_column=optional(self.group_combo),
            keep_source_split=bool(split_column) and self.keep_split_check.isChecked(),
            merge_labels=self.merge_labels_combo.currentData(),
        )

    def split_settings(self) -> SplitSettings:
        dev = round(self.dev_spin.value() / 100.0, 6)
        test = round(self.test_spin.value() / 100.0, 6)
        return SplitSettings(train=round(1.0 - dev - test, 6), dev=dev, test=test, seed=self.seed_spin.value())

    def dataset(self) -> ImportedDataset | None:
        """The checked dataset for the current settings, or None while unchecked or blocked by problems."""
        return self._dataset

    def problems(self) -> list[Problem]:
        return list(self._problems)

    def task(self) -> str:
        return self.task_edit.toPlainText().strip() or DEFAULT_TASK

    def label_meanings(self) -> dict[str, str]:
        labels = self._dataset.labels if self._dataset is not None else list(self._meanings)
        return {label: self._meanings[label].strip() for label in labels if self._meanings.get(label, "").strip()}

    # ------------------------------------------------------------------------------------------------------------
    # Creating the project
    # ------------------------------------------------------------------------------------------------------------
    def _on_create_clicked(self) -> None:
        if self._dataset is None:
            return
        suggested = str(self.csv_path.with_suffix(".pld"))
        path, _ = QFileDialog.getSaveFileName(self, "Create the project", suggested, "PLD projects (*.pld)")
        if not path:
            return
        target = Path(path)
        if target.suffix.lower() != ".pld":
            target = target.with_name(target.name + ".pld")
        # The save dialog has asked before replacing a file; Project.build still refuses to replace a non-project.
        self.start_create(target, overwrite=target.exists())

    def start_create(self, project_path: str | Path, *, overwrite: bool = False) -> None:
        """Write the project on the background thread; emits project_created and accepts the dialog when done."""
        dataset = self._dataset
        if dataset is None or self._busy is not None:
            return
        progress = QtProgress()
        progress.reported.connect(self._on_create_progress)
        self._create_progress = progress
        self._busy = "create"
        self.ok_button.setEnabled(False)
        self.form.setEnabled(False)
        self._show_busy(f"Creating {Path(project_path).name}…", "Cancel")
        target, source_name = Path(project_path), self.csv_path.name
        task, meanings = self.task(), self.label_meanings()
        self._submit(lambda progress: create_project(
            target, dataset, source_name=source_name, task=task, label_meanings=meanings, overwrite=overwrite,
            progress=progress), progress)

    def _on_create_progress(self, done: int, total: int, _message: str) -> None:
        if total > 0:
            self.progress_bar.setRange(0, total)
            self.progress_bar.setValue(done)

    def _on_create_finished(self, result: Path | None, error: BaseException | None) -> None:
        self._create_progress = None
        self.form.setEnabled(True)
        if self._close_when_done and error is not None:
            self.reject()
            return
        if error is None and result is not None:
            self.created_path = result
            self.status.setText(f"Created {result}.")
            self.project_created.emit(result)
            super().accept()
            return
        self.ok_button.setEnabled(self._dataset is not None)
        if isinstance(error, Cancelled):
            self.status.setText("Cancelled: no project was created.")
        elif isinstance(error, (ProjectFileError, DatasetError, OSError)):
            self.status.setText(f"The project was not created: {error}")
        else:
            self.status.setText(f"The project was not created because of an unexpected error: {error}")

    def accept(self) -> None:
        # Only a created project closes the dialog with "accepted"; Enter starts the same flow as the button.
        self._on_create_clicked()

    def reject(self) -> None:
        if self._busy == "create" and self._create_progress is not None:
            # Close only once the save has stopped, so nothing is left half-written behind the user's back.
            self._close_when_done = True
            self._on_stop_clicked()
            return
        self._runner.shutdown(wait=False)  # never wait: a long read may still be running; its outcome is dropped
        super().reject()

    def done(self, result: int) -> None:
        if result == QDialog.DialogCode.Accepted:
            self._runner.shutdown(wait=False)
        super().done(result)


def create_project_from_dialog(dialog: ImportDialog, project_path: str | Path, *, overwrite: bool = False,
                               progress: Progress | None = None) -> Path:
    """Create the project the dialog describes, here and now (the caller's thread). Raises DatasetError if the
    dialog's settings have blocking problems or are not checked yet, ProjectFileError if the file cannot be made."""
    dataset = dialog.dataset()
    if dataset is None:
        blocking = [p for p in dialog.problems() if p.is_error]
        raise DatasetError(blocking or [Problem("The data has not been checked yet; wait for the check to finish.")])
    return create_project(project_path, dataset, source_name=dialog.csv_path.name, task=dialog.task(),
                          label_meanings=dialog.label_meanings(), overwrite=overwrite, progress=progress)
