"""Phase 3, closed-loop conflict resolution: the student's mistakes on training data make the teacher repair the rules.

Every candidate is saved as a rule-set version and scored on dev; it is accepted only if dev macro-F1 improves
by more than `loop_min_delta`. The loop stops after `loop_patience` rounds without improvement or
`loop_max_iterations` rounds. The best version on dev becomes the chosen rule set.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..domain import Rule, RuleSetRecord
from ..evaluate import evaluate_prompt
from ..progress import Progress, check
from ..project import CHOSEN_RULE_SET, SYNTHESIS_RULE_SET, Example, Project
from ..prompts import PromptRule, build_rules_prompt, sha256_text
from ..protocols import Embedder, PromptTooLong, Student, Teacher, TeacherRequest
from ..sampling import stratified_sample
from ..settings import RunSettings
from ..states import PhaseState
from ..teacher_calls import CUT_REPLY, TeacherJob, run_teacher_jobs
from ..teacher_prompts import RESOLUTION_SYSTEM, resolution_schema, resolution_user, rule_pattern
from .synthesis import find_conflicts

PHASE = 3


@dataclass
class LoopReport:
    start_rule_set_id: int = 0
    chosen_rule_set_id: int = 0
    start_dev_f1: float = 0.0
    best_dev_f1: float = 0.0
    rounds: list[dict[str, Any]] = field(default_factory=list)
    stopped_because: str = ""
    failed_attempts: int = 0  # rounds whose rewrite was empty, dropped a label or changed nothing (after retries)


def prompt_for(project: Project, rule_set_id: int) -> str:
    return project.rule_set(rule_set_id).prompt_text


def score_on_dev(project: Project, student: Student, rule_set_id: int, progress: Progress, stage: str) -> float:
    dev = project.examples(split="dev")
    _, metrics = evaluate_prompt(project, student, prompt_for(project, rule_set_id), dev, kind="pld", split="dev",
                                 progress=progress, rule_set_id=rule_set_id, stage=stage)
    return float(metrics["macro_f1"])


def _enabled_rules(rules: Sequence[Rule]) -> list[Rule]:
    return [r for r in rules if r.enabled]


def run_closed_loop(project: Project, teacher: Teacher, student: Student, settings: RunSettings,
                    progress: Progress, *, start_rule_set_id: int | None = None,
                    embedder: Embedder | None = None) -> LoopReport:
    """`embedder` (optional) adds similarity and co-firing conflicts to every candidate, as synthesis does."""
    start = start_rule_set_id or project.rule_set_pointer(SYNTHESIS_RULE_SET)
    if start is None:
        project.set_phase(PHASE, PhaseState.FAILED, 0, 0, "No rule set: run phase 2 first.")
        raise ValueError("Phase 3 needs a rule set; run phase 2 (synthesis) first.")
    report = LoopReport(start_rule_set_id=start)
    project.set_phase(PHASE, PhaseState.RUNNING, 0, settings.loop_max_iterations,
                      "scoring the starting rule set on dev")
    best_f1 = score_on_dev(project, student, start, progress, "Phase 3: scoring the starting rules on dev")
    report.start_dev_f1 = best_f1
    loop = _Loop(project, teacher, student, settings, progress, embedder, report,
                 current_id=start, best_id=start, best_f1=best_f1)
    for rnd in range(1, settings.loop_max_iterations + 1):
        check(progress)
        stopped_because = loop.run_round(rnd)
        if stopped_because:
            report.stopped_because = stopped_because
            break
    else:
        report.stopped_because = f"reached max_iterations ({settings.loop_max_iterations})"
    best_id, best_f1 = loop.best_id, loop.best_f1
    report.chosen_rule_set_id, report.best_dev_f1 = best_id, best_f1
    project.set_rule_set_pointer(CHOSEN_RULE_SET, best_id)
    _report_done(project, report, settings, progress)
    return report


class _Loop:
    """The rounds of one closed-loop run: the rule set rewritten next, the best one on dev so far, and how many
    rounds in a row brought no gain. `run_round` returns why the loop stops, or "" to go on."""

    def __init__(self, project: Project, teacher: Teacher, student: Student, settings: RunSettings,
                 progress: Progress, embedder: Embedder | None, report: LoopReport, *, current_id: int,
                 best_id: int, best_f1: float) -> None:
        self.project, self.teacher, self.student = project, teacher, student
        self.settings, self.progress, self.embedder, self.report = settings, progress, embedder, report
        self.labels = tuple(project.labels())
        self.train = project.examples(split="train")
        self.current_id, self.best_id, self.best_f1 = current_id, best_id, best_f1
        self.no_gain = 0

    def run_round(self, rnd: int) -> str:
        settings, progress = self.settings, self.progress
        current = self.project.rule_set(self.current_id)
        sample, failures, successes, preds = self._student_on_sample(rnd, current)
        if not failures:
            return f"no failures on the training sample in round {rnd}"
        rules = _enabled_rules(current.rules)
        job = self._rewrite_job(rnd, current, rules, failures, successes, preds)
        progress.begin(f"Phase 3 round {rnd}: teacher rewrites the rules", 1)
        outcomes, _ = run_teacher_jobs(self.project, self.teacher, [job], progress, phase=PHASE,
                                       max_attempts=settings.teacher_max_attempts)
        parsed: Any = outcomes[job.key].parsed  # a model built at run time from the labels (teacher_prompts)
        round_row: dict[str, Any] = {"round": rnd, "base": self.current_id, "failures": len(failures),
                                     "sample": len(sample)}
        if parsed is None or not parsed.rules:
            return self._failed_attempt(rnd, round_row, outcomes[job.key].error)
        cand_id = self._add_candidate(rnd, current, rules, parsed)
        return self._judge(rnd, cand_id, parsed.root_cause, round_row)

    def _student_on_sample(self, rnd: int, current: RuleSetRecord) -> tuple[list[Example], list[Example], list[Example],
                                                                   dict[int, dict[str, Any]]]:
        """The student on this round's stratified training sample: (sample, failures, successes, predictions)."""
        sample = stratified_sample(self.train, self.settings.loop_sample_size, self.settings.seed + rnd)
        sample_eval, _ = evaluate_prompt(self.project, self.student, current.prompt_text, sample, kind="pld",
                                         split="train", progress=self.progress, rule_set_id=self.current_id,
                                         stage=f"Phase 3 round {rnd}: student on {len(sample)} training examples")
        preds = self.project.predictions(sample_eval)
        failures = [e for e in sample if preds[e.id]["predicted"] != e.label]
        successes = [e for e in sample if preds[e.id]["predicted"] == e.label]
        return sample, failures, successes, preds

    def _rewrite_job(self, rnd: int, current: RuleSetRecord, rules: list[Rule], failures: list[Example],
                     successes: list[Example], preds: dict[int, dict[str, Any]]) -> TeacherJob:
        """The teacher request: rewrite the rules so the picked failures are fixed and the successes kept."""
        settings, labels = self.settings, self.labels
        fail_pick = stratified_sample(failures, settings.loop_max_failures, settings.seed + 100 + rnd)
        ok_pick = stratified_sample(successes, settings.loop_max_successes, settings.seed + 200 + rnd)
        user = resolution_user(settings.task, labels, current.meanings, [(r.text, r.label) for r in rules],
                               [(e.text, e.label, preds[e.id]["predicted"]) for e in fail_pick],
                               [(e.text, e.label) for e in ok_pick])
        return TeacherJob(f"round:{rnd}:from:{self.current_id}",
                          TeacherRequest(RESOLUTION_SYSTEM, user, resolution_schema(labels), "resolution",
                                         rule_pattern(labels)),
                          tuple(e.id for e in fail_pick + ok_pick), check=rewrite_check(rules))

    def _no_gain_stop(self, because: str) -> str:
        """Count a round without gain; the stop reason once patience runs out, else ""."""
        self.no_gain += 1
        return because.format(n=self.no_gain) if self.no_gain >= self.settings.loop_patience else ""

    def _failed_attempt(self, rnd: int, round_row: dict[str, Any], error: str | None) -> str:
        # An empty, label-dropping or unchanged rewrite was retried with the reason; still useless, it is
        # a failed attempt (not a candidate that "did not improve").
        report = self.report
        note = f"failed attempt: {error or 'the rewrite has no rules'}"
        # The teacher answered but the rewrite was useless (rewrite_check) or too long to finish (a small local
        # teacher restating a dozen rules can run past its bound), as opposed to no answer at all (refused,
        # unreachable): the loop keeps its best rules and the run goes on to phase 4.
        useless = error is None or error.startswith((*USELESS_REWRITE, CUT_REPLY))
        round_row.update(candidate=None, accepted=False, failed=True, useless=useless, note=note)
        report.rounds.append(round_row)
        report.failed_attempts += 1
        self.progress.log(f"Round {rnd}: {note}", "warning")
        _record_round(self.project, rnd, self.current_id, None, None, self.best_f1, False, note)
        return self._no_gain_stop("no usable rewrite or improvement for {n} round(s) "
                                  f"({report.failed_attempts} failed attempt(s))")

    def _add_candidate(self, rnd: int, current: RuleSetRecord, rules: list[Rule], parsed: Any) -> int:
        """The rewrite as a rule-set version (an identical earlier candidate is reused), with its conflicts."""
        project, labels = self.project, self.labels
        new_rules, repair_note = _repair(_provenance(parsed, rules, rnd), rules, labels)
        if repair_note:
            self.progress.log(f"Round {rnd}: {repair_note}", "warning")
        prompt = build_rules_prompt(current.task, list(labels), [PromptRule(r.text, r.label) for r in new_rules],
                                    current.meanings)
        cand_id = project.find_rule_set(origin="resolution", parent_id=self.current_id, rules=new_rules,
                                        task=current.task, labels=list(labels), meanings=current.meanings)
        if cand_id is not None:
            return cand_id
        cand_id = project.add_rule_set(
            parent_id=self.current_id,
            reason=f"resolution round {rnd}: {parsed.root_cause[:300]}"
                   + (f" ({repair_note})" if repair_note else ""),
            origin="resolution", round=rnd, task=current.task, labels=list(labels), meanings=current.meanings,
            rules=new_rules, prompt_text=prompt, prompt_sha256=sha256_text(prompt))
        pairs = [(p.rule_a, p.rule_b, p.reason) for p in parsed.conflicts]
        if self.embedder is not None:
            find_conflicts(project, self.embedder, cand_id, new_rules, pairs, self.settings, self.progress)
        else:
            with project.transaction():  # the candidate's conflicts: one commit
                for a, b, reason in pairs:
                    if 1 <= a <= len(new_rules) and 1 <= b <= len(new_rules) and a != b:
                        project.add_conflict(cand_id, new_rules[a - 1].uid, new_rules[b - 1].uid, "teacher",
                                             reason, {"named_by": "teacher", "round": rnd})
        return cand_id

    def _judge(self, rnd: int, cand_id: int, root_cause: str, round_row: dict[str, Any]) -> str:
        """Score the candidate on dev; accept it only if it beats the best by more than loop_min_delta."""
        settings, progress, best_f1 = self.settings, self.progress, self.best_f1
        patience = "no improvement for {n} round(s) (patience " + f"{settings.loop_patience})"
        try:
            f1 = score_on_dev(self.project, self.student, cand_id, progress,
                              f"Phase 3 round {rnd}: scoring the candidate on dev")
        except PromptTooLong as exc:
            # A rewrite that no longer fits the student is a rejected candidate, not a failed run.
            progress.log(f"Round {rnd}: candidate v{cand_id} rejected: {exc}", "warning")
            _record_round(self.project, rnd, self.current_id, cand_id, None, best_f1, False,
                          f"prompt too long: {exc}")
            round_row.update(candidate=cand_id, accepted=False, note="prompt too long for the student")
            self.report.rounds.append(round_row)
            return self._no_gain_stop(patience)
        accepted = f1 > best_f1 + settings.loop_min_delta
        _record_round(self.project, rnd, self.current_id, cand_id, f1, best_f1, accepted, root_cause)
        round_row.update(candidate=cand_id, dev_macro_f1=f1, accepted=accepted)
        self.report.rounds.append(round_row)
        progress.log(f"Round {rnd}: candidate v{cand_id} dev macro-F1 {f1:.3f} vs best {best_f1:.3f} -> "
                     f"{'accepted' if accepted else 'rejected'}")
        self.project.set_phase(PHASE, PhaseState.RUNNING, rnd, settings.loop_max_iterations, f"round {rnd} done")
        if not accepted:
            return self._no_gain_stop(patience)
        self.best_id, self.best_f1, self.current_id, self.no_gain = cand_id, f1, cand_id, 0
        return ""


def _report_done(project: Project, report: LoopReport, settings: RunSettings, progress: Progress) -> None:
    msg = (f"chosen v{report.chosen_rule_set_id}: dev macro-F1 {report.best_dev_f1:.3f} "
           f"(start {report.start_dev_f1:.3f}); {len(report.rounds)} round(s)"
           + (f", {report.failed_attempts} failed rewrite attempt(s)" if report.failed_attempts else "")
           + f"; stopped: {report.stopped_because}")
    project.set_phase(PHASE, PhaseState.DONE, len(report.rounds), settings.loop_max_iterations, msg)
    progress.log(msg)


def _provenance(parsed: Any, old_rules: list[Rule], rnd: int) -> list[Rule]:
    """Rewritten rules inherit the micro-rules and examples of the rules they say they come from."""
    out = []
    for i, r in enumerate(parsed.rules, 1):
        sources = [old_rules[n - 1] for n in getattr(r, "from_rules", []) if 1 <= n <= len(old_rules)]
        out.append(Rule(uid=f"R{i}", text=" ".join(r.rule.split()), label=r.label, enabled=True, cluster_id=None,
                        micro_rule_ids=tuple(sorted({m for s in sources for m in s.micro_rule_ids})),
                        example_ids=tuple(sorted({m for s in sources for m in s.example_ids})),
                        from_rules=tuple(s.uid for s in sources), origin=f"resolution round {rnd}"))
    return out


def _repair(new_rules: list[Rule], old_rules: list[Rule],
            labels: Sequence[str]) -> tuple[list[Rule], str]:
    """Guard against a rewrite that silently loses knowledge: drop empty rules, and carry over the previous
    rules of any label the rewrite left without a rule (synthesis already drops minority labels easily)."""
    notes = []
    relabelled = 0
    for n, r in enumerate(new_rules):
        # The text is what a reviewer reads: when it names another label than the label field, the text wins.
        said = re.search(r"answer (\S+?)\.?$", r.text)
        if said and said.group(1) in labels and said.group(1) != r.label:
            new_rules[n] = replace(r, label=said.group(1))
            relabelled += 1
    if relabelled:
        notes.append(f"{relabelled} rule(s) relabelled to the label their text names")
    kept = [r for r in new_rules if len(r.text.split()) >= 3]
    if len(kept) < len(new_rules):
        notes.append(f"dropped {len(new_rules) - len(kept)} rule(s) of fewer than 3 words")
    covered = {r.label for r in kept}
    carried = [replace(r, origin=f"carried over from the parent version ({r.origin})")
               for r in old_rules if r.label not in covered and r.label in labels]
    if carried:
        lost = sorted({r.label for r in carried})
        notes.append(f"carried over {len(carried)} previous rule(s) for label(s) the rewrite left without a rule: "
                     + ", ".join(lost))
    out = [replace(r, uid=f"R{i}") for i, r in enumerate(kept + carried, 1)]
    return out, "; ".join(notes)


USELESS_REWRITE = ("the rule list is empty", "the list drops the label", "the list is unchanged")  # rewrite_check


def rewrite_check(current_rules: list[Rule]) -> Any:
    """The check a rewrite must pass: not empty, no label of the current list lost, not the same list again."""
    current = [(" ".join(str(r.text).split()), r.label) for r in current_rules]
    covered = {lab for _, lab in current}

    def check(parsed: Any) -> str | None:
        rules = list(parsed.rules)
        if not rules:
            return ("the rule list is empty; return the complete rewritten list, with at least one rule for "
                    "every label")
        new = [(" ".join(r.rule.split()), r.label) for r in rules]
        lost = sorted(covered - {lab for _, lab in new})
        if lost:
            return (f"the list drops the label(s) {', '.join(lost)}; every label that had a rule must keep at "
                    "least one")
        if new == current:
            return "the list is unchanged; change the rules so that the failures shown would be fixed"
        return None
    return check


def _record_round(project: Project, rnd: int, base: int, cand: int | None, f1: float | None, base_f1: float,
                  accepted: bool, root_cause: str) -> None:
    if project.find_loop_round(rnd, base, cand) is not None:
        return  # a rerun reached the same round with the same versions: the history holds it already
    project.add_loop_round(round=rnd, base_rule_set_id=base, candidate_rule_set_id=cand, dev_macro_f1=f1,
                           base_dev_macro_f1=base_f1, accepted=int(accepted), root_cause=root_cause)
