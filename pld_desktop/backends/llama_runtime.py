"""A llama.cpp model's owner thread, how it is loaded, and its chat template.

A `llama_cpp.Llama` is not thread-safe (house style point 3, library notes section 1): every model gets one
`LlamaOwner` whose single worker thread constructs it, runs every call on it, and frees it. The rest of the
llama.cpp plumbing lives beside it: gguf_file.py (file checks, header, identity), prefix_cache.py,
context_cursor.py, cpu_probe.py (AMX guard) and batched_generation.py.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import llama_cpp
import llama_cpp.llama_cpp as llama_capi
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from pld_desktop.backends.bundled import ModelFileError
from pld_desktop.backends.cpu_probe import extra_buffer_types_usable, smallest_probe_model
from pld_desktop.backends.gguf_file import check_fits_memory, check_gguf_file
from pld_desktop.backends.quiet_load import quiet_llama
from pld_desktop.core.fast_paths import fast_paths_enabled

__all__ = ["LlamaOwner", "gguf_chat_formatter", "load_llama", "template_supports_system"]

T = TypeVar("T")
_default_params_lock = threading.Lock()


# ---------------------------------------------------------------------------
# Chat templates
# ---------------------------------------------------------------------------
def gguf_chat_formatter(llama: llama_cpp.Llama, *, add_generation_prompt: bool = True) -> Jinja2ChatFormatter | None:
    """The model's own chat template (GGUF `tokenizer.chat_template`) as llama-cpp-python renders it for
    `create_chat_completion`; None if the file has no template. Call on the model's owner thread."""
    template = (llama.metadata or {}).get("tokenizer.chat_template")
    if not template:
        return None

    def token_text(token_id: int) -> str:
        return llama._model.token_get_text(token_id) if token_id != -1 else ""  # as Llama.__init__ does

    return Jinja2ChatFormatter(template=template, eos_token=token_text(llama.token_eos()),
                               bos_token=token_text(llama.token_bos()),
                               add_generation_prompt=add_generation_prompt, stop_token_ids=[llama.token_eos()])


def template_supports_system(formatter: Jinja2ChatFormatter) -> bool:
    """Whether a template keeps a system message (some drop it silently, some raise)."""
    marker = "PLD-SYSTEM-MARKER-7f3a"
    try:
        prompt = formatter(messages=[{"role": "system", "content": marker},
                                     {"role": "user", "content": "hello"}]).prompt
    except Exception:
        return False
    return marker in prompt


def load_llama(model_path: str | os.PathLike[str], *, use_extra_bufts: bool = True,
               **kwargs: Any) -> llama_cpp.Llama:
    """`llama_cpp.Llama(model_path, **kwargs)`, optionally with the model parameter use_extra_bufts=False, which
    `Llama.__init__` does not expose: its llama_model_default_params() is wrapped for the duration of the call
    (loads are serialised by a lock so no other load sees the wrapper). The load is quiet without llama-cpp-python's
    verbose=False, which silences the whole process (quiet_load.py)."""
    kwargs.pop("verbose", None)
    with _default_params_lock:
        if use_extra_bufts:
            return _quiet_load(model_path, kwargs)
        original = llama_capi.llama_model_default_params

        def default_params_without_extra_bufts() -> llama_capi.llama_model_params:
            params: llama_capi.llama_model_params = original()  # the ctypes wrappers are typed Any
            params.use_extra_bufts = False
            return params

        llama_capi.llama_model_default_params = default_params_without_extra_bufts
        try:
            return _quiet_load(model_path, kwargs)
        finally:
            llama_capi.llama_model_default_params = original


def _quiet_load(model_path: str | os.PathLike[str], kwargs: dict[str, Any]) -> llama_cpp.Llama:
    with quiet_llama():
        llama = llama_cpp.Llama(model_path=str(model_path), verbose=True, **kwargs)
    llama.verbose = False  # its later calls print timings and cache notes only when verbose
    return llama


# ---------------------------------------------------------------------------
# The owner thread
# ---------------------------------------------------------------------------
_live_owners: weakref.WeakSet[LlamaOwner] = weakref.WeakSet()


@atexit.register
def _close_live_owners() -> None:
    for owner in list(_live_owners):
        owner.close()


class LlamaOwner:
    """The one worker that constructs a `llama_cpp.Llama`, runs every call on it and frees it.

    `submit(fn)` queues `fn(llama)` and returns a Future; `call(fn)` waits for the result. Jobs run one at a time in
    FIFO order on the owner's worker thread; a job must not `call()` its own owner (that would deadlock, so it
    raises instead). Functions must not keep references to the Llama or to its buffers after they return.
    The constructor blocks until the model is loaded and raises `ModelFileError` for a missing, non-GGUF or
    unloadable (truncated, corrupted, unsupported) file.

    With `retire_when_idle` (the default on the fast paths) the worker thread ends whenever the queue is empty and
    the next job starts a new one (jobs still never overlap): an idle model holds no OpenMP team, which would slow
    every other model's decodes (passing_thread.py says how much and why).
    """

    def __init__(self, model_path: str | os.PathLike[str], *, n_ctx: int, n_threads: int | None = None,
                 n_threads_batch: int | None = None, seed: int = 0, name: str = "llama",
                 use_extra_bufts: bool | None = None, retire_when_idle: bool | None = None,
                 **llama_kwargs: Any) -> None:
        self.model_path = check_gguf_file(model_path)
        check_fits_memory(self.model_path)
        if n_ctx <= 0:
            raise ValueError(f"n_ctx must be positive, got {n_ctx}")
        if use_extra_bufts is None:
            use_extra_bufts = extra_buffer_types_usable(smallest_probe_model(self.model_path))
        self.use_extra_bufts = use_extra_bufts
        self.retire_when_idle = fast_paths_enabled() if retire_when_idle is None else bool(retire_when_idle)
        self._kwargs = dict(n_ctx=int(n_ctx), n_threads=n_threads, n_threads_batch=n_threads_batch, seed=seed,
                            **llama_kwargs)
        self._name = f"llama-owner:{name}"
        self._jobs: deque[tuple[Future[Any], Callable[[llama_cpp.Llama], Any]]] = deque()
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)  # a kept (non-retiring) worker waits here for jobs
        self._worker: threading.Thread | None = None       # the thread running jobs now (None: none alive)
        self._llama: llama_cpp.Llama | None = None
        self._closed = False
        self.threads_started = 0  # worker threads started so far (tests, diagnostics)
        loaded: Future[None] = Future()
        with self._lock:
            self._enqueue(loaded, lambda _none: self._load())
        try:
            loaded.result()
        except BaseException:
            with self._lock:
                self._closed = True
                worker = self._worker
                self._wakeup.notify_all()
            if worker is not None and worker is not threading.current_thread():
                worker.join()
            raise
        _live_owners.add(self)

    # -- worker ------------------------------------------------------------------------------------------
    def _load(self) -> None:  # the first job
        try:
            self._llama = load_llama(self.model_path, use_extra_bufts=self.use_extra_bufts, **self._kwargs)
        except ValueError as exc:
            text = str(exc)
            if "Failed to load model" in text or "Failed to get vocab" in text:
                raise ModelFileError(
                    f"llama.cpp could not load the model file {self.model_path}: the file may be truncated or "
                    f"corrupted, or its architecture is not supported by llama-cpp-python "
                    f"{llama_cpp.__version__}.") from exc
            if "Failed to create llama_context" in text:
                raise RuntimeError(
                    f"llama.cpp could not create a context of {self._kwargs['n_ctx']} tokens for "
                    f"{self.model_path.name} (not enough memory?). Lower the context size.") from exc
            raise

    def _free(self) -> None:  # the last job
        llama, self._llama = self._llama, None
        if llama is not None:
            llama.close()
            del llama

    def _enqueue(self, future: Future[Any], fn: Callable[[llama_cpp.Llama], Any]) -> None:
        """Queue a job (the lock held) and make sure a worker thread will run it."""
        self._jobs.append((future, fn))
        if self._worker is None:
            self._worker = threading.Thread(target=self._run, name=self._name, daemon=True)
            self.threads_started += 1
            self._worker.start()
        else:
            self._wakeup.notify()

    def _next(self) -> tuple[Future[Any], Callable[[llama_cpp.Llama], Any]] | None:
        """The next job, or None when this worker is to end (it has then let go of the owner)."""
        with self._lock:
            while not self._jobs:
                if self.retire_when_idle or (self._closed and self._llama is None):
                    self._worker = None
                    return None
                self._wakeup.wait()
            return self._jobs.popleft()

    def _run(self) -> None:
        while (item := self._next()) is not None:
            future, fn = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(self._llama))  # type: ignore[arg-type]  # None only for _load and _free
                except BaseException as exc:
                    future.set_exception(exc)
            del item, future, fn

    # -- public ------------------------------------------------------------------------------------------
    @property
    def on_owner_thread(self) -> bool:
        return self._worker is not None and threading.current_thread() is self._worker

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, fn: Callable[[llama_cpp.Llama], T]) -> Future[T]:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"The model {self.model_path.name} has been closed.")
            future: Future[T] = Future()
            self._enqueue(future, fn)
        return future

    def call(self, fn: Callable[[llama_cpp.Llama], T]) -> T:
        if self.on_owner_thread:
            raise RuntimeError("LlamaOwner.call() from a job on its own owner thread would deadlock: "
                               "call the function directly")
        return self.submit(fn).result()

    def close(self) -> None:
        """Finish the queued jobs, free the model and stop the thread. Safe to call more than once."""
        freed: Future[None] = Future()
        with self._lock:
            if self._closed:
                return
            self._closed = True
            # Nothing running nor queued (an idle retiring owner): free it here, no thread to start (at exit too).
            idle = self._worker is None and not self._jobs
            if not idle:
                self._enqueue(freed, lambda _llama: self._free())
            inside = self.on_owner_thread
        if idle:
            self._free()
        elif not inside:
            freed.exception()  # wait: the model is freed once this returns
            with self._lock:
                worker = self._worker
            if worker is not None and worker is not threading.current_thread():
                worker.join()
        _live_owners.discard(self)

    def __enter__(self) -> LlamaOwner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


