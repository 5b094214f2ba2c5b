"""The one switch for issue 15's fast paths: on unless the environment says PLD_FAST_PATHS=0 (benchmarks of the
old path, bench/pipeline.py, run both side by side)."""

from __future__ import annotations

import os

__all__ = ["fast_paths_enabled"]


def fast_paths_enabled() -> bool:
    return os.environ.get("PLD_FAST_PATHS", "1").strip().lower() not in ("0", "false", "no", "off")
