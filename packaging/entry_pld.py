"""PyInstaller entry point of the `pld` command in the bundle (the same function as the `pld` console script)."""

import sys

from pld_desktop.cli import main

if __name__ == "__main__":
    sys.exit(main())
