"""PyInstaller entry point of the `pld` command in the bundle (the same function as the `pld` console script)."""

import multiprocessing
import sys

from pld_desktop.cli import main

if __name__ == "__main__":
    multiprocessing.freeze_support()  # a spawned child (the window's embedder) is this executable again
    sys.exit(main())
