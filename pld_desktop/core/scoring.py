"""Scoring rule-set versions (dev first, test on request) and the history of every score, for the window and `pld`.

All scores go through `evaluate_prompt`, so they are cached by prompt bytes + student + split + examples: the
closed loop's dev scores, phase 4's test scores and the scores asked for here are the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .domain import Evaluation
from .evaluate import evaluate_prompt
from .phases.evaluation import few_shot_examples, test_examples
from .progress import Progress, SilentProgress
from .project import Example, Project
from .prompts import FewShotExample, build_few_shot_prompt, build_zero_shot_prompt
from .protocols import Student
from .settings import RunSettings, load_settings
from .working import pipeline_choice, require_working_rule_set, working_rule_set

SPLITS = ("dev", "test")
# The evaluations table's `kind` column -> the name outputs use ("prompt" in `pld status --json`). "custom" is a
# pasted prompt from the side-by-side view; "rules" is a rule-set version's own prompt.
PROMPT_NAMES = {"pld": "rules", "zero_shot": "zero_shot", "few_shot": "few_shot", "custom": "custom"}
BASELINE_KINDS = ("zero_shot", "few_shot")


@dataclass(frozen=True)
class Score:
    """One finished evaluation, reduced to what a history row shows."""

    evaluation_id: int
    rule_set_id: int | None
    prompt: str            # rules | zero_shot | few_shot | custom
    split: str
    macro_f1: float
    accuracy: float
    n: int
    student_sha256: str
    prompt_sha256: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"rule_set": self.rule_set_id, "prompt": self.prompt, "split": self.split,
                "macro_f1": self.macro_f1, "accuracy": self.accuracy, "n": self.n,
                "evaluation_id": self.evaluation_id}


@dataclass
class VersionScore:
    """A version's score on one split, its parent's, and the two baselines on the same examples."""

    rule_set_id: int
    split: str
    score: Score
    parent_id: int | None = None
    parent: Score | None = None
    zero_shot: Score | None = None
    few_shot: Score | None = None

    @property
    def delta_vs_parent(self) -> float | None:
        return None if self.parent is None else self.score.macro_f1 - self.parent.macro_f1

    @property
    def delta_vs_zero_shot(self) -> float | None:
        return None if self.zero_shot is None else self.score.macro_f1 - self.zero_shot.macro_f1

    @property
    def delta_vs_few_shot(self) -> float | None:
        return None if self.few_shot is None else self.score.macro_f1 - self.few_shot.macro_f1

    def summary(self) -> str:
        s = self.score
        parts = [f"v{self.rule_set_id} on {self.split}: macro-F1 {s.macro_f1:.3f}, accuracy {s.accuracy:.3f} "
                 f"(n={s.n})"]
        if self.parent is not None:
            parts.append(f"{self.delta_vs_parent:+.3f} vs parent v{self.parent_id}")
        if self.zero_shot is not None:
            parts.append(f"zero-shot {self.zero_shot.macro_f1:.3f}")
        if self.few_shot is not None:
            parts.append(f"few-shot {self.few_shot.macro_f1:.3f}")
        return "; ".join(parts)


def _score(ev: Evaluation) -> Score:
    m = ev.metrics or {}
    return Score(ev.id, ev.rule_set_id, PROMPT_NAMES.get(ev.kind, ev.kind), ev.split,
                 float(m.get("macro_f1", 0.0)), float(m.get("accuracy", 0.0)), int(m.get("n", ev.n_examples)),
                 str((ev.student or {}).get("sha256", "")), str(ev.prompt_sha256 or ""))


def split_examples(project: Project, split: str, settings: RunSettings | None = None) -> list[Example]:
    """The examples a score on `split` uses: all of dev; test as phase 4 takes it (honours max_test_examples)."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split '{split}'; choose dev or test.")
    settings = settings or load_settings(project)
    return project.examples(split="dev") if split == "dev" else test_examples(project, settings)


def baseline_prompts(project: Project, rule_set_id: int, settings: RunSettings | None = None) -> dict[str, str]:
    """Zero-shot and k-shot prompts with the task and label meanings of `rule_set_id` (as phase 4 builds them)."""
    settings = settings or load_settings(project)
    rs = project.rule_set(rule_set_id)
    labels = project.labels()
    shots = few_shot_examples(project.examples(split="train"), settings.few_shot_k, settings.seed)
    return {"zero_shot": build_zero_shot_prompt(rs.task, labels, rs.meanings),
            "few_shot": build_few_shot_prompt(rs.task, labels, [FewShotExample(e.text, e.label) for e in shots],
                                              rs.meanings)}


def _evaluate(project: Project, student: Student, prompt: str, examples: Sequence[Example], kind: str, split: str,
              progress: Progress, rule_set_id: int | None, stage: str) -> Score:
    eval_id, _ = evaluate_prompt(project, student, prompt, examples, kind=kind, split=split, progress=progress,
                                 rule_set_id=rule_set_id, stage=stage)
    return _score(project.evaluation(eval_id))


def score_version(project: Project, student: Student, rule_set_id: int | None = None, *, split: str = "dev",
                  settings: RunSettings | None = None, progress: Progress | None = None,
                  with_parent: bool = True, with_baselines: bool = True) -> VersionScore:
    """Score a version (default: the working version) on `split` with the student, plus its parent and the
    zero-shot and k-shot baselines on the same examples (on test, the parent only when it already has a test
    score: scoring it would be one more test use). Cached: an unchanged prompt costs no student call.
    Scoring on "test" is the explicit final check (see `test_use_count`); the window and `pld eval` default
    to dev."""
    settings = settings or load_settings(project)
    progress = progress or SilentProgress()
    rs_id = require_working_rule_set(project, rule_set_id)
    rs = project.rule_set(rs_id)
    examples = split_examples(project, split, settings)
    if not examples:
        raise ValueError(f"The {split} split of this project is empty; nothing to score on.")
    # Every prompt this call will score must fit the student before any is scored: a refusal half-way would
    # leave some scores written and others missing.
    prompts = [rs.prompt_text]
    if with_parent and rs.parent_id is not None and split == "dev":
        prompts.append(project.rule_set(rs.parent_id).prompt_text)
    if with_baselines:
        prompts += list(baseline_prompts(project, rs_id, settings).values())
    longest = max(examples, key=lambda e: len(e.text))
    for prompt in prompts:
        student.check_fits(prompt, longest.text, project.labels())
    out = VersionScore(rs_id, split, _evaluate(project, student, rs.prompt_text, examples, "pld", split, progress,
                                               rs_id, f"Scoring v{rs_id} on {len(examples)} {split} examples"))
    if with_parent and rs.parent_id is not None:
        parent = project.rule_set(rs.parent_id)
        out.parent_id = parent.id
        if split == "dev":
            out.parent = _evaluate(project, student, parent.prompt_text, examples, "pld", split, progress,
                                   parent.id, f"Scoring parent v{parent.id} on {split}")
        else:
            # Scoring the parent on test would be one more test use; show its test score only if it has one.
            cached = latest_scores(project, parent.id, split).get("rules")
            if cached is not None and cached.n == out.score.n and cached.student_sha256 == out.score.student_sha256:
                out.parent = cached
    if with_baselines:
        for kind, prompt in baseline_prompts(project, rs_id, settings).items():
            name = "zero-shot" if kind == "zero_shot" else f"{settings.few_shot_k}-shot"
            setattr(out, kind, _evaluate(project, student, prompt, examples, kind, split, progress, None,
                                         f"Scoring the {name} baseline on {split}"))
    return out


def score_on_test(project: Project, student: Student, rule_set_id: int | None = None, *,
                  settings: RunSettings | None = None, progress: Progress | None = None) -> VersionScore:
    """The explicit final check on the locked test split (counted by `test_use_count`)."""
    return score_version(project, student, rule_set_id, split="test", settings=settings, progress=progress)


def all_scores(project: Project) -> list[Score]:
    """Every finished evaluation on dev or test, oldest first, as recorded (the closed loop's training-sample
    scores are internal and left out)."""
    return [_score(ev) for ev in project.evaluations_done() if ev.split in SPLITS]


def _version_scores(project: Project, scores: Sequence[Score] | None = None) -> list[Score]:
    """Every dev/test score of every version's own prompt, attributed by prompt bytes: an evaluation is a score
    of each version whose prompt has that sha256, whoever ran it (the closed loop, phase 4, rule impact's
    "without rule i" that equals a version with that rule disabled, side by side)."""
    scores = all_scores(project) if scores is None else scores
    by_sha: dict[str, list[int]] = {}
    for v in project.rule_sets():
        by_sha.setdefault(v.prompt_sha256, []).append(int(v.id))
    out = []
    for s in scores:
        if s.prompt in BASELINE_KINDS:
            continue
        for rs_id in by_sha.get(s.prompt_sha256, []):
            out.append(Score(s.evaluation_id, rs_id, "rules", s.split, s.macro_f1, s.accuracy, s.n,
                             s.student_sha256, s.prompt_sha256))
    return out


def test_use_count(project: Project) -> int:
    """How many distinct rule-set prompts have been scored on the test split: the more versions are compared on
    test, the less the best test score proves. Versions with byte-identical prompts count once (one comparison)."""
    return len({s.prompt_sha256 for s in _version_scores(project) if s.split == "test"})


def latest_scores(project: Project, rule_set_id: int, split: str) -> dict[str, Score]:
    """The newest score of `rule_set_id` on `split` ("rules") and the baselines scored with the same student on
    the same number of examples ("zero_shot", "few_shot"), when present."""
    scores = all_scores(project)
    mine = [s for s in _version_scores(project, scores) if s.rule_set_id == rule_set_id and s.split == split]
    if not mine:
        return {}
    own = max(mine, key=lambda s: s.evaluation_id)
    out = {"rules": own}
    for s in scores:
        if s.prompt in BASELINE_KINDS and s.split == split and s.n == own.n and s.student_sha256 == own.student_sha256:
            out[s.prompt] = s  # the newest wins
    return out


@dataclass
class HistoryRow:
    """One version in the history: its dev and test scores and the deltas against its parent."""

    rule_set_id: int
    parent_id: int | None
    origin: str
    round: int | None
    reason: str
    created_at: float
    dev: Score | None = None
    test: Score | None = None
    dev_delta_vs_parent: float | None = None
    test_delta_vs_parent: float | None = None
    is_working: bool = False
    is_pipeline_choice: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"rule_set": self.rule_set_id, "parent": self.parent_id, "origin": self.origin, "round": self.round,
                "reason": self.reason, "dev": self.dev.to_json() if self.dev else None,
                "test": self.test.to_json() if self.test else None,
                "dev_delta_vs_parent": self.dev_delta_vs_parent, "test_delta_vs_parent": self.test_delta_vs_parent,
                "working": self.is_working, "pipeline_choice": self.is_pipeline_choice}


@dataclass
class History:
    """The Results tab's read model: every version (scored or not), the baselines per split, the working version,
    the pipeline's choice and how many versions were scored on test."""

    rows: list[HistoryRow] = field(default_factory=list)
    baselines: dict[str, dict[str, Score]] = field(default_factory=dict)  # split -> prompt -> newest score
    working_rule_set: int | None = None
    pipeline_choice: int | None = None
    test_use_count: int = 0

    @property
    def scored(self) -> list[HistoryRow]:
        return [r for r in self.rows if r.dev is not None or r.test is not None]

    @property
    def is_empty(self) -> bool:
        return not self.scored and not any(self.baselines.values())

    def to_json(self) -> dict[str, Any]:
        return {"working_rule_set": self.working_rule_set, "pipeline_choice": self.pipeline_choice,
                "test_use_count": self.test_use_count, "versions": [r.to_json() for r in self.rows],
                "baselines": {split: {k: s.to_json() for k, s in b.items()} for split, b in self.baselines.items()}}


def version_history(project: Project) -> History:
    """Every version with its newest dev and test score (the pipeline's and the user's alike), deltas against
    the parent's score with the same student on the same number of examples, and the baselines."""
    scores = all_scores(project)
    mine = sorted(_version_scores(project, scores), key=lambda s: s.evaluation_id)
    newest: dict[tuple[int, str], Score] = {}
    # Parent deltas only compare like with like: same split, student and example count.
    by_shape: dict[tuple[int, str, str, int], Score] = {}
    for s in mine:
        assert s.rule_set_id is not None
        newest[(s.rule_set_id, s.split)] = s
        by_shape[(s.rule_set_id, s.split, s.student_sha256, s.n)] = s
    history = History(working_rule_set=working_rule_set(project), pipeline_choice=pipeline_choice(project),
                      test_use_count=len({s.prompt_sha256 for s in mine if s.split == "test"}))
    for v in project.rule_sets():
        row = HistoryRow(v.id, v.parent_id, v.origin, v.round, v.reason, v.created_at,
                         newest.get((v.id, "dev")), newest.get((v.id, "test")))
        for split in SPLITS:
            own = getattr(row, split)
            if own is None or v.parent_id is None:
                continue
            parent = by_shape.get((v.parent_id, split, own.student_sha256, own.n))
            if parent is not None:
                setattr(row, f"{split}_delta_vs_parent", own.macro_f1 - parent.macro_f1)
        row.is_working = v.id == history.working_rule_set
        row.is_pipeline_choice = v.id == history.pipeline_choice
        history.rows.append(row)
    for s in scores:
        if s.prompt in BASELINE_KINDS:
            history.baselines.setdefault(s.split, {})[s.prompt] = s
    return history


def status_evaluations(project: Project) -> list[dict[str, Any]]:
    """`pld status --json`'s `evaluations`: {rule_set, prompt, split, macro_f1, accuracy, n} for each version's
    newest dev and test score (`prompt` "rules"), and the newest zero-shot and few-shot baselines per split and
    example count (`prompt` "zero_shot" / "few_shot", `rule_set` null: their prompt has no rules). "custom" (a
    prompt pasted in side by side) is listed too, with `rule_set` null. Rule impact's "without rule i" scores
    are internal and left out (see `pld rules --impact`)."""
    history = version_history(project)
    out: list[dict[str, Any]] = []
    for row in history.rows:
        for s in (row.dev, row.test):
            if s is not None:
                out.append(s.to_json())
    newest: dict[tuple[str, str, int], Score] = {}
    for s in all_scores(project):
        if s.prompt in BASELINE_KINDS or s.prompt == "custom":
            newest[(s.prompt, s.split, s.n)] = s
    out += [s.to_json() | {"rule_set": None} for s in newest.values()]
    return [{k: v for k, v in e.items() if k != "evaluation_id"} for e in out]
