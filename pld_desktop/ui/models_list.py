"""The models dialog's list of GGUFs on this machine, with fetch (progress, cancel), probe and Use as ..."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal, Slot
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..backends.model_fetch import CURATED, FetchResult, fetch_model
from ..backends.model_probe import ProbeResult, probe_model
from ..backends.model_store import (
    FoundModel,
    MemoryEstimate,
    add_model_folder,
    find_models,
    memory_estimate,
)
from .tasks import QtProgress, TaskRunner

COLUMNS = ("Model", "Source", "Architecture", "Parameters", "Quantisation", "Size", "Trained context",
           "Chat template", "Memory", "Status")
PATH_ROLE = Qt.ItemDataRole.UserRole + 1

def _scan(n_ctx: int) -> list[tuple[FoundModel, MemoryEstimate | None]]:
    from ..backends.gguf_file import available_memory_bytes
    free = available_memory_bytes()
    return [(m, memory_estimate(m, n_ctx, free) if m.usable else None) for m in find_models()]


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _size(n: int) -> str:
    return _gib(n) if n >= 2**30 else f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 1024:.0f} KiB"


def _count(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.0f} M" if n >= 1e6 else f"{n:,}"


class ModelListPanel(QWidget):
    """Lists the GGUFs found on this machine (backends/model_store.py) and offers the curated ones to fetch.

    `use_as_student(path)` / `use_as_teacher(path)` ask the dialog to fill in its fields; nothing is saved here.
    """

    use_as_student = Signal(str)
    use_as_teacher = Signal(str)

    def __init__(self, n_ctx: Callable[[], int], project_path: Path | None = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.n_ctx = n_ctx
        self.project_path = project_path
        self.models: list[FoundModel] = []
        self._job_kind: str | None = None  # "scan" | "fetch" | "probe" while `runner` runs it
        self.runner = TaskRunner(self, name="pld-models")
        self.runner.reported.connect(self._on_progress)
        self.runner.succeeded.connect(lambda result: self._on_done(True, result))
        self.runner.cancelled.connect(lambda: self._on_done(False, "Cancelled."))
        self.runner.failed.connect(lambda message, _exc: self._on_done(False, message))
        self._select_after_scan: tuple[str, str] | None = None  # a file just fetched, and what was said
        layout = QVBoxLayout(self)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Interactive)  # long repo paths: elided, tooltip
        header.setStretchLastSection(True)
        self.table.setColumnWidth(0, 300)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.table.setWordWrap(False)
        self.table.itemSelectionChanged.connect(self._update_buttons)
        layout.addWidget(self.table, 1)

        actions = QHBoxLayout()
        self.student_btn = QPushButton("Use as student")
        self.student_btn.clicked.connect(lambda: self._use(self.use_as_student))
        self.teacher_btn = QPushButton("Use as teacher")
        self.teacher_btn.clicked.connect(lambda: self._use(self.use_as_teacher))
        self.probe_btn = QPushButton("Probe")
        self.probe_btn.setToolTip("Load it as the student and time a few examples with the project's current "
                                  "rules (dev examples; made-up ones without a project)")
        self.probe_btn.clicked.connect(self.probe)
        self.refresh_btn = QPushButton("Refresh")
        self.refresh_btn.clicked.connect(self.refresh)
        self.folder_btn = QPushButton("Add folder…")
        self.folder_btn.setToolTip("Also search a folder of your own (remembered on this machine)")
        self.folder_btn.clicked.connect(self._add_folder)
        for b in (self.student_btn, self.teacher_btn, self.probe_btn):
            actions.addWidget(b)
        actions.addStretch(1)
        actions.addWidget(self.folder_btn)
        actions.addWidget(self.refresh_btn)
        layout.addLayout(actions)

        fetch = QHBoxLayout()
        self.fetch_combo = QComboBox()
        self.fetch_combo.setEditable(True)
        for c in CURATED:
            self.fetch_combo.addItem(f"{c.key}  ({c.role}, ~{c.approx_bytes / 1e9:.1f} GB; {c.licence})", c.key)
            self.fetch_combo.setItemData(self.fetch_combo.count() - 1, f"{c.repo}:{c.filename}\n{c.note}",
                                         Qt.ItemDataRole.ToolTipRole)
        line = self.fetch_combo.lineEdit()
        if line is not None:  # always, for an editable combo box
            line.setPlaceholderText("a model above, or any org/repo[:file.gguf] on the Hub")
        self.fetch_combo.setToolTip("Downloads into the Hugging Face cache (HF_HUB_CACHE); resumes a stopped "
                                    "download; checks the Hub's sha256")
        self.fetch_btn = QPushButton("Fetch")
        self.fetch_btn.clicked.connect(self.fetch)
        fetch.addWidget(QLabel("Fetch:"))
        fetch.addWidget(self.fetch_combo, 1)
        fetch.addWidget(self.fetch_btn)
        layout.addLayout(fetch)

        busy = QHBoxLayout()
        self.busy_label = QLabel("")
        self.bar = QProgressBar()
        self.bar.setMaximumWidth(220)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.clicked.connect(self.cancel)
        busy.addWidget(self.busy_label, 1)
        busy.addWidget(self.bar)
        busy.addWidget(self.cancel_btn)
        layout.addLayout(busy)
        self.result = QLabel("")
        self.result.setWordWrap(True)
        self.result.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.result)
        self._show_busy(False)
        self._update_buttons()

    # -- the list -------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        n_ctx = self.n_ctx()
        self._start("scan", "Looking for GGUF models on this machine…", lambda _p: _scan(n_ctx))

    def _fill(self, rows: list[tuple[FoundModel, MemoryEstimate | None]]) -> None:
        self.models = [m for m, _ in rows]
        n_ctx = next((mem.n_ctx for _, mem in rows if mem is not None), None)
        self.table.setHorizontalHeaderItem(8, QTableWidgetItem(f"Memory at {n_ctx:,}" if n_ctx else "Memory"))
        self.table.setRowCount(len(rows))
        for r, (m, mem) in enumerate(rows):
            memory = "" if mem is None else (_size(mem.total)
                                             + ("" if mem.fits is None else (" ✔" if mem.fits else " ✘ too big")))
            status = "ok" if m.status == "ok" and not m.problem else f"{m.status}: {m.problem}"
            cells = (m.label, m.source, m.architecture or "?", _count(m.n_params) if m.n_params else "",
                     m.quantisation, _size(m.size_bytes), f"{m.n_ctx_train:,}" if m.n_ctx_train else "",
                     ("yes" if m.has_chat_template else "no") if m.status == "ok" else "", memory, status)
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setData(PATH_ROLE, m.path)
                item.setToolTip(f"{m.name}\n{m.path}" + (f"\n{mem.describe()}" if mem else ""))
                if not m.usable:
                    item.setForeground(Qt.GlobalColor.gray)
                self.table.setItem(r, c, item)
        self._update_buttons()

    def selected(self) -> FoundModel | None:
        rows = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        return self.models[rows[0].row()] if rows and rows[0].row() < len(self.models) else None

    def select_path(self, path: str) -> None:
        for r, m in enumerate(self.models):
            if m.path == path:
                self.table.selectRow(r)
                return

    def _use(self, signal: Any) -> None:
        model = self.selected()
        if model is not None and model.usable:
            signal.emit(model.path)
            self.result.setText(f"{model.label} filled in; press OK to save it in the project.")

    def _add_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Add a folder of GGUF models", str(Path.home()))
        if folder:
            add_model_folder(folder)
            self.refresh()

    # -- fetch and probe ------------------------------------------------------------------------------------
    def fetch_spec(self) -> str:
        index = self.fetch_combo.currentIndex()
        text = self.fetch_combo.currentText().strip()
        if index >= 0 and text == self.fetch_combo.itemText(index):
            return str(self.fetch_combo.itemData(index))
        return text

    def fetch(self) -> None:
        spec = self.fetch_spec()
        if not spec:
            self.result.setText("Choose a model to fetch, or type org/repo[:file.gguf].")
            return
        self._start("fetch", f"Fetching {spec}…", lambda p: fetch_model(spec, p))

    def probe(self) -> None:
        model = self.selected()
        if model is None or not model.usable:
            return
        project, n_ctx = self.project_path, self.n_ctx()
        self._start("probe", f"Probing {model.label}…",
                    lambda p: probe_model(model.path, p, project=project, n_ctx=n_ctx))

    def busy(self) -> bool:
        return self.runner.busy()

    def cancel(self) -> None:
        if self.runner.busy():
            self.runner.cancel()
            self.busy_label.setText("Stopping…")

    def _start(self, kind: str, message: str, fn: Callable[[QtProgress], Any]) -> None:
        if self.runner.busy():
            return
        self._job_kind = kind
        self.busy_label.setText(message)
        self.bar.setRange(0, 0)
        self.result.setText("")
        self._show_busy(True)
        self.runner.start(fn)

    @Slot(int, int, str)
    def _on_progress(self, done: int, total: int, message: str) -> None:
        if total <= 0:
            return
        # Bytes of a multi-GB file overflow QProgressBar's int: show per mille.
        self.bar.setRange(0, 1000)
        self.bar.setValue(int(1000 * done / total))
        if message in ("downloading", "verifying"):
            self.busy_label.setText(f"{message.capitalize()}: {done / 2**20:,.0f} of {total / 2**20:,.0f} MiB")
        elif message:
            self.busy_label.setText(message)

    @Slot(bool, object)
    def _on_done(self, ok: bool, result: object) -> None:
        kind, self._job_kind = self._job_kind, None
        self._show_busy(False)
        if kind == "scan":
            if ok:
                self._fill(result)  # type: ignore[arg-type]  # a scan job returns the list of found models
                found = sum(1 for m in self.models if m.usable)
                self.result.setText(f"{found} usable model(s) found." if self.models else
                                    "No GGUF models found on this machine: fetch one below.")
                if self._select_after_scan:  # keep saying what was fetched, and show it selected
                    self.select_path(self._select_after_scan[0])
                    self.result.setText(self._select_after_scan[1])
                    self._select_after_scan = None
            else:
                self.result.setText(f"✘ Could not list the models: {result}")
        elif kind == "fetch":
            if ok and isinstance(result, FetchResult):
                message = (f"✔ {result.repo}/{result.filename} ({_gib(result.size_bytes)}) is in {result.path}"
                           + (" (sha256 verified)." if result.sha256 else "."))
                self.result.setText(message)
                self._select_after_scan = (result.path, message)
                self.refresh()
            else:
                self.result.setText(f"✘ {result}" + (" The part downloaded is kept; Fetch resumes it."
                                                     if result == "Cancelled." else ""))
        else:
            self.result.setText(("✔ " + result.describe()) if ok and isinstance(result, ProbeResult)
                                else f"✘ Probe failed: {result}")

    def abandon(self) -> None:
        """The dialog closes: stop the job in flight (it finishes in the background and is ignored)."""
        self.runner.abandon()
        self._job_kind = None
        self._show_busy(False)

    def _show_busy(self, on: bool) -> None:
        for w in (self.busy_label, self.bar, self.cancel_btn):
            w.setVisible(on)
        self.fetch_btn.setEnabled(not on)
        self.refresh_btn.setEnabled(not on)
        self._update_buttons()

    def _update_buttons(self) -> None:
        model = self.selected()
        usable = model is not None and model.usable and self._job_kind is None  # set before the job starts
        for b in (self.student_btn, self.teacher_btn, self.probe_btn):
            b.setEnabled(usable)
