"""Sentence-transformers embedder, by default the bundled all-MiniLM-L6-v2, fully offline; in this process
(`SentenceTransformerEmbedder`, the CLI) or in a child process (`ChildProcessEmbedder`, the window)."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pld_desktop.backends.passing_thread import run_on_a_passing_thread
from pld_desktop.core.fast_paths import fast_paths_enabled

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


class SentenceTransformerEmbedder:
    """Loads lazily (torch import takes seconds) and is safe to call from any thread (calls are serialised)."""

    def __init__(self, model_path: str | os.PathLike[str] | None = None, *, batch_size: int = 64) -> None:
        self.model_path, self.model_id = _resolve(model_path)
        self.batch_size = batch_size
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()
        self.dim = 0

    def _load(self) -> Any:  # a sentence_transformers.SentenceTransformer (imported on first use)
        if self._model is None:
            # Hub variables are read at import time: make sure nothing tries the network.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            # transformers 5.2x "kernelizes" a loaded model with compute kernels from the Hub by default; the app
            # runs the embedder offline on the CPU with torch's own layers (and the bundle leaves `kernels` out).
            os.environ.setdefault("USE_HUB_KERNELS", "NO")
            from sentence_transformers import SentenceTransformer
            self._model = SentenceTransformer(str(self.model_path), device="cpu", local_files_only=True)
            dim_of = getattr(self._model, "get_embedding_dimension", None) or \
                self._model.get_sentence_embedding_dimension  # renamed in sentence-transformers 6
            self.dim = int(dim_of() or 0)
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            if fast_paths_enabled():  # torch's OpenMP team then ends with the work (passing_thread.py)
                return run_on_a_passing_thread(lambda: self._embed(texts), name="pld-embedder")
            return self._embed(texts)

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        model = self._load()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = model.encode(list(texts), batch_size=self.batch_size, show_progress_bar=False,
                            convert_to_numpy=True, normalize_embeddings=True)
        return np.asarray(vecs, dtype=np.float32)

    def close(self) -> None:
        """Nothing to free early: the loaded model goes with this object (the protocol's no-op close)."""


def _resolve(model_path: str | os.PathLike[str] | None) -> tuple[Path, str]:
    """The model folder (the bundled one when None) and the embedder's identity, the embedding cache's key."""
    if model_path is None:
        from .bundled import bundled_embedder_path
        model_path = bundled_embedder_path()
    path = Path(model_path)
    if not path.is_dir():
        raise ValueError(f"Embedding model folder not found: {path}")
    # The bundled package names its folder 'model'.
    return path, "st:all-MiniLM-L6-v2" if path.name == "model" else f"st:{path.name}"


class EmbedderProcessError(RuntimeError):
    """The embedding process could not start or ended unexpectedly (said in words; the run can be resumed)."""


class ChildProcessEmbedder:
    """The same embedder in a child process, started on first use and shared by every task of this process.

    The window's reason: importing torch and sentence-transformers holds the GIL for stretches of 0.1-0.8 s
    (extension loading, module set-up), and on a worker thread of the window that froze it each time a run or a
    conflict pass first needed embeddings. In a child process the import and the model never touch the window's
    GIL; texts go out and float32 vectors come back over a pipe. One child per model folder stays for the life
    of the process (a new child per task would pay the import again); `close()` of a handle frees nothing,
    `shutdown_child_embedders()` (and interpreter exit) ends them.
    """

    def __init__(self, model_path: str | os.PathLike[str] | None = None, *, batch_size: int = 64) -> None:
        self.model_path, self.model_id = _resolve(model_path)
        self.batch_size = batch_size
        self._child = _child_for(self.model_path, batch_size)
        self.dim = self._child.dim  # 0 until the child has loaded the model (as in-process, until first use)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        vectors = self._child.embed(texts)
        self.dim = self._child.dim
        return vectors

    def close(self) -> None:
        """Nothing to free: the child is shared by the tasks of this process (see the class)."""


class _Child:
    def __init__(self, model_path: Path, batch_size: int) -> None:
        self.model_path = model_path
        self.batch_size = batch_size
        self.dim = 0
        self._lock = threading.Lock()  # one request at a time on the pipe
        self._process: Any = None
        self._conn: Any = None

    def _start(self) -> None:
        import atexit
        import multiprocessing
        # Registered after multiprocessing's own exit hook, so it runs first: a clean stop, where that hook would
        # terminate the child and the resource tracker warn about the lock tqdm made in it.
        atexit.register(self.stop)
        # spawn, never fork: the parent is a Qt application with threads, and a forked copy of it is unsafe.
        ctx = multiprocessing.get_context("spawn")
        parent_end, child_end = ctx.Pipe()
        process = ctx.Process(target=_serve, args=(child_end, str(self.model_path), self.batch_size),
                              name="pld-embedder", daemon=True)
        try:
            with _without_main_module():
                process.start()
        except OSError as exc:
            raise EmbedderProcessError(f"The embedding process could not be started: {exc}.") from exc
        child_end.close()
        self._process, self._conn = process, parent_end
        kind, payload = self._receive()
        if kind != "ready":
            self._stop()
            raise EmbedderProcessError(f"The embedding model could not be loaded: {payload}")
        self.dim = int(payload)

    def _receive(self) -> tuple[str, Any]:
        try:
            message: tuple[str, Any] = self._conn.recv()
        except (EOFError, OSError) as exc:
            code = self._process.exitcode if self._process is not None else None
            self._stop()
            raise EmbedderProcessError(
                "The embedding process ended unexpectedly"
                + (f" (exit code {code})" if code is not None else "") + "; run the step again.") from exc
        return message

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            if self._process is None:
                self._start()
            if not texts:
                return np.zeros((0, self.dim), dtype=np.float32)
            try:
                self._conn.send(("embed", [str(t) for t in texts]))
            except (BrokenPipeError, OSError) as exc:
                self._stop()
                raise EmbedderProcessError("The embedding process ended unexpectedly; run the step again.") from exc
            kind, payload = self._receive()
            if kind != "ok":
                raise EmbedderProcessError(f"Embedding failed: {payload}")
            return np.asarray(payload, dtype=np.float32)

    def _stop(self) -> None:
        process, conn, self._process, self._conn = self._process, self._conn, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.send(("stop", None))
            with contextlib.suppress(Exception):
                conn.close()
        if process is not None:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)

    def stop(self) -> None:
        with self._lock:
            self._stop()


_spawn_lock = threading.Lock()


@contextlib.contextmanager
def _without_main_module() -> Iterator[None]:
    """Spawn without re-running the parent's main module in the child. multiprocessing's spawn runs it there
    (as __mp_main__) so that a target defined in it can be found; ours lives in this module. In the bundle the main
    module is PyInstaller's entry script, absent on disk, and the child died of it; an unguarded script would
    start itself again. The child needs only this module, which it imports to unpickle `_serve`."""
    import multiprocessing.spawn as spawn
    real = spawn.get_preparation_data

    def preparation_data(name: str) -> dict[str, Any]:
        data: dict[str, Any] = real(name)
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
        return data

    with _spawn_lock:
        spawn.get_preparation_data = preparation_data  # only while this process starts (the lock)
        try:
            yield
        finally:
            spawn.get_preparation_data = real


_children: dict[tuple[Path, int], _Child] = {}
_children_lock = threading.Lock()


def _child_for(model_path: Path, batch_size: int) -> _Child:
    with _children_lock:
        key = (model_path.resolve(), batch_size)
        if key not in _children:
            _children[key] = _Child(model_path, batch_size)
        return _children[key]


def shutdown_child_embedders() -> None:
    """End every embedding process of this process (the window's exit; tests)."""
    with _children_lock:
        children = list(_children.values())
        _children.clear()
    for child in children:
        child.stop()


def _serve(conn: Any, model_path: str, batch_size: int) -> None:  # in the child process
    """Load the model, say ("ready", dim), then answer ("embed", texts) with ("ok", vectors) until told to stop
    or the parent's end of the pipe closes."""
    # tqdm's default lock is a multiprocessing semaphore, which the resource tracker reports as leaked when this
    # child ends; the child draws no bars anyway (the window shows its own progress).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        from tqdm import tqdm
        tqdm.set_lock(threading.RLock())
    except ImportError:
        pass
    try:
        embedder = SentenceTransformerEmbedder(model_path, batch_size=batch_size)
        embedder.embed(["warm-up"])
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", embedder.dim))
    while True:
        try:
            kind, payload = conn.recv()
        except (EOFError, OSError):
            return
        if kind != "embed":
            return
        try:
            conn.send(("ok", embedder.embed(payload)))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
