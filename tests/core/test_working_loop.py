"""The analyst's loop with test doubles: one working version, dev-first scores, conflicts through edits,
rule impact, version diff, deployment files and the `pld rules / versions / diff / eval` commands (issue 11)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from pld_desktop.core.compare import default_pair
from pld_desktop.core.deploy import gbnf_literal, labels_grammar
from pld_desktop.core.diff import diff_rules, diff_versions, prompt_numbers
from pld_desktop.core.domain import Conflict
from pld_desktop.core.export import ALL_FORMATS, export_rule_set
from pld_desktop.core.impact import ABLATION_KIND, rule_impact, stored_impact
from pld_desktop.core.phases.evaluation import run_evaluation
from pld_desktop.core.progress import Cancelled, SilentProgress
from pld_desktop.core.project import CHOSEN_RULE_SET, EDITED_RULE_SET, SYNTHESIS_RULE_SET, Project
from pld_desktop.core.results_csv import export_results_csv
from pld_desktop.core.rule_edits import (
    LABEL_MISMATCH,
    Delete,
    Insert,
    Move,
    SetEnabled,
    SetLabel,
    SetText,
    changed_since,
    fix_label_to_text,
    fix_text_to_label,
    label_mismatches,
    recompute_conflicts,
    save_version,
    text_label,
    version_conflicts,
)
from pld_desktop.core.scoring import latest_scores, score_version, status_evaluations, version_history
from pld_desktop.core.scoring import test_use_count as count_test_uses
from pld_desktop.core.working import (
    PICKED_OVER_SETTING,
    require_working_rule_set,
    set_working_rule_set,
    working_rule_set,
    working_version,
)

from ..fakes import FakeBackends, FakeEmbedder, FakeStudent
from ..helpers import make_project, settings


@pytest.fixture
def project(distilled_project: Project) -> Project:
    return distilled_project  # this test's copy of the session's distilled project (conftest)


def _ids(conflicts: list[Conflict]) -> set[tuple]:
    return {(c.rule_a, c.rule_b, c.source, c.reason, json.dumps(c.evidence, sort_keys=True))
            for c in conflicts}


# ---------------------------------------------------------------------------
# 1. One working version
# ---------------------------------------------------------------------------
def test_working_version_is_the_users_then_the_pipelines_then_synthesis(project: Project) -> None:
    chosen = project.rule_set_pointer(CHOSEN_RULE_SET)
    synthesis = project.rule_set_pointer(SYNTHESIS_RULE_SET)
    assert chosen is not None and synthesis is not None
    assert working_version(project).source == "chosen" and working_rule_set(project) == chosen
    rules = project.rule_set(chosen).rules
    edited = save_version(project, chosen, SetEnabled(rules[0].uid, False).apply(rules)[0], "edit")
    assert working_version(project).rule_set_id == edited and working_version(project).source == "edited"
    set_working_rule_set(project, synthesis)  # a pick of an older version wins too
    assert project.get_setting(PICKED_OVER_SETTING) == chosen  # the pipeline's choice the pick was made over
    assert working_rule_set(project) == synthesis
    # A later pipeline choice is the more recent decision.
    project.set_rule_set_pointer(CHOSEN_RULE_SET, edited)
    assert working_version(project).source == "chosen" and working_rule_set(project) == edited
    project.set_rule_set_pointer(CHOSEN_RULE_SET, None)
    project.set_rule_set_pointer(EDITED_RULE_SET, None)
    assert working_version(project).source == "synthesis"
    project.set_setting(EDITED_RULE_SET, 999)  # a pointer to a version that is gone reads as unset
    assert project.rule_set_pointer(EDITED_RULE_SET) is None and working_rule_set(project) == synthesis
    with pytest.raises(ValueError, match="not a rule-set pointer"):
        project.rule_set_pointer("chosen")


def test_phase4_results_csv_and_every_export_name_the_working_version(project: Project, tmp_path: Path) -> None:
    chosen = require_working_rule_set(project)
    rules = project.rule_set(chosen).rules
    edited_rules, _ = Move(rules[-1].uid, 0).apply(SetEnabled(rules[1].uid, False).apply(rules)[0])
    edited = save_version(project, chosen, edited_rules, "edit: move and disable")
    student = FakeStudent()
    report = run_evaluation(project, student, settings(), SilentProgress())  # phase 4 without an explicit id
    assert report.rule_set_id == edited
    written = export_rule_set(project, tmp_path / "out", ALL_FORMATS)
    assert all(f"-v{edited}" in p.name for p in written), written
    rs = project.rule_set(edited)
    txt = next(p for p in written if p.suffix == ".txt")
    assert txt.read_bytes() == rs.prompt_text.encode("utf-8")
    assert project.evaluation(latest_scores(project, edited, "test")["rules"].evaluation_id).prompt_text \
        == rs.prompt_text  # byte-identical to the prompt that was scored
    md = next(p for p in written if p.suffix == ".md").read_text(encoding="utf-8")
    doc = json.loads(next(p for p in written if p.suffix == ".json").read_text(encoding="utf-8"))
    assert doc["rule_set"]["id"] == edited
    assert doc["models"]["student"]["sha256"] == student.identity.sha256 and doc["models"]["teacher"]["kind"]
    ext_ids = {e.ext_id for e in project.examples()}
    assert all(set(r["examples"]) <= ext_ids and "example_ids" not in r for r in doc["rules"])
    # The .md lists the enabled rules with the prompt's numbers, in the .txt's order; disabled ones apart.
    prompt_lines = [line for line in rs.prompt_text.splitlines() if line[:1].isdigit()]
    enabled = [r for r in rs.rules if r.enabled]
    assert len(prompt_lines) == len(enabled)
    for n, _r in enumerate(enabled, 1):
        assert prompt_lines[n - 1].startswith(f"{n}. ")
        assert f"\n{n}. " in md and md.index(f"\n{n}. ") < md.index("## Disabled rules")
    disabled_part = md.split("## Disabled rules (not in the prompt)")[1].split("##")[0]
    assert rules[1].uid in disabled_part and not any(line[:1].isdigit() for line in disabled_part.splitlines())
    csv_path = export_results_csv(project, tmp_path / "r.csv")
    rows = list(csv.reader(io.StringIO(csv_path.read_text(encoding="utf-8-sig"))))
    assert {r[-1] for r in rows[1:]} == {f"v{edited}"}
    preds = project.predictions(report.results["pld"]["evaluation_id"])
    by_ext = {e.ext_id: e.id for e in project.examples()}
    col = rows[0].index("pld_predicted")
    assert all(r[col] == preds[by_ext[r[0]]]["predicted"] for r in rows[1:])
    assert default_pair(project)[0].rule_set_id == edited


# ---------------------------------------------------------------------------
# 2. Scores, dev first
# ---------------------------------------------------------------------------
def test_score_on_dev_with_parent_and_baselines_is_cached_and_test_is_counted(project: Project) -> None:
    chosen = require_working_rule_set(project)
    rules = project.rule_set(chosen).rules
    edited = save_version(project, chosen, SetEnabled(rules[0].uid, False).apply(rules)[0], "edit")
    student = FakeStudent()
    before_tests = count_test_uses(project)
    result = score_version(project, student, split="dev")
    n_dev = len(project.examples(split="dev"))
    assert result.rule_set_id == edited and result.score.n == n_dev and result.parent_id == chosen
    assert result.parent is not None and result.zero_shot is not None and result.few_shot is not None
    assert result.delta_vs_parent == pytest.approx(result.score.macro_f1 - result.parent.macro_f1)
    calls = student.calls
    again = score_version(project, student, split="dev")
    assert student.calls == calls and again.score == result.score  # cached by prompt + student + examples
    assert count_test_uses(project) == before_tests  # dev scores are not test uses
    history = version_history(project)
    row = next(r for r in history.rows if r.rule_set_id == edited)
    assert row.is_working and row.dev is not None and row.test is None
    assert row.dev_delta_vs_parent == pytest.approx(result.delta_vs_parent)
    assert next(r for r in history.rows if r.rule_set_id == chosen).is_pipeline_choice
    assert set(history.baselines["dev"]) == {"zero_shot", "few_shot"}
    grandchild = save_version(project, edited, SetEnabled(rules[1].uid, False).apply(
        project.rule_set(edited).rules)[0], "edit again")
    on_test = score_version(project, student, split="test")
    assert on_test.rule_set_id == grandchild and on_test.parent is None  # its parent has no test score...
    assert count_test_uses(project) == before_tests + 1  # ...and was not scored on test behind the user's back
    assert latest_scores(project, edited, "test") == {}
    evaluations = status_evaluations(project)
    assert {"rule_set": grandchild, "prompt": "rules", "split": "test", "macro_f1": pytest.approx(
        on_test.score.macro_f1), "accuracy": pytest.approx(on_test.score.accuracy),
        "n": len(project.examples(split="test"))} in evaluations
    assert {e["prompt"] for e in evaluations} <= {"rules", "zero_shot", "few_shot", "custom"}


def test_an_empty_history_says_so(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    history = version_history(project)
    assert history.is_empty and history.working_rule_set is None and history.test_use_count == 0
    with pytest.raises(ValueError, match="no rule set"):
        score_version(project, FakeStudent())
    project.close()


# ---------------------------------------------------------------------------
# 3. Conflicts through edits
# ---------------------------------------------------------------------------
def _with_teacher_conflict(project: Project) -> tuple[int, Conflict]:
    chosen = require_working_rule_set(project)
    teacher = [c for c in project.conflicts(chosen) if c.source == "teacher"]
    if not teacher:  # the doubles' review names rules 1 and 2; make sure one is stored for this test
        rules = project.rule_set(chosen).rules
        a, b = next((x, y) for x in rules for y in rules if x.label != y.label)
        ua, ub = sorted((a.uid, b.uid))
        project.add_conflict(chosen, ua, ub, "teacher", "both can match a short message", {"named_by": "teacher"})
        teacher = [c for c in project.conflicts(chosen) if c.source == "teacher"]
    return chosen, teacher[0]


def test_rewording_keeps_teacher_conflicts_marked_and_undo_restores_exactly(project: Project) -> None:
    chosen, conflict = _with_teacher_conflict(project)
    before = project.conflicts(chosen)
    rules = project.rule_set(chosen).rules
    uid = conflict.rule_a
    reworded_rules, undo = SetText(uid, "If the message is about something else entirely, answer "
                                   + next(r.label for r in rules if r.uid == uid) + ".").apply(rules)
    v2 = save_version(project, chosen, reworded_rules, "edit: reword")
    kept = [c for c in project.conflicts(v2) if (c.rule_a, c.rule_b, c.source) ==
            (conflict.rule_a, conflict.rule_b, "teacher")]
    assert len(kept) == 1 and changed_since(kept[0]) == [uid]
    # Pairs of unchanged rules keep their conflicts.
    untouched = {(c.rule_a, c.rule_b, c.source) for c in before if uid not in (c.rule_a, c.rule_b)}
    assert untouched <= {(c.rule_a, c.rule_b, c.source) for c in project.conflicts(v2)}
    v3 = save_version(project, v2, undo.apply(reworded_rules)[0], "undo: reword")
    assert _ids(project.conflicts(v3)) == _ids(before)
    # Delete then undo the delete: the rule comes back with its conflicts.
    deleted, undo_delete = Delete(uid).apply(project.rule_set(v3).rules)
    v4 = save_version(project, v3, deleted, "edit: delete")
    assert not any(uid in (c.rule_a, c.rule_b) for c in project.conflicts(v4))
    v5 = save_version(project, v4, undo_delete.apply(deleted)[0], "undo: delete")
    assert isinstance(undo_delete, Insert) and _ids(project.conflicts(v5)) == _ids(before)


def test_recompute_finds_the_edited_rules_similarity_conflicts_in_the_background(project: Project) -> None:
    chosen = require_working_rule_set(project)
    rules = project.rule_set(chosen).rules
    a = rules[0]
    b = next(r for r in rules if r.label != a.label)
    edited, _ = SetText(b.uid, a.text.replace(a.label, b.label)).apply(rules)
    new_id = save_version(project, chosen, edited, "edit: copy a condition")
    added = recompute_conflicts(project, FakeEmbedder(), new_id, settings())
    after = project.conflicts(new_id)
    assert added > 0 and all(b.uid in (c.rule_a, c.rule_b) for c in after[-added:])
    assert recompute_conflicts(project, FakeEmbedder(), new_id, settings()) == 0


LABELS = ["unrelated", "stereotype", "anti-stereotype"]


@pytest.mark.parametrize("text, said", [
    ("If the sentence is about weather, answer unrelated.", "unrelated"),
    ("If it repeats a cliche, the label is stereotype", "stereotype"),
    ("When it reverses a cliche -> anti-stereotype.", "anti-stereotype"),
    ("If it is not a stereotype, answer 'unrelated'.", "unrelated"),
    ("If the text mentions stereotype research.", None),
])
def test_text_label_reads_the_answer_the_text_names(text: str, said: str | None) -> None:
    assert text_label(text, LABELS) == said


def test_a_rule_whose_text_contradicts_its_label_is_a_conflict_with_two_fixes(project: Project) -> None:
    chosen = require_working_rule_set(project)
    rules = project.rule_set(chosen).rules
    r = next(x for x in rules if text_label(x.text, project.labels()) == x.label)
    other = next(lab for lab in project.labels() if lab != r.label)
    relabelled, _ = SetLabel(r.uid, other).apply(rules)
    assert label_mismatches(relabelled, project.labels()) == [(r.uid, r.label, other)]
    v2 = save_version(project, chosen, relabelled, "edit: relabel")
    mismatch = [c for c in project.conflicts(v2) if c.source == LABEL_MISMATCH]
    assert [(c.rule_a, c.rule_b, c.reason) for c in mismatch] == \
        [(r.uid, r.uid, f"text says {r.label}, label is {other}")]
    by_label = fix_label_to_text(relabelled, r.uid, project.labels()).apply(relabelled)[0]
    by_text = fix_text_to_label(relabelled, r.uid, project.labels()).apply(relabelled)[0]
    for fixed in (by_label, by_text):
        assert label_mismatches(fixed, project.labels()) == []
        v3 = save_version(project, v2, fixed, "fix")
        assert not [c for c in version_conflicts(project, v3) if c.source == LABEL_MISMATCH]
    assert next(x for x in by_text if x.uid == r.uid).text.count(other) >= 1


# ---------------------------------------------------------------------------
# 6. Rule impact, diff
# ---------------------------------------------------------------------------
def test_rule_impact_scores_without_each_rule_and_keeps_partial_work(project: Project) -> None:
    rs_id = require_working_rule_set(project)
    enabled = [r for r in project.rule_set(rs_id).rules if r.enabled]

    class StopAfter(SilentProgress):
        def __init__(self, n: int) -> None:
            super().__init__()
            self.n = n

        def begin(self, stage: str, total: int) -> None:
            super().begin(stage, total)
            if stage.startswith("Rule impact ") and int(stage.split()[2].split("/")[0]) > self.n:
                self.cancel()

    student = FakeStudent()
    with pytest.raises(Cancelled):
        rule_impact(project, student, settings=settings(), progress=StopAfter(1))
    partial = stored_impact(project, rs_id)
    assert partial is not None and not partial.complete and len(partial.rules) == 1
    report = rule_impact(project, student, settings=settings())
    assert report.complete and [r.uid for r in report.rules] == [r.uid for r in enabled]
    dev = project.examples(split="dev")
    for imp in report.rules:
        assert imp.delta == pytest.approx(report.macro_f1 - imp.macro_f1_without)
        assert imp.hurts == (imp.delta < 0)
        assert all(f["with"] != f["without"] for f in imp.flips) and len(imp.flips) <= len(dev)
    # The doubles' student votes by the rules' keywords, so removing some rule must change a prediction.
    assert any(imp.flips for imp in report.rules)
    assert stored_impact(project, rs_id).to_json() == report.to_json()
    # "Without rule i" scores are not the version's score and are not listed as test uses or statuses.
    assert all(e["prompt"] != ABLATION_KIND for e in status_evaluations(project))


def test_diff_names_added_removed_changed_and_moved_rules_and_the_reasons(project: Project) -> None:
    chosen = require_working_rule_set(project)
    rules = project.rule_set(chosen).rules
    step1, _ = Move(rules[0].uid, len(rules) - 1).apply(rules)
    v2 = save_version(project, chosen, step1, "edit: move")
    step2, _ = SetText(rules[1].uid, "If the message mentions 'zzz', answer " + rules[1].label + ".").apply(
        Delete(rules[2].uid).apply(step1)[0])
    v3 = save_version(project, v2, step2, "edit: reword and delete")
    d = diff_versions(project, chosen, v3)
    assert [m.uid for m in d.moved] == [rules[0].uid]
    assert [r.uid for r in d.removed] == [rules[2].uid] and not d.added
    assert [(c.uid, c.fields) for c in d.changed] == [(rules[1].uid, ("text",))]
    assert [v for v, _ in d.reasons] == [v2, v3] and "reword" in d.to_text()
    back = diff_versions(project, v3, chosen)
    assert [r.uid for r in back.added] == [rules[2].uid]
    assert diff_rules(rules, rules) == ([], [], [], [])
    numbers = prompt_numbers(SetEnabled(rules[0].uid, False).apply(rules)[0])
    assert numbers[rules[0].uid] is None and numbers[rules[1].uid] == 1


# ---------------------------------------------------------------------------
# 4. Deployment files
# ---------------------------------------------------------------------------
def test_gbnf_grammar_escapes_labels() -> None:
    assert gbnf_literal('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    assert labels_grammar(["yes", 'say "no"', "peut-être"]) == \
        'root ::= "yes" | "say \\"no\\"" | "peut-être"\n'


def test_deployment_files_carry_the_exact_prompt(project: Project, tmp_path: Path) -> None:
    rs = project.rule_set(require_working_rule_set(project))
    written = export_rule_set(project, tmp_path, ("modelfile", "llama-server", "classify-py"))
    names = sorted(p.name for p in written)
    assert names == sorted([f"p-rules-v{rs.id}.Modelfile", f"p-rules-v{rs.id}.gbnf",
                            f"p-rules-v{rs.id}-llama-server.sh", f"p-rules-v{rs.id}-classify.py"])
    modelfile = (tmp_path / f"p-rules-v{rs.id}.Modelfile").read_text(encoding="utf-8")
    assert f'SYSTEM """{rs.prompt_text}"""' in modelfile and "PARAMETER temperature 0" in modelfile
    sh = (tmp_path / f"p-rules-v{rs.id}-llama-server.sh").read_text(encoding="utf-8")
    assert "--grammar-file" in sh and "--temp 0" in sh
    import importlib.util
    spec = importlib.util.spec_from_file_location("classify", tmp_path / f"p-rules-v{rs.id}-classify.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the filled-in config block is valid Python
    namespace = vars(module)
    assert namespace["SYSTEM_PROMPT"] == rs.prompt_text and namespace["LABELS"] == list(rs.labels)
    assert namespace["RULE_SET"] == rs.id
    record = {"message": "  where is my card?  ", "id": "x"}
    assert namespace["render_input"](record) == "where is my card?"


# ---------------------------------------------------------------------------
# 5. The command line (in process)
# ---------------------------------------------------------------------------
def _pld(args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    from pld_desktop import cli

    class Backends(FakeBackends):
        pass

    shared = Backends()
    monkeypatch.setattr("pld_desktop.backends.factory.DefaultBackends", lambda **_: shared)
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out + out.err


def test_pld_rules_versions_diff_eval_status_export(project: Project, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = str(project.path)
    start = require_working_rule_set(project)
    rules = project.rule_set(start).rules
    project.close()
    code, out = _pld(["rules", path], capsys, monkeypatch)
    assert code == 0 and f"version {start}" in out and f"  1. {rules[0].uid}" in out
    code, out = _pld(["rules", path, "disable", "1"], capsys, monkeypatch)
    first = int(out.split()[0][1:])
    assert code == 0 and f"v{first} (from v{start}): disabled {rules[0].uid}" in out
    code, out = _pld(["rules", path, "move", "1", "--to", "2"], capsys, monkeypatch)
    assert code == 0
    code, out = _pld(["rules", path, "set", "1", "--text", "If the message mentions 'card', answer question."],
                     capsys, monkeypatch)
    assert code == 0
    labels = sorted({r.label for r in rules})
    code, out = _pld(["rules", path, "add", "--text", f"If the message says 'zz', answer {labels[0]}.",
                      "--label", labels[1], "--at", "1"], capsys, monkeypatch)
    assert code == 0 and f"says {labels[0]}, its label is {labels[1]}" in out
    code, out = _pld(["rules", path], capsys, monkeypatch)
    assert f"label mismatch: text says {labels[0]}, label is {labels[1]}" in out and "[disabled]" in out
    code, out = _pld(["rules", path, "enable", "d1"], capsys, monkeypatch)
    assert code == 0
    code, out = _pld(["rules", path, "delete", "99"], capsys, monkeypatch)
    assert code == 2 and "no rule 99" in out
    code, out = _pld(["rules", path, "fix-label", "1"], capsys, monkeypatch)
    assert code == 0
    code, out = _pld(["eval", path, "--split", "dev"], capsys, monkeypatch)
    working = first + 5
    assert code == 0 and f"v{working} on dev" in out and "vs parent" in out
    code, out = _pld(["eval", path, "--split", "test"], capsys, monkeypatch)
    assert code == 0 and "Versions scored on test so far: 2" in out  # the pipeline's choice and this one
    code, out = _pld(["versions", path, "--json"], capsys, monkeypatch)
    versions = json.loads(out[out.index("{"):])
    assert versions["working_rule_set"] == working and versions["test_use_count"] == 2
    code, out = _pld(["diff", path, str(start), str(working), "--json"], capsys, monkeypatch)
    d = json.loads(out)
    assert len(d["added"]) == 1 and d["changed"] and [r["rule_set"] for r in d["reasons"]][-1] == working
    code, out = _pld(["status", path, "--json"], capsys, monkeypatch)
    status = json.loads(out)
    assert status["working_rule_set"] == working
    assert {(e["rule_set"], e["split"]) for e in status["evaluations"] if e["prompt"] == "rules"} >= \
        {(working, "dev"), (working, "test")}
    out_dir = tmp_path / "exports"
    code, out = _pld(["export", path, "--out", str(out_dir)], capsys, monkeypatch)
    assert code == 0 and f"Exported rule-set version {working}" in out
    assert all(f"-v{working}" in p.name for p in out_dir.iterdir())
    assert {p.suffix for p in out_dir.iterdir()} >= {".txt", ".md", ".json", ".csv", ".Modelfile", ".gbnf", ".sh",
                                                     ".py"}
    code, out = _pld(["rules", path, "--impact"], capsys, monkeypatch)
    assert code == 0 and "impact" in out and "macro-F1" in out
    reopened = Project.open(path)
    assert stored_impact(reopened, working) is not None
    reopened.close()
