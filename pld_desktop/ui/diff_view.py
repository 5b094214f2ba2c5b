"""The Versions tab: pick two rule-set versions and read what changed (rules added, removed, changed and moved)
and the stated reason of every version in between, from core.diff."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor, QFont
from PySide6.QtWidgets import (
    QComboBox,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSplitter,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.diff import VersionDiff, diff_versions, prompt_numbers
from ..core.domain import Rule
from ..core.project import Project, ProjectFileError
from .charts_extra import is_dark_palette

ADDED = QColor("#2e7d32")
REMOVED = QColor("#c62828")
CHANGED = QColor("#ef6c00")
MOVED = QColor("#1565c0")
def _enabled(rule: Rule) -> bool:
    return bool(rule.enabled)


class DiffView(QWidget):
    """Read-only; reads the project on the GUI thread (a diff is two small JSON rows, no model call)."""

    def __init__(self, project_path: str | Path, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.project_path = Path(project_path)
        self.diff: VersionDiff | None = None
        self._last_defaults: tuple[Any, Any] = (None, None)
        outer = QVBoxLayout(self)
        pick = QHBoxLayout()
        self.version_a = QComboBox()
        self.version_b = QComboBox()
        for combo in (self.version_a, self.version_b):
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(40)
            combo.currentIndexChanged.connect(self.show_diff)
        self.swap_btn = QPushButton("Swap")
        self.swap_btn.setToolTip("Show the change the other way round")
        self.swap_btn.clicked.connect(self.swap)
        pick.addWidget(QLabel("<b>From</b>"))
        pick.addWidget(self.version_a, 1)
        pick.addWidget(QLabel("<b>to</b>"))
        pick.addWidget(self.version_b, 1)
        pick.addWidget(self.swap_btn)
        outer.addLayout(pick)
        self.summary = QLabel("")
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        outer.addWidget(self.summary)

        self.changes = QTreeWidget()
        self.changes.setHeaderLabels(["Change", "Rule", "Prompt #", "Label", "Text"])
        self.changes.setRootIsDecorated(False)
        self.changes.setWordWrap(True)
        self.changes.setAlternatingRowColors(True)
        self.changes.setUniformRowHeights(False)
        header = self.changes.header()
        for col in range(4):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(4, QHeaderView.ResizeMode.Stretch)
        header.setStretchLastSection(True)
        changes_box = QGroupBox("Rules")
        QVBoxLayout(changes_box).addWidget(self.changes)

        self.reasons = QTreeWidget()
        self.reasons.setHeaderLabels(["Version", "Stated reason"])
        self.reasons.setRootIsDecorated(False)
        self.reasons.setWordWrap(True)
        self.reasons.setUniformRowHeights(False)
        self.reasons.header().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.reasons.header().setStretchLastSection(True)
        reasons_box = QGroupBox("Why: the reason each version in between states (closed-loop root cause, edits)")
        QVBoxLayout(reasons_box).addWidget(self.reasons)

        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(changes_box)
        split.addWidget(reasons_box)
        split.setSizes([480, 200])
        outer.addWidget(split, 1)
        self.refresh_choices()

    # -- pickers ---------------------------------------------------------------------------------
    def refresh_choices(self) -> None:
        """Re-read the versions (call after edits); keeps the picked pair, else the working version vs its parent."""
        from ..core.working import pipeline_choice, working_rule_set
        try:
            with Project.open(self.project_path, read_only=True) as project:
                versions = project.rule_sets()
                working = working_rule_set(project)
                choice = pipeline_choice(project)
        except (ProjectFileError, OSError) as exc:
            self.summary.setText(f"Cannot read the versions: {exc}")
            return
        parents = {v.id: v.parent_id for v in versions}
        # Default: from the pipeline's choice to the working version (what the analyst changed), else from
        # the working version's parent. A pair the user has not changed follows the defaults.
        default_b = working
        default_a = choice if choice is not None and choice != working else parents.get(working) if working else None
        keep_a, keep_b = self.version_a.currentData(), self.version_b.currentData()
        if (keep_a, keep_b) == self._last_defaults or keep_a is None or keep_b is None:
            keep_a, keep_b = default_a if default_a is not None else working, default_b
        self._last_defaults = (default_a if default_a is not None else working, default_b)
        for combo, keep in ((self.version_a, keep_a), (self.version_b, keep_b)):
            combo.blockSignals(True)
            combo.clear()
            for v in reversed(versions):
                marks = [m for m, on in (("working", v.id == working), ("pipeline's choice", v.id == choice))
                         if on]
                reason = " ".join(str(v.reason).split())
                reason = reason if len(reason) <= 70 else reason[:69] + "…"
                combo.addItem(f"v{v.id} · {v.origin}" + (f" [{', '.join(marks)}]" if marks else "")
                              + f" · {reason}", v.id)
                combo.setItemData(combo.count() - 1, str(v.reason), Qt.ItemDataRole.ToolTipRole)
            index = combo.findData(keep)
            combo.setCurrentIndex(index if index >= 0 else 0)
            combo.blockSignals(False)
        self.show_diff()

    def select(self, a: int, b: int) -> None:
        for combo, want in ((self.version_a, a), (self.version_b, b)):
            index = combo.findData(want)
            if index < 0:
                raise ValueError(f"There is no version {want}.")
            combo.blockSignals(True)
            combo.setCurrentIndex(index)
            combo.blockSignals(False)
        self.show_diff()

    def swap(self) -> None:
        a, b = self.version_a.currentData(), self.version_b.currentData()
        if a is not None and b is not None:
            self.select(b, a)

    # -- display ---------------------------------------------------------------------------------
    def show_diff(self, *_: Any) -> None:
        a, b = self.version_a.currentData(), self.version_b.currentData()
        self.changes.clear()
        self.reasons.clear()
        if a is None or b is None:
            self.summary.setText("No rule-set versions yet: they appear after phase 2 (synthesis).")
            self.diff = None
            return
        try:
            with Project.open(self.project_path, read_only=True) as project:
                diff = diff_versions(project, int(a), int(b))
                numbers_a = prompt_numbers(project.rule_set(int(a)).rules)
                rules_b = project.rule_set(int(b)).rules
                numbers_b = prompt_numbers(rules_b)
        except (ProjectFileError, OSError, ValueError) as exc:
            self.summary.setText(f"Cannot compare v{a} and v{b}: {exc}")
            return
        self.diff = diff
        counts = [f"{len(diff.added)} added", f"{len(diff.removed)} removed", f"{len(diff.changed)} changed",
                  f"{len(diff.moved)} moved"]
        self.summary.setText(f"<b>v{a} → v{b}</b>: " + ", ".join(counts) if not diff.is_empty else
                             f"<b>v{a} → v{b}</b>: the same rules in the same order.")

        def number(n: int | None) -> str:
            return str(n) if n is not None else "off"

        for r in diff.added:
            self._row("added", ADDED, r.uid, number(numbers_b.get(r.uid)), r.label, r.text,
                      disabled=not _enabled(r))
        for r in diff.removed:
            self._row("removed", REMOVED, r.uid, number(numbers_a.get(r.uid)), r.label, r.text,
                      strike=True)
        for c in diff.changed:
            pos = f"{number(numbers_a.get(c.uid))} → {number(numbers_b.get(c.uid))}"
            label = c.after.label if "label" not in c.fields else f"{c.before.label} → {c.after.label}"
            text = c.after.text if "text" not in c.fields else f"was: {c.before.text}\nnow: {c.after.text}"
            what = "changed: " + ", ".join("enabled" if f == "enabled" and _enabled(c.after) else
                                           "disabled" if f == "enabled" else f for f in c.fields)
            self._row(what, CHANGED, c.uid, pos, label, text)
        for m in diff.moved:
            moved = next((r for r in rules_b if r.uid == m.uid), None)
            pos = f"{number(numbers_a.get(m.uid))} → {number(numbers_b.get(m.uid))}"
            self._row(f"moved: place {m.from_position} → {m.to_position}", MOVED, m.uid, pos,
                      moved.label if moved else "", moved.text if moved else "")
        for v, why in diff.reasons:
            item = QTreeWidgetItem([f"v{v}", " ".join(str(why).split())])
            item.setToolTip(1, str(why))
            self.reasons.addTopLevelItem(item)

    def _row(self, kind: str, colour: QColor, uid: str, number: str, label: str, text: str, *,
             strike: bool = False, disabled: bool = False) -> None:
        item = QTreeWidgetItem([kind, uid, number, label, text + (" (disabled)" if disabled else "")])
        item.setForeground(0, QBrush(colour.lighter(160) if is_dark_palette() else colour))
        font = QFont()
        font.setBold(True)
        item.setFont(0, font)
        if strike:
            struck = QFont()
            struck.setStrikeOut(True)
            item.setFont(4, struck)
        item.setToolTip(4, text)
        item.setTextAlignment(2, Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        self.changes.addTopLevelItem(item)

    def rows(self) -> list[tuple[str, str]]:
        """(change, rule uid) of every shown row, for tests and accessibility."""
        items = (self.changes.topLevelItem(i) for i in range(self.changes.topLevelItemCount()))
        return [(item.text(0), item.text(1)) for item in items if item is not None]
