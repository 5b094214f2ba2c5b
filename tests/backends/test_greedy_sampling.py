"""Grammar-first greedy sampling (issue 15) picks exactly what llama.cpp's sampler chain picks."""

from __future__ import annotations

import ctypes

import llama_cpp
import llama_cpp.llama_cpp as llama_capi
import numpy as np
import pytest
from llama_cpp import _internals

from pld_desktop.backends.bundled import bundled_local_teacher_path
from pld_desktop.backends.greedy_sampling import GrammarFirstSampler
from pld_desktop.backends.local_teacher import _parsed_grammar
from pld_desktop.backends.teacher_grammar import schema_grammar
from pld_desktop.core import teacher_prompts as tp

PENALTY, LAST_N = 1.1, 64


@pytest.fixture(scope="module")
def vocab_model() -> llama_cpp.Llama:
    return llama_cpp.Llama(str(bundled_local_teacher_path()), vocab_only=True, verbose=False)


def chain(model: llama_cpp.Llama, grammar: object) -> _internals.LlamaSampler:
    sampler = _internals.LlamaSampler()
    sampler.add_penalties(n_vocab=model.n_vocab(), penalty_last_n=LAST_N, penalty_repeat=PENALTY,
                          penalty_freq=0.0, penalty_present=0.0)
    sampler.add_grammar(model._model, grammar)
    sampler.add_greedy()
    return sampler


def chain_choice(sampler: _internals.LlamaSampler, logits: np.ndarray) -> int:
    """llama.cpp's own choice: the chain applied to the whole vocabulary in id order (as llama_sampler_sample)."""
    data = (llama_capi.llama_token_data * len(logits))()
    for i, value in enumerate(logits.tolist()):
        data[i].id, data[i].logit, data[i].p = i, value, 0.0
    array = llama_capi.llama_token_data_array(data=data, size=len(logits), selected=-1, sorted=False)
    llama_capi.llama_sampler_apply(sampler.sampler, ctypes.byref(array))
    return int(data[array.selected].id)


def allowed_mask(grammar_only: _internals.LlamaSampler, n_vocab: int) -> np.ndarray:
    data = (llama_capi.llama_token_data * n_vocab)()
    for i in range(n_vocab):
        data[i].id, data[i].logit = i, 0.0
    array = llama_capi.llama_token_data_array(data=data, size=n_vocab, selected=-1, sorted=False)
    llama_capi.llama_sampler_apply(grammar_only.sampler, ctypes.byref(array))
    logits = np.ctypeslib.as_array(ctypes.cast(data, ctypes.POINTER(ctypes.c_float)), shape=(n_vocab * 3,))[1::3]
    return np.isfinite(logits)


def wide_case(logits: np.ndarray, allowed: np.ndarray, rng: np.random.Generator, step: int) -> bool:
    """Make the best allowed tokens rank just below `rank` refused ones, two of them tied (the lower id must win),
    at the edge of the 512 window on some steps (ties across the window's boundary). False if the grammar's
    state leaves too few tokens of either kind."""
    refused_ids, allowed_ids = np.flatnonzero(~allowed), np.flatnonzero(allowed)
    rank = (511, 4095, int(rng.integers(40, 3000)))[step // 8 % 3]
    if len(refused_ids) < rank or len(allowed_ids) < 3:
        return False
    logits[:] = rng.normal(0.0, 1.0, len(logits)).astype(np.float32)
    logits[rng.choice(refused_ids, size=rank, replace=False)] = rng.uniform(20.0, 30.0, rank).astype(np.float32)
    logits[rng.choice(allowed_ids, size=3, replace=False)] = np.float32(19.0)
    return True


def test_grammar_first_choices_equal_the_sampler_chain_on_both_branches(vocab_model: llama_cpp.Llama) -> None:
    schema = tp.extraction_schema(("complaint", "fraud_report", "question"))
    grammar = _parsed_grammar(schema_grammar(schema.model_json_schema(), max_chars=120))
    reference = chain(vocab_model, grammar)
    probe = chain(vocab_model, grammar)  # only asked which token is allowed, kept in step with the reference
    grammar_only = _internals.LlamaSampler()
    grammar_only.add_grammar(vocab_model._model, grammar)
    ours = GrammarFirstSampler(vocab_model._model.vocab, vocab_model.n_vocab(), grammar,
                               repeat_penalty=PENALTY, penalty_last_n=LAST_N)
    rng = np.random.default_rng(7)
    n_vocab = vocab_model.n_vocab()
    try:
        for step in range(96):
            logits = rng.normal(0.0, 3.0, n_vocab).astype(np.float32)
            if step % 2 == 0:
                # Make an allowed token the best one (the first check accepts it) ...
                logits[chain_choice(probe, logits)] = 40.0
            elif step % 4 == 1:
                # ... or the second best (found among the top tokens asked one by one), ties included ...
                allowed = np.flatnonzero(allowed_mask(grammar_only, n_vocab))
                picks = rng.choice(allowed, size=min(3, len(allowed)), replace=False)
                refused = int(rng.choice(np.flatnonzero(~allowed_mask(grammar_only, n_vocab))))
                logits[refused] = 40.0
                logits[picks] = np.array([38.0, 39.0, 38.5], dtype=np.float32)[:len(picks)]
                if step % 8 == 1 and len(picks) > 1:
                    logits[picks[:2]] = 39.0  # equal logits: the lower id wins
            elif step % 8 == 3 and wide_case(logits, allowed_mask(grammar_only, n_vocab), rng, step):
                pass  # ... or ranked between 33 and 4096 (found by one call over the top 512 or 4096) ...
            else:
                # ... or random logits, whose best allowed token is usually far down (the whole vocabulary).
                logits[rng.integers(0, n_vocab)] = 12.0
            expected = chain_choice(reference, logits)
            got = ours.choose(logits.copy())
            assert got == expected, f"step {step}"
            if llama_capi.llama_vocab_is_eog(vocab_model._model.vocab, expected):
                break
            for sampler in (reference, probe, grammar_only):
                llama_capi.llama_sampler_accept(sampler.sampler, expected)
        assert ours.counts.grammar_first_accepted > 0 and ours.counts.grammar_top_accepted > 0 \
            and ours.counts.grammar_wide_accepted > 0 and ours.counts.grammar_full_checks > 0
    finally:
        ours.close()
        reference.close()
        probe.close()
        grammar_only.close()


def test_penalty_matches_llama_cpp_on_positive_and_negative_logits(vocab_model: llama_cpp.Llama) -> None:
    ours = GrammarFirstSampler(vocab_model._model.vocab, vocab_model.n_vocab(), None,
                               repeat_penalty=PENALTY, penalty_last_n=3)
    logits = np.linspace(-2.0, 2.0, vocab_model.n_vocab(), dtype=np.float32)
    for token in (0, vocab_model.n_vocab() - 1, 5, 7):  # the window keeps the last 3: 0 drops out
        ours._recent.append(token)
    out = ours.penalised(logits)
    assert out[0] == logits[0]
    assert out[-1] == np.float32(logits[-1] / np.float32(PENALTY))
    assert out[5] == np.float32(logits[5] * np.float32(PENALTY))
    assert (logits == np.linspace(-2.0, 2.0, vocab_model.n_vocab(), dtype=np.float32)).all()


def test_without_a_grammar_the_repeat_penalty_decides_as_llama_cpp(vocab_model: llama_cpp.Llama) -> None:
    reference = _internals.LlamaSampler()
    reference.add_penalties(n_vocab=vocab_model.n_vocab(), penalty_last_n=LAST_N, penalty_repeat=PENALTY,
                            penalty_freq=0.0, penalty_present=0.0)
    reference.add_greedy()
    ours = GrammarFirstSampler(vocab_model._model.vocab, vocab_model.n_vocab(), None,
                               repeat_penalty=PENALTY, penalty_last_n=LAST_N)
    rng = np.random.default_rng(11)
    chosen: list[int] = []
    changed_by_penalty = 0
    try:
        for _ in range(120):
            logits = rng.normal(0.0, 1.0, vocab_model.n_vocab()).astype(np.float32)
            if chosen:
                # An earlier choice just above a fresh token (positive or negative): the penalty picks between them.
                top = np.float32(rng.choice([6.0, -0.05]))
                logits[:] = np.minimum(logits, top - 1) if top > 0 else np.float32(-1.0) - np.abs(logits)
                logits[chosen[int(rng.integers(0, len(chosen)))]] = top
                logits[int(rng.integers(0, vocab_model.n_vocab()))] = top * np.float32(0.97 if top > 0 else 1.03)
            expected = chain_choice(reference, logits)
            got = ours.choose(logits.copy())
            assert got == expected
            changed_by_penalty += int(expected != int(np.argmax(logits)))
            llama_capi.llama_sampler_accept(reference.sampler, expected)
            chosen.append(expected)
        assert changed_by_penalty > 10
    finally:
        ours.close()
        reference.close()
