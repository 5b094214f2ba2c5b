"""The local teacher's grammar: any label or text, escaped so llama.cpp parses it and the literals are exact."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pld_desktop.core import teacher_prompts as tp

from .. import rawdb

NASTY_LABELS = ['a"b', "back\\slash", "new\nline", "tab\there", "cr\rlf", "nul\x00x", "esc\x1b[31mred\x1b[0m",
                "bidi\u202eevil\u202c", "zero\u200bwidth", "caf\u00e9", "cafe\u0301", "emoji \U0001F600", "{x}",
                "[brackets]", "a|b", "(paren)", "x.y", "\\u0041", "\"", "\\", "'single'", "root ::= x",
                "ends with backslash\\", "\x7f", "\u2028sep\u2029", "long " * 200]


@pytest.fixture(scope="module")
def vocab() -> Iterator[Any]:
    """The bundled teacher's vocabulary (no weights): llama.cpp's own grammar parser needs one."""
    import llama_cpp

    from pld_desktop.backends.bundled import bundled_local_teacher_path
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(bundled_local_teacher_path()).encode(), params)
    assert model
    yield llama_cpp.llama_model_get_vocab(model)
    llama_cpp.llama_model_free(model)


def parses(vocab: Any, grammar: str) -> bool:
    import llama_cpp
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
    if not sampler:
        return False
    llama_cpp.llama_sampler_free(sampler)
    return True


def decode_gbnf_literal(body: str) -> str:
    """Independent reading of one GBNF string literal body (llama.cpp's escapes)."""
    out, i = [], 0
    simple = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "[": "[", "]": "]"}
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        kind = body[i + 1]
        if kind in simple:
            out.append(simple[kind])
            i += 2
            continue
        width = {"x": 2, "u": 4, "U": 8}[kind]
        out.append(chr(int(body[i + 2:i + 2 + width], 16)))
        i += 2 + width
    return "".join(out)


_LITERAL = re.compile(r'"((?:[^"\\]|\\.)*)"')


def label_literals(grammar: str) -> list[str]:
    """The `label` values the grammar allows: the literals of every `...-label ::=` rule, decoded from GBNF."""
    found = []
    for line in grammar.splitlines():
        name, _, body = line.partition(" ::= ")
        if name.endswith("-label"):
            found += [decode_gbnf_literal(m.group(1)) for m in _LITERAL.finditer(body)]
    return found


def rule_endings(grammar: str) -> list[str]:
    found = []
    for line in grammar.splitlines():
        name, _, body = line.partition(" ::= ")
        if re.fullmatch(r"rule(-\d+)?", name):
            found += [decode_gbnf_literal(m.group(1)) for m in _LITERAL.finditer(body)]
    return [f for f in found if f.startswith(", answer ")]


def extraction_grammar(labels: tuple[str, ...], gold: str) -> str:
    from pld_desktop.backends.teacher_grammar import schema_grammar
    return schema_grammar(tp.extraction_schema(labels).model_json_schema(), max_chars=320,
                          patterns=dict(tp.rule_pattern([gold])))


def check_labels(vocab: Any, labels: tuple[str, ...]) -> None:
    from pld_desktop.backends.teacher_grammar import schema_grammar
    for gold in labels:
        grammar = extraction_grammar(labels, gold)
        assert parses(vocab, grammar), (gold, grammar)
        # The extraction reply's label is the gold label, as its exact JSON encoding, and nothing else.
        assert label_literals(grammar) == [json.dumps(gold, ensure_ascii=False)]
        assert rule_endings(grammar) == [f", answer {json.dumps(gold, ensure_ascii=False)[1:-1]}."]
    for schema in (tp.merge_schema(labels), tp.resolution_schema(labels), tp.Review):
        grammar = schema_grammar(schema.model_json_schema(), patterns=dict(tp.rule_pattern(labels)))
        assert parses(vocab, grammar), (schema, grammar)
    resolution = schema_grammar(tp.resolution_schema(labels).model_json_schema(),
                                patterns=dict(tp.rule_pattern(labels)))
    assert sorted(label_literals(resolution)) == sorted(json.dumps(lab, ensure_ascii=False) for lab in labels)


def test_nasty_labels_give_a_grammar_llama_cpp_parses_with_exact_literals(vocab: Any) -> None:
    for label in NASTY_LABELS:
        check_labels(vocab, (label, "plain"))
    check_labels(vocab, tuple(NASTY_LABELS))


def test_seeded_random_labels(vocab: Any) -> None:
    """Without Hypothesis, a seeded generator over the same alphabet of trouble."""
    rng = random.Random(12)
    alphabet = ['"', "\\", "\n", "\r", "\t", "\x00", "\x1b", "\u202e", "\u200b", "\u0301", "\U0001F600", "{",
                "}", "|", "(", ")", "[", "]", ".", "*", " ", "a", "Z", "0", "-", "_", "\x7f", "\u2028", ":", "="]
    for _ in range(60):
        labels = tuple(dict.fromkeys("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
                                     for _ in range(rng.randint(1, 4))))
        check_labels(vocab, labels)


def test_property_arbitrary_labels(vocab: Any) -> None:
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    @hypothesis.settings(max_examples=150, deadline=None)
    @hypothesis.given(st.lists(st.text(min_size=1, max_size=400), min_size=1, max_size=4, unique=True))
    def run(labels: list[str]) -> None:
        check_labels(vocab, tuple(labels))
    run()


def test_strings_cannot_hold_raw_control_characters() -> None:
    from pld_desktop.backends.teacher_grammar import _PRIMITIVES
    char = _PRIMITIVES["json-char"]
    assert char.startswith('[^"\\\\\\x00-\\x1F]')  # no raw quote, backslash or control character


def test_rule_has_no_character_cap_and_ends_the_sentence() -> None:
    grammar = extraction_grammar(("positive", "negative"), "negative")
    rule = next(line for line in grammar.splitlines() if line.startswith("rule ::= "))
    assert rule == 'rule ::= "\\"If " condition (", answer negative.") "\\"" ws'
    from pld_desktop.backends.teacher_grammar import _PRIMITIVES
    lines = dict(line.split(" ::= ", 1) for line in grammar.splitlines())
    # Whole words of any length up to a word bound, never a character cap that cuts a word.
    assert lines["condition"] == 'condition-word (" " condition-word){1,29}'
    # One clause: punctuation that would start a second sentence is not a condition character, so the
    # grammar's ", answer <label>." is the only way on.
    assert lines["condition-char"] == _PRIMITIVES["condition-char"] == r'[^ ",.;:!?\\\x00-\x1F]'


def test_a_rule_at_the_word_bound_is_reported_cut() -> None:
    from pld_desktop.backends.teacher_grammar import RULE_MAX_WORDS, rule_hit_bound
    whole = json.dumps({"reasoning": "r", "rule": "If the parcel is late, answer complaint.", "label": "complaint"})
    long = json.dumps({"rules": [{"rule": "If " + " ".join(["word"] * RULE_MAX_WORDS) + ", answer x."}]})
    assert not rule_hit_bound(whole) and rule_hit_bound(long) and not rule_hit_bound("{cut")


def test_a_cut_reply_is_retried_and_never_stored(tmp_path: Path) -> None:
    """A reply that hit the token bound is an invalid attempt even when it parses; the retry is stored."""
    from pld_desktop.core.progress import SilentProgress
    from pld_desktop.core.protocols import TeacherReply, TeacherRequest
    from pld_desktop.core.teacher_calls import TeacherJob, run_teacher_jobs

    from ..helpers import make_project
    schema = tp.merge_schema(("a", "b"))
    replies = [TeacherReply(json.dumps({"rule": "If the text is about the first thing and", "label": "a"}),
                            finish_reason="length"),
               TeacherReply(json.dumps({"rule": "If the text is about the first thing, answer a.", "label": "a"}),
                            finish_reason="stop")]

    class Teacher:
        model_id, max_concurrency, price_per_million = "t", 1, (0.0, 0.0)

        def generate(self, request: TeacherRequest) -> TeacherReply:
            return replies.pop(0)
    project = make_project(tmp_path)
    outcomes, stats = run_teacher_jobs(project, Teacher(), [TeacherJob("k", TeacherRequest("s", "u", schema))],
                                       SilentProgress(), phase=2)
    assert outcomes["k"].parsed.rule.endswith(", answer a.") and stats.attempts == 2
    statuses = [r["status"] for r in rawdb.query(project, "SELECT status FROM teacher_calls ORDER BY id")]
    assert statuses == ["invalid", "ok"]
    project.close()


def test_grammar_guard_refuses_an_unparsable_grammar(vocab: Any) -> None:
    """The guard the local teacher runs before decoding: a bad grammar is a TeacherError, not a segfault."""
    assert not parses(vocab, 'root ::= "unterminated')
    assert parses(vocab, extraction_grammar(('a"b',), 'a"b'))


# ---------------------------------------------------------------------------
# Slow: init plus one real phase-1 item on the bundled SmolLM2 for nasty labels
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_init_and_phase1_with_nasty_labels_give_valid_micro_rules(tmp_path: Path) -> None:
    import csv
    import subprocess
    import sys

    from pld_desktop.core.project import Project
    labels = ['a"b', "back\\slash", "new\nline"]
    texts = ["The parcel arrived two weeks late and the box was crushed.",
             "Great service, the staff answered every question quickly.",
             "I want to change the delivery address of my order."]
    csv_path = tmp_path / "nasty.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(15):
            w.writerow([f"{texts[i % 3]} (case {i})", labels[i % 3]])
    project = tmp_path / "nasty.pld"
    repo = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-m", "pld_desktop.cli", "init", str(project), "--csv", str(csv_path),
                        "--text", "text", "--label", "label", "--ratios", "40/30/30"], capture_output=True,
                       text=True, cwd=repo, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    from pld_desktop.backends.local_teacher import LocalTeacher
    from pld_desktop.core.protocols import TeacherRequest
    from pld_desktop.core.teacher_calls import parse_reply
    with Project.open(project) as p:
        stored = tuple(p.dataset_info()["labels"])
        rows = rawdb.query(p, "SELECT text, label FROM examples WHERE split = 'train' ORDER BY id")
    assert sorted(stored) == sorted(labels)
    schema = tp.extraction_schema(stored)
    with LocalTeacher() as teacher:
        for gold in labels:
            text = next(r["text"] for r in rows if r["label"] == gold)
            request = TeacherRequest(tp.EXTRACTION_SYSTEM, tp.extraction_user("Sort customer messages.", stored, {},
                                     text, gold), schema, "extraction", tp.rule_pattern([gold]))
            reply = teacher.generate(request)
            parsed = parse_reply(reply.text, schema)
            assert parsed.label == gold
            assert parsed.rule.startswith("If ") and parsed.rule.endswith(f", answer {gold}.")
