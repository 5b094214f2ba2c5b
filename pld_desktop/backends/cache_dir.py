"""Where PLD Desktop keeps its caches (model hashes, saved prompt states, the AMX probe's verdict)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir() -> Path:
    """PLD Desktop's cache folder: $PLD_CACHE_DIR if set, else $XDG_CACHE_HOME/pld-desktop (~/.cache/pld-desktop)."""
    override = os.environ.get("PLD_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pld-desktop"


