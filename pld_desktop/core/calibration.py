"""Contextual calibration of the student's label probabilities (Zhao et al., 2021, "Calibrate before use").

A small student leans towards one label whatever the input; its prior under a prompt is measured on
content-free inputs and divided out: q(label | x) ~ p(label | x) / p(label | content-free). The prior is
computed once per (prompt, student) and kept in the project; calibrated predictions and metrics are derived
from the stored raw probabilities and kept beside them, so calibration never changes a raw figure.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

from .metrics import classification_metrics
from .project import Example, Project
from .prompts import sha256_text
from .protocols import Student

# The content-free inputs of the paper's recipe; their mean label distribution is the prompt's prior.
CONTENT_FREE_INPUTS = ("N/A", "", "[MASK]")


def _prior_key(prompt_text: str, student: Student) -> str:
    raw = json.dumps([sha256_text(prompt_text), student.identity.sha256, student.n_ctx, CONTENT_FREE_INPUTS])
    return "calibration_prior:" + hashlib.sha256(raw.encode()).hexdigest()[:32]


def content_free_prior(project: Project, student: Student, prompt_text: str, labels: Sequence[str]) -> dict[str, float]:
    """The student's mean label distribution on the content-free inputs under `prompt_text` (cached)."""
    key = _prior_key(prompt_text, student)
    cached = project.get_setting(key)
    if cached is not None and set(cached) == set(labels):
        return {lab: float(cached[lab]) for lab in labels}
    sums = {lab: 0.0 for lab in labels}
    for text in CONTENT_FREE_INPUTS:
        pred = student.classify(prompt_text, text, labels)
        for lab in labels:
            sums[lab] += float(pred.probs.get(lab, 0.0))
    prior = {lab: sums[lab] / len(CONTENT_FREE_INPUTS) for lab in labels}
    project.set_setting(key, prior)
    return prior


def calibrate(probs: dict[str, float], prior: dict[str, float], labels: Sequence[str]) -> dict[str, float]:
    """Divide out the prior and renormalise (a label the prior gives ~0 is floored, not divided by zero)."""
    raw = {lab: float(probs.get(lab, 0.0)) / max(float(prior.get(lab, 0.0)), 1e-6) for lab in labels}
    total = sum(raw.values())
    if total <= 0:
        return {lab: 1.0 / len(labels) for lab in labels}
    return {lab: v / total for lab, v in raw.items()}


def _calibrated_key(evaluation_id: int) -> str:
    return f"calibrated:{evaluation_id}"


def stored_calibration(project: Project, evaluation_id: int) -> dict[str, Any] | None:
    """What `calibrated_evaluation` stored for `evaluation_id`, or None when it was never calibrated."""
    stored: dict[str, Any] | None = project.get_setting(_calibrated_key(evaluation_id))
    return stored


def calibrated_evaluation(project: Project, student: Student, evaluation_id: int, examples: Sequence[Example],
                          ) -> dict[str, Any]:
    """Calibrated predictions and metrics of a finished evaluation, stored as `calibrated:<id>` beside it.

    Costs three student calls the first time a prompt is calibrated, nothing after.
    """
    key = _calibrated_key(evaluation_id)
    stored = project.get_setting(key)
    if stored is not None and stored.get("n") == len(examples):
        return dict(stored)
    ev = project.evaluation(evaluation_id)
    labels = project.labels()
    prior = content_free_prior(project, student, ev.prompt_text, labels)
    preds = project.predictions(evaluation_id)
    out_preds: dict[str, dict[str, Any]] = {}
    gold, predicted = [], []
    for e in examples:
        q = calibrate(preds[e.id]["probs"], prior, labels)
        best = max(labels, key=lambda lab: (q[lab], -labels.index(lab)))
        out_preds[str(e.id)] = {"predicted": best, "probs": {k: round(v, 6) for k, v in q.items()}}
        gold.append(e.label)
        predicted.append(best)
    metrics = classification_metrics(gold, predicted, labels, [preds[e.id]["latency_s"] for e in examples])
    result = {"n": len(examples), "prior": prior, "metrics": metrics, "predictions": out_preds,
              "content_free_inputs": list(CONTENT_FREE_INPUTS)}
    project.set_setting(key, result)
    return result
