"""What an idle model's thread costs the model that is working: OpenMP teams kept by idle threads.

    python -m bench.owner_threads [--rounds 5] [--steps 40] [--json out.json]

One process, the bundled teacher (SmolLM2) and student (Gemma 3 270M), every figure a median measured here, the
conditions interleaved round by round. The teacher's owner runs one-token decodes at position ~1200 (what a
closed-loop rewrite does for hundreds of tokens) while
  alone          nothing else has computed in this process since the last round (or ever);
  kept           the student has scored a text on an owner whose thread stays (the old LlamaOwner);
  retired        the same on an owner whose thread ends when idle (LlamaOwner(retire_when_idle=True));
  torch kept     the embedder has encoded on a thread that stays (the caller's);
  torch passing  the same on a passing thread (run_on_a_passing_thread).
Ratios: kept/retired and torch kept/torch passing (how much slower the decode is with the idle team kept), and
retired/alone (what is left). libgomp spins ~100 times at a barrier once the process has more pool threads than
cores, so on 2 cores the kept rows are expected ~1.5x slower; on many cores the ratios approach 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as llama_capi

from pld_desktop.backends.bundled import bundled_local_teacher_path, bundled_student_path
from pld_desktop.backends.llama_runtime import LlamaOwner
from pld_desktop.backends.passing_thread import run_on_a_passing_thread


def one_token_decode_ms(llama: llama_cpp.Llama, position: int, steps: int) -> float:
    """Median ms of a one-token decode at `position` in a fresh context of the owner's model (on its thread)."""
    from llama_cpp import _internals
    params = type(llama.context_params).from_buffer_copy(llama.context_params)
    params.n_ctx = 4096
    ctx = _internals.LlamaContext(model=llama._model, params=params, verbose=False)
    batch = llama_capi.llama_batch_init(512, 0, 1)
    tokens = llama.tokenize(b"You are a careful annotator of bank messages and you write rules. " * 120)
    try:
        def decode(entries: Sequence[tuple[int, int, bool]]) -> float:
            for i, (token, pos, logits) in enumerate(entries):
                batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, logits
                batch.seq_id[i][0] = 0
            batch.n_tokens = len(entries)
            started = time.perf_counter()
            if llama_capi.llama_decode(ctx.ctx, batch) != 0:
                raise RuntimeError("llama_decode failed")
            return time.perf_counter() - started

        for offset in range(0, position, 512):
            decode([(t, offset + i, False) for i, t in enumerate(tokens[offset:min(position, offset + 512)])])
        times = [decode([(100 + k, position + k, True)]) for k in range(steps)]
    finally:
        llama_capi.llama_batch_free(batch)
        ctx.close()  # type: ignore[no-untyped-call]  # llama_cpp._internals leaves close() unannotated
    return statistics.median(times) * 1000


def student_decode(llama: llama_cpp.Llama) -> None:
    """A few decodes on the student (its owner thread then has an OpenMP team)."""
    llama.reset()  # type: ignore[no-untyped-call]  # llama_cpp leaves reset() unannotated
    llama.eval(llama.tokenize(b"The card was charged twice and nobody answers the phone."))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.owner_threads", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--position", type=int, default=1200)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    cores = os.cpu_count() or 1
    teacher = LlamaOwner(bundled_local_teacher_path(), n_ctx=512, n_threads=cores, n_threads_batch=cores,
                         name="bench-teacher", retire_when_idle=True)
    from pld_desktop.backends.embedder import SentenceTransformerEmbedder
    embedder = SentenceTransformerEmbedder()

    def measure() -> float:
        return teacher.call(lambda llama: one_token_decode_ms(llama, args.position, args.steps))

    def with_student(retire: bool) -> Callable[[], float]:
        def run() -> float:
            student = LlamaOwner(bundled_student_path(), n_ctx=512, n_threads=cores, n_threads_batch=cores,
                                 name="bench-student", retire_when_idle=retire)
            try:
                student.call(student_decode)
                return measure()
            finally:
                student.close()
        return run

    def with_torch(passing: bool) -> Callable[[], float]:
        def run() -> float:
            def encode() -> None:
                embedder._embed(["a rule about late fees"] * 16)
            if passing:
                run_on_a_passing_thread(encode)
                return measure()
            # a thread that stays alive while the teacher decodes, as the caller's thread would
            done, release = threading.Event(), threading.Event()
            def keep() -> None:
                encode()
                done.set()
                release.wait()

            keeper = threading.Thread(target=keep, daemon=True)
            keeper.start()
            done.wait()
            try:
                return measure()
            finally:
                release.set()
                keeper.join()
        return run

    conditions: dict[str, Callable[[], float]] = {
        "alone": measure, "kept": with_student(False), "retired": with_student(True),
        "torch kept": with_torch(False), "torch passing": with_torch(True)}
    samples: dict[str, list[float]] = {name: [] for name in conditions}
    # The torch import and model load, outside the timings, on a passing thread (on this one its team would stay).
    run_on_a_passing_thread(lambda: embedder._embed(["warm-up"]))
    for _ in range(args.rounds):
        for name, run in conditions.items():
            samples[name].append(run())
    teacher.close()
    medians = {name: statistics.median(values) for name, values in samples.items()}
    ratios = [
        {"name": "idle student owner kept vs retired (teacher one-token decode)",
         "ratio": medians["kept"] / medians["retired"]},
        {"name": "torch team kept vs passing thread (teacher one-token decode)",
         "ratio": medians["torch kept"] / medians["torch passing"]},
        {"name": "retired vs alone", "ratio": medians["retired"] / medians["alone"]},
    ]
    print(f"teacher one-token decode at position {args.position}, {cores} cores, median of {args.rounds} rounds "
          f"x {args.steps} steps:")
    for name, value in medians.items():
        print(f"  {name:14s} {value:6.1f} ms   (rounds: {', '.join(f'{v:.1f}' for v in samples[name])})")
    for row in ratios:
        print(f"  {row['name']}: {row['ratio']:.2f}x")
    if args.json:
        result: dict[str, Any] = {"cores": cores, "medians_ms": medians, "samples_ms": samples, "ratios": ratios}
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(result, out, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
