"""Experiment for issue 15, "batched student scoring": several examples per llama.cpp decode, against the
per-example path. NOT used by the product: on this project's CPUs it is not exact (see below).

    python -m bench.batched_scoring [--k 8] [--n 24] [--repeats 3] [--json out.json]

For each bundled model (Gemma 3 270M, SmolLM2-135M) it scores the same dev-like examples with
`LlamaStudent.classify` (one at a time, the product path) and with `classify_batched` below (k examples per
decode), for several label sets (single-token labels, labels sharing leading tokens, labels that are prefixes of
others) and a text longer than the others; it prints the largest |dP| per label and the side-by-side speed ratio
in bench.student's `ratios` shape (name, ratio, target, met).

How the batched path works: a second llama.cpp context of the student's model with one KV stream per example
sequence (`kv_unified=False`, `n_seq_max=k`); the shared system part is evaluated once (in `n_batch` pieces
from position 0, as `Llama.eval` does) into sequence 0 and copied into the other streams once
(`llama_memory_seq_cp`); every batch trims each stream back to that prefix, decodes the examples' own tokens
together and reads logits at each sequence's last token; the label search (`LabelSpace.score`) of all examples
runs in rounds, each round asking every unfinished search for the next path it needs and decoding those
together (`replay_rounds`).

Why it is not exact (measured, 2-core AMD EPYC with AVX2 and AVX-512; llama-cpp-python 0.3.36):
- A token's numbers in llama.cpp depend on the micro-batch it is computed in (its size and the token's row in
  it), not only on the tokens before it, and a quantised model amplifies the rounding difference:
  * Gemma 3 270M (Q5_0/Q8_0/Q4_K/Q6_K weights): evaluating one example's 13 tokens as 8+5 or 10+3 instead of
    13 moves a logit by up to 0.77 (1+12, 3+10 and 12+1 give identical numbers); with two or more examples in
    one micro-batch every example but the first moved by 0.45-0.97.
  * SmolLM2-135M (Q4_1): a unified KV buffer (examples' cells interleaved) moved logits by up to 0.45 (the
    attention sums over the cells are grouped differently); per-example KV streams fix that, but splitting a
    piece so that a token is alone in a micro-batch (first token alone: 0.39), a one-token label step decoded
    beside others, and some last tokens decoded two in a micro-batch still move a label probability by 2e-3 to
    2e-2.
- So the per-example path's numbers cannot be reproduced to 1e-4 with several examples per decode on these
  models and CPUs; reproducing them needs every example's pieces in micro-batches of the per-example shapes,
  i.e. one example per decode. Making the per-example path itself batch-shape independent would change every
  recorded score.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as llama_capi
import numpy as np

from pld_desktop.backends.bundled import bundled_local_teacher_path
from pld_desktop.backends.llama_student import LlamaStudent, ScoreResult
from pld_desktop.backends.prefix_cache import PrefixStateCache
from pld_desktop.core.prompts import build_rules_prompt
from pld_desktop.core.protocols import Prediction

__all__ = ["BatchPlan", "BatchedScorer", "classify_batched", "equal_length_rounds", "plan_batches", "replay_rounds"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# How many examples per batch (pure)
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchPlan:
    """Examples per batch (`size`, 1 = the per-example path), the cells each sequence's stream needs, and why."""
    size: int
    stream_tokens: int
    reason: str


STREAM_PAD = 256  # llama.cpp pads a stream's attended cells to 256: a stream of whole pads attends as the cursor


def plan_batches(*, prefix_tokens: int, example_tokens: Sequence[int], label_tokens: int, max_size: int,
                 bytes_per_cell: int, memory_budget: int) -> BatchPlan:
    """How many examples to score together. Each sequence is a KV stream of its own holding the prefix, the
    example's tokens and its longest label path (rounded up to whole pads); as many as the memory budget holds,
    at most `max_size` and the number of examples. 1 (the per-example path) when fewer than two fit."""
    longest = max(example_tokens, default=0)
    need = prefix_tokens + longest + label_tokens
    stream = -(-need // STREAM_PAD) * STREAM_PAD
    if max_size < 2 or len(example_tokens) < 2:
        return BatchPlan(1, stream, "batching off" if max_size < 2 else "fewer than two examples")
    by_memory = memory_budget // max(1, stream * bytes_per_cell)
    size = min(max_size, by_memory, len(example_tokens))
    if size < 2:
        return BatchPlan(1, stream, f"only {max(by_memory, 0)} sequence(s) of {stream} cells fit "
                                    f"{memory_budget >> 20} MB")
    return BatchPlan(size, stream, f"{size} sequences of {stream} cells")


# ---------------------------------------------------------------------------
# The label search of several examples in rounds (pure: testable with fake logits)
# ---------------------------------------------------------------------------
class _NeedLogits(Exception):
    def __init__(self, path: tuple[int, ...]) -> None:
        super().__init__(path)
        self.path = path


@dataclass
class SearchState:
    """One example's label search: the logits read so far (by path) and, once done, its result."""
    known: dict[tuple[int, ...], np.ndarray]
    result: Any = None  # a ScoreResult once the search has finished


def replay_rounds(states: Sequence[SearchState], run: Any) -> dict[int, tuple[int, ...]]:
    """One round: replay each unfinished search (`run(i, next_logits)` -> result) with the logits it has; returns
    {example index: the first path it needs}. A search is deterministic in its logits, so a replay asks for the
    same paths in the same order as the per-example run would, and stops at the first one not yet read."""
    needed: dict[int, tuple[int, ...]] = {}
    for i, state in enumerate(states):
        if state.result is not None:
            continue

        def next_logits(path: tuple[int, ...], known: dict[tuple[int, ...], np.ndarray] = state.known) -> np.ndarray:
            found = known.get(path)
            if found is None:
                raise _NeedLogits(path)
            return found

        try:
            state.result = run(i, next_logits)
        except _NeedLogits as need:
            needed[i] = need.path
    return needed


# ---------------------------------------------------------------------------
# The multi-sequence context
# ---------------------------------------------------------------------------
class BatchedScorer:
    """A second llama.cpp context of the student's model with `n_seq` sequences of `stream_tokens` cells each.

    The sequences are separate KV streams (`kv_unified=False`), each holding its own copy of the shared prefix:
    every example then sees exactly the cell layout of the per-example path (prefix in cells [0, n), its own
    tokens after it). In one unified buffer the examples' cells interleave, which regroups llama.cpp's
    attention sums over the cells; a quantised model amplifies that rounding (measured on SmolLM2: up to 0.3 in
    a logit, 2e-2 in a label probability), while per-sequence streams gave bit-identical logits. The prefix is
    evaluated (or restored) once into sequence 0 and copied to the others once per prefix; each batch then
    only trims every sequence back to the prefix, as the cursor does between examples.
    The context parameters are the student's (threads, flash attention, batch sizes), so a one-token decode
    runs on `n_threads` and a bigger batch on `n_threads_batch`, as on the per-example path."""

    def __init__(self, llama: llama_cpp.Llama, *, n_seq: int, stream_tokens: int,
                 prefix_cache: PrefixStateCache | None = None) -> None:
        from llama_cpp import _internals
        self.llama = llama
        self.n_seq = max(1, int(n_seq))
        self.stream_tokens = int(stream_tokens)
        params = type(llama.context_params).from_buffer_copy(llama.context_params)
        params.n_ctx = self.stream_tokens * self.n_seq
        params.n_seq_max = self.n_seq
        params.kv_unified = False
        self._ctx = _internals.LlamaContext(model=llama._model, params=params, verbose=False)
        self.n_batch = int(llama.n_batch)  # Llama.eval's piece size: the prefix is evaluated in the same pieces
        self.n_ubatch = min(self.n_batch, int(params.n_ubatch) or self.n_batch)
        self._batch = llama_capi.llama_batch_init(max(self.n_batch, 1), 0, 1)
        self.n_vocab = llama.n_vocab()
        self.prefix_cache = prefix_cache
        self._prefix: tuple[int, ...] | None = None
        self.decodes = 0
        self.prefix_evaluations = 0
        self.prefix_restores = 0
        self.closed = False

    @property
    def ctx(self) -> Any:
        return self._ctx.ctx

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        llama_capi.llama_batch_free(self._batch)
        self._ctx.close()

    def _memory(self) -> Any:
        return llama_capi.llama_get_memory(self.ctx)

    def reset(self) -> None:
        llama_capi.llama_memory_clear(self._memory(), False)
        self._prefix = None

    def _decode(self, entries: Sequence[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (token, position, sequence, wants_logits) entries (at most n_batch)."""
        batch = self._batch
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
        batch.n_tokens = len(entries)
        code = int(llama_capi.llama_decode(self.ctx, batch))
        self.decodes += 1
        if code != 0:
            self.reset()
            raise RuntimeError(f"llama_decode failed with code {code} in the batched student context")

    def _logits(self, index: int) -> np.ndarray:
        pointer = llama_capi.llama_get_logits_ith(self.ctx, index)
        if not pointer:
            raise RuntimeError("llama.cpp returned no logits for a batched sequence")
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)).copy()

    def _set_prefix(self, prefix: tuple[int, ...]) -> None:
        """Every sequence holds exactly `prefix` (cells [0, len(prefix)) of its stream)."""
        memory = self._memory()
        if self._prefix != prefix:
            self.reset()
            state = self.prefix_cache.get(prefix) if self.prefix_cache is not None else None
            if state is not None and self._restore(prefix, state):
                self.prefix_restores += 1
            else:
                for start in range(0, len(prefix), self.n_batch):
                    piece = prefix[start:start + self.n_batch]
                    self._decode([(tok, start + i, 0, i == len(piece) - 1) for i, tok in enumerate(piece)])
                self.prefix_evaluations += 1
            for seq in range(1, self.n_seq):
                llama_capi.llama_memory_seq_cp(memory, 0, seq, -1, -1)  # copies the stream (done at next decode)
            self._prefix = prefix
        for seq in range(self.n_seq):
            llama_capi.llama_memory_seq_rm(memory, seq, len(prefix), -1)

    def _restore(self, prefix: tuple[int, ...], state: bytes | bytearray) -> bool:
        buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        loaded = int(llama_capi.llama_state_seq_set_data(self.ctx, buffer, len(state), 0))
        del buffer
        if loaded != len(state) or int(llama_capi.llama_memory_seq_pos_max(self._memory(), 0)) != len(prefix) - 1:
            self.reset()
            return False
        return True

    def score(self, prefix: Sequence[int], prompts: Sequence[Sequence[int]], run: Any,
              ) -> list[Any]:
        """Score `prompts` (each starting with `prefix`, at most `n_seq` of them) together; `run(i,
        next_logits)` is example i's label search (`LabelSpace.score` with its next_logits), called in rounds.
        Returns each search's result."""
        prefix_t = tuple(int(t) for t in prefix)
        if not 0 < len(prompts) <= self.n_seq:
            raise ValueError(f"between 1 and {self.n_seq} prompts per batch, got {len(prompts)}")
        if not prefix_t or any(len(p) <= len(prefix_t) or tuple(p[:len(prefix_t)]) != prefix_t for p in prompts):
            raise ValueError("every prompt must extend the shared prefix by at least one token")
        tokens = [[int(t) for t in p] for p in prompts]
        need = max(map(len, tokens))
        if need > self.stream_tokens:
            raise ValueError(f"a prompt of {need} tokens does not fit a sequence of {self.stream_tokens}")
        self._set_prefix(prefix_t)
        memory = self._memory()
        states = [SearchState(known={}) for _ in tokens]
        try:
            # The examples' own tokens: one piece per example (as the cursor's [system_end, prompt_end)).
            self._run_pieces([(seq, len(prefix_t), p[len(prefix_t):], ()) for seq, p in enumerate(tokens)], states)
            while True:
                needed = replay_rounds(states, run)
                if not needed:
                    break
                pieces = []
                for seq, path in needed.items():
                    llama_capi.llama_memory_seq_rm(memory, seq, len(tokens[seq]), -1)
                    pieces.append((seq, len(tokens[seq]), list(path), path))
                self._run_pieces(pieces, states)
        finally:
            for seq in range(len(tokens)):
                llama_capi.llama_memory_seq_rm(memory, seq, len(prefix_t), -1)
        return [state.result for state in states]

    def _run_pieces(self, pieces: Sequence[tuple[int, int, Sequence[int], tuple[int, ...]]],
                    states: Sequence[SearchState]) -> None:
        """Decode each (sequence, first position, tokens, path) piece and store the logits at its last token
        under `path`, in `equal_length_rounds`."""
        for group, lo, hi in equal_length_rounds([len(piece[2]) for piece in pieces], self.n_ubatch):
            entries: list[tuple[int, int, int, bool]] = []
            readers: list[tuple[int, int]] = []
            for j in group:
                seq, start, tokens, _path = pieces[j]
                for i in range(lo, min(hi, len(tokens))):
                    last = i == len(tokens) - 1
                    if last:
                        readers.append((j, len(entries)))
                    entries.append((int(tokens[i]), start + i, seq, last))
            self._decode(entries)
            for j, index in readers:
                seq, _start, _tokens, path = pieces[j]
                states[seq].known[path] = self._logits(index)


def equal_length_rounds(lengths: Sequence[int], n_batch: int) -> list[tuple[list[int], int, int]]:
    """How to decode pieces of these lengths together: a list of (piece indices, from, to) llama_decode calls,
    each taking tokens [from, to) of each of its pieces, so that every call gives each of its pieces the same
    number of tokens (at most n_batch in all), a one-token piece is decoded alone, and no call holds a single
    token other than a piece's last.

    Why: with one KV stream per sequence llama.cpp cuts a batch into micro-batches with an equal share of each
    sequence, so pieces of unequal lengths leave a tail of one-token micro-batches; a one-token micro-batch
    takes other matrix kernels than a bigger one, and a token computed that way has other K/V values than on
    the per-example path, where the whole piece is one micro-batch (measured on SmolLM2: up to 0.4 in a logit;
    any split into pieces of two or more tokens, and the last token alone, gave the same numbers; a one-token
    label step decoded beside others moved a probability by up to 2e-2). So: each one-token piece alone; of
    the others first the tokens they all have, then each group with the same number left, together."""
    rounds: list[tuple[list[int], int, int]] = []

    def add(group: list[int], lo: int, hi: int) -> None:
        per_call = max(1, n_batch // max(1, len(group)))
        if len(group) > n_batch:  # more pieces than a batch holds: split the group
            for k in range(0, len(group), n_batch):
                add(group[k:k + n_batch], lo, hi)
            return
        at = lo
        while at < hi:
            step = min(per_call, hi - at)
            rounds.append((group, at, at + step))
            at += step

    singles = [j for j, n in enumerate(lengths) if n == 1]
    several = [j for j, n in enumerate(lengths) if n > 1]
    for j in singles:  # a one-token piece is one token alone on the per-example path too
        rounds.append(([j], 0, 1))
    if not several:
        return rounds
    common = min(lengths[j] for j in several)
    add(several, 0, common)
    by_rest: dict[int, list[int]] = {}
    for j in several:
        if lengths[j] > common:
            by_rest.setdefault(lengths[j], []).append(j)
    for n in sorted(by_rest):
        add(by_rest[n], common, n)
    return rounds


# ---------------------------------------------------------------------------
# The batched path on a LlamaStudent, and the measurement
# ---------------------------------------------------------------------------
def kv_bytes_per_cell(metadata: dict[str, Any]) -> int:
    """KV-cache bytes of one token (all layers, K and V in F16), from the GGUF header."""
    arch = str(metadata.get("general.architecture", ""))

    def number(key: str, default: int) -> int:
        try:
            return int(metadata.get(f"{arch}.{key}", default))
        except (TypeError, ValueError):
            return default

    n_embd = number("embedding_length", 1024)
    n_head = max(1, number("attention.head_count", 1))
    n_head_kv = number("attention.head_count_kv", n_head)
    k_len = number("attention.key_length", n_embd // n_head)
    v_len = number("attention.value_length", n_embd // n_head)
    return max(1, number("block_count", 32) * n_head_kv * (k_len + v_len) * 2)


def classify_batched(student: LlamaStudent, system_prompt: str, texts: Sequence[str], labels: Sequence[str],
                     k: int, memory_budget: int = 256 << 20) -> list[Prediction]:
    """`student.classify` of every text, k examples per decode where they share the system part's cells (the
    others one at a time), on the student's owner thread."""
    labels = list(labels)

    def job(_llama: llama_cpp.Llama) -> list[Prediction]:
        m = student._model
        space, _ = m.label_space(labels)
        n_ctx = m.llama.n_ctx()
        prompts = [m.prompt_tokens(system_prompt, t) for t in texts]
        m.system_end(system_prompt, prompts[0])
        prefix = m._system_prefixes[system_prompt]
        batchable = [i for i, p in enumerate(prompts)
                     if prefix and len(p) > len(prefix) and m.system_end(system_prompt, p) == len(prefix)]
        plan = plan_batches(prefix_tokens=len(prefix), example_tokens=[len(prompts[i]) - len(prefix)
                                                                       for i in batchable],
                            label_tokens=max(len(t) for t in space.spelled.values()), max_size=k,
                            bytes_per_cell=kv_bytes_per_cell(m.metadata), memory_budget=memory_budget)
        out: dict[int, Prediction] = {}
        if plan.size >= 2:
            scorer = BatchedScorer(m.llama, n_seq=plan.size, stream_tokens=plan.stream_tokens,
                                   prefix_cache=m.prefix_cache)
            try:
                for start in range(0, len(batchable), plan.size):
                    chunk = batchable[start:start + plan.size]
                    started = time.perf_counter()

                    def run(j: int, next_logits: Any, chunk: list[int] = chunk) -> ScoreResult:
                        return space.score(next_logits, m.end_tokens,
                                           max_path_tokens=n_ctx - len(prompts[chunk[j]]))

                    results = scorer.score(prefix, [prompts[i] for i in chunk], run)
                    each = (time.perf_counter() - started) / len(chunk)
                    for i, result in zip(chunk, results):
                        probs = result.probs
                        out[i] = Prediction(max(space.labels, key=lambda lab: probs[lab]), probs, each)
            finally:
                scorer.close()
        for i, text in enumerate(texts):
            if i not in out:
                out[i] = m.classify(system_prompt, text, labels)
        return [out[i] for i in range(len(texts))]

    return student._owner.call(job)


LABEL_SETS = {"single-token": ["positive", "negative", "neutral"],
              "shared head": ["not_mentioned", "not_entailed", "entailed"],
              "prefix labels": ["neg", "negative", "neutral"]}


def run(k: int, n: int, repeats: int, n_ctx: int) -> dict[str, Any]:
    from bench.student import EXAMPLES, synthetic_rules
    texts = [EXAMPLES[i % len(EXAMPLES)] + ("" if i < len(EXAMPLES) else f" ({i})") for i in range(n - 1)]
    texts.append("A much longer review than the others: " + " ".join(EXAMPLES[:6]))
    models = {"gemma3_270m": None, "smollm2_135m": bundled_local_teacher_path()}
    result: dict[str, Any] = {"k": k, "n": n, "repeats": repeats, "models": {}, "ratios": []}
    for name, path in models.items():
        entry: dict[str, Any] = {"max_abs_dp": {}, "label_agreement": {}}
        with tempfile.TemporaryDirectory(prefix="pld-bench-states-") as state_dir, \
                LlamaStudent(path, n_ctx=n_ctx, state_dir=state_dir) as student:
            for set_name, labels in LABEL_SETS.items():
                prompt = build_rules_prompt("Classify the sentiment of the customer review.", labels,
                                            synthetic_rules(30))
                student.classify(prompt, "Warm-up: the parcel was fine.", labels)
                per = [student.classify(prompt, t, labels) for t in texts]
                batched = classify_batched(student, prompt, texts, labels, k)
                entry["max_abs_dp"][set_name] = max(abs(a.probs[lab] - b.probs[lab])
                                                    for a, b in zip(per, batched) for lab in labels)
                entry["label_agreement"][set_name] = sum(a.label == b.label for a, b in zip(per, batched))
            # Speed: per-example and batched passes alternate (same examples, same prompt), medians.
            labels = LABEL_SETS["single-token"]
            prompt = build_rules_prompt("Classify the sentiment of the customer review.", labels,
                                        synthetic_rules(30))
            times: dict[str, list[float]] = {"per_example": [], "batched": []}
            for _ in range(repeats):
                started = time.perf_counter()
                for t in texts:
                    student.classify(prompt, t, labels)
                times["per_example"].append(time.perf_counter() - started)
                started = time.perf_counter()
                classify_batched(student, prompt, texts, labels, k)
                times["batched"].append(time.perf_counter() - started)
        entry["times_s"] = times
        per_s, bat_s = statistics.median(times["per_example"]), statistics.median(times["batched"])
        entry["speedup"] = per_s / bat_s
        worst = max(entry["max_abs_dp"].values())
        result["models"][name] = entry
        result["ratios"].append({"name": f"batched scoring speed-up, {name} (k={k}, n={n})", "value_s": bat_s,
                                 "baseline_s": per_s, "ratio": per_s / bat_s, "target": 1.3,
                                 "met": per_s / bat_s >= 1.3 and worst <= 1e-4})
        result["ratios"].append({"name": f"batched scoring max |dP|, {name}", "value_s": worst,
                                 "baseline_s": 1e-4, "ratio": worst / 1e-4, "target": 1.0,
                                 "met": worst <= 1e-4})
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batched_scoring", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k", type=int, default=8, help="examples per decode (default 8)")
    parser.add_argument("--n", type=int, default=24, help="examples (default 24; the last one is long)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed passes (default 3)")
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    result = run(args.k, args.n, args.repeats, args.n_ctx)
    for name, entry in result["models"].items():
        print(f"{name}: max |dP| per label set " + ", ".join(f"{k} {v:.2e}" for k, v in entry["max_abs_dp"].items())
              + "; labels agreeing " + ", ".join(f"{v}/{args.n}" for v in entry["label_agreement"].values()))
    print(f"{'':60} {'ratio':>8} {'target':>7}  met")
    for row in result["ratios"]:
        print(f"{row['name']:60} {row['ratio']:8.2f} {row['target']:7.2f}  {'yes' if row['met'] else 'NO'}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
