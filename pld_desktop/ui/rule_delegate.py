"""How the rule tree measures and edits its cells: wrapped rule text, the label combo box, and the short columns'
widths, kept cheap enough that a tree of hundreds of rules lays out within a frame (issue 15's stall benchmark).

Qt asks the delegate for a cell's size whenever it lays rows out (every edit, sort, filter and reset); a
`ResizeToContents` column asks for every cell of the column each time. Both are answered here without Qt's own
text layout: a rule's height depends only on its text, the column's width and the font, so it is cached across
edits, versions and editors; the short columns get their widths from their texts, measured once per change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, QRect, QSize, Qt, QTimer
from PySide6.QtGui import QFont, QFontMetrics
from PySide6.QtWidgets import QComboBox, QStyle, QStyledItemDelegate, QStyleOptionViewItem, QTreeView, QWidget

from .rules_model import COL_CONFLICTS, COL_ENABLED, COL_IMPACT, COL_LABEL, COL_MICRO, COL_TEXT, KindRole, RulesModel

_Index = QModelIndex | QPersistentModelIndex

# (text, width, font) -> height of the wrapped text. Shared by every rule tree in the process: the tree rebuilt at
# the end of a run, or showing another version, mostly holds texts it has measured before.
_TEXT_HEIGHTS: dict[tuple[str, int, str], int] = {}
_TEXT_HEIGHTS_MAX = 50_000

FITTED_COLUMNS = (COL_LABEL, COL_ENABLED, COL_MICRO, COL_CONFLICTS, COL_IMPACT)
CELL_PADDING = 12       # the style's text margins on both sides, and a little air
HEADER_PADDING = 30     # the header's margins and its sort indicator


class LabelDelegate(QStyledItemDelegate):
    """Edits the label column with a combo box of the project's labels (no free typing of unknown labels), and
    gives rule text a wrapped height."""

    def __init__(self, labels: Callable[[], list[str]], parent: Any = None) -> None:
        super().__init__(parent)
        self._labels = labels
        self._font: QFont | None = None
        self._font_key = ""
        # (column, font, row kind) -> size of a one-line cell: such a cell's height never depends on its text.
        self._line_sizes: dict[tuple[int, str, Any], QSize] = {}

    def createEditor(self, parent: QWidget, option: QStyleOptionViewItem, index: _Index) -> QWidget:
        if index.column() != COL_LABEL:
            return super().createEditor(parent, option, index)
        combo = QComboBox(parent)
        combo.addItems(self._labels())
        return combo

    def setEditorData(self, editor: QWidget, index: _Index) -> None:
        if isinstance(editor, QComboBox):
            editor.setCurrentText(str(index.data(Qt.ItemDataRole.EditRole)))
        else:
            super().setEditorData(editor, index)

    def setModelData(self, editor: QWidget, model: Any, index: _Index) -> None:
        if isinstance(editor, QComboBox):
            model.setData(index, editor.currentText(), Qt.ItemDataRole.EditRole)
        else:
            super().setModelData(editor, model, index)

    def sizeHint(self, option: QStyleOptionViewItem, index: _Index) -> QSize:
        """Rule text wraps: its row is as tall as the text at the column's current width. Other cells are one line
        tall (their widths come from fit_columns, not from here)."""
        font = option.font
        if self._font is None or font != self._font:
            self._font, self._font_key = QFont(font), font.key()
        view = self.parent()
        column = index.column()
        if column != COL_TEXT or not isinstance(view, QTreeView):
            key = (column, self._font_key, index.data(KindRole))
            size = self._line_sizes.get(key)
            if size is None:
                size = self._line_sizes[key] = super().sizeHint(option, index)
            return QSize(size)
        text = str(index.data() or "")
        icon = option.decorationSize.width() + 8 if index.data(Qt.ItemDataRole.DecorationRole) is not None else 0
        # The text column is not the first, so the tree's indentation does not narrow it.
        width = max(80, view.columnWidth(COL_TEXT) - icon - 12)
        text_key = (text, width, self._font_key)
        height = _TEXT_HEIGHTS.get(text_key)
        if height is None:
            rect = option.fontMetrics.boundingRect(QRect(0, 0, width, 100000), int(Qt.TextFlag.TextWordWrap), text)
            height = rect.height() + 6
            if len(_TEXT_HEIGHTS) >= _TEXT_HEIGHTS_MAX:
                _TEXT_HEIGHTS.clear()
            _TEXT_HEIGHTS[text_key] = height
        return QSize(width + icon, height)


class ColumnFitter:
    """Keeps the short columns (label, enabled, micro-rules, conflicts, impact) as wide as their widest text.

    It measures the rules' display texts with the font metrics (one call per cell) after the model changed, at
    most once per event-loop turn. Qt's ResizeToContents would instead ask the delegate for every cell of each such
    column at every layout (1,000 calls for 200 rules, most of an edit's stall). A column the user widened stays
    at least that wide.
    """

    def __init__(self, tree: QTreeView, model: RulesModel) -> None:
        self.tree, self.model = tree, model
        self._fitted: dict[int, int] = {}
        self._timer = QTimer(tree)
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self.fit)
        for signal in (model.modelReset, model.layoutChanged, model.dataChanged, model.rowsInserted,
                       model.rowsRemoved):
            signal.connect(self._timer.start)

    def widths(self) -> dict[int, int]:
        """The width each fitted column needs for its header and its texts."""
        fm, header = self.tree.fontMetrics(), self.tree.header()
        hfm = header.fontMetrics()
        texts: dict[int, set[str]] = {col: set() for col in FITTED_COLUMNS}
        for col in (COL_LABEL, COL_MICRO, COL_CONFLICTS, COL_IMPACT):
            texts[col].update(str(value) for value in self.model.display_values(col) if value is not None)
        texts[COL_LABEL].update(self.model.labels)
        style = self.tree.style()
        indicator = style.pixelMetric(QStyle.PixelMetric.PM_IndicatorWidth) + CELL_PADDING
        out: dict[int, int] = {}
        bold_font = QFont(self.tree.font())
        bold_font.setBold(True)
        bold = QFontMetrics(bold_font)  # a rule that hurts shows its impact in bold
        for col in FITTED_COLUMNS:
            title = str(self.model.headerData(col, Qt.Orientation.Horizontal) or "")
            metrics = bold if col == COL_IMPACT else fm
            content = max((metrics.horizontalAdvance(t) for t in texts[col]), default=0) + CELL_PADDING
            if col == COL_ENABLED:
                content = max(content, indicator)
            out[col] = max(hfm.horizontalAdvance(title) + HEADER_PADDING, content)
        return out

    def fit(self) -> None:
        header = self.tree.header()
        for col, width in self.widths().items():
            current = header.sectionSize(col)
            user_wider = col in self._fitted and current != self._fitted[col] and current > width
            target = current if user_wider else width
            if target != current:
                header.resizeSection(col, target)
            self._fitted[col] = target
