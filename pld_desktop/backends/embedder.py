"""Sentence-transformers embedder, by default the bundled all-MiniLM-L6-v2, fully offline."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


class SentenceTransformerEmbedder:
    """Loads lazily (torch import takes seconds) and is safe to call from any thread (calls are serialised)."""

    def __init__(self, model_path: str | os.PathLike[str] | None = None, *, batch_size: int = 64) -> None:
        if model_path is None:
            from .bundled import bundled_embedder_path
            model_path = bundled_embedder_path()
        self.model_path = Path(model_path)
        if not self.model_path.is_dir():
            raise ValueError(f"Embedding model folder not found: {self.model_path}")
        self.model_id = f"st:{self.model_path.name}"
        if self.model_path.name == "model":  # the bundled package names its folder 'model'
            self.model_id = "st:all-MiniLM-L6-v2"
        self.batch_size = batch_size
        self._model: SentenceTransformer | None = None
        self._lock = threading.Lock()
        self.dim = 0

    def _load(self) -> Any:  # a sentence_transformers.SentenceTransformer (imported on first use)
        if self._model is None:
            # Hub variables are read at import time: make sure nothing tries the network.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer
            self._model = SentenceTransformer(str(self.model_path), device="cpu", local_files_only=True)
            dim_of = getattr(self._model, "get_embedding_dimension", None) or \
                self._model.get_sentence_embedding_dimension  # renamed in sentence-transformers 6
            self.dim = int(dim_of() or 0)
        return self._model

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            model = self._load()
            if not texts:
                return np.zeros((0, self.dim), dtype=np.float32)
            vecs = model.encode(list(texts), batch_size=self.batch_size, show_progress_bar=False,
                                convert_to_numpy=True, normalize_embeddings=True)
        return np.asarray(vecs, dtype=np.float32)

    def close(self) -> None:
        """Nothing to free early: the loaded model goes with this object (the protocol's no-op close)."""
