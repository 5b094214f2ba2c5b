"""Positioning a llama.cpp context at a token sequence, deterministically, and reading its last logits."""

from __future__ import annotations

import ctypes
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import llama_cpp
import llama_cpp.llama_cpp as llama_capi
import numpy as np

from pld_desktop.backends.prefix_cache import PrefixStateCache, PrefixStateDiskCache
from pld_desktop.core.protocols import PromptTooLong

__all__ = ["EvalStats", "LlamaContextCursor", "common_prefix_length"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# Positioning a context at a token sequence, deterministically
# ---------------------------------------------------------------------------
@dataclass
class EvalStats:
    calls: int = 0              # position() calls
    tokens_evaluated: int = 0   # tokens sent to llama_decode
    tokens_reused: int = 0      # tokens whose KV cache entries were kept
    full_resets: int = 0        # times the cache could not be trimmed and everything was evaluated again
    classifications: int = 0    # classify() calls
    label_evaluations: int = 0  # contexts whose logits were read while scoring labels
    state_saves: int = 0        # system-part states stored in the prefix-state cache
    state_restores: int = 0     # system parts restored from the prefix-state cache instead of evaluated
    state_evictions: int = 0    # states dropped from the prefix-state cache (LRU, bounded by bytes)
    disk_saves: int = 0         # system-part states written to the on-disk prefix-state cache
    disk_loads: int = 0         # system parts restored from a state file instead of evaluated
    disk_rejects: int = 0       # state files found unusable (corrupted, truncated, other settings) and deleted


def common_prefix_length(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> int:
    """How many leading tokens `a` and `b` share (vectorised: the Python loop cost ~0.4 ms per call on a
    4.6k-token prompt, several times per example)."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.flatnonzero(np.asarray(a[:n], dtype=np.int64) != np.asarray(b[:n], dtype=np.int64))
    return int(differ[0]) if differ.size else n


class LlamaContextCursor:
    """Keeps a Llama's context positioned at a token sequence and reads the logits of its last token.

    Call only from the model's owner thread. Bookkeeping follows `Llama.generate()`:
    `llama.input_ids[:llama.n_tokens]` are the tokens in the KV cache, and moving to another sequence keeps the
    common prefix (`llama_memory_seq_rm` of the rest) and evaluates only the remainder.

    Determinism: llama.cpp's numbers for a token depend on how it was batched (a quantised model's logits move
    by ~1e-2 between a 1-token and a 40-token batch), so reusing whatever prefix happens to be cached would make
    a result depend on the previous call. The cursor therefore evaluates on a fixed schedule: `begin(prompt,
    system_end)` cuts every sequence of the call (the prompt, or the prompt plus a continuation) at the end of
    the system part and at the end of the prompt, and each piece is one `eval()`: [0, system_end),
    [system_end, prompt_end), [prompt_end, end). Only whole pieces are reused, and across calls only the first.
    So every logits vector is a function of (prompt, continuation) alone, bit-identical with or without reuse,
    whatever came before.

    Prefix-state cache (for interleaved prompts): right after the first piece [0, system_end) is evaluated from
    an empty cache, the KV state of sequence 0 is copied into `prefix_cache` (keyed by those tokens); a later
    `begin()` whose system piece is not the one in the context but is in the cache clears the context and
    restores that state instead of evaluating the piece again. The restored KV entries are the bytes the
    evaluation produced, so what follows is bit-identical to the fresh path (tests check it). With a
    `disk_cache` the state is also written to a file, and a piece found in neither the context nor memory is
    loaded from its file (a new process, e.g. a reopened project, then skips the evaluation).
    """

    def __init__(self, llama: llama_cpp.Llama, *, reuse_prefix: bool = True,
                 prefix_cache: PrefixStateCache | None = None,
                 disk_cache: PrefixStateDiskCache | None = None) -> None:
        self.llama = llama
        self.reuse_prefix = reuse_prefix
        self.prefix_cache = prefix_cache if reuse_prefix else None
        self.disk_cache = disk_cache if reuse_prefix else None
        self.n_vocab = llama.n_vocab()
        self.n_swa = int(llama_capi.llama_model_n_swa(llama.model))
        self.stats = EvalStats()
        self.anchor: int | None = None      # tokens [0, anchor) were evaluated as one piece from position 0
        self._boundaries: tuple[int, ...] = ()
        self._logits_at: int | None = None  # n_tokens for which the current logits were decoded

    def _memory(self) -> llama_capi.llama_memory_t | None:
        memory: llama_capi.llama_memory_t | None = llama_capi.llama_get_memory(self.llama.ctx)  # ctypes wrapper: Any
        return memory

    def _clear(self) -> None:
        memory = self._memory()
        if memory is not None:
            # data=False: only the cell metadata. Clearing the data memsets the whole KV buffer (150 MB for a
            # 270M model at n_ctx 8192), which cost more than restoring a state; cells not in use are masked
            # out and their old (finite) values never reach a result.
            llama_capi.llama_memory_clear(memory, False)
        self.llama.n_tokens = 0
        self.anchor = None
        self._logits_at = None

    def _can_keep(self, keep: int) -> bool:
        """Whether the cache still holds every position the token at `keep` attends to. A sliding-window
        (SWA) cache that is not full-size drops old positions; recurrent memories cannot be trimmed."""
        memory = self._memory()
        if memory is None:
            return False
        pos_min = int(llama_capi.llama_memory_seq_pos_min(memory, 0))
        if pos_min < 0:
            return False
        required = max(0, keep - self.n_swa) if self.n_swa > 0 else 0
        return pos_min <= required

    def _truncate(self, keep: int) -> int:
        """Drop the cache from position `keep` on; returns what is kept (0 if the cache had to be cleared)."""
        llama = self.llama
        if keep >= llama.n_tokens:
            return llama.n_tokens
        if keep > 0 and self._can_keep(keep) and llama_capi.llama_memory_seq_rm(self._memory(), 0, keep, -1):
            llama.n_tokens = keep
            self._logits_at = None
            if self.anchor is not None and self.anchor > keep:
                self.anchor = None
            return keep
        if keep > 0:
            self.stats.full_resets += 1
        self._clear()
        return 0

    def reset(self) -> None:
        """Empty the KV cache (the next position() evaluates from scratch)."""
        self._clear()

    def begin(self, prompt: Sequence[int], system_end: int) -> None:
        """Start a call whose prompt is `prompt` and whose first `system_end` tokens depend only on the system
        prompt: keep that piece if it is what the cache starts with, else start from an empty cache."""
        llama = self.llama
        prompt = [int(t) for t in prompt]
        if len(prompt) > llama.n_ctx():
            raise PromptTooLong(f"The prompt needs {len(prompt)} tokens but the context is {llama.n_ctx()} tokens.")
        system_end = max(0, min(system_end, len(prompt) - 1))
        self._boundaries = tuple(sorted({system_end, len(prompt)} - {0}))
        if (self.reuse_prefix and system_end > 0 and self.anchor == system_end
                and llama.n_tokens >= system_end
                and common_prefix_length(llama.input_ids[:system_end], prompt) == system_end):
            if self._truncate(system_end) == system_end:
                return
        self._clear()
        if system_end > 0 and len(self._boundaries) > 1:
            self._restore_saved(prompt[:system_end])

    # -- prefix-state caches ---------------------------------------------------------------------------
    @property
    def keeps_states(self) -> bool:
        return self.prefix_cache is not None or self.disk_cache is not None

    def attach_disk_cache(self, disk_cache: PrefixStateDiskCache | None) -> None:
        self.disk_cache = disk_cache if self.reuse_prefix else None

    def _restore_saved(self, system_tokens: Sequence[int]) -> bool:
        """Restore the system piece from memory, else from disk (then kept in memory too). The context is
        cleared on entry and stays cleared on a miss."""
        key = tuple(system_tokens)
        if self.prefix_cache is not None:
            state = self.prefix_cache.get(key)
            if state is not None and self._restore(system_tokens, state):
                return True
        if self.disk_cache is None:
            return False
        state = self.disk_cache.load(key)
        if state is None:
            return False
        if not self._restore(system_tokens, state):
            # Intact file that llama.cpp refuses (e.g. a changed KV layout the key did not capture): drop it.
            self.stats.disk_rejects += 1
            self.disk_cache._unlink(self.disk_cache.path(key))
            return False
        self.stats.disk_loads += 1
        if self.prefix_cache is not None:
            self.stats.state_evictions += self.prefix_cache.put(key, state)
        return True

    def _save_state(self, system_tokens: Sequence[int]) -> None:
        key = tuple(int(t) for t in system_tokens)
        memory_cache, disk_cache = self.prefix_cache, self.disk_cache
        in_memory = memory_cache is None or key in memory_cache
        on_disk = disk_cache is None or key in disk_cache
        if in_memory and on_disk:
            return
        ctx = self.llama.ctx
        size = int(llama_capi.llama_state_seq_get_size(ctx, 0))
        if size <= 0:
            return
        state = bytearray(size)
        view = (ctypes.c_uint8 * size).from_buffer(state)  # llama.cpp writes straight into the bytearray
        written = int(llama_capi.llama_state_seq_get_data(ctx, view, size, 0))
        del view  # release the buffer export so the bytearray can be trimmed
        if written <= 0:
            return
        del state[written:]
        if not in_memory and len(state) <= memory_cache.capacity_bytes:  # type: ignore[union-attr]
            self.stats.state_evictions += memory_cache.put(key, state)  # type: ignore[union-attr]
            self.stats.state_saves += 1
        if not on_disk and disk_cache.save(key, state):  # type: ignore[union-attr]
            self.stats.disk_saves += 1

    def _restore(self, system_tokens: Sequence[int], state: bytes | bytearray) -> bool:
        """Load a saved system-piece state into the (cleared) context; False (context cleared) on failure."""
        llama = self.llama
        n = len(system_tokens)
        if isinstance(state, bytearray):
            buffer = (ctypes.c_uint8 * len(state)).from_buffer(state)  # no copy
        else:
            buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        try:
            loaded = int(llama_capi.llama_state_seq_set_data(llama.ctx, buffer, len(state), 0))
        finally:
            del buffer
        if loaded != len(state):
            log.warning("could not restore a saved prompt state; evaluating the prompt again")
            self._clear()
            return False
        memory = self._memory()
        if memory is None or int(llama_capi.llama_memory_seq_pos_max(memory, 0)) != n - 1:
            self._clear()
            return False
        llama.input_ids[:n] = system_tokens
        llama.n_tokens = n
        self.anchor = n
        self._logits_at = None
        self.stats.state_restores += 1
        return True

    def position(self, tokens: Sequence[int]) -> None:
        """Make `tokens` the evaluated sequence, with fresh logits for its last token."""
        llama = self.llama
        target = [int(t) for t in tokens]
        if not target:
            raise ValueError("Cannot position the context at an empty token sequence.")
        if len(target) > llama.n_ctx():
            raise PromptTooLong(f"The prompt needs {len(target)} tokens but the context is {llama.n_ctx()} tokens.")
        self.stats.calls += 1
        n = llama.n_tokens
        common = common_prefix_length(llama.input_ids[:n], target) if n else 0
        if common == len(target) == n and self._logits_at == n:
            return
        # Keep only whole pieces of the schedule, and decode at least one token (for fresh logits).
        limit = min(common, len(target) - 1)
        system_end = self._boundaries[0] if len(self._boundaries) > 1 else None
        keep = max([0] + [b for b in self._boundaries if b <= limit and (b != system_end or self.anchor == b)])
        keep = self._truncate(keep)
        self.stats.tokens_reused += keep
        cuts = [keep] + [b for b in self._boundaries if keep < b < len(target)] + [len(target)]
        try:
            for start, stop in itertools.pairwise(cuts):
                llama.eval(target[start:stop])
                self.stats.tokens_evaluated += stop - start
                if start == 0:
                    self.anchor = stop
                    if (self.keeps_states and stop < len(target) and len(self._boundaries) > 1
                            and stop == self._boundaries[0]):
                        self._save_state(target[:stop])
        except BaseException:
            self._clear()  # the cache is in an unknown state
            raise
        self._logits_at = llama.n_tokens

    def last_logits(self) -> np.ndarray:
        """The logits after the last evaluated token: a view into llama.cpp's buffer, valid until the next
        evaluation (copy what you keep)."""
        if self._logits_at is None or self._logits_at != self.llama.n_tokens:
            raise RuntimeError("No fresh logits: call position() first.")
        pointer = llama_capi.llama_get_logits_ith(self.llama.ctx, -1)
        if not pointer:
            raise RuntimeError("llama.cpp returned no logits for the last token.")
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))


