"""The student's prompt: how a rule set becomes the exact system prompt text, and how an input is framed.

This is the single place that decides prompt bytes; evaluation, export and the GUI preview all call it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DEFAULT_TASK = "Classify the input into exactly one of the labels below."


@dataclass(frozen=True)
class PromptRule:
    text: str
    label: str


@dataclass(frozen=True)
class FewShotExample:
    text: str
    label: str


def _labels_block(labels: Sequence[str], meanings: Mapping[str, str] | None) -> str:
    meanings = meanings or {}
    lines = []
    for label in labels:
        meaning = (meanings.get(label) or "").strip()
        lines.append(f"- {label}: {meaning}" if meaning else f"- {label}")
    return "Labels:\n" + "\n".join(lines)


def _answer_line(labels: Sequence[str]) -> str:
    return "Answer with exactly one label from: " + ", ".join(labels) + "."


def build_rules_prompt(task: str, labels: Sequence[str], rules: Sequence[PromptRule],
                       meanings: Mapping[str, str] | None = None) -> str:
    """Task description, the labels with their meanings, the numbered rules, the answer instruction."""
    parts = [task.strip() or DEFAULT_TASK, _labels_block(labels, meanings)]
    if rules:
        numbered = [f"{i}. {' '.join(r.text.split())} -> {r.label}" for i, r in enumerate(rules, 1)]
        parts.append("Rules (apply the first rule that fits; the label after -> is the answer):\n"
                     + "\n".join(numbered))
    parts.append(_answer_line(labels))
    return "\n\n".join(parts)


def build_zero_shot_prompt(task: str, labels: Sequence[str], meanings: Mapping[str, str] | None = None) -> str:
    """Baseline: the same task and labels, no rules."""
    return build_rules_prompt(task, labels, [], meanings)


def build_few_shot_prompt(task: str, labels: Sequence[str], examples: Sequence[FewShotExample],
                          meanings: Mapping[str, str] | None = None) -> str:
    """Baseline: task and labels plus k solved training examples."""
    shots = "\n\n".join(f"Input:\n{e.text}\nLabel: {e.label}" for e in examples)
    return "\n\n".join([task.strip() or DEFAULT_TASK, _labels_block(labels, meanings),
                        "Examples:\n\n" + shots, _answer_line(labels)])


def build_rules_with_examples_prompt(task: str, labels: Sequence[str], rules: Sequence[PromptRule],
                                     examples: Sequence[FewShotExample],
                                     meanings: Mapping[str, str] | None = None) -> str:
    """The rules prompt with k solved training examples after the rules (the rules+examples candidate)."""
    rules_part = build_rules_prompt(task, labels, rules, meanings)
    head = rules_part[: rules_part.rindex(_answer_line(labels))].rstrip()
    shots = "\n\n".join(f"Input:\n{e.text}\nLabel: {e.label}" for e in examples)
    return "\n\n".join([head, "Worked examples:\n\n" + shots, _answer_line(labels)])


def student_user_message(system_prompt: str, text: str) -> str:
    """The single user turn the student sees. Gemma has no system role, so the system prompt leads the
    first user turn (library-notes section 1); the input is delimited so it reads as data."""
    return f"{system_prompt}\n\nInput:\n{text}\n\nLabel:"


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
