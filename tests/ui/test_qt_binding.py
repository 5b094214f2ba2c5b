"""Guards against a Qt-binding defect that would crash long GUI sessions.

PySide6 6.12.0 on Python 3.11 dropped one reference to None per void method call (setText, processEvents...),
aborting the process with "none_dealloc" after a few thousand calls; pyproject pins a release without it.
"""

from __future__ import annotations

import sys

from PySide6.QtWidgets import QApplication, QLabel


def test_void_qt_calls_keep_none_alive(qtbot) -> None:  # type: ignore[no-untyped-def]
    label = QLabel()
    qtbot.addWidget(label)
    before = sys.getrefcount(None)
    for _ in range(3000):
        label.setText("x")
        QApplication.processEvents()
    assert sys.getrefcount(None) >= before - 50, "the Qt binding leaks references to None (crashes long sessions)"
