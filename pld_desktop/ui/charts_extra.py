"""QtCharts helpers for the clusters map and the closed-loop chart: palettes, series, axes and a chart view."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from PySide6.QtCharts import QChart, QChartView, QLineSeries, QScatterSeries, QValueAxis
from PySide6.QtCore import QMargins, QPointF, Qt
from PySide6.QtGui import QBrush, QColor, QFont, QIcon, QPainter, QPen, QPixmap, QPolygonF

# Colour-blind-friendly categorical palette (Okabe-Ito, then Tol's bright set); cycles when exhausted.
CLUSTER_PALETTE: tuple[str, ...] = (
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442",
    "#4477AA", "#EE6677", "#228833", "#CCBB44", "#AA3377", "#66CCEE", "#882255",
)
NOISE_COLOR = QColor("#9E9E9E")
ACCEPTED_COLOR = QColor("#2E7D32")
REJECTED_COLOR = QColor("#C62828")

# One marker shape per label, so clusters of different labels stay apart even when colours repeat.
LABEL_SHAPES: tuple[QScatterSeries.MarkerShape, ...] = (
    QScatterSeries.MarkerShape.MarkerShapeCircle,
    QScatterSeries.MarkerShape.MarkerShapeRectangle,
    QScatterSeries.MarkerShape.MarkerShapeTriangle,
    QScatterSeries.MarkerShape.MarkerShapePentagon,
    QScatterSeries.MarkerShape.MarkerShapeStar,
    QScatterSeries.MarkerShape.MarkerShapeRotatedRectangle,
)


def palette_color(index: int) -> QColor:
    return QColor(CLUSTER_PALETTE[index % len(CLUSTER_PALETTE)])


def label_shape(index: int) -> QScatterSeries.MarkerShape:
    return LABEL_SHAPES[index % len(LABEL_SHAPES)]


def faded(color: QColor, amount: float = 0.8) -> QColor:
    """`color` blended towards white. Opaque on purpose: many translucent markers stacked on one spot would add
    up to a solid colour again and look highlighted."""
    return QColor(round(color.red() + (255 - color.red()) * amount),
                  round(color.green() + (255 - color.green()) * amount),
                  round(color.blue() + (255 - color.blue()) * amount))


def is_dark_palette() -> bool:
    """Whether the application's palette is dark (window colour darker than mid-grey)."""
    from PySide6.QtGui import QGuiApplication, QPalette
    return QGuiApplication.palette().color(QPalette.ColorRole.Window).lightness() < 128


def ink() -> QColor:
    """A colour for outlines and marks drawn over a chart's background: near-black, or near-white when dark."""
    return QColor("#EEEEEE") if is_dark_palette() else QColor("#111111")


def neutral_color() -> QColor:
    """The colour of a neutral line (the candidates' line, the start marker), legible on either background."""
    return QColor("#B0BEC5") if is_dark_palette() else QColor("#455A64")


def grid_color() -> QColor:
    return QColor("#4A4A4A") if is_dark_palette() else QColor("#EEEEEE")


def apply_palette_theme(chart: QChart) -> None:
    """The chart follows the window's palette: QtCharts' light theme is white with black text whatever the
    palette, so on a dark desktop it was a white slab next to the window; its dark theme keeps text legible."""
    # Call before adding series: setTheme() restyles the series already in the chart.
    chart.setTheme(QChart.ChartTheme.ChartThemeDark if is_dark_palette() else QChart.ChartTheme.ChartThemeLight)


def new_chart(title: str = "") -> QChart:
    chart = QChart()
    apply_palette_theme(chart)
    chart.setTitle(title)
    font = QFont(chart.titleFont())
    font.setBold(True)
    chart.setTitleFont(font)
    # Animations make grabs and tests see half-drawn series; the data here is small enough to appear at once.
    chart.setAnimationOptions(QChart.AnimationOption.NoAnimation)
    chart.setMargins(QMargins(6, 6, 6, 6))
    chart.legend().setAlignment(Qt.AlignmentFlag.AlignBottom)
    return chart


def chart_view(chart: QChart) -> QChartView:
    view = QChartView(chart)
    view.setRenderHint(QPainter.RenderHint.Antialiasing)
    view.setMinimumSize(320, 240)
    return view


def scatter_series(name: str, points: Iterable[tuple[float, float]], color: QColor, *,
                   shape: QScatterSeries.MarkerShape = QScatterSeries.MarkerShape.MarkerShapeCircle,
                   size: float = 9.0, border: QColor | None = None) -> QScatterSeries:
    series = QScatterSeries()
    series.setName(name)
    series.setMarkerShape(shape)
    series.setMarkerSize(size)
    style_scatter(series, color, border)
    series.append([QPointF(float(x), float(y)) for x, y in points])
    return series


def style_scatter(series: QScatterSeries, color: QColor, border: QColor | None = None) -> None:
    series.setBrush(QBrush(color))
    series.setPen(QPen(border if border is not None else color.darker(140), 1.0))


def line_series(name: str, points: Sequence[tuple[float, float]], color: QColor, *, width: float = 2.0,
                style: Qt.PenStyle = Qt.PenStyle.SolidLine, show_points: bool = False) -> QLineSeries:
    series = QLineSeries()
    series.setName(name)
    pen = QPen(color, width)
    pen.setStyle(style)
    series.setPen(pen)
    series.setPointsVisible(show_points)
    series.append([QPointF(float(x), float(y)) for x, y in points])
    return series


def value_axis(title: str, low: float, high: float, *, label_format: str = "%.2f",
               ticks: int | None = None) -> QValueAxis:
    axis = QValueAxis()
    axis.setTitleText(title)
    axis.setRange(low, high)
    axis.setLabelFormat(label_format)
    if ticks is not None:
        axis.setTickCount(max(2, ticks))
    return axis


def padded_range(values: Sequence[float], pad_fraction: float = 0.08,
                 minimum_span: float = 1e-6) -> tuple[float, float]:
    """(low, high) covering `values` with a margin, so markers on the edge are not cut in half; a range
    narrower than `minimum_span` is widened around its centre."""
    if not values:
        return 0.0, 1.0
    low, high = min(values), max(values)
    if high - low < minimum_span:
        centre = (low + high) / 2
        low, high = centre - minimum_span / 2, centre + minimum_span / 2
    span = high - low
    return low - span * pad_fraction, high + span * pad_fraction


def integer_axis(title: str, low: int, high: int, pad: float = 0.3) -> QValueAxis:
    """An axis with a labelled tick at every integer from `low` to `high`, padded so edge markers show whole."""
    axis = value_axis(title, low - pad, high + pad, label_format="%d")
    axis.setTickType(QValueAxis.TickType.TicksDynamic)
    axis.setTickAnchor(float(low))
    axis.setTickInterval(1.0)
    return axis


def attach(chart: QChart, series: QLineSeries | QScatterSeries, x_axis: QValueAxis, y_axis: QValueAxis) -> None:
    """Add a series and bind it to the chart's shared axes (axes are added once, on first use)."""
    chart.addSeries(series)
    if x_axis not in chart.axes():
        chart.addAxis(x_axis, Qt.AlignmentFlag.AlignBottom)
    if y_axis not in chart.axes():
        chart.addAxis(y_axis, Qt.AlignmentFlag.AlignLeft)
    series.attachAxis(x_axis)
    series.attachAxis(y_axis)


def marker_icon(color: QColor, shape: QScatterSeries.MarkerShape = QScatterSeries.MarkerShape.MarkerShapeCircle,
                size: int = 14) -> QIcon:
    """A small swatch in a series' colour and marker shape, so a list can serve as the chart's legend."""

    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setBrush(QBrush(color))
    painter.setPen(QPen(color.darker(140), 1.0))
    m = 2.0
    s = float(size) - 2 * m
    shapes = QScatterSeries.MarkerShape
    if shape == shapes.MarkerShapeRectangle:
        painter.drawRect(int(m), int(m), int(s), int(s))
    elif shape in (shapes.MarkerShapeTriangle, shapes.MarkerShapePentagon, shapes.MarkerShapeStar,
                   shapes.MarkerShapeRotatedRectangle):
        corners = {shapes.MarkerShapeTriangle: 3, shapes.MarkerShapePentagon: 5,
                   shapes.MarkerShapeRotatedRectangle: 4, shapes.MarkerShapeStar: 10}[shape]
        c, r = size / 2.0, s / 2.0
        pts = []
        for i in range(corners):
            radius = r * (0.45 if shape == shapes.MarkerShapeStar and i % 2 else 1.0)
            angle = -math.pi / 2 + 2 * math.pi * i / corners
            pts.append(QPointF(c + radius * math.cos(angle), c + radius * math.sin(angle)))
        painter.drawPolygon(QPolygonF(pts))
    else:
        painter.drawEllipse(int(m), int(m), int(s), int(s))
    painter.end()
    return QIcon(pixmap)
