"""LlamaOwner's worker (kept, or retired when idle) and passing threads: jobs never overlap, and work done on a
retiring owner or a passing thread leaves no OS threads (OpenMP teams) behind."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pld_desktop.backends import bundled
from pld_desktop.backends.llama_runtime import LlamaOwner
from pld_desktop.backends.passing_thread import run_on_a_passing_thread


def os_threads() -> set[str]:
    """The ids of this process's OS threads (Python's and the ones C libraries start, e.g. OpenMP teams)."""
    return set(os.listdir("/proc/self/task"))


def new_threads_settle(before: set[str], expected: Callable[[int], bool], timeout_s: float = 10.0) -> int:
    """How many OS threads started after `before` are still alive, once `expected(count)` holds (threads end a
    moment after their join; threads of other tests that end meanwhile do not count)."""
    deadline = time.monotonic() + timeout_s
    while True:
        count = len(os_threads() - before)
        if expected(count) or time.monotonic() > deadline:
            return count
        time.sleep(0.02)


def decode_a_little(llama: Any) -> None:
    llama.reset()
    llama.eval(llama.tokenize(b"The card was charged twice and nobody answers the phone."))


pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")


def test_a_passing_thread_returns_the_result_and_raises_the_error() -> None:
    names: list[str] = []
    assert run_on_a_passing_thread(lambda: names.append(threading.current_thread().name) or 7, name="p") == 7
    assert names == ["p"]
    with pytest.raises(ZeroDivisionError):
        run_on_a_passing_thread(lambda: 1 / 0)
    assert not [t for t in threading.enumerate() if t.name == "p"]


@pytest.mark.slow
@pytest.mark.parametrize("retire", [True, False], ids=["retiring", "kept"])
def test_owner_contract_in_both_modes(retire: bool) -> None:
    owner = LlamaOwner(bundled.bundled_local_teacher_path(), n_ctx=512, name="contract", retire_when_idle=retire)
    assert owner.call(lambda llama: threading.current_thread().name) == "llama-owner:contract"
    assert not owner.on_owner_thread
    with pytest.raises(RuntimeError, match="deadlock"):
        owner.call(lambda llama: owner.call(lambda inner: 1))
    with pytest.raises(ZeroDivisionError):  # job errors reach the caller; the owner keeps working
        owner.call(lambda llama: 1 / 0)
    # Jobs from many threads run one at a time, in the order queued per caller, and all see the same model.
    running, most, seen = [0], [0], set()
    lock = threading.Lock()

    def job(llama: Any) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        seen.add(id(llama))
        time.sleep(0.002)
        with lock:
            running[0] -= 1
        return 1

    with ThreadPoolExecutor(6) as pool:
        assert sum(pool.map(lambda _: owner.call(job), range(60))) == 60
    assert most[0] == 1 and len(seen) == 1
    futures = [owner.submit(lambda llama, i=i: i) for i in range(5)]
    owner.close()  # queued jobs finish first, then the model is freed
    assert [f.result() for f in futures] == list(range(5))
    owner.close()
    with pytest.raises(RuntimeError, match="closed"):
        owner.submit(lambda llama: None)
    assert not [t for t in threading.enumerate() if t.name == "llama-owner:contract"]
    if not retire:
        assert owner.threads_started == 1


@pytest.mark.slow
def test_an_idle_retiring_owner_holds_no_threads_and_a_kept_one_does() -> None:
    """The OpenMP team of a decode on 2+ threads is OS threads: gone with a retiring owner's idle worker."""
    cores = max(2, os.cpu_count() or 2)
    before = os_threads()
    retiring = LlamaOwner(bundled.bundled_local_teacher_path(), n_ctx=512, n_threads=cores, n_threads_batch=cores,
                          name="retiring", retire_when_idle=True)
    kept = LlamaOwner(bundled.bundled_local_teacher_path(), n_ctx=512, n_threads=cores, n_threads_batch=cores,
                      name="kept", retire_when_idle=False)
    try:
        retiring.call(decode_a_little)
        kept.call(decode_a_little)
        # kept: its worker and that worker's team (cores - 1 pool threads) stay; retiring: nothing stays.
        assert new_threads_settle(before, lambda n: n <= cores) == cores
        assert not [t for t in threading.enumerate() if t.name == "llama-owner:retiring"]
        started = retiring.threads_started
        retiring.call(decode_a_little)  # a new worker for the next job
        assert retiring.threads_started == started + 1
    finally:
        retiring.close()
        kept.close()
    assert new_threads_settle(before, lambda n: n == 0) == 0


@pytest.mark.slow
def test_the_embedder_on_the_fast_path_leaves_no_threads_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    from pld_desktop.backends.embedder import SentenceTransformerEmbedder
    embedder = SentenceTransformerEmbedder()
    monkeypatch.setenv("PLD_FAST_PATHS", "1")
    # The import and load first (torch starts threads of its own), on a passing thread so no team stays here.
    run_on_a_passing_thread(lambda: embedder._embed(["warm-up"]))
    before = os_threads()
    vectors = embedder.embed([f"a rule about late fees number {i}" for i in range(64)])
    assert vectors.shape == (64, embedder.dim)
    assert new_threads_settle(before, lambda n: n == 0) == 0
