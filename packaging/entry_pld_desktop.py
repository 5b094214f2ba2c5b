"""PyInstaller entry point of the `pld-desktop` window in the bundle, with an opt-in smoke test.

PLD_SMOKE_TEST=1 makes the window quit with exit code 0 once it has painted (and, when a .pld path was given,
opened that project), or with 1 after PLD_SMOKE_TIMEOUT seconds (default 60). It exists so the built bundle can
be checked headless (QT_QPA_PLATFORM=offscreen) without editing pld_desktop/ui/app.py; a `--smoke-test` flag in
app.py would replace it.
"""

from __future__ import annotations

import json
import os
import sys


def _install_smoke_test() -> None:
    from PySide6 import QtWidgets
    from PySide6.QtCore import QEvent, QObject, QTimer

    base = QtWidgets.QApplication
    timeout_ms = int(float(os.environ.get("PLD_SMOKE_TIMEOUT", "60")) * 1000)

    class PaintWatcher(QObject):
        """Quits the application after the first paint of the main window, reporting what it showed."""

        def __init__(self, app: QtWidgets.QApplication, window: QtWidgets.QWidget) -> None:
            super().__init__(app)
            self.app = app
            self.window = window
            self.done = False

        def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt override
            if not self.done and obj is self.window and event.type() == QEvent.Type.Paint:
                self.done = True
                QTimer.singleShot(0, self.finish)  # let this paint complete first
            return False

        def finish(self) -> None:
            wanted = [a for a in self.app.arguments()[1:] if a.endswith(".pld")]
            opened = getattr(self.window, "project_path", None)
            image = self.window.grab()
            report = {"painted": True, "title": self.window.windowTitle(),
                      "project": str(opened) if opened else None,
                      "size": [image.width(), image.height()], "platform": self.app.platformName()}
            ok = not image.isNull() and (not wanted or (opened is not None and str(opened) == wanted[0]))
            print("PLD_SMOKE " + json.dumps(report), flush=True)
            self.app.exit(0 if ok else 1)

    class SmokeApplication(base):  # type: ignore[misc, valid-type]
        def exec(self) -> int:  # noqa: A003 - the Qt method's name
            windows = [w for w in self.topLevelWidgets() if isinstance(w, QtWidgets.QMainWindow) and w.isVisible()]
            if not windows:
                print("PLD_SMOKE no main window was shown", file=sys.stderr, flush=True)
                return 1
            watcher = PaintWatcher(self, windows[0])
            windows[0].installEventFilter(watcher)
            windows[0].update()

            def give_up() -> None:
                print(f"PLD_SMOKE the window did not paint within {timeout_ms / 1000:.0f} s", file=sys.stderr,
                      flush=True)
                self.exit(1)
            QTimer.singleShot(timeout_ms, give_up)
            return super().exec()

    # app.py does `from PySide6.QtWidgets import QApplication` when first imported, so it picks this class up.
    QtWidgets.QApplication = SmokeApplication


if __name__ == "__main__":
    if os.environ.get("PLD_SMOKE_TEST") == "1":
        _install_smoke_test()
    from pld_desktop.ui.app import main
    sys.exit(main())
