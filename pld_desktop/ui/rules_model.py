"""The rule tree as a Qt item model: rules, the micro-rules each one merged, and their source examples; edits go
through a QUndoStack and every edit (undo and redo included) is saved as a new rule-set version."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PySide6.QtCore import QAbstractItemModel, QMimeData, QModelIndex, QObject, QPersistentModelIndex, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QIcon, QPalette, QUndoCommand, QUndoStack
from PySide6.QtWidgets import QApplication, QStyle

from ..core.domain import Rule
from ..core.project import Example, Project, ProjectFileError
from ..core.rule_edits import Move, Reorder, RuleEdit, RuleEditError, SetEnabled, SetLabel, SetText, save_version

# Named custom roles (so views, proxies and tests ask for meaning, not for numbers).
ConflictRole = Qt.ItemDataRole.UserRole + 1   # list of conflict dicts {"other", "source", "reason", "evidence"}
UidRole = Qt.ItemDataRole.UserRole + 2        # rule uid ("R3"), micro-rule key ("m12") or example ext_id
KindRole = Qt.ItemDataRole.UserRole + 3       # "rule" | "micro" | "example"

SortRole = Qt.ItemDataRole.UserRole + 4       # what the tree sorts by (prompt order for "#", numbers as numbers)
ImpactRole = Qt.ItemDataRole.UserRole + 5     # the rule's core.impact.RuleImpact, or None when not computed

COL_NUMBER, COL_TEXT, COL_LABEL, COL_ENABLED, COL_MICRO, COL_CONFLICTS, COL_IMPACT = range(7)
HEADERS = ("#", "Rule", "Label", "Enabled", "Micro-rules", "Conflicts", "Without it")
HURTS_FOREGROUND = QColor(198, 40, 40)
HELPS_FOREGROUND = QColor(46, 125, 50)
RULE_MIME = "application/x-pld-rule-uids"

CONFLICT_BACKGROUND = QColor(255, 224, 178)   # light amber; text on it is forced dark so it reads on dark themes
CONFLICT_FOREGROUND = QColor(33, 33, 33)
DISABLED_FOREGROUND = QColor(128, 128, 128)

_Index = QModelIndex | QPersistentModelIndex


@dataclass(eq=False)  # identity equality: list.index() finds this very node
class Node:
    kind: str                      # "root" | "rule" | "micro" | "example"
    data: Any                      # a rule node's Rule; a micro-rule's or an example's fields (dicts) otherwise
    parent: Node | None = None
    children: list[Node] = field(default_factory=list)

    def row(self) -> int:
        return self.parent.children.index(self) if self.parent is not None else 0


class RuleEditCommand(QUndoCommand):
    """The one undo command: wraps a core edit; redo applies it (storing its inverse), undo applies the inverse."""

    def __init__(self, model: RulesModel, edit: RuleEdit) -> None:
        super().__init__(edit.describe())
        self._model = model
        self._edit = edit
        self._inverse: RuleEdit | None = None
        self._applied_before = False

    def redo(self) -> None:
        reason = ("redo: " if self._applied_before else "edit: ") + self._edit.describe()
        try:
            self._inverse = self._model.apply_now(self._edit, reason)
        except (RuleEditError, ProjectFileError) as exc:
            # A refused edit never enters the history (QUndoStack drops a command that is obsolete after redo).
            self.setObsolete(True)
            self._model.edit_failed.emit(str(exc))
            return
        self._applied_before = True

    def undo(self) -> None:
        if self._inverse is None:
            return
        try:
            self._model.apply_now(self._inverse, "undo: " + self._edit.describe())
        except (RuleEditError, ProjectFileError) as exc:
            self._model.edit_failed.emit(str(exc))


class RulesModel(QAbstractItemModel):
    """A hand-written tree model over plain nodes. Call only from the GUI thread (it writes to the project)."""

    version_saved = Signal(int)
    edit_failed = Signal(str)
    version_loaded = Signal(int)

    def __init__(self, project: Project, rule_set_id: int, undo_stack: QUndoStack | None = None,
                 parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.project = project
        self.undo_stack = undo_stack if undo_stack is not None else QUndoStack(self)
        self._root = Node("root", {})
        self._micro: dict[int, dict[str, Any]] = {}
        self._examples: dict[int, Example] = {}
        self._conflicts: dict[str, list[dict[str, Any]]] = {}
        self.impact: dict[str, Any] = {}      # uid -> core.impact.RuleImpact of the shown version
        self.impact_report: Any = None
        self._warn_icon: QIcon | None = None
        self.rule_set_id = rule_set_id
        self.record = project.rule_set(rule_set_id)
        self._load_provenance()
        self.load_version(rule_set_id)

    # -- loading ----------------------------------------------------------------------------
    def _load_provenance(self) -> None:
        self._micro = {m["id"]: m for m in self.project.micro_rules()}
        ids = {m["example_id"] for m in self._micro.values()}
        self._examples = {e.id: e for e in self.project.examples(ids=ids)} if ids else {}

    def load_version(self, rule_set_id: int) -> None:
        """Show another saved version; the undo history belongs to the previous one, so it is cleared."""
        record = self.project.rule_set(rule_set_id)
        self.beginResetModel()
        self.rule_set_id = rule_set_id
        self.record = record
        self._root.children = [self._rule_node(r) for r in record.rules]
        self._load_conflicts()
        self.endResetModel()
        self.undo_stack.clear()
        self.version_loaded.emit(rule_set_id)

    def _rule_node(self, rule: Rule) -> Node:
        node = Node("rule", rule, self._root)
        node.children = self._micro_nodes(node)
        return node

    def _micro_nodes(self, rule_node: Node) -> list[Node]:
        out = []
        for mid in rule_node.data.micro_rule_ids:
            m = self._micro.get(mid)
            if m is None:
                continue  # a micro-rule id from another project state; the count column still shows it
            micro = Node("micro", m, rule_node)
            example = self._examples.get(m["example_id"])
            if example is not None:
                micro.children = [Node("example", {"ext_id": example.ext_id, "text": example.text,
                                                   "label": example.label, "split": example.split}, micro)]
            out.append(micro)
        return out

    def _load_conflicts(self) -> None:
        from ..core.rule_edits import changed_since, version_conflicts
        self._conflicts = {}
        for c in version_conflicts(self.project, self.rule_set_id):
            pairs = [(c.rule_a, c.rule_b)] if c.rule_a == c.rule_b else \
                [(c.rule_a, c.rule_b), (c.rule_b, c.rule_a)]  # a rule's own conflict is listed once
            for uid, other in pairs:
                self._conflicts.setdefault(uid, []).append(
                    {"other": other, "source": c.source, "reason": c.reason, "evidence": c.evidence,
                     "changed_since": changed_since(c)})
        self._load_impact()

    def reload_conflicts(self) -> None:
        """Re-read the shown version's conflicts (after a background pass added some) without a reset; only the
        rows whose conflicts or impact changed are announced (each announced row is measured and laid out again)."""
        before = (dict(self._conflicts), dict(self.impact))
        self._load_conflicts()
        self._rows_changed(before)

    def _rows_changed(self, before: tuple[dict[str, Any], dict[str, Any]]) -> None:
        conflicts, impact = before
        last = len(HEADERS) - 1
        for row, node in enumerate(self._root.children):
            uid = node.data.uid
            if conflicts.get(uid) != self._conflicts.get(uid) or impact.get(uid) != self.impact.get(uid):
                self.dataChanged.emit(self.index(row, 0), self.index(row, last))

    def reload_version(self, rule_set_id: int) -> None:
        """Show `rule_set_id` after a run: its micro-rules and examples are read again first (the run may have
        written new ones), then the version loads as by load_version."""
        self._load_provenance()
        self.load_version(rule_set_id)

    def _load_impact(self) -> None:
        from ..core.impact import stored_impact
        report = stored_impact(self.project, self.rule_set_id)
        self.impact = report.by_uid() if report is not None else {}
        self.impact_report = report

    def reload_impact(self) -> None:
        before = (dict(self._conflicts), dict(self.impact))
        self._load_impact()
        self._rows_changed(before)

    # -- plain accessors for views and tests ----------------------------------------------------
    @property
    def labels(self) -> list[str]:
        return list(self.record.labels)

    def rules(self) -> list[Rule]:
        return [n.data for n in self._root.children]

    def display_values(self, column: int) -> list[Any]:
        """Each top-level rule's display value in `column`, as data() gives it, read without Qt indexes (the column
        fitter's input after every edit: through index().data() it took ~10 ms of the window's thread at 200 rules)."""
        role = Qt.ItemDataRole.DisplayRole
        return [self._rule_data(node, row, column, role) for row, node in enumerate(self._root.children)]

    def conflicts_of(self, uid: str) -> list[dict[str, Any]]:
        return list(self._conflicts.get(uid, []))

    def node(self, index: _Index) -> Node | None:
        return index.internalPointer() if index.isValid() else None

    def index_of_uid(self, uid: str, column: int = 0) -> QModelIndex:
        for row, n in enumerate(self._root.children):
            if n.data.uid == uid:
                return self.index(row, column)
        return QModelIndex()

    # -- editing ------------------------------------------------------------------------------
    def push(self, edit: RuleEdit) -> bool:
        """Apply an edit through the undo stack; False (and `edit_failed`) when it was refused."""
        before = self.rule_set_id
        self.undo_stack.push(RuleEditCommand(self, edit))
        return self.rule_set_id != before

    def apply_now(self, edit: RuleEdit, reason: str) -> RuleEdit:
        """Apply, save as a new version, then update the tree. Raises before anything changes if refused."""
        new_rules, inverse = edit.apply(self.rules())
        new_id = save_version(self.project, self.rule_set_id, new_rules, reason)
        self.rule_set_id = new_id
        self.record = self.project.rule_set(new_id)
        shown = {n.data.uid: (n.data, self._conflicts.get(n.data.uid, [])) for n in self._root.children}
        self._load_conflicts()
        self._sync(self.record.rules)
        # dataChanged only for rows whose rule or conflicts changed: the tree then re-measures just those
        # rows' heights (one signal over every row re-measured all 200 rows' word wrap per edit).
        changed = [i for i, n in enumerate(self._root.children)
                   if shown.get(n.data.uid) != (n.data, self._conflicts.get(n.data.uid, []))]
        for first, last in _runs(changed):
            self.dataChanged.emit(self.index(first, 0), self.index(last, len(HEADERS) - 1))
        self.version_saved.emit(new_id)
        return inverse

    def _sync(self, new_rules: Sequence[Rule]) -> None:
        """Bring the top-level rows in line with `new_rules` with row removes, moves and inserts (not a reset),
        so selection and expansion in the views survive an edit."""
        root, top = self._root, QModelIndex()
        wanted = {r.uid for r in new_rules}
        for i in reversed(range(len(root.children))):
            if root.children[i].data.uid not in wanted:
                self.beginRemoveRows(top, i, i)
                root.children.pop(i)
                self.endRemoveRows()
        present = {n.data.uid for n in root.children}
        order = [r.uid for r in new_rules if r.uid in present]
        for i, uid in enumerate(order):
            j = next(k for k in range(i, len(root.children)) if root.children[k].data.uid == uid)
            if j != i:  # j > i always: rows before i are already in place
                self.beginMoveRows(top, j, j, top, i)
                root.children.insert(i, root.children.pop(j))
                self.endMoveRows()
        for i, rule in enumerate(new_rules):
            if i >= len(root.children) or root.children[i].data.uid != rule.uid:
                self.beginInsertRows(top, i, i)
                root.children.insert(i, self._rule_node(rule))
                self.endInsertRows()
        for i, rule in enumerate(new_rules):
            node = root.children[i]
            if node.data == rule:
                continue
            provenance_changed = node.data.micro_rule_ids != rule.micro_rule_ids
            node.data = rule
            if provenance_changed:
                parent = self.index(i, 0)
                if node.children:
                    self.beginRemoveRows(parent, 0, len(node.children) - 1)
                    node.children = []
                    self.endRemoveRows()
                fresh = self._micro_nodes(node)
                if fresh:
                    self.beginInsertRows(parent, 0, len(fresh) - 1)
                    node.children = fresh
                    self.endInsertRows()

    # -- Qt model interface ----------------------------------------------------------------------
    def index(self, row: int, column: int, parent: _Index = QModelIndex()) -> QModelIndex:
        if column < 0 or column >= len(HEADERS) or row < 0:
            return QModelIndex()
        owner = self.node(parent) if parent.isValid() else self._root
        if owner is None or row >= len(owner.children):
            return QModelIndex()
        return self.createIndex(row, column, owner.children[row])

    def parent(self, index: _Index = QModelIndex()) -> QModelIndex:  # type: ignore[override]  # not QObject.parent()
        node = self.node(index)
        if node is None or node.parent is None or node.parent is self._root:
            return QModelIndex()
        return self.createIndex(node.parent.row(), 0, node.parent)

    def rowCount(self, parent: _Index = QModelIndex()) -> int:
        if parent.isValid() and parent.column() != 0:
            return 0
        owner = self.node(parent) if parent.isValid() else self._root
        return len(owner.children) if owner is not None else 0

    def columnCount(self, parent: _Index = QModelIndex()) -> int:
        return len(HEADERS)

    def headerData(self, section: int, orientation: Qt.Orientation,
                   role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole \
                and 0 <= section < len(HEADERS):
            return HEADERS[section]
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.ToolTipRole \
                and section == COL_IMPACT:
            return ("The change in dev macro-F1 when the rule is left out of the prompt, and how many dev examples "
                    "change their answer. ⚠ marks a rule the version is better without. Sort to rank the rules.")
        return None

    def flags(self, index: _Index) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.ItemIsDropEnabled  # drops land between top-level rules only
        node = self.node(index)
        base = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
        if node is None or node.kind != "rule":
            return base
        base |= Qt.ItemFlag.ItemIsDragEnabled
        if index.column() in (COL_TEXT, COL_LABEL):
            base |= Qt.ItemFlag.ItemIsEditable
        if index.column() == COL_ENABLED:
            base |= Qt.ItemFlag.ItemIsUserCheckable
        return base

    def _warning_icon(self) -> QIcon:
        if self._warn_icon is None:
            app = QApplication.instance()
            style = app.style() if isinstance(app, QApplication) else None
            self._warn_icon = style.standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning) if style else QIcon()
        return self._warn_icon

    def data(self, index: _Index, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        node = self.node(index)
        if node is None:
            return None
        col = index.column()
        if role == KindRole:
            return node.kind
        if node.kind == "rule":
            return self._rule_data(node, index.row(), col, role)
        if node.kind == "micro":
            return self._micro_data(node, col, role)
        return self._example_data(node, col, role)

    def _rule_data(self, node: Node, row: int, col: int, role: int) -> Any:
        rule: Rule = node.data
        found = self._conflicts.get(rule.uid, [])
        impact = self.impact.get(rule.uid)
        if role == UidRole:
            return rule.uid
        if role == ConflictRole:
            return list(found)
        if role == ImpactRole:
            return impact
        if role == SortRole:
            return self._rule_sort_key(rule, node, row, col, found, impact)
        if col == COL_IMPACT:
            return self._impact_data(impact, bool(rule.enabled), role)
        if role in (Qt.ItemDataRole.DisplayRole, Qt.ItemDataRole.EditRole):
            return self._rule_display(rule, col, found)
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._rule_tooltip(rule, row, col, found)
        return self._rule_look(rule, col, role, found)

    def _rule_sort_key(self, rule: Rule, node: Node, row: int, col: int, found: list[dict[str, Any]],
                       impact: Any) -> Any:
        """What a column sorts by: prompt order for "#", numbers as numbers, text case-insensitively."""
        if col == COL_NUMBER:
            return row
        if col == COL_IMPACT:
            # Ascending = least worth first: the rules that hurt most lead; rules not scored come last.
            return impact.delta if impact is not None else float("inf")
        if col == COL_CONFLICTS:
            return len(found)
        if col == COL_MICRO:
            return len(rule.micro_rule_ids)
        if col == COL_ENABLED:
            return int(bool(rule.enabled))
        return str(self._rule_display(rule, col, found) or "").lower()

    @staticmethod
    def _rule_display(rule: Rule, col: int, found: list[dict[str, Any]]) -> Any:
        if col == COL_NUMBER:
            # The uid, not the position: conflicts name rules by uid, and a row's data must not change
            # just because a row above it was inserted (the model tester checks exactly that).
            return rule.uid
        if col == COL_TEXT:
            return rule.text
        if col == COL_LABEL:
            return rule.label
        if col == COL_MICRO:
            return len(rule.micro_rule_ids)
        if col == COL_CONFLICTS:
            return len(found) if found else None
        return None

    def _rule_tooltip(self, rule: Rule, row: int, col: int, found: list[dict[str, Any]]) -> str | None:
        if found:
            lines = [(f"{c['reason']} ({c['source']})" if c["other"] == rule.uid else
                      f"Conflicts with {c['other']} ({c['source']}): {c['reason']}")
                     + (" [rule changed since]" if c.get("changed_since") else "") for c in found[:12]]
            if len(found) > 12:
                lines.append(f"... and {len(found) - 12} more")
            return "\n".join(lines)
        if col == COL_TEXT:
            return rule.text + ("" if rule.enabled else "\n(disabled: not in the prompt)")
        if col == COL_NUMBER:
            return f"Rule {rule.uid}, position {row + 1} of {len(self._root.children)}"
        return None

    def _rule_look(self, rule: Rule, col: int, role: int, found: list[dict[str, Any]]) -> Any:
        """Check state, icon, colours and alignment of a rule's cell."""
        if role == Qt.ItemDataRole.CheckStateRole and col == COL_ENABLED:
            return Qt.CheckState.Checked if rule.enabled else Qt.CheckState.Unchecked
        if role == Qt.ItemDataRole.DecorationRole and col == COL_TEXT and found:
            return self._warning_icon()
        # Not behind the checkbox: a dark palette draws its indicator dark, which vanishes on amber.
        if role == Qt.ItemDataRole.BackgroundRole and found and col != COL_ENABLED:
            return QBrush(CONFLICT_BACKGROUND)
        if role == Qt.ItemDataRole.ForegroundRole:
            if col == COL_ENABLED:
                # The style draws the check mark in the item's text colour: the forced-dark conflict ink made
                # it vanish in its dark box on a dark palette. The palette's own text colour always shows.
                return None
            if not rule.enabled:
                return QBrush(DISABLED_FOREGROUND)
            return QBrush(CONFLICT_FOREGROUND) if found else None
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (COL_MICRO, COL_CONFLICTS):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    @staticmethod
    def _impact_data(impact: Any, enabled: bool, role: int) -> Any:
        """The impact cell: dev macro-F1 without the rule minus with it, and the examples that flip."""
        if impact is None:
            if role == Qt.ItemDataRole.ToolTipRole:
                return ("Not in the prompt, so it has no effect." if not enabled else
                        "Not computed for this version yet: press 'Rule impact' to score the version on dev "
                        "without each rule in turn.")
            return None
        change = -impact.delta  # macro-F1 without the rule minus with it
        flips = len(impact.flips)
        if role == Qt.ItemDataRole.DisplayRole:
            mark = "⚠ hurts " if impact.hurts else ""
            shown = "±0.000" if abs(change) < 0.0005 else f"{change:+.3f}"
            return f"{mark}{shown}, {flips} flip{'s' if flips != 1 else ''}"
        if role == Qt.ItemDataRole.ForegroundRole:
            dark = QApplication.palette().color(QPalette.ColorRole.Base).lightness() < 128
            hurts, helps = (HURTS_FOREGROUND.lighter(170), HELPS_FOREGROUND.lighter(170)) if dark else \
                (HURTS_FOREGROUND, HELPS_FOREGROUND)
            return QBrush(hurts if impact.hurts else helps if impact.delta > 0 else DISABLED_FOREGROUND)
        if role == Qt.ItemDataRole.FontRole and impact.hurts:
            from PySide6.QtGui import QFont
            font = QFont()
            font.setBold(True)
            return font
        if role == Qt.ItemDataRole.TextAlignmentRole:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ToolTipRole:
            verdict = ("It hurts: dev macro-F1 is higher without it." if impact.hurts else
                       "It helps: dev macro-F1 is lower without it." if impact.delta > 0 else
                       "No change in dev macro-F1 without it.")
            lines = [f"Rule {impact.prompt_number} of the prompt. Without it, dev macro-F1 changes by "
                     f"{change:+.3f}. {verdict}",
                     f"{impact.fixed_without} example(s) it gets wrong are right without it; "
                     f"{impact.broken_without} it gets right are wrong without it."]
            for f in impact.flips[:12]:
                lines.append(f"  {f['example']}: gold {f['gold']}; with it {f['with']}, without it {f['without']}")
            if flips > 12:
                lines.append(f"  … and {flips - 12} more")
            return "\n".join(lines)
        return None

    def _micro_data(self, node: Node, col: int, role: int) -> Any:
        m = node.data
        if role == UidRole:
            return f"m{m['id']}"
        if role == Qt.ItemDataRole.DisplayRole:
            return {COL_NUMBER: f"micro {m['id']}", COL_TEXT: m["rule"], COL_LABEL: m["label"]}.get(col)
        if role == Qt.ItemDataRole.ToolTipRole and col == COL_TEXT:
            return f"{m['rule']}\n\nTeacher's reasoning: {m.get('reasoning', '')}"
        return None

    def _example_data(self, node: Node, col: int, role: int) -> Any:
        e = node.data
        if role == UidRole:
            return e["ext_id"]
        if role == Qt.ItemDataRole.DisplayRole:
            return {COL_NUMBER: e["ext_id"], COL_TEXT: e["text"],
                    COL_LABEL: f"{e['label']} ({e['split']})"}.get(col)
        if role == Qt.ItemDataRole.ToolTipRole and col == COL_TEXT:
            return e["text"]
        if role == Qt.ItemDataRole.ForegroundRole:
            return QBrush(DISABLED_FOREGROUND)
        return None

    def setData(self, index: _Index, value: Any, role: int = Qt.ItemDataRole.EditRole) -> bool:
        node = self.node(index)
        if node is None or node.kind != "rule":
            return False
        uid, col = node.data.uid, index.column()
        if role == Qt.ItemDataRole.EditRole and col == COL_TEXT:
            text = " ".join(str(value or "").split())
            if text == node.data.text:
                return False
            return self.push(SetText(uid, text))
        if role == Qt.ItemDataRole.EditRole and col == COL_LABEL:
            label = str(value)
            if label == node.data.label:
                return False
            if label not in self.labels:
                self.edit_failed.emit(f"'{label}' is not a label of this project ({', '.join(self.labels)}).")
                return False
            return self.push(SetLabel(uid, label))
        if role == Qt.ItemDataRole.CheckStateRole and col == COL_ENABLED:
            state = value.value if hasattr(value, "value") else int(value)
            enabled = state == Qt.CheckState.Checked.value
            if enabled == bool(node.data.enabled):
                return False
            return self.push(SetEnabled(uid, enabled))
        return False

    # -- drag and drop (reorder top-level rules) ------------------------------------------------------
    def supportedDropActions(self) -> Qt.DropAction:
        return Qt.DropAction.MoveAction

    def supportedDragActions(self) -> Qt.DropAction:
        return Qt.DropAction.MoveAction

    def mimeTypes(self) -> list[str]:
        return [RULE_MIME]

    def mimeData(self, indexes: Sequence[QModelIndex]) -> QMimeData:
        rows = sorted({i.row() for i in indexes if i.isValid() and (n := self.node(i)) and n.kind == "rule"})
        mime = QMimeData()
        mime.setData(RULE_MIME, json.dumps([self._root.children[r].data.uid for r in rows]).encode())
        return mime

    def canDropMimeData(self, data: QMimeData, action: Qt.DropAction, row: int, column: int,
                        parent: _Index) -> bool:
        if action != Qt.DropAction.MoveAction or not data.hasFormat(RULE_MIME):
            return False
        node = self.node(parent)
        return node is None or node.kind == "rule"

    def dropMimeData(self, data: QMimeData, action: Qt.DropAction, row: int, column: int,
                     parent: _Index) -> bool:
        if not self.canDropMimeData(data, action, row, column, parent):
            return False
        try:
            # call-overload: PySide6's stub omits QByteArray's buffer protocol, which bytes() uses.
            moving = [u for u in json.loads(bytes(data.data(RULE_MIME)).decode()) if isinstance(u, str)]  # type: ignore[call-overload]
        except ValueError:
            return False
        order = [n.data.uid for n in self._root.children]
        moving = [u for u in order if u in set(moving)]
        if not moving:
            return False
        if parent.isValid():  # dropped onto a rule: put the dragged rules just before it
            # union-attr: node() is not None for the valid index `parent`.
            row = self.node(parent).row() if self.node(parent).parent is self._root else -1  # type: ignore[union-attr]
        if row < 0 or row > len(order):
            row = len(order)
        # The drop row counts the dragged rules still in place; the new order leaves them out first.
        at = row - sum(1 for u in moving if order.index(u) < row)
        rest = [u for u in order if u not in moving]
        new_order = rest[:at] + moving + rest[at:]
        if new_order == order:
            return False
        if len(moving) == 1:
            edit: RuleEdit = Move(moving[0], new_order.index(moving[0]))
        else:
            edit = Reorder(tuple(new_order))
        # The view's later "remove the dragged rows" step is a no-op: this model has no removeRows.
        return self.push(edit)


def _runs(rows: Sequence[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted row numbers as (first, last) pairs."""
    runs: list[tuple[int, int]] = []
    for row in rows:
        if runs and runs[-1][1] == row - 1:
            runs[-1] = (runs[-1][0], row)
        else:
            runs.append((row, row))
    return runs
