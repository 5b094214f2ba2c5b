"""The analyst's loop on the real bundled student (Gemma 3 270M): dev scores of an edit, rule impact, and the
exported classify script reproducing the app's test labels. Slow: marked `slow`, run in CI."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from pld_desktop.backends.llama_student import LlamaStudent
from pld_desktop.core.export import export_rule_set
from pld_desktop.core.impact import rule_impact
from pld_desktop.core.phases.evaluation import run_evaluation
from pld_desktop.core.pipeline import run_pipeline
from pld_desktop.core.progress import SilentProgress
from pld_desktop.core.project import Project
from pld_desktop.core.rule_edits import SetEnabled, save_version
from pld_desktop.core.scoring import score_version, version_history
from pld_desktop.core.working import require_working_rule_set

from .fakes import FakeBackends
from .helpers import make_project, settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> LlamaStudent:
    s = LlamaStudent(n_ctx=4096, state_dir=tmp_path_factory.mktemp("prefix-states"))
    yield s
    s.close()


@pytest.fixture(scope="module")
def edited(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Phases 1-3 with the doubles (rules to work on), then one edit: the working version is an edit."""
    folder = tmp_path_factory.mktemp("real-loop")
    project = make_project(folder)
    assert run_pipeline(project, settings(), FakeBackends(), SilentProgress(), phases=(1, 2, 3)).status == "done"
    chosen = require_working_rule_set(project)
    rules = project.rule_set(chosen).rules
    save_version(project, chosen, SetEnabled(rules[-1].uid, False).apply(rules)[0], "edit: disable the last")
    project.close()
    return folder / "p.pld"


def test_dev_score_and_rule_impact_on_the_real_student(edited: Path, student: LlamaStudent) -> None:
    with Project.open(edited) as project:
        working = require_working_rule_set(project)
        result = score_version(project, student, split="dev", settings=settings())
        n_dev = len(project.examples(split="dev"))
        assert result.rule_set_id == working and result.score.n == n_dev and result.parent is not None
        assert result.zero_shot is not None and result.few_shot is not None
        row = next(r for r in version_history(project).rows if r.rule_set_id == working)
        assert row.is_working and row.dev is not None and row.dev.macro_f1 == result.score.macro_f1
        report = rule_impact(project, student, settings=settings())
        enabled = [r for r in project.rule_set(working).rules if r.enabled]
        assert report.complete and [r.uid for r in report.rules] == [r.uid for r in enabled]
        assert report.macro_f1 == pytest.approx(result.score.macro_f1)
        dev = {e.ext_id: e for e in project.examples(split="dev")}
        for imp in report.rules:
            assert imp.delta == pytest.approx(report.macro_f1 - imp.macro_f1_without)
            assert all(f["example"] in dev and f["with"] != f["without"] for f in imp.flips)


def test_exported_script_reproduces_the_apps_test_labels(edited: Path, student: LlamaStudent,
                                                          tmp_path: Path) -> None:
    with Project.open(edited) as project:
        working = require_working_rule_set(project)
        report = run_evaluation(project, student, settings(), SilentProgress())
        assert report.rule_set_id == working
        app = project.predictions(report.results["pld"]["evaluation_id"])
        test = project.examples(split="test")
        (script,) = export_rule_set(project, tmp_path, ("classify-py",))
    source = tmp_path / "test.csv"
    with open(source, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "message"])
        for e in test:
            writer.writerow([e.ext_id, e.text])
    out = tmp_path / "labelled.csv"
    proc = subprocess.run([sys.executable, str(script), str(source), "--out", str(out)], capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out, newline="", encoding="utf-8") as fh:
        got = {r["id"]: r for r in csv.DictReader(fh)}
    assert set(got) == {e.ext_id for e in test}
    for e in test:
        assert got[e.ext_id]["predicted"] == app[e.id]["predicted"], e.ext_id
        # Same prompt bytes, same logits schedule, same search: the same probability, to the printed digits.
        assert float(got[e.ext_id]["confidence"]) == pytest.approx(app[e.id]["probs"][app[e.id]["predicted"]],
                                                                  abs=2e-6)
