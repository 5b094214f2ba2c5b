"""The teacher on an OpenAI-compatible chat server: JSON-schema structured output, usage, retries, error mapping."""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any

from pld_desktop.backends.openai_student import OpenAIHttp, OpenAIServerError
from pld_desktop.core.protocols import TeacherError, TeacherReply, TeacherRequest, TeacherUsage

__all__ = ["OpenAITeacher"]

log = logging.getLogger(__name__)


class OpenAITeacher:
    """A Teacher on /v1/chat/completions (OpenAI, vLLM, Ollama, LM Studio, llama.cpp servers).

    The reply is constrained with `response_format` `json_schema` (the OpenAI form). llama-cpp-python's server
    rejects that form but takes `{"type": "json_object", "schema": ...}`; on such a refusal the teacher switches
    to it for the rest of its life. 408/429/5xx and network errors are retried with exponential backoff
    (honouring Retry-After); a 429 that survives the retries stops the run (`quota_exhausted`).
    `max_string_chars` bounds schema strings (and applies the request's grammar hints) for small local models
    that would otherwise ramble past `max_tokens`.

    Thread contract: `generate()` may be called from `max_concurrency` threads at once.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, concurrency: int = 4,
                 timeout_s: float = 120.0, retry_attempts: int = 4, retry_initial_s: float = 1.0,
                 retry_max_s: float = 30.0, temperature: float = 0.0, max_tokens: int | None = None,
                 max_string_chars: int | None = None,
                 price_per_million: tuple[float, float] = (0.0, 0.0)) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if retry_attempts < 1:
            raise ValueError("retry_attempts must be at least 1 (1 means no retries)")
        if not (model or "").strip():
            raise ValueError("The OpenAI-compatible teacher needs a model name.")
        self._http = OpenAIHttp(base_url, api_key, timeout_s=timeout_s, max_connections=concurrency,
                                who="The teacher server")
        self.base_url = self._http.base_url
        self.model = model.strip()
        self.model_id = f"openai:{self.model}@{self.base_url}"
        self.max_concurrency = concurrency
        self.price_per_million = price_per_million
        self.retry_attempts = retry_attempts
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.max_string_chars = max_string_chars
        self._format_style = "json_schema"  # or "json_object" once the server refused json_schema
        self._slots = threading.BoundedSemaphore(concurrency)
        self._closed = False

    # ------------------------------------------------------------------
    def generate(self, request: TeacherRequest) -> TeacherReply:
        if self._closed:
            raise TeacherError("The OpenAI-compatible teacher is closed.", retryable=False)
        try:
            schema = request.schema.model_json_schema()
        except Exception as exc:
            raise TeacherError(f"Cannot build the JSON schema of {request.schema.__name__}: {exc}") from exc
        if self.max_string_chars is not None:
            from pld_desktop.backends.local_teacher import bounded_schema  # only for small local models
            schema = bounded_schema(schema, self.max_string_chars, dict(request.grammar_patterns))
        messages = [{"role": "user", "content": request.user}]
        if request.system.strip():
            messages.insert(0, {"role": "system", "content": request.system})
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": self.temperature}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        with self._slots:
            started = time.perf_counter()
            reply = self._call(body, schema, request.schema.__name__)
            latency = time.perf_counter() - started
        text, finish = self._reply_text(reply)
        usage = _usage(reply.get("usage"))
        log.debug("openai teacher %s call (%s): %.2f s, %d prompt + %d output tokens, finish %s",
                  self.model, request.kind, latency, usage.prompt_tokens, usage.output_tokens, finish)
        return TeacherReply(text=text, usage=usage, latency_s=latency, model=str(reply.get("model") or self.model),
                            finish_reason=finish)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._http.close()

    def __enter__(self) -> OpenAITeacher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OpenAITeacher(model={self.model!r}, base_url={self.base_url!r})"

    # ------------------------------------------------------------------
    def _response_format(self, schema: dict[str, Any], name: str) -> dict[str, Any]:
        if self._format_style == "json_object":
            return {"type": "json_object", "schema": schema}
        safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in name)[:64] or "reply"
        return {"type": "json_schema", "json_schema": {"name": safe, "schema": schema}}

    def _call(self, body: dict[str, Any], schema: dict[str, Any], name: str) -> dict[str, Any]:
        delay = self.retry_initial_s
        attempt = 0
        while True:
            attempt += 1
            body["response_format"] = self._response_format(schema, name)
            try:
                reply = self._http.post("/chat/completions", body)
                if not isinstance(reply, dict):
                    raise OpenAIServerError(f"The teacher server at {self.base_url} sent a reply that is not a "
                                            "JSON object.", retryable=True)
                return reply
            except OpenAIServerError as exc:
                if self._format_style == "json_schema" and _refuses_json_schema(exc):
                    log.info("%s does not take response_format json_schema; using json_object + schema",
                             self.base_url)
                    self._format_style = "json_object"
                    attempt -= 1  # a dialect switch is not a failed attempt
                    continue
                if not exc.retryable or attempt >= self.retry_attempts:
                    raise self._teacher_error(exc, attempt) from None
                wait = exc.retry_after_s if exc.retry_after_s is not None else delay
                wait = min(self.retry_max_s, wait) * (1.0 + 0.25 * random.random())  # jitter spreads retries
                log.debug("openai teacher: %s; retrying in %.2f s", exc, wait)
                time.sleep(wait)
                delay = min(self.retry_max_s, delay * 2)

    def _teacher_error(self, exc: OpenAIServerError, attempts: int) -> TeacherError:
        code = exc.status
        tries = f"after {attempts} attempt{'s' if attempts != 1 else ''}"
        if code == 429:
            return TeacherError(f"{exc} The rate limit or quota is exhausted {tries} (model {self.model}); resume "
                                "later or lower the concurrency.", retryable=True, quota_exhausted=True, status=code)
        if code in (401, 403):
            return TeacherError(f"{exc} The API key was rejected: check it in Settings.", retryable=False,
                                status=code)
        if code == 404:
            return TeacherError(f"{exc} Check the server URL and the model name {self.model!r}.", retryable=False,
                                status=code)
        if code is None or code in (408, 409) or code >= 500:
            return TeacherError(f"{exc} ({tries}.)", retryable=True, status=code)
        return TeacherError(f"{exc} The request was rejected as invalid.", retryable=False, status=code)

    def _reply_text(self, reply: dict[str, Any]) -> tuple[str, str]:
        choices = reply.get("choices") or []
        if not choices or not isinstance(choices[0], dict):
            raise TeacherError(f"The teacher server at {self.base_url} returned no choices.", retryable=True)
        choice = choices[0]
        finish = str(choice.get("finish_reason") or "")
        message = choice.get("message") or {}
        if message.get("refusal"):
            refusal = self._http.redact(str(message["refusal"]))[:300]
            raise TeacherError(f"The teacher model refused: {refusal}", retryable=False)
        if finish == "content_filter":
            raise TeacherError("The teacher server's content filter stopped the reply.", retryable=False)
        text = message.get("content")
        if isinstance(text, list):  # some servers send content parts
            text = "".join(str(part.get("text", "")) for part in text if isinstance(part, dict))
        text = self._http.redact(str(text or ""))  # a reply echoing the key must not reach the project file
        if not text.strip():
            hint = " The output token limit was reached." if finish == "length" else ""
            raise TeacherError(f"The teacher returned an empty reply (finish reason {finish or 'none'}).{hint}",
                               retryable=False)
        return text, finish


def _refuses_json_schema(exc: OpenAIServerError) -> bool:
    """A 400/422 (llama-cpp-python answers 500) that names the json_schema response format as the problem."""
    text = str(exc).lower()
    return exc.status in (400, 422, 500) and "json_schema" in text and (
        "response_format" in text or "literal" in text or "json_object" in text)


def _usage(usage: Any) -> TeacherUsage:
    if not isinstance(usage, dict):
        return TeacherUsage()
    prompt = int(usage.get("prompt_tokens") or 0)
    output = int(usage.get("completion_tokens") or 0)
    details_out = usage.get("completion_tokens_details") or {}
    details_in = usage.get("prompt_tokens_details") or {}
    return TeacherUsage(prompt_tokens=prompt, output_tokens=output,
                        thoughts_tokens=int(details_out.get("reasoning_tokens") or 0),
                        cached_tokens=int(details_in.get("cached_tokens") or 0),
                        total_tokens=int(usage.get("total_tokens") or prompt + output))
