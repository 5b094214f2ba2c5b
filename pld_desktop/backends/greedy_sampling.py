"""Greedy, grammar-constrained sampling with the grammar asked about the best token first.

llama.cpp's grammar sampler checks every token of the vocabulary against the grammar's stacks: on SmolLM2
(49k tokens) ~9 ms per sampled token, as much as a batched decode step. A greedy choice only needs the grammar
to accept one token: the highest-scoring one after the repeat penalty. If the grammar accepts it, it is what the
full chain (penalties, grammar, greedy) would pick, since an argmax over all tokens that is allowed is the argmax
over the allowed ones (llama.cpp's common sampler does the same, `grammar_first` off). When it is refused, the
next best tokens are asked in order; when all of the top 32 are refused, the top 512 and then the top 4096 are
checked in one grammar call each (in phase 1 two thirds of such searches end at 512), and only then the whole
vocabulary.
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
    grammar_wide_accepted: int = 0   # ... found among the top 512 or 4096, checked in one call each
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
                elif (found := self._best_of_wider(logits)) is not None:
                    self.counts.grammar_wide_accepted += 1
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

    def _ranked_top(self, logits: np.ndarray[Any, Any], k: int) -> np.ndarray[Any, Any]:
        """The `k` best token ids in the greedy sampler's order: highest logit first, the lowest id first among
        equals. Every token left out ranks below every one returned."""
        top = np.argpartition(-logits, k)[:k]
        kth = logits[top].min()
        # argpartition splits ties at the boundary arbitrarily: the candidates are everything above the k-th
        # value and, at it, the lowest ids; any token outside scores at most the k-th value and has a higher id.
        above = np.flatnonzero(logits > kth)
        at = np.flatnonzero(logits == kth)[:max(0, k - len(above))]
        candidates = np.concatenate([above, at])
        return candidates[np.lexsort((candidates, -logits[candidates]))]

    def _best_of_top(self, logits: np.ndarray[Any, Any]) -> int | None:
        """The best token the grammar allows among the `TOP_K` highest, asked in order; None if it refuses them
        all. Exact: every token ranking above the one returned has been refused."""
        k = min(self.TOP_K, self.n_vocab - 1)
        if k < 1:
            return None
        for token in self._ranked_top(logits, k).tolist():
            if self._allows(int(token), float(logits[token])):
                return int(token)
        return None

    WIDER = (512, 4096)

    def _best_of_wider(self, logits: np.ndarray[Any, Any]) -> int | None:
        """The best allowed token among the top 512, else the top 4096 (one grammar call each: it marks each
        candidate on its own, so a subset is judged as in the whole vocabulary); None if all are refused."""
        for k in self.WIDER:
            if k >= self.n_vocab:
                return None
            ranked = self._ranked_top(logits, k)
            marked = self._apply(ranked, logits[ranked])
            allowed = np.flatnonzero(marked != -np.inf)
            if allowed.size:
                return int(ranked[allowed[0]])  # the first allowed in rank order
        return None

    def _apply(self, ids: np.ndarray[Any, Any], logits: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        """The grammar applied to these candidates: their logits, refused ones set to -inf."""
        data = np.zeros(len(ids), dtype=_TOKEN_DATA)
        data["id"] = ids
        data["logit"] = logits
        array = llama_capi.llama_token_data_array(
            data=data.ctypes.data_as(ctypes.POINTER(llama_capi.llama_token_data)),
            size=len(ids), selected=-1, sorted=False)
        llama_capi.llama_sampler_apply(self._grammar, ctypes.byref(array))
        return data["logit"]

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
