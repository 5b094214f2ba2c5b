#!/usr/bin/env python3
"""Classify a CSV with a PLD Desktop rule prompt on a local GGUF model through llama-cpp-python.

Template of the `classify-py` export (core/deploy.py fills the block between the PLD-CONFIG marks); the app
never imports it. The decision rule is the app's: P(label) is the probability that decoding constrained to the
labels writes that label, computed from the model's next-token logits where the allowed answers branch, and
the answer is its argmax (the first label wins a tie). Logits are evaluated on the app's fixed schedule (the
system part, the input, the answer so far, each as one batch), so the same GGUF, context size and
llama-cpp-python build give the app's labels.

Usage: python classify.py input.csv [--model model.gguf] [--out labelled.csv] [--text-column COL]
Needs: pip install llama-cpp-python numpy
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import heapq
import itertools
import math
import sys
from typing import Any

# PLD-CONFIG-BEGIN
SYSTEM_PROMPT = "Classify the input into exactly one of the labels below."
LABELS = ["a", "b"]
MESSAGE_HEAD = ""               # the user message is MESSAGE_HEAD + input + MESSAGE_TAIL
MESSAGE_TAIL = ""
INPUT_PARTS: list[list[object]] = [["text", True]]  # [text, is_column]: how the input columns make the input
DEFAULT_MODEL = ""
N_CTX = 4096
RULE_SET = 0
PROMPT_SHA256 = ""
# PLD-CONFIG-END

MIN_BRANCH_PROB = 3e-3
MAX_EVALUATIONS = 8


def render_input(record: dict[str, object]) -> str:
    out = []
    for part, is_column in INPUT_PARTS:
        if not is_column:
            out.append(str(part))
            continue
        if part not in record:
            raise SystemExit(f"error: the CSV has no column '{part}' (the project's input columns: "
                             f"{', '.join(str(p) for p, c in INPUT_PARTS if c)}); or pass --text-column")
        value = record[part] or ""
        out.append(str(value).replace("\r\n", "\n").replace("\r", "\n").strip())
    return "".join(out).strip()


class Model:
    def __init__(self, path: str, n_ctx: int) -> None:
        import llama_cpp
        import llama_cpp.llama_cpp as capi
        import numpy as np
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.np, self.capi = np, capi
        self.llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, seed=0, verbose=False)
        if int(capi.llama_model_n_swa(self.llm.model)) > 0:
            # As the app: on a sliding-window model (Gemma 3) flash attention and one decode thread.
            del self.llm
            self.llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_threads=1, seed=0, flash_attn=True,
                                       verbose=False)
        llm = self.llm
        self.n_vocab = llm.n_vocab()
        self.n_swa = int(capi.llama_model_n_swa(llm.model))
        template = (llm.metadata or {}).get("tokenizer.chat_template")
        self.formatter = None
        if template:
            def text(t: int) -> str:
                return llm._model.token_get_text(t) if t != -1 else ""
            self.formatter = Jinja2ChatFormatter(template=template, eos_token=text(llm.token_eos()),
                                                 bos_token=text(llm.token_bos()), add_generation_prompt=True,
                                                 stop_token_ids=[llm.token_eos()])
        self.label_prefix = "" if self.formatter is not None else " "
        vocab = capi.llama_model_get_vocab(llm.model)
        self.end_tokens = [t for t in range(self.n_vocab) if capi.llama_vocab_is_eog(vocab, t)] or [llm.token_eos()]
        self.pieces: dict[bytes, list[int]] = {}
        buf = ctypes.create_string_buffer(128)
        for t in range(self.n_vocab):
            n = capi.llama_token_to_piece(vocab, t, buf, 128, 0, False)
            if n < 0:
                big = ctypes.create_string_buffer(-n)
                n = capi.llama_token_to_piece(vocab, t, big, -n, 0, False)
                piece = big.raw[:n]
            else:
                piece = buf.raw[:n]
            if piece:
                self.pieces.setdefault(piece, []).append(t)
        self.anchor: int | None = None
        self.logits_at: int | None = None
        self.boundaries: tuple[int, ...] = ()

    # -- tokens --------------------------------------------------------------------------------------
    def prompt_tokens(self, text: str) -> list[int]:
        message = MESSAGE_HEAD + text + MESSAGE_TAIL
        if self.formatter is None:
            return self.llm.tokenize(message.encode("utf-8"), add_bos=True, special=False)
        rendered = self.formatter(messages=[{"role": "user", "content": message}]).prompt
        return self.llm.tokenize(rendered.encode("utf-8"), add_bos=False, special=True)

    # -- the app's evaluation schedule ---------------------------------------------------------------
    def _memory(self) -> Any:  # llama.cpp's llama_memory_t handle
        return self.capi.llama_get_memory(self.llm.ctx)

    def _clear(self) -> None:
        self.capi.llama_memory_clear(self._memory(), False)
        self.llm.n_tokens = 0
        self.anchor = None
        self.logits_at = None

    def _truncate(self, keep: int) -> int:
        llm, capi = self.llm, self.capi
        if keep >= llm.n_tokens:
            return llm.n_tokens
        pos_min = int(capi.llama_memory_seq_pos_min(self._memory(), 0))
        required = max(0, keep - self.n_swa) if self.n_swa > 0 else 0
        if keep > 0 and 0 <= pos_min <= required and capi.llama_memory_seq_rm(self._memory(), 0, keep, -1):
            llm.n_tokens = keep
            self.logits_at = None
            if self.anchor is not None and self.anchor > keep:
                self.anchor = None
            return keep
        self._clear()
        return 0

    def begin(self, prompt: list[int], system_end: int) -> None:
        llm = self.llm
        system_end = max(0, min(system_end, len(prompt) - 1))
        self.boundaries = tuple(sorted({system_end, len(prompt)} - {0}))
        if (system_end > 0 and self.anchor == system_end and llm.n_tokens >= system_end
                and list(llm.input_ids[:system_end]) == prompt[:system_end]):
            if self._truncate(system_end) == system_end:
                return
        self._clear()

    def position(self, target: list[int]) -> None:
        llm = self.llm
        n = llm.n_tokens
        current = list(llm.input_ids[:n])
        common = 0
        for a, b in zip(current, target):
            if a != b:
                break
            common += 1
        if common == len(target) == n and self.logits_at == n:
            return
        limit = min(common, len(target) - 1)
        system_end = self.boundaries[0] if len(self.boundaries) > 1 else None
        keep = max([0] + [b for b in self.boundaries if b <= limit and (b != system_end or self.anchor == b)])
        keep = self._truncate(keep)
        cuts = [keep] + [b for b in self.boundaries if keep < b < len(target)] + [len(target)]
        for start, stop in itertools.pairwise(cuts):
            llm.eval(target[start:stop])
            if start == 0:
                self.anchor = stop
        self.logits_at = llm.n_tokens

    def logits(self) -> Any:  # a numpy float array over the vocabulary (numpy is imported on use)
        pointer = self.capi.llama_get_logits_ith(self.llm.ctx, -1)
        return self.np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))

    # -- P(label) ------------------------------------------------------------------------------------
    def classify(self, text: str, system_end_probe: list[int]) -> tuple[str, dict[str, float]]:
        prompt = self.prompt_tokens(text)
        self.begin(prompt, common_prefix(system_end_probe, prompt))
        search = LabelSearch(self, prompt)
        search.run()
        probs = search.probabilities()
        return max(LABELS, key=lambda label: probs[label]), probs


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class LabelSearch:
    """P(label) for one prompt: a best-first walk over the token paths that spell a label (the app's rule)."""

    def __init__(self, model: Model, prompt: list[int]) -> None:
        self.model, self.prompt, self.np = model, prompt, model.np
        self.spelled = {label: (model.label_prefix + label).encode("utf-8") for label in LABELS}
        self.by_text = {t: label for label, t in self.spelled.items()}
        self.ends = self.np.asarray(sorted(set(model.end_tokens)), dtype=self.np.int64)
        self.max_path = model.llm.n_ctx() - len(prompt)
        self.mass = {label: 0.0 for label in self.spelled}
        self.unexplored: list[tuple[float, list[str]]] = []
        self.evaluations = 0
        self.counter = itertools.count()
        self.heap: list[tuple[float, int, tuple[int, ...], bytes]] = [(-1.0, next(self.counter), (), b"")]

    def consistent(self, written: bytes) -> list[str]:
        return [label for label, t in self.spelled.items() if t.startswith(written)]

    def options(self, written: bytes) -> list[tuple[int, bytes]]:
        """The tokens that continue `written` towards some label; (-1, b"") when `written` is a whole label."""
        found: dict[int, bytes] = {}
        for label in self.consistent(written):
            rest = self.spelled[label][len(written):]
            for k in range(1, len(rest) + 1):
                for token in self.model.pieces.get(rest[:k], ()):
                    found.setdefault(int(token), rest[:k])
        options = sorted(found.items())
        if written in self.by_text:
            options.append((-1, b""))
        return options

    def expand(self, path: tuple[int, ...], written: bytes) -> list[tuple[int, bytes, float]]:
        options = self.options(written)
        self.model.position(self.prompt + list(path))
        logits = self.model.logits()
        steps = []
        for token, piece in options:
            if token == -1:  # the answer ends here: the log of the end tokens' total mass
                values = self.np.asarray(logits[self.ends], dtype=self.np.float64)
                top = float(self.np.max(values))
                lse = top if not math.isfinite(top) else top + math.log(float(self.np.sum(self.np.exp(values - top))))
                steps.append((token, b"", lse))
            else:
                steps.append((token, piece, float(logits[token])))
        return steps

    def run(self) -> None:
        while self.heap:
            neg_p, _, path, written = heapq.heappop(self.heap)
            p = -neg_p
            alive = self.consistent(written)
            if len(alive) == 1:
                self.mass[alive[0]] += p
            elif self.evaluations >= MAX_EVALUATIONS or len(path) >= self.max_path:
                self.unexplored.append((p, alive))
            else:
                self.step(p, path, written, alive)

    def step(self, p: float, path: tuple[int, ...], written: bytes, alive: list[str]) -> None:
        options = self.expand(path, written)
        self.evaluations += 1
        if not options:
            self.unexplored.append((p, alive))
            return
        top = max(logp for _, _, logp in options)
        norm = top + math.log(math.fsum(math.exp(logp - top) for _, _, logp in options)) \
            if math.isfinite(top) else top
        for token, piece, logp in options:
            q = p * math.exp(logp - norm)
            if piece == b"":
                self.mass[self.by_text[written]] += q
                continue
            child = written + piece
            child_labels = self.consistent(child)
            if len(child_labels) == 1:
                self.mass[child_labels[0]] += q
            elif q >= MIN_BRANCH_PROB:
                heapq.heappush(self.heap, (-q, next(self.counter), path + (token,), child))
            else:
                self.unexplored.append((q, child_labels))

    def probabilities(self) -> dict[str, float]:
        """The explored mass, with each unexplored branch shared out like its labels' explored mass."""
        mass, explored = self.mass, dict(self.mass)
        for q, alive in self.unexplored:
            weights = [explored[label] for label in alive]
            share = math.fsum(weights)
            for label, weight in zip(alive, weights):
                mass[label] += q * (weight / share if share > 0 else 1.0 / len(alive))
        total = math.fsum(mass.values())
        return {label: (v / total if total > 0 and math.isfinite(total) else 1.0 / len(mass))
                for label, v in mass.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=f"Classify a CSV with PLD rule-set version {RULE_SET} "
                                             f"(prompt sha256 {PROMPT_SHA256[:16]}).")
    ap.add_argument("csv", help="input CSV (UTF-8) with the project's input columns, or see --text-column")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="the student GGUF (default: the one the app scored)")
    ap.add_argument("--n-ctx", type=int, default=N_CTX)
    ap.add_argument("--text-column", help="a column that already holds the rendered input text")
    ap.add_argument("--out", help="output CSV (default: standard output)")
    args = ap.parse_args(argv)
    if not args.model:
        raise SystemExit("error: pass --model path/to/student.gguf")
    with open(args.csv, newline="", encoding="utf-8-sig") as fh:
        records = list(csv.DictReader(fh))
    model = Model(args.model, args.n_ctx)
    # The tokens shared by the prompts of two unrelated inputs depend only on the system prompt (as the app).
    probe_a, probe_b = model.prompt_tokens("A"), model.prompt_tokens("z")
    probe = probe_a[:common_prefix(probe_a, probe_b)]
    out = open(args.out, "w", newline="", encoding="utf-8") if args.out else sys.stdout
    try:
        fields = list(records[0].keys()) if records else []
        writer = csv.writer(out)
        writer.writerow(fields + ["predicted", "confidence"])
        for record in records:
            text = str(record.get(args.text_column) or "").strip() if args.text_column else render_input(record)
            label, probs = model.classify(text, probe)
            writer.writerow([record.get(f, "") for f in fields] + [label, f"{probs[label]:.6f}"])
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
