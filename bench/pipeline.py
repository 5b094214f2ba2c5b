"""Whole-run benchmark for issue 15: the four phases on real data with the new paths vs the old ones, side by side.

    python -m bench.pipeline [--rows 105] [--shared sst2] [--shared-rows 105] [--loop-iterations 1] [--json out.json]
                             [--teacher-gguf FILE] [--student-gguf FILE]

For each dataset (a stratified sample of the bundled demo CSV and of one shared dataset in /work/shared/data) and
each mode ("old": PLD_FAST_PATHS=0, today's one-request-at-a-time local teacher; "new": the default paths) a
fresh child process builds the project, runs phases 1-4 one after the other on the bundled models and reports
per-phase wall times, local-teacher items per second and output tokens per second, the peak resident memory of
the process (ru_maxrss) and the phase-4 metrics (to show the results keep their shape). The children run one
after the other with the same data, each with an empty prompt-state cache folder, so the modes are measured
side by side in one run. `ratios` has the shape of bench.student's (`name`, `ratio`, `target`, `met`): a ratio
is new/old of a time, met when at most the target (phase-1 time per teacher item <= 1/3, whole run on the demo
data <= 1/2). By default the demo data is the whole bundled CSV (what `pld demo` runs on: 63 phase-1 items), and
the shared dataset a sample of as many rows (the scale of issue 15's own measurement, a 90-row CSV): on a 20-row
sample phase 1 is 12 requests, and its time is set less by throughput than by one item's rejected replies, whose
retries run one after the other at the end (a figure then moves by 10% between runs).
What the app does once per machine and keeps in its cache (model checksums, the batched teacher's F16 copy) is
done before the runs and carried into them; the F16 copy's time is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SHARED_DIR = Path("/work/shared/data")
MODES = ("old", "new")


# ---------------------------------------------------------------------------
# Child: one whole run in this process
# ---------------------------------------------------------------------------
class _CountingTeacher:
    """Wraps the real teacher and adds up calls, tokens and time spent in generate() (thread-safe)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self._lock = threading.Lock()
        self.calls = 0
        self.output_tokens = 0
        self.prompt_tokens = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def generate(self, request: Any) -> Any:
        reply = self._inner.generate(request)
        with self._lock:
            self.calls += 1
            self.output_tokens += reply.usage.output_tokens
            self.prompt_tokens += reply.usage.prompt_tokens
        return reply

    def snapshot(self) -> tuple[int, int, int]:
        with self._lock:
            return self.calls, self.prompt_tokens, self.output_tokens


def _scalars(value: Any, depth: int = 0) -> Any:
    """JSON-friendly copy of a phase report: dataclasses and dicts down to numbers and short strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict) and depth < 4:
        return {str(k): _scalars(v, depth + 1) for k, v in value.items()
                if not isinstance(v, (list, tuple)) or len(v) <= 20}
    if isinstance(value, (list, tuple)) and depth < 4:
        return [_scalars(v, depth + 1) for v in value[:20]]
    if isinstance(value, (int, float, bool)) or value is None:
        return value
    return str(value)[:200]


def run_child(csv_path: str, text_column: str, task: str, meanings: dict[str, str], loop_iterations: int,
              max_test: int | None, teacher_gguf: str | None = None,
              student_gguf: str | None = None) -> dict[str, Any]:
    from pld_desktop.backends.factory import DefaultBackends
    from pld_desktop.core.dataset import ColumnMapping, SplitSettings, load_dataset
    from pld_desktop.core.pipeline import run_pipeline
    from pld_desktop.core.progress import ProgressBase
    from pld_desktop.core.project import Project
    from pld_desktop.core.settings import RunSettings, save_settings

    class Quiet(ProgressBase):
        def begin(self, stage: str, total: int) -> None:
            pass

        def report(self, done: int, total: int, message: str = "") -> None:
            pass

        def log(self, message: str, level: str = "info") -> None:
            pass

    class Provider(DefaultBackends):
        def __init__(self) -> None:
            super().__init__()
            self.counting: _CountingTeacher | None = None

        def generation(self) -> dict[str, float]:
            stats = getattr(self.counting, "generation_stats", None) if self.counting is not None else None
            return dataclasses.asdict(stats) if stats is not None else {}

        def teacher(self, settings: RunSettings) -> Any:
            if self.counting is None:
                self.counting = _CountingTeacher(super().teacher(settings))
            return self.counting

    work = Path(tempfile.mkdtemp(prefix="pld-bench-pipeline-"))
    try:
        dataset = load_dataset(csv_path, ColumnMapping((text_column,), "label", id_column="id"), SplitSettings())
        settings = RunSettings(task=task, label_meanings=dict(meanings), teacher="local",
                               teacher_gguf=teacher_gguf, student_gguf=student_gguf,
                               loop_max_iterations=loop_iterations, max_test_examples=max_test)
        # The model files named on bench's command line are accepted, as `pld run --teacher-gguf FILE` accepts
        # them, in the run's own trust store (PLD_CONFIG_DIR, set by the parent): the user's is not touched.
        from pld_desktop.backends.trust import TrustStore, settings_in_use
        TrustStore().trust(settings_in_use(settings))

        def fill(project: Project) -> None:
            project.store_dataset(dataset, Path(csv_path).name)
            save_settings(project, settings)

        path = work / "bench.pld"
        Project.build(path, fill)
        provider = Provider()
        phases: dict[str, Any] = {}
        total_started = time.perf_counter()
        try:
            with Project.open(path) as project:
                for phase in (1, 2, 3, 4):
                    before = provider.counting.snapshot() if provider.counting else (0, 0, 0)
                    generation_before = provider.generation()
                    started = time.perf_counter()
                    report = run_pipeline(project, settings, provider, Quiet(), phases=[phase])
                    seconds = time.perf_counter() - started
                    after = provider.counting.snapshot() if provider.counting else (0, 0, 0)
                    calls, prompt_tokens, output_tokens = (a - b for a, b in zip(after, before))
                    phases[str(phase)] = {
                        "seconds": seconds, "status": report.status, "teacher_calls": calls,
                        "teacher_prompt_tokens": prompt_tokens, "teacher_output_tokens": output_tokens,
                        "teacher_items_per_s": calls / seconds if seconds > 0 and calls else None,
                        "teacher_tokens_per_s": output_tokens / seconds if seconds > 0 and output_tokens else None,
                        "report": _scalars(report.phases.get(phase)),
                        # the batched teacher's counters for this phase (decode vs sampling seconds, decodes)
                        "generation": {k: round(v - generation_before.get(k, 0), 3)
                                       for k, v in provider.generation().items()},
                    }
                total = time.perf_counter() - total_started
                evaluation = phases["4"]["report"] or {}
                decode_setup = getattr(provider.counting, "decode_setup", {}) if provider.counting else {}
        finally:
            provider.close()
        return {"rows": len(dataset.rows), "total_s": total, "phases": phases, "teacher_decode": decode_setup,
                "metrics": evaluation.get("results") if isinstance(evaluation, dict) else None,
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------
# Parent: samples, children, ratios
# ---------------------------------------------------------------------------
def stratified_csv(source: Path, text_column: str, rows: int, seed: int, out: Path) -> Path:
    """The first `rows` rows of a label-stratified shuffle of `source` (train rows of a shared CSV only)."""
    import pandas as pd
    df = pd.read_csv(source)
    if "split" in df.columns:
        df = df[df["split"] == "train"]
    df = df[["id", text_column, "label"]].dropna()
    shuffled = df.sample(frac=1.0, random_state=seed)
    # Round-robin over the labels so every label gets its share of a small sample.
    groups = [g for _, g in shuffled.groupby("label", sort=True)]
    picked: list[Any] = []
    i = 0
    while len(picked) < rows and any(i < len(g) for g in groups):
        picked.extend(g.iloc[i] for g in groups if i < len(g))
        i += 1
    pd.DataFrame(picked[:rows]).to_csv(out, index=False)
    return out


def datasets(args: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    from pld_desktop.resources import DEMO_MEANINGS, DEMO_TASK, demo_csv
    found = [{"name": f"demo-{args.rows}", "csv": str(stratified_csv(demo_csv(), "message", args.rows, args.seed,
                                                                       folder / "demo.csv")),
              "text_column": "message", "task": DEMO_TASK, "meanings": DEMO_MEANINGS}] if args.rows > 0 else []
    if args.shared and args.shared_rows > 0:
        source = SHARED_DIR / f"{args.shared}.csv"
        if source.is_file():
            tasks = {"sst2": "Classify the sentiment of the movie review sentence.",
                     "trec": "Classify what kind of answer the question asks for.",
                     "tweet_eval_emotion": "Classify the emotion the tweet expresses."}
            found.append({"name": f"{args.shared}-{args.shared_rows}",
                          "csv": str(stratified_csv(source, "text", args.shared_rows, args.seed,
                                                    folder / f"{args.shared}.csv")),
                          "text_column": "text", "task": tasks.get(args.shared, "Classify the text."),
                          "meanings": {}})
        else:
            print(f"note: {source} not found; only the demo data is measured", file=sys.stderr)
    return found


def one_time_work(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """What the app does once per machine and teacher file and then keeps in its cache, done here once for all
    runs and timed: the batched teacher's F16 copy (unpacked_weights.py), if it makes one. Like the model
    checksums, it is carried into every new-path run's cache, so the runs compare per-run work."""
    from pld_desktop.backends.bundled import bundled_local_teacher_path
    from pld_desktop.backends.gguf_file import file_sha256
    from pld_desktop.backends.unpacked_weights import batched_weights
    shared = folder / "one-time-cache"
    before = os.environ.get("PLD_CACHE_DIR")
    os.environ["PLD_CACHE_DIR"] = str(shared)
    try:
        source = Path(args.teacher_gguf) if args.teacher_gguf else bundled_local_teacher_path()
        sha = file_sha256(source)
        started = time.perf_counter()
        path, reason = batched_weights(source, sha)
        seconds = time.perf_counter() - started
    finally:
        if before is None:
            os.environ.pop("PLD_CACHE_DIR", None)
        else:
            os.environ["PLD_CACHE_DIR"] = before
    return {"teacher_f16_copy_s": seconds if path != source else None, "teacher_weights": reason or "as in the file",
            "cache": str(shared / "unpacked-weights")}


def run_mode(dataset: dict[str, Any], mode: str, args: argparse.Namespace, folder: Path,
             one_time: dict[str, Any] | None = None) -> dict[str, Any]:
    cache = folder / f"cache-{dataset['name']}-{mode}"
    cache.mkdir()
    from pld_desktop.backends.cache_dir import cache_dir
    hashes = cache_dir() / "sha256-cache.json"  # keep the model checksums; the prompt states start empty
    if hashes.is_file():
        shutil.copy(hashes, cache / hashes.name)
    copies = Path(one_time["cache"]) if one_time else None
    if mode == "new" and copies is not None and copies.is_dir():
        shutil.copytree(copies, cache / copies.name, copy_function=_link_or_copy)
    env = dict(os.environ, PLD_CACHE_DIR=str(cache), PLD_CONFIG_DIR=str(cache / "config"),
               PLD_FAST_PATHS="1" if mode == "new" else "0",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    spec = json.dumps({k: dataset[k] for k in ("csv", "text_column", "task", "meanings")}
                      | {"loop_iterations": args.loop_iterations, "max_test": args.max_test,
                         "teacher_gguf": args.teacher_gguf, "student_gguf": args.student_gguf})
    proc = subprocess.run([sys.executable, "-m", "bench.pipeline", "--child", spec], env=env, text=True,
                          capture_output=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"the {mode} run on {dataset['name']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def ratio_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """new/old ratios. Issue 15's targets: phase-1 time per teacher item <= 1/3 on every dataset, and the whole
    run <= 1/2 on the demo data (`pld demo`'s CSV); a shared dataset's whole-run ratio is reported without a
    target (`target` and `met` None)."""
    rows = []
    for name, by_mode in results.items():
        old, new = by_mode.get("old"), by_mode.get("new")
        if not old or not new:
            continue
        p_old, p_new = old["phases"]["1"], new["phases"]["1"]
        if p_old["teacher_calls"] and p_new["teacher_calls"]:
            per_old = p_old["seconds"] / p_old["teacher_calls"]
            per_new = p_new["seconds"] / p_new["teacher_calls"]
            rows.append({"name": f"{name}: phase-1 seconds per teacher item, new/old", "value_s": per_new,
                         "baseline_s": per_old, "ratio": per_new / per_old, "target": 1 / 3,
                         "met": per_new / per_old <= 1 / 3})
        whole = new["total_s"] / old["total_s"]
        target = 0.5 if name.startswith("demo-") else None
        rows.append({"name": f"{name}: whole run, new/old", "value_s": new["total_s"], "baseline_s": old["total_s"],
                     "ratio": whole, "target": target, "met": None if target is None else whole <= target})
    return rows


def print_table(result: dict[str, Any]) -> None:
    args = result["args"]
    print(f"teacher: {args.get('teacher_gguf') or 'bundled SmolLM2-135M-Instruct'}; "
          f"student: {args.get('student_gguf') or 'bundled Gemma 3 270M'}; {result['cpu_count']} cores")
    copy_s = (result.get("one_time") or {}).get("teacher_f16_copy_s")
    if copy_s is not None:
        print(f"once per machine, before the runs: the batched teacher's F16 copy, {copy_s:.1f} s")
    for name, by_mode in result["runs"].items():
        decode = (by_mode.get("new") or {}).get("teacher_decode") or {}
        print(f"\n{name}" + (f"  (new paths: {decode.get('parallel')} sequences, {decode.get('threads')} threads, "
                              f"weights: {decode.get('weights')})" if decode else ""))
        print(f"  {'mode':5} {'total s':>8} {'p1 s':>7} {'p2 s':>7} {'p3 s':>7} {'p4 s':>7} {'p1 items/s':>10} "
              f"{'p1 tok/s':>9} {'peak MB':>8}")
        for mode, r in by_mode.items():
            ph = r["phases"]
            print(f"  {mode:5} {r['total_s']:8.1f} " + " ".join(f"{ph[p]['seconds']:7.1f}" for p in "1234")
                  + f" {ph['1']['teacher_items_per_s'] or 0:10.3f} {ph['1']['teacher_tokens_per_s'] or 0:9.1f}"
                  + f" {r['peak_rss_mb']:8.0f}")
    print()
    for row in result["ratios"]:
        if row["target"] is None:
            print(f"{row['name']:60} {row['ratio']:6.3f} (no target: the whole-run target is on the demo data)")
        else:
            print(f"{row['name']:60} {row['ratio']:6.3f} (target <= {row['target']:.3f}) "
                  f"{'met' if row['met'] else 'NOT met'}")


def _gguf_file(value: str) -> str:
    path = Path(value).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {value}")
    return str(path.resolve())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=105,
                        help="demo rows sampled (default 105: the whole demo CSV, the data of `pld demo`; 0: none)")
    parser.add_argument("--shared", default="sst2", help="shared dataset in /work/shared/data ('' for none)")
    parser.add_argument("--shared-rows", type=int, default=105,
                        help="rows sampled from it (default 105, as many as the demo: 63 phase-1 items)")
    parser.add_argument("--loop-iterations", type=int, default=1, help="closed-loop iterations (default 1)")
    parser.add_argument("--max-test", type=int, default=None, help="cap on phase-4 test examples")
    parser.add_argument("--modes", default="old,new", help="comma-separated: old, new (default both)")
    parser.add_argument("--teacher-gguf", default=None, type=_gguf_file,
                        help="the local teacher's GGUF file (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--student-gguf", default=None, type=_gguf_file,
                        help="the student's GGUF file (default: the bundled Gemma 3 270M)")
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--json", default=None, help="write every figure to this JSON file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(run_child(spec["csv"], spec["text_column"], spec["task"], spec["meanings"],
                                   spec["loop_iterations"], spec["max_test"], spec.get("teacher_gguf"),
                                   spec.get("student_gguf"))))
        return 0
    modes = [m for m in args.modes.split(",") if m in MODES]
    folder = Path(tempfile.mkdtemp(prefix="pld-bench-pipeline-"))
    try:
        result: dict[str, Any] = {"args": vars(args), "cpu_count": os.cpu_count(), "runs": {}}
        result["one_time"] = one_time = one_time_work(args, folder) if "new" in modes else {}
        for dataset in datasets(args, folder):
            for mode in modes:
                print(f"running {dataset['name']} ({mode} paths) ...", file=sys.stderr, flush=True)
                result["runs"].setdefault(dataset["name"], {})[mode] = run_mode(dataset, mode, args, folder,
                                                                                 one_time)
                if args.json:  # after every run, so a long benchmark stopped early keeps what it measured
                    Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
        result["ratios"] = ratio_rows(result["runs"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
