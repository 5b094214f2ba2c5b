"""Phase 1, supervised instruction extraction: one teacher call per training example -> one micro-rule."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..backends import Teacher, TeacherRequest
from ..progress import Progress
from ..project import Project
from ..settings import RunSettings
from ..teacher_calls import TeacherJob, TeacherOutcome, run_teacher_jobs
from ..teacher_prompts import EXTRACTION_SYSTEM, extraction_schema, extraction_user, rule_pattern

PHASE = 1


@dataclass
class ExtractionReport:
    total: int = 0
    already_done: int = 0
    cached: int = 0
    called: int = 0
    failed: int = 0
    label_mismatches: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def extraction_jobs(project: Project, settings: RunSettings) -> list[TeacherJob]:
    """The teacher requests for every training example that has no micro-rule yet (train split only)."""
    labels = tuple(project.labels())
    schema = extraction_schema(labels)
    have = project.micro_rule_example_ids()
    jobs = []
    for ex in project.examples(split="train"):
        if ex.id in have:
            continue
        user = extraction_user(settings.task, labels, settings.label_meanings, ex.text, ex.label)
        request = TeacherRequest(EXTRACTION_SYSTEM, user, schema, "extraction", rule_pattern([ex.label]))
        jobs.append(TeacherJob(f"example:{ex.ext_id}", request, (ex.id,)))
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
        parsed = outcome.parsed
        label = getattr(parsed, "label")
        if label != gold[example_id]:
            # The rule explains the gold label; a teacher that names another label is noted, not trusted.
            report.label_mismatches += 1
        project.add_micro_rule(example_id, getattr(parsed, "reasoning"), getattr(parsed, "rule"), gold[example_id],
                               outcome.call_id or 0)

    project.set_phase(PHASE, "running", report.already_done, len(train))
    _, stats = run_teacher_jobs(project, teacher, jobs, progress, phase=PHASE,
                                max_attempts=settings.teacher_max_attempts, on_outcome=store,
                                done_offset=report.already_done, total=len(train))
    report.cached, report.called, report.failed, report.failures = (stats.cached, stats.called, stats.failed,
                                                                    stats.failures)
    n_rules = len(project.micro_rule_example_ids())
    msg = f"{n_rules} micro-rules from {len(train)} training examples; {report.failed} failed"
    if report.label_mismatches:
        msg += f"; {report.label_mismatches} rules named another label than the gold one (kept under the gold label)"
    project.set_phase(PHASE, "done" if n_rules else "failed", n_rules, len(train), msg)
    progress.log(msg)
    return report
