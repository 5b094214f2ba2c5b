"""Evaluations reuse the predictions another evaluation made with the same prompt and student (issue 15)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pld_desktop.core.evaluate import evaluate_prompt
from pld_desktop.core.progress import SilentProgress

from ..fakes import FakeStudent
from ..helpers import make_project

PROMPT = "Triage the message.\n1. If the message mentions 'fee', answer complaint. -> complaint"


def test_overlapping_samples_are_scored_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLD_FAST_PATHS", raising=False)
    project = make_project(tmp_path)
    train = project.examples(split="train")
    student = FakeStudent()
    first, second = train[:20], train[10:30]
    _, _m1 = evaluate_prompt(project, student, PROMPT, first, kind="pld", split="train", progress=SilentProgress())
    assert student.calls == 20
    eval_id, _m2 = evaluate_prompt(project, student, PROMPT, second, kind="pld", split="train",
                                  progress=SilentProgress())
    assert student.calls == 30  # only the 10 examples not scored before
    preds = project.predictions(eval_id)
    assert sorted(preds) == sorted(e.id for e in second)
    # Same predictions as scoring from scratch.
    fresh = FakeStudent()
    assert {e.id: fresh.classify(PROMPT, e.text, project.labels()).label for e in second} == \
        {i: p["predicted"] for i, p in preds.items()}
    # Another prompt or another student file is not reused.
    evaluate_prompt(project, student, PROMPT + "\n", second, kind="pld", split="train", progress=SilentProgress())
    assert student.calls == 50
    other = FakeStudent()
    other.identity = type(other.identity)("other", "/dev/null", "e" * 64, 0, "fake")
    evaluate_prompt(project, other, PROMPT, second, kind="pld", split="train", progress=SilentProgress())
    assert other.calls == 20


def test_the_old_path_flag_scores_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLD_FAST_PATHS", "0")
    project = make_project(tmp_path)
    train = project.examples(split="train")
    student = FakeStudent()
    evaluate_prompt(project, student, PROMPT, train[:20], kind="pld", split="train", progress=SilentProgress())
    evaluate_prompt(project, student, PROMPT, train[10:30], kind="pld", split="train", progress=SilentProgress())
    assert student.calls == 40


@pytest.mark.slow
def test_real_student_predictions_are_reused_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pld_desktop.backends.llama_student import LlamaStudent
    monkeypatch.delenv("PLD_FAST_PATHS", raising=False)
    project = make_project(tmp_path)
    dev = project.examples(split="dev")[:4]
    with LlamaStudent(n_ctx=1024) as real:
        calls: list[str] = []

        class Counting:
            identity, n_ctx = real.identity, real.n_ctx
            check_fits = staticmethod(real.check_fits)

            @staticmethod
            def classify(prompt: str, text: str, labels):  # type: ignore[no-untyped-def]
                calls.append(text)
                return real.classify(prompt, text, labels)

        _, _first = evaluate_prompt(project, Counting(), PROMPT, dev[:3], kind="pld", split="dev",
                                   progress=SilentProgress())
        eval_id, _ = evaluate_prompt(project, Counting(), PROMPT, dev, kind="pld", split="dev",
                                     progress=SilentProgress())
        assert calls == [e.text for e in dev[:3]] + [dev[3].text]
        reused = project.predictions(eval_id)
        for e in dev[:3]:
            again = real.classify(PROMPT, e.text, project.labels())
            assert reused[e.id]["predicted"] == again.label
            assert reused[e.id]["probs"] == pytest.approx(again.probs, abs=1e-4)
