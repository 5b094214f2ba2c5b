"""The OpenAI-compatible teacher against a scripted local OpenAI REST server, and once against llama_cpp.server."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

import pytest
from pydantic import BaseModel

from pld_desktop.backends.openai_teacher import OpenAITeacher
from pld_desktop.core.protocols import TeacherError, TeacherRequest
from pld_desktop.core.teacher_prompts import EXTRACTION_SYSTEM, extraction_schema, extraction_user, rule_pattern

from ..openai_server import OPENAI_KEY as KEY
from ..openai_server import FakeOpenAI, ok_reply, start_llama_server, stop_server


class Verdict(BaseModel):
    label: str
    reason: str


REQUEST = TeacherRequest("Be brief.", "Classify: the card was stolen.", Verdict, "probe")


def teacher(url: str, **kw: Any) -> OpenAITeacher:
    kw.setdefault("retry_initial_s", 0.01)
    kw.setdefault("retry_max_s", 0.02)
    return OpenAITeacher(url, "served-model", api_key=KEY, **kw)


def test_structured_reply_usage_and_request_shape(fake_openai: FakeOpenAI) -> None:
    with teacher(fake_openai.url, concurrency=3) as t:
        reply = t.generate(REQUEST)
    assert Verdict.model_validate_json(reply.text).label == "fraud"
    assert (reply.usage.prompt_tokens, reply.usage.output_tokens, reply.usage.total_tokens) == (21, 9, 30)
    assert (reply.usage.thoughts_tokens, reply.usage.cached_tokens) == (4, 8)
    assert reply.model == "served-model" and reply.finish_reason == "stop"
    sent = fake_openai.requests[0]
    assert sent["path"] == "/v1/chat/completions" and sent["auth"] == f"Bearer {KEY}"
    assert sent["body"]["messages"] == [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "Classify: the card was stolen."}]
    fmt = sent["body"]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["schema"] == Verdict.model_json_schema()
    assert t.max_concurrency == 3 and KEY not in t.model_id and KEY not in repr(t)


def test_server_without_json_schema_gets_json_object_with_schema(fake_openai: FakeOpenAI) -> None:
    def script(body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        if body["response_format"]["type"] == "json_schema":  # what llama-cpp-python's server answers
            return 500, {"error": {"message": "1 validation error: ('body', 'response_format', 'type') Input should "
                                              "be 'text' or 'json_object', input: 'json_schema'"}}, {}
        return 200, ok_reply(), {}
    fake_openai.script = script
    with teacher(fake_openai.url, retry_attempts=1) as t:
        t.generate(REQUEST)
        t.generate(REQUEST)
    formats = [r["body"]["response_format"] for r in fake_openai.requests]
    assert [f["type"] for f in formats] == ["json_schema", "json_object", "json_object"]
    assert formats[1]["schema"] == Verdict.model_json_schema()


def test_429_is_retried_then_reported_as_quota_exhausted(fake_openai: FakeOpenAI) -> None:
    fake_openai.script = lambda body: (429, {"error": {"message": f"Rate limit reached for key {KEY}"}},
                                       {"Retry-After": "0"})
    with teacher(fake_openai.url, retry_attempts=3) as t, pytest.raises(TeacherError) as info:
        t.generate(REQUEST)
    assert len(fake_openai.requests) == 3
    err = info.value
    assert err.quota_exhausted and err.retryable and err.status == 429
    assert KEY not in str(err) and "***" in str(err) and "429" in str(err)


def test_server_error_retried_until_it_succeeds(fake_openai: FakeOpenAI) -> None:
    answers = iter([(503, {"error": {"message": "overloaded"}}, {}), (500, "boom", {}), (200, ok_reply(), {})])
    fake_openai.script = lambda body: next(answers)
    with teacher(fake_openai.url, retry_attempts=3) as t:
        assert Verdict.model_validate_json(t.generate(REQUEST).text).reason == "stolen card"
    assert len(fake_openai.requests) == 3


def test_persistent_5xx_is_retryable_and_4xx_is_not(fake_openai: FakeOpenAI) -> None:
    fake_openai.script = lambda body: (502, {"error": {"message": "bad gateway"}}, {})
    with teacher(fake_openai.url, retry_attempts=2) as t, pytest.raises(TeacherError) as info:
        t.generate(REQUEST)
    assert info.value.retryable and not info.value.quota_exhausted and info.value.status == 502
    assert "bad gateway" in str(info.value)

    fake_openai.requests.clear()
    fake_openai.script = lambda body: (400, {"error": {"message": "max_tokens is too large"}}, {})
    with teacher(fake_openai.url, retry_attempts=4) as t, pytest.raises(TeacherError) as info:
        t.generate(REQUEST)
    assert len(fake_openai.requests) == 1 and not info.value.retryable and info.value.status == 400
    assert "max_tokens is too large" in str(info.value)


def test_rejected_key_is_redacted_everywhere(fake_openai: FakeOpenAI, caplog: pytest.LogCaptureFixture) -> None:
    fake_openai.script = lambda body: (401, {"error": {"message": f"Incorrect API key provided: {KEY}"}}, {})
    caplog.set_level(logging.DEBUG)
    with teacher(fake_openai.url) as t, pytest.raises(TeacherError) as info:
        t.generate(REQUEST)
    assert not info.value.retryable and "API key was rejected" in str(info.value)
    assert KEY not in str(info.value) and KEY not in caplog.text


def test_unreachable_server_and_empty_reply_are_clear_errors(fake_openai: FakeOpenAI) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with teacher(f"http://127.0.0.1:{port}", retry_attempts=2) as t, pytest.raises(TeacherError) as info:
        t.generate(REQUEST)
    assert "Could not reach" in str(info.value) and info.value.retryable
    fake_openai.script = lambda body: (200, ok_reply(content=""), {})
    with teacher(fake_openai.url) as t, pytest.raises(TeacherError, match="empty reply"):
        t.generate(REQUEST)
    with pytest.raises(ValueError, match="not an http"):
        OpenAITeacher("ftp://example.org", "m")


def test_concurrent_calls_are_bounded(fake_openai: FakeOpenAI) -> None:
    active, peak, lock = [0], [0], threading.Lock()

    def script(body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return 200, ok_reply(), {}
    fake_openai.script = script
    with teacher(fake_openai.url, concurrency=2) as t:
        threads = [threading.Thread(target=t.generate, args=(REQUEST,)) for _ in range(6)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert len(fake_openai.requests) == 6 and peak[0] == 2


# ---------------------------------------------------------------------------
# Real server: llama_cpp.server serving the bundled SmolLM2
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_phase1_reply_from_llama_cpp_server_with_smollm2() -> None:
    pytest.importorskip("uvicorn")
    from pld_desktop.backends.bundled import bundled_local_teacher_path
    proc, url = start_llama_server(bundled_local_teacher_path(), "--n_ctx", "4096")
    try:
        labels = ("complaint", "fraud_report", "question")
        schema = extraction_schema(labels)
        user = extraction_user("Classify the customer message.", labels, {},
                               "Someone took 300 pounds from my account with a card I never ordered.", "fraud_report")
        request = TeacherRequest(EXTRACTION_SYSTEM, user, schema, "extraction", rule_pattern(["fraud_report"]))
        with OpenAITeacher(url, "smollm2", concurrency=1, max_tokens=400, max_string_chars=320,
                           retry_attempts=1) as t:
            reply = t.generate(request)
        parsed = schema.model_validate_json(reply.text)  # schema-valid: the server honoured the schema
        assert parsed.label == "fraud_report"
        assert parsed.rule.startswith("If ") and parsed.rule.endswith("answer fraud_report.")
        assert reply.usage.prompt_tokens > 100 and reply.usage.output_tokens > 0
        assert t._format_style == "json_object"  # llama-cpp-python refuses the json_schema form
    finally:
        stop_server(proc)
