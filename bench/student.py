"""Student latency benchmark for issue 4: what a long rule prompt costs per example at run time.

    python -m bench.student [--model GGUF] [--n 20] [--n-ctx 8192] [--json out.json]

Every figure is a ratio of medians measured side by side in this run, on the same examples and the same loaded
model (default: the bundled Gemma 3 270M):
  P1  per-example latency with a ~1.3k-token and a ~4.6k-token rule prompt vs the zero-shot prompt;
  P2  alternating two different ~1.3k-token prompts (A, B, A, B ...) vs a one-prompt loop over A and one over B;
  P3  per-example latency (1.3k prompt, one-prompt loop) vs llama.cpp's raw cost for the example's own tokens
      (prefill of the tokens after the system part plus one decode step, on the same Llama, same positions);
  floor of P1: the same raw llama.cpp cost after the ~1.3k and ~4.6k prompts vs after the zero-shot prompt,
      i.e. what attending to the longer prompt costs llama.cpp itself; "P1 over its floor" is the app's share.
  ref the naive llama-cpp-python loop: create_chat_completion with a GBNF label grammar, same prompts.
  P4  the first example in a fresh process whose prompt state was saved to disk by an earlier process, vs the
      warm per-example latency measured in that same process (both prompt sizes; each in two fresh child
      processes: one fills an empty state folder, the next measures). The cold first call (no saved state) is
      reported beside it.
Each condition gets warm-up calls first (which also fill the prefix-state cache); medians are reported.
Targets (issue 4): P1 <= 1.10x, P2 <= 1.15x, P3 <= 1.5x, P4 <= 2x. Phase 2 on 10k micro-rules and the CSV
import of 100k rows are in bench/scale.py.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import llama_cpp

from pld_desktop.backends.llama_student import LlamaStudent
from pld_desktop.core.prompts import PromptRule, build_rules_prompt, build_zero_shot_prompt, student_user_message

LABELS = ["positive", "negative", "neutral"]
TASK_A = "Classify the sentiment of the customer review."
TASK_B = "Decide how the customer feels about the product or service described."

EXAMPLES = [
    "I loved this movie, it was wonderful!",
    "Terrible service, I will never come back.",
    "The package arrived on Tuesday.",
    "Absolutely fantastic, highly recommend.",
    "The food was cold and the waiter was rude.",
    "The store opens at 9am.",
    "Best purchase I made all year.",
    "What a waste of money.",
    "The hotel room was clean and quiet.",
    "My order was missing two items again.",
    "The manual is forty pages long.",
    "Great battery life, it lasts all weekend.",
    "The screen cracked after one week.",
    "We paid by card at the counter.",
    "Friendly staff and quick checkout.",
    "The app crashes every time I open it.",
    "The jacket comes in three colours.",
    "Delicious pizza, we will order again.",
    "Customer support never answered my email.",
    "The train left at half past six.",
    "Such a cozy little cafe, I adore it.",
    "The headphones broke on the first day.",
    "The meeting was moved to Thursday.",
    "Superb quality for the price.",
]

_TOPICS = ["delivery", "price", "staff", "food", "battery", "screen", "packaging", "refund", "app", "room",
           "service", "quality", "size", "colour", "sound", "support", "checkout", "warranty", "manual", "taste"]
_POSITIVE = ["praise", "thanks", "a recommendation", "delight", "satisfaction", "enthusiasm", "a compliment"]
_NEGATIVE = ["complaints", "anger", "disappointment", "a demand for a refund", "frustration", "a warning to others"]
_NEUTRAL = ["a plain fact", "a date or time", "a neutral description", "a question without opinion"]



def alternate(measure, student, prompts, texts) -> list[float]:  # type: ignore[no-untyped-def]
    """Latencies of `measure` over every text with each prompt in turn (A, B, A, B, ...)."""
    return [measure(student, prompt, text) for text in texts for prompt in prompts]

def synthetic_rules(count: int, seed: int = 0) -> list[PromptRule]:
    """`count` numbered-looking, plausible sentiment rules (deterministic)."""
    rules = []
    for i in range(count):
        topic = _TOPICS[(i * 7 + seed) % len(_TOPICS)]
        kind = (i + seed) % 3
        if kind == 0:
            cue = _POSITIVE[(i + seed) % len(_POSITIVE)]
            rules.append(PromptRule(f"The review expresses {cue} about the {topic}, even if it also mentions "
                                    f"small problems elsewhere", "positive"))
        elif kind == 1:
            cue = _NEGATIVE[(i + seed) % len(_NEGATIVE)]
            rules.append(PromptRule(f"The review expresses {cue} about the {topic}, or says the {topic} was "
                                    f"worse than promised", "negative"))
        else:
            cue = _NEUTRAL[(i + seed) % len(_NEUTRAL)]
            rules.append(PromptRule(f"The review only gives {cue} about the {topic} and shows no feeling",
                                    "neutral"))
    return rules


def rules_prompt_of_size(student: LlamaStudent, task: str, target_tokens: int, seed: int) -> tuple[str, int]:
    """A rules prompt whose system part is about `target_tokens` tokens; returns (prompt, system tokens)."""
    def size(count: int) -> tuple[str, int]:
        prompt = build_rules_prompt(task, LABELS, synthetic_rules(count, seed))
        return prompt, student.prompt_split(prompt, "x")[1]

    count = 40
    prompt, n = size(count)
    count = max(1, round(count * target_tokens / n))
    for _ in range(6):
        prompt, n = size(count)
        if abs(n - target_tokens) <= 25:
            break
        count = max(1, count + round((target_tokens - n) / max(1.0, n / count)))
    return prompt, n


def timed_classify(student: LlamaStudent, prompt: str, text: str) -> float:
    started = time.perf_counter()
    student.classify(prompt, text, LABELS)
    return time.perf_counter() - started


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def raw_cost(student: LlamaStudent, prompt: str, text: str) -> float:
    """llama.cpp's own cost for the example's tokens: with the context at the system part (set up untimed), the
    prefill of the remaining prompt tokens in one batch plus one decode step (the first label token)."""
    model = student._model

    def job(llama: llama_cpp.Llama) -> float:
        tokens = model.prompt_tokens(prompt, text)
        system_end = model.system_end(prompt, tokens)
        cursor = model.cursor
        cursor.begin(tokens, system_end)
        if llama.n_tokens != system_end:
            cursor.position(tokens[:system_end + 1])  # evaluates (or restores) the system piece
            cursor.begin(tokens, system_end)
        assert llama.n_tokens == system_end
        step = model.tokenize_text(model.label_prefix + LABELS[0])[0]
        started = time.perf_counter()
        llama.eval(tokens[system_end:])
        llama.eval([step])
        elapsed = time.perf_counter() - started
        cursor.begin(tokens, system_end)  # back to the system piece: the cursor's bookkeeping stays valid
        return elapsed

    return student._owner.call(job)


def naive_chat_completion(student: LlamaStudent, prompt: str, text: str) -> float:
    """The reference: llama-cpp-python's chat completion with a GBNF grammar over the labels (greedy), on the
    student's Llama (its own longest-prefix reuse applies; call reset_after_naive() before the student runs
    again)."""
    model = student._model
    grammar_text = "root ::= " + " | ".join(json.dumps(model.label_prefix + label) for label in LABELS)

    def job(llama: llama_cpp.Llama) -> float:
        grammar = llama_cpp.LlamaGrammar.from_string(grammar_text, verbose=False)
        started = time.perf_counter()
        llama.create_chat_completion(messages=[{"role": "user", "content": student_user_message(prompt, text)}],
                                     grammar=grammar, temperature=0.0, max_tokens=8)
        elapsed = time.perf_counter() - started
        return elapsed

    return student._owner.call(job)


def reset_after_naive(student: LlamaStudent) -> None:
    """Llama.generate() leaves the context in its own batching; the student's cursor must start afresh."""
    model = student._model
    student._owner.call(lambda _llama: model.cursor.reset())


def run(model: str | None, n: int, n_ctx: int, n_reference: int, p4_n: int = 0,
        state_dir: str | None = None) -> dict[str, Any]:
    examples = [EXAMPLES[i % len(EXAMPLES)] + ("" if i < len(EXAMPLES) else f" ({i})") for i in range(n)]
    warm_text = "Warm-up: the parcel was fine."
    result: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                              "llama_cpp_python": llama_cpp.__version__, "n": n, "n_ctx": n_ctx}
    load_started = time.perf_counter()
    # The main loop's student gets its own empty state folder: states saved by earlier runs would turn the cold
    # first call into a disk load.
    with LlamaStudent(model, n_ctx=n_ctx, state_dir=state_dir) as student:
        result["load_s"] = time.perf_counter() - load_started
        result["model"] = {"name": student.identity.name, "path": student.identity.path,
                           "sha256": student.identity.sha256}
        zero = build_zero_shot_prompt(TASK_A, LABELS)
        prompt_a, tokens_a = rules_prompt_of_size(student, TASK_A, 1300, seed=0)
        prompt_b, tokens_b = rules_prompt_of_size(student, TASK_B, 1300, seed=1)
        prompt_long, tokens_long = rules_prompt_of_size(student, TASK_A, 4600, seed=2)
        result["system_tokens"] = {"zero_shot": student.prompt_split(zero, "x")[1], "rules_1k3_a": tokens_a,
                                   "rules_1k3_b": tokens_b, "rules_4k6": tokens_long}
        example_tokens = []
        for text in examples:
            tokens, system_end = student.prompt_split(prompt_a, text)
            example_tokens.append(len(tokens) - system_end)
        result["example_tokens"] = example_tokens

        lat: dict[str, list[float]] = {}

        def one_prompt(name: str, prompt: str) -> None:
            for _ in range(2):
                timed_classify(student, prompt, warm_text)
            lat[name] = [timed_classify(student, prompt, text) for text in examples]

        first_started = time.perf_counter()
        timed_classify(student, prompt_long, warm_text)
        result["first_call_4k6_s"] = time.perf_counter() - first_started  # cold: evaluates the system part
        one_prompt("zero_shot", zero)
        one_prompt("rules_1k3", prompt_a)
        one_prompt("rules_4k6", prompt_long)
        one_prompt("zero_shot_again", zero)  # drift check: the same condition measured twice

        # P2: A, B, A, B ... (each prompt's state saved by the warm-up, then restored at every switch)
        for prompt in (prompt_a, prompt_b, prompt_a, prompt_b):
            timed_classify(student, prompt, warm_text)
        lat["interleaved_ab"] = alternate(timed_classify, student, (prompt_a, prompt_b), examples)
        one_prompt("rules_1k3_again", prompt_a)
        # P2's baseline holds both prompts, each in its own one-prompt loop: the label search may need more
        # evaluations after one prompt than after the other, which is not the cost of switching.
        one_prompt("rules_1k3_b", prompt_b)

        # P3: raw llama.cpp cost of each example's own tokens, same Llama, same positions. The same raw cost
        # after the zero-shot and the 4.6k prompt gives P1's floor: what attending to the longer prompt costs
        # llama.cpp itself, which no client of it can avoid without changing the numbers.
        for name, prompt in (("raw_example_tokens", prompt_a), ("raw_zero_shot", zero),
                             ("raw_rules_4k6", prompt_long)):
            raw_cost(student, prompt, warm_text)
            lat[name] = [raw_cost(student, prompt, text) for text in examples]

        # Reference: the naive chat-completion loop (one prompt, then interleaved, fewer examples: it is slow)
        ref_examples = examples[:n_reference]
        naive_chat_completion(student, prompt_a, warm_text)
        lat["naive_one_prompt"] = [naive_chat_completion(student, prompt_a, t) for t in ref_examples]
        naive_chat_completion(student, prompt_b, warm_text)
        lat["naive_interleaved_ab"] = alternate(naive_chat_completion, student, (prompt_a, prompt_b), ref_examples)
        reset_after_naive(student)
        stats = student.stats()
        result["student_stats"] = dict(vars(stats))
        result["prefix_cache"] = dict(zip(("states", "bytes"), student.prefix_cache_info()))

    result["latencies_s"] = lat
    med = {name: median(values) for name, values in lat.items()}
    result["medians_s"] = med
    zero_med = median(lat["zero_shot"] + lat["zero_shot_again"])
    one_med = median(lat["rules_1k3"] + lat["rules_1k3_again"])
    one_ab_med = median(lat["rules_1k3"] + lat["rules_1k3_b"])
    per_example_p3 = [s / r for s, r in zip(lat["rules_1k3"], lat["raw_example_tokens"])]
    rows = [
        ("P1 rules ~1.3k vs zero-shot", med["rules_1k3"], zero_med, 1.10),
        ("P1 rules ~4.6k vs zero-shot", med["rules_4k6"], zero_med, 1.10),
        ("P2 interleaved A/B vs one prompt at a time", med["interleaved_ab"], one_ab_med, 1.15),
        ("P3 example vs raw llama.cpp cost", med["rules_1k3"], med["raw_example_tokens"], 1.5),
        ("floor of P1 ~1.3k: llama.cpp raw, vs raw zero-shot", med["raw_example_tokens"], med["raw_zero_shot"],
         None),
        ("floor of P1 ~4.6k: llama.cpp raw, vs raw zero-shot", med["raw_rules_4k6"], med["raw_zero_shot"], None),
        ("ref naive chat loop, one prompt, vs student", med["naive_one_prompt"], one_med, None),
        ("ref naive chat loop, interleaved, vs student", med["naive_interleaved_ab"], med["interleaved_ab"], None),
        ("ref naive interleaved vs naive one prompt", med["naive_interleaved_ab"], med["naive_one_prompt"], None),
    ]
    result["ratios"] = [{"name": name, "value_s": a, "baseline_s": b, "ratio": a / b, "target": target,
                         "met": None if target is None else a / b <= target} for name, a, b, target in rows]
    result["p3_median_of_per_example_ratios"] = median(per_example_p3)
    # P1 divided by its floor: what the app adds to llama.cpp's own growth with the prompt (1.00x = nothing).
    result["p1_over_floor"] = {
        "1k3": (med["rules_1k3"] / zero_med) / (med["raw_example_tokens"] / med["raw_zero_shot"]),
        "4k6": (med["rules_4k6"] / zero_med) / (med["raw_rules_4k6"] / med["raw_zero_shot"])}
    if p4_n:
        result["p4"] = {}
        for name, target_tokens in (("1k3", 1300), ("4k6", 4600)):
            runs = p4(model, p4_n, n_ctx, target_tokens)
            result["p4"][name] = runs
            measure = runs["measure"]
            result["ratios"].append({
                "name": f"P4 first example, disk-saved ~{name[0]}.{name[2]}k prefix, vs warm",
                "value_s": measure["first_s"], "baseline_s": measure["warm_median_s"],
                "ratio": measure["first_s"] / measure["warm_median_s"], "target": 2.0,
                "met": measure["first_s"] / measure["warm_median_s"] <= 2.0})
            result["ratios"].append({
                "name": f"ref first example, no saved ~{name[0]}.{name[2]}k prefix, vs warm",
                "value_s": runs["fill"]["first_s"], "baseline_s": runs["fill"]["warm_median_s"],
                "ratio": runs["fill"]["first_s"] / runs["fill"]["warm_median_s"], "target": None, "met": None})
    return result


def p4_child(model: str | None, n: int, n_ctx: int, target_tokens: int, state_dir: str) -> dict[str, Any]:
    """In a fresh process: load the student with `state_dir`, time the first example, then the warm ones."""
    examples = [EXAMPLES[i % len(EXAMPLES)] for i in range(n)]
    load_started = time.perf_counter()
    with LlamaStudent(model, n_ctx=n_ctx, state_dir=state_dir) as student:
        load_s = time.perf_counter() - load_started
        prompt, tokens = rules_prompt_of_size(student, TASK_A, target_tokens, seed=0 if target_tokens < 3000 else 2)
        first_s = timed_classify(student, prompt, examples[0])
        after_first = dict(vars(student.stats()))
        timed_classify(student, prompt, "Warm-up: the parcel was fine.")
        warm = [timed_classify(student, prompt, text) for text in examples[1:]]
    return {"load_s": load_s, "system_tokens": tokens, "first_s": first_s, "warm_s": warm,
            "warm_median_s": median(warm), "stats_after_first": after_first}


def p4(model: str | None, n: int, n_ctx: int, target_tokens: int) -> dict[str, Any]:
    """Two fresh processes on one empty state folder: the first fills it, the second measures P4."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="pld-bench-states-") as state_dir:
        for _ in range(2):
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
                out_path = Path(out.name)
            cmd = [sys.executable, "-m", "bench.student", "--p4-child", str(target_tokens), "--state-dir",
                   state_dir, "--n", str(n), "--n-ctx", str(n_ctx), "--json", str(out_path)]
            if model:
                cmd += ["--model", model]
            proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"P4 child failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
            runs.append(json.loads(out_path.read_text(encoding="utf-8")))
            out_path.unlink()
        state_files = [p.stat().st_size for p in Path(state_dir).glob("*.state")]
    fill, measure = runs
    if measure["stats_after_first"]["disk_loads"] != 1:
        raise SystemExit("P4: the second process did not load the saved state; the figure would be wrong.")
    return {"fill": fill, "measure": measure, "state_file_bytes": state_files}


def print_table(result: dict[str, Any]) -> None:
    print(f"model: {result['model']['name']}  llama-cpp-python {result['llama_cpp_python']}  n={result['n']}  "
          f"n_ctx={result['n_ctx']}")
    print("system tokens: " + ", ".join(f"{k}={v}" for k, v in result["system_tokens"].items())
          + f"; example tokens (median): {median(result['example_tokens'])}")
    print(f"{'figure':52} {'median s':>9} {'baseline s':>10} {'ratio':>7} {'target':>7}  met")
    for row in result["ratios"]:
        target = "" if row["target"] is None else f"<={row['target']:.2f}"
        met = "" if row["met"] is None else ("yes" if row["met"] else "NO")
        print(f"{row['name']:52} {row['value_s']:9.4f} {row['baseline_s']:10.4f} {row['ratio']:6.2f}x "
              f"{target:>7}  {met}")
    print(f"P3 median of per-example ratios: {result['p3_median_of_per_example_ratios']:.2f}x; "
          f"first call with the 4.6k prompt (cold): {result['first_call_4k6_s']:.2f} s")
    over = result["p1_over_floor"]
    print(f"P1 over its floor (the app's share of P1; 1.00x = none): ~1.3k {over['1k3']:.2f}x, "
          f"~4.6k {over['4k6']:.2f}x")
    print("all medians (s): " + ", ".join(f"{k}={v:.4f}" for k, v in result["medians_s"].items()))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.student", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="GGUF file (default: the bundled Gemma 3 270M)")
    parser.add_argument("--n", type=int, default=20, help="examples per condition (default 20)")
    parser.add_argument("--n-ctx", type=int, default=8192, help="context size (default 8192)")
    parser.add_argument("--n-reference", type=int, default=None,
                        help="examples for the naive chat-completion reference rows (default min(n, 6))")
    parser.add_argument("--json", default=None, help="write every raw figure to this JSON file")
    parser.add_argument("--no-p4", action="store_true", help="skip P4 (it spawns four fresh processes)")
    parser.add_argument("--p4-child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--state-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.n < 2:
        parser.error("--n must be at least 2")
    if args.p4_child is not None:
        child = p4_child(args.model, args.n, args.n_ctx, args.p4_child, args.state_dir)
        Path(args.json).write_text(json.dumps(child), encoding="utf-8")
        return 0
    n_reference = args.n_reference if args.n_reference is not None else min(args.n, 6)
    with tempfile.TemporaryDirectory(prefix="pld-bench-states-") as state_dir:
        result = run(args.model, args.n, args.n_ctx, max(1, n_reference), 0 if args.no_p4 else min(args.n, 8),
                     state_dir)
    print_table(result)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        print(f"raw figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
