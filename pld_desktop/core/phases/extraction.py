"""Phase 1, supervised instruction extraction: one teacher call per training example -> one micro-rule."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..progress import Progress
from ..project import Project
from ..protocols import Teacher, TeacherRequest
from ..settings import RunSettings
from ..states import PhaseState
from ..teacher_calls import TeacherJob, TeacherOutcome, run_teacher_jobs
from ..teacher_prompts import (
    EXTRACTION_SYSTEM,
    copy_reason,
    extraction_schema,
    extraction_user,
    off_label_reason,
    rule_pattern,
)

PHASE = 1


@dataclass
class ExtractionReport:
    total: int = 0
    already_done: int = 0
    cached: int = 0
    called: int = 0
    failed: int = 0
    label_mismatches: int = 0
    copied: int = 0       # micro-rules kept flagged because they still copied their example after the retries
    given_up: int = 0     # items given up in an earlier run, not retried (pld run --retry-failed retries them)
    failures: list[tuple[str, str]] = field(default_factory=list)


def micro_rule_checks(gold: str, labels: Sequence[str], example_text: str) -> tuple[Any, Any]:
    """(hard, soft) checks of a micro-rule: its text must lead to the gold label; it should not copy its example."""
    def hard(parsed: Any) -> str | None:
        return off_label_reason(parsed.rule, gold, labels)

    def soft(parsed: Any) -> str | None:
        return copy_reason(parsed.rule, [example_text])
    return hard, soft


def extraction_jobs(project: Project, settings: RunSettings) -> list[TeacherJob]:
    """The teacher requests for every training example that has no micro-rule yet (train split only).

    The teacher explains the label it is given: the schema's label field allows the gold label only (a
    one-value enum), and a rule whose text leads to another label is retried with the reason."""
    labels = tuple(project.labels())
    have = project.micro_rule_example_ids()
    jobs = []
    for ex in project.examples(split="train"):
        if ex.id in have:
            continue
        user = extraction_user(settings.task, labels, settings.label_meanings, ex.text, ex.label)
        request = TeacherRequest(EXTRACTION_SYSTEM, user, extraction_schema((ex.label,)), "extraction",
                                 rule_pattern([ex.label]))
        hard, soft = micro_rule_checks(ex.label, labels, ex.text)
        jobs.append(TeacherJob(f"example:{ex.ext_id}", request, (ex.id,), check=hard, soft_check=soft))
    return jobs


def run_extraction(project: Project, teacher: Teacher, settings: RunSettings, progress: Progress) -> ExtractionReport:
    train = project.examples(split="train")
    report = ExtractionReport(total=len(train))
    report.already_done = len(project.micro_rule_example_ids())
    jobs = extraction_jobs(project, settings)
    by_key = {job.key: job for job in jobs}
    gold = {ex.id: ex.label for ex in train}
    progress.begin("Phase 1: extraction", len(train))
    progress.report(report.already_done, len(train), "")

    def store(outcome: TeacherOutcome) -> None:
        if outcome.parsed is None:
            progress.log(f"{outcome.key}: failed - {outcome.error}", "warning")
            return
        example_id = by_key[outcome.key].example_ids[0]
        parsed: Any = outcome.parsed  # a model built at run time from the labels (teacher_prompts)
        label = parsed.label
        if label != gold[example_id]:
            # Cannot happen with the one-value enum; kept for replies cached before it.
            report.label_mismatches += 1
        if outcome.flag:
            report.copied += 1
        project.add_micro_rule(example_id, parsed.reasoning, parsed.rule, gold[example_id],
                               outcome.call_id or 0)

    project.set_phase(PHASE, PhaseState.RUNNING, report.already_done, len(train))
    _, stats = run_teacher_jobs(project, teacher, jobs, progress, phase=PHASE,
                                max_attempts=settings.teacher_max_attempts, on_outcome=store,
                                done_offset=report.already_done, total=len(train))
    report.cached, report.called, report.failed, report.failures = (stats.cached, stats.called, stats.failed,
                                                                    stats.failures)
    report.given_up = stats.given_up
    n_rules = len(project.micro_rule_example_ids())
    msg = f"{n_rules} micro-rules from {len(train)} training examples; {report.failed} failed"
    if report.given_up:
        msg += (f"; {report.given_up} item(s) given up earlier, not retried (pld run --retry-failed, or "
                "Retry failed items in the window)")
    if report.copied:
        msg += f"; {report.copied} copy their example (kept out of synthesis, flagged)"
    if report.label_mismatches:
        msg += f"; {report.label_mismatches} rules named another label than the gold one (kept under the gold label)"
    project.set_phase(PHASE, PhaseState.DONE if n_rules else PhaseState.FAILED, n_rules, len(train), msg)
    progress.log(msg)
    return report
