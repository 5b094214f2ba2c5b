"""Issue 12: whole, on-label, general rules; useless rewrites as failures; the choice on dev; calibration; reruns."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from pld_desktop.core.calibration import calibrate, calibrated_evaluation, content_free_prior
from pld_desktop.core.clustering import keep_every_label
from pld_desktop.core.evaluate import evaluate_prompt
from pld_desktop.core.pipeline import (
    best_mode,
    choice_warning,
    pick_rules_prompt,
    quality_status,
    retry_failed_items,
    run_pipeline,
)
from pld_desktop.core.progress import SilentProgress
from pld_desktop.core.protocols import TeacherReply, TeacherRequest, TeacherUsage
from pld_desktop.core.settings import RunSettings
from pld_desktop.core.teacher_prompts import (
    copy_reason,
    extraction_schema,
    longest_shared_run,
    meaning_reason,
    off_label_reason,
)
from pld_desktop.resources import DEMO_TASK

from .. import rawdb
from ..fakes import FakeBackends, FakeStudent, FakeTeacher, _example_text
from ..helpers import make_project


def settings(**kw: Any) -> RunSettings:
    return RunSettings(**{"task": DEMO_TASK, "loop_max_iterations": 2, **kw})


def _status(project: Any) -> dict[str, Any]:
    from pld_desktop.cli import _status_dict
    return _status_dict(project)


# ---------------------------------------------------------------------------
# 8. Reruns are free and stable
# ---------------------------------------------------------------------------
def test_a_rerun_does_not_resend_given_up_items_and_keeps_the_figures(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    bad = project.examples(split="train")[0].text
    teacher = FakeTeacher(invalid_for=[bad])
    run_pipeline(project, settings(), FakeBackends(teacher=teacher), SilentProgress())
    before = _status(project)
    assert before["rule_quality"]["given_up_items"] == 1
    again = FakeTeacher(invalid_for=[bad])
    run_pipeline(project, settings(), FakeBackends(teacher=again), SilentProgress())
    assert again.calls == 0  # neither the given-up item nor anything else is sent again
    after = _status(project)
    for key in ("micro_rules", "failed_items", "rule_sets", "teacher", "evaluation", "rule_quality", "chosen"):
        assert after[key] == before[key], key
    assert len(project.loop_rounds()) == len(rawdb.query(project, "SELECT DISTINCT round, base_rule_set_id, "
                                                           "candidate_rule_set_id FROM loop_rounds"))
    # On request the given-up item is tried again (and now succeeds).
    assert retry_failed_items(project, [1]) == 1
    healed = FakeTeacher()
    run_pipeline(project, settings(), FakeBackends(teacher=healed), SilentProgress(), phases=[1])
    assert healed.calls == 1
    assert len(project.micro_rules()) == len(project.examples(split="train"))
    project.close()


def test_cli_retry_failed_flag_is_parsed() -> None:
    from pld_desktop.cli import build_parser
    args = build_parser().parse_args(["run", "p.pld", "--retry-failed"])
    assert args.retry_failed is True
    assert build_parser().parse_args(["run", "p.pld"]).retry_failed is False


# ---------------------------------------------------------------------------
# 4. Useless rewrites are failures
# ---------------------------------------------------------------------------
class RewriteTeacher(FakeTeacher):
    """Answers every rewrite with `rules_for(current rules)`; records what each retry was told."""

    def __init__(self, rules_for: Any) -> None:
        super().__init__()
        self.rules_for = rules_for

    def _reply(self, request: TeacherRequest, schema: dict) -> dict:
        if request.kind != "resolution":
            return super()._reply(request, schema)
        rules = re.findall(r"^\d+\. (.*) -> (\S+)$", request.user.split("Examples the model got WRONG")[0], re.M)
        return {"root_cause": "x", "rules": self.rules_for(rules), "conflicts": []}


@pytest.mark.parametrize("name,rules_for,reason", [
    ("empty", lambda rules: [], "the rule list is empty"),
    ("unchanged", lambda rules: [{"rule": t, "label": lab, "from_rules": [i]} for i, (t, lab) in
                                 enumerate(rules, 1)], "the list is unchanged"),
    ("drops a label", lambda rules: [{"rule": t, "label": lab} for t, lab in rules if lab != "question"],
     "drops the label(s) question"),
])
def test_a_useless_rewrite_is_a_failed_attempt_retried_with_feedback(tmp_path: Path, name: str, rules_for: Any,
                                                                     reason: str) -> None:
    project = make_project(tmp_path)
    teacher = RewriteTeacher(rules_for)
    report = run_pipeline(project, settings(loop_max_iterations=1), FakeBackends(teacher=teacher), SilentProgress(),
                          phases=[1, 2, 3])
    loop = report.phases[3]
    rewrites = [r for r in teacher.requests if r.kind == "resolution"]
    assert len(rewrites) == 3  # teacher_max_attempts
    assert reason in rewrites[1].user and "rejected" in rewrites[1].user
    assert loop.failed_attempts == 1 and loop.rounds[0]["failed"] is True
    assert loop.chosen_rule_set_id == loop.start_rule_set_id
    rounds = project.loop_rounds()
    assert len(rounds) == 1 and rounds[0]["candidate_rule_set_id"] is None
    assert rounds[0]["root_cause"].startswith("failed attempt") and reason in rounds[0]["root_cause"]
    assert rawdb.query(project, "SELECT COUNT(*) AS n FROM teacher_calls WHERE kind = 'resolution' AND status = 'ok'"
                         )[0]["n"] == 0
    project.close()


# ---------------------------------------------------------------------------
# 1. Whole, on-label output
# ---------------------------------------------------------------------------
def test_extraction_schema_allows_the_gold_label_only() -> None:
    schema = extraction_schema(("complaint",)).model_json_schema()
    assert schema["properties"]["label"].get("enum", [schema["properties"]["label"].get("const")]) == ["complaint"]


class OffLabelTeacher(FakeTeacher):
    """The first extraction reply per example says 'answer question' under any gold label; later ones behave."""

    def __init__(self, *, cut: bool = False) -> None:
        super().__init__()
        self.cut = cut
        self.seen: set[str] = set()

    def generate(self, request: TeacherRequest) -> TeacherReply:
        if request.kind == "extraction":
            text = _example_text(request.user)
            gold = re.search(r"Gold label: (\S+)", request.user).group(1)  # type: ignore[union-attr]
            if text not in self.seen and gold != "question":
                self.seen.add(text)
                with self._lock:
                    self.requests.append(request)
                if self.cut:
                    return TeacherReply(json.dumps({"reasoning": "r", "rule": "If the message talks about a",
                                                    "label": gold}), TeacherUsage(10, 64, 0, 0, 74),
                                        finish_reason="length")
                return TeacherReply(json.dumps({"reasoning": "r", "rule": "If the message asks how, answer question.",
                                                "label": gold}), TeacherUsage(10, 5, 0, 0, 15))
        return super().generate(request)


@pytest.mark.parametrize("cut", [False, True])
def test_off_label_and_cut_rules_are_retried_never_stored(tmp_path: Path, cut: bool) -> None:
    project = make_project(tmp_path)
    teacher = OffLabelTeacher(cut=cut)
    run_pipeline(project, settings(), FakeBackends(teacher=teacher), SilentProgress(), phases=[1])
    retries = [r for r in teacher.requests if r.kind == "extraction" and "rejected" in r.user]
    assert retries, "the bad replies were retried"
    expected = "output length bound" if cut else "answers 'question' but it must explain"
    assert all(expected in r.user for r in retries)
    q = quality_status(project)["rule_quality"]
    assert q["micro_rules"] == len(project.examples(split="train"))
    assert q["off_label"] == 0 and q["truncated"] == 0
    for m in project.micro_rules():
        assert off_label_reason(m["rule"], m["gold_label"], project.labels()) is None
    project.close()


def test_off_label_reason_reads_the_answer_and_named_labels() -> None:
    labels = ["joy", "sadness", "anger"]
    assert off_label_reason("If the tweet is happy, answer joy.", "joy", labels) is None
    assert off_label_reason("If it is sad, answer sadness.", "joy", labels) is not None
    assert off_label_reason("If it shows joy rather than sadness, answer joy.", "joy", labels) is None
    assert off_label_reason("Tweets full of anger.", "joy", labels) is not None
    assert off_label_reason("If it mentions 1 thing, answer 0.", "0", ["0", "1"]) is None


# ---------------------------------------------------------------------------
# 2. General, not copied
# ---------------------------------------------------------------------------
def test_copy_detection_threshold() -> None:
    example = "Why was I charged a fee twice for the same transfer to my landlord last week"
    assert longest_shared_run("If charged a FEE twice, answer complaint.", example) == 4
    assert copy_reason("If the customer was charged a fee twice, answer complaint.", [example]) is None
    assert copy_reason("If why was I charged a fee twice for the same transfer, answer complaint.", [example])
    short = "What is the capital of Peru ?"
    assert copy_reason("If the question is what is the capital of Peru, answer LOC.", [short])
    assert copy_reason("If the question asks for a capital city, answer LOC.", [short]) is None


class CopyTeacher(FakeTeacher):
    """Extraction rules restate the example word for word, every time."""

    def _reply(self, request: TeacherRequest, schema: dict) -> dict:
        if request.kind == "extraction":
            gold = re.search(r"Gold label: (\S+)", request.user).group(1)  # type: ignore[union-attr]
            text = " ".join(_example_text(request.user).split())
            return {"reasoning": "r", "rule": f"If the message says {text}, answer {gold}.", "label": gold}
        return super()._reply(request, schema)


def test_a_rule_that_still_copies_is_kept_flagged_and_out_of_the_prompt(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    teacher = CopyTeacher()
    run_pipeline(project, settings(), FakeBackends(teacher=teacher), SilentProgress(), phases=[1, 2])
    retries = [r for r in teacher.requests if r.kind == "extraction" and "copies its example" in r.user]
    assert retries
    n_train = len(project.examples(split="train"))
    q = quality_status(project)["rule_quality"]
    assert q["micro_rules"] == n_train and q["copied"] > 0  # kept, flagged
    rs = project.rule_set(project.get_setting("synthesis_rule_set_id"))
    texts = [e.text for e in project.examples(split="train")]
    enabled = [r for r in rs.rules if r.enabled]
    for r in enabled:  # nothing in the prompt restates an example
        assert copy_reason(r.text, texts) is None
    for r in rs.rules:
        if not r.enabled:
            assert r.flag.startswith("the rule copies")
            assert r.text not in rs.prompt_text
    project.close()


# ---------------------------------------------------------------------------
# 3. Synthesis keeps every label
# ---------------------------------------------------------------------------
def test_large_noise_is_regrouped_and_lone_rules_only_stand_alone() -> None:
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(12, 8))
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    labels = np.array([0, 0, 0, 0, -1, -1, -1, -1, -1, -1, 1, -1])
    out, note = keep_every_label(vecs, labels)
    assert (out >= 0).sum() >= 11 - 1 and "regrouped" in note  # the noise became clusters
    lone = np.array([0, 0, 0, 1])
    out, note = keep_every_label(vecs[:4], lone)
    assert list(out) == [0, 0, 0, 0] and "joined their nearest" in note  # no rule of its own, not dropped
    two = np.array([0, 0, 1, 1, 2])
    near = vecs[:5].copy()
    near[4] = near[2] + 0.01 * near[0]  # the lone rule is nearly the same as a member of cluster 1
    out, _ = keep_every_label(near, two)
    assert out[4] == 1
    singles = np.array([0, 1, 2])
    out, _ = keep_every_label(vecs[:3], singles)
    assert len(set(out.tolist())) == 1 and (out >= 0).all()  # one rule from the label's lone rules


class MeaningTeacher(FakeTeacher):
    def __init__(self, meaning: str) -> None:
        super().__init__()
        self.meaning = meaning

    def _reply(self, request: TeacherRequest, schema: dict) -> dict:
        if request.kind == "review":
            return {"label_meanings": [{"label": "1.2", "meaning": self.meaning},
                                       {"label": "complaint", "meaning": self.meaning}], "conflicts": []}
        return super()._reply(request, schema)


def test_teacher_meanings_must_be_words_typed_ones_are_kept(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    teacher = MeaningTeacher("3")
    run_pipeline(project, settings(label_meanings={"question": "the customer asks something"}),
                 FakeBackends(teacher=teacher), SilentProgress(), phases=[1, 2])
    reviews = [r for r in teacher.requests if r.kind == "review"]
    assert len(reviews) == 3 and "is not a description" in reviews[1].user
    rs = project.rule_set(project.get_setting("synthesis_rule_set_id"))
    assert rs.meanings == {"question": "the customer asks something"}  # typed: as given; "3": left empty
    assert meaning_reason("", "joy") and meaning_reason("3", "joy") and meaning_reason("joy", "joy")
    assert meaning_reason("tweets expressing happiness or delight", "joy") is None
    project.close()


# ---------------------------------------------------------------------------
# 5-7. The choice on dev, rules+examples, calibration
# ---------------------------------------------------------------------------
class ZeroShotWins(FakeStudent):
    """Right on every example under a prompt without rules, always 'question' under any rules prompt."""

    def __init__(self, gold: dict[str, str]) -> None:
        super().__init__()
        self.gold = gold

    def classify(self, system_prompt: str, text: str, labels: Any) -> Any:
        pred = super().classify(system_prompt, text, labels)
        if "Rules (" not in system_prompt and "Examples:" not in system_prompt and text in self.gold:
            pred.label = self.gold[text]
            pred.probs = {lab: (0.9 if lab == pred.label else 0.1 / (len(labels) - 1)) for lab in labels}
        elif "Rules (" in system_prompt:
            pred.label = "question"
            pred.probs = {lab: (0.8 if lab == "question" else 0.2 / (len(labels) - 1)) for lab in labels}
        return pred


def test_the_choice_is_made_on_dev_and_says_when_zero_shot_wins(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    project = make_project(tmp_path)
    gold = {e.text: e.label for e in project.examples()}
    backends = FakeBackends(student=ZeroShotWins(gold))
    run_pipeline(project, settings(), backends, SilentProgress())
    chosen = quality_status(project)["chosen"]
    assert set(chosen) >= {"rule_set", "prompt", "dev_macro_f1", "zero_shot_dev_macro_f1", "few_shot_dev_macro_f1",
                           "calibrated"}
    assert chosen["prompt"] in ("rules", "rules+examples")
    assert chosen["zero_shot_dev_macro_f1"] == pytest.approx(1.0)
    assert "No rules prompt beats zero-shot on dev" in chosen["warning"]
    assert "larger student" in chosen["warning"]
    from pld_desktop.cli import _print_status
    _print_status(project)
    assert "No rules prompt beats zero-shot on dev" in capsys.readouterr().out
    # Phase 4 has its own rules+examples row, with calibrated figures beside the raw ones.
    last = project.get_setting("last_evaluation")
    assert "pld_examples" in last
    for kind in ("pld", "pld_examples", "zero_shot", "few_shot"):
        assert project.get_setting(f"calibrated:{last[kind]}")["metrics"]["n"] > 0
    project.close()


def test_the_choice_weighs_both_prompts_in_both_modes() -> None:
    # Plain rules win raw (0.50 vs 0.40) but rules+examples calibrated (0.70) beats everything: it is the choice,
    # so the warning's "best rules prompt" is the chosen one.
    rows = {"rules": {"f1": 0.50, "f1_calibrated": 0.45}, "rules+examples": {"f1": 0.40, "f1_calibrated": 0.70},
            "zero_shot": {"f1": 0.1, "f1_calibrated": 0.9}}
    assert pick_rules_prompt(rows) == ("rules+examples", True)
    # Ties keep raw scores, then plain rules.
    tied = {"rules": {"f1": 0.5, "f1_calibrated": 0.5}, "rules+examples": {"f1": 0.5, "f1_calibrated": 0.5}}
    assert pick_rules_prompt(tied) == ("rules", False)
    raw_first = {"rules": {"f1": 0.3, "f1_calibrated": 0.6}, "rules+examples": {"f1": 0.6, "f1_calibrated": 0.3}}
    assert pick_rules_prompt(raw_first) == ("rules+examples", False)
    assert best_mode({"f1": 0.4, "f1_calibrated": 0.8}) == (0.8, "calibrated")
    assert best_mode({"f1": 0.4, "f1_calibrated": 0.4}) == (0.4, "raw")
    assert pick_rules_prompt({"rules": {"f1": 0.25, "f1_calibrated": 0.5}}) == ("rules", True)


def test_the_warning_weighs_the_baselines_calibrated_too() -> None:
    # SST-2 on the bundled models: rules+examples raw 0.657 beat zero-shot and 5-shot raw, but 5-shot calibrated
    # scores 0.829 on dev; the run must say so.
    rows = {"rules": {"f1": 0.333, "f1_calibrated": 0.333}, "rules+examples": {"f1": 0.657, "f1_calibrated": 0.333},
            "zero_shot": {"f1": 0.438, "f1_calibrated": 0.556}, "few_shot": {"f1": 0.496, "f1_calibrated": 0.829}}
    warning = choice_warning(rows, "rules+examples", False)
    assert "beats zero-shot on dev but not 5-shot" in warning and "0.829 calibrated" in warning
    rows["zero_shot"]["f1_calibrated"] = 0.7
    assert "No rules prompt beats zero-shot on dev" in choice_warning(rows, "rules+examples", False)
    rows["few_shot"]["f1_calibrated"] = rows["zero_shot"]["f1_calibrated"] = 0.4
    assert choice_warning(rows, "rules+examples", False) == ""


def test_the_choice_keeps_rules_that_beat_the_baselines(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    run_pipeline(project, settings(), FakeBackends(), SilentProgress())
    chosen = quality_status(project)["chosen"]
    assert chosen["warning"] == ""
    assert chosen["dev_macro_f1"] > chosen["zero_shot_dev_macro_f1"]
    assert chosen["rule_set"] == project.get_setting("chosen_rule_set_id")
    project.close()


def test_calibration_divides_out_the_content_free_prior(tmp_path: Path) -> None:
    labels = ["a", "b"]
    assert calibrate({"a": 0.6, "b": 0.4}, {"a": 0.8, "b": 0.2}, labels)["b"] == pytest.approx(
        (0.4 / 0.2) / (0.6 / 0.8 + 0.4 / 0.2))
    project = make_project(tmp_path)

    class Biased(FakeStudent):
        """Leans to 'complaint' whatever the input; the keyword signal is small but real."""

        def classify(self, system_prompt: str, text: str, labs: Any) -> Any:
            pred = super().classify(system_prompt, text, labs)
            scores = {lab: pred.probs[lab] * (6.0 if lab == "complaint" else 1.0) for lab in labs}
            total = sum(scores.values())
            pred.probs = {lab: v / total for lab, v in scores.items()}
            pred.label = max(labs, key=lambda lab: pred.probs[lab])
            return pred

    student = Biased()
    dev = project.examples(split="dev")
    prompt = ("Classify.\n\nRules (apply the first rule that fits; the label after -> is the answer):\n"
              "1. If it mentions 'how' or '?' -> question\n2. If it mentions 'never' or 'stolen' -> fraud_report\n"
              "3. If it mentions 'fee' or 'still' -> complaint")
    eval_id, raw = evaluate_prompt(project, student, prompt, dev, kind="pld", split="dev", progress=SilentProgress())
    calibrated = calibrated_evaluation(project, student, eval_id, dev)
    assert calibrated["metrics"]["macro_f1"] > raw["macro_f1"]
    calls = student.calls
    assert calibrated_evaluation(project, student, eval_id, dev) == calibrated and student.calls == calls
    assert content_free_prior(project, student, prompt, project.labels()) == calibrated["prior"]
    # The raw probabilities are untouched.
    assert project.evaluation(eval_id).metrics["macro_f1"] == raw["macro_f1"]
    project.close()


@pytest.mark.slow
def test_calibration_on_the_bundled_student(tmp_path: Path) -> None:
    from pld_desktop.backends.llama_student import LlamaStudent
    from pld_desktop.core.prompts import build_zero_shot_prompt
    project = make_project(tmp_path)
    student = LlamaStudent(n_ctx=2048, state_dir=tmp_path / "states")
    try:
        labels = project.labels()
        dev = project.examples(split="dev")[:6]
        prompt = build_zero_shot_prompt("Classify the bank customer's message.", labels)
        eval_id, _raw = evaluate_prompt(project, student, prompt, dev, kind="zero_shot", split="dev",
                                       progress=SilentProgress())
        cal = calibrated_evaluation(project, student, eval_id, dev)
        prior = cal["prior"]
        assert sum(prior.values()) == pytest.approx(1.0, abs=1e-3) and all(v > 0 for v in prior.values())
        preds = project.predictions(eval_id)
        for e in dev:
            expected = calibrate(preds[e.id]["probs"], prior, labels)
            assert cal["predictions"][str(e.id)]["probs"] == pytest.approx(expected, abs=1e-5)
        assert content_free_prior(project, student, prompt, labels) == prior  # cached, not recomputed
    finally:
        student.close()
        project.close()


def test_gemini_gets_a_one_value_enum_and_bad_replies_are_retried_with_the_reason(tmp_path: Path) -> None:
    """The real google-genai client against the local fake server: schema, off-label retry, MAX_TOKENS retry."""
    from ..fake_gemini import FakeGemini, success, truncated_json
    from ..helpers import GEMINI_KEY as KEY
    from ..helpers import extraction_responder, gemini_backends
    project = make_project(tmp_path)
    train = project.examples(split="train")
    with FakeGemini(expected_key=KEY) as server:
        bad = json.dumps({"reasoning": "r", "rule": "If it asks how, answer question.", "label": "complaint"})
        server.enqueue(truncated_json({"reasoning": "r", "rule": "If the message", "label": "x"}))
        state = {"off": 0}

        def responder(body: dict) -> object:
            user = body["contents"][0]["parts"][0]["text"]
            if "Gold label: complaint" in user and "rejected" not in user and state["off"] < 1:
                state["off"] += 1
                return success(bad)
            return extraction_responder(body)
        server.responder = responder
        report = run_pipeline(project, settings(teacher="gemini"), gemini_backends(server), SilentProgress(),
                              phases=[1])
        assert report.status == "done"
        schemas = [json.dumps(r.generation_config) for r in server.requests]
        gold_of = [re.search(r"Gold label: (\S+)", r.body["contents"][0]["parts"][0]["text"]).group(1)
                   for r in server.requests]
        for schema, gold in zip(schemas, gold_of):
            assert f'"enum": ["{gold}"]' in schema  # the label field allows the gold label only
        retried = [r.body["contents"][0]["parts"][0]["text"] for r in server.requests
                   if "rejected" in r.body["contents"][0]["parts"][0]["text"]]
        assert any("answers 'question' but it must explain" in u for u in retried)
        assert any("output length bound" in u for u in retried)
    assert len(project.micro_rules()) == len(train)
    q = quality_status(project)["rule_quality"]
    assert q["off_label"] == 0 and q["truncated"] == 0
    project.close()




@hyp_settings(max_examples=60, deadline=None)
@given(gold=st.text(min_size=1, max_size=20), other=st.text(min_size=1, max_size=20),
       rule=st.text(max_size=200), example=st.text(max_size=200))
def test_checks_take_any_user_text(gold: str, other: str, rule: str, example: str) -> None:
    """Labels and examples are user data: the one-value schema and the checks hold for any text."""
    schema = extraction_schema((gold,))
    ok = schema.model_validate_json(json.dumps({"reasoning": "r", "rule": "If it fits, answer x.", "label": gold}))
    assert ok.label == gold
    if other != gold:
        with pytest.raises(ValueError):
            schema.model_validate_json(json.dumps({"reasoning": "r", "rule": "If it fits, answer x.", "label": other}))
    for reason in (off_label_reason(rule, gold, [gold, other]), copy_reason(rule, [example]),
                   meaning_reason(rule, gold)):
        assert reason is None or isinstance(reason, str)
    assert copy_reason(example, [example]) is not None or longest_shared_run(example, example) < 5
