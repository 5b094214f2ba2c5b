"""Shared QtCharts helpers: a horizontal bar chart of counts per category (label distributions)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from PySide6.QtCharts import QBarCategoryAxis, QBarSet, QChart, QChartView, QHorizontalBarSeries, QValueAxis
from PySide6.QtCore import QMargins, Qt
from PySide6.QtGui import QColor, QPainter
from PySide6.QtWidgets import QSizePolicy, QWidget

from .charts_extra import apply_palette_theme, is_dark_palette

BAR_COLOR = QColor("#4C78A8")
HIGHLIGHT_COLOR = QColor("#E45756")
# Beyond this many categories the bars become unreadable; the rest are summed into one bar, which says so.
MAX_BARS = 30
_ROW_HEIGHT = 22  # pixels per bar, so that every category name stays legible


class CountBarChart(QChartView):
    """A horizontal bar per category with its count; chosen categories drawn in the highlight colour.

    The largest categories come first (top). With more than MAX_BARS categories the smallest are summed into one
    "(N more labels)" bar so nothing is silently left out.
    """

    def __init__(self, parent: QWidget | None = None, *, value_title: str = "rows") -> None:
        super().__init__(parent)
        self._value_title = value_title
        self.setRenderHint(QPainter.RenderHint.Antialiasing)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self.bar_set: QBarSet | None = None
        self.categories: list[str] = []
        self.set_counts({})

    def set_counts(self, counts: Mapping[str, int], highlighted: Iterable[str] = (), title: str = "") -> None:
        """Replace the chart with one bar per category in `counts` (in the given order)."""
        items = list(counts.items())
        highlight = set(highlighted)
        if len(items) > MAX_BARS:
            rest = items[MAX_BARS - 1:]
            other = f"({len(rest)} more labels)"
            items = items[: MAX_BARS - 1] + [(other, sum(n for _, n in rest))]
            if any(name in highlight for name, _ in rest):
                highlight.add(other)  # the summed bar is flagged when any label inside it is
        chart = QChart()
        apply_palette_theme(chart)
        chart.setTitle(title)
        chart.legend().hide()
        chart.setMargins(QMargins(4, 4, 4, 4))
        chart.setBackgroundRoundness(0)
        chart.setAnimationOptions(QChart.AnimationOption.NoAnimation)

        bar_set = QBarSet(self._value_title)
        bar_set.setColor(BAR_COLOR)
        bar_set.setBorderColor(BAR_COLOR)
        bar_set.setSelectedColor(HIGHLIGHT_COLOR)  # "selected" bars are the highlighted ones
        bar_set.setLabelColor(QColor("#EEEEEE") if is_dark_palette() else QColor("#222222"))
        # A horizontal series draws the first category at the bottom: reverse so the largest is on top.
        for _name, value in reversed(items):
            bar_set.append(float(value))
        for index, (name, _) in enumerate(reversed(items)):
            if name in highlight:
                bar_set.selectBar(index)
        series = QHorizontalBarSeries()
        series.append(bar_set)
        series.setLabelsVisible(True)
        series.setLabelsPosition(QHorizontalBarSeries.LabelsPosition.LabelsOutsideEnd)
        series.setBarWidth(0.7)
        chart.addSeries(series)

        categories = [name if len(name) <= 28 else name[:27] + "…" for name, _ in reversed(items)]
        axis_y = QBarCategoryAxis()
        axis_y.append(categories)
        chart.addAxis(axis_y, Qt.AlignmentFlag.AlignLeft)
        series.attachAxis(axis_y)
        axis_x = QValueAxis()
        axis_x.setRange(0, max(5, max((n for _, n in items), default=0) * 1.1))  # room for the count labels
        axis_x.applyNiceNumbers()
        axis_x.setLabelFormat("%d")
        chart.addAxis(axis_x, Qt.AlignmentFlag.AlignBottom)
        series.attachAxis(axis_x)

        old = self.chart()
        self.setChart(chart)  # the view takes ownership of the new chart
        if old is not None and old is not chart:
            old.deleteLater()
        self.bar_set = bar_set
        self.categories = [name for name, _ in items]
        self.setMinimumHeight(min(360, 70 + _ROW_HEIGHT * max(1, len(items))))

    def bar_count(self) -> int:
        return self.bar_set.count() if self.bar_set is not None else 0

    def highlighted_categories(self) -> list[str]:
        """The categories drawn in the highlight colour (top-to-bottom order)."""
        if self.bar_set is None:
            return []
        n = self.bar_set.count()
        return [self.categories[n - 1 - i] for i in sorted(self.bar_set.selectedBars(), reverse=True)]
