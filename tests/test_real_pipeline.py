"""The whole pipeline on the real embedded models: Gemma 3 270M student, SmolLM2 local teacher, MiniLM embedder.

Slow (minutes): marked `slow`, run in CI, skipped locally with `--fast`.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pld_desktop.backends.factory import DefaultBackends
from pld_desktop.core.dataset import ColumnMapping, SplitSettings, load_dataset
from pld_desktop.core.export import export_rule_set
from pld_desktop.core.pipeline import run_pipeline
from pld_desktop.core.progress import SilentProgress
from pld_desktop.core.project import Project
from pld_desktop.core.settings import RunSettings, save_settings
from pld_desktop.resources import DEMO_TASK, demo_csv

from . import rawdb

pytestmark = pytest.mark.slow


def tiny_csv(path: Path, per_label: int = 10) -> Path:
    """A small slice of the bundled demo data, balanced over its three labels."""
    with open(demo_csv(), newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    picked: list[dict[str, str]] = []
    for label in ("complaint", "fraud_report", "question"):
        picked += [r for r in rows if r["label"] == label][:per_label]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(picked)
    return path


def small_settings() -> RunSettings:
    return RunSettings(task=DEMO_TASK, teacher="local", loop_max_iterations=1, loop_sample_size=12,
                       loop_max_failures=6, loop_max_successes=6, student_n_ctx=2048)


@pytest.fixture(scope="module")
def finished_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("real")
    ds = load_dataset(tiny_csv(folder / "tiny.csv"), ColumnMapping(("message",), "label", id_column="id"),
                      SplitSettings())
    path = folder / "tiny.pld"
    backends = DefaultBackends()
    with Project.create(path) as project:
        project.store_dataset(ds, "tiny.csv")
        settings = small_settings()
        save_settings(project, settings)
        report = run_pipeline(project, settings, backends, SilentProgress())
        assert report.status == "done", report.message
        export_rule_set(project, folder / "exports")
    backends.close()
    return path


def test_pipeline_leaves_a_complete_sound_project(finished_project: Path) -> None:
    with Project.open(finished_project, read_only=True) as p:
        assert p.integrity_check() == "ok"
        assert len(p.micro_rules()) >= 0.8 * len(p.examples(split="train"))
        assert rawdb.query(p, "SELECT COUNT(*) AS n FROM clusters")[0]["n"] >= 1
        assert p.rule_sets()
        last = p.get_setting("last_evaluation")
        for kind in ("pld", "zero_shot", "few_shot"):
            ev = p.evaluation(last[kind])
            assert ev.status == "done" and 0.0 <= ev.metrics["macro_f1"] <= 1.0
            preds = p.predictions(ev.id)
            assert len(preds) == ev.n_examples
            for pred in preds.values():
                assert pred["predicted"] in p.labels()
                assert abs(sum(pred["probs"].values()) - 1.0) < 1e-4
        calls = rawdb.query(p, "SELECT model FROM teacher_calls LIMIT 1")
        assert calls[0]["model"].startswith("local:")
        # Exports: .txt is exactly the evaluated prompt.
        txt = next((finished_project.parent / "exports").glob("*.txt"))
        assert txt.read_bytes() == p.evaluation(last["pld"]).prompt_text.encode("utf-8")
        doc = json.loads(next((finished_project.parent / "exports").glob("*.json")).read_text())
        assert len(doc["models"]["student"]["sha256"]) == 64


def test_second_phase1_run_costs_no_teacher_call(finished_project: Path) -> None:
    with Project.open(finished_project) as p:
        before = rawdb.query(p, "SELECT COUNT(*) AS n FROM teacher_calls")[0]["n"]
    r = subprocess.run([sys.executable, "-m", "pld_desktop.cli", "run", str(finished_project), "--phase", "1",
                        "--quiet"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    with Project.open(finished_project, read_only=True) as p:
        assert rawdb.query(p, "SELECT COUNT(*) AS n FROM teacher_calls")[0]["n"] == before


def _ok_calls(path: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        return [r[0] for r in conn.execute("SELECT request_hash FROM teacher_calls WHERE status = 'ok'")]
    finally:
        conn.close()


def init_project(path: Path, csv_path: Path) -> Path:
    r = subprocess.run([sys.executable, "-m", "pld_desktop.cli", "init", str(path), "--csv", str(csv_path),
                        "--text", "message", "--label", "label", "--id", "id"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return path


def wait_for_completed_calls(path: Path, proc: subprocess.Popen, n: int, timeout_s: float = 300) -> None:
    """Poll the project (read-only) until `n` teacher calls completed or the process ended."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if len(_ok_calls(path)) >= n:
                return
        except sqlite3.OperationalError:
            pass
        time.sleep(0.2)


def test_sigkill_during_phase1_then_resume_repeats_no_completed_call(tmp_path: Path) -> None:
    path = init_project(tmp_path / "k.pld", tiny_csv(tmp_path / "tiny.csv"))
    cmd = [sys.executable, "-m", "pld_desktop.cli", "run", str(path), "--phase", "1", "--teacher", "local",
           "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_completed_calls(path, proc, 3)
    assert proc.poll() is None, "phase 1 finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = _ok_calls(path)
    assert len(done) >= 3
    with Project.open(path) as p:
        assert p.integrity_check() == "ok"
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    after = _ok_calls(path)
    assert len(after) == len(set(after)), "a completed teacher call was repeated"
    assert set(done) <= set(after)
    with Project.open(path, read_only=True) as p:
        assert p.phase_states()[1]["state"] == "done"


def test_ctrl_c_stops_cleanly_and_a_rerun_resumes(tmp_path: Path) -> None:
    # More training items (22) than the local teacher takes in flight at once (at most 16 sequences), so some are
    # still queued when Ctrl-C comes: "the items in flight" finish, the queued ones wait for the rerun.
    from pld_desktop.backends.batched_generation import default_parallel_sequences
    path = init_project(tmp_path / "c.pld", tiny_csv(tmp_path / "tiny.csv", per_label=12))
    assert default_parallel_sequences(8192, 512) < 22
    cmd = [sys.executable, "-m", "pld_desktop.cli", "run", str(path), "--phase", "1", "--teacher", "local"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_completed_calls(path, proc, 1)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Stopping after the items in flight" in err and "Traceback" not in err
    with Project.open(path, read_only=True) as p:
        assert p.integrity_check() == "ok"
        assert p.phase_states()[1]["state"] == "cancelled"
        n_train = len(p.examples(split="train"))
        assert len(p.micro_rules()) < n_train
    r = subprocess.run(cmd + ["--quiet"], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    with Project.open(path, read_only=True) as p:
        assert p.phase_states()[1]["state"] == "done"
        assert len(p.micro_rules()) + len(rawdb.query(p, "SELECT DISTINCT item_key FROM failed_items")) >= n_train


def test_pld_demo_runs_end_to_end_on_the_embedded_models(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pld_desktop.cli", "demo", "--dir", str(tmp_path), "--max-iterations",
                        "1", "--quiet"], capture_output=True, text=True, timeout=2400)
    assert r.returncode == 0, r.stderr[-3000:]
    exports = {p.suffix for p in (tmp_path / "exports").iterdir()}
    assert {".json", ".md", ".txt"} <= exports, exports  # and the deployment files
    with Project.open(tmp_path / "demo.pld", read_only=True) as p:
        assert p.integrity_check() == "ok"
        assert len(p.micro_rules()) > 0 and rawdb.query(p, "SELECT COUNT(*) AS n FROM clusters")[0]["n"] > 0
        assert p.rule_sets()
        last = p.get_setting("last_evaluation")
        # The three of the paper, and the rules+examples candidate (issue 12) beside them.
        assert {"pld", "zero_shot", "few_shot"} <= {k for k in last if k != "rule_set_id"}, last
        for kind in ("pld", "zero_shot", "few_shot"):
            assert p.evaluation(last[kind]).metrics["macro_f1"] is not None
        txt = next((tmp_path / "exports").glob("*.txt"))
        assert txt.read_bytes() == p.evaluation(last["pld"]).prompt_text.encode("utf-8")
