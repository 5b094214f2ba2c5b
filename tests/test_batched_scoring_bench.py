"""bench.batched_scoring's pure parts: how pieces are grouped into decodes, batch sizes, the search in rounds."""

from __future__ import annotations

import numpy as np
import pytest

from bench.batched_scoring import SearchState, equal_length_rounds, plan_batches, replay_rounds
from pld_desktop.backends.llama_student import LabelSpace


@pytest.mark.parametrize("lengths", [[19, 20, 16, 17, 21, 18, 17, 16], [5], [1, 3, 1], [2, 2, 2], [600, 3]])
def test_every_token_is_decoded_once_in_equal_shares(lengths: list[int]) -> None:
    n_batch = 512
    seen: dict[int, list[int]] = {j: [] for j in range(len(lengths))}
    for group, lo, hi in equal_length_rounds(lengths, n_batch):
        assert len(group) * (hi - lo) <= n_batch
        assert all(hi <= lengths[j] for j in group)  # an equal share of each piece in the call
        if len(group) * (hi - lo) == 1:  # a call of one token: a one-token piece or a piece's last token
            assert hi == lengths[group[0]]
        if any(lengths[j] == 1 for j in group):
            assert group == [group[0]]  # one-token pieces are decoded alone
        for j in group:
            seen[j].extend(range(lo, hi))
    assert seen == {j: list(range(n)) for j, n in enumerate(lengths)}


def test_batch_size_follows_memory_and_falls_back_to_one() -> None:
    plan = plan_batches(prefix_tokens=700, example_tokens=[20] * 30, label_tokens=12, max_size=8,
                        bytes_per_cell=1000, memory_budget=10 * 768 * 1000)
    assert (plan.size, plan.stream_tokens) == (8, 768)
    assert plan_batches(prefix_tokens=700, example_tokens=[20] * 30, label_tokens=12, max_size=8,
                        bytes_per_cell=1000, memory_budget=768 * 1000).size == 1
    assert plan_batches(prefix_tokens=10, example_tokens=[5], label_tokens=3, max_size=8, bytes_per_cell=1,
                        memory_budget=1 << 30).size == 1
    assert plan_batches(prefix_tokens=10, example_tokens=[5, 5], label_tokens=3, max_size=1, bytes_per_cell=1,
                        memory_budget=1 << 30).size == 1


def test_rounds_replay_the_per_example_search() -> None:
    """Searching several examples in rounds (one path per example per round) gives exactly the per-example
    search's probabilities and asks for the same paths."""
    pieces = {b"not_": [1], b"n": [2], b"ot_": [3], b"mentioned": [4], b"entailed": [5], b"e": [6], b"not": [7],
              b"_": [8]}
    space = LabelSpace(["not_mentioned", "not_entailed", "entailed"], pieces)

    def logits(seed: int, path: tuple[int, ...]) -> np.ndarray:
        return np.random.default_rng([seed, *path]).normal(0, 2, 16).astype(np.float32)

    expected = [space.score(lambda p, s=seed: logits(s, p), [0]) for seed in range(4)]
    states = [SearchState(known={(): logits(seed, ())}) for seed in range(4)]
    rounds = 0
    while True:
        needed = replay_rounds(states, lambda i, next_logits: space.score(next_logits, [0]))
        if not needed:
            break
        rounds += 1
        for i, path in needed.items():
            states[i].known[path] = logits(i, path)
    assert rounds >= 1
    assert [s.result.probs for s in states] == [e.probs for e in expected]
    assert [s.result.evaluations for s in states] == [e.evaluations for e in expected]
