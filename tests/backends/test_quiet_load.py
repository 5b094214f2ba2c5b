"""Model loads are quiet without silencing the process: llama-cpp-python's verbose=False points file descriptors 1
and 2 at /dev/null during a load, so what other threads printed was lost, and overlapping loads on two threads left
stdout on /dev/null for good. Real bundled models, output captured at the file-descriptor level."""

from __future__ import annotations

import threading
import time

import pytest

from pld_desktop.backends.bundled import bundled_student_path
from pld_desktop.backends.llama_runtime import LlamaOwner, load_llama

CHATTER = ("llama_model_loader", "Model metadata", "print_info", "load_tensors", "system_info", "AVX")


def test_overlapping_loads_on_threads_lose_no_output_and_print_nothing(capfd) -> None:  # type: ignore[no-untyped-def]
    path = bundled_student_path()
    stop = threading.Event()
    loads = [0, 0]

    def loader(k: int) -> None:
        while not stop.is_set() or loads[k] < 2:
            load_llama(path, vocab_only=True)
            loads[k] += 1

    threads = [threading.Thread(target=loader, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for i in range(100):
        print(f"main line {i}", flush=True)
        time.sleep(0.005)
    stop.set()
    for t in threads:
        t.join()
    print("after the loads", flush=True)
    out, err = capfd.readouterr()
    assert min(loads) >= 2
    assert [line for line in out.splitlines() if line.startswith("main line")] == [f"main line {i}" for i in range(100)]
    assert out.splitlines()[-1] == "after the loads"
    assert not [word for word in CHATTER if word in out + err]


@pytest.mark.slow
def test_a_whole_model_load_on_its_owner_thread_prints_nothing(capfd) -> None:  # type: ignore[no-untyped-def]
    owner = LlamaOwner(bundled_student_path(), n_ctx=256, name="quiet-test")
    try:
        print("still here", flush=True)
        assert owner.call(lambda llama: llama.n_ctx()) == 256
    finally:
        owner.close()
    out, err = capfd.readouterr()
    assert out.strip() == "still here"
    assert not [word for word in CHATTER if word in out + err], err[:2000]
