"""Protocols for the model backends (teacher, student, embedder) and the plain data they exchange.

The phases only see these protocols; the adapters live in `pld_desktop.backends`. An optional ability of a
backend (a batch API, concurrent classification) is a small `@runtime_checkable` protocol of its own here, and
callers ask `isinstance(backend, ThatProtocol)` instead of probing for a method by name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel

from .states import BatchState


# ---------------------------------------------------------------------------
# Teacher
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TeacherRequest:
    """One structured-output call: instructions, the user content, and the pydantic schema of the reply."""

    system: str
    user: str
    schema: type[BaseModel]
    kind: str = "generic"  # extraction | merge | review | resolution | probe
    # (property name, regex) hints for backends that decode under a grammar: a small local model is held to
    # the shape "If ..., answer <label>." Remote teachers ignore them; the reply is validated either way.
    grammar_patterns: tuple[tuple[str, str], ...] = ()


@dataclass
class TeacherUsage:
    prompt_tokens: int = 0
    output_tokens: int = 0
    thoughts_tokens: int = 0
    cached_tokens: int = 0
    total_tokens: int = 0


@dataclass
class TeacherReply:
    """The raw reply of one successful HTTP/model call. Validation against the schema happens in the core."""

    text: str
    usage: TeacherUsage = field(default_factory=TeacherUsage)
    latency_s: float = 0.0
    model: str = ""
    finish_reason: str = ""
    # An adapter whose API reports no finish reason for a cut reply sets this instead; such a reply is never stored.
    truncated: bool = False


class TeacherError(Exception):
    """A teacher call failed after the backend's own retries.

    `retryable` says whether trying again later may help; `quota_exhausted` means stop the run
    (resumable) instead of burning more calls. Messages never contain API keys.
    """

    def __init__(self, message: str, *, retryable: bool = False, quota_exhausted: bool = False,
                 status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.quota_exhausted = quota_exhausted
        self.status = status


class Teacher(Protocol):
    """A model that writes structured JSON replies. Must be safe to call from several threads at once
    when `max_concurrency > 1` (local teachers set it to 1 and serialise on their owner thread)."""

    model_id: str  # e.g. "gemini-2.5-flash" or "local:SmolLM2-135M-Instruct.Q4_1.gguf@<sha12>"
    max_concurrency: int
    price_per_million: tuple[float, float]  # (input, output) USD per 1M tokens; (0, 0) for local

    def generate(self, request: TeacherRequest) -> TeacherReply: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class BatchItem:
    key: str  # the request hash; it travels with the request and comes back with its reply
    request: TeacherRequest


@dataclass
class BatchItemResult:
    key: str
    reply: TeacherReply | None  # None when the provider reports an error for this one request
    error: str | None = None


@dataclass
class BatchStatus:
    name: str
    state: BatchState
    results: list[BatchItemResult] | None = None  # set once the state is SUCCEEDED
    message: str = ""  # the provider's own words for a failed job, if any


@runtime_checkable
class BatchTeacher(Teacher, Protocol):
    """A Teacher that can also run many requests as one asynchronous job (same model, same `model_id`).

    `generate` is still needed: replies the batch could not deliver are retried synchronously. Optional: ask
    `isinstance(teacher, BatchTeacher)`.
    """

    max_batch_requests: int  # requests per job
    max_batch_chars: int     # rough size limit per job (inline requests share one HTTP body)

    def submit_batch(self, items: Sequence[BatchItem], display_name: str) -> BatchStatus: ...

    def batch_status(self, name: str) -> BatchStatus: ...


# ---------------------------------------------------------------------------
# Student
# ---------------------------------------------------------------------------
@dataclass
class Prediction:
    """The student's constrained answer for one input."""

    label: str
    probs: dict[str, float]  # one probability per label, from the model's own scores; sums to 1
    latency_s: float


@dataclass(frozen=True)
class ModelIdentity:
    name: str
    path: str
    sha256: str
    size_bytes: int
    backend: str  # "llama.cpp 0.3.36" etc.


class PromptTooLong(ValueError):
    """The system prompt plus an input does not fit the student's context window."""


class Student(Protocol):
    """A local classifier model. Implementations own one thread that runs every model call."""

    identity: ModelIdentity
    n_ctx: int

    def count_tokens(self, text: str) -> int: ...

    def check_fits(self, system_prompt: str, longest_input: str, labels: Sequence[str]) -> None:
        """Raise `PromptTooLong` with a clear message before any work if the prompt cannot fit."""
        ...

    def classify(self, system_prompt: str, text: str, labels: Sequence[str]) -> Prediction: ...

    def close(self) -> None: ...


@runtime_checkable
class ConcurrentStudent(Protocol):
    """Optional for a Student: classifies many inputs with several requests in flight (a server-backed student).

    Ask `isinstance(student, ConcurrentStudent)`; a student without it is called one `classify` at a time.
    """

    def classify_many(self, system_prompt: str, texts: Sequence[str], labels: Sequence[str], *,
                      cancelled: Callable[[], bool] | None = None) -> Iterator[tuple[int, Prediction]]:
        """Yield (index into `texts`, prediction) as each finishes; stop submitting once `cancelled()` is true."""
        ...


# ---------------------------------------------------------------------------
# Embedder
# ---------------------------------------------------------------------------
class Embedder(Protocol):
    model_id: str  # stable identity used as the embedding cache key
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-normalised float32 vectors, shape (len(texts), dim)."""
        ...

    def close(self) -> None:
        """Free what the model holds; an embedder with nothing to free does nothing."""
        ...
