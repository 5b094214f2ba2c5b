"""P(label) from next-step distributions: the best-first search both students use (in-process and server).

The in-process student expands a state with token ids and the model's logits; the server student with the text
pieces and logprobs the server returns. Everything else - which states are ambiguous, the order they are
expanded in, the budget, how unexplored mass is shared - is this one function, so the two cannot drift apart.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

K = TypeVar("K", bound=Hashable)  # what a path is made of: token ids (in-process) or text pieces (server)

# One option at a state: (what is appended to the path, the text it writes, its log-probability).
# The text b"" means "end of the answer" and is offered only when the written text is a whole label.
Step = tuple[K, bytes, float]
Expand = Callable[[tuple[K, ...], bytes, list[str]], "Sequence[Step[K]] | None"]


def label_mass(spelled: dict[str, bytes], expand: Expand[K], *, min_branch_prob: float = 3e-3,
               max_evaluations: int = 8, max_path_len: int | None = None,
               who: str = "model") -> tuple[dict[str, float], int, float]:
    """Returns (P(label) for every label, states expanded, probability mass left unexplored).

    `spelled` maps each label to the bytes that spell it (with any leading space). `expand(path, written,
    alive)` lists the options after `path` (None or [] when the state cannot be read). Ambiguous states are
    expanded from the most probable down, at most `max_evaluations` of them; branches below `min_branch_prob`
    or beyond the budget are not explored, and their mass is shared among the labels still possible there in
    proportion to what the explored branches gave those labels (evenly if they gave nothing).
    """
    by_text = {text: label for label, text in spelled.items()}

    def consistent(written: bytes) -> list[str]:
        return [label for label, text in spelled.items() if text.startswith(written)]

    mass = {label: 0.0 for label in spelled}
    unexplored: list[tuple[float, list[str]]] = []
    evaluations = 0
    counter = itertools.count()  # ties in the heap resolve in insertion order: deterministic
    heap: list[tuple[float, int, tuple[K, ...], bytes]] = [(-1.0, next(counter), (), b"")]
    while heap:
        neg_p, _, path, written = heapq.heappop(heap)
        p = -neg_p
        alive = consistent(written)
        if len(alive) == 1:
            mass[alive[0]] += p
            continue
        if evaluations >= max_evaluations or (max_path_len is not None and len(path) >= max_path_len):
            unexplored.append((p, alive))
            continue
        options = list(expand(path, written, alive) or ())
        evaluations += 1
        if not options:
            unexplored.append((p, alive))
            continue
        top = max(logp for _, _, logp in options)
        norm = top + math.log(math.fsum(math.exp(logp - top) for _, _, logp in options)) \
            if math.isfinite(top) else top
        for step, piece, logp in options:
            q = p * math.exp(logp - norm)
            if piece == b"":
                mass[by_text[written]] += q
                continue
            child = written + piece
            child_labels = consistent(child)
            if len(child_labels) == 1:
                mass[child_labels[0]] += q
            elif q >= min_branch_prob:
                heapq.heappush(heap, (-q, next(counter), path + (step,), child))
            else:
                unexplored.append((q, child_labels))
    explored = dict(mass)
    for q, alive in unexplored:
        weights = [explored[label] for label in alive]
        share = math.fsum(weights)
        for label, weight in zip(alive, weights):
            mass[label] += q * (weight / share if share > 0 else 1.0 / len(alive))
    total = math.fsum(mass.values())
    if not total > 0 or not math.isfinite(total):
        raise ValueError(f"The {who}'s label scores are not finite.")
    return {label: m / total for label, m in mass.items()}, evaluations, math.fsum(q for q, _ in unexplored)
