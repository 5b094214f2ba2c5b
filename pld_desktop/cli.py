"""The `pld` command: drive the same engine as the desktop app from a terminal."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .core.progress import ProgressBase
from .core.settings_check import DEFAULT_NAMES, NUMBER_SETTINGS
from .core.states import PhaseState, RunStatus

if TYPE_CHECKING:
    from .core.domain import Conflict, Rule

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_QUOTA, EXIT_CANCELLED = 0, 1, 2, 4, 130
EXIT_IN_USE = 3          # the project is in use by another run (retry when it has finished)
EXIT_TERMINATED = 143    # stopped by SIGTERM (resumable), 128 + 15 as shells report it
EXIT_BROKEN_PIPE = 141   # the reader of our output went away (`pld status | head -1`), 128 + SIGPIPE


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


_stop_signal: int | None = None  # the signal that stopped this process (SIGINT or SIGTERM), for the exit code


def _stop_exit_code() -> int:
    return EXIT_TERMINATED if _stop_signal == signal.SIGTERM else EXIT_CANCELLED


def _install_sigint(progress: ConsoleProgress) -> None:
    """SIGINT and SIGTERM alike: the first asks the run to stop after the items in flight, a second stops at once
    (both leave a resumable project; a service manager's SIGTERM is a request to stop, not a crash)."""
    def handler(signum: int, frame: Any) -> None:
        global _stop_signal
        _stop_signal = signum
        if progress.cancelled():
            raise KeyboardInterrupt
        progress.cancel()
        again = "press Ctrl-C again" if signum == signal.SIGINT else "send SIGTERM again"
        print(f"\nStopping after the items in flight ({again} to stop at once)...", file=sys.stderr)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _install_sigterm_as_interrupt() -> None:
    """Outside a run, SIGTERM unwinds like Ctrl-C, so `finally` blocks remove partial files and release locks."""
    def handler(signum: int, frame: Any) -> None:
        global _stop_signal
        _stop_signal = signum
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


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


# The run options and the settings they set; a problem with a setting names its option (core.settings_check).
_RUN_OPTIONS = {"teacher": "teacher", "teacher_model": "teacher_model", "teacher_gguf": "teacher_gguf",
                "student": "student_gguf", "base_url": "teacher_base_url", "concurrency": "teacher_concurrency",
                "teacher_openai_base_url": "teacher_openai_base_url", "teacher_openai_model": "teacher_openai_model",
                "student_backend": "student_backend", "student_base_url": "student_base_url",
                "student_model": "student_model", "student_concurrency": "student_concurrency",
                "student_prompt_format": "student_prompt_format", "student_top_logprobs": "student_top_logprobs",
                "max_iterations": "loop_max_iterations", "max_test": "max_test_examples", "n_ctx": "student_n_ctx",
                "task": "task", "sample_size": "loop_sample_size"}
_OPTIONS = {field: "--" + option.replace("_", "-") for option, field in _RUN_OPTIONS.items()}
# A number is named by what it is and its option: "--n-ctx must be at least 128" does not say what.
CLI_NAMES = {**{field: f"{DEFAULT_NAMES[field]} ({option})" if field in NUMBER_SETTINGS else option
                for field, option in _OPTIONS.items()},
             "teacher_openai_base_url": "--teacher-base-url", "teacher_batch": "--batch",
             "teacher=openai": "--teacher openai", "teacher=gemini": "the Gemini teacher (--teacher gemini)",
             "student_backend=openai": "--student-backend openai"}


def _apply_run_overrides(settings: Any, args: argparse.Namespace) -> None:
    """Copy the run options given on the command line into `settings` (saved with the run, so a rerun without
    them resumes the same way); `check_settings(settings, CLI_NAMES)` then says what is wrong, by option."""
    from .core.settings_check import BUNDLED, model_path_value
    if getattr(args, "teacher", None) == BUNDLED:  # the embedded local teacher, whatever the project had
        args.teacher, args.teacher_gguf = "local", BUNDLED
    for arg, field in _RUN_OPTIONS.items():
        value = getattr(args, arg, None)
        if value is not None:
            if arg in ("student", "teacher_gguf"):
                value = model_path_value(value)  # "bundled" or "" -> the embedded model
            setattr(settings, field, value)
    if getattr(args, "batch", None):
        settings.teacher_batch = True
    if getattr(args, "student", None) is not None and getattr(args, "student_backend", None) is None:
        settings.student_backend = "llama"  # a GGUF named on the command line is meant to run in this process


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


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _run(project_path: str, args: argparse.Namespace, phases: Sequence[int], command: str,
         settings_override: Any = None) -> int:
    from .backends.factory import DefaultBackends
    from .backends.trust import TrustStore, UntrustedSettingError
    from .core.pipeline import PHASE_NAMES, estimate_teacher_run, run_pipeline
    from .core.project import Project
    from .core.run_lock import RunLock
    from .core.settings import load_settings
    from .core.settings_check import check_settings

    project = Project.open(project_path)
    progress = ConsoleProgress(quiet=getattr(args, "quiet", False))
    trust = TrustStore()
    backends = DefaultBackends(trust=trust)
    lock = RunLock(project.path, command)
    try:
        lock.acquire()  # refused at once when another run holds the project (run_pipeline holds it too)
        if not project.has_dataset():
            print("error: the project has no dataset; create it with 'pld init'.", file=sys.stderr)
            return EXIT_INPUT
        settings = settings_override or load_settings(project)
        _apply_run_overrides(settings, args)
        check_settings(settings, CLI_NAMES)  # before any question, model load or save: a bad option never sticks
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
        if getattr(args, "retry_failed", False):
            from .core.pipeline import retry_failed_items
            n = retry_failed_items(project, phases)
            print(f"Retrying {n} item(s) given up earlier.", file=sys.stderr)
        _install_sigint(progress)
        started = time.monotonic()
        report = run_pipeline(project, settings, backends, progress, phases=phases, command=command)
        progress.close()
        if report.status == RunStatus.CANCELLED:
            print(report.message, file=sys.stderr)
            return _stop_exit_code()
        if report.status == RunStatus.QUOTA_EXHAUSTED:
            print(report.message, file=sys.stderr)
            return EXIT_QUOTA
        if report.status == RunStatus.FAILED:
            print(f"error: {report.message}", file=sys.stderr)
            return EXIT_FAILED
        print(f"Finished phases {', '.join(PHASE_NAMES[p] for p in sorted(phases))} "
              f"in {time.monotonic() - started:.0f} s.", file=sys.stderr)
        _print_status(project)
        return EXIT_OK
    finally:
        progress.close()
        backends.close()
        project.close()
        lock.release()


def cmd_run(args: argparse.Namespace) -> int:
    phases = args.phase or [1, 2, 3, 4]
    return _run(args.project, args, phases, "run")


def cmd_eval(args: argparse.Namespace) -> int:
    """Score a version (default: the working one) on dev, or on test (phase 4: with zero-shot and few-shot)."""
    from .core.phases.evaluation import run_evaluation
    from .core.scoring import latest_scores, score_version, test_use_count
    from .core.working import require_working_rule_set

    def work(project: Any, student: Any, settings: Any, progress: ConsoleProgress) -> int:
        rs_id = require_working_rule_set(project, args.rule_set)
        if args.split == "test":
            run_evaluation(project, student, settings, progress, rule_set_id=rs_id)
            scores = latest_scores(project, rs_id, "test")
            progress.close()
            print(f"v{rs_id} on test: macro-F1 {scores['rules'].macro_f1:.3f}, accuracy "
                  f"{scores['rules'].accuracy:.3f} (n={scores['rules'].n}); zero-shot "
                  f"{scores['zero_shot'].macro_f1:.3f}, few-shot {scores['few_shot'].macro_f1:.3f}")
            print(f"Versions scored on test so far: {test_use_count(project)} (the more versions are compared on "
                  "test, the less the best test score proves).")
            return EXIT_OK
        result = score_version(project, student, rs_id, split="dev", settings=settings, progress=progress)
        progress.close()
        print(result.summary())
        return EXIT_OK

    return _with_student(args, work)


def cmd_export(args: argparse.Namespace) -> int:
    from .core.export import default_export_formats, export_version
    from .core.project import Project
    out = Path(args.out) if args.out else Path(args.project).resolve().parent / "exports"
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out names a folder for the exported files, but {out} is a file; "
                         "choose a folder (it is created when missing).")
    with Project.open(args.project) as project:
        from .core.working import require_working_rule_set
        rs_id = require_working_rule_set(project, args.rule_set)
        formats = args.format or default_export_formats(project, rs_id)
        paths = export_version(project, out, formats, rule_set_id=rs_id)
    print(f"Exported rule-set version {rs_id}:", file=sys.stderr)
    for p in paths:
        print(p)
    return EXIT_OK


def _status_dict(project: Any) -> dict[str, Any]:
    from .core.pipeline import PHASE_NAMES, shown_phase_state
    from .core.project import CHOSEN_RULE_SET
    info = project.dataset_info() or {}
    counts = project.split_counts()
    phases = project.phase_states()
    evals = {}
    last = project.last_evaluation()
    for kind in ("pld", "zero_shot", "few_shot"):
        if kind in last:
            m = project.evaluation(last[kind]).metrics or {}
            evals[kind] = {"macro_f1": m.get("macro_f1"), "accuracy": m.get("accuracy"),
                           "latency_p50_s": m.get("latency_p50_s")}
    return {
        "project": str(project.path), "dataset": info.get("source_name"), "rows": info.get("n_rows"),
        "labels": info.get("labels"), "splits": counts,
        "phases": {PHASE_NAMES[p]: {"state": shown_phase_state(project.path, phases[p]["state"]),
                                    "done": phases[p]["done"],
                                    "total": phases[p]["total"], "message": phases[p]["message"]}
                   for p in sorted(phases)},
        "micro_rules": len(project.micro_rule_example_ids()), "failed_items": project.failed_item_count(),
        "rule_sets": len(project.rule_sets()), "chosen_rule_set": project.rule_set_pointer(CHOSEN_RULE_SET),
        "teacher": project.teacher_totals(), "evaluation": evals,
        **_quality_status(project),
    } | _loop_status(project)


STATE_WORDS: dict[str, str] = {PhaseState.INTERRUPTED: "interrupted, resumable"}


def _quality_status(project: Any) -> dict[str, Any]:
    """`rule_quality` and `chosen` (issue 12), kept in one function beside the other status fields."""
    from .core.pipeline import quality_status
    return quality_status(project)


def _print_status(project: Any) -> None:
    s = _status_dict(project)
    print(f"Project {s['project']}")
    print(f"  dataset: {s['dataset']} ({s['rows']} rows; labels {', '.join(s['labels'] or [])}; "
          f"splits {s['splits']})")
    for name, ph in s["phases"].items():
        state = STATE_WORDS.get(ph["state"], ph["state"])
        print(f"  {name:<12} {state:<10} {ph['done']}/{ph['total']}  {ph['message'] or ''}")
    t = s["teacher"]
    print(f"  teacher: {t['calls']} calls ({t['failed']} invalid or failed attempts; {s['failed_items']} items "
          f"given up after retries), {t['prompt_tokens']:,} in / "
          f"{t['output_tokens'] + t['thoughts_tokens']:,} out tokens, ${t['cost_usd']:.4f}")
    print(f"  micro-rules: {s['micro_rules']}, rule-set versions: {s['rule_sets']}, chosen: {s['chosen_rule_set']}, "
          f"working: {s['working_rule_set']} ({s['working_source']}); versions scored on test: {s['test_use_count']}")
    for kind, m in s["evaluation"].items():
        print(f"  test {kind:<10} macro-F1 {m['macro_f1']:.3f}  accuracy {m['accuracy']:.3f}  "
              f"p50 {m['latency_p50_s']:.3f} s")
    _print_quality(s)


def _print_quality(s: dict[str, Any]) -> None:
    q, c = s.get("rule_quality") or {}, s.get("chosen") or {}
    if "micro_rules" in q:
        print(f"  rule quality: {q['micro_rules']} micro-rules, {q['truncated']} cut, {q['copied']} copy their "
              f"example, {q['off_label']} off-label; labels without a rule: "
              f"{', '.join(q['labels_without_rules']) or 'none'}")
        if q.get("given_up_items"):
            print(f"  {q['given_up_items']} teacher item(s) given up after retries; 'pld run --retry-failed' "
                  "tries them again")
    if c:
        def f(x: Any) -> str:
            return "-" if x is None else f"{x:.3f}"
        print(f"  chosen on dev: v{c['rule_set']} {c['prompt']}{' (calibrated)' if c['calibrated'] else ''} "
              f"macro-F1 {f(c['dev_macro_f1'])}; zero-shot {f(c['zero_shot_dev_macro_f1'])}, "
              f"5-shot {f(c['few_shot_dev_macro_f1'])}")
        if c.get("warning"):
            print(f"  warning: {c['warning']}")
    for kind, m in (s.get("test_raw_and_calibrated") or {}).items():
        if m.get("macro_f1_calibrated") is not None:
            print(f"  test {kind:<12} macro-F1 raw {m['macro_f1']:.3f}, calibrated {m['macro_f1_calibrated']:.3f}")


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
# pld models: what is on this machine, fetch, probe
# ---------------------------------------------------------------------------
def _models_n_ctx(args: argparse.Namespace) -> int:
    """The context size models are sized for: --n-ctx, else the project's student setting, else 4096."""
    if getattr(args, "n_ctx", None):
        return int(args.n_ctx)
    if getattr(args, "project", None):
        from .core.project import Project
        from .core.settings import load_settings
        with Project.open(args.project, read_only=True) as project:
            return load_settings(project).student_n_ctx
    return 4096


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def cmd_models(args: argparse.Namespace) -> int:
    from .backends.gguf_file import available_memory_bytes
    from .backends.model_fetch import CURATED
    from .backends.model_store import (
        add_model_folder,
        find_models,
        memory_estimate,
        model_locations,
        remove_model_folder,
    )

    if args.add_folder:
        add_model_folder(args.add_folder)
    if args.remove_folder:
        remove_model_folder(args.remove_folder)
    n_ctx = _models_n_ctx(args)
    free = available_memory_bytes()
    models = find_models()
    on_disk = {m.label for m in models if m.source == "Hugging Face cache" and m.status == "ok"}
    rows = []
    for m in models:
        row = m.to_json()
        if m.usable:
            est = memory_estimate(m, n_ctx, free)
            row["memory"] = {"n_ctx": n_ctx, "total": est.total, "weights": est.weights, "kv_cache": est.kv_cache,
                             "compute": est.compute, "available": est.available, "fits": est.fits}
        rows.append(row)
    curated = [{**c.to_json(), "on_disk": f"{c.repo}/{c.filename}" in on_disk} for c in CURATED]
    if args.json:
        print(json.dumps({"locations": [loc.__dict__ for loc in model_locations()], "models": rows,
                          "curated": curated, "available_memory": free}, indent=2))
        return EXIT_OK
    print("Searched: " + "; ".join(f"{loc.source} {loc.path}" + ("" if loc.exists else " (none)")
                                   for loc in model_locations()))
    if not models:
        print("No GGUF models found on this machine.")
    for m, row in zip(models, rows):
        if m.status != "ok":
            print(f"  [{m.status}] {m.source}: {m.label} - {m.problem}\n      {m.path}")
            continue
        mem = row.get("memory")
        fits = "" if not mem else (f", needs ~{_gib(mem['total'])} at {n_ctx:,} ctx"
                                   + ("" if mem["fits"] is None else (" (fits)" if mem["fits"] else " (does NOT fit)")))
        print(f"  {m.source}: {m.label}\n      {m.name}: {m.architecture or '?'}, {m.n_params / 1e9:.2f} B params, "
              f"{m.quantisation or '?'}, {_gib(m.size_bytes)}, trained ctx {m.n_ctx_train:,}, chat template "
              f"{'yes' if m.has_chat_template else 'no'}{fits}" + (f" - {m.problem}" if m.problem else "")
              + f"\n      {m.path}")
    print("\nTo fetch (pld models fetch NAME):")
    for c in curated:
        mark = " [on disk]" if c["on_disk"] else ""
        print(f"  {c['key']:<24} {c['role']:<19} ~{c['approx_bytes'] / 1e9:.1f} GB  {c['repo']}:{c['filename']}{mark}"
              f"\n  {'':<24} licence: {c['licence']}")
    if free is not None:
        print(f"\nFree memory: {_gib(free)}.")
    return EXIT_OK


def cmd_models_fetch(args: argparse.Namespace) -> int:
    from .backends.model_fetch import FetchError, HubOffline, fetch_model
    from .backends.model_store import find_models
    from .core.progress import Cancelled

    progress = ConsoleProgress(quiet=args.quiet)
    _install_sigint(progress)
    try:
        result = fetch_model(args.spec, progress, revision=args.revision)
    except HubOffline as exc:
        progress.close()
        print(f"error: {exc}", file=sys.stderr)
        usable = [m for m in find_models() if m.usable]
        print("On this machine:" if usable else "No usable GGUF models on this machine.", file=sys.stderr)
        for m in usable:
            print(f"  {m.label} ({m.name}, {m.quantisation}) {m.path}", file=sys.stderr)
        return EXIT_FAILED
    except Cancelled:
        progress.close()
        print("Stopped. The part downloaded is kept; the same command resumes.", file=sys.stderr)
        return EXIT_CANCELLED
    except FetchError as exc:
        progress.close()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        progress.close()
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
    else:
        how = ("already on disk" if result.downloaded_bytes == 0 and result.resumed_from == 0 else
               f"resumed at {_gib(result.resumed_from)}" if result.resumed_from else "downloaded")
        check = f"sha256 {result.sha256} verified" if result.sha256 else "size checked (no sha256 published)"
        print(f"{result.repo}/{result.filename}: {_gib(result.size_bytes)}, {how}, {check}.", file=sys.stderr)
        print(result.path)
    return EXIT_OK


def cmd_models_probe(args: argparse.Namespace) -> int:
    from .backends.model_probe import probe_model
    from .core.progress import Cancelled

    progress = ConsoleProgress(quiet=args.quiet)
    _install_sigint(progress)
    try:
        result = probe_model(args.path, progress, project=args.project, n_examples=args.n, n_ctx=args.n_ctx)
    except Cancelled:
        print("Stopped.", file=sys.stderr)
        return EXIT_CANCELLED
    finally:
        progress.close()
    print(json.dumps(result.to_json(), indent=2) if args.json else result.describe())
    return EXIT_OK


def _add_models_parser(sub: Any) -> None:
    m = sub.add_parser("models", help="GGUF models on this machine; fetch one; probe one (pld models -h)")
    m.add_argument("--json", action="store_true")
    m.add_argument("--project", help="size models for this project's student context size")
    m.add_argument("--n-ctx", type=_positive_int, help="context size to size models for (default 4096)")
    m.add_argument("--add-folder", metavar="DIR", help="also search this folder (remembered on this machine)")
    m.add_argument("--remove-folder", metavar="DIR", help="stop searching this added folder")
    m.set_defaults(func=cmd_models)
    msub = m.add_subparsers(dest="models_command")
    f = msub.add_parser("fetch", help="download a curated model (see pld models) or org/repo[:file.gguf]")
    f.add_argument("spec", metavar="NAME_OR_REPO[:FILE]")
    f.add_argument("--revision", default="main")
    f.add_argument("--json", action="store_true")
    f.add_argument("--quiet", action="store_true")
    f.set_defaults(func=cmd_models_fetch)
    pr = msub.add_parser("probe", help="memory need and measured seconds per example of a GGUF as the student")
    pr.add_argument("path")
    pr.add_argument("--project", help="use this project's current rule prompt, dev examples and context size")
    pr.add_argument("--n", type=_positive_int, default=4, help="examples to classify (default 4)")
    pr.add_argument("--n-ctx", type=_positive_int)
    pr.add_argument("--json", action="store_true")
    pr.add_argument("--quiet", action="store_true")
    pr.set_defaults(func=cmd_models_probe)


# ---------------------------------------------------------------------------
# The analyst's loop: working version, rules, versions, diff (issue 11)
# ---------------------------------------------------------------------------
def _loop_status(project: Any) -> dict[str, Any]:
    """The working version, every score and the test-use count, for `pld status` (--json too)."""
    from .core.scoring import status_evaluations, test_use_count
    from .core.working import working_version
    wv = working_version(project)
    return {"working_rule_set": wv.rule_set_id if wv else None, "working_source": wv.source if wv else None,
            "evaluations": status_evaluations(project), "test_use_count": test_use_count(project)}


def _with_student(args: argparse.Namespace, work: Any) -> int:
    """Open the project, apply the run options, load the student and call `work(project, student, settings,
    progress)`; Ctrl-C stops after the item in flight (what was scored is kept)."""
    from .backends.factory import DefaultBackends
    from .backends.trust import TrustStore, UntrustedSettingError
    from .core.progress import Cancelled
    from .core.project import Project
    from .core.run_lock import RunLock
    from .core.settings import load_settings
    from .core.settings_check import check_settings

    project = Project.open(args.project)
    progress = ConsoleProgress(quiet=getattr(args, "quiet", False))
    trust = TrustStore()
    backends = DefaultBackends(trust=trust)
    # Scoring writes evaluations: one writer per project, as for `pld run`.
    lock = RunLock(project.path, str(getattr(args, "command", "eval")))
    try:
        lock.acquire()
        if not project.has_dataset():
            print("error: the project has no dataset; create it with 'pld init'.", file=sys.stderr)
            return EXIT_INPUT
        settings = load_settings(project)
        _apply_run_overrides(settings, args)
        check_settings(settings, CLI_NAMES)
        # The same gate as `pld run`: a model file or server named by the project needs this machine's acceptance.
        untrusted = _accept_trust(trust, settings, args, [4])
        if untrusted:
            print(f"error: {UntrustedSettingError(untrusted)}", file=sys.stderr)
            return EXIT_INPUT
        from .core.working import require_working_rule_set
        require_working_rule_set(project, getattr(args, "rule_set", None))  # before a model loads
        _install_sigint(progress)
        try:
            return int(work(project, backends.student(settings), settings, progress))
        except Cancelled:
            progress.close()
            print("Stopped. What was scored is saved; rerun the same command to go on.", file=sys.stderr)
            return EXIT_CANCELLED
    finally:
        progress.close()
        backends.close()
        project.close()
        lock.release()


def _rule_ref(rules: Sequence[Rule], ref: str) -> str:
    """A rule's uid from what the user typed: its number in the prompt ("3"), its uid ("R3", "E1"), or "dK"
    for the K-th disabled rule (disabled rules have no number in the prompt)."""
    from .core.diff import prompt_numbers
    numbers = prompt_numbers(rules)
    text = str(ref).strip()
    if text.isdigit():
        for uid, n in numbers.items():
            if n == int(text):
                return uid
        numbered = max([n or 0 for n in numbers.values()] + [0])
        raise ValueError(f"There is no rule {text} in the prompt (it has {numbered}"
                         " numbered rules; disabled rules are named d1, d2, ... or by uid).")
    disabled = [r.uid for r in rules if not r.enabled]
    if text.lower().startswith("d") and text[1:].isdigit():
        k = int(text[1:])
        if 1 <= k <= len(disabled):
            return disabled[k - 1]
        raise ValueError(f"There is no disabled rule {text} ({len(disabled)} rules are disabled).")
    if any(r.uid == text for r in rules):
        return text
    raise ValueError(f"'{ref}' names no rule: use its number in the prompt, its uid (R3) or d1, d2 for disabled ones.")


def _full_index_of_number(rules: Sequence[Rule], number: int, *, allow_end: bool) -> int:
    from .core.diff import prompt_numbers
    numbers = prompt_numbers(rules)
    for i, r in enumerate(rules):
        if numbers[r.uid] == number:
            return i
    count = max([n or 0 for n in numbers.values()] + [0])
    if allow_end and number == count + 1:
        return len(rules)
    raise ValueError(f"Position {number} is outside the prompt's rules 1-{count}" + (f" (or {count + 1} for the end)"
                                                                                      if allow_end else "") + ".")


def _rule_edit(args: argparse.Namespace, rules: Sequence[Rule], labels: Sequence[str]) -> Any:
    from .core import rule_edits as E
    action = args.action
    if action == "add":
        if not args.text or not args.label:
            raise ValueError("pld rules P add needs --text and --label.")
        if args.label not in labels:
            raise ValueError(f"'{args.label}' is not a label of this project ({', '.join(labels)}).")
        at = None if args.at is None else _full_index_of_number(rules, args.at, allow_end=True)
        return E.Add(args.text, args.label, at)
    if args.number is None:
        raise ValueError(f"pld rules P {action} needs the rule's number, e.g. pld rules P {action} 3.")
    uid = _rule_ref(rules, args.number)
    if action == "set":
        if args.text is None and args.label is None:
            raise ValueError("pld rules P set N needs --text and/or --label.")
        if args.label is not None and args.label not in labels:
            raise ValueError(f"'{args.label}' is not a label of this project ({', '.join(labels)}).")
        edits = ([E.SetText(uid, args.text)] if args.text is not None else []) + \
            ([E.SetLabel(uid, args.label)] if args.label is not None else [])
        return edits[0] if len(edits) == 1 else E.Compound(tuple(edits))
    if action in ("disable", "enable"):
        return E.SetEnabled(uid, action == "enable")
    if action == "delete":
        return E.Delete(uid)
    if action == "move":
        if args.to is None:
            raise ValueError("pld rules P move N needs --to M (the rule's new number in the prompt).")
        return E.Move(uid, _full_index_of_number(rules, args.to, allow_end=False))
    if action == "fix-label":
        return E.fix_label_to_text(rules, uid, labels)
    if action == "fix-text":
        return E.fix_text_to_label(rules, uid, labels)
    raise ValueError(f"Unknown rules action '{action}'.")


def _conflict_notes(conflicts: Sequence[Conflict]) -> dict[str, list[str]]:
    from .core.rule_edits import changed_since
    notes: dict[str, list[str]] = {}
    for c in conflicts:
        a, b = c.rule_a, c.rule_b
        mark = " (rule changed since)" if changed_since(c) else ""
        if a == b:
            notes.setdefault(a, []).append(f"{c.source}: {c.reason}")
            continue
        notes.setdefault(a, []).append(f"{c.source} with {b}{mark}")
        notes.setdefault(b, []).append(f"{c.source} with {a}{mark}")
    return notes


def _print_rules(project: Any, rs_id: int, impact: Any = None, as_json: bool = False) -> None:
    from .core.diff import prompt_numbers
    from .core.rule_edits import version_conflicts
    from .core.working import working_version
    rs = project.rule_set(rs_id)
    numbers = prompt_numbers(rs.rules)
    notes = _conflict_notes(version_conflicts(project, rs_id))
    by_uid = impact.by_uid() if impact is not None else {}
    if as_json:
        rows = []
        for r in rs.rules:
            imp = by_uid.get(r.uid)
            rows.append({"number": numbers[r.uid], "uid": r.uid, "label": r.label, "text": r.text,
                         "enabled": bool(r.enabled), "conflicts": notes.get(r.uid, []),
                         "impact": None if imp is None else {"delta_macro_f1": imp.delta, "hurts": imp.hurts,
                                                             "macro_f1_without": imp.macro_f1_without,
                                                             "flips": imp.flips}})
        print(json.dumps({"rule_set": rs_id, "rules": rows,
                          "impact": None if impact is None else {"macro_f1": impact.macro_f1, "n": impact.n,
                                                                 "split": impact.split,
                                                                 "complete": impact.complete}}, indent=2))
        return
    wv = working_version(project)
    print(f"Rule-set version {rs_id}" + (" (working version)" if wv and wv.rule_set_id == rs_id else "")
          + f": {sum(1 for n in numbers.values() if n)} rules in the prompt, "
          f"{sum(1 for n in numbers.values() if n is None)} disabled")
    if impact is not None:
        print(f"Impact on dev (n={impact.n}, macro-F1 with every rule {impact.macro_f1:.3f}); delta = with - "
              "without: positive helps, negative hurts" + ("" if impact.complete else " [partial]"))
    disabled = 0
    for r in rs.rules:
        n = numbers[r.uid]
        if n is None:
            disabled += 1
        tag = f"{n:>3}." if n is not None else f" d{disabled}"
        state = "" if n is not None else "  [disabled]"
        line = f"{tag} {r.uid:<5} {r.label:<14} {r.text}{state}"
        imp = by_uid.get(r.uid)
        if imp is not None:
            line += f"\n       impact {imp.delta:+.3f} macro-F1, {len(imp.flips)} examples flip" + \
                ("  HURTS" if imp.hurts else "")
            if imp.flips:
                line += "\n       flips: " + ", ".join(f"{f['example']} {f['with']}->{f['without']}"
                                                      for f in imp.flips[:8]) + (" ..." if len(imp.flips) > 8 else "")
        for note in notes.get(r.uid, []):
            line += f"\n       conflict: {note}"
        print(line)


def cmd_rules(args: argparse.Namespace) -> int:
    """List the working version's rules (with --impact: what each is worth on dev), or edit them: every edit is
    a new version made by the same core edit commands as the window's undo stack."""
    from .core.impact import rule_impact, stored_impact
    from .core.project import Project
    from .core.rule_edits import label_mismatches, save_version
    from .core.working import require_working_rule_set

    if args.action is None:
        if args.impact:
            def work(project: Any, student: Any, settings: Any, progress: ConsoleProgress) -> int:
                rs_id = require_working_rule_set(project, args.rule_set)
                report = rule_impact(project, student, rs_id, settings=settings, progress=progress)
                progress.close()
                _print_rules(project, rs_id, report, args.json)
                return EXIT_OK
            return _with_student(args, work)
        with Project.open(args.project, read_only=True) as project:
            rs_id = require_working_rule_set(project, args.rule_set)
            _print_rules(project, rs_id, stored_impact(project, rs_id), args.json)
        return EXIT_OK
    with Project.open(args.project) as project:
        parent_id = require_working_rule_set(project, args.rule_set)
        parent = project.rule_set(parent_id)
        edit = _rule_edit(args, parent.rules, parent.labels)
        rules, _ = edit.apply(parent.rules)
        new_id = save_version(project, parent_id, rules, f"pld rules: {edit.describe()}")
        print(f"v{new_id} (from v{parent_id}): {edit.describe()}; v{new_id} is now the working version.")
        for uid, said, label in label_mismatches(rules, parent.labels):
            print(f"warning: {uid}'s text says {said}, its label is {label} (fix: pld rules {args.project} "
                  f"fix-label {uid}, or fix-text {uid})", file=sys.stderr)
    if not args.no_model_conflicts:
        _recompute_conflicts(args, new_id)
    return EXIT_OK


def _recompute_conflicts(args: argparse.Namespace, rs_id: int) -> None:
    """Similarity and co-firing conflicts of the edited rules, with the embedder (as the window does in the
    background); a failure here leaves the version saved with its carried-over conflicts."""
    from .backends.factory import DefaultBackends
    from .core.progress import SilentProgress
    from .core.project import Project
    from .core.rule_edits import recompute_conflicts
    from .core.settings import load_settings
    backends = DefaultBackends()
    try:
        with Project.open(args.project) as project:
            settings = load_settings(project)
            added = recompute_conflicts(project, backends.embedder(settings), rs_id, settings, SilentProgress())
        if added:
            print(f"{added} similarity or co-firing conflict(s) found for the edited rule(s).", file=sys.stderr)
    finally:
        backends.close()


def cmd_versions(args: argparse.Namespace) -> int:
    from .core.project import Project
    from .core.scoring import version_history
    with Project.open(args.project, read_only=True) as project:
        history = version_history(project)
    if args.json:
        print(json.dumps(history.to_json(), indent=2))
        return EXIT_OK
    if not history.rows:
        print("No rule-set versions yet: run phases 1-2 (pld run) first.")
        return EXIT_OK

    def score(s: Any, delta: float | None) -> str:
        if s is None:
            return "-"
        return f"{s.macro_f1:.3f}" + (f" ({delta:+.3f})" if delta is not None else "")

    print(f"{'ver':>4} {'parent':>6}  {'dev F1 (vs parent)':<19} {'test F1 (vs parent)':<20} reason")
    for r in history.rows:
        marks = ("W" if r.is_working else " ") + ("P" if r.is_pipeline_choice else " ")
        print(f"{marks}{r.rule_set_id:>3} {r.parent_id if r.parent_id else '-':>6}  "
              f"{score(r.dev, r.dev_delta_vs_parent):<19} {score(r.test, r.test_delta_vs_parent):<20} "
              f"{r.origin}: {r.reason}")
    for split, base in history.baselines.items():
        print(f"  baselines on {split}: " + ", ".join(f"{k} {s.macro_f1:.3f} (n={s.n})" for k, s in base.items()))
    print(f"W = working version (v{history.working_rule_set}), P = pipeline's choice (v{history.pipeline_choice}); "
          f"versions scored on test: {history.test_use_count}")
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    from .core.diff import diff_versions
    from .core.project import Project
    with Project.open(args.project, read_only=True) as project:
        d = diff_versions(project, args.a, args.b)
    print(json.dumps(d.to_json(), indent=2) if args.json else d.to_text())
    return EXIT_OK


def _add_loop_parsers(sub: Any, run_options: Any) -> None:
    ru = sub.add_parser("rules", help="list the working version's rules (numbered as in the prompt) or edit them")
    ru.add_argument("project")
    ru.add_argument("action", nargs="?", choices=["set", "disable", "enable", "move", "add", "delete",
                                                  "fix-label", "fix-text"],
                    help="an edit (each makes a new version); none: list the rules")
    ru.add_argument("number", nargs="?", help="the rule: its number in the prompt, its uid (R3), or d1, d2... "
                                              "for disabled rules")
    ru.add_argument("--text", help="the rule's new text (set, add)")
    ru.add_argument("--label", help="the rule's label (set, add)")
    ru.add_argument("--to", type=int, help="move: the rule's new number in the prompt")
    ru.add_argument("--at", type=int, help="add: the new rule's number in the prompt (default: last)")
    ru.add_argument("--rule-set", type=int, help="the version to list or edit (default: the working version)")
    ru.add_argument("--impact", action="store_true",
                    help="score the version on dev without each enabled rule: the change in macro-F1 and the "
                         "examples that flip (runs the student; cached)")
    ru.add_argument("--no-model-conflicts", action="store_true",
                    help="after an edit, skip the embedder's similarity and co-firing check of the edited rule")
    ru.add_argument("--json", action="store_true")
    run_options(ru)
    ru.set_defaults(func=cmd_rules)

    v = sub.add_parser("versions", help="every rule-set version: parent, reason, dev and test scores")
    v.add_argument("project")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_versions)

    df = sub.add_parser("diff", help="rules added, removed, changed and moved between two versions")
    df.add_argument("project")
    df.add_argument("a", type=int)
    df.add_argument("b", type=int)
    df.add_argument("--json", action="store_true")
    df.set_defaults(func=cmd_diff)


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
        sp.add_argument("--teacher", choices=["gemini", "local", "openai", "bundled"],
                        help="openai: an OpenAI-compatible server (Ollama, vLLM, LM Studio, llama.cpp); "
                             "bundled: the embedded SmolLM2 teacher")
        sp.add_argument("--teacher-model", help="Gemini model name")
        sp.add_argument("--teacher-gguf", help="GGUF file for the local teacher ('bundled': the embedded one)")
        sp.add_argument("--base-url", help="Gemini endpoint (proxies, tests)")
        sp.add_argument("--teacher-base-url", dest="teacher_openai_base_url", metavar="URL",
                        help="OpenAI-compatible teacher server, e.g. http://127.0.0.1:11434/v1 "
                             "(API key: OPENAI_API_KEY or the OS keychain)")
        sp.add_argument("--teacher-openai-model", metavar="NAME", help="model name on the teacher server")
        sp.add_argument("--concurrency", type=_positive_int, help="teacher requests in flight at once")
        sp.add_argument("--student", help="student GGUF ('bundled' or default: the embedded Gemma 3 270M)")
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
        sp.add_argument("--n-ctx", type=_positive_int, help="student context size")
        sp.add_argument("--max-iterations", type=_nonnegative_int, help="closed-loop rounds at most")
        sp.add_argument("--sample-size", type=_positive_int, help="closed-loop training sample per round")
        sp.add_argument("--max-test", type=_positive_int, help="evaluate on at most N test examples")
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
    r.add_argument("--retry-failed", action="store_true",
                   help="retry the teacher items given up after their attempts (a plain rerun does not)")
    run_options(r)
    r.set_defaults(func=cmd_run)

    e = sub.add_parser("eval", help="score a version on dev (default), or on test against zero-shot and 5-shot")
    e.add_argument("project")
    e.add_argument("--rule-set", type=int, help="rule-set version to score (default: the working version)")
    e.add_argument("--split", choices=["dev", "test"], default="dev",
                   help="dev: the everyday score, with its parent and the baselines (default); test: the final "
                        "check (phase 4; every version scored on test is counted)")
    run_options(e)
    e.set_defaults(func=cmd_eval)

    x = sub.add_parser("export", help="write the working version's prompt (.txt .md .json), results and "
                                      "deployment files")
    x.add_argument("project")
    x.add_argument("--out", help="output folder (default: exports/ beside the project)")
    x.add_argument("--format", nargs="+", default=None,
                   choices=["txt", "md", "json", "csv", "modelfile", "llama-server", "classify-py"],
                   help="txt/md/json: the rule prompt; csv: per-example results of the version (its newest test "
                        "score, else dev); modelfile: Ollama; llama-server: a llama.cpp server command and GBNF "
                        "grammar; classify-py: a standalone script that classifies a CSV with the prompt. "
                        "Default: all of them (csv when the version has a score)")
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
    d.add_argument("--max-iterations", type=_nonnegative_int, default=2)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)
    _add_models_parser(sub)
    _add_loop_parsers(sub, run_options)
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
    _install_sigterm_as_interrupt()
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # inside the try: a reader gone at exit is a broken pipe handled here, not a traceback
        return code
    except BrokenPipeError:
        # The reader closed the pipe (`pld status | true`): nothing more can be said on stdout; say nothing and
        # keep Python from complaining again when it flushes stdout at exit.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        return EXIT_BROKEN_PIPE


def _dispatch(args: argparse.Namespace) -> int:
    from .backends.bundled import ModelFileError
    from .core.batch_extraction import BatchJobFailed
    from .core.dataset import DatasetError
    from .core.evaluate import StudentFailed
    from .core.project import DatabaseError, DiskFull, OperationalError, ProjectFileError, ProjectInUse, in_use_message
    from .core.protocols import PromptTooLong, TeacherError
    try:
        return int(args.func(args) or 0)
    except DiskFull as exc:  # the machine, not the input: exit 1 like any other full-disk write
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ProjectInUse as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_IN_USE
    except OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            print(f"error: {in_use_message(Path(getattr(args, 'project', '') or '.'))}", file=sys.stderr)
            return EXIT_IN_USE
        if "full" in str(exc):
            print("error: the disk is full; nothing was lost. Free some space and run the command again.",
                  file=sys.stderr)
            return EXIT_FAILED
        print(f"error: the project file is damaged and cannot be read ({type(exc).__name__}); restore a copy. "
              "The file was not changed.", file=sys.stderr)
        return EXIT_INPUT
    except (DatabaseError, UnicodeDecodeError) as exc:
        print(f"error: the project file is damaged and cannot be read ({type(exc).__name__}); restore a copy. "
              "The file was not changed.", file=sys.stderr)
        return EXIT_INPUT
    except (DatasetError, ProjectFileError, ModelFileError, PromptTooLong, TeacherError, ValueError,
            FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except (BatchJobFailed, StudentFailed) as exc:  # batch: requests stay pending; student: scores so far kept
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("Stopped. Completed items are saved; rerun the same command to resume.", file=sys.stderr)
        return _stop_exit_code()
    except BrokenPipeError:
        raise
    except OSError as exc:  # the machine, not the input: a full disk, a vanished folder, a permission
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}. Nothing in the project was lost.", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:
        from .backends.openai_student import OpenAIServerError  # here: httpx is not imported by every command
        if isinstance(exc, OpenAIServerError):  # a student server that cannot be reached or refuses: said as is
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        if os.environ.get("PLD_DEBUG"):
            raise
        print(f"error: unexpected internal error ({type(exc).__name__}: {exc}). Completed work is saved; "
              "rerun with PLD_DEBUG=1 for the details and report them.", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
