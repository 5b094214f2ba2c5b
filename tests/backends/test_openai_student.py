"""The OpenAI-compatible student: the piece scorer against LabelSpace, a fake server, and llama_cpp.server."""

from __future__ import annotations

import csv
import json
import math
from typing import Any

import numpy as np
import pytest

from pld_desktop.backends.openai_student import (
    OpenAIServerError,
    OpenAIStudent,
    gbnf_literal,
    normalise_base_url,
    score_pieces,
)
from pld_desktop.core.metrics import classification_metrics
from pld_desktop.core.prompts import build_zero_shot_prompt
from pld_desktop.core.protocols import PromptTooLong
from pld_desktop.resources import demo_csv
from tests.openai_server import OPENAI_KEY as KEY
from tests.openai_server import FakeOpenAI, start_llama_server, stop_server

# A toy vocabulary where labels share heads ("not_") and one label extends another ("neg" / "negative").
VOCAB = [b" ", b" n", b" no", b" not", b"_", b"t_", b" not_", b"mentioned", b"men", b"tioned", b"entailed",
         b"e", b" neg", b"ative", b" negative", b" neu", b"tral", b"x", b"y",
         *(bytes([c]) for c in b"abcdfghijklmnopqrsuvwz")]  # single bytes: every label stays spellable
assert len(set(VOCAB)) == len(VOCAB)  # the API shows pieces, not ids: one token per piece here
END_ID = len(VOCAB)


def toy_logits(path: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(abs(hash(path)) % (2 ** 32))
    return rng.normal(0.0, 2.0, END_ID + 1)


@pytest.mark.parametrize("labels", [("not_mentioned", "not_entailed", "neutral"), ("neg", "negative", "neutral")])
def test_piece_scorer_equals_label_space_when_every_piece_is_visible(labels: tuple[str, ...]) -> None:
    """With the whole distribution visible (top-k = vocabulary), the text-piece scorer is LabelSpace.score."""
    from pld_desktop.backends.llama_student import LabelSpace
    pieces: dict[bytes, list[int]] = {}
    for i, piece in enumerate(VOCAB):
        pieces.setdefault(piece, []).append(i)
    space = LabelSpace(labels, pieces, prefix=" ")
    expected = space.score(toy_logits, [END_ID], max_evaluations=50, min_branch_prob=1e-9)

    ids = {piece: i for i, piece in enumerate(VOCAB)}

    def next_logprobs(path: tuple[bytes, ...], written: bytes, alive: list[str]) -> dict[bytes, float]:
        logits = toy_logits(tuple(ids[p] for p in path))
        logp = logits - (logits.max() + math.log(np.exp(logits - logits.max()).sum()))
        seen = {piece: float(logp[i]) for i, piece in enumerate(VOCAB)}
        seen[b""] = float(logp[END_ID])
        return seen

    probs, evaluations, dropped = score_pieces(labels, " ", next_logprobs, max_evaluations=50,
                                               min_branch_prob=1e-9)
    assert evaluations == expected.evaluations and dropped == pytest.approx(expected.dropped_mass, abs=1e-12)
    for label in labels:
        assert probs[label] == pytest.approx(expected.probs[label], abs=1e-9)


def test_piece_scorer_shares_unreadable_states() -> None:
    probs, _, dropped = score_pieces(["ab", "ac", "d"], "", lambda path, written, alive:
                                     None if path else {b"a": math.log(0.6), b"d": math.log(0.4), b"zz": 0.0})
    assert probs["d"] == pytest.approx(0.4) and probs["ab"] == pytest.approx(0.3) and dropped == pytest.approx(0.6)


def test_url_and_grammar_helpers() -> None:
    assert normalise_base_url("http://127.0.0.1:8080/") == "http://127.0.0.1:8080/v1"
    assert normalise_base_url("https://api.example.com/openai/v1") == "https://api.example.com/openai/v1"
    with pytest.raises(ValueError, match="not an http"):
        normalise_base_url("127.0.0.1:8080")
    assert gbnf_literal(' a"b\\c\n') == '" a\\"b\\\\c\\n"'


def test_server_without_logprobs_falls_back_to_constrained_json(fake_openai: FakeOpenAI) -> None:
    def script(body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        if "grammar" in body:
            return 400, {"error": {"message": "Unrecognized request argument supplied: grammar"}}, {}
        if "prompt" in body:  # a server with no /completions logprobs: answers without them
            return 200, {"choices": [{"text": " hello", "logprobs": None, "finish_reason": "length"}]}, {}
        fmt = body.get("response_format") or {}
        assert fmt.get("type") == "json_schema"
        assert fmt["json_schema"]["schema"]["properties"]["label"]["enum"] == ["complaint", "question"]
        return 200, {"choices": [{"message": {"content": '{"label": "question"}'}, "finish_reason": "stop"}]}, {}
    fake_openai.script = script
    with OpenAIStudent(fake_openai.url, api_key=KEY, n_ctx=512) as student:
        assert student.scoring == "constrained" and not student.grammar
        assert "probability 1.0" in student.identity.backend and student.identity.size_bytes == 0
        assert KEY not in json.dumps(student.identity.__dict__)
        pred = student.classify("Classify.", "When do you open?", ["complaint", "question"])
        assert pred.label == "question" and pred.probs == {"complaint": 0.0, "question": 1.0}
        # No tokenize endpoint: a conservative estimate, and a clear PromptTooLong.
        with pytest.raises(PromptTooLong, match="512"):
            student.check_fits("x" * 3000, "text", ["complaint", "question"])
    assert all(r["auth"] == f"Bearer {KEY}" for r in fake_openai.requests)


def test_errors_name_the_server_and_hide_the_key(fake_openai: FakeOpenAI) -> None:
    fake_openai.script = lambda body: (500, {"error": {"message": f"crashed with key {KEY}"}}, {})
    with pytest.raises(OpenAIServerError) as info:
        OpenAIStudent(fake_openai.url, api_key=KEY)
    assert fake_openai.url in str(info.value) and "HTTP 500" in str(info.value) and KEY not in str(info.value)
    with pytest.raises(OpenAIServerError, match="does not serve the model 'other'"):
        OpenAIStudent(fake_openai.url, "other")


# ---------------------------------------------------------------------------
# Real server: the same prompt through llama_cpp.server and the in-process LlamaStudent
# ---------------------------------------------------------------------------
# Tolerance: the server runs the same GGUF with flash attention like LlamaStudent, but (1) it shows the distribution
# only as top-k pieces, so allowed partial pieces outside the top k (" q", " qu" ... of a label) are missed, and (2)
# it evaluates prompts on its own schedule (longest common prefix with the previous request, 512-token batches),
# while LlamaStudent evaluates system part then input; the differences go both ways, consistent with (2) being
# the larger part (not proven). Measured max |dp|: 0.0053 on the demo's first 8 rows, 0.046 on these 8 rows.
PROB_TOLERANCE = 0.06


@pytest.mark.slow
def test_same_labels_and_close_probabilities_as_in_process_student() -> None:
    pytest.importorskip("uvicorn")
    from pld_desktop.backends.bundled import bundled_student_path
    from pld_desktop.backends.llama_student import LlamaStudent
    with open(demo_csv(), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    # 8 examples, all three labels among them.
    picked: list[dict[str, str]] = []
    for lab, n in (("complaint", 3), ("fraud_report", 3), ("question", 2)):
        picked += [r for r in rows if r["label"] == lab][:n]
    labels = ["complaint", "fraud_report", "question"]
    prompt = build_zero_shot_prompt("Classify the bank customer's message.", labels)
    texts = [r["message"] for r in picked]

    proc, url = start_llama_server(bundled_student_path(), "--n_ctx", "2048", "--flash_attn", "true")
    try:
        with OpenAIStudent(url, concurrency=2, top_logprobs=1000) as remote:
            assert remote.scoring == "logprobs" and remote.grammar
            assert remote.identity.path == str(bundled_student_path())  # the server names the GGUF: hashed
            remote.check_fits(prompt, max(texts, key=len), labels)
            got = dict(remote.classify_many(prompt, texts, labels))
            remote_preds = [got[i] for i in range(len(texts))]
            remote_identity = remote.identity
            tokens_remote = remote.count_tokens("Where is my nearest branch?")
    finally:
        stop_server(proc)
    with LlamaStudent(n_ctx=2048) as local:
        local_preds = [local.classify(prompt, t, labels) for t in texts]
        assert remote_identity.sha256 == local.identity.sha256
        assert tokens_remote == local.count_tokens("Where is my nearest branch?")

    for r, loc in zip(remote_preds, local_preds):
        assert r.label == loc.label
        assert sum(r.probs.values()) == pytest.approx(1.0)
        assert max(abs(r.probs[k] - loc.probs[k]) for k in labels) < PROB_TOLERANCE
    gold = [r["label"] for r in picked]
    assert (classification_metrics(gold, [p.label for p in remote_preds], labels, [0.0] * len(gold))
            == classification_metrics(gold, [p.label for p in local_preds], labels, [0.0] * len(gold)))
