"""Phase 2 and 3 views: the clusters per label with their 2-D map, and the closed loop's dev macro-F1 per round."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from PySide6.QtCharts import QScatterSeries
from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QColor, QCursor, QFont
from PySide6.QtWidgets import (
    QHeaderView,
    QLabel,
    QSplitter,
    QStackedWidget,
    QToolTip,
    QTreeWidget,
    QTreeWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..core.cluster_map import ClusterMap, MapGroup, read_cluster_map, read_loop_rounds
from ..core.project import Project, ProjectFileError
from .charts_extra import (
    ACCEPTED_COLOR,
    NOISE_COLOR,
    REJECTED_COLOR,
    attach,
    chart_view,
    faded,
    grid_color,
    ink,
    integer_axis,
    label_shape,
    line_series,
    marker_icon,
    neutral_color,
    new_chart,
    padded_range,
    palette_color,
    scatter_series,
    style_scatter,
    value_axis,
)

# Item data roles of the clusters tree (named, so views and tests read the same thing).
KIND_ROLE = Qt.ItemDataRole.UserRole
KEY_ROLE = Qt.ItemDataRole.UserRole + 1      # the map group an item highlights ("c:<cluster id>" / "noise:<label>")
MICRO_ROLE = Qt.ItemDataRole.UserRole + 2    # micro-rule id of a member item

_NORMAL_SIZE, _FOCUS_SIZE = 9.0, 13.0


def _open(project_path: Path) -> Project:
    return Project.open(project_path, read_only=True)


# ---------------------------------------------------------------------------
# Clusters view
# ---------------------------------------------------------------------------
class ClustersView(QWidget):
    """The clusters of the latest phase-2 run: a tree per label (noise apart) beside a 2-D map of the micro-rules.

    Selecting a cluster (or a label, or a noise group) highlights its points; clicking a point selects its cluster.
    """

    def __init__(self, project_path: str | Path | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.project_path = Path(project_path) if project_path is not None else None
        self.data: ClusterMap | None = None
        self._series: dict[str, QScatterSeries] = {}
        self._series_ids: dict[str, list[int]] = {}     # micro-rule ids in the order of the series' points
        self._colors: dict[str, QColor] = {}
        self._items: dict[str, QTreeWidgetItem] = {}
        self._highlighted: set[str] = set()
        self._focus: QScatterSeries | None = None
        self._build()
        self.reload()

    def _build(self) -> None:
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        layout.addWidget(self.summary)
        self.stack = QStackedWidget()
        self.empty = QLabel()
        self.empty.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty.setWordWrap(True)
        self.stack.addWidget(self.empty)

        split = QSplitter(Qt.Orientation.Horizontal)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Cluster", "Rules", "Merged rule / micro-rule"])
        self.tree.setAlternatingRowColors(True)
        self.tree.setUniformRowHeights(True)
        header = self.tree.header()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        self.tree.itemSelectionChanged.connect(self._on_selection)
        split.addWidget(self.tree)

        right = QWidget()
        right_layout = QVBoxLayout(right)
        right_layout.setContentsMargins(0, 0, 0, 0)
        self.chart = new_chart("Micro-rules on a 2-D map of their embeddings")
        self.chart.legend().hide()  # the tree, with a swatch per cluster, is the legend
        self.view = chart_view(self.chart)
        right_layout.addWidget(self.view, 1)
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        self.caption.setTextFormat(Qt.TextFormat.RichText)
        right_layout.addWidget(self.caption)
        split.addWidget(right)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 1)
        split.setSizes([560, 560])
        self.stack.addWidget(split)
        layout.addWidget(self.stack, 1)

    # -- loading ------------------------------------------------------------------------------------------
    def set_project(self, project_path: str | Path | None) -> None:
        self.project_path = Path(project_path) if project_path is not None else None
        self.reload()

    def reload(self) -> None:
        """Read the project again (call after phase 2 ran); keeps the selected cluster when it still exists."""
        selected = self.selected_key()
        self.data = None
        if self.project_path is None:
            self._show_empty("No project open.")
            return
        try:
            with _open(self.project_path) as project:
                self.data = read_cluster_map(project)
        except (ProjectFileError, OSError) as exc:
            self._show_empty(f"Cannot read the clusters: {exc}")
            return
        if self.data is None or not self.data.groups:
            self._show_empty("No clusters yet: run phase 2 (synthesis) to embed and cluster the micro-rules.")
            return
        self._fill_tree()
        self._fill_chart()
        self._show_summary()
        self.stack.setCurrentIndex(1)
        if selected and selected in self._items:
            self.select_key(selected)

    def _show_empty(self, message: str) -> None:
        self.summary.setText("")
        self.empty.setText(message)
        self.tree.clear()
        self._items.clear()
        self.chart.removeAllSeries()
        self._series.clear()
        self._series_ids.clear()
        self.stack.setCurrentIndex(0)

    def _show_summary(self) -> None:
        assert self.data is not None
        real = [g for g in self.data.groups if not g.is_noise]
        noise = sum(g.size for g in self.data.groups if g.is_noise)
        total = sum(g.size for g in self.data.groups)
        self.summary.setText(
            f"<b>{total}</b> micro-rules in <b>{len(real)}</b> clusters over {len(self.data.labels)} labels; "
            f"<b>{noise}</b> noise rule{'s' if noise != 1 else ''} kept aside (clustered within each label).")
        shapes = " &nbsp; ".join(f"{_shape_glyph(i)} {lab}" for i, lab in enumerate(self.data.labels))
        self.caption.setText(f"Shapes: {shapes} &nbsp; · &nbsp; grey: noise &nbsp; · &nbsp; "
                             "hover a point to read its rule, click it to select its cluster.")

    def _fill_tree(self) -> None:
        assert self.data is not None
        self.tree.blockSignals(True)
        self.tree.clear()
        self._items.clear()
        self._colors.clear()
        bold = QFont(self.tree.font())
        bold.setBold(True)
        color_index = 0
        noise_groups: list[MapGroup] = []
        for li, label in enumerate(self.data.labels):
            groups = [g for g in self.data.groups if g.label == label]
            real = [g for g in groups if not g.is_noise]
            noise_groups += [g for g in groups if g.is_noise]
            top = QTreeWidgetItem([label, str(sum(g.size for g in real)),
                                   f"{len(real)} cluster{'s' if len(real) != 1 else ''}"
                                   + (f" · {self.data.methods[label]}" if self.data.methods.get(label) else "")])
            top.setFont(0, bold)
            top.setToolTip(2, self.data.methods.get(label, ""))
            top.setData(0, KIND_ROLE, "label")
            top.setData(0, KEY_ROLE, label)
            self.tree.addTopLevelItem(top)
            for number, g in enumerate(real, 1):
                color = palette_color(color_index)
                color_index += 1
                self._colors[g.key] = color
                text = g.rule_text or "(not merged yet: the teacher's merge for this cluster is missing)"
                name = f"Cluster {number}" + (f" · {g.rule_uid}" if g.rule_uid else "")
                item = QTreeWidgetItem([name, str(g.size), text])
                item.setIcon(0, marker_icon(color, label_shape(li)))
                item.setToolTip(2, text + (f"\n({g.rule_origin})" if g.rule_origin else ""))
                if not g.rule_text:
                    item.setForeground(2, QColor("#777777"))
                item.setData(0, KIND_ROLE, "cluster")
                item.setData(0, KEY_ROLE, g.key)
                self._add_members(item, g)
                top.addChild(item)
                self._items[g.key] = item
            self._items[f"label:{label}"] = top
            top.setExpanded(True)
        if noise_groups:
            size = sum(g.size for g in noise_groups)
            top = QTreeWidgetItem(["Noise", str(size), "micro-rules DBSCAN left out of every cluster (not merged)"])
            top.setFont(0, bold)
            top.setForeground(0, NOISE_COLOR.darker(150))
            top.setData(0, KIND_ROLE, "noise-all")
            top.setData(0, KEY_ROLE, "noise")
            self.tree.addTopLevelItem(top)
            for g in noise_groups:
                self._colors[g.key] = NOISE_COLOR
                item = QTreeWidgetItem([g.label, str(g.size), ""])
                item.setIcon(0, marker_icon(NOISE_COLOR, label_shape(self.data.labels.index(g.label))))
                item.setData(0, KIND_ROLE, "noise")
                item.setData(0, KEY_ROLE, g.key)
                self._add_members(item, g)
                top.addChild(item)
                self._items[g.key] = item
            self._items["noise"] = top
        self.tree.blockSignals(False)

    @staticmethod
    def _add_members(parent: QTreeWidgetItem, group: MapGroup) -> None:
        for m in group.members:
            child = QTreeWidgetItem([str(m["ext_id"]), "", m["rule"]])
            child.setToolTip(2, m["rule"])
            child.setData(0, KIND_ROLE, "micro")
            child.setData(0, KEY_ROLE, group.key)
            child.setData(0, MICRO_ROLE, int(m["id"]))
            parent.addChild(child)

    def _fill_chart(self) -> None:
        assert self.data is not None
        self.chart.removeAllSeries()
        for axis in self.chart.axes():
            self.chart.removeAxis(axis)
        self._series.clear()
        self._series_ids.clear()
        xs = [p[0] for p in self.data.points.values()] or [0.0]
        ys = [p[1] for p in self.data.points.values()] or [0.0]
        x_axis = value_axis("", *padded_range(xs), label_format="%.1f")
        y_axis = value_axis("", *padded_range(ys), label_format="%.1f")
        # The map's coordinates have no units; the grid helps the eye, the numbers would only distract.
        for axis in (x_axis, y_axis):
            axis.setLabelsVisible(False)
            axis.setGridLineColor(grid_color())
        # Noise first so coloured clusters are drawn on top of it.
        ordered = sorted(self.data.groups, key=lambda g: not g.is_noise)
        for g in ordered:
            ids = [m["id"] for m in g.members if m["id"] in self.data.points]
            shape = label_shape(self.data.labels.index(g.label))
            color = self._colors.get(g.key, NOISE_COLOR)
            series = scatter_series(f"{g.label} {'noise' if g.is_noise else g.index}",
                                    [self.data.points[i] for i in ids], color, shape=shape,
                                    size=_NORMAL_SIZE - (2 if g.is_noise else 0))
            attach(self.chart, series, x_axis, y_axis)
            series.clicked.connect(lambda point, key=g.key: self.select_key(key))
            series.hovered.connect(lambda point, state, key=g.key: self._hover(key, point, state))
            self._series[g.key] = series
            self._series_ids[g.key] = ids
        # A ring around the selected micro-rule.
        self._focus = scatter_series("selected rule", [], QColor(0, 0, 0, 0), size=20, border=ink())
        self._focus.setPen(ink())
        attach(self.chart, self._focus, x_axis, y_axis)
        self._apply_highlight(set())

    # -- selection and highlighting -----------------------------------------------------------------------
    def selected_key(self) -> str | None:
        items = self.tree.selectedItems()
        return str(items[0].data(0, KEY_ROLE)) if items else None

    def select_key(self, key: str) -> None:
        item = self._items.get(key)
        if item is not None:
            self.tree.setCurrentItem(item)
            self.tree.scrollToItem(item)

    def highlighted(self) -> set[str]:
        """Keys of the map groups currently drawn highlighted (empty: everything drawn normally)."""
        return set(self._highlighted)

    def _on_selection(self) -> None:
        items = self.tree.selectedItems()
        keys: set[str] = set()
        micro: int | None = None
        if items and self.data is not None:
            item = items[0]
            kind = item.data(0, KIND_ROLE)
            key = str(item.data(0, KEY_ROLE))
            if kind == "label":
                keys = {g.key for g in self.data.groups if g.label == key and not g.is_noise}
            elif kind == "noise-all":
                keys = {g.key for g in self.data.groups if g.is_noise}
            else:
                keys = {key}
            if kind == "micro":
                micro = int(item.data(0, MICRO_ROLE))
        self._apply_highlight(keys)
        if self._focus is not None:
            self._focus.clear()
            if micro is not None and self.data is not None and micro in self.data.points:
                self._focus.append(QPointF(*self.data.points[micro]))

    def _apply_highlight(self, keys: set[str]) -> None:
        self._highlighted = set(keys)
        for key, series in self._series.items():
            color = self._colors.get(key, NOISE_COLOR)
            base = _NORMAL_SIZE - (2 if key.startswith("noise:") else 0)
            if not keys:
                style_scatter(series, color)
                series.setMarkerSize(base)
            elif key in keys:
                style_scatter(series, color, ink())
                series.setMarkerSize(_FOCUS_SIZE)
            else:
                style_scatter(series, faded(color), faded(color.darker(140), 0.7))
                series.setMarkerSize(base)
        # Draw highlighted series last so they are not hidden under faded points.
        for key in keys:
            shown = self._series.get(key)
            if shown is not None:
                shown.setVisible(False)
                shown.setVisible(True)

    def _hover(self, key: str, point: QPointF, state: bool) -> None:
        if not state or self.data is None:
            QToolTip.hideText()
            return
        ids = self._series_ids.get(key, [])
        if not ids:
            return
        points = self.data.points
        nearest = min(ids, key=lambda i: (points[i][0] - point.x()) ** 2 + (points[i][1] - point.y()) ** 2)
        group = next(g for g in self.data.groups if g.key == key)
        rule = next((m["rule"] for m in group.members if m["id"] == nearest), "")
        where = "noise" if group.is_noise else f"cluster {group.rule_uid or group.index}"
        QToolTip.showText(QCursor.pos(), f"{rule}\n[{group.label}, {where}]", self.view)


def _shape_glyph(index: int) -> str:
    return "●■▲⬟★◆"[index % 6]


# ---------------------------------------------------------------------------
# Closed-loop chart
# ---------------------------------------------------------------------------
class LoopChart(QWidget):
    """Dev macro-F1 of each closed-loop candidate, with accepted/rejected markers and the best-so-far line."""

    def __init__(self, project_path: str | Path | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.project_path = Path(project_path) if project_path is not None else None
        self.rounds: list[dict[str, Any]] = []
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        self.chart = new_chart("Closed loop: dev macro-F1 per round")
        self.view = chart_view(self.chart)
        layout.addWidget(self.view, 1)
        self.caption = QLabel()
        self.caption.setWordWrap(True)
        layout.addWidget(self.caption)
        self.accepted_series: QScatterSeries | None = None
        self.rejected_series: QScatterSeries | None = None
        self.reload()

    def set_project(self, project_path: str | Path | None) -> None:
        self.project_path = Path(project_path) if project_path is not None else None
        self.reload()

    def reload(self) -> None:
        self.chart.removeAllSeries()
        for axis in self.chart.axes():
            self.chart.removeAxis(axis)
        self.accepted_series = self.rejected_series = None
        self.rounds = []
        if self.project_path is None:
            self.caption.setText("No project open.")
            return
        try:
            with _open(self.project_path) as project:
                self.rounds = read_loop_rounds(project)
        except (ProjectFileError, OSError) as exc:
            self.caption.setText(f"Cannot read the closed-loop rounds: {exc}")
            return
        if not self.rounds:
            self.caption.setText("No closed-loop rounds yet: run phase 3 to see how the rules improve on dev.")
            return
        self._draw()

    def _draw(self) -> None:
        rounds = self.rounds
        start = rounds[0]["base_dev_macro_f1"]
        candidates = [(r["round"], r["dev_macro_f1"]) for r in rounds if r["dev_macro_f1"] is not None]
        accepted = [(r["round"], r["dev_macro_f1"]) for r in rounds if r["accepted"] and r["dev_macro_f1"] is not None]
        rejected = [(r["round"], r["dev_macro_f1"]) for r in rounds
                    if not r["accepted"] and r["dev_macro_f1"] is not None]
        # Best so far: the start, then after each round the better of the previous best and an accepted candidate.
        best = [(0, start)] if start is not None else []
        current = start
        for r in rounds:
            if r["accepted"] and r["dev_macro_f1"] is not None:
                current = r["dev_macro_f1"]
            if current is not None:
                best.append((r["round"], current))
        values = [v for _, v in candidates + best]
        low, high = padded_range(values, 0.15, 0.1)
        last_round = max(r["round"] for r in rounds)
        x_axis = integer_axis("Round (0 = the rules from synthesis)", 0, last_round)
        y_axis = value_axis("Dev macro-F1", max(0.0, low), min(1.0, high), label_format="%.2f")
        y_axis.applyNiceNumbers()
        line = line_series("Candidate", [(0, start)] + candidates if start is not None else candidates,
                           neutral_color(), show_points=False)
        attach(self.chart, line, x_axis, y_axis)
        best_line = line_series("Best so far", best, ACCEPTED_COLOR.lighter(130), width=2.0,
                                style=Qt.PenStyle.DashLine)
        attach(self.chart, best_line, x_axis, y_axis)
        if start is not None:
            attach(self.chart, scatter_series("Start", [(0, start)], neutral_color(), size=10), x_axis, y_axis)
        self.accepted_series = scatter_series("Accepted", accepted, ACCEPTED_COLOR, size=13)
        self.rejected_series = scatter_series("Rejected", rejected, REJECTED_COLOR, size=12,
                                              shape=QScatterSeries.MarkerShape.MarkerShapeRotatedRectangle)
        attach(self.chart, self.accepted_series, x_axis, y_axis)
        attach(self.chart, self.rejected_series, x_axis, y_axis)
        parts = [f"start {start:.3f}" if start is not None else "start not scored"]
        for r in rounds:
            if r["dev_macro_f1"] is None:
                cause = textwrap.shorten(r["root_cause"] or "failed", 80, placeholder=" …")  # whole words
                parts.append(f"round {r['round']}: no candidate scored ({cause})")
            else:
                parts.append(f"round {r['round']}: {r['dev_macro_f1']:.3f} "
                             f"{'accepted' if r['accepted'] else 'rejected'}")
        self.caption.setText("; ".join(parts))
        self.caption.setToolTip("\n".join(f"round {r['round']}: {r['root_cause']}" for r in rounds if r["root_cause"]))
