"""Scale benchmark for issue 4: Phase 2 (embed + cluster) on 10,000 micro-rules and CSV import of 100,000 rows.

    python -m bench.scale [--rules 10000] [--rows 100000] [--json out.json] [--keep DIR]

Each part runs in a fresh child process (so its peak memory is its own) and reports wall time and memory:
peak RSS of the process (getrusage), the RSS before the part started, and the peak seen by a 10 ms sampling
thread during the part.
  phase2  micro-rules generated from templates over the texts of ../shared/data (distinct strings, each tied to
          a real example and its label), stored in a temporary project; then the embed + cluster part of
          core/phases/synthesis.py (embed_cached, then _cluster_and_store: per-label DBSCAN with its fallbacks and
          the 2-D map) with the real bundled embedder. The teacher merge is not part of it.
  import  a 100,000-row CSV built from the same texts; core/dataset.load_dataset, then Project.build with
          store_dataset.
Targets (issue 4, 2 cores): Phase 2 on 10k rules <= 60 s; import of 100k rows <= 5 s.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import random
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SOURCES = ("sst2.csv", "trec.csv", "tweet_eval_emotion.csv")
TARGETS = {"phase2": 60.0, "import": 5.0}

_STOP = set([
    "a", "an", "the", "and", "or", "but", "of", "to", "in", "on", "at", "for", "with", "by", "from", "is", "are",
    "was", "were", "be", "been", "it", "its", "this", "that", "these", "those", "i", "you", "he", "she", "we",
    "they", "me", "my", "your", "his", "her", "our", "their", "what", "which", "who", "whom", "how", "why", "when",
    "where", "do", "does", "did", "not", "no", "so", "as", "if", "than", "then", "there", "here", "can", "could",
    "would", "should", "will", "just", "about", "into", "over", "out", "up"
])


def rss_bytes() -> int:
    """Current resident set size (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # kB on Linux


class MemorySampler:
    """Samples RSS every `interval` seconds in a thread; `peak` is the highest value seen."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())


def measured(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    before = rss_bytes()
    started = time.perf_counter()
    with MemorySampler() as sampler:
        extra = fn()
    return {"seconds": time.perf_counter() - started, "rss_before_mb": before / 2**20,
            "sampled_peak_rss_mb": sampler.peak / 2**20, "process_peak_rss_mb": peak_rss_bytes() / 2**20, **extra}


# ---------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------
def source_rows() -> list[tuple[str, str, str]]:
    """(dataset, text, label) of every row of the shared datasets."""
    rows = []
    for name in SOURCES:
        path = DATA_DIR / name
        if not path.is_file():
            raise SystemExit(f"Missing shared dataset {path}; the benchmark needs ../shared/data.")
        with path.open(encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                if row.get("text", "").strip() and row.get("label", "").strip():
                    rows.append((Path(name).stem, row["text"].strip(), row["label"].strip()))
    return rows


def content_words(text: str) -> list[str]:
    words = [w.lower() for w in re.findall(r"[A-Za-z][A-Za-z'-]{2,}", text)]
    return [w for w in words if w not in _STOP]


_TEMPLATES = [
    "If the text mentions {w1}, answer {label}.",
    "If the text talks about {w1} and {w2}, answer {label}.",
    "If the writer describes {w1} in a way that suggests {label}, answer {label}.",
    "If the text uses the word \"{w1}\" together with \"{w2}\", answer {label}.",
    "If the message is about {w1} or {w2}, answer {label}.",
    "If the text starts with \"{head}\", answer {label}.",
    "If the sentence refers to {w1} as its main topic, answer {label}.",
    "If the text contains the phrase \"{bigram}\", answer {label}.",
    "If the question or statement concerns {w1}, especially {w2}, answer {label}.",
    "If the tone around {w1} matches {label}, answer {label}.",
]


def micro_rule_texts(examples: Sequence[tuple[str, str]], seed: int = 0) -> list[str]:
    """One distinct rule per (text, label), from templates filled with the text's own words (deterministic)."""
    rng = random.Random(seed)
    seen: set[str] = set()
    rules = []
    for i, (text, label) in enumerate(examples):
        words = content_words(text) or ["this topic"]
        rule = ""
        for attempt in range(30):
            w1, w2 = rng.choice(words), rng.choice(words)
            tokens = text.split()
            start = rng.randrange(max(1, len(tokens) - 1))
            fill = {"w1": w1, "w2": w2, "label": label, "head": " ".join(tokens[:3]),
                    "bigram": " ".join(tokens[start:start + 2])}
            rule = _TEMPLATES[(i + attempt) % len(_TEMPLATES)].format(**fill)
            if rule not in seen:
                break
        else:
            rule = f"{rule} (case {i})"
        seen.add(rule)
        rules.append(rule)
    return rules


def write_csv(path: Path, rows: Iterator[tuple[str, str, str]]) -> int:
    n = 0
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "label"])
        for row in rows:
            writer.writerow(row)
            n += 1
    return n


# ---------------------------------------------------------------------------
# Parts (each run in its own process)
# ---------------------------------------------------------------------------
def part_phase2(workdir: Path, n_rules: int) -> dict[str, Any]:
    from pld_desktop.backends.embedder import SentenceTransformerEmbedder
    from pld_desktop.core.dataset import ColumnMapping, SplitSettings, load_dataset
    from pld_desktop.core.phases.synthesis import SynthesisReport, _cluster_and_store, embed_cached
    from pld_desktop.core.progress import SilentProgress
    from pld_desktop.core.project import Project
    from pld_desktop.core.settings import RunSettings

    pool = source_rows()
    random.Random(1).shuffle(pool)
    chosen = pool[:n_rules]
    if len(chosen) < n_rules:
        raise SystemExit(f"Only {len(chosen)} source rows for {n_rules} rules.")
    csv_path = workdir / "rules-source.csv"
    write_csv(csv_path, ((f"r{i}", text, f"{ds}:{label}") for i, (ds, text, label) in enumerate(chosen)))
    dataset = load_dataset(csv_path, ColumnMapping(("text",), "label", id_column="id"), SplitSettings())
    project = Project.create(workdir / "phase2.pld")
    project.store_dataset(dataset, csv_path.name)
    examples = project.examples()
    rules = micro_rule_texts([(e.text, e.label) for e in examples])
    call_id = project.record_teacher_call(kind="extract", request_hash="bench-scale", model="bench",
                                          request_json="{}", status="ok")
    # one transaction: the set-up is not what is measured
    project.add_micro_rules([(e.id, "", rule, e.label, call_id) for e, rule in zip(examples, rules)])
    micro = project.micro_rules()
    assert len(micro) == n_rules and len({m["rule"] for m in micro}) == n_rules
    embedder = SentenceTransformerEmbedder()
    settings = RunSettings()
    timings: dict[str, float] = {}

    def run() -> dict[str, Any]:
        t0 = time.perf_counter()
        embedder.embed(["warm-up"])  # model load (torch import included), timed apart
        t1 = time.perf_counter()
        vectors = embed_cached(project, embedder, [m["rule"] for m in micro], SilentProgress())
        t2 = time.perf_counter()
        report = SynthesisReport()
        key = _cluster_and_store(project, micro, vectors, embedder, settings, report)
        t3 = time.perf_counter()
        timings.update(load_embedder_s=t1 - t0, embed_s=t2 - t1, cluster_and_store_s=t3 - t2)
        per_label = project.clustering_report(key)["labels"]
        clusters = project.clusters(key)
        return {"clusters": sum(1 for c in clusters if not c["is_noise"]), "labels": len(per_label),
                "methods": {label: info["method"] for label, info in per_label.items()}}

    result = measured(run)
    result.update(timings, rules=n_rules, embed_plus_cluster_s=timings["embed_s"] + timings["cluster_and_store_s"],
                  examples_rules=rules[:5])
    project.close()
    return result


def part_import(workdir: Path, n_rows: int) -> dict[str, Any]:
    from pld_desktop.core.dataset import ColumnMapping, SplitSettings, load_dataset
    from pld_desktop.core.project import Project

    pool = source_rows()
    csv_path = workdir / "import-100k.csv"

    def rows() -> Iterator[tuple[str, str, str]]:
        for i in range(n_rows):
            ds, text, label = pool[i % len(pool)]
            yield (f"row{i:06d}", text if i < len(pool) else f"{text} [{i // len(pool)}]", f"{ds}:{label}")

    write_csv(csv_path, rows())
    size_mb = csv_path.stat().st_size / 2**20
    timings: dict[str, float] = {}

    def run() -> dict[str, Any]:
        t0 = time.perf_counter()
        dataset = load_dataset(csv_path, ColumnMapping(("text",), "label", id_column="id"), SplitSettings())
        t1 = time.perf_counter()
        Project.build(workdir / "import.pld", lambda project: project.store_dataset(dataset, csv_path.name))
        t2 = time.perf_counter()
        timings.update(load_dataset_s=t1 - t0, build_project_s=t2 - t1)
        return {"splits": dataset.split_counts()}

    result = measured(run)
    with Project.open(workdir / "import.pld", read_only=True) as project:
        stored = sum(project.split_counts().values())
    if stored != n_rows:
        raise SystemExit(f"Import stored {stored} rows, expected {n_rows}.")
    result.update(timings, rows=n_rows, csv_mb=size_mb)
    return result


PARTS = {"phase2": part_phase2, "import": part_import}


def run_child(part: str, size: int, workdir: Path) -> dict[str, Any]:
    out = workdir / f"{part}.json"
    cmd = [sys.executable, "-m", "bench.scale", "--child", part, "--size", str(size), "--workdir", str(workdir),
           "--json", str(out)]
    proc = subprocess.run(cmd, cwd=Path(__file__).resolve().parents[1], stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise SystemExit(f"The {part} part failed (exit code {proc.returncode}).")
    return json.loads(out.read_text(encoding="utf-8"))


def print_table(result: dict[str, Any]) -> None:
    print(f"{'part':34} {'seconds':>8} {'target':>8}  met  {'peak RSS MB':>11} {'RSS before':>10}")
    for name, part in result["parts"].items():
        seconds = part["embed_plus_cluster_s"] if name == "phase2" else part["seconds"]
        label = (f"Phase 2 embed+cluster, {part['rules']:,} rules" if name == "phase2"
                 else f"CSV import, {part['rows']:,} rows")
        met = "yes" if seconds <= TARGETS[name] else "NO"
        print(f"{label:34} {seconds:8.2f} {TARGETS[name]:>7.0f}s  {met:>3}  {part['sampled_peak_rss_mb']:11.0f} "
              f"{part['rss_before_mb']:10.0f}")
    p2 = result["parts"].get("phase2")
    if p2:
        print(f"phase 2 detail: embedder load {p2['load_embedder_s']:.1f} s (not counted), "
              f"embed {p2['embed_s']:.1f} s, "
              f"cluster+store {p2['cluster_and_store_s']:.1f} s; {p2['clusters']} clusters over {p2['labels']} labels")
    imp = result["parts"].get("import")
    if imp:
        print(f"import detail: load_dataset {imp['load_dataset_s']:.2f} s, "
              f"Project.build {imp['build_project_s']:.2f} s, "
              f"CSV {imp['csv_mb']:.1f} MB")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rules", type=int, default=10_000, help="micro-rules for Phase 2 (default 10000)")
    parser.add_argument("--rows", type=int, default=100_000, help="CSV rows to import (default 100000)")
    parser.add_argument("--only", choices=sorted(PARTS), default=None, help="run one part only")
    parser.add_argument("--json", default=None, help="write every figure to this JSON file")
    parser.add_argument("--keep", default=None, help="work in this folder and keep its files")
    parser.add_argument("--child", choices=sorted(PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = PARTS[args.child](Path(args.workdir), args.size)
        Path(args.json).write_text(json.dumps(result, indent=1), encoding="utf-8")
        return 0
    if args.rules < 10 or args.rows < 10:
        parser.error("--rules and --rows must be at least 10")
    with tempfile.TemporaryDirectory(prefix="pld-bench-scale-") as tmp:
        workdir = Path(args.keep) if args.keep else Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        result: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(),
                                  "cpus": os.cpu_count(), "targets_s": TARGETS, "parts": {}}
        sizes = {"phase2": args.rules, "import": args.rows}
        for part in ([args.only] if args.only else ["import", "phase2"]):
            result["parts"][part] = run_child(part, sizes[part], workdir)
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1), encoding="utf-8")
        print(f"raw figures written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
