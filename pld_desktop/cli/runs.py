"""Commands that run a model on a project: the settings from the command line, the trust gate, the run lock,
the backends and Ctrl-C, for `pld run` and `pld demo` (the pipeline) and `pld eval` and `pld rules` (the student)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

from ..core.states import RunStatus
from .console import (
    EXIT_CANCELLED,
    EXIT_FAILED,
    EXIT_INPUT,
    EXIT_OK,
    EXIT_QUOTA,
    ConsoleProgress,
    _install_sigint,
    _stop_exit_code,
)
from .options import CLI_NAMES, _accept_trust, _apply_run_overrides
from .status import _print_status


def _run(project_path: str, args: argparse.Namespace, phases: Sequence[int], command: str,
         settings_override: Any = None) -> int:
    from ..backends.factory import DefaultBackends
    from ..backends.trust import TrustStore, UntrustedSettingError
    from ..core.pipeline import PHASE_NAMES, estimate_teacher_run, run_pipeline
    from ..core.project import Project
    from ..core.run_lock import RunLock
    from ..core.settings import load_settings
    from ..core.settings_check import check_settings

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
            from ..core.pipeline import retry_failed_items
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


def _with_student(args: argparse.Namespace, work: Any) -> int:
    """Open the project, apply the run options, load the student and call `work(project, student, settings,
    progress)`; Ctrl-C stops after the item in flight (what was scored is kept)."""
    from ..backends.factory import DefaultBackends
    from ..backends.trust import TrustStore, UntrustedSettingError
    from ..core.progress import Cancelled
    from ..core.project import Project
    from ..core.run_lock import RunLock
    from ..core.settings import load_settings
    from ..core.settings_check import check_settings

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
        from ..core.working import require_working_rule_set
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
