"""Builds the real backends from run settings; each model is loaded once per provider and closed with it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import TypeVar, cast

from ..core.protocols import Embedder, Student, Teacher
from ..core.settings import RunSettings
from .trust import TrustStore, UntrustedSettingError, settings_in_use

_TEACHER_FIELDS = frozenset({"teacher_base_url", "teacher_openai_base_url", "teacher_gguf"})
_STUDENT_FIELDS = frozenset({"student_base_url", "student_gguf"})
_Backend = TypeVar("_Backend", bound="Teacher | Student | Embedder")


class DefaultBackends:
    """The `BackendProvider` used by the CLI and the GUI: bundled models unless settings name others.

    `embedder_in_child=True` (the window's backends, `window_backends`) embeds in a shared child process, so
    the torch import never holds the window's GIL.

    A backend whose endpoint or model file this machine's user has not accepted (`trust`, by default this
    machine's store) is refused before it is built, so no key or example can reach it; every window view and
    the CLI get this guard. `trust=None` turns it off for callers that made the settings themselves.
    """

    def __init__(self, trust: TrustStore | str | None = "this machine", *, embedder_in_child: bool = False) -> None:
        self._embedder_in_child = embedder_in_child  # the window's choice (backends/embedder.ChildProcessEmbedder)
        self._lock = threading.Lock()
        self._cache: dict[Hashable, Teacher | Student | Embedder] = {}
        self._trust: TrustStore | None = TrustStore() if isinstance(trust, str) else trust

    def _check_trust(self, settings: RunSettings, fields: frozenset[str]) -> None:
        if self._trust is None:
            return
        refused = [i for i in settings_in_use(settings) if i.field in fields and not self._trust.is_trusted(i)]
        if refused:
            raise UntrustedSettingError(refused)

    def _get(self, key: Hashable, make: Callable[[], _Backend]) -> _Backend:
        with self._lock:
            if key not in self._cache:
                self._cache[key] = make()
            return cast(_Backend, self._cache[key])  # each key names one kind: its value is what make() built

    def teacher(self, settings: RunSettings) -> Teacher:
        self._check_trust(settings, _TEACHER_FIELDS)
        if settings.teacher == "gemini":
            # The batch teacher is the interactive one plus submit/poll, so it serves both modes.
            from .gemini_batch import GeminiBatchTeacher
            key = ("gemini", settings.teacher_model, settings.teacher_base_url, settings.teacher_concurrency)
            return self._get(key, lambda: GeminiBatchTeacher(
                settings.teacher_model, base_url=settings.teacher_base_url,
                max_concurrency=settings.teacher_concurrency,
                price_per_million=(settings.price_in_per_million, settings.price_out_per_million)))
        if settings.teacher == "local":
            from .local_teacher import LocalTeacher
            return self._get(("local", settings.teacher_gguf), lambda: LocalTeacher(settings.teacher_gguf))
        if settings.teacher == "openai":
            from .openai_teacher import OpenAITeacher
            from .secrets import get_api_key
            if not settings.teacher_openai_base_url:
                raise ValueError("The OpenAI-compatible teacher needs a server address (teacher_openai_base_url).")
            base_url = settings.teacher_openai_base_url  # narrowed to str here, not inside the lambda
            key = ("openai", settings.teacher_openai_base_url, settings.teacher_openai_model,
                   settings.teacher_concurrency)
            return self._get(key, lambda: OpenAITeacher(
                base_url, settings.teacher_openai_model,
                api_key=get_api_key("openai", server=settings.teacher_openai_base_url),
                concurrency=settings.teacher_concurrency,
                price_per_million=_server_prices(settings)))
        raise ValueError(f"Unknown teacher '{settings.teacher}'; choose 'gemini', 'local' or 'openai'.")

    def teacher_endpoint(self, settings: RunSettings) -> str | None:
        """The address the teacher will call (checked for reachability before a phase), None when in-process."""
        from ..core.reachability import teacher_endpoint
        return teacher_endpoint(settings)

    def student(self, settings: RunSettings) -> Student:
        self._check_trust(settings, _STUDENT_FIELDS)
        if settings.student_backend == "openai":
            from .openai_student import OpenAIStudent
            from .secrets import get_api_key
            if not settings.student_base_url:
                raise ValueError("The server-backed student needs a server address (student_base_url).")
            base_url = settings.student_base_url  # narrowed to str here, not inside the lambda
            key: tuple[Hashable, ...] = ("openai-student", settings.student_base_url, settings.student_model,
                   settings.student_prompt_format, settings.student_top_logprobs, settings.student_concurrency)
            return self._get(key, lambda: OpenAIStudent(
                base_url, settings.student_model,
                get_api_key("openai", server=settings.student_base_url),
                concurrency=settings.student_concurrency, prompt_format=settings.student_prompt_format,
                top_logprobs=settings.student_top_logprobs))
        from .llama_student import LlamaStudent
        key = ("student", settings.student_gguf, settings.student_n_ctx, settings.student_threads)
        return self._get(key, lambda: LlamaStudent(settings.student_gguf, n_ctx=settings.student_n_ctx,
                                                   n_threads_batch=settings.student_threads))

    def embedder(self, settings: RunSettings) -> Embedder:
        self._check_trust(settings, frozenset({"embedder"}))
        from .embedder import ChildProcessEmbedder, SentenceTransformerEmbedder
        kind = ChildProcessEmbedder if self._embedder_in_child else SentenceTransformerEmbedder
        return self._get(("embedder", settings.embedder), lambda: kind(settings.embedder))

    def close(self) -> None:
        with self._lock:
            for backend in self._cache.values():
                backend.close()
            self._cache.clear()


def _server_prices(settings: RunSettings) -> tuple[float, float]:
    """A teacher server on this machine costs nothing; a remote one is billed at the configured prices."""
    from urllib.parse import urlparse
    host = (urlparse(settings.teacher_openai_base_url or "").hostname or "").lower()
    if host in ("127.0.0.1", "localhost", "::1") or host.startswith("127."):
        return (0.0, 0.0)
    return (settings.price_in_per_million, settings.price_out_per_million)


def window_backends() -> DefaultBackends:
    """The backends every window view uses when no test double is injected."""
    return DefaultBackends(embedder_in_child=True)
