"""A Ctrl-C that arrives while `pld` winds down after a stopped run exits with the stop's code, never by the signal."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from pld_desktop.cli.console import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK


@pytest.mark.parametrize(("code", "expected"), [(EXIT_CANCELLED, EXIT_CANCELLED), (EXIT_OK, EXIT_CANCELLED),
                                                (EXIT_FAILED, EXIT_FAILED)])
def test_a_signal_while_winding_down_exits_with_the_commands_code(code: int, expected: int) -> None:
    # The process stands in for `pld run` after its stop: main has returned `code`, and a non-daemon thread (like
    # the teacher's pool at interpreter exit) is still being joined when the second Ctrl-C comes.
    script = textwrap.dedent(f"""
        import os, signal, sys, threading, time
        from pld_desktop.cli.console import ConsoleProgress, _install_sigint, work_over
        _install_sigint(ConsoleProgress(quiet=True))  # the run's stop handler, still installed
        work_over({code})  # what main does with the code it mapped
        threading.Thread(target=time.sleep, args=(30,)).start()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)
        sys.exit(99)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == expected, proc.stderr[-2000:]
    assert proc.returncode != -signal.SIGINT and "Traceback" not in proc.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_second_stop_after_the_run_returned_but_before_main_did_exits_with_the_stop_code(signum: int) -> None:
    # The race CI met: the first Ctrl-C stopped the run, which returned 130; the second came while the dispatcher
    # and main were still returning, where the run's handler raised KeyboardInterrupt that nothing caught (-2).
    script = textwrap.dedent(f"""
        import argparse, os, signal, sys
        from pld_desktop.cli import _run_command
        from pld_desktop.cli.console import ConsoleProgress, _install_sigint

        def stopped_run(args):
            progress = ConsoleProgress(quiet=True)
            _install_sigint(progress)
            os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C: the run stops after the items in flight
            assert progress.cancelled()
            return 130

        code = _run_command(argparse.Namespace(func=stopped_run))
        os.kill(os.getpid(), {int(signum)})  # the second, before main has returned
        print("not reached", code)
        sys.exit(99)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_CANCELLED, (proc.returncode, proc.stderr[-2000:])
    assert "not reached" not in proc.stdout and "Traceback" not in proc.stderr


@pytest.mark.parametrize("with_fix", [True, False])
def test_a_stop_signal_during_interpreter_teardown_leaves_the_commands_code(with_fix: bool) -> None:
    # The window CI met after the two above were closed: Python puts SIGINT back to its default action before it
    # tears down modules (and llama.cpp's and torch's C++ objects); a Ctrl-C there killed `pld` by the signal (-2).
    # An object whose __del__ runs in that teardown sends the signal, deterministically.
    script = textwrap.dedent(f"""
        import os, signal, sys, time
        from pld_desktop.cli.console import ConsoleProgress, _install_sigint, ignore_stop_signals_at_exit, work_over
        if {with_fix}:
            ignore_stop_signals_at_exit()  # what main does first
        _install_sigint(ConsoleProgress(quiet=True))
        work_over(130)

        class Late:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)

        late = Late()  # a module global: deleted in the module teardown, after the signal handlers are reset
        sys.exit(130)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    if with_fix:
        assert proc.returncode == EXIT_CANCELLED, (proc.returncode, proc.stderr[-2000:])
    else:  # the control: shows that the signal does land in the teardown, where only the fix keeps the code
        assert proc.returncode == -signal.SIGINT, (proc.returncode, proc.stderr[-2000:])
