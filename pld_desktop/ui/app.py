"""PLD Desktop's window (first cut): open a project or the demo, run the phases in the background, read the results.

The full editor (import dialog, rule tree editing, side-by-side testing) builds on this window.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from PySide6.QtCore import QSettings, Qt
from PySide6.QtGui import QAction, QColor, QFont, QKeySequence
from PySide6.QtWidgets import (QApplication, QFileDialog, QGridLayout, QGroupBox, QHBoxLayout, QLabel, QMainWindow,
                               QMessageBox, QPlainTextEdit, QProgressBar, QPushButton, QSplitter, QStyle, QTableWidget,
                               QTableWidgetItem, QTabWidget, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget)

from .. import __version__
from ..core.pipeline import PHASE_NAMES
from ..core.project import Project, ProjectFileError
from .tasks import PipelineThread

STATE_COLOURS = {"done": "#2e7d32", "running": "#1565c0", "failed": "#c62828", "cancelled": "#ef6c00",
                 "paused": "#ef6c00"}


class PhaseCard(QGroupBox):
    """State, progress with counts, and the last message of one phase."""

    def __init__(self, phase: int) -> None:
        super().__init__(f"{phase}. {PHASE_NAMES[phase]}")
        self.state = QLabel("not started")
        self.bar = QProgressBar()
        self.bar.setFormat("%v / %m")
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.message.setMinimumHeight(36)
        self.message.setAlignment(Qt.AlignmentFlag.AlignTop)
        lay = QVBoxLayout(self)
        lay.addWidget(self.state)
        lay.addWidget(self.bar)
        lay.addWidget(self.message)

    def show_state(self, state: str, done: int, total: int, message: str) -> None:
        colour = STATE_COLOURS.get(state, "palette(text)")
        self.state.setText(f"<b style='color:{colour}'>{state}</b>")
        self.bar.setMaximum(max(total, 1))
        self.bar.setValue(min(done, max(total, 1)))
        self.message.setText(message or "")
        self.message.setToolTip(message or "")


class MainWindow(QMainWindow):
    def __init__(self, backends_factory: Any = None) -> None:
        super().__init__()
        self.backends_factory = backends_factory  # None -> the real models (tests inject doubles)
        self.project_path: Path | None = None
        self.worker: PipelineThread | None = None
        self.resize(1200, 780)
        self._build()
        self._refresh()

    # -- construction -------------------------------------------------------------
    def _build(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        open_act = QAction("&Open Project…", self, shortcut=QKeySequence.StandardKey.Open, triggered=self.open_dialog)
        demo_act = QAction("Open the &Demo Project", self, triggered=self.open_demo)
        quit_act = QAction("&Quit", self, shortcut=QKeySequence.StandardKey.Quit, triggered=self.close)
        file_menu.addActions([open_act, demo_act])
        file_menu.addSeparator()
        file_menu.addAction(quit_act)
        help_menu = self.menuBar().addMenu("&Help")
        help_menu.addAction(QAction("&About PLD Desktop", self, triggered=self.about))

        central = QWidget()
        outer = QVBoxLayout(central)
        top = QHBoxLayout()
        self.title = QLabel()
        self.title.setTextFormat(Qt.TextFormat.RichText)
        top.addWidget(self.title, 1)
        self.run_btn = QPushButton("Run all phases")
        self.run_btn.setToolTip("Run extraction, synthesis, the closed loop and evaluation; a rerun resumes")
        self.run_btn.clicked.connect(self.run_all)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setToolTip("Stop after the items in flight; everything completed is kept")
        self.cancel_btn.clicked.connect(self.cancel)
        top.addWidget(self.run_btn)
        top.addWidget(self.cancel_btn)
        outer.addLayout(top)

        cards = QGridLayout()
        self.cards = {p: PhaseCard(p) for p in PHASE_NAMES}
        for i, card in enumerate(self.cards.values()):
            cards.addWidget(card, 0, i)
        outer.addLayout(cards)
        self.stage = QLabel("")
        outer.addWidget(self.stage)

        tabs = QTabWidget()
        self.rules = QTreeWidget()
        self.rules.setHeaderLabels(["Rule", "Label", "Micro-rules", "Conflicts"])
        self.rules.setColumnWidth(0, 720)
        self.rules.setAlternatingRowColors(True)
        self.prompt = QPlainTextEdit(readOnly=True)
        self.prompt.setFont(QFont("monospace"))
        self.results = QTableWidget(0, 5)
        self.results.setHorizontalHeaderLabels(["Prompt", "Macro-F1", "Accuracy", "Latency p50 (s)", "Examples"])
        self.results.horizontalHeader().setStretchLastSection(True)
        self.results.setColumnWidth(0, 160)
        self.log = QPlainTextEdit(readOnly=True)
        tabs.addTab(self.rules, "Rules")
        tabs.addTab(self.prompt, "Prompt")
        tabs.addTab(self.results, "Results")
        tabs.addTab(self.log, "Log")
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(tabs)
        outer.addWidget(split, 1)
        self.setCentralWidget(central)
        self.statusBar().showMessage("Open a project (File > Open) or the demo project to begin.")

    # -- actions --------------------------------------------------------------------
    def open_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open project", str(Path.home()), "PLD projects (*.pld)")
        if path:
            self.open_project(Path(path))

    def open_demo(self) -> None:
        from ..resources import build_demo_project
        folder = Path(QSettings().value("demo_dir", str(Path.home() / "pld-demo")))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "demo.pld"
        if not path.exists():
            build_demo_project(path)
        self.open_project(path)

    def open_project(self, path: Path) -> None:
        try:
            Project.open(path, read_only=True).close()
        except ProjectFileError as exc:
            QMessageBox.warning(self, "Cannot open project", str(exc))
            return
        self.project_path = path
        self.setWindowTitle(f"{path.name} - PLD Desktop")
        self.statusBar().showMessage(f"Opened {path}. Run all phases to distil the rules; a rerun resumes.")
        self._refresh()

    def run_all(self) -> None:
        if self.project_path is None or self.worker is not None:
            return
        self.worker = PipelineThread(self.project_path, [1, 2, 3, 4], self,
                                     backends_factory=self.backends_factory)
        self.worker.progress.begun.connect(lambda stage, total: self.stage.setText(stage))
        self.worker.progress.reported.connect(self._on_progress)
        self.worker.progress.logged.connect(lambda msg, lvl: self.log.appendPlainText(f"[{lvl}] {msg}"))
        self.worker.finished_with.connect(self._on_finished)
        self.worker.start()
        self._refresh()

    def cancel(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            self.statusBar().showMessage("Stopping after the items in flight…")

    def _on_progress(self, done: int, total: int, message: str) -> None:
        eta = self.worker.progress.eta_seconds() if self.worker else None
        eta_text = f", about {eta:.0f} s left" if eta else ""
        self.statusBar().showMessage(f"{self.stage.text()}: {done}/{total}{eta_text}")
        self._refresh_phases()

    def _on_finished(self, status: str, message: str) -> None:
        if self.worker is not None:
            self.worker.wait()
        self.worker = None
        self.statusBar().showMessage(message)
        self.log.appendPlainText(f"[{status}] {message}")
        self._refresh()

    def about(self) -> None:
        import llama_cpp
        from PySide6 import __version__ as pyside_version
        QMessageBox.about(self, "About PLD Desktop",
                          f"<b>PLD Desktop {__version__}</b><br>Prompt-Level Distillation for small local models."
                          f"<br><br>Qt for Python {pyside_version}<br>llama-cpp-python {llama_cpp.__version__}")

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt override
        if self.worker is not None:
            answer = QMessageBox.question(self, "A phase is running",
                                          "Stop the running phase and quit? Completed items are kept.")
            if answer != QMessageBox.StandardButton.Yes:
                event.ignore()
                return
            self.worker.cancel()
            self.worker.wait()
        event.accept()

    # -- display ------------------------------------------------------------------------
    def _refresh(self) -> None:
        running = self.worker is not None
        self.run_btn.setEnabled(self.project_path is not None and not running)
        self.cancel_btn.setEnabled(running)
        if self.project_path is None:
            self.title.setText("<h2>PLD Desktop</h2>No project open.")
            return
        with Project.open(self.project_path, read_only=True) as project:
            info = project.dataset_info() or {}
            counts = {r["split"]: r["n"] for r in project.query(
                "SELECT split, COUNT(*) AS n FROM examples GROUP BY split")}
            self.title.setText(
                f"<h2>{self.project_path.name}</h2>{info.get('source_name', '')}: {info.get('n_rows', 0)} rows, "
                f"labels {', '.join(info.get('labels', []))} &nbsp;·&nbsp; train {counts.get('train', 0)} / "
                f"dev {counts.get('dev', 0)} / test {counts.get('test', 0)} (locked)")
            self._show_phases(project)
            self._show_rules(project)
            self._show_results(project)

    def _refresh_phases(self) -> None:
        if self.project_path is not None:
            with Project.open(self.project_path, read_only=True) as project:
                self._show_phases(project)

    def _show_phases(self, project: Project) -> None:
        states = project.phase_states()
        for phase, card in self.cards.items():
            st = states.get(phase)
            if st:
                card.show_state(st["state"], st["done"], st["total"], st["message"] or "")

    def _show_rules(self, project: Project) -> None:
        self.rules.clear()
        rs_id = project.get_setting("chosen_rule_set_id") or project.get_setting("synthesis_rule_set_id")
        if rs_id is None:
            self.prompt.setPlainText("No rules yet: run the phases.")
            return
        rs = project.rule_set(rs_id)
        micro = {m["id"]: m for m in project.micro_rules()}
        conflicts: dict[str, list[str]] = {}
        for c in project.conflicts(rs_id):
            for uid, other in ((c["rule_a"], c["rule_b"]), (c["rule_b"], c["rule_a"])):
                conflicts.setdefault(uid, []).append(f"with {other} ({c['source']}): {c['reason']}")
        warn = self.style().standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning)
        for r in rs.rules:
            found = conflicts.get(r["uid"], [])
            item = QTreeWidgetItem([r["text"], r["label"], str(len(r.get("micro_rule_ids", []))),
                                    str(len(found)) if found else ""])
            item.setToolTip(0, r["text"])
            if found:
                item.setIcon(0, warn)
                item.setBackground(0, QColor(255, 236, 179, 110))
                item.setToolTip(3, "\n".join(found[:12]))
            for mid in r.get("micro_rule_ids", [])[:50]:
                m = micro.get(mid)
                if m:
                    child = QTreeWidgetItem([m["rule"], m["label"], m["ext_id"]])
                    child.setToolTip(0, m["rule"])
                    item.addChild(child)
            self.rules.addTopLevelItem(item)
        self.prompt.setPlainText(rs.prompt_text)

    def _show_results(self, project: Project) -> None:
        last = project.get_setting("last_evaluation") or {}
        names = {"pld": "PLD rules", "zero_shot": "Zero-shot", "few_shot": "5-shot"}
        rows = [(names[k], project.evaluation(last[k])) for k in names if k in last]
        self.results.setRowCount(len(rows))
        for i, (name, ev) in enumerate(rows):
            m = ev["metrics"] or {}
            values = [name, f"{m.get('macro_f1', 0):.3f}", f"{m.get('accuracy', 0):.3f}",
                      f"{m.get('latency_p50_s') or 0:.3f}", str(ev["n_examples"])]
            for j, v in enumerate(values):
                self.results.setItem(i, j, QTableWidgetItem(v))


def main(argv: list[str] | None = None) -> int:
    app = QApplication(sys.argv if argv is None else argv)
    app.setOrganizationName("PLD Desktop")
    app.setApplicationName("PLD Desktop")
    app.setApplicationVersion(__version__)
    window = MainWindow()
    args = app.arguments()[1:]
    if args and args[0].endswith(".pld"):
        window.open_project(Path(args[0]))
    window.show()
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
