"""How one GGUF model's weight type changes the cost of a batched decode (the measurement behind
backends/unpacked_weights.py).

    python -m bench.weight_types [--model GGUF] [--types F16,BF16,Q8_0,Q4_0,Q5_0,Q5_1] [--k 1,8,16] [--json out.json]

Makes copies of the model (default: the bundled teacher, SmolLM2-135M Q4_1) in the listed types with llama.cpp's
own converter (`llama_model_quantize`, requantizing where needed: only the F16/F32 copies keep the weights), then,
per file and per k, fills a multi-sequence context as phase 1 does (a 160-token shared prefix copied into k
sequences, 50 tokens of each sequence's own) and times one-token decodes of all k sequences together (median of
27 after 3 warm-ups, 2+ threads), and the per-token cost of the 50-token pieces. The copies and the source run
one after the other in one process, so their figures compare; `ratios` (`name`, `ratio`, `target`, `met`) give
each copy's time over the source's for the largest k, without targets.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as llama_capi

FTYPES = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9, "BF16": 32}
PREFIX, OWN, STEPS = 160, 50, 30


def convert(source: Path, ftype: str, folder: Path) -> Path:
    from pld_desktop.backends.unpacked_weights import convert_model
    target = folder / f"{source.stem}.{ftype}.gguf"
    convert_model(source, target, FTYPES[ftype])
    return target


def measure(path: Path, ks: Sequence[int], threads: int) -> dict[str, Any]:
    from llama_cpp import _internals
    llama = llama_cpp.Llama(str(path), n_ctx=512, verbose=False)
    batch = llama_capi.llama_batch_init(512, 0, 1)

    def decode(ctx: Any, entries: list[tuple[int, int, int, bool]]) -> None:
        for i, (tok, pos, seq, logits) in enumerate(entries):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, logits
        batch.n_tokens = len(entries)
        if llama_capi.llama_decode(ctx.ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    out: dict[str, Any] = {"file": path.name, "decode_ms": {}, "piece_ms_per_token": {}}
    try:
        for k in ks:
            params = type(llama.context_params).from_buffer_copy(llama.context_params)
            params.n_ctx, params.n_seq_max, params.kv_unified = 8192, k + 1, True
            params.n_threads = params.n_threads_batch = threads
            params.flash_attn_type = 1  # as the batched teacher decodes a model without a sliding window
            ctx = _internals.LlamaContext(model=llama._model, params=params, verbose=False)
            try:
                memory = llama_capi.llama_get_memory(ctx.ctx)
                decode(ctx, [((i * 7) % 4000 + 10, i, k, False) for i in range(PREFIX)])
                for seq in range(k):
                    llama_capi.llama_memory_seq_cp(memory, k, seq, -1, -1)
                started = time.perf_counter()
                for seq in range(k):
                    decode(ctx, [((seq * 13 + i) % 4000 + 10, PREFIX + i, seq, i == OWN - 1) for i in range(OWN)])
                out["piece_ms_per_token"][k] = (time.perf_counter() - started) * 1000 / (OWN * k)
                times = []
                for step in range(STEPS):
                    started = time.perf_counter()
                    decode(ctx, [(300 + step, PREFIX + OWN + step, seq, True) for seq in range(k)])
                    times.append(time.perf_counter() - started)
                out["decode_ms"][k] = statistics.median(times[3:]) * 1000
            finally:
                ctx.close()
    finally:
        llama_capi.llama_batch_free(batch)
        llama.close()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.weight_types", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="GGUF file (default: the bundled teacher)")
    parser.add_argument("--types", default="F16,BF16,Q8_0,Q4_0,Q5_0,Q5_1")
    parser.add_argument("--k", default="1,8,16", help="sequences decoded together")
    parser.add_argument("--threads", type=int, default=max(2, os.cpu_count() or 1))
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    from pld_desktop.backends.bundled import bundled_local_teacher_path
    from pld_desktop.backends.gguf_file import read_gguf_header
    from pld_desktop.backends.quiet_load import quiet_llama
    source = Path(args.model) if args.model else bundled_local_teacher_path()
    ks = [int(k) for k in args.k.split(",")]
    with tempfile.TemporaryDirectory(prefix="pld-bench-weights-") as tmp:
        files = [(f"{read_gguf_header(source).quantisation} (the file)", source)]
        for ftype in [t.strip().upper() for t in args.types.split(",") if t.strip()]:
            files.append((ftype, convert(source, ftype, Path(tmp))))
        with quiet_llama():
            results = [dict(measure(path, ks, args.threads), weights=name) for name, path in files]
    print(f"{source.name}, {args.threads} threads; one llama_decode of k one-token replies (ms), and a "
          f"{OWN}-token prompt piece per token (ms)")
    print(f"{'weights':>16} " + " ".join(f"{'k=' + str(k):>9}" for k in ks) + f" {'piece/tok':>10}")
    for r in results:
        print(f"{r['weights']:>16} " + " ".join(f"{r['decode_ms'][k]:9.1f}" for k in ks)
              + f" {r['piece_ms_per_token'][ks[-1]]:10.2f}")
    base, top = results[0], ks[-1]
    ratios = [{"name": f"{r['weights']}: {top} sequences, one decode, copy/file",
               "ratio": r["decode_ms"][top] / base["decode_ms"][top], "target": None, "met": None}
              for r in results[1:]]
    if args.json:
        Path(args.json).write_text(json.dumps({"source": str(source), "results": results, "ratios": ratios},
                                              indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
