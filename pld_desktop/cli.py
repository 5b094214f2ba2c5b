"""The `pld` command: drive the same engine as the desktop app from a terminal."""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
import signal
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .core.progress import ProgressBase

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_QUOTA, EXIT_CANCELLED = 0, 1, 2, 4, 130


class ConsoleProgress(ProgressBase):
    """Progress bars with ETA on stderr (tqdm); the first Ctrl-C asks the run to stop after the items in flight."""

    def __init__(self, quiet: bool = False) -> None:
        super().__init__()
        self.quiet = quiet
        self._bar: Any = None

    def on_begin(self, stage: str, total: int) -> None:
        if self.quiet:
            return
        from tqdm import tqdm
        if self._bar is not None:
            self._bar.close()
        self._bar = tqdm(total=total, desc=stage, unit="item", file=sys.stderr, dynamic_ncols=True,
                         bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}]")

    def on_report(self, done: int, total: int, message: str) -> None:
        if self._bar is not None:
            self._bar.total = total
            self._bar.n = done
            self._bar.refresh()

    def on_log(self, message: str, level: str) -> None:
        if self.quiet and level == "info":
            return
        prefix = "" if level == "info" else f"{level}: "
        if self._bar is not None:
            self._bar.write(prefix + message, file=sys.stderr)
        else:
            print(prefix + message, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _install_sigint(progress: ConsoleProgress) -> None:
    def handler(signum: int, frame: Any) -> None:
        if progress.cancelled():
            raise KeyboardInterrupt
        progress.cancel()
        print("\nStopping after the items in flight (press Ctrl-C again to stop at once)...", file=sys.stderr)
    signal.signal(signal.SIGINT, handler)


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------
def _parse_ratios(text: str) -> tuple[float, float, float]:
    usage = f"--ratios takes three numbers, none negative, such as 60/20/20 or 0.6,0.2,0.2 (got '{text}')"
    try:
        parts = [float(p) for p in text.replace("/", ",").split(",")]
    except ValueError:
        raise ValueError(usage) from None
    if len(parts) != 3 or any(not (p >= 0 and p != float("inf")) for p in parts) or sum(parts) <= 0:
        raise ValueError(usage)
    total = sum(parts)
    return (parts[0] / total, parts[1] / total, parts[2] / total)


def cmd_init(args: argparse.Namespace) -> int:
    from .core.dataset import ColumnMapping, SplitSettings, load_dataset
    from .core.new_project import create_project

    train, dev, test = _parse_ratios(args.ratios)
    mapping = ColumnMapping(text_columns=tuple(args.text), label_column=args.label,
                            template=args.template.replace("\\n", "\n") if args.template else None,
                            id_column=args.id, split_column=args.split_column, group_column=args.group,
                            keep_source_split=args.keep_split, merge_labels=args.merge_labels)
    dataset = load_dataset(args.csv, mapping, SplitSettings(train, dev, test, args.seed))
    for w in dataset.warnings:
        print(f"warning: {w.message}", file=sys.stderr)
    create_project(args.project, dataset, source_name=Path(args.csv).name, task=args.task, overwrite=args.force)
    counts = {s: sum(1 for r in dataset.rows if r.split == s) for s in ("train", "dev", "test")}
    print(f"Created {args.project}: {len(dataset.rows)} rows, labels {', '.join(dataset.labels)}; "
          f"train {counts['train']} / dev {counts['dev']} / test {counts['test']} (test is locked).")
    return EXIT_OK


def _apply_run_overrides(settings: Any, args: argparse.Namespace) -> None:
    """Copy the run options given on the command line into `settings` (saved with the run, so a rerun without
    them resumes the same way); a server teacher or student chosen here must have an address."""
    pairs = {"teacher": "teacher", "teacher_model": "teacher_model", "teacher_gguf": "teacher_gguf",
             "student": "student_gguf", "base_url": "teacher_base_url", "concurrency": "teacher_concurrency",
             "teacher_openai_base_url": "teacher_openai_base_url", "teacher_openai_model": "teacher_openai_model",
             "student_backend": "student_backend", "student_base_url": "student_base_url",
             "student_model": "student_model", "student_concurrency": "student_concurrency",
             "student_prompt_format": "student_prompt_format", "student_top_logprobs": "student_top_logprobs",
             "max_iterations": "loop_max_iterations", "max_test": "max_test_examples", "n_ctx": "student_n_ctx",
             "task": "task", "sample_size": "loop_sample_size"}
    for arg, field in pairs.items():
        value = getattr(args, arg, None)
        if value is not None:
            setattr(settings, field, value)
    if getattr(args, "batch", None):
        settings.teacher_batch = True
        if settings.teacher != "gemini":
            raise ValueError("--batch needs the Gemini teacher (--teacher gemini).")
    if getattr(args, "student", None) and getattr(args, "student_backend", None) is None:
        settings.student_backend = "llama"  # a GGUF named on the command line is meant to run in this process
    # Checked here, before any model loads or the run is recorded, only for what this command line chose.
    if getattr(args, "teacher", None) == "openai":
        if not settings.teacher_openai_base_url:
            raise ValueError("--teacher openai needs the server's address: --teacher-base-url "
                             "(e.g. http://127.0.0.1:11434/v1 for Ollama, http://127.0.0.1:8000/v1 for vLLM).")
        if not (settings.teacher_openai_model or "").strip():
            raise ValueError("--teacher openai needs the served model's name: --teacher-openai-model "
                             "(e.g. qwen2.5:7b-instruct on Ollama).")
        _check_server_url("--teacher-base-url", settings.teacher_openai_base_url)
    if getattr(args, "student_backend", None) == "openai":
        if not settings.student_base_url:
            raise ValueError("--student-backend openai needs the server's address: --student-base-url "
                             "(e.g. http://127.0.0.1:8080/v1 for llama.cpp's server).")
        _check_server_url("--student-base-url", settings.student_base_url)


# The run options that name an endpoint or a model file: typing one on this machine accepts it.
_TRUSTED_OPTIONS = {"base_url": "teacher_base_url", "teacher_openai_base_url": "teacher_openai_base_url",
                    "teacher_gguf": "teacher_gguf", "student": "student_gguf", "student_base_url": "student_base_url"}


def _accept_trust(trust: Any, settings: Any, args: argparse.Namespace, phases: Sequence[int]) -> list[Any]:
    """Record as accepted what this command line names (all in use with --trust-project-settings); return what
    is still not accepted."""
    from .backends.trust import settings_in_use
    typed = {field for option, field in _TRUSTED_OPTIONS.items() if getattr(args, option, None)}
    everything = bool(getattr(args, "trust_project_settings", False))
    trust.trust(i for i in settings_in_use(settings, phases) if everything or i.field in typed)
    return list(trust.untrusted(settings, phases))


def _check_server_url(option: str, url: str) -> None:
    from .backends.openai_student import normalise_base_url
    try:
        normalise_base_url(url)
    except ValueError as exc:
        raise ValueError(f"{option}: {exc}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _run(project_path: str, args: argparse.Namespace, phases: Sequence[int], command: str,
         settings_override: Any = None) -> int:
    from .backends.factory import DefaultBackends
    from .backends.trust import TrustStore, UntrustedSettingError
    from .core.pipeline import PHASE_NAMES, estimate_teacher_run, run_pipeline
    from .core.project import Project
    from .core.settings import load_settings

    project = Project.open(project_path)
    progress = ConsoleProgress(quiet=getattr(args, "quiet", False))
    trust = TrustStore()
    backends = DefaultBackends(trust=trust)
    try:
        if not project.has_dataset():
            print("error: the project has no dataset; create it with 'pld init'.", file=sys.stderr)
            return EXIT_INPUT
        settings = settings_override or load_settings(project)
        _apply_run_overrides(settings, args)
        # Before anything is sent anywhere: endpoints and model paths from the project file need this machine's
        # acceptance; an option typed on this command line (or --trust-project-settings) is that acceptance.
        untrusted = _accept_trust(trust, settings, args, phases)
        if untrusted:
            print(f"error: {UntrustedSettingError(untrusted)}", file=sys.stderr)
            return EXIT_INPUT
        if settings.teacher == "gemini" and (1 in phases or 2 in phases or 3 in phases):
            print(estimate_teacher_run(project, settings, phases), file=sys.stderr)
            if sys.stdin.isatty() and not getattr(args, "yes", False):
                if input("Start the paid teacher run? [y/N] ").strip().lower() not in ("y", "yes"):
                    return EXIT_CANCELLED
        _install_sigint(progress)
        started = time.monotonic()
        report = run_pipeline(project, settings, backends, progress, phases=phases, command=command)
        progress.close()
        if report.status == "cancelled":
            print(report.message, file=sys.stderr)
            return EXIT_CANCELLED
        if report.status == "quota_exhausted":
            print(report.message, file=sys.stderr)
            return EXIT_QUOTA
        print(f"Finished phases {', '.join(PHASE_NAMES[p] for p in sorted(phases))} "
              f"in {time.monotonic() - started:.0f} s.", file=sys.stderr)
        _print_status(project)
        return EXIT_OK
    finally:
        progress.close()
        backends.close()
        project.close()


def cmd_run(args: argparse.Namespace) -> int:
    phases = args.phase or [1, 2, 3, 4]
    return _run(args.project, args, phases, "run")


def cmd_eval(args: argparse.Namespace) -> int:
    if args.rule_set is not None:
        from .core.project import Project
        with Project.open(args.project) as project:
            project.rule_set(args.rule_set)  # clear error if it does not exist
            project.set_setting("chosen_rule_set_id", args.rule_set)
    return _run(args.project, args, [4], "eval")


def cmd_export(args: argparse.Namespace) -> int:
    from .core.export import export_rule_set
    from .core.project import Project
    from .core.results_csv import export_results_csv
    with Project.open(args.project) as project:
        out = Path(args.out) if args.out else Path(args.project).resolve().parent / "exports"
        prompt_formats = tuple(f for f in args.format if f != "csv")
        paths = export_rule_set(project, out, prompt_formats, rule_set_id=args.rule_set) if prompt_formats else []
        if "csv" in args.format:  # per-example test results; spreadsheet formulas neutralised
            out.mkdir(parents=True, exist_ok=True)
            paths.append(export_results_csv(project, out / f"{Path(args.project).stem}-results.csv"))
    for p in paths:
        print(p)
    return EXIT_OK


def _status_dict(project: Any) -> dict[str, Any]:
    from .core.pipeline import PHASE_NAMES
    info = project.dataset_info() or {}
    counts = {r["split"]: r["n"] for r in project.query("SELECT split, COUNT(*) AS n FROM examples GROUP BY split")}
    phases = project.phase_states()
    evals = {}
    last = project.get_setting("last_evaluation") or {}
    for kind in ("pld", "zero_shot", "few_shot"):
        if kind in last:
            m = project.evaluation(last[kind])["metrics"] or {}
            evals[kind] = {"macro_f1": m.get("macro_f1"), "accuracy": m.get("accuracy"),
                           "latency_p50_s": m.get("latency_p50_s")}
    return {
        "project": str(project.path), "dataset": info.get("source_name"), "rows": info.get("n_rows"),
        "labels": info.get("labels"), "splits": counts,
        "phases": {PHASE_NAMES[p]: {"state": phases[p]["state"], "done": phases[p]["done"],
                                    "total": phases[p]["total"], "message": phases[p]["message"]}
                   for p in sorted(phases)},
        "micro_rules": len(project.micro_rule_example_ids()),
        "failed_items": project.query("SELECT COUNT(*) AS n FROM failed_items")[0]["n"],
        "rule_sets": len(project.rule_sets()),
        "chosen_rule_set": project.get_setting("chosen_rule_set_id"),
        "teacher": project.teacher_totals(),
        "evaluation": evals,
    }


def _print_status(project: Any) -> None:
    s = _status_dict(project)
    print(f"Project {s['project']}")
    print(f"  dataset: {s['dataset']} ({s['rows']} rows; labels {', '.join(s['labels'] or [])}; "
          f"splits {s['splits']})")
    for name, ph in s["phases"].items():
        print(f"  {name:<12} {ph['state']:<10} {ph['done']}/{ph['total']}  {ph['message'] or ''}")
    t = s["teacher"]
    print(f"  teacher: {t['calls']} calls ({t['failed']} invalid or failed attempts; {s['failed_items']} items "
          f"given up after retries), {t['prompt_tokens']:,} in / "
          f"{t['output_tokens'] + t['thoughts_tokens']:,} out tokens, ${t['cost_usd']:.4f}")
    print(f"  micro-rules: {s['micro_rules']}, rule-set versions: {s['rule_sets']}, chosen: {s['chosen_rule_set']}")
    for kind, m in s["evaluation"].items():
        print(f"  test {kind:<10} macro-F1 {m['macro_f1']:.3f}  accuracy {m['accuracy']:.3f}  "
              f"p50 {m['latency_p50_s']:.3f} s")


def cmd_batch(args: argparse.Namespace) -> int:
    from .core.batch_extraction import batch_summary
    from .core.project import Project
    with Project.open(args.project, read_only=True) as project:
        jobs = batch_summary(project)
    if args.json:
        print(json.dumps(jobs, indent=2))
        return EXIT_OK
    if not jobs:
        print("No batch jobs in this project (run phase 1 with --teacher gemini --batch).")
    for j in jobs:
        print(f"{j.get('name')}: {j.get('state')}, {j.get('n_requests')} requests, merged {j.get('merged')}"
              + (f" - {j['message']}" if j.get("message") else ""))
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from .core.project import Project
    with Project.open(args.project, read_only=True) as project:
        if args.json:
            print(json.dumps(_status_dict(project), indent=2))
        else:
            _print_status(project)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .core.export import export_rule_set
    from .core.project import Project
    from .core.settings import load_settings
    from .resources import build_demo_project

    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "demo.pld"
    if not path.exists():
        n_rows = build_demo_project(path, args.max_iterations)
        print(f"Created {path} from the bundled demo dataset ({n_rows} rows).", file=sys.stderr)
    else:
        print(f"Resuming {path}.", file=sys.stderr)
    with Project.open(path) as project:
        settings = load_settings(project)
    code = _run(str(path), args, [1, 2, 3, 4], "demo", settings)
    if code != EXIT_OK:
        return code
    with Project.open(path) as project:
        for p in export_rule_set(project, folder / "exports"):
            print(p)
    return EXIT_OK


# ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pld", description="Prompt-Level Distillation: labelled CSV -> rule prompt.")
    p.add_argument("--version", action="version", version=f"pld {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    i = sub.add_parser("init", help="create a project from a CSV")
    i.add_argument("project")
    i.add_argument("--csv", required=True)
    i.add_argument("--text", nargs="+", required=True, metavar="COL", help="input column(s)")
    i.add_argument("--label", required=True, metavar="COL")
    i.add_argument("--template", help=r"how input columns combine, e.g. 'Contract: {contract}\nHypothesis: {hyp}'")
    i.add_argument("--id", metavar="COL")
    i.add_argument("--split-column", metavar="COL")
    i.add_argument("--keep-split", action="store_true", help="use the source's split column")
    i.add_argument("--group", metavar="COL", help="rows of one group never straddle splits")
    i.add_argument("--ratios", default="60/20/20")
    i.add_argument("--seed", type=int, default=13)
    i.add_argument("--task", help="task description the student reads")
    i.add_argument("--force", action="store_true", help="overwrite an existing project file")
    i.add_argument("--merge-labels", choices=["nfc", "casefold"],
                   help="merge labels that differ only by Unicode form and invisible characters (nfc), or also by "
                        "letter case (casefold); without it they stay separate and are reported")
    i.set_defaults(func=cmd_init)

    def run_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--teacher", choices=["gemini", "local", "openai"],
                        help="openai: an OpenAI-compatible server (Ollama, vLLM, LM Studio, llama.cpp)")
        sp.add_argument("--teacher-model", help="Gemini model name")
        sp.add_argument("--teacher-gguf", help="GGUF file for the local teacher")
        sp.add_argument("--base-url", help="Gemini endpoint (proxies, tests)")
        sp.add_argument("--teacher-base-url", dest="teacher_openai_base_url", metavar="URL",
                        help="OpenAI-compatible teacher server, e.g. http://127.0.0.1:11434/v1 "
                             "(API key: OPENAI_API_KEY or the OS keychain)")
        sp.add_argument("--teacher-openai-model", metavar="NAME", help="model name on the teacher server")
        sp.add_argument("--concurrency", type=_positive_int, help="teacher requests in flight at once")
        sp.add_argument("--student", help="student GGUF (default: bundled Gemma 3 270M)")
        sp.add_argument("--student-backend", choices=["llama", "openai"],
                        help="llama: the GGUF in this process (default); openai: an OpenAI-compatible server")
        sp.add_argument("--student-base-url", metavar="URL", help="student server, e.g. http://127.0.0.1:8080/v1")
        sp.add_argument("--student-model", metavar="NAME",
                        help="model name on the student server (default: the first one it lists)")
        sp.add_argument("--student-concurrency", type=_positive_int, help="student requests in flight at once")
        sp.add_argument("--student-prompt-format", choices=["completion", "chat"],
                        help="completion: the exact prompt on /v1/completions (default); chat: the server's "
                             "chat template")
        sp.add_argument("--student-top-logprobs", type=_positive_int,
                        help="next-token logprobs asked per step (OpenAI and vLLM allow at most 20)")
        sp.add_argument("--n-ctx", type=int, help="student context size")
        sp.add_argument("--max-iterations", type=int)
        sp.add_argument("--sample-size", type=int, help="closed-loop training sample per round")
        sp.add_argument("--max-test", type=int, help="evaluate on at most N test examples")
        sp.add_argument("--batch", action="store_true", default=None,
                        help="phase 1 through Gemini Batch (half price; minutes to hours; a rerun resumes polling)")
        sp.add_argument("--yes", action="store_true", help="do not ask before a paid teacher run")
        sp.add_argument("--trust-project-settings", action="store_true",
                        help="accept the servers and model files this project names (remembered on this machine)")
        sp.add_argument("--quiet", action="store_true")

    r = sub.add_parser("run", help="run phases (all by default); a rerun resumes")
    r.add_argument("project")
    r.add_argument("--phase", type=int, action="append", choices=[1, 2, 3, 4], help="phase to run (repeatable)")
    r.add_argument("--task")
    run_options(r)
    r.set_defaults(func=cmd_run)

    e = sub.add_parser("eval", help="phase 4: rule set vs zero-shot and 5-shot on the test split")
    e.add_argument("project")
    e.add_argument("--rule-set", type=int, help="rule-set version to evaluate (default: the chosen one)")
    run_options(e)
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser("export", help="write the prompt as .txt, .md and .json")
    x.add_argument("project")
    x.add_argument("--out", help="output folder (default: exports/ beside the project)")
    x.add_argument("--format", nargs="+", default=["txt", "md", "json"], choices=["txt", "md", "json", "csv"],
                   help="txt/md/json: the rule prompt; csv: per-example test results of the last evaluation")
    x.add_argument("--rule-set", type=int)
    x.set_defaults(func=cmd_export)

    s = sub.add_parser("status", help="phase states, counts, tokens, cost, metrics")
    s.add_argument("project")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)

    b = sub.add_parser("batch", help="Gemini Batch jobs of phase 1: name, state, requests, merged")
    b.add_argument("project")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_batch)

    d = sub.add_parser("demo", help="run the bundled demo end to end on the embedded models")
    d.add_argument("--dir", default="pld-demo", help="folder for demo.pld and its exports")
    d.add_argument("--max-iterations", type=int, default=2)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)
    return p


class _TerminalSafe:
    """A text stream that writes control characters (ANSI escapes in labels or texts, bidi overrides) as visible
    escapes, so data printed by `pld` can never drive the terminal. Newlines and tabs pass; tqdm's own
    carriage returns pass too (they only move to the start of the line)."""

    _UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e"
                                       "\u2066-\u2069]")

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(self._UNSAFE.sub(lambda m: f"\\x{ord(m.group(0)):02x}" if ord(m.group(0)) < 0x100
                                            else f"\\u{ord(m.group(0)):04x}", text))
        return len(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def main(argv: Sequence[str] | None = None) -> int:
    saved = sys.stdout, sys.stderr
    if not isinstance(sys.stdout, _TerminalSafe):
        sys.stdout, sys.stderr = _TerminalSafe(sys.stdout), _TerminalSafe(sys.stderr)
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = saved


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from .backends.bundled import ModelFileError
    from .core.backends import PromptTooLong, TeacherError
    from .core.batch_extraction import BatchJobFailed
    from .core.dataset import DatasetError
    from .core.project import ProjectFileError
    try:
        return int(args.func(args) or 0)
    except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
        print(f"error: the project file is damaged and cannot be read ({type(exc).__name__}); restore a copy. "
              "The file was not changed.", file=sys.stderr)
        return EXIT_INPUT
    except (DatasetError, ProjectFileError, ModelFileError, PromptTooLong, TeacherError, ValueError,
            FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except BatchJobFailed as exc:  # the requests stay pending; a rerun submits them again
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("Stopped. Completed items are saved; rerun the same command to resume.", file=sys.stderr)
        return EXIT_CANCELLED


if __name__ == "__main__":
    sys.exit(main())
