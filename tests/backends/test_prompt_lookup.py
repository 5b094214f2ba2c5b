"""Prompt-lookup drafts (issue 15): the tokens that followed the latest earlier occurrence of the last n-gram."""

from __future__ import annotations

import random

from pld_desktop.backends.prompt_lookup import NgramDrafter


def brute_force(history: list[int], k: int, n: int, min_n: int) -> list[int]:
    for size in range(n, min_n - 1, -1):
        if len(history) < size:
            continue
        tail = history[-size:]
        for start in range(len(history) - size - 1, -1, -1):  # latest earlier occurrence first
            if history[start:start + size] == tail:
                return history[start + size:start + size + k]
    return []


def test_drafts_follow_the_latest_earlier_occurrence() -> None:
    drafter = NgramDrafter([1, 2, 3, 4, 5, 6, 1, 2, 3])
    assert drafter.draft(4) == [4, 5, 6, 1]
    drafter.add(9)              # (2, 3, 9) and (3, 9) never occurred before
    assert drafter.draft(4) == []
    assert NgramDrafter([7, 8, 9]).draft(3) == []
    assert NgramDrafter([1, 2, 3, 1, 2]).draft(0) == []


def test_drafts_equal_a_brute_force_search_on_random_histories() -> None:
    rng = random.Random(5)
    for _ in range(200):
        n, min_n = rng.choice([(3, 2), (2, 2), (4, 1)])
        history = [rng.randrange(6) for _ in range(rng.randrange(1, 60))]
        drafter = NgramDrafter(history[:10], n=n, min_n=min_n)
        for token in history[10:]:
            drafter.add(token)
        k = rng.randrange(1, 9)
        assert drafter.draft(k) == brute_force(history, k, n, min_n), (history, k, n, min_n)
