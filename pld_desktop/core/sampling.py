"""Deterministic stratified sampling of examples (closed-loop samples, failure/success picks, few-shot)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from .project import Example


def stratified_sample(examples: Sequence[Example], n: int, seed: int) -> list[Example]:
    """Up to n examples, as evenly spread over labels as the data allows, deterministic for a seed."""
    rng = random.Random(seed)
    by_label: dict[str, list[Example]] = {}
    for e in examples:
        by_label.setdefault(e.label, []).append(e)
    for items in by_label.values():
        rng.shuffle(items)
    out: list[Example] = []
    labels = sorted(by_label)
    while len(out) < n and any(by_label[lab] for lab in labels):
        for lab in labels:
            if by_label[lab] and len(out) < n:
                out.append(by_label[lab].pop())
    return sorted(out, key=lambda e: e.id)
