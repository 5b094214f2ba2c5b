"""The local teacher's batched path (issue 15): several requests decoded together on the bundled SmolLM2."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pld_desktop.backends import batched_generation
from pld_desktop.backends.teacher_grammar import RULE_MAX_WORDS
from pld_desktop.core import teacher_prompts as tp
from pld_desktop.core.protocols import TeacherRequest

LABELS = ("complaint", "fraud_report", "question")
MESSAGES = [("I was charged a late fee although I paid on time.", "complaint"),
            ("Someone used my card in Spain and it was not me.", "fraud_report"),
            ("What time does the Leeds branch open on Saturday?", "question"),
            ("Your app has been down all day and nobody answers the phone.", "complaint"),
            ("I got a text asking for my PIN and I replied with it.", "fraud_report"),
            ("Can I change my address online?", "question")]


def extraction(text: str, label: str) -> TeacherRequest:
    return TeacherRequest(tp.EXTRACTION_SYSTEM, tp.extraction_user("Triage bank messages.", LABELS, {}, text, label),
                          tp.extraction_schema(LABELS), "extraction", tp.rule_pattern([label]))


def test_parallel_sequences_follow_cores_and_context() -> None:
    assert batched_generation.default_parallel_sequences(8192, 1024, cores=2) == 8
    assert batched_generation.default_parallel_sequences(65536, 1024, cores=2) == 16
    assert batched_generation.default_parallel_sequences(65536, 1024, cores=1) == 8
    assert batched_generation.default_parallel_sequences(512, 1024, cores=8) == 1


def test_decode_threads_leave_busy_cores_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    assert batched_generation.decode_threads(4, busy=0) == 4
    assert batched_generation.decode_threads(4, busy=1) == 3
    assert batched_generation.decode_threads(2, busy=11) == 1
    monkeypatch.setattr(batched_generation, "busy_cores", lambda: None)
    assert batched_generation.decode_threads(4) == 4


def test_busy_cores_do_not_count_this_process_waiting_threads() -> None:
    # A pool of threads blocked on an event (as the teacher's request threads are) is not busy.
    import threading
    release = threading.Event()
    waiting = [threading.Thread(target=release.wait) for _ in range(8)]
    for thread in waiting:
        thread.start()
    try:
        busy = batched_generation.busy_cores()
    finally:
        release.set()
        for thread in waiting:
            thread.join()
    assert busy is not None and 0 <= busy < 8


def test_fast_paths_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    from pld_desktop.core.fast_paths import fast_paths_enabled
    monkeypatch.delenv("PLD_FAST_PATHS", raising=False)
    assert fast_paths_enabled()
    monkeypatch.setenv("PLD_FAST_PATHS", "0")
    assert not fast_paths_enabled()


@pytest.mark.slow
def test_batched_replies_follow_each_requests_own_grammar_and_share_the_prefix(tmp_path: Path) -> None:
    from pld_desktop.backends.local_teacher import LocalTeacher
    requests = [extraction(text, label) for text, label in MESSAGES]
    with LocalTeacher(batched=True, n_parallel=len(requests), state_dir=tmp_path, max_tokens=160) as teacher:
        assert teacher.batched and teacher.max_concurrency == len(requests)
        with ThreadPoolExecutor(len(requests)) as pool:
            replies = list(pool.map(teacher.generate, requests))
        stats = teacher.generation_stats
    for request, reply, (_, label) in zip(requests, replies, MESSAGES):
        assert reply.finish_reason in ("stop", "length")
        assert reply.usage.output_tokens > 0 and reply.usage.prompt_tokens > 50
        if reply.finish_reason == "stop":
            parsed = request.schema.model_validate_json(reply.text)
            # Each sequence has its own grammar (teacher_grammar's rule: one clause of at most RULE_MAX_WORDS
            # words, then that request's label). Which words a batch writes depends on the cores it ran on.
            word = r'[^ ",.;:!?\\\x00-\x1f]{1,40}'
            rule = rf"If {word}( {word}){{1,{RULE_MAX_WORDS - 1}}}, answer {re.escape(label)}[.]"
            assert re.fullmatch(rule, parsed.rule), parsed.rule
    assert stats.requests == len(requests)
    assert stats.max_parallel > 1                     # replies were decoded together
    # The system part once, then the part the requests share beyond it (task and labels), from the system part.
    assert stats.prefix_evaluations == 2
    assert stats.prefix_reuses == len(requests) - 2
    assert stats.decodes < stats.generated            # fewer llama_decode calls than tokens sampled


@pytest.mark.slow
def test_one_request_alone_equals_the_unbatched_path_and_disk_states_restore(tmp_path: Path) -> None:
    from pld_desktop.backends.local_teacher import LocalTeacher
    request = extraction(*MESSAGES[1])
    with LocalTeacher(batched=True, n_parallel=2, state_dir=tmp_path, max_tokens=120) as first:
        assert first._owner.call(lambda llama: llama.context_params.flash_attn_type) == 1  # on by default
        weights = first.weights_path
        alone = first.generate(request)
        assert first.generation_stats.prefix_evaluations == 1
    # The batched path decodes the bundled teacher (no sliding window) with flash attention, faster on long
    # prompts, and on its F16 copy (unpacked_weights.py): it is compared with create_chat_completion on a Llama
    # with the same weights and attention kernel.
    assert weights != first.model_path and weights.name.endswith(".f16.gguf")
    with LocalTeacher(weights, batched=False, flash_attn=True, max_tokens=120) as plain:
        expected = plain.generate(request)
    # Greedy decoding of a request alone: the same tokens as create_chat_completion's.
    assert (alone.text, alone.finish_reason, alone.usage.output_tokens) == \
        (expected.text, expected.finish_reason, expected.usage.output_tokens)
    with LocalTeacher(batched=True, n_parallel=2, state_dir=tmp_path, max_tokens=120) as second:
        again = second.generate(request)
        stats = second.generation_stats
    assert stats.prefix_restores == 1 and stats.prefix_evaluations == 0  # the system part came from disk
    assert again.text == alone.text


@pytest.mark.slow
def test_requests_share_the_task_and_labels_beyond_the_system_part(tmp_path: Path) -> None:
    from pld_desktop.backends.local_teacher import LocalTeacher
    with LocalTeacher(batched=True, n_parallel=2, state_dir=tmp_path, max_tokens=8) as teacher:
        model, owner = teacher._model, teacher._owner

        def tokens_and_end(request: TeacherRequest) -> tuple[list[int], int, int]:
            def on_owner(_llama: object) -> tuple[list[int], int, int]:
                tokens = model._tokens(teacher.messages_for(request))
                return tokens, model._system_end(request.system), model.shared_end(request.system, tokens)
            return owner.call(on_owner)

        first, system_end, shared = tokens_and_end(extraction(*MESSAGES[0]))
        assert shared == system_end                       # nothing to compare with yet
        second, _, shared = tokens_and_end(extraction(*MESSAGES[1]))
        # The task and the label list are shared, cut at the end of a line, before the example's own text.
        assert shared >= system_end + 16
        assert first[:shared] == second[:shared]
        assert owner.call(lambda llama: llama.detokenize([second[shared - 1]], special=True)).endswith(b"\n")
        assert b"Spain" not in owner.call(lambda llama: llama.detokenize(second[:shared], special=True))
        # Another task with the same system text shares only the system part.
        other = TeacherRequest(tp.EXTRACTION_SYSTEM, tp.extraction_user("Sort film reviews.", ("pos", "neg"), {},
                                                                        "Great film.", "pos"),
                               tp.extraction_schema(("pos", "neg")), "extraction", tp.rule_pattern(["pos"]))
        assert tokens_and_end(other)[2] == system_end


@pytest.mark.slow
def test_a_retry_starts_from_the_rejected_requests_prompt(tmp_path: Path) -> None:
    from pld_desktop.backends.local_teacher import LocalTeacher
    request = extraction(*MESSAGES[3])
    # As teacher_calls retries: the same request with the reason appended.
    retry = TeacherRequest(request.system, request.user + "\n\nYour previous reply was rejected: too long. "
                           "Reply again with JSON only.", request.schema, request.kind, request.grammar_patterns)
    with LocalTeacher(batched=True, n_parallel=2, state_dir=tmp_path, max_tokens=120) as teacher:
        teacher.generate(request)
        before = teacher.generation_stats.tokens_decoded
        reply = teacher.generate(retry)
        stats = teacher.generation_stats
    assert stats.recent_reuses == 1
    # Only the appended reason (and the reply) was decoded, not the task, labels and example again.
    retry_only = reply.usage.prompt_tokens - (stats.tokens_decoded - before - reply.usage.output_tokens)
    assert retry_only > 40
    request.schema.model_validate_json(reply.text) if reply.finish_reason == "stop" else None


@pytest.mark.slow
def test_a_teacher_without_a_chat_template_is_batched_in_llama_cpp_pythons_fallback_format(tmp_path: Path) -> None:
    # The bundled Gemma 3 270M GGUF has no chat template: create_chat_completion renders "llama-2" for it.
    from pld_desktop.backends.bundled import bundled_student_path
    from pld_desktop.backends.local_teacher import LocalTeacher
    path = bundled_student_path()
    request = extraction(*MESSAGES[1])
    with LocalTeacher(path, batched=False, max_tokens=80) as plain:
        expected = plain.generate(request)
    with LocalTeacher(path, batched=True, n_parallel=2, state_dir=tmp_path, max_tokens=80) as batched:
        assert batched.batched
        # A sliding-window model keeps the unbatched path's attention kernel (flash attention would make a request
        # decoded in the batched context differ from the same request decoded alone).
        assert batched._owner.call(lambda llama: llama.context_params.flash_attn_type) == 0
        alone = batched.generate(request)
    assert alone.usage.prompt_tokens == expected.usage.prompt_tokens  # the same prompt, token for token
    assert (alone.text, alone.finish_reason) == (expected.text, expected.finish_reason)
