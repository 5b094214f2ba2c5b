"""Side-by-side testing: two student prompts on the same examples, their metrics, disagreements and McNemar's test.

Where results live: a comparison on a project split (dev / test / train) goes through `evaluate_prompt`, so every
prediction is committed to the project, a cancelled comparison resumes where it stopped, and a prompt already
scored on those examples (phase 3 on dev, phase 4 on test) costs no student call. Rows the user pastes or loads
from a CSV are *not* stored: the project's examples are its imported dataset (their ids are referenced by
micro-rules, evaluations and the split lock), and ad-hoc inputs are few, so they are classified in memory and
live only in the returned `ComparisonResult`.

Evaluating on the locked test split is allowed here: it is evaluation by the user, never teacher input.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .dataset import ColumnMapping, DatasetError, Problem, read_csv, render_template
from .evaluate import evaluate_prompt
from .metrics import classification_metrics
from .phases.evaluation import few_shot_examples, test_examples
from .progress import Progress, check
from .project import CHOSEN_RULE_SET, EDITED_RULE_SET, Example, Project
from .prompts import FewShotExample, build_few_shot_prompt, build_zero_shot_prompt
from .protocols import Prediction, Student
from .settings import RunSettings, load_settings
from .working import working_rule_set

PROMPT_KINDS = ("version", "current_edit", "zero_shot", "few_shot", "text")
SPLITS = ("dev", "test", "train")
EDITED_SETTING = EDITED_RULE_SET  # the rule editor's current head; one constant, defined in core.project


# ---------------------------------------------------------------------------
# McNemar's exact test
# ---------------------------------------------------------------------------
def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pairs.

    `b` = examples only the first prompt gets right, `c` = examples only the second gets right. Under the null
    hypothesis each discordant pair is a fair coin, so p = P(|X - n/2| >= |b - n/2|) for X ~ Binomial(n, 1/2),
    i.e. twice the smaller tail, capped at 1. Exact integer arithmetic (math.comb) keeps it exact for any n.
    """
    if b < 0 or c < 0:
        raise ValueError("Discordant counts cannot be negative.")
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    # Python divides big integers with correct rounding, so this stays exact-then-rounded for any n.
    return min(1.0, (2 * tail) / (1 << n))


# ---------------------------------------------------------------------------
# Which prompt
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class PromptChoice:
    """One side of a comparison.

    kind: "version" (a saved rule-set version, `rule_set_id`), "current_edit" (the editor's head, the pointer
    EDITED_RULE_SET), "zero_shot" / "few_shot" (the phase-4 baselines; `rule_set_id` optionally names the
    rule set whose task and label meanings they use, else the chosen one), or "text" (`text` verbatim).
    """

    kind: str
    rule_set_id: int | None = None
    label: str = ""
    text: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in PROMPT_KINDS:
            raise ValueError(f"Unknown prompt kind '{self.kind}'; choose one of {', '.join(PROMPT_KINDS)}.")
        if self.kind == "version" and self.rule_set_id is None:
            raise ValueError("A saved version needs its rule-set id.")
        if self.kind == "text" and not (self.text or "").strip():
            raise ValueError("The prompt text is empty.")

    @property
    def key(self) -> tuple[str, int | None]:
        """Identity for keeping a selection across refreshes (labels change, e.g. 'chosen')."""
        return self.kind, self.rule_set_id


@dataclass(frozen=True)
class ResolvedPrompt:
    """The exact prompt bytes a choice stands for, and how an evaluation of it is recorded."""

    choice: PromptChoice
    text: str
    label: str              # short name for verdicts and stages ("version 7", "zero-shot"); the picker text is
                            # choice.label
    eval_kind: str          # the evaluations.kind column: pld | zero_shot | few_shot | custom
    rule_set_id: int | None


def _reference_rule_set(project: Project, preferred: int | None = None) -> int | None:
    """The rule set whose task and meanings the baselines use: as phase 4 does (chosen, else synthesis)."""
    if preferred is not None:
        return preferred
    return working_rule_set(project)


def _task_and_meanings(project: Project, settings: RunSettings,
                       rule_set_id: int | None) -> tuple[str, dict[str, str]]:
    rs_id = _reference_rule_set(project, rule_set_id)
    if rs_id is None:  # no rules yet: the baselines are still well defined from the run settings
        return settings.task, dict(settings.label_meanings)
    rs = project.rule_set(rs_id)
    return rs.task, dict(rs.meanings)


def resolve_prompt(project: Project, choice: PromptChoice, settings: RunSettings | None = None) -> ResolvedPrompt:
    """The exact prompt text, built by the same functions phases 3 and 4 use (so results are shared)."""
    settings = settings or load_settings(project)
    labels = project.labels()
    display = default_label(choice, settings)
    if choice.kind == "text":
        return ResolvedPrompt(choice, str(choice.text), display, "custom", None)
    if choice.kind in ("version", "current_edit"):
        rs_id = choice.rule_set_id
        if choice.kind == "current_edit":
            rs_id = project.rule_set_pointer(EDITED_RULE_SET)
            if rs_id is None:
                raise ValueError("There is no edited version yet: edit the rules first, or pick a saved version.")
        assert rs_id is not None
        rs = project.rule_set(int(rs_id))
        if choice.kind == "current_edit":
            display = f"current edit, version {rs.id}"
        return ResolvedPrompt(choice, rs.prompt_text, display, "pld", rs.id)
    task, meanings = _task_and_meanings(project, settings, choice.rule_set_id)
    if choice.kind == "zero_shot":
        return ResolvedPrompt(choice, build_zero_shot_prompt(task, labels, meanings), display, "zero_shot", None)
    train = project.examples(split="train")
    if not train:
        raise ValueError("The few-shot baseline needs training examples, and this project has none.")
    shots = few_shot_examples(train, settings.few_shot_k, settings.seed)
    prompt = build_few_shot_prompt(task, labels, [FewShotExample(e.text, e.label) for e in shots], meanings)
    return ResolvedPrompt(choice, prompt, display, "few_shot", None)


def default_label(choice: PromptChoice, settings: RunSettings | None = None) -> str:
    k = settings.few_shot_k if settings else 5
    return {"version": f"version {choice.rule_set_id}", "current_edit": "current edit", "zero_shot": "zero-shot",
            "few_shot": f"{k}-shot", "text": "custom prompt"}[choice.kind]


def _short(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def prompt_choices(project: Project) -> list[PromptChoice]:
    """Everything a picker offers: the editor's head, saved versions (newest first) and the two baselines."""
    settings = load_settings(project)
    chosen = project.rule_set_pointer(CHOSEN_RULE_SET)
    working = working_rule_set(project)
    dev_scores = project.loop_dev_scores()
    out: list[PromptChoice] = []
    versions = project.rule_sets()
    known = {v.id for v in versions}
    edited = project.rule_set_pointer(EDITED_RULE_SET)
    if edited is not None and edited in known:
        out.append(PromptChoice("current_edit", None, f"Current edit (version {edited})"))
    for v in reversed(versions):
        parts = [f"v{v.id}", v.origin + (f" round {v.round}" if v.round else "")]
        if v.id == working:
            parts.append("working")
        if v.id == chosen:
            parts.append("chosen")
        if dev_scores.get(v.id) is not None:
            parts.append(f"dev F1 {dev_scores[v.id]:.3f}")
        parts.append(_short(v.reason, 60))
        out.append(PromptChoice("version", v.id, " · ".join(parts)))
    out.append(PromptChoice("zero_shot", None, "Zero-shot baseline"))
    out.append(PromptChoice("few_shot", None, f"{settings.few_shot_k}-shot baseline"))
    return out


# ---------------------------------------------------------------------------
# Which examples
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class UserRow:
    """An input the user supplied; `label` is its gold label or None (then it gets predictions only)."""

    text: str
    label: str | None = None
    where: str = ""  # "line 3" - how to point the user at it


@dataclass(frozen=True)
class ExampleSet:
    """A project split (optionally a seeded sample of `limit` examples) or the user's own rows."""

    split: str | None = None
    rows: tuple[UserRow, ...] = ()
    source: str = ""      # "pasted rows", "contracts.csv"
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"Unknown split '{self.split}'; choose dev, test or train.")
        if self.split is None and not self.rows:
            raise ValueError("There are no rows to test: paste some text (one input per line) or load a CSV.")
        if self.limit is not None and self.limit < 1:
            raise ValueError("The number of examples must be at least 1.")

    @property
    def description(self) -> str:
        if self.split is not None:
            sample = f" (sample of {self.limit})" if self.limit else ""
            return f"{self.split} split{sample}"
        return f"{self.source or 'your rows'} ({len(self.rows)} rows)"

    @classmethod
    def from_split(cls, split: str, limit: int | None = None) -> ExampleSet:
        return cls(split=split, limit=limit)

    @classmethod
    def from_pasted(cls, text: str, labels: Sequence[str]) -> ExampleSet:
        """One input per non-blank line; a gold label may follow the text after a tab (as pasted from a sheet)."""
        rows: list[UserRow] = []
        problems: list[str] = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            body, gold = line, None
            if "\t" in line:
                body, _, tail = line.rpartition("\t")
                tail = tail.strip()
                if tail and tail not in labels:
                    problems.append(f"Line {n}: '{_short(tail, 30)}' after the tab is not one of the labels "
                                    f"({', '.join(labels)}).")
                    continue
                gold = tail or None
            if not body.strip():
                problems.append(f"Line {n} has a label but no text.")
                continue
            rows.append(UserRow(body.strip(), gold, f"line {n}"))
        if problems:
            raise ValueError("\n".join(problems[:10]) + (f"\n…and {len(problems) - 10} more." if len(problems) > 10
                                                         else ""))
        return cls(rows=tuple(rows), source="pasted rows")

    @classmethod
    def from_csv(cls, path: str | Path, labels: Sequence[str], mapping: ColumnMapping | None = None) -> ExampleSet:
        """A CSV with a header row: a `text` column (or the project's own text columns, rendered with its
        template) and optionally a `label` column (or the project's label column). Raises DatasetError."""
        df, _ = read_csv(path)
        columns = list(df.columns)
        lowered = {c.lower(): c for c in columns}
        label_col = lowered.get("label") or (mapping.label_column if mapping and mapping.label_column in columns
                                             else None)
        if "text" in lowered:
            text_col: str | None = lowered["text"]
        elif mapping and all(c in columns for c in mapping.text_columns):
            text_col = None  # render the project's template from its own columns
        else:
            wanted = "'text'" + (f" (or the project's columns {', '.join(mapping.text_columns)})" if mapping else "")
            raise DatasetError(Problem(
                f"The CSV needs a header row with a {wanted} column; it has: {', '.join(columns) or 'no columns'}."))
        rows: list[UserRow] = []
        problems: list[Problem] = []
        for line, record in zip(df.index, df.to_dict("records")):
            record = {k: v if isinstance(v, str) else "" for k, v in record.items()}
            if text_col is not None:
                text = render_template(None, (text_col,), record)
            else:
                assert mapping is not None
                text = render_template(mapping.template, mapping.text_columns, record)
            gold = (record.get(label_col, "").strip() or None) if label_col else None
            if not text:
                problems.append(Problem("The text is empty.", row=int(line)))
                continue
            if gold is not None and gold not in labels:
                problems.append(Problem(f"'{_short(gold, 30)}' is not one of the labels ({', '.join(labels)}).",
                                        row=int(line), column=label_col))
                continue
            rows.append(UserRow(text, gold, f"line {line}"))
        if problems:
            raise DatasetError([Problem(f"Line {p.row}: {p.message}", p.row, p.column) for p in problems])
        if not rows:
            raise DatasetError(Problem("The CSV has a header but no rows."))
        return cls(rows=tuple(rows), source=Path(path).name)


@dataclass(frozen=True)
class _Item:
    key: str          # ext_id of a project example, or "line 3"
    text: str
    gold: str | None
    example: Example | None


def _items(project: Project, examples: ExampleSet, settings: RunSettings) -> list[_Item]:
    if examples.split is None:
        labels = project.labels()
        for row in examples.rows:
            if row.label is not None and row.label not in labels:
                raise ValueError(f"{row.where or 'A row'}: '{row.label}' is not one of the labels "
                                 f"({', '.join(labels)}).")
        return [_Item(r.where or f"row {i}", r.text, r.label, None) for i, r in enumerate(examples.rows, 1)]
    # The test split is the same (possibly capped) set phase 4 scores, so its evaluations are shared.
    exs = test_examples(project, settings) if examples.split == "test" else project.examples(split=examples.split)
    if examples.limit and len(exs) > examples.limit:
        exs = sorted(random.Random(settings.seed).sample(exs, examples.limit), key=lambda e: e.id)
    if not exs:
        raise ValueError(f"The {examples.split} split of this project is empty.")
    return [_Item(e.ext_id, e.text, e.label, e) for e in exs]


# ---------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------
@dataclass
class ComparisonRow:
    key: str
    text: str
    gold: str | None
    pred_a: str
    conf_a: float
    pred_b: str
    conf_b: float
    latency_a: float = 0.0
    latency_b: float = 0.0

    @property
    def disagree(self) -> bool:
        return self.pred_a != self.pred_b

    def correct(self, side: str) -> bool | None:
        if self.gold is None:
            return None
        return (self.pred_a if side == "a" else self.pred_b) == self.gold


@dataclass
class ComparisonResult:
    prompt_a: ResolvedPrompt
    prompt_b: ResolvedPrompt
    examples: str                           # what was compared, in words
    labels: list[str]
    rows: list[ComparisonRow]
    metrics_a: dict[str, Any] | None        # None when no row has a gold label
    metrics_b: dict[str, Any] | None
    only_a_right: int                       # McNemar's b
    only_b_right: int                       # McNemar's c
    p_value: float | None
    verdict: str
    evaluation_ids: tuple[int, int] | None = None  # project evaluations (split comparisons only)
    notes: list[str] = field(default_factory=list)

    @property
    def n_labelled(self) -> int:
        return sum(r.gold is not None for r in self.rows)

    @property
    def n_disagree(self) -> int:
        return sum(r.disagree for r in self.rows)


def verdict_text(name_a: str, name_b: str, b: int, c: int, p: float | None, n_labelled: int, n_disagree: int,
                 n: int, *, alpha: float = 0.05) -> str:
    """One line in words: who wins, by how many examples, and whether that could be chance."""
    if n_labelled == 0:
        return (f"No gold labels, so no winner: A and B give different labels on {n_disagree} of {n} inputs.")
    assert p is not None
    if b == c == 0:
        return (f"No difference: A ({name_a}) and B ({name_b}) are right and wrong on exactly the same "
                f"{n_labelled} examples.")
    if p < alpha:
        better, worse, wins, losses = ("A", "B", b, c) if b > c else ("B", "A", c, b)
        names = {"A": name_a, "B": name_b}
        return (f"{better} ({names[better]}) is better than {worse} ({names[worse]}): it alone is right on {wins} "
                f"examples, {worse} alone on {losses} (McNemar exact p = {p:.3g}, below {alpha}).")
    return (f"No significant difference: A ({name_a}) alone is right on {b} examples, B ({name_b}) alone on {c} "
            f"(McNemar exact p = {p:.2f}); that could be chance, more examples would tell them apart.")


def _classify_rows(student: Student, prompt: ResolvedPrompt, items: Sequence[_Item], labels: list[str],
                   progress: Progress, stage: str) -> list[Prediction]:
    """In-memory predictions for user rows (not stored, see the module docstring)."""
    progress.begin(stage, len(items))
    out: list[Prediction] = []
    for i, item in enumerate(items, 1):
        check(progress)
        out.append(student.classify(prompt.text, item.text, labels))
        progress.report(i, len(items), item.key)
    return out


def _confidence(probs: dict[str, float], label: str) -> float:
    return float(probs.get(label, 0.0))


def compare_prompts(project: Project, student: Student, a: PromptChoice, b: PromptChoice, examples: ExampleSet,
                    progress: Progress, *, settings: RunSettings | None = None,
                    alpha: float = 0.05) -> ComparisonResult:
    """Score prompts A and B with the same student on the same examples and compare them.

    Raises PromptTooLong before any model work if either prompt does not fit, `Cancelled` when the user stops
    (split comparisons keep every prediction made so far and resume on rerun), ValueError for bad input.
    """
    settings = settings or load_settings(project)
    labels = project.labels()
    pa, pb = resolve_prompt(project, a, settings), resolve_prompt(project, b, settings)
    items = _items(project, examples, settings)
    longest = max(items, key=lambda it: len(it.text)).text
    for side, prompt in (("A", pa), ("B", pb)):
        try:
            student.check_fits(prompt.text, longest, labels)
        except ValueError as exc:
            raise type(exc)(f"Prompt {side} ({prompt.label}): {exc}") from None
    notes: list[str] = []
    if pa.text == pb.text:
        notes.append("A and B are the same prompt text, so they give the same answers.")
    eval_ids: tuple[int, int] | None = None
    preds: list[list[tuple[str, float, float]]] = []  # (label, confidence, latency_s) per item, per prompt
    if examples.split is not None:
        exs = [it.example for it in items if it.example is not None]
        ids = []
        for side, prompt in (("A", pa), ("B", pb)):
            eval_id, _ = evaluate_prompt(
                project, student, prompt.text, exs, kind=prompt.eval_kind, split=examples.split, progress=progress,
                rule_set_id=prompt.rule_set_id,
                stage=f"Prompt {side} ({prompt.label}) on {len(exs)} {examples.split} examples")
            done = project.predictions(eval_id)
            preds.append([(done[e.id]["predicted"], _confidence(done[e.id]["probs"], done[e.id]["predicted"]),
                           done[e.id]["latency_s"]) for e in exs])
            ids.append(eval_id)
        eval_ids = (ids[0], ids[1])
    else:
        first = _classify_rows(student, pa, items, labels, progress, f"Prompt A ({pa.label}) on {len(items)} rows")
        second = first if pa.text == pb.text else _classify_rows(
            student, pb, items, labels, progress, f"Prompt B ({pb.label}) on {len(items)} rows")
        preds = [[(p.label, _confidence(p.probs, p.label), p.latency_s) for p in first],
                 [(p.label, _confidence(p.probs, p.label), p.latency_s) for p in second]]
    rows = [ComparisonRow(it.key, it.text, it.gold, pa_[0], pa_[1], pb_[0], pb_[1], pa_[2], pb_[2])
            for it, pa_, pb_ in zip(items, preds[0], preds[1])]
    labelled = [r for r in rows if r.gold is not None]
    metrics_a = metrics_b = None
    p_value: float | None = None
    only_a = only_b = 0
    if labelled:
        gold = [r.gold for r in labelled]
        # arg-type: gold is str on the labelled rows (mypy does not narrow `r.gold is not None` through the list).
        metrics_a = classification_metrics(gold, [r.pred_a for r in labelled], labels,  # type: ignore[arg-type]
                                           [r.latency_a for r in labelled])
        metrics_b = classification_metrics(gold, [r.pred_b for r in labelled], labels,  # type: ignore[arg-type]
                                           [r.latency_b for r in labelled])
        only_a = sum(bool(r.correct("a")) and not r.correct("b") for r in labelled)
        only_b = sum(bool(r.correct("b")) and not r.correct("a") for r in labelled)
        p_value = mcnemar_exact(only_a, only_b)
        if len(labelled) < len(rows):
            notes.append(f"Metrics use the {len(labelled)} rows with a gold label; "
                         f"{len(rows) - len(labelled)} rows have predictions only.")
    verdict = verdict_text(pa.label, pb.label, only_a, only_b, p_value, len(labelled),
                           sum(r.disagree for r in rows), len(rows), alpha=alpha)
    progress.log(verdict)
    return ComparisonResult(pa, pb, examples.description, labels, rows, metrics_a, metrics_b, only_a, only_b,
                            p_value, verdict, eval_ids, notes)


def classify_both(student: Student, prompt_a: str, prompt_b: str, text: str,
                  labels: Sequence[str]) -> tuple[Prediction, Prediction]:
    """The try-it box: one input through both prompts (checked to fit first)."""
    text = text.strip()
    if not text:
        raise ValueError("Type some text to classify first.")
    labels = list(labels)
    for side, prompt in (("A", prompt_a), ("B", prompt_b)):
        try:
            student.check_fits(prompt, text, labels)
        except ValueError as exc:
            raise type(exc)(f"Prompt {side}: {exc}") from None
    first = student.classify(prompt_a, text, labels)
    second = first if prompt_b == prompt_a else student.classify(prompt_b, text, labels)
    return first, second


__all__ = ["ComparisonResult", "ComparisonRow", "ExampleSet", "PromptChoice", "ResolvedPrompt", "UserRow",
           "classify_both", "compare_prompts", "mcnemar_exact", "prompt_choices",
           "resolve_prompt", "verdict_text"]


def default_pair(project: Project) -> tuple[PromptChoice, PromptChoice]:
    """Side by side's default: the working version (core.working) against the zero-shot baseline."""
    working = working_rule_set(project)
    if working is None:
        settings = load_settings(project)
        return PromptChoice("zero_shot", None, "Zero-shot baseline"), \
            PromptChoice("few_shot", None, f"{settings.few_shot_k}-shot baseline")
    return PromptChoice("version", working, f"v{working} · working"), \
        PromptChoice("zero_shot", None, "Zero-shot baseline")
