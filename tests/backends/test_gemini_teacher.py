"""GeminiTeacher with the real google-genai client against the fake Gemini server, plus the secrets helpers."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import keyring
import keyring.errors
import pytest
from pydantic import BaseModel

from pld_desktop.backends import secrets
from pld_desktop.backends.gemini_teacher import GeminiTeacher
from pld_desktop.core.protocols import TeacherError, TeacherRequest

from ..fake_gemini import (
    INVALID_JSON_TEXT,
    FakeGemini,
    FakeResponse,
    api_key_invalid,
    candidate_blocked,
    empty_candidates,
    error,
    invalid_json,
    model_not_found,
    quota_exhausted,
    raw,
    safety_blocked,
    server_error,
    success,
    success_body,
    truncated_json,
    unavailable,
)
from ..helpers import MemoryKeyring

KEY = "AIzaSyTEST-SECRET-123"


class Verdict(BaseModel):
    label: str
    matched_rule_quote: str


def _request(user: str = "Classify: the parcel arrived broken.") -> TeacherRequest:
    return TeacherRequest(system="You label customer messages.", user=user, schema=Verdict, kind="extraction")


@pytest.fixture
def make_teacher(fake_gemini: FakeGemini) -> Iterator[Callable[..., GeminiTeacher]]:
    made: list[GeminiTeacher] = []

    def make(**kwargs: Any) -> GeminiTeacher:
        kwargs.setdefault("api_key", KEY)
        kwargs.setdefault("base_url", fake_gemini.base_url)
        kwargs.setdefault("retry_attempts", 3)
        kwargs.setdefault("retry_initial_s", 0.005)
        kwargs.setdefault("retry_max_s", 0.02)
        kwargs.setdefault("timeout_s", 5)
        teacher = GeminiTeacher(**kwargs)
        made.append(teacher)
        return teacher

    yield make
    for teacher in made:
        teacher.close()


def _raises(teacher: GeminiTeacher) -> TeacherError:
    with pytest.raises(TeacherError) as info:
        teacher.generate(_request())
    return info.value


# ---------------------------------------------------------------------------
# Request shape and reply
# ---------------------------------------------------------------------------
def test_request_shape_and_reply(fake_gemini: FakeGemini, make_teacher: Callable[..., GeminiTeacher]) -> None:
    fake_gemini.expected_key = KEY
    reply_json = {"label": "damaged", "matched_rule_quote": "broken"}
    fake_gemini.enqueue(success(reply_json, prompt_tokens=42, output_tokens=7, thoughts_tokens=3,
                                cached_tokens=2))
    teacher = make_teacher(model="gemini-2.5-flash")
    assert teacher.max_concurrency == 8 and teacher.price_per_million == (0.30, 2.50)
    assert teacher.model_id == "gemini:gemini-2.5-flash"

    reply = teacher.generate(_request())

    [req] = fake_gemini.requests
    assert req.method == "POST"
    assert req.path.endswith("/models/gemini-2.5-flash:generateContent")
    assert req.model == "gemini-2.5-flash"
    assert req.had_key and req.key_matched
    assert req.headers["x-goog-api-key"] == "***"  # the record never keeps the key
    assert req.system_text == "You label customer messages."
    assert req.user_text == "Classify: the parcel arrived broken."
    config = req.generation_config
    assert config["responseMimeType"] == "application/json"
    assert config["temperature"] == 0.0
    assert "matched_rule_quote" in json.dumps(config["responseSchema"])
    assert "thinkingConfig" not in config

    assert json.loads(reply.text) == reply_json
    assert reply.finish_reason == "STOP"
    assert reply.model == "gemini-2.5-flash"
    assert reply.latency_s > 0
    usage = reply.usage
    assert (usage.prompt_tokens, usage.output_tokens, usage.thoughts_tokens, usage.cached_tokens,
            usage.total_tokens) == (42, 7, 3, 2, 52)


def test_thinking_budget_and_missing_usage(fake_gemini: FakeGemini,
                                           make_teacher: Callable[..., GeminiTeacher]) -> None:
    body = success_body({"label": "a", "matched_rule_quote": "b"})
    del body["usageMetadata"]
    fake_gemini.enqueue(body)
    reply = make_teacher(thinking_budget=0, temperature=0.3).generate(_request())
    config = fake_gemini.requests[0].generation_config
    assert config["temperature"] == 0.3
    assert config["thinkingConfig"] in ({"thinkingBudget": 0}, {"thinking_budget": 0})
    assert reply.usage.total_tokens == 0 and reply.usage.prompt_tokens == 0


# ---------------------------------------------------------------------------
# Retries and HTTP errors
# ---------------------------------------------------------------------------
def test_transient_errors_are_retried(fake_gemini: FakeGemini, make_teacher: Callable[..., GeminiTeacher]) -> None:
    fake_gemini.enqueue(quota_exhausted(retry_after=0), server_error(), success('{"label": "ok"}'))
    reply = make_teacher(retry_attempts=3).generate(_request())
    assert reply.text == '{"label": "ok"}'
    assert len(fake_gemini.requests) == 3


def test_429_forever_means_quota_exhausted(fake_gemini: FakeGemini,
                                           make_teacher: Callable[..., GeminiTeacher]) -> None:
    fake_gemini.always(quota_exhausted())
    err = _raises(make_teacher(retry_attempts=4))
    assert err.quota_exhausted and err.status == 429
    assert str(err).startswith("Gemini quota exhausted (429")
    assert len(fake_gemini.requests) == 4


def test_daily_quota_says_so(fake_gemini: FakeGemini, make_teacher: Callable[..., GeminiTeacher]) -> None:
    fake_gemini.always(quota_exhausted(per_day=True))
    err = _raises(make_teacher(retry_attempts=1))
    assert err.quota_exhausted and "daily quota" in str(err)


@pytest.mark.parametrize("response", [unavailable(), server_error(),
                                      raw(502, "<html><body>Bad gateway</body></html>")],
                         ids=["503", "500", "502-html"])
def test_server_errors_are_retryable(fake_gemini: FakeGemini, make_teacher: Callable[..., GeminiTeacher],
                                     response: FakeResponse) -> None:
    fake_gemini.always(response)
    err = _raises(make_teacher(retry_attempts=2))
    assert err.retryable and not err.quota_exhausted
    assert err.status == response.status
    assert len(fake_gemini.requests) == 2


def test_unknown_model_is_not_retryable(fake_gemini: FakeGemini,
                                        make_teacher: Callable[..., GeminiTeacher]) -> None:
    fake_gemini.always(model_not_found("gemini-9-ultra"))
    err = _raises(make_teacher(model="gemini-9-ultra"))
    assert not err.retryable and err.status == 404
    assert "gemini-9-ultra" in str(err)
    assert len(fake_gemini.requests) == 1


def test_bad_request_is_not_retryable(fake_gemini: FakeGemini, make_teacher: Callable[..., GeminiTeacher]) -> None:
    fake_gemini.always(error(400, "INVALID_ARGUMENT", "responseSchema: unsupported field"))
    err = _raises(make_teacher())
    assert not err.retryable and err.status == 400
    assert "unsupported field" in str(err)
    assert len(fake_gemini.requests) == 1


def test_unsupported_schema_is_a_teacher_error(fake_gemini: FakeGemini,
                                               make_teacher: Callable[..., GeminiTeacher]) -> None:
    class Counts(BaseModel):
        per_label: dict[str, int]  # additionalProperties: rejected by the SDK for the Developer API

    with pytest.raises(TeacherError) as info:
        make_teacher().generate(TeacherRequest(system="s", user="u", schema=Counts))
    assert not info.value.retryable and "additionalProperties" in str(info.value)
    assert fake_gemini.requests == []


def test_timeout_is_retryable(fake_gemini: FakeGemini, make_teacher: Callable[..., GeminiTeacher]) -> None:
    fake_gemini.always(FakeResponse(200, success_body("{}"), delay_s=20.0))
    started = time.monotonic()
    err = _raises(make_teacher(timeout_s=0.2, retry_attempts=1))
    assert err.retryable and "did not answer" in str(err)
    assert time.monotonic() - started < 10, "gave up at its own timeout, not when the server answered"


def test_connection_refused_is_retryable(make_teacher: Callable[..., GeminiTeacher]) -> None:
    with socket.socket() as s:  # a port that was free a moment ago and has no listener
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    err = _raises(make_teacher(base_url=f"http://127.0.0.1:{port}/", retry_attempts=2))
    assert err.retryable and "Could not reach" in str(err)


# ---------------------------------------------------------------------------
# Reply content
# ---------------------------------------------------------------------------
def test_invalid_json_text_is_returned_for_the_core_to_validate(
        fake_gemini: FakeGemini, make_teacher: Callable[..., GeminiTeacher]) -> None:
    fake_gemini.enqueue(invalid_json(), truncated_json())
    teacher = make_teacher()
    assert teacher.generate(_request()).text == INVALID_JSON_TEXT
    truncated = teacher.generate(_request())
    assert truncated.finish_reason == "MAX_TOKENS"
    with pytest.raises(ValueError):
        json.loads(truncated.text)


@pytest.mark.parametrize("response, reason", [
    (safety_blocked("SAFETY"), "blocked the prompt (block reason SAFETY)"),
    (safety_blocked("PROHIBITED_CONTENT"), "PROHIBITED_CONTENT"),
    (candidate_blocked("SAFETY"), "finish reason SAFETY"),
    (candidate_blocked("RECITATION"), "finish reason RECITATION"),
    (empty_candidates(), "no candidates"),
    (success("", finish_reason="MAX_TOKENS"), "empty reply"),
], ids=["prompt-safety", "prompt-prohibited", "candidate-safety", "recitation", "no-candidates", "empty-text"])
def test_blocked_or_empty_reply_is_a_clear_error(fake_gemini: FakeGemini,
                                                 make_teacher: Callable[..., GeminiTeacher],
                                                 response: FakeResponse, reason: str) -> None:
    fake_gemini.enqueue(response)
    err = _raises(make_teacher())
    assert not err.retryable and not err.quota_exhausted
    assert reason in str(err)
    assert len(fake_gemini.requests) == 1


# ---------------------------------------------------------------------------
# The API key never leaks
# ---------------------------------------------------------------------------
def _assert_no_key(err: BaseException, caplog: pytest.LogCaptureFixture) -> None:
    assert KEY not in str(err) and KEY not in repr(err)
    # The SDK error is not chained: its text is the raw server body.
    assert err.__cause__ is None and err.__suppress_context__
    assert KEY not in caplog.text


def test_401_says_key_rejected_without_the_key(fake_gemini: FakeGemini,
                                               make_teacher: Callable[..., GeminiTeacher],
                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    # A server that echoes the key back must not make us print it.
    fake_gemini.always(error(401, "UNAUTHENTICATED", f"API key {KEY} is not valid (key={KEY})"))
    teacher = make_teacher()
    err = _raises(teacher)
    assert "the API key was rejected" in str(err)
    assert not err.retryable and err.status == 401
    assert len(fake_gemini.requests) == 1
    _assert_no_key(err, caplog)
    assert KEY not in repr(teacher)


def test_sdk_retry_log_is_redacted(fake_gemini: FakeGemini, make_teacher: Callable[..., GeminiTeacher],
                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake_gemini.enqueue(error(503, "UNAVAILABLE", f"overloaded, caller {KEY}"), success("{}"))
    make_teacher().generate(_request())
    assert "Retrying" in caplog.text  # the SDK logged the error body before retrying...
    assert KEY not in caplog.text  # ...with the key redacted
    assert "AFC is enabled" not in caplog.text


def test_wrong_key_400_api_key_invalid(fake_gemini: FakeGemini, make_teacher: Callable[..., GeminiTeacher],
                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake_gemini.expected_key = "AIzaSyTHE-RIGHT-ONE"
    err = _raises(make_teacher())
    assert "the API key was rejected" in str(err) and not err.retryable
    assert fake_gemini.requests[0].had_key and fake_gemini.requests[0].key_matched is False
    _assert_no_key(err, caplog)


def test_no_key_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setattr(keyring, "get_password", lambda service, user: None)
    with pytest.raises(TeacherError) as info:
        GeminiTeacher()
    assert "GEMINI_API_KEY" in str(info.value) and "Settings" in str(info.value)
    assert not info.value.retryable


def test_key_from_environment_is_sent(fake_gemini: FakeGemini, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    fake_gemini.expected_key = KEY
    fake_gemini.enqueue(success("{}"))
    with GeminiTeacher(base_url=fake_gemini.base_url, retry_attempts=1) as teacher:
        teacher.generate(_request())
    assert fake_gemini.requests[0].key_matched


# ---------------------------------------------------------------------------
# Concurrency, connection test, lifecycle
# ---------------------------------------------------------------------------
def test_eight_threads_at_once(fake_gemini: FakeGemini, make_teacher: Callable[..., GeminiTeacher]) -> None:
    # The server holds each request until all eight are in flight: if the client sent them one at a time
    # the barrier would break (no wall-clock bound, which a loaded CI machine can miss).
    in_flight = threading.Barrier(8, timeout=20)

    def echo(body: dict) -> FakeResponse:
        user = body["contents"][0]["parts"][0]["text"]
        in_flight.wait()
        return FakeResponse(200, success_body({"label": user, "matched_rule_quote": ""}))

    fake_gemini.responder = echo
    teacher = make_teacher(max_concurrency=8)
    results: dict[int, str] = {}
    failures: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        try:
            barrier.wait()
            results[i] = json.loads(teacher.generate(_request(f"item {i}")).text)["label"]
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not in_flight.broken, "the eight requests were in flight at the same time"
    assert not failures
    assert results == {i: f"item {i}" for i in range(8)}
    assert len(fake_gemini.requests) == 8


def test_test_connection(fake_gemini: FakeGemini, make_teacher: Callable[..., GeminiTeacher]) -> None:
    teacher = make_teacher(retry_attempts=5)
    fake_gemini.enqueue(success("OK", model_version="gemini-2.5-flash-001"))
    message = teacher.test_connection()
    assert "gemini-2.5-flash-001" in message and "Connected" in message
    assert "responseMimeType" not in fake_gemini.requests[0].generation_config

    fake_gemini.always(unavailable())
    with pytest.raises(TeacherError) as info:
        teacher.test_connection()
    assert info.value.retryable
    assert len(fake_gemini.requests) == 2  # the connection test does not retry

    fake_gemini.always(api_key_invalid())
    with pytest.raises(TeacherError, match="the API key was rejected"):
        teacher.test_connection()


def test_close_is_idempotent(make_teacher: Callable[..., GeminiTeacher]) -> None:
    teacher = make_teacher()
    teacher.close()
    teacher.close()
    with pytest.raises(TeacherError, match="closed"):
        teacher.generate(_request())


# ---------------------------------------------------------------------------
# secrets
# ---------------------------------------------------------------------------
def test_env_precedence_then_keyring(memory_keyring: MemoryKeyring, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    assert secrets.get_api_key() is None and secrets.api_key_source() is None
    secrets.set_api_key("  from-keyring-key  ")
    assert memory_keyring.store[("pld-desktop", "gemini-api-key")] == "from-keyring-key"
    assert secrets.get_api_key() == "from-keyring-key"
    assert secrets.api_key_source() == "OS keychain"
    monkeypatch.setenv("GOOGLE_API_KEY", "google-env-key")
    assert secrets.get_api_key() == "google-env-key"
    monkeypatch.setenv("GEMINI_API_KEY", "gemini-env-key")
    assert secrets.get_api_key("gemini") == "gemini-env-key"
    assert secrets.api_key_source() == "environment variable GEMINI_API_KEY"
    monkeypatch.setenv("GEMINI_API_KEY", "  ")  # blank counts as unset
    assert secrets.get_api_key() == "google-env-key"
    secrets.delete_api_key()
    secrets.delete_api_key()  # nothing stored: no error
    assert memory_keyring.store == {}
    with pytest.raises(ValueError):
        secrets.get_api_key("no-such-service")


def test_no_keychain_is_handled(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_keyring(*args: Any) -> None:
        raise keyring.errors.NoKeyringError("No recommended backend was available.")

    for name in ("get_password", "set_password", "delete_password"):
        monkeypatch.setattr(keyring, name, no_keyring)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    assert secrets.get_api_key() is None
    with pytest.raises(secrets.SecretStoreError, match="No OS keychain is available; set GEMINI_API_KEY instead"):
        secrets.set_api_key(KEY)
    secrets.delete_api_key()


def test_other_keychain_failures_do_not_leak_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError(f"D-Bus said no to {KEY}")

    monkeypatch.setattr(keyring, "get_password", broken)
    monkeypatch.setattr(keyring, "set_password", broken)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    assert secrets.get_api_key() is None
    with pytest.raises(secrets.SecretStoreError) as info:
        secrets.set_api_key(KEY)
    assert KEY not in str(info.value) and "GEMINI_API_KEY" in str(info.value)


def test_redact() -> None:
    text = (f"key {KEY} in url https://x/v1/models?key=OTHER-KEY-99&alt=json "
            "headers {'x-goog-api-key': 'HEADER-KEY-77'} and x-goog-api-key: RAW-KEY-55")
    out = secrets.redact(text, [KEY, "", None])
    for leaked in (KEY, "OTHER-KEY-99", "HEADER-KEY-77", "RAW-KEY-55"):
        assert leaked not in out
    assert "key=***&alt=json" in out
    assert secrets.redact("nothing to hide", [KEY]) == "nothing to hide"
    assert secrets.redact("a b c", ["b"]) == "a b c"  # too short to be a key
