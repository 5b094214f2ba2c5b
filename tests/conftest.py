"""Shared test setup: headless Qt, offline model hubs, and the --fast flag that skips real-model tests."""

from __future__ import annotations

import os

# Before any Qt or Hugging Face import (both read these at import time).
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The per-machine trust store (accepted servers and model files) of the tests, never the user's own; `pld`
# subprocesses inherit it.
if not os.environ.get("PLD_CONFIG_DIR"):
    import tempfile
    os.environ["PLD_CONFIG_DIR"] = tempfile.mkdtemp(prefix="pld-test-config-")

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--fast", action="store_true", default=False,
                     help="skip the slow tests that run the real bundled models")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--fast"):
        return
    skip = pytest.mark.skip(reason="real-model test skipped by --fast")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
