"""Side-by-side testing in the core: McNemar's exact test, prompt choices, example sets and compare_prompts."""

from __future__ import annotations

from pathlib import Path

import pytest
from scipy.stats import binomtest

from pld_desktop.core.compare import (
    ExampleSet,
    PromptChoice,
    classify_both,
    compare_prompts,
    mcnemar_exact,
    prompt_choices,
    resolve_prompt,
    verdict_text,
)
from pld_desktop.core.dataset import ColumnMapping, DatasetError
from pld_desktop.core.progress import Cancelled, ProgressBase, SilentProgress
from pld_desktop.core.project import Project
from pld_desktop.core.protocols import PromptTooLong

from ..fakes import FakeStudent


@pytest.fixture
def distilled(distilled_file: Path) -> Path:
    return distilled_file  # the session's distilled project (conftest); the tests below work on copies of it


def copy_of(src: Path, tmp_path: Path) -> Project:
    with Project.open(src) as project:
        project.save_as(tmp_path / "copy.pld")
    return Project.open(tmp_path / "copy.pld")


# -- McNemar -------------------------------------------------------------------------------------------------------
def test_mcnemar_known_values() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(1, 9) == 0.021484375  # 2 * (1 + 10) / 1024, exactly
    assert mcnemar_exact(9, 1) == mcnemar_exact(1, 9)
    assert mcnemar_exact(5, 5) == 1.0
    assert mcnemar_exact(0, 1) == 1.0
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    for b, c in [(3, 17), (12, 30), (40, 41), (0, 25), (200, 260), (1500, 1400)]:
        assert mcnemar_exact(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-9)
        assert mcnemar_exact(b, c) == mcnemar_exact(c, b)
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)


def test_verdict_words() -> None:
    assert verdict_text("v2", "zero-shot", 1, 9, 0.0215, 30, 10, 30).startswith("B (zero-shot) is better")
    assert "No significant difference" in verdict_text("v2", "zs", 3, 4, 1.0, 30, 7, 30)
    assert "exactly the same" in verdict_text("v2", "zs", 0, 0, 1.0, 30, 2, 30)
    assert "No gold labels" in verdict_text("v2", "zs", 0, 0, None, 0, 2, 5)


# -- choices and example sets -------------------------------------------------------------------------------------
def test_prompt_choices_resolve_to_the_phase4_prompts(distilled: Path, tmp_path: Path) -> None:
    project = copy_of(distilled, tmp_path)
    choices = prompt_choices(project)
    kinds = [c.kind for c in choices]
    assert "current_edit" not in kinds  # nothing edited yet
    assert kinds.count("version") == len(project.rule_sets()) and kinds[-2:] == ["zero_shot", "few_shot"]
    chosen = project.get_setting("chosen_rule_set_id")
    assert any(c.rule_set_id == chosen and "chosen" in c.label for c in choices)
    last = project.get_setting("last_evaluation")
    phase4 = {k: project.evaluation(last[k]).prompt_text for k in ("pld", "zero_shot", "few_shot")}
    assert resolve_prompt(project, PromptChoice("version", chosen)).text == phase4["pld"]
    assert resolve_prompt(project, PromptChoice("zero_shot")).text == phase4["zero_shot"]
    assert resolve_prompt(project, PromptChoice("few_shot")).text == phase4["few_shot"]
    with pytest.raises(ValueError, match="no edited version"):
        resolve_prompt(project, PromptChoice("current_edit"))
    project.set_setting("edited_rule_set_id", project.rule_sets()[0].id)
    assert prompt_choices(project)[0].kind == "current_edit"
    assert resolve_prompt(project, PromptChoice("current_edit")).text == \
        project.rule_set(project.rule_sets()[0].id).prompt_text
    with pytest.raises(ValueError, match="Unknown prompt kind"):
        PromptChoice("best")
    project.close()


def test_pasted_rows_parse_labels_and_refuse_unknown_ones() -> None:
    labels = ["complaint", "fraud_report", "question"]
    rows = ExampleSet.from_pasted("How do I reset my PIN?\tquestion\n\n  Someone stole my card  \nfee again!\t\n",
                                  labels).rows
    assert [(r.text, r.label) for r in rows] == [("How do I reset my PIN?", "question"),
                                                 ("Someone stole my card", None), ("fee again!", None)]
    with pytest.raises(ValueError, match=r"Line 2: 'complain' after the tab is not one of the labels"):
        ExampleSet.from_pasted("ok\tquestion\nbad fee\tcomplain", labels)
    with pytest.raises(ValueError, match="no rows to test"):
        ExampleSet.from_pasted("\n  \n", labels)


def test_csv_rows_with_text_or_the_projects_own_columns(tmp_path: Path) -> None:
    labels = ["complaint", "fraud_report", "question"]
    plain = tmp_path / "plain.csv"
    plain.write_text('text,label\n"Where is, my branch?",question\nI never bought this,\n', encoding="utf-8")
    rows = ExampleSet.from_csv(plain, labels).rows
    assert [(r.text, r.label, r.where) for r in rows] == [("Where is, my branch?", "question", "line 2"),
                                                          ("I never bought this", None, "line 3")]
    own = tmp_path / "own.csv"
    own.write_text("message,label\nhello there,question\n", encoding="utf-8")
    mapping = ColumnMapping(("message",), "label")
    assert ExampleSet.from_csv(own, labels, mapping).rows[0].text == "hello there"
    with pytest.raises(DatasetError, match="needs a header row with a 'text'"):
        ExampleSet.from_csv(own, labels)
    bad = tmp_path / "bad.csv"
    bad.write_text("text,label\nfine,question\n,question\nx,spam\n", encoding="utf-8")
    with pytest.raises(DatasetError) as info:
        ExampleSet.from_csv(bad, labels)
    assert "Line 3: The text is empty" in str(info.value) and "Line 4: 'spam'" in str(info.value)


# -- compare_prompts ------------------------------------------------------------------------------------------------
def test_compare_on_test_reuses_phase4_and_counts_discordant_pairs(distilled: Path, tmp_path: Path) -> None:
    project = copy_of(distilled, tmp_path)
    student = FakeStudent()
    chosen = project.get_setting("chosen_rule_set_id")
    result = compare_prompts(project, student, PromptChoice("version", chosen), PromptChoice("zero_shot"),
                             ExampleSet.from_split("test"), SilentProgress())
    assert student.calls == 0, "phase 4 already scored both prompts on the same test examples"
    last = project.get_setting("last_evaluation")
    assert result.evaluation_ids == (last["pld"], last["zero_shot"])
    assert result.metrics_a["macro_f1"] == pytest.approx(project.evaluation(last["pld"]).metrics["macro_f1"])
    test = project.examples(split="test")
    assert [r.key for r in result.rows] == [e.ext_id for e in test]
    assert all(r.gold == e.label for r, e in zip(result.rows, test))
    # The counts and p-value follow from the rows, and the verdict says it in words.
    b = sum(r.pred_a == r.gold != r.pred_b for r in result.rows)
    c = sum(r.pred_b == r.gold != r.pred_a for r in result.rows)
    assert (result.only_a_right, result.only_b_right) == (b, c) and b + c > 0
    assert result.p_value == mcnemar_exact(b, c)
    assert result.n_disagree == sum(r.pred_a != r.pred_b for r in result.rows) >= b + c
    assert "McNemar" in result.verdict or "same" in result.verdict
    # The fake student finds the rules' cues, the zero-shot prompt has none: A should win on this data.
    assert result.metrics_a["macro_f1"] > result.metrics_b["macro_f1"]
    assert sum(map(sum, result.metrics_a["confusion_matrix"])) == len(test)
    assert 0 < result.rows[0].conf_a <= 1
    project.close()


def test_compare_on_dev_is_stored_and_resumes_after_cancel(distilled: Path, tmp_path: Path) -> None:
    project = copy_of(distilled, tmp_path)
    student = FakeStudent()

    class StopAfter(ProgressBase):
        def on_report(self, done: int, total: int, message: str) -> None:
            if done >= 3:
                self.cancel()

    a = PromptChoice("text", text="Classify.\n\nRules:\n1. If it mentions 'fee', answer complaint. -> complaint")
    # Phase 3's choice already scored 5-shot on dev; predictions of the same prompt are reused, not rerun.
    ids = [e.id for e in project.examples(split="dev")[:8]]
    few_shot_done = {ex_id for ev in project.evaluations() if ev.kind == "few_shot" and ev.split == "dev"
                     for ex_id in project.predictions(ev.id) if ex_id in ids}
    with pytest.raises(Cancelled):
        compare_prompts(project, student, a, PromptChoice("few_shot"), ExampleSet.from_split("dev", limit=8),
                        StopAfter())
    assert student.calls == 3
    result = compare_prompts(project, student, a, PromptChoice("few_shot"), ExampleSet.from_split("dev", limit=8),
                             SilentProgress())
    assert len(result.rows) == 8
    assert student.calls == 3 + 5 + 8 - len(few_shot_done), "A resumed from its 3 saved predictions, B ran once"
    kinds = {project.evaluation(i).kind for i in result.evaluation_ids}
    assert kinds == {"custom", "few_shot"}
    fee_rows = [r for r in result.rows if "fee" in r.text.lower()]
    assert all(r.pred_a == "complaint" for r in fee_rows)
    project.close()


def test_compare_pasted_rows_are_not_stored(distilled: Path, tmp_path: Path) -> None:
    project = copy_of(distilled, tmp_path)
    before = (len(project.examples()), len(project.evaluations()))
    student = FakeStudent()
    chosen = project.get_setting("chosen_rule_set_id")
    rows = ExampleSet.from_pasted("There's a fee I was never told about\tcomplaint\nhow do I open an account?\n",
                                  project.labels())
    result = compare_prompts(project, student, PromptChoice("version", chosen), PromptChoice("zero_shot"), rows,
                             SilentProgress())
    assert (len(project.examples()), len(project.evaluations())) == before
    assert result.evaluation_ids is None and len(result.rows) == 2 and student.calls == 4
    assert result.n_labelled == 1 and result.metrics_a["n"] == 1
    assert any("1 rows have predictions only" in n for n in result.notes)
    unlabelled = ExampleSet.from_pasted("just text", project.labels())
    result = compare_prompts(project, student, PromptChoice("zero_shot"), PromptChoice("zero_shot"), unlabelled,
                             SilentProgress())
    assert result.metrics_a is None and result.p_value is None and "No gold labels" in result.verdict
    assert student.calls == 5, "identical prompts are classified once"
    project.close()


def test_prompt_that_does_not_fit_fails_before_any_work(distilled: Path, tmp_path: Path) -> None:
    project = copy_of(distilled, tmp_path)
    probe = FakeStudent()
    longest = max((e.text for e in project.examples(split="dev")), key=len)
    zero_shot = resolve_prompt(project, PromptChoice("zero_shot")).text
    # Room for the zero-shot prompt, not for the five solved examples of the few-shot one.
    student = FakeStudent(n_ctx=probe.count_tokens(zero_shot) + probe.count_tokens(longest) + 15)
    with pytest.raises(PromptTooLong, match=r"Prompt B \(5-shot\)"):
        compare_prompts(project, student, PromptChoice("zero_shot"), PromptChoice("few_shot"),
                        ExampleSet.from_split("dev"), SilentProgress())
    assert student.calls == 0
    project.close()


def test_classify_both() -> None:
    student = FakeStudent()
    labels = ["complaint", "fraud_report", "question"]
    rules = "Rules:\n1. If the message mentions 'stolen', answer fraud_report. -> fraud_report"
    pa, pb = classify_both(student, rules, "No rules.", "my card was stolen", labels)
    assert pa.label == "fraud_report" and pa.probs["fraud_report"] > pb.probs["fraud_report"]
    with pytest.raises(ValueError, match="Type some text"):
        classify_both(student, rules, rules, "   ", labels)


@pytest.mark.slow
def test_compare_with_the_real_bundled_student(distilled: Path, tmp_path: Path) -> None:
    from pld_desktop.backends.llama_student import LlamaStudent

    project = copy_of(distilled, tmp_path)
    chosen = project.get_setting("chosen_rule_set_id")
    with LlamaStudent() as student:
        result = compare_prompts(project, student, PromptChoice("version", chosen), PromptChoice("zero_shot"),
                                 ExampleSet.from_split("dev", limit=6), SilentProgress())
        assert len(result.rows) == 6 and result.metrics_a["n"] == 6
        labels = set(project.labels())
        assert all(r.pred_a in labels and r.pred_b in labels and 0 < r.conf_a <= 1 for r in result.rows)
        stored = project.predictions(result.evaluation_ids[0])
        assert len(stored) == 6
        assert all(abs(sum(p["probs"].values()) - 1) < 1e-3 for p in stored.values())
        # The try-it box gives the same answer as the stored evaluation for the same input and prompt.
        first = result.rows[0]
        pa, _ = classify_both(student, result.prompt_a.text, result.prompt_b.text, first.text, project.labels())
        assert pa.label == first.pred_a and pa.probs[pa.label] == pytest.approx(first.conf_a, abs=1e-4)
    project.close()
