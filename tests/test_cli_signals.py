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
        from pld_desktop.cli.console import exit_at_once_on_signal
        exit_at_once_on_signal({code})
        threading.Thread(target=time.sleep, args=(30,)).start()
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(30)
        sys.exit(99)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == expected, proc.stderr[-2000:]
    assert proc.returncode != -signal.SIGINT and "Traceback" not in proc.stderr
