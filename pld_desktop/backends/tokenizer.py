"""Counts a text's tokens with a student model's own vocabulary, for the live prompt preview.

A vocab-only llama.cpp load (no weights, ~0.1 s) owned by the caller's thread: the GUI counts tokens without
touching the student's owner thread, which may be busy evaluating.
"""

from __future__ import annotations

import threading
from pathlib import Path


class VocabTokenizer:
    """Call only from one thread (the GUI thread); a lock guards against accidental sharing."""

    def __init__(self, model_path: str | Path | None = None) -> None:
        from llama_cpp import Llama

        from .bundled import bundled_student_path
        from .llama_runtime import check_gguf_file
        path = check_gguf_file(model_path) if model_path else bundled_student_path()
        self.path = path
        self._lock = threading.Lock()
        self._llama = Llama(model_path=str(path), vocab_only=True, verbose=False)

    def count(self, text: str) -> int:
        with self._lock:
            return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def close(self) -> None:
        with self._lock:
            self._llama.close()
