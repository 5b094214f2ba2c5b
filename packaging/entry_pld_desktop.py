"""PyInstaller entry point of the `pld-desktop` window in the bundle (the same function as the `pld-desktop`
console script). `pld-desktop --smoke-test` or PLD_SMOKE_TEST=1 runs the window's smoke test (pld_desktop/ui/smoke.py).
"""

import sys

from pld_desktop.ui.app import main

if __name__ == "__main__":
    sys.exit(main())
