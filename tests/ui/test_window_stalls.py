"""GUI-thread stall fixes of issue 15: background vocabulary and token counts, per-row relayout after an edit."""

from __future__ import annotations

import threading
from pathlib import Path
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


def test_open_builds_the_current_tabs_view_now_and_the_others_in_later_turns(distilled_path: Path,
                                                                               qtbot: Any) -> None:
    from pld_desktop.ui.app import TAB_NAMES, MainWindow
    window = MainWindow()
    qtbot.addWidget(window)
    window.open_project(distilled_path)
    assert TAB_NAMES[window.tabs.currentIndex()] == "Run"
    assert set(window.views) == {"loop"}  # the Run tab's chart only: nothing else was built in that one call
    assert set(window.views.pending) == {"rules", "results", "compare", "diff", "clusters"}
    qtbot.waitUntil(lambda: not window.views.pending, timeout=30000)  # one per event-loop turn
    assert set(window.views) == {"loop", "rules", "results", "compare", "diff", "clusters"}

    window.open_project(distilled_path)
    diff = window.views["diff"]  # wanted before its turn: built on the spot
    assert type(diff).__name__ == "DiffView" and "diff" not in window.views.pending
    window.tabs.setCurrentIndex(TAB_NAMES.index("Rules"))  # showing a tab builds its view at once
    assert "rules" in window.views and window.views["rules"].model.rowCount() > 0
    _wait_for_vocabulary(window)
    window.close_project()
    assert not window.views and not window.views.pending


def test_the_end_of_a_run_rereads_hidden_views_when_their_tab_is_shown(distilled_path: Path, qtbot: Any,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from pld_desktop.ui.app import TAB_NAMES, MainWindow
    from pld_desktop.ui.clusters_view import ClustersView
    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    window.open_project(distilled_path)
    qtbot.waitUntil(lambda: not window.views.pending, timeout=30000)
    reloads: list[str] = []
    monkeypatch.setattr(ClustersView, "reload", lambda self: reloads.append("clusters"))
    window._on_finished("done", "All phases finished.")
    assert reloads == [] and "clusters" in window._stale_views  # hidden: not re-read yet
    window.tabs.setCurrentIndex(TAB_NAMES.index("Clusters"))
    assert reloads == ["clusters"] and "clusters" not in window._stale_views
    _wait_for_vocabulary(window)
    window.close_project()


def _wait_for_vocabulary(window: Any) -> None:
    """The rule editor's vocabulary loads on a helper thread: let it end inside the test that started it."""
    if window._tokenizer is not None and window._tokenizer[1] is not None:
        window._tokenizer[1].wait(120)


def test_the_window_process_hands_the_gil_over_sooner_and_freezes_its_startup_heap(
        qapp: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Full collections walk every tracked object holding the GIL; the window's startup heap is frozen once, so a
    worker that allocates much (a 100k-row import) no longer stalls the window for the walk of it. The GIL's
    switch interval is 1 ms, so the GUI thread waits less for each of its many takes while a worker runs."""
    import gc
    import sys

    from pld_desktop.ui.app import MainWindow
    from pld_desktop.ui.tasks import WINDOW_SWITCH_INTERVAL_S
    window = MainWindow()
    assert gc.get_freeze_count() > 10_000  # modules, classes and the window's widgets
    assert sys.getswitchinterval() == pytest.approx(WINDOW_SWITCH_INTERVAL_S)
    collections: list[int] = []

    def collect(*args: Any) -> int:
        collections.append(1)
        return 0

    monkeypatch.setattr(gc, "collect", collect)
    another = MainWindow()  # once per process: a second window neither collects nor freezes again
    assert collections == []
    window.deleteLater()
    another.deleteLater()


def test_the_column_fitter_reads_what_the_view_shows(model: RulesModel) -> None:
    """The fitter reads display values straight from the model (no Qt index per cell); they are data()'s."""
    assert model.rowCount() > 0
    for column in range(model.columnCount()):
        assert model.display_values(column) == [model.index(row, column).data() for row in range(model.rowCount())]


_IMPORT_PROBE = """
import gc, sys
from pld_desktop.core.pipeline import PHASE_LIBRARIES
from pld_desktop.ui.tasks import import_phase_libraries
assert not any(name in sys.modules for name in PHASE_LIBRARIES), "imported too early"
collections = []
gc.callbacks.append(lambda phase, info: collections.append(info["generation"]) if phase == "start" else None)
frozen = gc.get_freeze_count()
import_phase_libraries()
import sklearn.cluster
assert collections == [], collections
assert gc.get_freeze_count() > frozen + 50_000, (frozen, gc.get_freeze_count())
assert gc.isenabled()
tracked = {id(o) for o in gc.get_objects()}
assert id(sklearn.cluster.__dict__) not in tracked  # frozen: full collections no longer walk it
import_phase_libraries()  # once: nothing left to import, nothing frozen again
assert gc.get_freeze_count() > frozen + 50_000
print("ok")
"""


def test_the_phases_libraries_are_imported_without_collections_and_frozen() -> None:
    """scikit-learn and SciPy imported mid-run set off full collections that walk their ~100k new objects with the
    GIL held (45-55 ms of window stall each); the window's worker imports them with the collector paused and
    freezes them. In a fresh process: no collection during the import, the modules frozen, the collector back on."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run([sys.executable, "-c", _IMPORT_PROBE], capture_output=True, text=True, env=env,
                          timeout=300, cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"
