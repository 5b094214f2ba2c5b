"""Help > Keyboard Shortcuts and Help > How a Run Works: the shortcuts read from the window's own actions."""

from __future__ import annotations

from collections.abc import Iterable

from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

# Keys handled inside a widget rather than by a QAction; listed here so the table is complete.
WIDGET_KEYS: tuple[tuple[str, str], ...] = (
    ("F2 / double-click", "Rules: edit the rule text or label in place"),
    ("Ctrl+Return", "Test side by side > Try it: classify the input with both prompts"),
)

HOW_A_RUN_WORKS = """
<h3>How a run works</h3>
<p>A project holds one labelled CSV, split once into <b>train</b>, <b>dev</b> and <b>test</b>. The test split is
locked: no teacher ever sees it, and only evaluation reads it.</p>
<ol>
<li><b>Extraction</b> (teacher): for each training example the teacher writes the reasoning behind its label as
one general rule, a <i>micro-rule</i>.</li>
<li><b>Synthesis</b> (embedder + teacher): micro-rules are embedded, clustered per label, and each cluster is
merged into one rule. Rules that overlap or contradict are marked as <i>conflicts</i>. This is version 1 of the
rule set.</li>
<li><b>Closed loop</b> (student + teacher): the small local student classifies a sample of training examples with
the rules as its system prompt; the teacher reads its mistakes and rewrites the rules. A rewrite is kept only if
it scores better on <b>dev</b>. The loop stops early when a round brings no gain; the best version is the
pipeline's choice.</li>
<li><b>Evaluation</b> (student): the working rule set, a zero-shot prompt and a 5-shot prompt answer the test
split; the Results tab compares them.</li>
</ol>
<p><b>Your edits.</b> Every edit in the Rules tab saves a new version of the rule set; the version you edited or
picked last is the <i>working version</i>. The Results tab, side by side, phase 4 and every export use it.
Score an edit on dev as often as you like; score on test sparingly: the more versions are compared on test, the
less the test score proves.</p>
<p><b>Stopping and resuming.</b> Every teacher reply and student answer is saved in the project file as it
arrives. Cancel (Ctrl+.) stops after the items in flight; a rerun resumes where it stopped and costs nothing for
the work already done.</p>
"""


def shortcut_rows(actions: Iterable[QAction]) -> list[tuple[str, str]]:
    """(keys, what) for every action that has a shortcut, in the order given, then the in-widget keys."""
    rows: list[tuple[str, str]] = []
    seen: set[str] = set()
    for act in actions:
        keys = ", ".join(k.toString(QKeySequence.SequenceFormat.NativeText) for k in act.shortcuts() if not k.isEmpty())
        # An action may name itself for this list when its menu text needs its menu to be understood.
        name = str(act.property("help_name") or act.text().replace("&", "").rstrip("…").strip())
        if keys and (keys, name) not in {(r[0], r[1]) for r in rows} and name not in seen:
            seen.add(name)
            rows.append((keys, name))
    return rows + list(WIDGET_KEYS)


class HelpDialog(QDialog):
    """Two pages: the keyboard shortcuts (from the live actions) and one page on how a run works."""

    def __init__(self, actions: Iterable[QAction], parent: QWidget | None = None, *, page: int = 0) -> None:
        super().__init__(parent)
        self.setWindowTitle("PLD Desktop Help")
        self.resize(720, 560)
        self.tabs = QTabWidget()
        rows = shortcut_rows(actions)
        self.shortcuts = QTableWidget(len(rows), 2)
        self.shortcuts.setHorizontalHeaderLabels(["Keys", "Action"])
        self.shortcuts.verticalHeader().setVisible(False)
        self.shortcuts.verticalHeader().setDefaultSectionSize(24)
        self.shortcuts.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        for i, (keys, name) in enumerate(rows):
            self.shortcuts.setItem(i, 0, QTableWidgetItem(keys))
            self.shortcuts.setItem(i, 1, QTableWidgetItem(name))
        self.shortcuts.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.shortcuts.horizontalHeader().setStretchLastSection(True)
        self.tabs.addTab(self.shortcuts, "Keyboard shortcuts")
        self.how = QTextBrowser()
        self.how.setHtml(HOW_A_RUN_WORKS)
        self.tabs.addTab(self.how, "How a run works")
        self.tabs.setCurrentIndex(page)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addWidget(self.tabs)
        lay.addWidget(buttons)
