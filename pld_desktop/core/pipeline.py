"""Runs the four phases in order on a project, creating each model backend only when a phase needs it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .evaluate import StudentFailed, evaluate_prompt
from .phases.closed_loop import run_closed_loop
from .phases.evaluation import run_evaluation
from .phases.extraction import run_extraction
from .phases.synthesis import run_synthesis
from .progress import Cancelled, Progress
from .project import CHOSEN_RULE_SET, SYNTHESIS_RULE_SET, Example, Project
from .prompts import (
    FewShotExample,
    PromptRule,
    build_few_shot_prompt,
    build_rules_with_examples_prompt,
    build_zero_shot_prompt,
)
from .protocols import BatchTeacher, Embedder, PromptTooLong, Student, Teacher
from .reachability import TeacherUnreachable, check_reachable
from .sampling import stratified_sample
from .settings import RunSettings, save_settings
from .states import PhaseState, RunStatus
from .teacher_calls import QuotaExhausted
from .working import pipeline_choice

PHASE_NAMES = {1: "Extraction", 2: "Synthesis", 3: "Closed loop", 4: "Evaluation"}
# The heavy libraries the phases import on first use (clustering, metrics): scikit-learn brings ~800 scikit-learn
# and SciPy modules. A window process imports them up front with the garbage collector paused (ui/tasks.py).
PHASE_LIBRARIES = ("sklearn.cluster", "sklearn.metrics")


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
    phases: dict[int | str, Any] = field(default_factory=dict)  # "choice": the prompt chosen on dev
    status: RunStatus = RunStatus.DONE
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
                    if not isinstance(teacher, BatchTeacher):
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
                _fail_if_every_rewrite_failed(report.phases[3])
                report.phases["choice"] = choose_prompt(project, backends.student(settings), settings, progress)
                if report.phases["choice"].get("warning"):
                    progress.log(report.phases["choice"]["warning"], "warning")
            elif phase == 4:
                report.phases[4] = run_evaluation(project, backends.student(settings), settings, progress)
            else:
                raise ValueError(f"There is no phase {phase}; phases are 1-4.")
    except (TeacherUnreachable, PhaseFailed, StudentFailed) as exc:
        # Not a crash: the cause is known and said once, and the phase stays resumable.
        report.status, report.message = RunStatus.FAILED, f"Phase {current} failed: {exc}"
        project.set_phase(current, PhaseState.FAILED, message=str(exc)[:500])
    except Cancelled:
        report.status, report.message = RunStatus.CANCELLED, f"Stopped during phase {current}; rerun to resume."
        project.set_phase(current, PhaseState.CANCELLED, message=report.message)
    except QuotaExhausted as exc:
        report.status, report.message = RunStatus.QUOTA_EXHAUSTED, str(exc)
        project.set_phase(current, PhaseState.PAUSED, message=report.message)
    except BaseException as exc:
        interrupted = isinstance(exc, KeyboardInterrupt)
        report.status, report.message = RunStatus.FAILED, f"Phase {current} failed: {exc}"
        project.set_phase(current, PhaseState.CANCELLED if interrupted else PhaseState.FAILED,
                          message="Stopped at once; rerun to resume." if interrupted else str(exc)[:500])
        project.finish_run(RunStatus.CANCELLED if interrupted else RunStatus.FAILED)
        raise
    project.finish_run(report.status)
    return report


def shown_phase_state(project_path: Any, state: str) -> str:
    """The state to show for a phase: "running" only while a live run holds the project; a phase left
    "running" by a process that died (SIGKILL, power loss) is "interrupted" (resumable: a rerun continues)."""
    from .run_lock import holder_of
    if state == PhaseState.RUNNING and holder_of(project_path) is None:
        return PhaseState.INTERRUPTED
    return state


class PhaseFailed(Exception):
    """A phase ended without producing anything (e.g. every item failed); the message gives the cause."""


def _needs_teacher(project: Project, phase: int) -> bool:
    """Whether `phase` still has teacher work to do (a finished phase reruns from the cache, offline)."""
    if phase not in (1, 2, 3):
        return False
    if phase == 1:
        return len(project.micro_rule_example_ids()) < len(project.examples(split="train"))
    return (project.phase_states().get(phase) or {}).get("state") != PhaseState.DONE


def _host_port(url: str) -> str:
    from urllib.parse import urlparse
    parsed = urlparse(url)
    return f"{parsed.hostname}:{parsed.port or (443 if parsed.scheme == 'https' else 80)}"


def _fail_if_every_item_failed(project: Project, phase: int, phase_report: Any) -> None:
    """A phase that attempted items and got none is a failure with its cause, never "Finished": every item
    failed now, or every item was given up in an earlier run and not retried."""
    if project.micro_rule_example_ids() or not project.examples(split="train"):
        return
    failed = getattr(phase_report, "failed", 0)
    given_up = getattr(phase_report, "given_up", 0)
    failures = getattr(phase_report, "failures", []) or []
    cause = failures[0][1] if failures else "no reason recorded"
    if failed:
        raise PhaseFailed(f"all {failed + given_up} items failed; the first said: {cause}")
    if given_up:
        reasons = [f["reason"] for f in project.failed_items(phase) if f.get("reason")]
        raise PhaseFailed(f"all {given_up} items were given up in an earlier run and are not sent again; rerun "
                          f"with --retry-failed (the window: Retry failed items) to try them again. The last "
                          f"said: {reasons[-1] if reasons else 'no reason recorded'}")


def _fail_if_every_rewrite_failed(loop_report: Any) -> None:
    """The closed loop's per-item teacher work is one rewrite per round: if every round's rewrite failed
    (the teacher refused, timed out or answered nothing usable each time), phase 3 failed, with the cause."""
    rounds = getattr(loop_report, "rounds", []) or []
    settled = str(getattr(loop_report, "stopped_because", "")).startswith("no failures")  # nothing left to fix
    # Rewrites the teacher wrote but the check rejected (empty, a label dropped, unchanged, cut) are failed attempts,
    # reported as such, and the loop keeps its best rules: a small teacher often does that, and phases 4 and the
    # exports still have a rule set. Only a teacher that gave no usable answer at all fails the phase.
    if rounds and not settled and all(r.get("failed") and not r.get("useless") for r in rounds):
        raise PhaseFailed(f"every teacher rewrite failed ({len(rounds)} round(s)); the first: "
                          f"{str(rounds[0].get('note', '')).removeprefix('failed attempt: ')}")


def retry_failed_items(project: Project, phases: Sequence[int] | None = None) -> int:
    """Let the next run retry the teacher requests given up earlier (``pld run --retry-failed``, the window's
    *Retry failed items*); returns how many will be retried."""
    return project.clear_given_up(phases)


def rules_with_examples(project: Project, rule_set_id: int, settings: RunSettings) -> tuple[str, list[int]]:
    """The rules+examples candidate: the rules plus one training example per label, for each label the one the
    rules got most confidently wrong on a training sample when there is one (else a seeded pick)."""
    rs = project.rule_set(rule_set_id)
    train = project.examples(split="train")
    wrong: dict[str, tuple[float, Example]] = {}
    by_id = {e.id: e for e in train}
    for ev_id in project.done_evaluation_ids(rule_set_id=rule_set_id, split="train", prompt_sha256=rs.prompt_sha256):
        for ex_id, p in project.predictions(ev_id).items():
            e = by_id.get(ex_id)
            if e is None or p["predicted"] == e.label:
                continue
            conf = float(p["probs"].get(p["predicted"], 0.0))
            if e.label not in wrong or conf > wrong[e.label][0]:
                wrong[e.label] = (conf, e)
    fallback = {e.label: e for e in stratified_sample(train, len(rs.labels) * 3, settings.seed + 7)}
    picked = [wrong[lab][1] if lab in wrong else fallback[lab] for lab in rs.labels if lab in wrong or lab in fallback]
    ids = [e.id for e in picked]
    return examples_prompt(project, rule_set_id, ids), ids


def examples_prompt(project: Project, rule_set_id: int, example_ids: Sequence[int]) -> str:
    """The rules+examples prompt of a rule set with the given worked examples, in that order."""
    rs = project.rule_set(rule_set_id)
    by_id = {e.id: e for e in project.examples(ids=example_ids)}
    shots = [FewShotExample(by_id[i].text, by_id[i].label) for i in example_ids if i in by_id]
    return build_rules_with_examples_prompt(rs.task, rs.labels, [PromptRule(r.text, r.label)
                                                                 for r in rs.rules if r.enabled],
                                            shots, rs.meanings)


def baseline_prompts(project: Project, rule_set_id: int, settings: RunSettings) -> dict[str, str]:
    """Zero-shot and 5-shot prompts read the same task and label meanings as the rules (as phase 4 does)."""
    from .phases.evaluation import few_shot_examples
    rs = project.rule_set(rule_set_id)
    labels = project.labels()
    shots = few_shot_examples(project.examples(split="train"), settings.few_shot_k, settings.seed)
    return {"zero_shot": build_zero_shot_prompt(rs.task, labels, rs.meanings),
            "few_shot": build_few_shot_prompt(rs.task, labels, [FewShotExample(e.text, e.label) for e in shots],
                                              rs.meanings)}


def choose_prompt(project: Project, student: Student, settings: RunSettings, progress: Progress) -> dict[str, Any]:
    """The prompt to ship: the best on dev among the rule versions of the run and the rules+examples candidate,
    next to zero-shot and 5-shot on dev; calibration is switched on when it raises the chosen prompt's dev
    macro-F1. Every score is a cached evaluation, so a rerun costs nothing. Saved as the setting `chosen`."""
    from .calibration import calibrated_evaluation
    dev = project.examples(split="dev")
    loop_choice = pipeline_choice(project)
    versions = [loop_choice, project.rule_set_pointer(SYNTHESIS_RULE_SET)]
    versions += [r["candidate_rule_set_id"] for r in project.loop_rounds() if r["dev_macro_f1"] is not None]
    scores: dict[int, tuple[int, float]] = {}
    for rs_id in dict.fromkeys(v for v in versions if v is not None):
        try:
            eval_id, m = evaluate_prompt(project, student, project.rule_set(rs_id).prompt_text, dev, kind="pld",
                                         split="dev", progress=progress, rule_set_id=rs_id,
                                         stage=f"Choice: rules v{rs_id} on dev")
        except PromptTooLong:
            continue
        scores[rs_id] = (eval_id, float(m["macro_f1"]))
    if not scores:
        return {}
    best_rs = loop_choice if loop_choice in scores else next(iter(scores))
    for rs_id, (_, f1) in scores.items():  # strictly better only: the loop's choice wins ties
        if f1 > scores[best_rs][1]:
            best_rs = rs_id
    rows: dict[str, dict[str, Any]] = {"rules": {"eval_id": scores[best_rs][0], "f1": scores[best_rs][1]}}
    ex_prompt, ex_ids = rules_with_examples(project, best_rs, settings)
    prompts = {"rules+examples": ex_prompt, **baseline_prompts(project, best_rs, settings)}
    for name, prompt in prompts.items():
        try:
            eval_id, m = evaluate_prompt(project, student, prompt, dev, kind=name.replace("+", "_"), split="dev",
                                         progress=progress, rule_set_id=best_rs if name == "rules+examples" else None,
                                         stage=f"Choice: {name} on dev")
        except PromptTooLong as exc:
            progress.log(f"Choice: the {name} prompt does not fit the student ({exc})", "warning")
            continue
        rows[name] = {"eval_id": eval_id, "f1": float(m["macro_f1"])}
    for row in rows.values():  # the same calibration for every prompt
        calibrated_metrics = calibrated_evaluation(project, student, row["eval_id"], dev)["metrics"]
        row["f1_calibrated"] = float(calibrated_metrics["macro_f1"])
    chosen, calibrated = pick_rules_prompt(rows)
    field_ = "f1_calibrated" if calibrated else "f1"
    zero = rows.get("zero_shot", {}).get(field_)
    few = rows.get("few_shot", {}).get(field_)
    baselines = {k: best_mode(rows[k]) for k in ("zero_shot", "few_shot") if k in rows}
    result: dict[str, Any] = {
        "rule_set": best_rs, "prompt": chosen, "dev_macro_f1": rows[chosen][field_],
        "zero_shot_dev_macro_f1": zero, "few_shot_dev_macro_f1": few, "calibrated": calibrated,
        "dev_raw": {k: v["f1"] for k, v in rows.items()},
        "dev_calibrated": {k: v["f1_calibrated"] for k, v in rows.items()},
        "baselines_best_dev": {k: {"macro_f1": f1, "mode": mode} for k, (f1, mode) in baselines.items()},
        "example_ids": ex_ids, "dev_evaluations": {k: v["eval_id"] for k, v in rows.items()}, "warning": "",
    }
    result["warning"] = choice_warning(rows, chosen, calibrated)
    project.set_rule_set_pointer(CHOSEN_RULE_SET, best_rs)
    project.set_chosen_prompt(result)
    return result


def choice_warning(rows: dict[str, dict[str, Any]], chosen: str, calibrated: bool) -> str:
    """Words for the user when the chosen rules prompt (the best rules prompt on dev in either mode) does not beat
    zero-shot, or does not reach 5-shot, on dev; empty when it does. The baselines are taken at their best, raw or
    calibrated, since the project could ship either one so."""
    best_rules_f1 = float(rows[chosen]["f1_calibrated" if calibrated else "f1"])
    baselines: dict[str, tuple[float, str]] = {k: best_mode(rows[k]) for k in ("zero_shot", "few_shot") if k in rows}

    def said(name: str) -> str:
        f1, mode = baselines.get(name, (float("nan"), "raw"))
        return f"{f1:.3f}" + (" calibrated" if mode == "calibrated" else "")
    mode = "calibrated" if calibrated else "raw"
    if "zero_shot" in baselines and best_rules_f1 <= baselines["zero_shot"][0]:
        return (
            f"No rules prompt beats zero-shot on dev: the best rules prompt scores dev macro-F1 {best_rules_f1:.3f} "
            f"({mode}), zero-shot {said('zero_shot')}, 5-shot {said('few_shot')}. The rules are "
            "kept for reading and editing, but this student does better without them; try a larger student "
            "(--student a Gemma 3 4B instruct GGUF) or a stronger teacher (--teacher gemini).")
    if "few_shot" in baselines and best_rules_f1 < baselines["few_shot"][0]:
        return (
            f"The chosen rules prompt beats zero-shot on dev but not 5-shot: dev macro-F1 {best_rules_f1:.3f} "
            f"({mode}) vs 5-shot {said('few_shot')} (zero-shot {said('zero_shot')}). Try a larger "
            "student or a stronger teacher, or use the 5-shot prompt for this task.")
    return ""


def best_mode(row: dict[str, Any]) -> tuple[float, str]:
    """A dev row's better macro-F1 and its mode ("raw" or "calibrated"); a tie is raw."""
    raw, cal = float(row["f1"]), float(row["f1_calibrated"])
    return (cal, "calibrated") if cal > raw else (raw, "raw")


def pick_rules_prompt(rows: dict[str, dict[str, Any]]) -> tuple[str, bool]:
    """The rules prompt ("rules" or "rules+examples") and mode (calibrated or raw) with the best dev macro-F1 among
    `rows` (each with "f1" and "f1_calibrated"); ties keep raw scores, then plain rules. Choosing the prompt on
    raw scores first and calibration after could keep a prompt that loses to the other one calibrated."""
    options = [(name, cal) for cal in (False, True) for name in ("rules", "rules+examples") if name in rows]

    def score(option: tuple[str, bool]) -> float:
        return float(rows[option[0]]["f1_calibrated" if option[1] else "f1"])
    best = options[0]
    for option in options[1:]:
        if score(option) > score(best):
            best = option
    return best


def rule_quality(project: Project) -> dict[str, Any]:
    """Figures of the rules' quality: micro-rules cut, copying their example, naming another label than the
    one they explain, and labels without an enabled rule in the chosen version (checks: teacher_prompts)."""
    from .teacher_prompts import copy_reason, looks_cut, off_label_reason
    labels = project.labels()
    micro = project.micro_rules()
    texts = {e.id: e.text for e in project.examples(split="train")}
    rs_id = pipeline_choice(project)
    rules = project.rule_set(rs_id).rules if rs_id is not None else ()
    covered = {r.label for r in rules if r.enabled}
    return {
        "micro_rules": len(micro),
        "truncated": sum(1 for m in micro if looks_cut(m["rule"])),
        "copied": sum(1 for m in micro if copy_reason(m["rule"], [texts.get(m["example_id"], "")])),
        "off_label": sum(1 for m in micro if off_label_reason(m["rule"], m["gold_label"], labels)),
        "labels_without_rules": [lab for lab in labels if lab not in covered] if rs_id is not None else list(labels),
        "rules_flagged": [{"uid": r.uid, "reason": r.flag} for r in rules if r.flag],
        "rules_truncated": sum(1 for r in rules if r.enabled and looks_cut(r.text)),
        "given_up_items": len(project.given_up_requests()),
    }


def chosen_summary(project: Project) -> dict[str, Any]:
    """The `chosen` block of `pld status --json` (empty before phase 3 ran)."""
    chosen = project.chosen_prompt()
    keys = ("rule_set", "prompt", "dev_macro_f1", "zero_shot_dev_macro_f1", "few_shot_dev_macro_f1", "calibrated",
            "warning", "dev_raw", "dev_calibrated", "baselines_best_dev")
    return {k: chosen.get(k) for k in keys} if chosen else {}


def quality_status(project: Project) -> dict[str, Any]:
    """`rule_quality` and `chosen` for `pld status --json` and the Run tab."""
    try:
        from .calibration import stored_calibration
        last = project.last_evaluation()
        test = {}
        for kind in ("pld", "pld_examples", "zero_shot", "few_shot"):
            cal = stored_calibration(project, last[kind]) if kind in last else None
            raw = project.evaluation(last[kind]).metrics if kind in last else None
            if raw:
                test[kind] = {"macro_f1": raw.get("macro_f1"),
                              "macro_f1_calibrated": (cal or {}).get("metrics", {}).get("macro_f1")}
        return {"rule_quality": rule_quality(project), "chosen": chosen_summary(project),
                "test_raw_and_calibrated": test}
    except Exception as exc:
        return {"rule_quality": {"error": str(exc)[:200]}, "chosen": chosen_summary(project)}


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
    batch = " (batch mode, half price)" if settings.teacher_batch else ""
    return (f"Phase 1{batch} needs about {todo} teacher calls (~{tokens_in:,} input and ~{tokens_out:,} output "
            "tokens, "
            f"~${cost:.2f} at the configured prices); phases 2-3 add about {max(1, int(len(train) ** 0.5))} + "
            f"{settings.loop_max_iterations} calls.")


def _check_prerequisites(project: Project, phase: int, requested: set[int]) -> None:
    """Say what to run first before any model is loaded or any key is asked for."""
    if phase == 2 and 1 not in requested and not project.micro_rule_example_ids():
        raise ValueError("Phase 2 needs micro-rules; run phase 1 (extraction) first.")
    if phase == 3 and 2 not in requested and project.rule_set_pointer(SYNTHESIS_RULE_SET) is None:
        raise ValueError("Phase 3 needs a rule set; run phase 2 (synthesis) first.")
    if phase == 4 and not requested & {2, 3} and pipeline_choice(project) is None:
        raise ValueError("Phase 4 needs a rule set; run phases 2 and 3 first.")
