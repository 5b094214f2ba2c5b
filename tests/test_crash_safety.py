"""Nothing lost: `pld run` and the window killed (SIGKILL) at seeded random points in every phase, then resumed.

The teacher is the real Gemini adapter talking to a deterministic fake server on 127.0.0.1; the student and
embedder are the real bundled models. After each kill the file must pass PRAGMA integrity_check and keep every
completed item; the resumed run must send no completed teacher request again and must end with the same rule
sets and test metrics as an uninterrupted run. Trials per phase: PLD_CRASH_TRIALS (default 1; the full
robustness run, `python -m bench.robustness --full`, uses 10).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import crash_harness as ch
from .fake_gemini import FakeGemini

pytestmark = pytest.mark.slow

RUN_ARGS = ("--yes", "--quiet")
TEACHER_DELAY_S = 0.08  # makes phase 1 last long enough to be hit at a random point


@pytest.fixture(scope="module")
def server() -> Iterator[FakeGemini]:
    with FakeGemini(expected_key=ch.PLANTED_KEY) as fake:
        ch.DeterministicTeacher(fake, delay_s=TEACHER_DELAY_S)
        yield fake


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, server: FakeGemini) -> Path:
    folder = tmp_path_factory.mktemp("crash")
    return ch.make_project(folder / "pristine.pld", ch.tiny_csv(folder / "tiny.csv", per_label=8),
                           ch.gemini_settings(server.base_url))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, pristine: Path, server: FakeGemini) -> dict[str, Any]:
    """One uninterrupted run: its final result, and how long each phase ran (to place the kills)."""
    path = tmp_path_factory.mktemp("reference") / "ref.pld"
    shutil.copy(pristine, path)
    mark = len(server.requests)
    proc = subprocess.Popen(ch.pld_command("run", str(path), *RUN_ARGS), cwd=ch.REPO, env=ch.pld_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    windows = ch.phase_windows(path, proc)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err[-3000:]
    result = ch.final_result(path)
    assert set(result["phases"].values()) == {"done"}
    assert result["chosen_prompt_sha256"] and result["metrics"].keys() == {"pld", "zero_shot", "few_shot"}
    return {"result": result, "windows": windows, "requests": len(server.requests) - mark}


def _trial_seeds(phase: int) -> list[int]:
    return [1000 * phase + i for i in range(ch.crash_trials())]


def _resume_and_check(path: Path, server: FakeGemini, trial: ch.KillTrial, reference: dict[str, Any]) -> int:
    """Rerun to completion; assert nothing lost, nothing re-sent, same result. Returns items lost (0)."""
    assert trial.integrity == "ok"
    assert trial.before is not None and trial.after_kill is not None
    lost_by_kill = trial.before.missing_from(trial.after_kill)
    assert lost_by_kill == 0, "a committed item vanished with the kill"
    r = ch.run_pld("run", str(path), *RUN_ARGS)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert ch.resent_completed_requests(server, trial.request_mark, trial.after_kill) == 0, \
        "a completed teacher request was sent again"
    final = ch.snapshot(path)
    lost = trial.after_kill.missing_from(final)
    assert lost == 0, "the resumed run dropped or changed a completed item"
    assert ch.integrity(path) == "ok"
    assert ch.final_result(path) == reference["result"]
    return lost_by_kill + lost


@pytest.mark.parametrize("phase", ch.PHASES)
def test_sigkill_in_phase_then_resume_matches_an_uninterrupted_run(phase: int, tmp_path: Path, pristine: Path,
                                                                   server: FakeGemini,
                                                                   reference: dict[str, Any]) -> None:
    window = reference["windows"].get(phase)
    assert window, f"phase {phase} was never seen running in the reference run"
    hit, lost_total = 0, 0
    seeds = _trial_seeds(phase)
    for seed in seeds:
        path = tmp_path / f"k{seed}.pld"
        shutil.copy(pristine, path)
        proc = subprocess.Popen(ch.pld_command("run", str(path), *RUN_ARGS), cwd=ch.REPO, env=ch.pld_env(),
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            trial = ch.kill_during_phase(proc, path, phase, window, seed, server)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        hit += trial.killed_in_phase == phase
        lost_total += _resume_and_check(path, server, trial, reference)
    ch.record_figures("crash", mode="cli", phase=phase, trials=len(seeds), killed_in_phase=hit,
                      recovered=len(seeds), items_lost=lost_total)
    # The kill point is random within the measured duration; most must land inside the phase.
    assert hit >= max(1, len(seeds) // 2), f"only {hit} of {len(seeds)} kills landed in phase {phase}"


# ---------------------------------------------------------------------------
# The window
# ---------------------------------------------------------------------------
GUI_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication, QMessageBox
    from pld_desktop.ui.app import MainWindow

    mode, path = sys.argv[1], Path(sys.argv[2])
    # The user answers Yes to "Start a paid teacher run?" (and, in "close" mode, to the close dialog); any other
    # dialog would block offscreen, so it goes to stderr and the test sees it.
    QMessageBox.question = staticmethod(lambda *a, **k: QMessageBox.StandardButton.Yes)
    for name in ("warning", "information", "critical"):
        setattr(QMessageBox, name, staticmethod(lambda parent, title, text, *a, **k: print(
            f"dialog: {title}: {text}", file=sys.stderr, flush=True)))
    app = QApplication([])
    window = MainWindow()
    window.open_project(path)
    window.show()
    window.run_all()
    if mode == "close":
        # The close dialog asks first (answered Yes above); close mid-phase.
        def close_when_running():
            import sqlite3
            try:
                conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
                states = dict(conn.execute("SELECT phase, state FROM phases"))
                conn.close()
            except sqlite3.Error:
                return
            phase = int(sys.argv[3])
            # Close while the phase runs; should it be over already, close anyway (the test then fails, not hangs).
            if states.get(phase) == "running" or any(states.get(p) for p in range(phase + 1, 5)):
                timer.stop()
                window.close()  # asks, cancels, and closes once the worker has stopped; then the app quits
        timer = QTimer()
        timer.timeout.connect(close_when_running)
        timer.start(float(sys.argv[4]) * 1000 if len(sys.argv) > 4 else 50)
    sys.exit(app.exec())
""")


def _gui(mode: str, path: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", GUI_SCRIPT, mode, str(path), *extra], cwd=ch.REPO,
                            env=ch.pld_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def test_window_killed_mid_phase_resumes_with_pld_run(tmp_path: Path, pristine: Path, server: FakeGemini,
                                                      reference: dict[str, Any]) -> None:
    path = tmp_path / "gui.pld"
    shutil.copy(pristine, path)
    phase = 3
    proc = _gui("kill", path)
    try:
        trial = ch.kill_during_phase(proc, path, phase, reference["windows"][phase], 7, server)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    lost = _resume_and_check(path, server, trial, reference)
    ch.record_figures("crash", mode="gui_kill", phase=phase, trials=1,
                      killed_in_phase=int(trial.killed_in_phase == phase),
                      recovered=1, items_lost=lost)


def test_closing_the_window_mid_phase_leaves_a_resumable_project(tmp_path: Path, pristine: Path,
                                                                 server: FakeGemini,
                                                                 reference: dict[str, Any]) -> None:
    path = tmp_path / "close.pld"
    shutil.copy(pristine, path)
    phase = 3
    proc = _gui("close", path, str(phase))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert "Traceback" not in err
    assert ch.integrity(path) == "ok"
    states = ch.phase_states(path) or {}
    assert states.get(phase) == "cancelled", states  # closeEvent -> cancel -> the phase says it stopped
    before = ch.snapshot(path)
    mark = len(server.requests)
    r = ch.run_pld("run", str(path), *RUN_ARGS)
    assert r.returncode == 0, r.stderr[-3000:]
    assert ch.resent_completed_requests(server, mark, before) == 0
    assert before.missing_from(ch.snapshot(path)) == 0
    assert ch.final_result(path) == reference["result"]
    ch.record_figures("crash", mode="gui_close", phase=phase, trials=1, killed_in_phase=1, recovered=1, items_lost=0)
