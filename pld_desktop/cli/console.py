"""How `pld` meets the terminal: exit codes, progress bars on stderr, Ctrl-C and SIGTERM, output that cannot
drive the terminal."""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
import sys
from typing import Any

from ..core.progress import ProgressBase

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
        _exit_if_work_over(signum)
        _stop_signal = signum
        if progress.cancelled():
            raise KeyboardInterrupt
        progress.cancel()
        again = "press Ctrl-C again" if signum == signal.SIGINT else "send SIGTERM again"
        print(f"\nStopping after the items in flight ({again} to stop at once)...", file=sys.stderr)
    work_over_reset()
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


# Set when the command's function has returned or raised (`work_over`): from then on a run's stop handler exits
# at once instead of raising KeyboardInterrupt into the dispatcher's error reporting or main's return, where it
# escaped and Python died of the signal (exit -2 after "Stopped during phase 1", seen under load in CI).
_work_over = False
_work_code: int | None = None


def work_over(code: int | None) -> None:
    """The command's work is over, with `code` (None: it raised, and its handler will say what happened). Called
    again by `main` with the exit code it mapped, so a stop signal while the process winds down (joining the
    teacher's threads, freeing models) exits at once with that code rather than dying of the signal (exit -2)."""
    global _work_over, _work_code
    _work_code, _work_over = code, True


def work_over_reset() -> None:
    """A new command starts (in-process callers run several): its handlers raise again until its work is over."""
    global _work_over, _work_code
    _work_code, _work_over = None, False


_at_exit_registered = False


def ignore_stop_signals_at_exit() -> None:
    """From the last atexit callback to the process's end, ignore SIGINT and SIGTERM. Python then puts every
    signal it handles back to the default action (_PySignal_Fini) and tears down modules and C++ objects (llama.cpp,
    torch): a Ctrl-C landing there killed the process by the signal (exit -2) after the command had ended with its
    code. Ignored signals stay ignored through that teardown. Registered once, at the start of the first command,
    so that it runs after the callbacks registered later (atexit runs them last in, first out)."""
    global _at_exit_registered
    if not _at_exit_registered:
        _at_exit_registered = True
        atexit.register(_ignore_stop_signals)


def _ignore_stop_signals() -> None:
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError, OSError):  # not the main thread, or an embedding that forbids it
            signal.signal(signum, signal.SIG_IGN)


def _exit_if_work_over(signum: int) -> None:
    if _work_over:  # the command has returned: nothing is left to stop, and nothing would catch the raise
        _exit_at_once(signum, _work_code)


def _exit_at_once(signum: int, code: int | None) -> None:
    global _stop_signal
    _stop_signal = signum
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code if code not in (None, EXIT_OK) else _stop_exit_code())


def _install_sigterm_as_interrupt() -> None:
    """Outside a run, SIGTERM unwinds like Ctrl-C, so `finally` blocks remove partial files and release locks."""
    def handler(signum: int, frame: Any) -> None:
        global _stop_signal
        _exit_if_work_over(signum)
        _stop_signal = signum
        raise KeyboardInterrupt
    work_over_reset()
    signal.signal(signal.SIGTERM, handler)



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
