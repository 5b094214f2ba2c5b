"""Greedy, grammar-constrained sampling with the grammar asked about the best token first.

llama.cpp's grammar sampler checks every token of the vocabulary against the grammar's stacks: on SmolLM2
(49k tokens) ~9 ms per sampled token, as much as a batched decode step. A greedy choice only needs the grammar
to accept one token: the highest-scoring one after the repeat penalty. If the grammar accepts it, it is what the
full chain (penalties, grammar, greedy) would pick, since an argmax over all tokens that is allowed is the argmax
over the allowed ones (llama.cpp's common sampler does the same, `grammar_first` off). When it is refused, the
next best tokens are asked in order, and only when all of the top 32 are refused is the whole vocabulary checked.
"""

from __future__ import annotations

import ctypes
from collections import deque
from dataclasses import dataclass
from typing import Any

import llama_cpp.llama_cpp as llama_capi
import numpy as np

__all__ = ["GrammarFirstSampler", "SamplingCounts"]

# llama_token_data as a numpy record: the whole-vocabulary array the grammar marks in place.
_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])
assert _TOKEN_DATA.itemsize == ctypes.sizeof(llama_capi.llama_token_data)


@dataclass
class SamplingCounts:
    """How often the grammar accepted the best token (one check) or the whole vocabulary had to be checked.
    `GenerationStats` extends it, so a batched generator's samplers count straight into its stats."""
    grammar_first_accepted: int = 0  # sampled tokens the grammar accepted at the first check
    grammar_top_accepted: int = 0    # ... found among the next best tokens, asked one by one
    grammar_full_checks: int = 0     # sampled tokens that needed the whole vocabulary checked


class GrammarFirstSampler:
    """Temperature-0 sampling of one sequence as llama.cpp's chain of penalties (repeat penalty over the last
    `penalty_last_n` sampled tokens, frequency and presence 0), grammar and greedy, in that order; ties go to
    the lowest token id, as llama.cpp's greedy sampler. `grammar` is a llama_cpp.LlamaGrammar or None."""

    def __init__(self, vocab: Any, n_vocab: int, grammar: Any, *, repeat_penalty: float, penalty_last_n: int,
                 counts: SamplingCounts | None = None) -> None:
        self.n_vocab = int(n_vocab)
        self.repeat_penalty = np.float32(repeat_penalty)
        self._recent: deque[int] = deque(maxlen=max(0, int(penalty_last_n)))
        self.counts = counts or SamplingCounts()
        self._grammar: Any = None
        if grammar is not None:
            self._grammar = llama_capi.llama_sampler_init_grammar(
                vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8"))
            if not self._grammar:
                raise ValueError("llama.cpp could not parse the reply grammar")
        self._one = (llama_capi.llama_token_data * 1)()
        self._one_array = llama_capi.llama_token_data_array(
            data=self._one, size=1, selected=-1, sorted=False)
        self._all: np.ndarray[Any, Any] | None = None

    def close(self) -> None:
        if self._grammar:
            llama_capi.llama_sampler_free(self._grammar)
        self._grammar = None

    def penalised(self, logits: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """The logits after the repeat penalty (a copy where any token is penalised; `logits` is not changed)."""
        if not self._recent or self.repeat_penalty == np.float32(1.0):
            return logits
        out = logits.copy()
        ids = np.fromiter(set(self._recent), dtype=np.int64)
        values = out[ids]
        out[ids] = np.where(values <= 0, values * self.repeat_penalty, values / self.repeat_penalty)
        return out

    def sample(self, ctx: Any, index: int) -> int:
        """The next token from the logits of batch entry `index` of the last decode; the grammar and the
        penalty window advance past it."""
        pointer = llama_capi.llama_get_logits_ith(ctx, index)
        return self.choose(np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)))

    def choose(self, raw_logits: np.ndarray[Any, Any]) -> int:
        """The next token for these logits (float32, one per vocabulary token; not changed); the grammar and the
        penalty window advance past it."""
        logits = self.penalised(raw_logits)
        token = int(np.argmax(logits))
        if self._grammar:
            if self._allows(token, float(logits[token])):
                self.counts.grammar_first_accepted += 1
            else:
                found = self._best_of_top(logits)
                if found is not None:
                    self.counts.grammar_top_accepted += 1
                    token = found
                else:
                    self.counts.grammar_full_checks += 1
                    token = self._best_allowed(logits)
            llama_capi.llama_sampler_accept(self._grammar, token)
        if self._recent.maxlen:
            self._recent.append(token)
        return token

    def _allows(self, token: int, logit: float) -> bool:
        one: Any = self._one[0]  # ctypes fields take Python numbers (its stubs type them as c_int32)
        one.id, one.logit, one.p = token, logit, 0.0
        self._one_array.size, self._one_array.selected, self._one_array.sorted = 1, -1, False
        llama_capi.llama_sampler_apply(self._grammar, ctypes.byref(self._one_array))
        return bool(self._one[0].logit != float("-inf"))  # the grammar marks a refused token -inf

    TOP_K = 32

    def _best_of_top(self, logits: np.ndarray[Any, Any]) -> int | None:
        """The best token the grammar allows among the `TOP_K` highest, asked in order (highest logit first,
        lowest id first among equals, as the greedy sampler breaks ties); None if it refuses them all. Exact:
        every token scoring higher than the one returned has been refused."""
        k = min(self.TOP_K, self.n_vocab - 1)
        if k < 1:
            return None
        top = np.argpartition(-logits, k)[:k]
        kth = logits[top].min()
        # argpartition splits ties at the boundary arbitrarily: the candidates are everything above the k-th
        # value and, at it, the lowest ids; any token outside scores at most the k-th value and has a higher id.
        above = np.flatnonzero(logits > kth)
        at = np.flatnonzero(logits == kth)[:max(0, k - len(above))]
        candidates = np.concatenate([above, at])
        order = np.lexsort((candidates, -logits[candidates]))
        for token in candidates[order].tolist():
            if self._allows(int(token), float(logits[token])):
                return int(token)
        return None

    def _best_allowed(self, logits: np.ndarray[Any, Any]) -> int:
        if self._all is None:
            self._all = np.zeros(self.n_vocab, dtype=_TOKEN_DATA)
            self._all["id"] = np.arange(self.n_vocab, dtype=np.int32)
        everything = self._all
        everything["logit"] = logits
        everything["p"] = 0.0
        array = llama_capi.llama_token_data_array(
            data=everything.ctypes.data_as(ctypes.POINTER(llama_capi.llama_token_data)),
            size=self.n_vocab, selected=-1, sorted=False)
        llama_capi.llama_sampler_apply(self._grammar, ctypes.byref(array))
        token = int(np.argmax(everything["logit"]))
        if everything["logit"][token] == float("-inf"):
            # Accepting a token the grammar refuses throws inside llama.cpp, which would abort the process.
            raise RuntimeError("The reply grammar allows no next token (a bug; please report it).")
        return token
