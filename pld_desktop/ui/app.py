"""PLD Desktop's main window: the project as a document, the four phases, and the views over its results.

The project file is the document and every change is written into it as it happens (there is no Save step);
"Save As" copies it. Views are adapters over the Qt-free core; long work runs on background threads.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QCloseEvent, QDragEnterEvent, QDropEvent, QIcon, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QPlainTextEdit,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from .. import __version__
from ..backends import model_fetch  # noqa: F401 - notes the user's HF_HUB_OFFLINE before the embedder sets its own
from ..core.pipeline import PHASE_NAMES, PHASE_TEACHER_KINDS, shown_phase_state
from ..core.project import Project, ProjectFileError
from ..core.states import PhaseState
from . import smoke
from .clusters_view import ClustersView, LoopChart  # views import with the window, not at the first open (~0.3 s)
from .compare_view import CompareView
from .diff_view import DiffView
from .results_view import ResultsView
from .rules_view import RulesEditor
from .tasks import PipelineTask, TaskRunner, prepare_window_process, start_pipeline
from .window_parts import (
    LazyViews,
    PhaseCard,
    WelcomePage,
    _BackgroundCounter,
    _format_seconds,
    prompt_kinds_in_words,
)

TAB_NAMES = ("Run", "Clusters", "Rules", "Test side by side", "Results", "Version diff")
_VERSION_VIEWS = {"compare": "Test side by side", "results": "Results", "diff": "Version diff"}  # view -> tab
_VIEW_TABS = {"loop": "Run", "clusters": "Clusters", "rules": "Rules", **_VERSION_VIEWS}  # every view -> its tab
MAX_RECENT = 8


class MainWindow(QMainWindow):
    _tokenizer_ready = Signal()  # emitted by the vocabulary's loading thread; delivered on the GUI thread

    def __init__(self, backends_factory: Callable[[], Any] | None = None) -> None:
        super().__init__()
        self._tokenizer_ready.connect(self._on_tokenizer_ready)
        self._stale_views: set[str] = set()  # views listing versions that missed a change while hidden
        self.backends_factory = backends_factory  # None -> the real models (tests inject doubles)
        self.project_path: Path | None = None
        self.project: Project | None = None       # the GUI thread's own connection (workers open theirs)
        self.worker: PipelineTask | None = None   # the phases running on `runner`, None when idle
        self.runner = TaskRunner(self)
        self.runner.begun.connect(self._on_begin)
        self.runner.reported.connect(self._on_progress)
        self.runner.logged.connect(self._on_logged)
        self.runner.succeeded.connect(lambda outcome: self._on_finished(*outcome))
        self.runner.failed.connect(lambda message, _exc: self._on_finished("failed", message))
        self._run_few_shot_k = 0
        self.running_phases: list[int] = []
        self._live: tuple[str, int, int, str] | None = None  # the running stage's latest progress signal
        self._close_after_stop = False
        self._tokenizer: Any = None
        self._counter: Any = None
        self.views = LazyViews(self)
        self.setAcceptDrops(True)
        self.setWindowIcon(app_icon())
        self.resize(1280, 820)
        self._build_actions()
        self._build_menus()
        self._build_central()
        # call-arg: PySide6 takes a signal's slot as a keyword argument; its QTimer stub does not list them.
        self._refresh_timer = QTimer(self, interval=700, singleShot=True, timeout=self._refresh_live)  # type: ignore[call-arg]
        # Dev scores of an edit arrive without asking, a few seconds after the last edit, when nothing else runs.
        self.auto_score_dev = True
        self._auto_score_timer = QTimer(self, interval=3000, singleShot=True, timeout=self._auto_score)  # type: ignore[call-arg]  # stub: no signal kwargs
        settings = QSettings()
        geometry = settings.value("window/geometry")
        if isinstance(geometry, QByteArray):
            self.restoreGeometry(geometry)
        self._update_recent_menu()
        self._refresh()
        prepare_window_process()  # before the first paint (GIL switch interval, frozen startup heap)

    # -- construction -------------------------------------------------------------------------
    def _action(self, text: str, slot: Callable[..., Any], shortcut: Any = None, tip: str = "") -> QAction:
        act = QAction(text, self)
        act.triggered.connect(slot)
        if shortcut is not None:
            act.setShortcut(shortcut)
        if tip:
            act.setStatusTip(tip)
            act.setToolTip(tip)
        return act

    def _build_actions(self) -> None:
        K = QKeySequence.StandardKey
        self.new_act = self._action("&New Project from CSV…", self.new_project, K.New,
                                    "Import a CSV of labelled examples into a new project")
        self.open_act = self._action("&Open Project…", self.open_dialog, K.Open, "Open a .pld project")
        self.demo_act = self._action("Open the &Demo Project", self.open_demo,
                                     tip="A bundled bank-message triage dataset (our own, 105 rows)")
        self.save_as_act = self._action("Save Project &As…", self.save_as, K.SaveAs,
                                        "Copy the project to a new file and continue there")
        self.close_act = self._action("&Close Project", self.close_project, K.Close)
        self.quit_act = self._action("&Quit", self.close, K.Quit)
        self.export_acts = {fmt: self._action(name, lambda _=False, f=fmt: self.export((f,)),
                                              tip=f"Write the current rule set as {name}")
                            for fmt, name in (("txt", "Prompt as &Text…"), ("md", "Report as &Markdown…"),
                                              ("json", "Rules as &JSON…"),
                                              ("csv", "Test Results as &CSV…"))}
        self.export_all_act = self._action("&All Formats…", lambda: self.export(("txt", "md", "json")),
                                           QKeySequence("Ctrl+E"), "Write .txt, .md and .json into a folder")
        self.export_all_act.setProperty("help_name", "Export the working version as .txt, .md and .json")
        from ..core.deploy import DEPLOY_FORMATS
        self.export_deploy_act = self._action(
            "&Deployment Files (Ollama, llama.cpp, Python)…", lambda: self.export(DEPLOY_FORMATS),
            tip="An Ollama Modelfile, a llama.cpp server command with a label grammar, and a Python script that "
                "classifies a CSV with the working version's prompt")
        self.run_all_act = self._action("Run &All Phases", self.run_all, QKeySequence("F5"),
                                        "Run extraction, synthesis, the closed loop and evaluation; a rerun resumes")
        self.cancel_act = self._action("&Cancel Running Phase", self.cancel, QKeySequence("Ctrl+."),
                                       "Stop after the items in flight; everything completed is kept")
        self.phase_acts = {p: self._action(f"Run Phase &{p}: {PHASE_NAMES[p]}",
                                           lambda _=False, p=p: self.run_phases([p]))
                           for p in PHASE_NAMES}
        self.models_act = self._action("&Models…", self.configure_models, QKeySequence("Ctrl+,"),
                                       "Choose the teacher, the student and the embedder")
        self.about_act = self._action("&About PLD Desktop", self.about)

    def _build_menus(self) -> None:
        file_menu = self.menuBar().addMenu("&File")
        file_menu.addActions([self.new_act, self.open_act])
        self.recent_menu = file_menu.addMenu("Open &Recent")
        file_menu.addAction(self.demo_act)
        file_menu.addSeparator()
        file_menu.addActions([self.save_as_act, self.close_act])
        file_menu.addSeparator()
        export_menu = file_menu.addMenu("&Export")
        export_menu.addActions(list(self.export_acts.values()))
        export_menu.addAction(self.export_deploy_act)
        export_menu.addSeparator()
        export_menu.addAction(self.export_all_act)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_act)
        self.edit_menu = self.menuBar().addMenu("&Edit")
        run_menu = self.menuBar().addMenu("&Run")
        run_menu.addAction(self.run_all_act)
        run_menu.addActions(list(self.phase_acts.values()))
        run_menu.addSeparator()
        run_menu.addAction(self.cancel_act)
        settings_menu = self.menuBar().addMenu("&Settings")
        settings_menu.addAction(self.models_act)
        view_menu = self.menuBar().addMenu("&View")
        for i, name in enumerate(TAB_NAMES):
            act = self._action(f"&{name}", lambda _=False, i=i: self.tabs.setCurrentIndex(i),
                               QKeySequence(f"Ctrl+{i + 1}"))
            act.setProperty("help_name", f"Show the {name} tab")
            view_menu.addAction(act)
        help_menu = self.menuBar().addMenu("&Help")
        help_menu.addAction(self._action("&Keyboard Shortcuts", lambda: self.show_help(0), QKeySequence("F1")))
        help_menu.addAction(self._action("&How a Run Works", lambda: self.show_help(1)))
        help_menu.addSeparator()
        help_menu.addAction(self.about_act)

    def _build_central(self) -> None:
        self.stack = QStackedWidget()
        self.welcome = WelcomePage(self)
        self.stack.addWidget(self.welcome)

        page = QWidget()
        outer = QVBoxLayout(page)
        top = QHBoxLayout()
        self.title = QLabel()
        self.title.setTextFormat(Qt.TextFormat.RichText)
        self.title.setWordWrap(True)
        top.addWidget(self.title, 1)
        self.models_btn = QPushButton("Models…")
        self.models_btn.setToolTip("Teacher, student and embedder for this project")
        self.models_btn.clicked.connect(self.configure_models)
        self.run_btn = QPushButton("Run all phases")
        self.run_btn.setToolTip(self.run_all_act.toolTip() + " (F5)")
        self.run_btn.clicked.connect(self.run_all)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setToolTip(self.cancel_act.toolTip())
        self.cancel_btn.clicked.connect(self.cancel)
        for b in (self.models_btn, self.run_btn, self.cancel_btn):
            top.addWidget(b)
        outer.addLayout(top)

        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(True)
        run_page = QWidget()
        run_lay = QVBoxLayout(run_page)
        cards = QGridLayout()
        self.cards = {p: PhaseCard(p) for p in PHASE_NAMES}
        for i, card in enumerate(self.cards.values()):
            card.start_requested.connect(lambda p: self.run_phases([p]))
            card.cancel_requested.connect(self.cancel)
            cards.addWidget(card, 0, i)
        run_lay.addLayout(cards)
        self.stage = QLabel("")
        run_lay.addWidget(self.stage)
        self.run_split = QSplitter(Qt.Orientation.Horizontal)
        self.chart_box = QGroupBox("Closed loop: dev macro-F1 per iteration")
        self.chart_layout = QVBoxLayout(self.chart_box)
        log_box = QGroupBox("Log")
        self.log = QPlainTextEdit(readOnly=True)
        self.log.setMaximumBlockCount(5000)
        QVBoxLayout(log_box).addWidget(self.log)
        self.run_split.addWidget(self.chart_box)
        self.run_split.addWidget(log_box)
        self.run_split.setSizes([520, 700])
        run_lay.addWidget(self.run_split, 1)
        self.tabs.addTab(run_page, "Run")
        self.clusters_holder = self._holder("Clusters appear after phase 2 (synthesis).")
        self.rules_holder = self._holder("Rules appear after phase 2 (synthesis).")
        self.compare_holder = self._holder("Open a project to compare prompts.")
        self.tabs.addTab(self.clusters_holder, "Clusters")
        self.tabs.addTab(self.rules_holder, "Rules")
        self.tabs.addTab(self.compare_holder, "Test side by side")
        self.results_holder = self._holder("Open a project to see its scores.")
        self.tabs.addTab(self.results_holder, "Results")
        self.diff_holder = self._holder("Open a project to compare its rule-set versions.")
        self.tabs.addTab(self.diff_holder, "Version diff")
        self.tabs.currentChanged.connect(self._refresh_stale_views)  # the tab is saved at close and run, not per switch
        outer.addWidget(self.tabs, 1)
        self.stack.addWidget(page)
        self.setCentralWidget(self.stack)
        self.statusBar().showMessage("Create a project from a CSV, open one, or open the demo project.")

    @staticmethod
    def _holder(placeholder: str) -> QWidget:
        w = QWidget()
        lay = QVBoxLayout(w)
        lay.setContentsMargins(0, 0, 0, 0)
        label = QLabel(placeholder)
        label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        lay.addWidget(label)
        return w

    @staticmethod
    def _put(holder: QWidget, widget: QWidget | None, placeholder: str = "") -> None:
        lay = holder.layout()
        assert lay is not None  # every holder is made with its layout (_holder)
        while (item := lay.takeAt(0)) is not None:
            old = item.widget()
            if old is not None:
                old.setParent(None)
                old.deleteLater()
        if widget is None:
            label = QLabel(placeholder)
            label.setAlignment(Qt.AlignmentFlag.AlignCenter)
            lay.addWidget(label)
        else:
            lay.addWidget(widget)

    # -- projects -----------------------------------------------------------------------------
    def new_project(self, csv_path: Path | None = None) -> None:
        if not self._can_switch_project():
            return
        if not csv_path:
            path, _ = QFileDialog.getOpenFileName(self, "Import labelled examples", str(self._last_dir()),
                                                  "CSV files (*.csv *.tsv *.txt);;All files (*)")
            if not path:
                return
            csv_path = Path(path)
        from .import_dialog import ImportDialog
        problem = ImportDialog.check_file(Path(csv_path))
        if problem:
            QMessageBox.warning(self, "Cannot import this file", problem)
            return
        dialog = ImportDialog(Path(csv_path), self)  # asks where to save and writes the project itself
        if dialog.exec() != ImportDialog.DialogCode.Accepted or dialog.created_path is None:
            self.statusBar().showMessage("Import cancelled; nothing was created.")
            return
        self.open_project(Path(dialog.created_path))

    def open_dialog(self) -> None:
        if not self._can_switch_project():
            return
        path, _ = QFileDialog.getOpenFileName(self, "Open project", str(self._last_dir()), "PLD projects (*.pld)")
        if path:
            self.open_project(Path(path))

    def open_demo(self) -> None:
        from ..resources import build_demo_project
        if not self._can_switch_project():
            return
        folder = Path(str(QSettings().value("demo_dir", str(Path.home() / "pld-demo"))))
        path = folder / "demo.pld"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                build_demo_project(path)
        except (OSError, ProjectFileError) as exc:
            QMessageBox.warning(self, "Cannot create the demo project", str(exc))
            return
        self.open_project(path)

    def open_project(self, path: Path) -> None:
        path = Path(path)
        try:
            project = Project.open(path)
        except ProjectFileError as exc:
            QMessageBox.warning(self, "Cannot open project", str(exc))
            self._forget_recent(path)
            return
        if not project.has_dataset():
            project.close()
            QMessageBox.warning(self, "Cannot open project", f"{path.name} has no dataset; create projects with "
                                                             f"File > New Project from CSV.")
            return
        self._close_views()
        if self.project is not None:
            self.project.close()
        self.project, self.project_path = project, path.resolve()
        self._add_recent(self.project_path)
        self.setWindowTitle(f"{path.name} - PLD Desktop")
        self.setWindowFilePath(str(self.project_path))
        self.log.clear()
        self._log_history()
        self._log_failures()
        self.stack.setCurrentIndex(1)
        self._build_views()
        self._refresh()
        state = project.get_setting("ui_state") or {}
        self.tabs.setCurrentIndex(int(state.get("tab", 0)) if 0 <= int(state.get("tab", 0)) < len(TAB_NAMES) else 0)
        self._want_current_view()
        self.statusBar().showMessage(f"Opened {self.project_path}. Changes are saved in the file as they happen.")

    def _can_switch_project(self) -> bool:
        if self.worker is not None:
            QMessageBox.information(self, "A phase is running",
                                    "Cancel the running phase before opening another project.")
            return False
        return True

    def save_as(self) -> None:
        if self.project is None:
            return
        if not self._can_switch_project():
            return
        target, _ = QFileDialog.getSaveFileName(self, "Save project as", str(self.project_path),
                                                "PLD projects (*.pld)")
        if not target:
            return
        target_path = Path(target) if target.endswith(".pld") else Path(target + ".pld")
        if target_path.resolve() == self.project_path:
            self.statusBar().showMessage("The project is already saved there (changes are saved as they happen).")
            return
        try:
            self.project.save_as(target_path)
        except (OSError, ProjectFileError) as exc:
            QMessageBox.warning(self, "Could not save the project", str(exc))
            return
        self.open_project(target_path)
        self.statusBar().showMessage(f"Saved a copy as {target_path} and continued there.")

    def close_project(self) -> None:
        if not self._can_switch_project() or self.project is None:
            return
        self._remember_view()
        self._close_views()
        self.project.close()
        self.project = self.project_path = None
        self.setWindowTitle("PLD Desktop")
        self.setWindowFilePath("")
        self.stack.setCurrentIndex(0)
        self._refresh()

    def _build_views(self) -> None:
        """The views are built on demand: the current tab's at once (`_want_current_view`), the others one per
        event-loop turn, in the order a user is likely to want them."""
        path = self.project_path
        assert path is not None

        def placed(holder: QWidget, view: QWidget) -> QWidget:
            self._put(holder, view)
            return view

        def loop() -> QWidget:
            view = LoopChart(path)
            self.chart_layout.addWidget(view)
            return view

        def results() -> QWidget:
            view = ResultsView(path, self.backends_factory, self)
            view.scoring_finished.connect(self._on_scored)
            return placed(self.results_holder, view)

        self.views.defer({
            "loop": loop, "rules": self._built_rules_view, "results": results,
            "compare": lambda: placed(self.compare_holder, CompareView(path, self.backends_factory, self)),
            "diff": lambda: placed(self.diff_holder, DiffView(path, self)),
            "clusters": lambda: placed(self.clusters_holder, ClustersView(path))})

    def _current_tab(self) -> str | None:
        index = self.tabs.currentIndex()
        return TAB_NAMES[index] if 0 <= index < len(TAB_NAMES) else None

    def _want_current_view(self) -> None:
        current = self._current_tab()
        for name in [n for n, tab in _VIEW_TABS.items() if tab == current and n in self.views.pending]:
            self.views.want(name)

    def _built_rules_view(self) -> Any:
        self._rebuild_rules_view()
        return self.views.get("rules")

    def _rebuild_rules_view(self) -> None:
        assert self.project is not None and self.project_path is not None
        self.views.pending.pop("rules", None)
        old = self.views.pop("rules", None)
        if old is not None:
            self.edit_menu.clear()
        if self._current_rule_set_id() is None:
            self._put(self.rules_holder, None, "Rules appear after phase 2 (synthesis). Run the phases first.")
            return
        editor = RulesEditor(self.project, self, token_counter=self._token_counter(),
                             n_ctx=self._settings().student_n_ctx, handle_export=False,
                             backends_factory=self.backends_factory)
        editor.export_requested.connect(lambda rs_id: self.export(("txt", "md", "json"), rs_id))
        editor.version_saved.connect(self._on_version_saved)
        editor.version_picked.connect(self._on_version_picked)
        self.views["rules"] = editor
        # The editor's own actions (not copies): one QAction per shortcut keeps Ctrl+Z unambiguous.
        self.edit_menu.addActions([editor.undo_action, editor.redo_action])
        self._put(self.rules_holder, editor)

    def _close_views(self) -> None:
        for _name, view in list(self.views.items()):
            stop = getattr(view, "shutdown", None)
            if stop is not None:
                stop()
        self.views.clear()
        self.edit_menu.clear()
        lay = self.chart_layout
        while (item := lay.takeAt(0)) is not None:
            w = item.widget()
            if w is not None:
                w.setParent(None)
                w.deleteLater()
        for holder, text in ((self.clusters_holder, "Clusters appear after phase 2 (synthesis)."),
                             (self.rules_holder, "Rules appear after phase 2 (synthesis)."),
                             (self.compare_holder, "Open a project to compare prompts."),
                             (self.results_holder, "Open a project to see its scores."),
                             (self.diff_holder, "Open a project to compare its rule-set versions.")):
            self._put(holder, None, text)

    def _token_counter(self) -> Callable[[str], int] | None:
        """The student's own tokenizer when its file loads, else None (the preview then says 'approximate').
        It loads on a helper thread (the bundled file's sha256 check and the vocabulary took 0.5-0.9 s on the
        GUI thread); until then the preview is approximate and it is refreshed once the counts are exact."""
        path = self._settings().student_gguf
        key = path or "<bundled>"
        if self._tokenizer is None or self._tokenizer[0] != key:
            from ..backends.tokenizer import VocabTokenizer
            if self._tokenizer is not None and self._tokenizer[1] is not None:
                self._tokenizer[1].close()
            self._tokenizer = (key, VocabTokenizer(path, background=True, on_ready=self._tokenizer_ready.emit))
            self._counter = _BackgroundCounter(self._tokenizer[1], self._tokenizer_ready.emit)
        return self._counter if self._tokenizer[1] is not None else None

    def _on_tokenizer_ready(self) -> None:
        tok = self._tokenizer[1] if self._tokenizer is not None else None
        if tok is None:
            return
        if tok.error is not None and self._tokenizer[1] is not None:
            self.log.appendPlainText(f"[warning] token counts are approximate: {tok.error}")
            self._tokenizer = (self._tokenizer[0], None)
        editor = self.views.get("rules")
        if editor is not None:
            if tok.error is not None:
                editor.token_counter = None
            editor.token_label.setText(editor._token_text(editor.model.record.prompt_text))

    def _settings(self) -> Any:
        from ..core.settings import RunSettings, load_settings
        return load_settings(self.project) if self.project is not None else RunSettings()

    def _current_rule_set_id(self) -> int | None:
        if self.project is None:
            return None
        from ..core.working import working_rule_set
        return working_rule_set(self.project)

    def _on_version_saved(self, rule_set_id: int) -> None:
        self.statusBar().showMessage(f"Saved rule-set version {rule_set_id}.", 4000)
        self._versions_changed()
        self._auto_score_timer.start()  # restarted by every edit: scores once the edits settle

    def _on_version_picked(self, rule_set_id: int) -> None:
        self.statusBar().showMessage(f"Version {rule_set_id} is now the working version.", 4000)
        self._versions_changed()

    # The views that list versions refresh when they are on screen; hidden ones are marked stale and refresh
    # when their tab is shown. Refreshing all three after every edit kept the window still for ~0.3 s.
    def _versions_changed(self) -> None:
        self._stale_views.update(name for name in _VERSION_VIEWS if name in self.views)
        self._refresh_stale_views()

    def _refresh_stale_views(self, *_: Any) -> None:
        self._want_current_view()
        current = self._current_tab()
        for name in [n for n in self._stale_views if _VIEW_TABS[n] == current or not self.isVisible()]:
            self._stale_views.discard(name)
            if name == "results":
                self._show_results()
            elif name in ("loop", "clusters") and name in self.views:
                self.views[name].reload()
            elif name in self.views:
                self.views[name].refresh_choices()

    def _student_idle(self) -> bool:
        """No phase, comparison or score is using the student."""
        compare, results = self.views.get("compare"), self.views.get("results")
        return (self.worker is None and (compare is None or not compare.comparing())
                and (results is None or not results.busy()))

    def _auto_score(self) -> None:
        """Score the working version on dev in the background while the student is idle (never on test)."""
        results = self.views.want("results")
        if results is None or not self.auto_score_dev or self.project is None:
            return
        if not self._student_idle():
            self._auto_score_timer.start()  # try again later
            return
        working = self._current_rule_set_id()
        if working is not None:
            results.score("dev", working, auto=True)

    def _on_scored(self, status: str, message: str) -> None:
        self.log.appendPlainText(f"[{'info' if status == 'done' else status}] {message}")
        if status == "done":
            self.statusBar().showMessage(message, 6000)
        compare = self.views.get("compare")
        if compare is not None:
            compare.refresh_choices()

    def _remember_view(self, *_: Any) -> None:
        if self.project is not None and self.worker is None:
            try:
                self.project.set_setting("ui_state", {"tab": self.tabs.currentIndex()})
            except Exception:
                pass

    # -- recent files ---------------------------------------------------------------------------
    def _recent(self) -> list[str]:
        value = QSettings().value("recent_files", [])
        if isinstance(value, str):
            value = [value]
        return [str(v) for v in value] if isinstance(value, (list, tuple)) else []

    def _add_recent(self, path: Path) -> None:
        items = [str(path)] + [p for p in self._recent() if p != str(path)]
        QSettings().setValue("recent_files", items[:MAX_RECENT])
        QSettings().setValue("last_dir", str(path.parent))
        self._update_recent_menu()

    def _forget_recent(self, path: Path) -> None:
        QSettings().setValue("recent_files", [p for p in self._recent() if Path(p) != Path(path)])
        self._update_recent_menu()

    def _last_dir(self) -> Path:
        return Path(str(QSettings().value("last_dir", str(Path.home()))))

    def _update_recent_menu(self) -> None:
        self.recent_menu.clear()
        recent = self._recent()
        for i, p in enumerate(recent, 1):
            act = self.recent_menu.addAction(f"&{i} {Path(p).name}")
            act.setStatusTip(p)
            act.triggered.connect(lambda _=False, p=p: self.open_project(Path(p))
                                  if self._can_switch_project() else None)
        self.recent_menu.setEnabled(bool(recent))
        self.welcome.show_recent(recent)

    # -- drag and drop -----------------------------------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if _dropped_file(event.mimeData()) is not None:
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        path = _dropped_file(event.mimeData())
        if path is None:
            return
        event.acceptProposedAction()
        # Dialogs after the drop returns, so the drag source is not left waiting.
        if path.suffix.lower() == ".pld":
            QTimer.singleShot(0, lambda: self.open_project(path) if self._can_switch_project() else None)
        else:
            QTimer.singleShot(0, lambda: self.new_project(path))

    # -- models ----------------------------------------------------------------------------------
    def configure_models(self) -> None:
        if self.project is None:
            QMessageBox.information(self, "No project", "Open or create a project first; model choices are saved "
                                                        "with the project (API keys go to the system keyring).")
            return
        if self.worker is not None:
            QMessageBox.information(self, "A phase is running", "Change models after the running phase stops.")
            return
        from ..core.settings import save_settings
        from .models_dialog import ModelsDialog
        dialog = ModelsDialog(self._settings(), self, project_path=self.project_path)
        if dialog.exec() == ModelsDialog.DialogCode.Accepted:
            save_settings(self.project, dialog.settings())
            self.statusBar().showMessage("Model settings saved in the project.", 4000)
            self._rebuild_rules_view()
            self._refresh()

    # -- running the phases ------------------------------------------------------------------------
    def run_all(self) -> None:
        self.run_phases([1, 2, 3, 4])

    def run_phases(self, phases: list[int]) -> None:
        if self.project is None or self.project_path is None or self.worker is not None:
            return
        from ..core.pipeline import estimate_teacher_run
        settings = self._settings()
        if not self._accept_project_settings(settings, phases):
            return
        settings = self._settings()
        if settings.teacher == "gemini" and set(phases) & {1, 2, 3}:
            estimate = estimate_teacher_run(self.project, settings, phases)
            answer = QMessageBox.question(self, "Start a paid teacher run?",
                                          f"{estimate}\n\nThe teacher is {settings.teacher_model} (Gemini). Start?")
            if answer != QMessageBox.StandardButton.Yes:
                return
        results = self.views.get("results")
        if results is not None and results.busy():
            if not results.auto:
                QMessageBox.information(self, "A score is running", "Cancel the score in the Results tab first.")
                return
            results.shutdown()  # a background dev score gives way; what it scored is kept and reused
        self._auto_score_timer.stop()
        self._remember_view()
        self.running_phases = list(phases)
        if results is not None:
            results.set_stale(True)
        self.worker = PipelineTask(self.project_path, phases, backends_factory=self.backends_factory)
        self._run_few_shot_k = settings.few_shot_k
        self.log.appendPlainText(f"--- running phase{'s' if len(phases) > 1 else ''} "
                                 f"{', '.join(str(p) for p in phases)}")
        start_pipeline(self.runner, self.worker)
        self._refresh()

    def _on_logged(self, message: str, level: str) -> None:
        self.log.appendPlainText(f"[{level}] {prompt_kinds_in_words(message, self._run_few_shot_k)}")

    def _accept_project_settings(self, settings: Any, phases: list[int]) -> bool:
        """Servers and model files named by the project file are used only once this machine's user accepts
        them (remembered on this machine); "Use defaults" resets them to the bundled models. False: cancelled."""
        from ..backends.trust import TrustStore, reset_to_defaults
        from ..core.settings import save_settings
        store = TrustStore()
        untrusted = store.untrusted(settings, phases)
        if not untrusted:
            return True
        box = QMessageBox(QMessageBox.Icon.Warning, "Use the servers and models this project names?",
                          "This project file names:\n\n" + "\n".join(f"- {i.describe()}" for i in untrusted)
                          + "\n\nA project file may come from someone else: your API key and your examples "
                            "would be sent to these servers. Accept them on this machine, or use the defaults "
                            "(bundled models) for this project?", parent=self)
        accept = box.addButton("Accept", QMessageBox.ButtonRole.AcceptRole)
        defaults = box.addButton("Use defaults", QMessageBox.ButtonRole.DestructiveRole)
        box.addButton(QMessageBox.StandardButton.Cancel)
        box.exec()
        if box.clickedButton() is accept:
            store.trust(untrusted)
            return True
        if box.clickedButton() is defaults and self.project is not None:
            save_settings(self.project, reset_to_defaults(settings, untrusted))
            return True
        return False

    def cancel(self) -> None:
        if self.worker is not None:
            self.runner.cancel()
            self.cancel_btn.setEnabled(False)
            self.statusBar().showMessage("Stopping after the items in flight…")

    def _on_begin(self, stage: str, total: int) -> None:
        stage = prompt_kinds_in_words(stage, self._settings().few_shot_k)
        self.stage.setText(stage)
        self._live = (stage, 0, total, "")
        self._refresh_live()

    def _on_progress(self, done: int, total: int, message: str) -> None:
        eta = self.runner.progress.eta_seconds() if self.runner.progress is not None else None
        eta_text = f", about {_format_seconds(eta)} left" if eta else ""
        self.statusBar().showMessage(f"{self.stage.text()}: {done}/{total}{eta_text}")
        self._live = (self.stage.text(), done, total, message)
        if not self._refresh_timer.isActive():  # the file is read at most every 0.7 s, not per item
            self._refresh_timer.start()

    def _refresh_live(self) -> None:
        if self.project is not None:
            self._show_phases()

    def _on_finished(self, status: str, message: str) -> None:
        # No wait() here: the task still frees its models after this signal (~0.1 s and more for big ones);
        # the runner's thread ends on its own (closeEvent waits for it).
        self.worker, self.running_phases, self._live = None, [], None
        self.stage.setText("")
        if "results" in self.views:
            self.views["results"].set_stale(False)
        message = prompt_kinds_in_words(message, self._settings().few_shot_k)
        self.statusBar().showMessage(message)
        self.log.appendPlainText(f"[{status}] {message}")
        chosen = self.project.chosen_prompt() if self.project is not None else {}
        if chosen.get("warning"):  # no rules prompt beats zero-shot on dev: say so, with the figures
            self.log.appendPlainText(f"[warning] {chosen['warning']}")
            self.statusBar().showMessage(chosen["warning"])
        given_up = len(self.project.given_up_requests()) if self.project is not None else 0
        if given_up:  # not resent by a rerun; core.pipeline.retry_failed_items retries them
            self.log.appendPlainText(f"[info] {given_up} teacher item(s) given up after their attempts; a rerun "
                                     "does not resend them (pld run --retry-failed does).")
        if status != "done":
            self._log_failures()
        if self._close_after_stop:
            self.close()
            return
        # What a run changed is re-read by the views on screen now, by the others when their tab is shown.
        self._stale_views.update(name for name in ("loop", "clusters", "compare", "diff") if name in self.views)
        self._refresh_stale_views()
        if "rules" not in self.views and "rules" not in self.views.pending:
            # The run's first rules: the editor is built in the next event-loop turn, not in this one, which
            # already re-reads the views on screen (both in one turn held the window ~0.1 s).
            self.views.defer({"rules": self._built_rules_view})
        elif "rules" in self.views and status == "done":  # in place: a rebuild re-measured the whole tree
            self.views["rules"].reload_after_run()
        self._refresh()
        if status in ("failed", "quota_exhausted"):
            QMessageBox.warning(self, "The run stopped", message)

    def _log_history(self) -> None:
        import time as _time
        assert self.project is not None
        runs = self.project.runs()
        if not runs:
            self.log.appendPlainText("No runs yet. Press 'Run all phases' (F5) to start; every item is saved as it "
                                     "completes, so a stopped run resumes where it stopped.")
        for r in runs[-30:]:
            when = _time.strftime("%Y-%m-%d %H:%M", _time.localtime(r["started_at"]))
            took = f" in {_format_seconds(r['finished_at'] - r['started_at'])}" if r["finished_at"] else ""
            self.log.appendPlainText(f"{when}  {r['command'] or 'run'}: {r['status']}{took}")

    def _log_failures(self) -> None:
        if self.project is None:
            return
        failed = self.project.failed_items()
        if failed:
            self.log.appendPlainText(f"{len(failed)} item(s) were given up after retries (kept for a rerun):")
            for f in failed[-20:]:
                self.log.appendPlainText(f"  phase {f['phase']} {f['item_key']}: {f['reason']}")

    # -- export --------------------------------------------------------------------------------------
    def export(self, formats: tuple[str, ...], rule_set_id: int | None = None) -> list[Path]:
        if self.project is None:
            return []
        from ..core.export import export_version
        rs_id = rule_set_id or self._current_rule_set_id()
        if rs_id is None:
            QMessageBox.information(self, "Nothing to export", "Run phases 1 and 2 first: there is no rule set yet.")
            return []
        folder = QFileDialog.getExistingDirectory(self, "Export into folder", str(self._last_dir()))
        if not folder:
            return []
        try:
            # The window has always named its CSV <project>-v<id>-results.csv (pld export: <project>-results-v<id>.csv).
            assert self.project_path is not None  # set with self.project
            written = export_version(self.project, folder, formats, rule_set_id=rs_id,
                                     csv_name=f"{self.project_path.stem}-v{rs_id}-results.csv")
        except (OSError, ValueError, RuntimeError) as exc:
            QMessageBox.warning(self, "Export failed", str(exc))
            return []
        self.statusBar().showMessage(f"Exported rule-set version {rs_id}: " + ", ".join(p.name for p in written))
        self.log.appendPlainText("[info] exported " + ", ".join(str(p) for p in written))
        return written

    # -- about and closing -----------------------------------------------------------------------------
    def show_help(self, page: int = 0) -> None:
        from .help_dialog import HelpDialog
        actions = [a for menu in self.menuBar().actions() if menu.menu() is not None
                   for a in _menu_actions(menu.menu())]
        rules = self.views.want("rules")
        if rules is not None:  # the editor's own actions live in its toolbar, not only in the Edit menu
            actions += list(rules.actions()) + [a for w in rules.findChildren(QWidget) for a in w.actions()]
        self.help_dialog = HelpDialog(actions, self, page=page)
        self.help_dialog.show()

    def about(self) -> None:
        QMessageBox.about(self, "About PLD Desktop", about_text(self._loaded_models()))

    def _loaded_models(self) -> list[str]:
        from ..backends.bundled import describe_model_choice, describe_student, describe_teacher
        s = self._settings()
        return [f"Student: {describe_student(s)}", f"Teacher: {describe_teacher(s)}",
                f"Embedder: {describe_model_choice(s.embedder, 'embedder')}"]

    def closeEvent(self, event: QCloseEvent) -> None:
        if self.worker is not None:
            if not self._close_after_stop:
                answer = QMessageBox.question(self, "A phase is running",
                                              "Stop the running phase and quit? Completed items are kept and a "
                                              "rerun resumes where it stopped.")
                if answer != QMessageBox.StandardButton.Yes:
                    event.ignore()
                    return
                self._close_after_stop = True
                self.cancel()
                self.statusBar().showMessage("Stopping the running phase; the window closes when it has stopped…")
            event.ignore()  # closes from _on_finished once the worker has stopped cleanly
            return
        self._remember_view()
        QSettings().setValue("window/geometry", self.saveGeometry())
        self._close_views()
        if self.project is not None:
            self.project.close()
            self.project = None
        if self._tokenizer is not None and self._tokenizer[1] is not None:
            self._tokenizer[1].close()
        self.runner.shutdown(wait=True)  # the window is going: let a finished run's teardown end first
        event.accept()

    # -- display -------------------------------------------------------------------------------------
    def _refresh(self) -> None:
        busy = self.worker is not None
        has_project = self.project is not None
        for act in (self.run_all_act, *self.phase_acts.values()):
            act.setEnabled(has_project and not busy)
        self.run_btn.setEnabled(has_project and not busy)
        self.cancel_btn.setEnabled(busy)
        self.cancel_act.setEnabled(busy)
        for act in (self.save_as_act, self.close_act, self.export_all_act, self.export_deploy_act,
                    *self.export_acts.values(),
                    self.models_act):
            act.setEnabled(has_project)
        for act in (self.new_act, self.open_act, self.demo_act):
            act.setEnabled(not busy)
        if self.project is None or self.project_path is None:
            self.stack.setCurrentIndex(0)
            return
        project = self.project
        info = project.dataset_info() or {}
        counts = project.split_counts()
        s = self._settings()
        from ..backends.bundled import describe_student, describe_teacher
        teacher, student = describe_teacher(s), describe_student(s)
        self.title.setText(
            f"<h2 style='margin:0'>{self.project_path.name}</h2>{info.get('source_name', '')}: "
            f"{info.get('n_rows', 0)} rows, labels {', '.join(info.get('labels', []))} &nbsp;·&nbsp; "
            f"train {counts.get('train', 0)} / dev {counts.get('dev', 0)} / test {counts.get('test', 0)} (locked)"
            f"<br>teacher: {teacher} &nbsp;·&nbsp; student: {student}")
        self._show_phases()
        self._show_results()

    def _show_phases(self) -> None:
        assert self.project is not None
        states = self.project.phase_states()
        busy = self.worker is not None
        current = None
        if busy:
            running = [p for p in self.running_phases if states.get(p, {}).get("state") == PhaseState.RUNNING]
            current = running[0] if running else None
        k = self._settings().few_shot_k
        for phase, card in self.cards.items():
            card.few_shot_k = k
            st = states.get(phase) or {"state": PhaseState.NOT_STARTED, "done": 0, "total": 0, "message": ""}
            kinds = PHASE_TEACHER_KINDS.get(phase)
            teacher = self.project.teacher_totals(kinds) if kinds else None
            progress = self.runner.progress
            eta = progress.eta_seconds() if busy and phase == current and progress is not None else None
            done, total, message = st["done"], st["total"], st["message"] or ""
            if phase == current and self._live is not None:  # item-level progress comes from the signals
                stage, done, total, detail = self._live
                message = f"{stage}: {detail}" if detail else stage
            state = shown_phase_state(self.project_path, st["state"]) if phase != current else st["state"]
            card.show_state(state, done, total, message, running_here=phase == current,
                            busy=busy, eta=eta, teacher=teacher)

    def _show_results(self) -> None:
        view = self.views.get("results")
        if view is not None and not view.busy():
            view.reload()


def _menu_actions(menu: Any) -> list[QAction]:
    """Every action of a menu and its submenus, in menu order."""
    out: list[QAction] = []
    for act in menu.actions():
        out.extend(_menu_actions(act.menu()) if act.menu() is not None else [act])
    return out


def _dropped_file(mime: Any) -> Path | None:
    """The one local file being dropped if it is a project or a CSV the importer takes, else None."""
    from .import_dialog import csv_paths_from_mime
    local = [u for u in mime.urls() if u.isLocalFile()] if mime.hasUrls() else []
    if len(local) != 1:
        return None
    path = Path(local[0].toLocalFile())
    if path.suffix.lower() == ".pld":
        return path
    csvs = csv_paths_from_mime(mime)  # the importer's own rule for which dropped files are tables
    return csvs[0] if csvs else None


def app_icon() -> QIcon:
    from ..resources import resources_dir
    icon = QIcon()
    folder = resources_dir() / "icons"
    for png in sorted(folder.glob("pld-desktop-*.png")):
        icon.addFile(str(png))
    return icon


def about_text(models: list[str]) -> str:
    import llama_cpp
    from PySide6 import __version__ as pyside_version
    from PySide6.QtCore import qVersion
    lines = "<br>".join(models)
    return (f"<h3>PLD Desktop {__version__}</h3><p>Prompt-Level Distillation: a teacher's reasoning, written down "
            f"as rules a small local model reads as its system prompt.</p>"
            f"<p>Qt {qVersion()} · Qt for Python {pyside_version}<br>llama-cpp-python {llama_cpp.__version__}<br>"
            f"Python {sys.version.split()[0]}</p><p>{lines}</p>")


def main(argv: list[str] | None = None) -> int:
    app = QApplication(sys.argv if argv is None else argv)
    app.setOrganizationName("PLD Desktop")
    app.setApplicationName("PLD Desktop")
    app.setApplicationVersion(__version__)
    app.setWindowIcon(app_icon())
    app.setDesktopFileName("pld-desktop")
    window = MainWindow()
    args = [a for a in app.arguments()[1:] if a != smoke.SMOKE_FLAG]
    window.show()
    if smoke.smoke_requested(app.arguments()):  # the packaged app's smoke test (ui/smoke.py): open, show, run, quit
        if args and args[0].endswith(".pld"):  # opened from the event loop, so a dialog it raises is caught
            QTimer.singleShot(0, lambda: window.open_project(Path(args[0])))
        runner = smoke.install(app, window, args)  # noqa: F841 - kept alive until the loop ends
        return _exec(app)
    if args and args[0].endswith(".pld"):
        window.open_project(Path(args[0]))
    elif args and args[0].lower().endswith((".csv", ".tsv")):
        QTimer.singleShot(0, lambda: window.new_project(Path(args[0])))
    return _exec(app)


def _exec(app: QApplication) -> int:
    from ..backends.embedder import shutdown_child_embedders
    code = app.exec()
    shutdown_child_embedders()  # the window's embedding process (window_backends) ends with the window
    return code


if __name__ == "__main__":
    sys.exit(main())
