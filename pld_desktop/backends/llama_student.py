"""The local student on llama.cpp: scores every label of a classification prompt with one GGUF model.

The answer is not generated freely: P(label) is the probability that decoding constrained to the label set
(llama.cpp's grammar sampler with `root ::= "a" | "b" | ...`) writes that label, computed from the model's
next-token logits at the few points where the allowed answers branch; the label is its argmax. Consecutive
calls keep the system prompt's part of the KV cache, so a loop over examples with one prompt evaluates only
each example's own tokens; the KV state of each system prompt's part is also kept in an in-memory LRU
(`prefix_cache_bytes`), so alternating between prompts restores that state instead of evaluating it again, and
in files under ~/.cache/pld-desktop/prefix-states (`state_dir`, `disk_cache_bytes`), so a new process restores it
too.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import llama_cpp
import llama_cpp.llama_cpp as llama_capi
import numpy as np

from pld_desktop.backends.bundled import ModelFileError, bundled_student_path
from pld_desktop.backends.context_cursor import EvalStats, LlamaContextCursor, common_prefix_length
from pld_desktop.backends.gguf_file import has_sliding_window, model_identity
from pld_desktop.backends.label_search import label_mass
from pld_desktop.backends.llama_runtime import LlamaOwner, gguf_chat_formatter
from pld_desktop.backends.prefix_cache import PrefixStateCache, PrefixStateDiskCache, state_settings
from pld_desktop.core.prompts import student_user_message
from pld_desktop.core.protocols import ModelIdentity, Prediction, PromptTooLong

__all__ = ["END", "EvalStats", "LabelSpace", "LlamaContextCursor", "LlamaStudent", "ModelFileError", "ScoreResult",
           "token_pieces"]

END = -1  # the "answer ends here" step (any end-of-generation token)
log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# The label space and its scoring (pure: no llama.cpp, testable with a fake model)
# ---------------------------------------------------------------------------
@dataclass
class ScoreResult:
    probs: dict[str, float]
    evaluations: int          # contexts whose logits were read
    dropped_mass: float       # probability of ambiguous branches left unexplored (estimated, see LabelSpace)


class LabelSpace:
    """The answers a grammar `root ::= "<prefix>label1" | "<prefix>label2" | ...` allows, token by token.

    This mirrors llama.cpp's grammar sampler: after the text `c` written so far, every token whose text
    (piece) keeps `c` a prefix of some label is allowed (whole words, partial words, a lone space ...), and the
    end-of-generation tokens are allowed once `c` is a complete label. P(label) under constrained sampling is
    the sum, over every token path that spells it, of the products of the softmaxes restricted to the allowed
    tokens at each step. `score()` computes it exactly except for negligible branches:
    - a state that only one label is consistent with needs no model call (the grammar forces the rest);
    - so the model is asked only at ambiguous states: the start, after a lone space, after a shared head
      ("not_" of not_mentioned / not_entailed), after a label that another label extends ("neg" / "negative",
      where ending is one of the options);
    - ambiguous branches whose probability is below `min_branch_prob` (or beyond the evaluation budget) are
      not explored (typically other spellings of a shared head, " no"+"t_" for " not"+"_"); their mass is shared
      among the labels still possible there in proportion to what the explored branches gave those labels
      (evenly if they gave nothing). `dropped_mass` reports it and bounds the error of every probability.
    Byte strings are used throughout, so byte-level and byte-fallback tokens work like any other.
    """

    def __init__(self, labels: Sequence[str], pieces: Mapping[bytes, Sequence[int]], prefix: str = "") -> None:
        labels = list(labels)
        if not labels:
            raise ValueError("The student needs at least one label.")
        if len(set(labels)) != len(labels):
            duplicates = sorted({label for label in labels if labels.count(label) > 1})
            raise ValueError(f"Duplicate labels: {', '.join(duplicates)}")
        if any(label == "" for label in labels):
            raise ValueError("A label cannot be empty.")
        self.labels = tuple(labels)
        self.prefix = prefix
        self.pieces = pieces
        self.spelled = {label: (prefix + label).encode("utf-8") for label in labels}
        self._by_text = {text: label for label, text in self.spelled.items()}

    def consistent(self, written: bytes) -> list[str]:
        """Labels whose text starts with `written`."""
        return [label for label, text in self.spelled.items() if text.startswith(written)]

    def options(self, written: bytes) -> list[tuple[int, bytes]]:
        """(token, piece) for every token allowed after `written`, plus (END, b"") if `written` is a label."""
        found: dict[int, bytes] = {}
        for label in self.consistent(written):
            rest = self.spelled[label][len(written):]
            for k in range(1, len(rest) + 1):
                for token in self.pieces.get(rest[:k], ()):
                    found.setdefault(int(token), rest[:k])
        options = sorted(found.items())
        if written in self._by_text:
            options.append((END, b""))
        return options

    def score(self, next_logits: Callable[[tuple[int, ...]], np.ndarray], end_tokens: Sequence[int], *,
              min_branch_prob: float = 3e-3, max_evaluations: int = 8,
              max_path_tokens: int | None = None) -> ScoreResult:
        """P(label) for every label. `next_logits(path)` returns the full-vocabulary logits after the prompt
        followed by the token `path` (a view is fine: it is read at once). Ambiguous states are expanded from
        the most probable down, at most `max_evaluations` of them."""
        end_ids = np.asarray(sorted({int(t) for t in end_tokens}), dtype=np.int64)

        def expand(path: tuple[int, ...], written: bytes, alive: list[str]) -> list[tuple[int, bytes, float]]:
            options = self.options(written)
            logits = next_logits(path)
            steps = []
            for token, piece in options:
                if token == END:
                    if end_ids.size == 0:
                        raise ValueError("The model has no end-of-generation token to end a label with.")
                    steps.append((token, b"", _logsumexp(np.asarray(logits[end_ids], dtype=np.float64))))
                else:
                    steps.append((token, piece, float(logits[token])))
            return steps

        probs, evaluations, dropped = label_mass(self.spelled, expand, min_branch_prob=min_branch_prob,
                                                 max_evaluations=max_evaluations, max_path_len=max_path_tokens)
        return ScoreResult(probs, evaluations, dropped)


def _logsumexp(values: np.ndarray) -> float:
    top = float(np.max(values))
    if not math.isfinite(top):
        return top
    return top + math.log(float(np.sum(np.exp(values - top))))


def token_pieces(llama: llama_cpp.Llama) -> dict[bytes, tuple[int, ...]]:
    """Text (bytes) -> token ids for the whole vocabulary, as llama.cpp renders tokens without special tokens
    (control tokens render as nothing and are left out). ~0.5 s for a 262k vocabulary.

    The ids are tuples, not lists: tuples of ints drop out of the garbage collector's tracking at its next
    young pass, 262k lists would be walked by every full collection (60 ms each, the GIL held, the window
    waiting)."""
    vocab = llama_capi.llama_model_get_vocab(llama.model)
    size = 128
    buffer = ctypes.create_string_buffer(size)
    pieces: dict[bytes, tuple[int, ...]] = {}
    for token in range(llama.n_vocab()):
        n = llama_capi.llama_token_to_piece(vocab, token, buffer, size, 0, False)
        if n < 0:
            big = ctypes.create_string_buffer(-n)
            n = llama_capi.llama_token_to_piece(vocab, token, big, -n, 0, False)
            piece = big.raw[:n]
        else:
            piece = buffer.raw[:n]
        if piece:
            pieces[piece] = pieces.get(piece, ()) + (token,)
    return pieces


def _too_long_message(needed: int, n_ctx: int) -> str:
    return (f"The prompt needs {needed} tokens but the student's context is {n_ctx} tokens. "
            "Shorten the rules or raise the context size (Settings > Student > Context).")


# ---------------------------------------------------------------------------
# The student
# ---------------------------------------------------------------------------
_K = TypeVar("_K")
_V = TypeVar("_V")
_R = TypeVar("_R")  # what a call run on the student thread returns


def _remember(cache: dict[_K, _V], key: _K, value: _V) -> _V:
    """Store `value` in a per-prompt cache that is emptied past 64 entries (prompts change as rules are edited;
    old ones are rarely asked for again) and return it."""
    if len(cache) > 64:
        cache.clear()
    cache[key] = value
    return value


class _StudentModel:
    """Everything the student does with its Llama. Lives on, and is only used from, the owner thread."""

    def __init__(self, llama: llama_cpp.Llama, reuse_prefix: bool, prefix_cache_bytes: int = 0) -> None:
        self.llama = llama
        self.metadata = dict(llama.metadata or {})
        self.formatter = gguf_chat_formatter(llama, add_generation_prompt=True)
        # With a chat template the label follows the generation prompt ("<start_of_turn>model\n") directly.
        # Without one the prompt is the plain user message ending in "Label:" and the label continues it after
        # a space, tokenized together with that space (" positive" -> "▁positive"), as the text
        # "Label: positive" is tokenized. (A trailing space in the prompt instead leaves the model predicting
        # from a lone-space token, far off its training distribution.)
        self.label_prefix = "" if self.formatter is not None else " "
        self.prefix_cache = (PrefixStateCache(prefix_cache_bytes) if reuse_prefix and prefix_cache_bytes > 0
                             else None)
        self.cursor = LlamaContextCursor(llama, reuse_prefix=reuse_prefix, prefix_cache=self.prefix_cache)
        vocab = llama_capi.llama_model_get_vocab(llama.model)
        self.end_tokens = [t for t in range(llama.n_vocab()) if llama_capi.llama_vocab_is_eog(vocab, t)]
        if not self.end_tokens and llama.token_eos() >= 0:
            self.end_tokens = [llama.token_eos()]
        self.pieces = token_pieces(llama)
        self._spaces: dict[tuple[str, ...], tuple[LabelSpace, int]] = {}
        self._system_prefixes: dict[str, list[int]] = {}
        self._system_specials: dict[str, bool] = {}
        # Split tokenization (see _head_tokens): only for SentencePiece vocabularies without an added space
        # prefix (Gemma's), whose merges are the only thing that could cross the cut.
        self._split_ok = (str(self.metadata.get("tokenizer.ggml.model", "")) == "llama"
                          and str(self.metadata.get("tokenizer.ggml.add_space_prefix", "false")).lower() != "true")
        self._char_pairs: frozenset[str] | None = None
        self._heads: dict[str, tuple[str, list[int]] | None] = {}

    # -- tokens -------------------------------------------------------------------------------------------
    def tokenize_text(self, text: str) -> list[int]:
        return self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def render_prompt(self, system_prompt: str, text: str) -> str:
        message = student_user_message(system_prompt, text)
        if self.formatter is None:
            return message
        return self.formatter(messages=[{"role": "user", "content": message}]).prompt

    def prompt_tokens(self, system_prompt: str, text: str) -> list[int]:
        """The prompt's tokens, exactly as tokenizing the whole rendered prompt gives them. The system part's
        tokens are reused across calls when that is provably the same (`_head_tokens`): re-tokenizing a 4.6k-token
        rule prompt for every example cost ~12 ms, as much as the model's extra attention to it."""
        if self.formatter is not None and (self._has_special_token_text(text)
                                           or self._system_has_special_token_text(system_prompt)):
            # The template's own markup holds special tokens (parse them, as create_chat_completion does); the
            # user's text must not. If the text contains special-token strings, tokenize it apart as plain text.
            return self._tokens_with_plain_message(student_user_message(system_prompt, text))
        rendered = self.render_prompt(system_prompt, text)
        head = self._head_tokens(system_prompt)
        if head is not None and rendered.startswith(head[0]):
            return head[1] + self._tokenize_rendered(rendered[len(head[0]):], at_start=False)
        return self._tokenize_rendered(rendered, at_start=True)

    def _tokenize_rendered(self, rendered: str, *, at_start: bool) -> list[int]:
        if self.formatter is None:
            return self.llama.tokenize(rendered.encode("utf-8"), add_bos=at_start, special=False)
        return self.llama.tokenize(rendered.encode("utf-8"), add_bos=False, special=True)

    def _head_tokens(self, system_prompt: str) -> tuple[str, list[int]] | None:
        """(text, tokens) of the rendered prompt up to a cut inside the fixed "Input:" separator such that
        tokenize(head + rest) == tokenize(head) + tokenize(rest) for every rest; None if there is no such cut.

        Why that holds: a SentencePiece tokenizer (no pre-splitting, no added space prefix) only ever merges
        adjacent symbols into a vocabulary token, so if no token's text contains the two characters on either
        side of the cut, no merge crosses it and each side is tokenized independently. Special-token texts
        cannot straddle it either: the cut is between two characters of our own separator."""
        if system_prompt in self._heads:
            return self._heads[system_prompt]
        head: tuple[str, list[int]] | None = None
        if self._split_ok:
            marker = "\ue000PLD-INPUT\ue000"
            separator = student_user_message("", marker).split(marker)[0]  # "\n\nInput:\n"
            rendered = self.render_prompt(system_prompt, marker)
            before = rendered.partition(marker)[0]
            if rendered.count(marker) == 1 and before.endswith(separator):
                pairs = self._vocab_char_pairs()
                for cut in range(len(before) - 1, len(before) - len(separator), -1):
                    if before[cut - 1:cut + 1] not in pairs:
                        text = before[:cut]
                        head = (text, self._tokenize_rendered(text, at_start=True))
                        break
        return _remember(self._heads, system_prompt, head)

    def _vocab_char_pairs(self) -> frozenset[str]:
        """Every two adjacent characters inside some vocabulary token's text (~0.3 s once for 262k tokens)."""
        if self._char_pairs is None:
            pairs: set[str] = set()
            for piece in self.pieces:
                chars = piece.decode("utf-8", errors="replace")
                pairs.update(a + b for a, b in itertools.pairwise(chars))
            self._char_pairs = frozenset(pairs)
        return self._char_pairs

    def system_end(self, system_prompt: str, prompt: Sequence[int]) -> int:
        """How many leading tokens of `prompt` depend only on the system prompt (not on the input): the common
        prefix with the prompts of two unrelated probe inputs, computed once per system prompt."""
        stable = self._system_prefixes.get(system_prompt)
        if stable is None:
            probe_a = self.prompt_tokens(system_prompt, "A")
            probe_b = self.prompt_tokens(system_prompt, "z")
            stable = _remember(self._system_prefixes, system_prompt,
                               probe_a[:common_prefix_length(probe_a, probe_b)])
        return common_prefix_length(stable, prompt)

    def _system_has_special_token_text(self, system_prompt: str) -> bool:
        verdict = self._system_specials.get(system_prompt)
        if verdict is None:
            verdict = _remember(self._system_specials, system_prompt, self._has_special_token_text(system_prompt))
        return verdict

    def _has_special_token_text(self, text: str) -> bool:
        data = text.encode("utf-8")
        return (self.llama.tokenize(data, add_bos=False, special=True)
                != self.llama.tokenize(data, add_bos=False, special=False))

    def _tokens_with_plain_message(self, message: str) -> list[int]:
        marker = "\ue000PLD-USER-MESSAGE\ue000"
        spaced = f" {marker} "
        # misc: only called when the GGUF has a chat template, so the formatter is set.
        rendered = self.formatter(messages=[{"role": "user", "content": spaced}]).prompt  # type: ignore[misc]
        if rendered.count(spaced) == 1:  # the template inserts the message verbatim
            head, tail = rendered.split(spaced)
        elif rendered.count(marker) == 1:  # the template trims the message (Gemma's does)
            head, tail = rendered.split(marker)
            message = message.strip()
        else:
            raise ValueError("The model's chat template does not place the user message verbatim.")
        return (self.llama.tokenize(head.encode("utf-8"), add_bos=False, special=True)
                + self.tokenize_text(message)
                + self.llama.tokenize(tail.encode("utf-8"), add_bos=False, special=True))

    def label_space(self, labels: Sequence[str]) -> tuple[LabelSpace, int]:
        """The label space and the longest label's token count (its own tokenization)."""
        key = tuple(labels)
        cached = self._spaces.get(key)
        if cached is None:
            space = LabelSpace(key, self.pieces, self.label_prefix)
            longest = max(len(self.tokenize_text(self.label_prefix + label)) for label in key)
            cached = _remember(self._spaces, key, (space, longest))
        return cached

    def check_fits(self, system_prompt: str, longest_input: str, labels: Sequence[str]) -> int:
        needed = len(self.prompt_tokens(system_prompt, longest_input)) + self.label_space(labels)[1]
        if needed > self.llama.n_ctx():
            raise PromptTooLong(_too_long_message(needed, self.llama.n_ctx()))
        return needed

    # -- scoring ------------------------------------------------------------------------------------------
    def classify(self, system_prompt: str, text: str, labels: Sequence[str]) -> Prediction:
        started = time.perf_counter()
        space, longest_label = self.label_space(labels)
        prompt = self.prompt_tokens(system_prompt, text)
        needed = len(prompt) + longest_label
        if needed > self.llama.n_ctx():
            raise PromptTooLong(_too_long_message(needed, self.llama.n_ctx()))

        self.cursor.begin(prompt, self.system_end(system_prompt, prompt))

        def next_logits(path: tuple[int, ...]) -> np.ndarray:
            self.cursor.position(prompt + list(path))
            return self.cursor.last_logits()

        result = space.score(next_logits, self.end_tokens, max_path_tokens=self.llama.n_ctx() - len(prompt))
        self.cursor.stats.classifications += 1
        self.cursor.stats.label_evaluations += result.evaluations
        probs = result.probs
        label = max(space.labels, key=lambda lab: probs[lab])  # the first label wins a tie
        return Prediction(label=label, probs=probs, latency_s=time.perf_counter() - started)


MIN_STUDENT_CTX = 256


class LlamaStudent:
    """The Student protocol on a local GGUF model through llama-cpp-python (default: the bundled Gemma 3 270M).

    `prefix_cache_bytes` bounds the in-memory LRU of system-prompt KV states and `disk_cache_bytes` the folder of
    saved states (`state_dir`, default `$PLD_CACHE_DIR` or ~/.cache/pld-desktop, then prefix-states/); 0
    disables either. On a sliding-window model (Gemma 3) both need `flash_attn` and `n_threads` 1, the defaults
    there: `n_threads` is for one-token decodes (only labels that branch after their first token need them; an
    example's own tokens are one batch), and measured on Gemma 3 270M 2 threads make a restored state's logits
    differ from a fresh evaluation's (~4e-2 in a label probability), which would break the exactness of the
    state caches, so they are off then. Other models default to no flash attention (see `__init__`) and
    llama-cpp-python's decode threads; their restores are exact with either. Prompt processing
    (`n_threads_batch`) uses every core by default.

    Thread contract: one owner thread (`LlamaOwner`) holds the model and runs every call; the public methods
    may be called from any thread and are serialised in arrival order.
    """

    def __init__(self, model_path: str | os.PathLike[str] | None = None, n_ctx: int = 4096,
                 n_threads: int | None = None, n_threads_batch: int | None = None, *,
                 reuse_prefix: bool = True, use_extra_bufts: bool | None = None,
                 prefix_cache_bytes: int = 1 << 30, flash_attn: bool | None = None,
                 state_dir: str | os.PathLike[str] | None = None, disk_cache_bytes: int = 2 << 30) -> None:
        if n_ctx < MIN_STUDENT_CTX:  # llama.cpp misbehaves below this; no rule prompt fits anyway
            raise ValueError(f"The student's context size ({n_ctx} tokens) is too small: use at least "
                             f"{MIN_STUDENT_CTX} tokens (--n-ctx / Models > Student > context size).")
        path = bundled_student_path() if model_path is None else model_path
        sliding = has_sliding_window(path)
        if n_threads is None and sliding:
            n_threads = 1  # see below; otherwise llama-cpp-python's default (half the logical cores)
        if flash_attn is None:
            # Flash attention only where saved prompt states need it to be bit-identical (sliding windows).
            # Elsewhere llama.cpp's CPU kernel is the slow choice: with SmolLM2's 64-wide heads an example after
            # a 4.6k-token prompt took 1.03 s with it and 0.16 s without (bench.student).
            flash_attn = sliding
        self._owner = LlamaOwner(path, n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads_batch,
                                 name="student", use_extra_bufts=use_extra_bufts, flash_attn=flash_attn)
        try:
            # A restored state holds only the sliding-window cells an SWA cache (Gemma 3) still needs, in other
            # cache slots than a fresh evaluation: only llama.cpp's flash-attention kernel (which skips masked
            # cells and visits the others in order) on one thread gives bit-identical results then, so the
            # state caches need both there. Without a sliding window restores are exact either way (tested).
            n_swa, n_threads = self._owner.call(lambda llama: (int(llama_capi.llama_model_n_swa(llama.model)),
                                                               int(llama.context_params.n_threads)))
            exact_restores = n_swa == 0 or (flash_attn and n_threads <= 1)
            if reuse_prefix and not exact_restores and n_threads > 1:
                log.warning("student n_threads=%d: saved prompt states are not used (with several threads a "
                            "one-token decode after a restored state is not bit-identical); set the threads "
                            "for prompt processing (n_threads_batch) instead", n_threads)
            elif reuse_prefix and not exact_restores:
                log.warning("student without flash attention on a sliding-window model: saved prompt states are "
                            "not used (they would not be bit-identical)")
            cache_bytes = prefix_cache_bytes if exact_restores else 0
            self._model: _StudentModel = self._owner.call(
                lambda llama: _StudentModel(llama, reuse_prefix, cache_bytes))
            self.n_ctx: int = self._owner.call(lambda llama: llama.n_ctx())
            self.identity: ModelIdentity = model_identity(self._owner.model_path, self._model.metadata)
            self.disk_cache: PrefixStateDiskCache | None = None
            if reuse_prefix and exact_restores and disk_cache_bytes > 0:
                sha, extra_bufts = self.identity.sha256, self._owner.use_extra_bufts
                settings = self._owner.call(lambda llama: state_settings(llama, sha, use_extra_bufts=extra_bufts))
                self.disk_cache = PrefixStateDiskCache(state_dir, settings, capacity_bytes=disk_cache_bytes)
                disk_cache = self.disk_cache
                self._owner.call(lambda _llama: self._model.cursor.attach_disk_cache(disk_cache))
        except BaseException:
            self._owner.close()
            raise
        self.model_path = self._owner.model_path
        self.has_chat_template = self._model.formatter is not None
        self.label_prefix = self._model.label_prefix
        self._close_lock = threading.Lock()

    def _run(self, fn: Callable[[_StudentModel], _R]) -> _R:
        model = self._model
        return self._owner.call(lambda _llama: fn(model))

    # -- Student protocol ---------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        """Tokens of `text` on its own (no BOS, special-token strings count as plain text)."""
        return len(self._run(lambda m: m.tokenize_text(text)))

    def check_fits(self, system_prompt: str, longest_input: str, labels: Sequence[str]) -> None:
        """Raise PromptTooLong (before any model work) if the prompt with `longest_input` and the longest label
        does not fit the context window."""
        self._run(lambda m: m.check_fits(system_prompt, longest_input, labels))

    def classify(self, system_prompt: str, text: str, labels: Sequence[str]) -> Prediction:
        labels = list(labels)
        return self._run(lambda m: m.classify(system_prompt, text, labels))

    def close(self) -> None:
        with self._close_lock:
            self._owner.close()

    # -- extras for previews, exports and tests -----------------------------------------------------------
    def render_prompt(self, system_prompt: str, text: str) -> str:
        """The exact prompt text the model sees for one input (before the label)."""
        return self._run(lambda m: m.render_prompt(system_prompt, text))

    def prompt_tokens(self, system_prompt: str, text: str) -> list[int]:
        return self._run(lambda m: m.prompt_tokens(system_prompt, text))

    def prompt_split(self, system_prompt: str, text: str) -> tuple[list[int], int]:
        """The prompt tokens and how many of them depend only on the system prompt (the reusable piece)."""
        def split(m: _StudentModel) -> tuple[list[int], int]:
            tokens = m.prompt_tokens(system_prompt, text)
            return tokens, m.system_end(system_prompt, tokens)
        return self._run(split)

    def label_space(self, labels: Sequence[str]) -> LabelSpace:
        """The label space used to score `labels` (read-only)."""
        return self._run(lambda m: m.label_space(list(labels))[0])

    def clear_prefix_cache(self, *, disk: bool = False) -> None:
        """Drop every system-prompt state kept in memory, and with `disk` every state file in the student's
        state folder too (the context itself is left as it is)."""
        self._run(lambda m: m.prefix_cache.clear() if m.prefix_cache is not None else None)
        if disk and self.disk_cache is not None:
            disk_cache = self.disk_cache
            self._run(lambda _m: disk_cache.clear())

    def prefix_cache_info(self) -> tuple[int, int]:
        """(number of saved system-prompt states, their total bytes)."""
        return self._run(lambda m: (len(m.prefix_cache), m.prefix_cache.nbytes)
                         if m.prefix_cache is not None else (0, 0))

    def stats(self) -> EvalStats:
        """Counters of evaluated and reused tokens and of label evaluations since the model was loaded."""
        return self._run(lambda m: EvalStats(**vars(m.cursor.stats)))

    def __enter__(self) -> LlamaStudent:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
