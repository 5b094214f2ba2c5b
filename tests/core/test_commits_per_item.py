"""The project file is written with one commit per completed item (issue 14): counted with sqlite3's trace hook."""

from __future__ import annotations

from pathlib import Path

from pld_desktop.core.pipeline import run_pipeline
from pld_desktop.core.progress import SilentProgress
from pld_desktop.core.project import Project

from ..fakes import FakeBackends
from ..helpers import make_project, settings


def _commits(project: Project, backends: FakeBackends, phase: int) -> list[list[str]]:
    """Run `phase` and return the write statements of each COMMIT, in order."""
    groups: list[list[str]] = [[]]

    def trace(statement: str) -> None:
        words = " ".join(statement.split()).upper()
        if words.startswith("COMMIT"):
            groups.append([])
        elif words.startswith(("INSERT", "UPDATE", "DELETE", "REPLACE")):
            groups[-1].append(words)

    project._conn.set_trace_callback(trace)
    try:
        assert run_pipeline(project, settings(), backends, SilentProgress(), phases=[phase]).status == "done"
    finally:
        project._conn.set_trace_callback(None)
    assert groups[-1] == [], "writes left uncommitted"
    return [g for g in groups if g]


def _count(group: list[str], table: str) -> int:
    return sum(1 for s in group if f" INTO {table.upper()} " in s or s.startswith(f"UPDATE {table.upper()} "))


def test_phase1_commits_each_item_once_with_its_teacher_call_and_micro_rule(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    n_train = len(project.examples(split="train"))
    groups = _commits(project, FakeBackends(), 1)
    item_commits = [g for g in groups if _count(g, "teacher_calls") or _count(g, "micro_rules")]
    assert len(item_commits) == n_train
    for g in item_commits:  # the call record and its micro-rule land together, one item per commit
        assert _count(g, "teacher_calls") == 1 and _count(g, "micro_rules") == 1, g
    assert len(groups) - n_train <= 10  # the rest is run/phase bookkeeping, not per item
    project.close()


def test_phases_3_and_4_commit_each_prediction_once_and_a_versions_conflicts_together(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    backends = FakeBackends()
    assert run_pipeline(project, settings(), backends, SilentProgress(), phases=[1, 2]).status == "done"
    for phase in (3, 4):
        groups = _commits(project, backends, phase)
        predicted = [g for g in groups if _count(g, "predictions")]
        assert predicted, f"phase {phase} stored no predictions"
        for g in predicted:
            assert _count(g, "predictions") == 1, g
        conflict_groups = [g for g in groups if _count(g, "conflicts")]
        rule_sets = sum(_count(g, "rule_sets") for g in groups)
        assert len(conflict_groups) <= max(rule_sets, 1)  # never one commit per conflict
    project.close()
