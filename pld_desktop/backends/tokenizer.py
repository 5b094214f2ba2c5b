"""Counts a text's tokens with a student model's own vocabulary, for the live prompt preview.

A vocab-only llama.cpp load (no weights, ~0.1 s) owned by the caller's thread: the GUI counts tokens without
touching the student's owner thread, which may be busy evaluating. With `background=True` the file checks
(the bundled model's sha256, ~0.5 s) and the load run on a helper thread, so a window never waits for them:
until `ready`, `count()` raises `TokenizerLoading` and the caller shows an approximate count.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any


class TokenizerLoading(RuntimeError):
    """The vocabulary is still being loaded in the background."""


class VocabTokenizer:
    """Call `count()` only from one thread (the GUI thread); a lock guards against accidental sharing."""

    def __init__(self, model_path: str | Path | None = None, *, background: bool = False,
                 on_ready: Callable[[], None] | None = None) -> None:
        """`on_ready` is called on the loading thread once the vocabulary is usable or has failed."""
        self.path: Path | None = None
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._llama: Any = None
        self._done = threading.Event()
        self._on_ready = on_ready
        if background:
            threading.Thread(target=self._load, args=(model_path,), name="pld-vocab", daemon=True).start()
        else:
            self._load(model_path)
            if self.error is not None:
                raise self.error

    def _load(self, model_path: str | Path | None) -> None:
        try:
            from .bundled import bundled_student_path
            from .gguf_file import check_gguf_file
            from .llama_runtime import load_llama
            path = check_gguf_file(model_path) if model_path else bundled_student_path()
            llama = load_llama(path, vocab_only=True)  # quiet, and serialised with the other loads
            with self._lock:
                self.path, self._llama = path, llama
        except Exception as exc:
            self.error = exc
        finally:
            self._done.set()
            if self._on_ready is not None:
                try:
                    self._on_ready()
                except RuntimeError:
                    # The window that asked (a Qt signal's owner) was closed while the vocabulary loaded;
                    # there is no one left to tell, and a daemon thread's traceback would only alarm.
                    pass

    @property
    def ready(self) -> bool:
        """True once loading has finished (successfully or not)."""
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def count(self, text: str) -> int:
        if not self._done.is_set():
            raise TokenizerLoading("still loading")
        if self.error is not None:
            raise RuntimeError(str(self.error))
        with self._lock:
            if self._llama is None:
                raise RuntimeError("the tokenizer is closed")
            return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def close(self) -> None:
        # A close during a background load waits for it, on the loading thread's terms (~0.1 s at most).
        def finish() -> None:
            with self._lock:
                llama, self._llama = self._llama, None
            if llama is not None:
                llama.close()
        if self._done.is_set():
            finish()
        else:
            def wait_then_finish() -> None:
                self._done.wait()
                finish()
            threading.Thread(target=wait_then_finish, daemon=True).start()
