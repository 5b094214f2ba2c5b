"""Loading a llama.cpp model without silencing the rest of the process.

llama-cpp-python's `verbose=False` quiets a load by pointing file descriptors 1 and 2 at /dev/null (`os.dup2`) for
the whole process while it runs. What other threads print meanwhile is lost, and two loads on two threads restore
the descriptors in the wrong order, leaving stdout or stderr on /dev/null for good. Measured: two threads loading
the bundled vocabulary while the main thread printed 200 lines: 14 arrived, and nothing after the loads ended (the
window's vocabulary and model loads overlap this way; the bundled window smoke's report line vanished).
So models load with `verbose=True` inside `quiet_llama()`, which drops only the loading thread's own writes to
`sys.stdout`/`sys.stderr` (llama.cpp's log callback writes through `sys.stderr`); every other thread writes as usual.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

_lock = threading.Lock()
_quiet_threads: set[int] = set()


class _ThreadQuietStream:
    """Forwards to `stream` every write except those of a thread inside `quiet_llama()`."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        if threading.get_ident() in _quiet_threads:
            return len(text)
        return self.stream.write(text)

    def flush(self) -> None:
        if threading.get_ident() not in _quiet_threads:
            self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextlib.contextmanager
def quiet_llama() -> Iterator[None]:
    """Within this block the calling thread's prints are dropped; construct `Llama(..., verbose=True)` in it and set
    `llama.verbose = False` after. On leaving, llama.cpp's log level goes back to errors only."""
    ident = threading.get_ident()
    with _lock:
        _quiet_threads.add(ident)
        for name in ("stdout", "stderr"):
            stream = getattr(sys, name)
            if stream is not None and not isinstance(stream, _ThreadQuietStream):
                setattr(sys, name, _ThreadQuietStream(stream))
    try:
        yield
    finally:
        from llama_cpp._logger import set_verbose
        with _lock:
            _quiet_threads.discard(ident)
            if not _quiet_threads:
                set_verbose(False)  # Llama(verbose=True) set it to debug for the whole process
                for name in ("stdout", "stderr"):
                    stream = getattr(sys, name)
                    if isinstance(stream, _ThreadQuietStream):
                        setattr(sys, name, stream.stream)
