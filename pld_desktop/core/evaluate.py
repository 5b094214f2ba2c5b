"""Run the student over a set of examples with one system prompt, resumably, and score it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .fast_paths import fast_paths_enabled
from .metrics import classification_metrics
from .progress import Cancelled, Progress, check
from .project import Example, Project
from .prompts import sha256_text
from .protocols import ConcurrentStudent, PromptTooLong, Student
from .states import EvaluationStatus


class StudentFailed(RuntimeError):
    """The student could not classify an item (its server refused or vanished, the model crashed): the scoring
    stops there with the cause; the predictions made so far are kept and a rerun resumes after them."""


@dataclass(frozen=True)
class _Reused:
    label: str
    probs: dict[str, float]
    latency_s: float


def reuse_predictions() -> bool:
    """Reuse of predictions across evaluations (issue 15) unless PLD_FAST_PATHS=0 (benchmarks of the old path)."""
    return fast_paths_enabled()


def student_record(student: Student) -> dict[str, Any]:
    return {**asdict(student.identity), "n_ctx": student.n_ctx}


def evaluation_key(prompt_sha256: str, student: Student, split: str, example_ids: Sequence[int]) -> str:
    ids = ",".join(str(i) for i in sorted(example_ids))
    raw = json.dumps([prompt_sha256, student.identity.sha256, student.n_ctx, split, ids])
    return hashlib.sha256(raw.encode()).hexdigest()


def evaluate_prompt(project: Project, student: Student, prompt_text: str, examples: Sequence[Example], *,
                    kind: str, split: str, progress: Progress, rule_set_id: int | None = None,
                    stage: str = "") -> tuple[int, dict[str, Any]]:
    """Classify `examples` with `prompt_text`; predictions are committed one by one and reused on rerun.

    Returns (evaluation id, metrics). The same prompt, student, split and examples always map to the same
    evaluation, so resuming after a crash or re-scoring an unchanged rule set costs nothing.
    """
    labels = project.labels()
    prompt_sha = sha256_text(prompt_text)
    if examples:
        longest = max(examples, key=lambda e: len(e.text))
        student.check_fits(prompt_text, longest.text, labels)
    eval_id = project.get_or_create_evaluation(
        cache_key=evaluation_key(prompt_sha, student, split, [e.id for e in examples]), kind=kind,
        rule_set_id=rule_set_id, split=split, prompt_text=prompt_text, prompt_sha256=prompt_sha,
        student=student_record(student), n_examples=len(examples))
    existing = project.evaluation(eval_id)
    done = project.predictions(eval_id)
    if existing.status == EvaluationStatus.DONE and existing.metrics is not None and len(done) == len(examples):
        return eval_id, existing.metrics
    progress.begin(stage or f"Scoring {kind} on {split}", len(examples))
    progress.report(len(done), len(examples), "resumed" if done else "")
    todo = [e for e in examples if e.id not in done]

    def record(example: Example, pred: Any) -> None:
        project.add_prediction(eval_id, example.id, pred.label, pred.probs, pred.latency_s)
        done[example.id] = {"predicted": pred.label, "probs": pred.probs, "latency_s": pred.latency_s}
        progress.report(len(done), len(examples), example.ext_id)

    if reuse_predictions() and todo:
        # The closed loop scores one prompt on overlapping samples, and phases re-score what another scored.
        seen = project.prompt_predictions(prompt_sha, student.identity.sha256, student.n_ctx, [e.id for e in todo],
                                          exclude_evaluation=eval_id)
        for example in [e for e in todo if e.id in seen]:
            old = seen[example.id]
            record(example, _Reused(old["predicted"], old["probs"], old["latency_s"]))
        todo = [e for e in todo if e.id not in seen]

    if isinstance(student, ConcurrentStudent):  # a server-backed student runs requests concurrently
        try:
            for i, pred in student.classify_many(prompt_text, [e.text for e in todo], labels,
                                                 cancelled=progress.cancelled):
                record(todo[i], pred)
        except (Cancelled, PromptTooLong, StudentFailed):
            raise
        except Exception as exc:
            raise StudentFailed(f"the student failed after {len(done)} of {len(examples)} items: "
                                f"{exc or type(exc).__name__}") from exc
        check(progress)
    else:
        for example in todo:
            check(progress)
            try:
                pred = student.classify(prompt_text, example.text, labels)
            except (Cancelled, PromptTooLong, StudentFailed):
                raise
            except Exception as exc:
                raise StudentFailed(f"the student failed on item {example.ext_id} ({len(done)} of {len(examples)} "
                                    f"items scored): {exc or type(exc).__name__}") from exc
            record(example, pred)
    gold = [e.label for e in examples]
    predicted = [done[e.id]["predicted"] for e in examples]
    latencies = [done[e.id]["latency_s"] for e in examples]
    metrics = classification_metrics(gold, predicted, labels, latencies)
    project.finish_evaluation(eval_id, metrics)
    return eval_id, metrics
