"""Parts of the main window: the phase cards of the Run tab, the welcome page, and the prompt preview's
background token counter (moved out of app.py, which holds the window itself)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..core.pipeline import PHASE_NAMES, PHASE_TEACHER_KINDS
from ..core.states import RESUMABLE_PHASE_STATES, PhaseState
from .tasks import TaskRunner

if TYPE_CHECKING:
    from .app import MainWindow

STATE_COLOURS: dict[str, str] = {
    PhaseState.DONE: "#2e7d32", PhaseState.RUNNING: "#1565c0", PhaseState.FAILED: "#c62828",
    PhaseState.CANCELLED: "#ef6c00", PhaseState.PAUSED: "#ef6c00", PhaseState.INTERRUPTED: "#ef6c00"}
# The same states on a dark palette: the light-theme shades are too dark to read on a dark window.
STATE_COLOURS_DARK: dict[str, str] = {
    PhaseState.DONE: "#81c784", PhaseState.RUNNING: "#64b5f6", PhaseState.FAILED: "#ef9a9a",
    PhaseState.CANCELLED: "#ffb74d", PhaseState.PAUSED: "#ffb74d", PhaseState.INTERRUPTED: "#ffb74d"}
STATE_WORDS: dict[str, str] = {
    PhaseState.DONE: "done", PhaseState.RUNNING: "running", PhaseState.FAILED: "failed",
    PhaseState.CANCELLED: "stopped - resumable", PhaseState.PAUSED: "paused (quota) - resumable",
    PhaseState.INTERRUPTED: "interrupted, resumable"}
PHASE_HINTS = {1: "The teacher explains each training example as a general rule (micro-rule).",
               2: "Micro-rules are embedded, clustered per label and merged into a short rule list.",
               3: "The student runs on training data; the teacher repairs the rules its mistakes expose.",
               4: "The student answers the locked test split with the rules, zero-shot and 5-shot."}


def _format_seconds(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


PROMPT_KIND_WORDS = {"pld": "Rules", "pld_examples": "Rules+examples", "pld-examples": "Rules+examples",
                     "zero_shot": "Zero-shot", "zero-shot": "Zero-shot", "few_shot": "5-shot", "few-shot": "5-shot"}


def prompt_kinds_in_words(text: str, few_shot_k: int = 5) -> str:
    """Phase 4's messages name prompts by their stored kind (`pld`, `zero_shot`); a reader wants words."""
    import re
    words = dict(PROMPT_KIND_WORDS, few_shot=f"{few_shot_k}-shot", **{"few-shot": f"{few_shot_k}-shot"})
    kinds = r"(?<![\w./\\-])(pld[_-]examples|pld|zero[_-]shot|few[_-]shot)(?![\w./\\-])"
    return re.sub(kinds, lambda m: words[m.group(1)], text)


class PhaseCard(QGroupBox):
    """One phase: state, progress with counts and ETA, teacher tokens and cost, start/resume and cancel."""

    start_requested = Signal(int)
    cancel_requested = Signal()

    def __init__(self, phase: int) -> None:
        super().__init__(f"{phase}. {PHASE_NAMES[phase].capitalize()}")
        self.phase = phase
        self.few_shot_k = 5  # the project's k, set by the window, for naming the k-shot prompt
        self.setToolTip(PHASE_HINTS[phase])
        self.state = QLabel(PhaseState.NOT_STARTED)
        self.bar = QProgressBar()
        self.bar.setTextVisible(True)
        self.counts = QLabel("")
        self.teacher = QLabel("")
        self.teacher.setVisible(phase in PHASE_TEACHER_KINDS)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.message.setMinimumHeight(34)
        self.message.setAlignment(Qt.AlignmentFlag.AlignTop)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.start_btn = QPushButton("Start")
        self.start_btn.setToolTip(f"Run phase {phase} only (its inputs must exist); a rerun resumes")
        self.start_btn.clicked.connect(lambda: self.start_requested.emit(self.phase))
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setToolTip("Stop after the items in flight; everything completed is kept")
        self.cancel_btn.clicked.connect(self.cancel_requested.emit)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_btn)
        buttons.addWidget(self.cancel_btn)
        lay = QVBoxLayout(self)
        for w in (self.state, self.bar, self.counts, self.teacher, self.message):
            lay.addWidget(w)
        lay.addStretch(1)
        lay.addLayout(buttons)

    def show_state(self, state: str, done: int, total: int, message: str, *, running_here: bool,
                   busy: bool, eta: float | None = None, teacher: dict[str, Any] | None = None) -> None:
        from .charts_extra import is_dark_palette
        colour = (STATE_COLOURS_DARK if is_dark_palette() else STATE_COLOURS).get(state, "palette(text)")
        self.state.setText(f"<b style='color:{colour}'>{STATE_WORDS.get(state, state)}</b>")
        self.bar.setMaximum(max(total, 1))
        self.bar.setValue(min(done, max(total, 1)) if total else (1 if state == PhaseState.DONE else 0))
        self.bar.setFormat(f"{done} / {total}" if total else ("complete" if state == PhaseState.DONE else ""))
        counts = f"{done} of {total} items" if total else ""
        if self.phase == 3 and state == PhaseState.DONE and total and done < total:
            # The loop's total is a ceiling, not a plan: an early stop is complete, not 2/5 of the way.
            self.bar.setValue(self.bar.maximum())
            self.bar.setFormat("complete")
            counts = f"stopped after {done} of at most {total} rounds"
        elif self.phase == 3 and total:
            counts = f"{done} of at most {total} rounds"
        if running_here and eta:
            counts += f" · about {_format_seconds(eta)} left"
        self.counts.setText(counts)
        if teacher is not None:
            tokens = teacher["prompt_tokens"] + teacher["output_tokens"] + teacher["thoughts_tokens"]
            cost = f", ${teacher['cost_usd']:.4f}" if teacher["cost_usd"] else ""  # a local teacher costs nothing
            failed = f" ({teacher['failed']} failed)" if teacher["failed"] else ""
            self.teacher.setText(f"teacher: {teacher['calls']} calls{failed}, {tokens:,} tokens{cost}")
        message = prompt_kinds_in_words(message or "", self.few_shot_k)
        self.message.setText(message)
        self.message.setToolTip(message)
        self.start_btn.setText("Resume" if state in RESUMABLE_PHASE_STATES
                               and not running_here
                               else "Run again" if state == PhaseState.DONE else "Start")
        self.start_btn.setEnabled(not busy)
        self.cancel_btn.setEnabled(running_here)


class WelcomePage(QWidget):
    """What a new user sees first: the three ways in, and the recent projects."""

    def __init__(self, window: MainWindow) -> None:
        super().__init__()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(60, 40, 60, 40)
        title = QLabel("<h1>PLD Desktop</h1><p>Turn labelled examples into a short, readable rule prompt for a "
                       "small local model. Load a CSV of labelled examples; a teacher model writes the reasoning "
                       "behind each label as a rule, the rules are merged and repaired against the student's "
                       "mistakes, and the result becomes the student's system prompt.</p>")
        title.setWordWrap(True)
        lay.addWidget(title)
        row = QHBoxLayout()
        for text, tip, slot in (("New project from CSV…", "Import a CSV of labelled examples", window.new_project),
                                ("Open project…", "Open a .pld project file", window.open_dialog),
                                ("Open the demo project", "A small bank-message triage dataset, bundled",
                                 window.open_demo)):
            b = QPushButton(text)
            b.setToolTip(tip)
            b.setMinimumHeight(44)
            b.clicked.connect(slot)
            row.addWidget(b)
        lay.addLayout(row)
        lay.addWidget(QLabel("<b>Recent projects</b>"))
        self.recent = QListWidget()
        self.recent.itemActivated.connect(lambda item: window.open_project(Path(item.data(Qt.ItemDataRole.UserRole))))
        lay.addWidget(self.recent, 1)
        lay.addWidget(QLabel("You can also drop a CSV or a .pld file onto this window."))

    def show_recent(self, paths: list[str]) -> None:
        self.recent.clear()
        for p in paths:
            item = QListWidgetItem(f"{Path(p).name}    {Path(p).parent}")
            item.setData(Qt.ItemDataRole.UserRole, p)
            item.setToolTip(p)
            self.recent.addItem(item)


class _BackgroundCounter:
    """The prompt preview's token counter: counts on a helper thread (a 200-rule prompt took 0.1-0.8 s to
    tokenize on the GUI thread after every edit) and answers from its cache; a text not counted yet raises
    TokenizerLoading (the preview shows an estimate) and `done` is called (on the helper thread) once its count
    is in. Threading contract: call it from the GUI thread; the counting runs as a task of its own TaskRunner."""

    def __init__(self, tokenizer: Any, done: Callable[[], None]) -> None:
        self._tokenizer, self._done = tokenizer, done
        self._counts: dict[str, int] = {}
        self._pending: str | None = None
        self._failed: str | None = None
        self._lock = threading.Lock()
        self._runner = TaskRunner(name="pld-token-count")
        self._runner.succeeded.connect(self._after_run)
        self._runner.failed.connect(self._after_run)

    def __call__(self, text: str) -> int:
        from ..backends.tokenizer import TokenizerLoading
        with self._lock:
            if text in self._counts:
                return self._counts[text]
            if self._failed is not None:
                raise RuntimeError(self._failed)
            if not self._tokenizer.ready:
                raise TokenizerLoading("still loading")
            self._pending = text
        if not self._runner.busy():  # else the running count picks it up, or _after_run restarts it
            self._runner.start(self._work)
        raise TokenizerLoading("counting…")

    def _after_run(self, *_: Any) -> None:
        """A counting run ended: a text left pending as it was ending gets a run of its own."""
        with self._lock:
            pending = self._pending is not None
        if pending:
            self._runner.start(self._work)

    def _work(self, _progress: Any) -> None:  # on the helper thread
        while True:
            with self._lock:
                text, self._pending = self._pending, None
                if text is None:
                    return
            try:
                n = self._tokenizer.count(text)
            except Exception as exc:
                with self._lock:
                    self._failed = str(exc)
            else:
                with self._lock:
                    if len(self._counts) > 32:
                        self._counts.clear()
                    self._counts[text] = n
            self._done()


class LazyViews(dict[str, Any]):
    """The open project's views by name, each built when it is first wanted.

    At open only the current tab's view is built; the others wait in `pending` and are built one per event-loop
    turn after it (building all of them in one go kept the window still for 0.3-0.5 s on a 100k-example project).
    `get` and `in` see built views only: a view not built yet has nothing to refresh, it reads the file when it is
    built. Indexing (`views[name]`, `want(name)`) builds a pending view on the spot."""

    def __init__(self, window: QWidget) -> None:
        super().__init__()
        self.pending: dict[str, Callable[[], Any]] = {}
        self._timer = QTimer(window, singleShot=True, interval=0)  # parented: it ends with the window
        self._timer.timeout.connect(self._build_next)

    def defer(self, builders: dict[str, Callable[[], Any]]) -> None:
        """Build these later (one per event-loop turn, in this order) unless one is wanted sooner."""
        self.pending.update(builders)
        self._timer.start()

    def __missing__(self, name: str) -> Any:
        build = self.pending.pop(name, None)
        view = build() if build is not None else None
        if view is None:
            raise KeyError(name)
        self[name] = view
        return view

    def want(self, name: str) -> Any | None:
        """The view, built now if it was pending; None if the project has none (rules before phase 2)."""
        try:
            return self[name]
        except KeyError:
            return None

    def _build_next(self) -> None:
        if self.pending:
            self.want(next(iter(self.pending)))
        if self.pending:
            self._timer.start()

    def clear(self) -> None:
        self.pending.clear()
        self._timer.stop()
        super().clear()
