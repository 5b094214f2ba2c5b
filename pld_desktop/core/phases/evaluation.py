"""Phase 4, evaluation: the chosen rule set zero-shot on the locked test split, against zero-shot and few-shot."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from ..calibration import calibrated_evaluation
from ..evaluate import evaluate_prompt
from ..progress import Progress
from ..project import Example, Project
from ..prompts import (
    FewShotExample,
    PromptRule,
    build_few_shot_prompt,
    build_rules_with_examples_prompt,
    build_zero_shot_prompt,
)
from ..protocols import PromptTooLong, Student
from ..sampling import stratified_sample
from ..settings import RunSettings
from ..states import PhaseState
from ..working import working_rule_set

PHASE = 4


@dataclass
class EvaluationReport:
    rule_set_id: int
    n_examples: int
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> {"evaluation_id", "metrics"}


def few_shot_examples(train: list[Example], k: int, seed: int) -> list[Example]:
    """k training examples spread over the labels (one per label first), fixed by the seed, in shuffled order."""
    picked = stratified_sample(train, k, seed)
    random.Random(seed).shuffle(picked)
    return picked


def test_examples(project: Project, settings: RunSettings) -> list[Example]:
    test = project.examples(split="test")
    if settings.max_test_examples and len(test) > settings.max_test_examples:
        test = sorted(random.Random(settings.seed).sample(test, settings.max_test_examples), key=lambda e: e.id)
    return test


def run_evaluation(project: Project, student: Student, settings: RunSettings, progress: Progress, *,
                   rule_set_id: int | None = None) -> EvaluationReport:
    rs_id = rule_set_id if rule_set_id is not None else working_rule_set(project)
    if rs_id is None:
        project.set_phase(PHASE, PhaseState.FAILED, 0, 0, "No rule set to evaluate: run phases 2-3 first.")
        raise ValueError("Phase 4 needs a rule set; run phase 2 (and 3) first.")
    rs = project.rule_set(rs_id)
    labels = project.labels()
    test = test_examples(project, settings)
    shots = few_shot_examples(project.examples(split="train"), settings.few_shot_k, settings.seed)
    prompts = {
        "pld": rs.prompt_text,
        "zero_shot": build_zero_shot_prompt(rs.task, labels, rs.meanings),
        "few_shot": build_few_shot_prompt(rs.task, labels, [FewShotExample(e.text, e.label) for e in shots],
                                          rs.meanings),
    }
    chosen = project.chosen_prompt()
    if chosen.get("rule_set") == rs_id and chosen.get("example_ids"):
        # The rules+examples candidate of the choice, with the same worked examples it was scored with on dev.
        picked = project.examples(ids=chosen["example_ids"])
        order = {i: n for n, i in enumerate(chosen["example_ids"])}
        picked.sort(key=lambda e: order[e.id])
        prompts["pld_examples"] = build_rules_with_examples_prompt(
            rs.task, labels, [PromptRule(r.text, r.label) for r in rs.rules if r.enabled],
            [FewShotExample(e.text, e.label) for e in picked], rs.meanings)
    report = EvaluationReport(rule_set_id=rs_id, n_examples=len(test))
    if test:  # every prompt must fit before any is scored: a half-done comparison is not a result
        longest = max(test, key=lambda e: len(e.text)).text
        for kind, prompt in prompts.items():
            try:
                student.check_fits(prompt, longest, labels)
            except PromptTooLong as exc:
                raise PromptTooLong(f"The {kind.replace('_', '-')} prompt does not fit: {exc}") from None
    project.set_phase(PHASE, PhaseState.RUNNING, 0, len(prompts), "")
    for n, (kind, prompt) in enumerate(prompts.items(), 1):
        eval_id, metrics = evaluate_prompt(project, student, prompt, test, kind=kind, split="test", progress=progress,
                                           rule_set_id=rs_id if kind in ("pld", "pld_examples") else None,
                                           stage=f"Phase 4: {kind.replace('_', '-')} on {len(test)} test examples")
        # Calibrated scores beside the raw ones, for every prompt alike (the project's switch is decided on dev).
        calibrated = calibrated_evaluation(project, student, eval_id, test)["metrics"] if test else None
        report.results[kind] = {"evaluation_id": eval_id, "metrics": metrics, "calibrated_metrics": calibrated}
        project.set_phase(PHASE, PhaseState.RUNNING, n, len(prompts), f"{kind} done")
    project.set_last_evaluation({k: v["evaluation_id"] for k, v in report.results.items()} | {"rule_set_id": rs_id})
    summary = ", ".join(f"{k} macro-F1 {v['metrics']['macro_f1']:.3f}"
                        + (f" (calibrated {v['calibrated_metrics']['macro_f1']:.3f})"
                           if v["calibrated_metrics"] else "")
                        for k, v in report.results.items())
    project.set_phase(PHASE, PhaseState.DONE, len(prompts), len(prompts), summary)
    progress.log(summary)
    return report
