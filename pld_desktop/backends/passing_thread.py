"""Run CPU-parallel work on a thread that ends with it, so no idle OpenMP team outlives the work.

llama.cpp (ggml) and torch here share one libgomp, and every thread that has run an OpenMP parallel region keeps
a team of pool threads for as long as it lives. Once the process holds more such threads than cores (the
teacher's and the student's llama.cpp owners, the thread that ran the embedder), libgomp spins only ~100 times
at each barrier before sleeping in the kernel, and ggml passes hundreds of barriers per decode: a one-token
decode of the bundled teacher took 20-25 ms instead of 12-14 on 2 cores (`python -m bench.owner_threads`).
Work done on a passing thread leaves no team behind; `LlamaOwner(retire_when_idle=True)` does the same for a
model's jobs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

__all__ = ["run_on_a_passing_thread"]

T = TypeVar("T")


def run_on_a_passing_thread(fn: Callable[[], T], name: str = "pld-passing") -> T:
    """`fn()` on a new thread that ends when it returns; its result or exception, here."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            outcome.append(fn())
        except BaseException as exc:  # handed to the caller
            failure.append(exc)

    thread = threading.Thread(target=work, name=name, daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
