"""GUI-thread stall fixes of issue 15: background vocabulary and token counts, per-row relayout after an edit."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from PySide6.QtGui import QUndoStack

from pld_desktop.backends.tokenizer import TokenizerLoading, VocabTokenizer
from pld_desktop.core.project import Project
from pld_desktop.ui.rules_model import COL_TEXT, RulesModel


@pytest.fixture
def model(distilled_project: Project, qapp: Any) -> RulesModel:
    """The rules model over this test's copy of the distilled project (conftest), with its own undo stack."""
    return RulesModel(distilled_project, distilled_project.get_setting("chosen_rule_set_id"), QUndoStack())


class _GatedTokenizer:
    """A tokenizer whose count waits for a gate, to see what the GUI thread gets meanwhile."""

    ready = True

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.threads: list[str] = []

    def count(self, text: str) -> int:
        self.gate.wait(30)
        self.threads.append(threading.current_thread().name)
        return len(text)


def test_token_counts_are_taken_off_the_gui_thread(qapp: Any) -> None:  # the counter runs a TaskRunner
    from pld_desktop.ui.window_parts import _BackgroundCounter
    tok = _GatedTokenizer()
    done = threading.Event()
    counter = _BackgroundCounter(tok, done.set)
    with pytest.raises(TokenizerLoading):
        counter("some prompt")  # returns at once: the count runs on a helper thread
    assert not done.is_set()
    tok.gate.set()
    assert done.wait(30)
    assert counter("some prompt") == len("some prompt")
    assert tok.threads == ["pld-token-count"]


def test_a_failing_count_is_reported_not_retried_forever(qapp: Any) -> None:
    from pld_desktop.ui.window_parts import _BackgroundCounter

    class Broken:
        ready = True

        def count(self, text: str) -> int:
            raise RuntimeError("the tokenizer is closed")

    done = threading.Event()
    counter = _BackgroundCounter(Broken(), done.set)
    with pytest.raises(TokenizerLoading):
        counter("x")
    assert done.wait(30)
    with pytest.raises(RuntimeError, match="closed"):
        counter("x")


@pytest.mark.slow
def test_vocabulary_loads_on_a_helper_thread_and_counts_like_the_blocking_load() -> None:
    seen: list[str] = []
    background = VocabTokenizer(background=True, on_ready=lambda: seen.append(threading.current_thread().name))
    assert background.wait(120) and background.error is None
    blocking = VocabTokenizer()
    text = "Rules: if the customer reports an unknown card payment, answer fraud_report."
    assert background.count(text) == blocking.count(text) > 5
    assert seen == ["pld-vocab"]
    background.close()
    blocking.close()


def test_an_edit_relayouts_only_the_rows_it_changed(model: RulesModel) -> None:
    rows: list[tuple[int, int]] = []
    model.dataChanged.connect(lambda first, last, *_: rows.append((first.row(), last.row())))
    before = {r.uid: model.conflicts_of(r.uid) for r in model.rules()}
    assert model.setData(model.index(1, COL_TEXT), "If the customer asks about opening hours, answer question.")
    changed = {i for i, r in enumerate(model.rules())
               if i == 1 or model.conflicts_of(r.uid) != before[r.uid]}
    assert rows and {row for first, last in rows for row in range(first, last + 1)} == changed
    assert len(changed) < model.rowCount()  # not every row, as before


def test_open_does_not_load_the_vocabulary_on_the_gui_thread(monkeypatch: pytest.MonkeyPatch, qapp: Any) -> None:
    from pld_desktop.backends import tokenizer
    from pld_desktop.ui.app import MainWindow
    loads: list[str] = []
    original = tokenizer.VocabTokenizer._load

    def record(self: Any, model_path: Any) -> None:
        loads.append(threading.current_thread().name)
        original(self, model_path)

    monkeypatch.setattr(tokenizer.VocabTokenizer, "_load", record)
    window = MainWindow()
    counter = window._token_counter()
    assert counter is not None
    window._tokenizer[1].wait(120)
    assert loads == ["pld-vocab"]
    window._tokenizer[1].close()
    window.deleteLater()
