"""The Gemini API teacher: the core's Teacher protocol on top of `google.genai.Client`."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from google import genai
from google.genai import errors, types

from pld_desktop.backends import secrets
from pld_desktop.core.protocols import TeacherError, TeacherReply, TeacherRequest, TeacherUsage

log = logging.getLogger(__name__)

RETRY_STATUS_CODES = [408, 429, 500, 502, 503, 504]

# Finish reasons that mean the model refused or was stopped by a filter: the text (if any) is not an answer.
BLOCKING_FINISH_REASONS = frozenset({
    "SAFETY", "RECITATION", "LANGUAGE", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "MODEL_ARMOR",
})


def _httpx_errors(attr: str) -> tuple[type[BaseException], ...]:
    # google-genai 3.x talks through httpx2 (a fork with its own namespace) and falls back to httpx.
    classes: list[type[BaseException]] = []
    for name in ("httpx2", "httpx"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        classes.append(getattr(module, attr))
    return tuple(classes)


_TRANSPORT_ERRORS = _httpx_errors("TransportError")
_TIMEOUT_ERRORS = _httpx_errors("TimeoutException")
_SERVER_MESSAGE_MAX = 400
# No tools are ever passed; disabling AFC skips the SDK's per-call "AFC is enabled" INFO log and config copy.
_NO_AFC = types.AutomaticFunctionCallingConfig(disable=True)


def _enum_text(value: Any) -> str:
    if value is None:
        return ""
    return str(getattr(value, "value", value))


def _error_details(exc: errors.APIError) -> list[dict[str, Any]]:
    """The `details` list of Google's error envelope (QuotaFailure, ErrorInfo, RetryInfo ...)."""
    body = exc.details
    if isinstance(body, dict):
        body = body.get("error", body)
        found = body.get("details") if isinstance(body, dict) else None
        if isinstance(found, list):
            return [d for d in found if isinstance(d, dict)]
    return []


class GeminiTeacher:
    """A Teacher backed by the Gemini API. One shared client serves all threads.

    The SDK retries 408/429/5xx and transient network errors with exponential backoff; whatever still fails
    becomes a TeacherError (a 429 that survives the retries sets `quota_exhausted`).
    """

    def __init__(self, model: str = "gemini-2.5-flash", *, api_key: str | None = None,
                 base_url: str | None = None, max_concurrency: int = 8, timeout_s: float = 120,
                 retry_attempts: int = 5, retry_initial_s: float = 1.0, retry_max_s: float = 60.0,
                 thinking_budget: int | None = None, temperature: float = 0.0,
                 price_per_million: tuple[float, float] = (0.30, 2.50)) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if retry_attempts < 1:
            raise ValueError("retry_attempts must be at least 1 (1 means no retries)")
        key = (api_key if api_key is not None else secrets.get_api_key("gemini")) or ""
        key = key.strip()
        if not key:
            raise TeacherError(
                "No Gemini API key is set. Enter it in Settings (stored in the OS keychain) or set the "
                "GEMINI_API_KEY environment variable.", retryable=False)
        self.model = model
        self.model_id = "gemini:" + model
        self.max_concurrency = max_concurrency
        self.price_per_million = price_per_million
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.retry_attempts = retry_attempts
        self.thinking_budget = thinking_budget
        self.temperature = temperature
        self._secrets = (key,)  # only for redaction; never logged or shown
        secrets.protect_in_logs(key)
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._closed = False
        retry = types.HttpRetryOptions(
            attempts=retry_attempts, initial_delay=retry_initial_s, max_delay=retry_max_s,
            # The SDK's default jitter is a flat 1 s; scaling it with the initial delay keeps the default
            # behaviour (1 s) and lets tests with tiny delays stay fast.
            jitter=min(1.0, retry_initial_s),
            http_status_codes=list(RETRY_STATUS_CODES))
        # One Client is safe to share across threads: httpx2.Client and its connection pool are thread-safe,
        # the SDK's tenacity.Retrying keeps per-call state in threading.local, and requests copy the headers.
        self._client = genai.Client(api_key=key, http_options=types.HttpOptions(
            base_url=base_url, timeout=round(timeout_s * 1000), retry_options=retry))

    # ------------------------------------------------------------------
    def generate(self, request: TeacherRequest) -> TeacherReply:
        config = types.GenerateContentConfig(
            system_instruction=request.system,
            response_mime_type="application/json",
            response_schema=request.schema,
            temperature=self.temperature,
            thinking_config=self._thinking_config(),
            automatic_function_calling=_NO_AFC,
        )
        with self._slots:
            started = time.perf_counter()
            response = self._call(request.user, config)
            latency = time.perf_counter() - started
        text, finish_reason = self._reply_text(response)
        text = secrets.redact(text, self._secrets)  # a reply echoing the key must not reach the project file
        usage = self._usage(response)
        log.debug("gemini %s call (%s): %.2f s, %d prompt + %d output + %d thinking tokens, finish %s",
                  self.model, request.kind, latency, usage.prompt_tokens, usage.output_tokens,
                  usage.thoughts_tokens, finish_reason)
        return TeacherReply(text=text, usage=usage, latency_s=latency,
                            model=response.model_version or self.model, finish_reason=finish_reason)

    def test_connection(self) -> str:
        """One tiny call without retries; a human-readable success line, or TeacherError."""
        config = types.GenerateContentConfig(
            temperature=0.0,
            thinking_config=self._thinking_config(),
            automatic_function_calling=_NO_AFC,
            http_options=types.HttpOptions(
                timeout=round(min(self.timeout_s, 30.0) * 1000),
                retry_options=types.HttpRetryOptions(attempts=1)),
        )
        started = time.perf_counter()
        response = self._call("Reply with the single word OK.", config)
        latency = time.perf_counter() - started
        self._reply_text(response)
        usage = self._usage(response)
        version = response.model_version or self.model
        return (f"Connected to Gemini: {version} answered in {latency:.1f} s "
                f"({usage.total_tokens} tokens).")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._client.close()

    def __enter__(self) -> GeminiTeacher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"GeminiTeacher(model={self.model!r}, base_url={self.base_url!r})"

    # ------------------------------------------------------------------
    def _thinking_config(self) -> types.ThinkingConfig | None:
        if self.thinking_budget is None:
            return None
        return types.ThinkingConfig(thinking_budget=self.thinking_budget)

    def _call(self, contents: str, config: types.GenerateContentConfig) -> types.GenerateContentResponse:
        if self._closed:
            raise TeacherError("The Gemini teacher is closed.", retryable=False)
        try:
            return self._client.models.generate_content(model=self.model, contents=contents, config=config)
        except errors.APIError as exc:
            raise self._api_error(exc) from None
        except errors.UnknownApiResponseError as exc:
            raise self._error(f"Gemini sent a reply that is not valid JSON ({exc.__class__.__name__}).",
                              retryable=True) from None
        except _TRANSPORT_ERRORS as exc:
            raise self._transport_error(exc) from None
        except ValueError as exc:
            # Raised before any HTTP call, e.g. a reply schema the Developer API cannot take (dict fields).
            raise self._error(f"The request could not be sent to Gemini ({self.model}): {exc}",
                              retryable=False) from None

    def _error(self, message: str, **kwargs: Any) -> TeacherError:
        return TeacherError(secrets.redact(message, self._secrets), **kwargs)

    def _api_error(self, exc: errors.APIError) -> TeacherError:
        code = int(exc.code or 0)
        status = exc.status or ""
        label = f"{code} {status}".strip()
        server_msg = str(exc.message or "").strip()
        if len(server_msg) > _SERVER_MESSAGE_MAX:
            server_msg = server_msg[:_SERVER_MESSAGE_MAX] + "..."
        said = f" Gemini said: {server_msg}" if server_msg else ""
        details = _error_details(exc)
        reasons = {d.get("reason") for d in details}
        attempts = f"after {self.retry_attempts} attempt{'s' if self.retry_attempts != 1 else ''}"
        if code == 429:
            daily = any("PerDay" in str(v.get("quotaId", "")) for d in details for v in d.get("violations", []) or [])
            hint = ("The daily quota is used up: resume tomorrow or raise the limit in Google AI Studio."
                    if daily else
                    "Resume later, lower the concurrency, or raise the limit in Google AI Studio.")
            # A 429 that survived the SDK's backoff means the quota is really gone: stop the run (resumable).
            return self._error(f"Gemini quota exhausted ({label}) {attempts} for model {self.model}. {hint}{said}",
                               retryable=True, quota_exhausted=True, status=code)
        if code in (401, 403) or "API_KEY_INVALID" in reasons:
            return self._error(
                f"Gemini: the API key was rejected ({label}). Check the key in Settings or GEMINI_API_KEY.{said}",
                retryable=False, status=code)
        if code == 404:
            return self._error(f"Gemini: unknown model {self.model!r} ({label}). Check the model name.{said}",
                               retryable=False, status=code)
        if code == 400:
            return self._error(f"Gemini rejected the request for model {self.model} as invalid ({label}).{said}",
                               retryable=False, status=code)
        if code == 408 or code >= 500:
            return self._error(f"Gemini server error ({label}) {attempts} for model {self.model}.{said}",
                               retryable=True, status=code)
        return self._error(f"Gemini request failed ({label}) for model {self.model}.{said}",
                           retryable=False, status=code)

    def _transport_error(self, exc: BaseException) -> TeacherError:
        name = type(exc).__name__
        where = self.base_url or "the Gemini API"
        if isinstance(exc, _TIMEOUT_ERRORS):
            return self._error(f"Gemini did not answer within {self.timeout_s:g} s ({name}) after "
                               f"{self.retry_attempts} attempt(s).", retryable=True)
        # UnsupportedProtocol / LocalProtocolError are configuration bugs, not network weather.
        retryable = name not in ("UnsupportedProtocol", "LocalProtocolError")
        return self._error(f"Could not reach {where} ({name}: {exc}).", retryable=retryable)

    def _reply_text(self, response: types.GenerateContentResponse) -> tuple[str, str]:
        """The reply text and finish reason; TeacherError(retryable=False) for a blocked or empty reply."""
        feedback = response.prompt_feedback
        if feedback is not None and feedback.block_reason is not None:
            why = f": {feedback.block_reason_message}" if feedback.block_reason_message else ""
            raise self._error(f"Gemini blocked the prompt (block reason {_enum_text(feedback.block_reason)}){why}.",
                              retryable=False)
        if not response.candidates:
            raise self._error("Gemini returned an empty reply (no candidates).", retryable=False)
        finish_reason = _enum_text(response.candidates[0].finish_reason)
        if finish_reason in BLOCKING_FINISH_REASONS:
            raise self._error(f"Gemini stopped the reply (finish reason {finish_reason}).", retryable=False)
        text = response.text
        if not text or not text.strip():
            hint = (" The output token limit was reached, possibly all by thinking."
                    if finish_reason == "MAX_TOKENS" else "")
            raise self._error(f"Gemini returned an empty reply (finish reason {finish_reason or 'none'}).{hint}",
                              retryable=False)
        return text, finish_reason

    @staticmethod
    def _usage(response: types.GenerateContentResponse) -> TeacherUsage:
        meta = response.usage_metadata
        if meta is None:
            return TeacherUsage()
        return TeacherUsage(
            prompt_tokens=meta.prompt_token_count or 0,
            output_tokens=meta.candidates_token_count or 0,
            thoughts_tokens=meta.thoughts_token_count or 0,
            cached_tokens=meta.cached_content_token_count or 0,
            total_tokens=meta.total_token_count or 0,
        )
