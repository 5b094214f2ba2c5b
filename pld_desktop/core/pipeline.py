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
from .reachability import TeacherUnreachable, check_reachable
from .settings import RunSettings, save_settings
from .teacher_calls import QuotaExhausted

PHASE_NAMES = {1: "Extraction", 2: "Synthesis", 3: "Closed loop", 4: "Evaluation"}


class BackendProvider(Protocol):
    """Creates (and later closes) the model backends for a run's settings."""

    def teacher(self, settings: RunSettings) -> Teacher: ...

    def student(self, settings: RunSettings) -> Student: ...

    def embedder(self, settings: RunSettings) -> Embedder: ...

    def teacher_endpoint(self, settings: RunSettings) -> str | None:
        """The address the teacher calls (probed before a phase that calls it), or None for one in-process."""
        ...

    def close(self) -> None: ...


@dataclass
class PipelineReport:
    phases: dict[int, Any] = field(default_factory=dict)
    status: str = "done"  # done | cancelled | quota_exhausted | failed
    message: str = ""


def run_pipeline(project: Project, settings: RunSettings, backends: BackendProvider, progress: Progress, *,
                 phases: Sequence[int] = (1, 2, 3, 4), command: str = "run") -> PipelineReport:
    """Run `phases` in order; a cancelled or quota-stopped run leaves a resumable state and says so.

    The project's run lock is held throughout (ProjectInUse if another live run holds it), and the settings are
    validated before anything is saved, so two runs never write one project and bad options never stick.
    """
    from .run_lock import RunLock
    from .settings_check import check_settings

    check_settings(settings)
    with RunLock(project.path, command):
        return _run_locked(project, settings, backends, progress, phases, command)


def _run_locked(project: Project, settings: RunSettings, backends: BackendProvider, progress: Progress,
                phases: Sequence[int], command: str) -> PipelineReport:
    save_settings(project, settings)
    project.start_run(command, settings.to_json())
    report = PipelineReport()
    current = 0
    probed = False
    try:
        for phase in sorted(phases):
            current = phase
            _check_prerequisites(project, phase, set(phases))
            if not probed and _needs_teacher(project, phase):
                probed = True
                url = backends.teacher_endpoint(settings)
                if url:
                    progress.log(f"Checking that the teacher answers at {_host_port(url)}...")
                    check_reachable(url)
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
                _fail_if_every_item_failed(project, 1, report.phases[1])
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
    except (TeacherUnreachable, PhaseFailed) as exc:
        # Not a crash: the cause is known and said once, and the phase stays resumable.
        report.status, report.message = "failed", f"Phase {current} failed: {exc}"
        project.set_phase(current, "failed", message=str(exc)[:500])
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


def shown_phase_state(project_path: Any, state: str) -> str:
    """The state to show for a phase: "running" only while a live run holds the project; a phase left
    "running" by a process that died (SIGKILL, power loss) is "interrupted" (resumable: a rerun continues)."""
    from .run_lock import holder_of
    if state == "running" and holder_of(project_path) is None:
        return "interrupted"
    return state


class PhaseFailed(Exception):
    """A phase ended without producing anything (e.g. every item failed); the message gives the cause."""


def _needs_teacher(project: Project, phase: int) -> bool:
    """Whether `phase` still has teacher work to do (a finished phase reruns from the cache, offline)."""
    if phase not in (1, 2, 3):
        return False
    if phase == 1:
        return len(project.micro_rule_example_ids()) < len(project.examples(split="train"))
    return (project.phase_states().get(phase) or {}).get("state") != "done"


def _host_port(url: str) -> str:
    from urllib.parse import urlparse
    parsed = urlparse(url)
    return f"{parsed.hostname}:{parsed.port or (443 if parsed.scheme == 'https' else 80)}"


def _fail_if_every_item_failed(project: Project, phase: int, phase_report: Any) -> None:
    """A phase that attempted items and got none is a failure with its cause, never "Finished"."""
    failed = getattr(phase_report, "failed", 0)
    produced = getattr(phase_report, "cached", 0) + getattr(phase_report, "called", 0) - failed
    if failed and produced <= 0 and not project.micro_rule_example_ids():
        failures = getattr(phase_report, "failures", []) or []
        cause = failures[0][1] if failures else "no reason recorded"
        raise PhaseFailed(f"all {failed} items failed; the first said: {cause}")


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
