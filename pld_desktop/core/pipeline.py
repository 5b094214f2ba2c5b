"""Runs the four phases in order on a project, creating each model backend only when a phase needs it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from .backends import Embedder, Student, Teacher
from .phases.closed_loop import run_closed_loop
from .phases.evaluation import run_evaluation
from .phases.extraction import run_extraction
from .phases.synthesis import run_synthesis
from .progress import Cancelled, Progress
from .project import Project
from .settings import RunSettings, save_settings
from .teacher_calls import QuotaExhausted

PHASE_NAMES = {1: "Extraction", 2: "Synthesis", 3: "Closed loop", 4: "Evaluation"}


class BackendProvider(Protocol):
    """Creates (and later closes) the model backends for a run's settings."""

    def teacher(self, settings: RunSettings) -> Teacher: ...

    def student(self, settings: RunSettings) -> Student: ...

    def embedder(self, settings: RunSettings) -> Embedder: ...

    def close(self) -> None: ...


@dataclass
class PipelineReport:
    phases: dict[int, Any] = field(default_factory=dict)
    status: str = "done"  # done | cancelled | quota_exhausted | failed
    message: str = ""


def run_pipeline(project: Project, settings: RunSettings, backends: BackendProvider, progress: Progress, *,
                 phases: Sequence[int] = (1, 2, 3, 4), command: str = "run") -> PipelineReport:
    """Run `phases` in order; a cancelled or quota-stopped run leaves a resumable state and says so."""
    save_settings(project, settings)
    project.start_run(command, settings.to_json())
    report = PipelineReport()
    current = 0
    try:
        for phase in sorted(phases):
            current = phase
            _check_prerequisites(project, phase, set(phases))
            if phase == 1:
                teacher = backends.teacher(settings)
                if settings.teacher_batch:
                    from .batch_extraction import PollSchedule, run_batch_extraction
                    if not hasattr(teacher, "submit_batch"):
                        raise ValueError("Batch mode needs the Gemini teacher (--teacher gemini).")
                    poll = PollSchedule(settings.batch_poll_initial_s, 1.5, settings.batch_poll_max_s)
                    report.phases[1] = run_batch_extraction(project, teacher, settings, progress, poll=poll).extraction
                else:
                    report.phases[1] = run_extraction(project, teacher, settings, progress)
            elif phase == 2:
                report.phases[2] = run_synthesis(project, backends.teacher(settings), backends.embedder(settings),
                                                 settings, progress)
            elif phase == 3:
                report.phases[3] = run_closed_loop(project, backends.teacher(settings), backends.student(settings),
                                                   settings, progress, embedder=backends.embedder(settings))
            elif phase == 4:
                report.phases[4] = run_evaluation(project, backends.student(settings), settings, progress)
            else:
                raise ValueError(f"There is no phase {phase}; phases are 1-4.")
    except Cancelled:
        report.status, report.message = "cancelled", f"Stopped during phase {current}; rerun to resume."
        project.set_phase(current, "cancelled", message=report.message)
    except QuotaExhausted as exc:
        report.status, report.message = "quota_exhausted", str(exc)
        project.set_phase(current, "paused", message=report.message)
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        report.status, report.message = "failed", f"Phase {current} failed: {exc}"
        project.set_phase(current, "cancelled" if interrupted else "failed",
                          message="Stopped at once; rerun to resume." if interrupted else str(exc)[:500])
        project.finish_run("cancelled" if interrupted else "failed")
        raise
    project.finish_run(report.status)
    return report


# Teacher request kinds per phase (teacher_calls.kind), for per-phase token and cost figures.
PHASE_TEACHER_KINDS = {1: ("extraction",), 2: ("merge", "review"), 3: ("resolution",)}


def estimate_teacher_run(project: Project, settings: RunSettings, phases: Sequence[int]) -> str:
    """Words for the user before a paid run: calls, tokens and cost still to come (a rough upper figure)."""
    train = project.examples(split="train")
    todo = len(train) - len(project.micro_rule_example_ids()) if 1 in phases else 0
    chars = sum(len(e.text) for e in train) / max(1, len(train))
    tokens_in = int(todo * (chars / 4 + 350))
    tokens_out = todo * 180
    cost = (tokens_in * settings.price_in_per_million + tokens_out * settings.price_out_per_million) / 1e6
    if settings.teacher_batch:
        from .batch_extraction import BATCH_PRICE_FACTOR
        cost *= BATCH_PRICE_FACTOR
    return (f"Phase 1{' (batch mode, half price)' if settings.teacher_batch else ''} needs about {todo} teacher calls (~{tokens_in:,} input and ~{tokens_out:,} output tokens, "
            f"~${cost:.2f} at the configured prices); phases 2-3 add about {max(1, int(len(train) ** 0.5))} + "
            f"{settings.loop_max_iterations} calls.")


def _check_prerequisites(project: Project, phase: int, requested: set[int]) -> None:
    """Say what to run first before any model is loaded or any key is asked for."""
    if phase == 2 and 1 not in requested and not project.micro_rule_example_ids():
        raise ValueError("Phase 2 needs micro-rules; run phase 1 (extraction) first.")
    if phase == 3 and 2 not in requested and project.get_setting("synthesis_rule_set_id") is None:
        raise ValueError("Phase 3 needs a rule set; run phase 2 (synthesis) first.")
    if phase == 4 and not requested & {2, 3} and project.get_setting("chosen_rule_set_id") is None \
            and project.get_setting("synthesis_rule_set_id") is None:
        raise ValueError("Phase 4 needs a rule set; run phases 2 and 3 first.")
