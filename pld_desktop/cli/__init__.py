"""The `pld` command: drive the same engine as the desktop app from a terminal.

This module builds the parser, dispatches a command and turns what it raises into an exit code; it holds the
project commands (init, run, eval, export, demo). The other commands live beside it: status.py (status, batch),
models.py (models), rules.py (rules, versions, diff); runs.py runs a model on a project, options.py holds the run
options, console.py the terminal (exit codes, progress, signals). Argument errors import none of the engine.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from .console import (
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_IN_USE,
    EXIT_INPUT,
    EXIT_OK,
    ConsoleProgress,
    _install_sigterm_as_interrupt,
    _stop_exit_code,
    _TerminalSafe,
    ignore_stop_signals_at_exit,
    work_over,
)
from .models import _add_models_parser
from .options import CLI_NAMES as CLI_NAMES  # re-exported: tests and bench import these from pld_desktop.cli
from .options import _add_run_options, _nonnegative_int
from .options import _apply_run_overrides as _apply_run_overrides
from .rules import _add_loop_parsers
from .runs import _run, _with_student
from .status import _print_status as _print_status
from .status import _status_dict as _status_dict
from .status import cmd_batch, cmd_status


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
    from ..core.dataset import ColumnMapping, SplitSettings, load_dataset
    from ..core.new_project import create_project

    train, dev, test = _parse_ratios(args.ratios)
    mapping = ColumnMapping(text_columns=tuple(args.text), label_column=args.label,
                            template=args.template.replace("\\n", "\n") if args.template else None,
                            id_column=args.id, split_column=args.split_column, group_column=args.group,
                            keep_source_split=args.keep_split, merge_labels=args.merge_labels)
    dataset = load_dataset(args.csv, mapping, SplitSettings(train, dev, test, args.seed))
    for w in dataset.warnings:
        print(f"warning: {w.message}", file=sys.stderr)
    create_project(args.project, dataset, source_name=Path(args.csv).name, task=args.task, overwrite=args.force)
    counts = dataset.split_counts()
    print(f"Created {args.project}: {len(dataset.rows)} rows, labels {', '.join(dataset.labels)}; "
          f"train {counts['train']} / dev {counts['dev']} / test {counts['test']} (test is locked).")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    phases = args.phase or [1, 2, 3, 4]
    return _run(args.project, args, phases, "run")


def cmd_eval(args: argparse.Namespace) -> int:
    """Score a version (default: the working one) on dev, or on test (phase 4: with zero-shot and few-shot)."""
    from ..core.phases.evaluation import run_evaluation
    from ..core.scoring import latest_scores, score_version, test_use_count
    from ..core.working import require_working_rule_set

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
    from ..core.export import default_export_formats, export_version
    from ..core.project import Project
    out = Path(args.out) if args.out else Path(args.project).resolve().parent / "exports"
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out names a folder for the exported files, but {out} is a file; "
                         "choose a folder (it is created when missing).")
    with Project.open(args.project) as project:
        from ..core.working import require_working_rule_set
        rs_id = require_working_rule_set(project, args.rule_set)
        formats = args.format or default_export_formats(project, rs_id)
        paths = export_version(project, out, formats, rule_set_id=rs_id)
    print(f"Exported rule-set version {rs_id}:", file=sys.stderr)
    for p in paths:
        print(p)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from ..core.export import export_rule_set
    from ..core.project import Project
    from ..core.settings import load_settings
    from ..resources import build_demo_project

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

    r = sub.add_parser("run", help="run phases (all by default); a rerun resumes")
    r.add_argument("project")
    r.add_argument("--phase", type=int, action="append", choices=[1, 2, 3, 4], help="phase to run (repeatable)")
    r.add_argument("--task")
    r.add_argument("--retry-failed", action="store_true",
                   help="retry the teacher items given up after their attempts (a plain rerun does not)")
    _add_run_options(r)
    r.set_defaults(func=cmd_run)

    e = sub.add_parser("eval", help="score a version on dev (default), or on test against zero-shot and 5-shot")
    e.add_argument("project")
    e.add_argument("--rule-set", type=int, help="rule-set version to score (default: the working version)")
    e.add_argument("--split", choices=["dev", "test"], default="dev",
                   help="dev: the everyday score, with its parent and the baselines (default); test: the final "
                        "check (phase 4; every version scored on test is counted)")
    _add_run_options(e)
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
    _add_loop_parsers(sub, _add_run_options)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    ignore_stop_signals_at_exit()
    saved = sys.stdout, sys.stderr
    if not isinstance(sys.stdout, _TerminalSafe):
        sys.stdout, sys.stderr = _TerminalSafe(sys.stdout), _TerminalSafe(sys.stderr)
    try:
        code = _main(argv)
    finally:
        sys.stdout, sys.stderr = saved
    work_over(code)  # the code main mapped (from an error too): a late stop signal exits with it
    return code


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


def _run_command(args: argparse.Namespace) -> int:
    """The command itself; a stop signal after it has returned or raised exits at once (console.work_over)."""
    try:
        code = int(args.func(args) or 0)
    except BaseException:
        work_over(None)
        raise
    work_over(code)
    return code


def _dispatch(args: argparse.Namespace) -> int:
    from ..backends.bundled import ModelFileError
    from ..core.batch_extraction import BatchJobFailed
    from ..core.dataset import DatasetError
    from ..core.evaluate import StudentFailed
    from ..core.project import DatabaseError, DiskFull, OperationalError, ProjectFileError, ProjectInUse, in_use_message
    from ..core.protocols import PromptTooLong, TeacherError
    try:
        return _run_command(args)
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
        from ..backends.openai_student import OpenAIServerError  # here: httpx is not imported by every command
        if isinstance(exc, OpenAIServerError):  # a student server that cannot be reached or refuses: said as is
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_FAILED
        if os.environ.get("PLD_DEBUG"):
            raise
        print(f"error: unexpected internal error ({type(exc).__name__}: {exc}). Completed work is saved; "
              "rerun with PLD_DEBUG=1 for the details and report them.", file=sys.stderr)
        return EXIT_FAILED
