"""PyInstaller entry point of the `pld-desktop` window in the bundle (the same function as the `pld-desktop`
console script). `pld-desktop --smoke-test` or PLD_SMOKE_TEST=1 runs the window's smoke test (pld_desktop/ui/smoke.py).
"""

import multiprocessing
import sys

from pld_desktop.ui.app import main

if __name__ == "__main__":
    # The window embeds in a child process (backends/embedder.ChildProcessEmbedder, spawned): in the bundle that
    # child is this executable again, and freeze_support() makes it run the child's work instead of the window.
    multiprocessing.freeze_support()
    sys.exit(main())
