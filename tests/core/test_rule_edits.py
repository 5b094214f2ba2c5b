"""Rule edits as commands with inverses (no Qt), and saving edited rule lists as new versions."""

from __future__ import annotations

import pytest

from pld_desktop.core.project import Project
from pld_desktop.core.prompts import sha256_text
from pld_desktop.core.rule_edits import (
    HEAD_SETTING,
    Add,
    Compound,
    Delete,
    Duplicate,
    Insert,
    Merge,
    Move,
    Reorder,
    RuleEditError,
    SetEnabled,
    SetLabel,
    SetText,
    add_model_conflicts,
    cheap_conflicts,
    editor_start_version,
    next_uid,
    normalised_condition,
    save_version,
)

from ..fakes import FakeEmbedder
from ..helpers import rule, rules_of, settings

RULES = rules_of(
    {"uid": "R1", "text": "If the message mentions 'fee', answer complaint.", "label": "complaint", "enabled": True,
     "micro_rule_ids": [1, 2], "example_ids": [11, 12]},
    {"uid": "R2", "text": "If the message asks how, answer question.", "label": "question", "enabled": True,
     "micro_rule_ids": [3], "example_ids": [13]},
    {"uid": "R3", "text": "If the message says 'stolen', answer fraud_report.", "label": "fraud_report",
     "enabled": False, "micro_rule_ids": [4, 5], "example_ids": [14, 15]},
    {"uid": "E1", "text": "If the message is rude, answer complaint.", "label": "complaint", "enabled": True,
     "micro_rule_ids": [], "example_ids": []},
)

EVERY_KIND = [
    SetText("R2", "If the message asks how to do something, answer question."),
    SetLabel("R1", "question"),
    SetEnabled("R3", True),
    SetEnabled("R1", False),
    Move("R1", 3),
    Move("E1", 0),
    Reorder(("E1", "R3", "R1", "R2")),
    Add("If the message says 'scam', answer fraud_report.", "fraud_report", 1),
    Add("A rule at the end, answer question.", "question"),
    Delete("R2"),
    Duplicate("R3"),
    Insert(rule(uid="X9", text="restored", label="question", micro_rule_ids=[7]), 2),
    Merge(("R1", "E1")),
    Merge(("R3", "R1"), text="If the message says 'stolen' or 'fee', answer fraud_report."),
    Compound((SetText("R1", "changed text, answer complaint."), Move("R1", 2), Delete("R3"))),
]


@pytest.mark.parametrize("edit", EVERY_KIND, ids=lambda e: type(e).__name__)
def test_apply_then_inverse_gives_back_the_original(edit) -> None:  # type: ignore[no-untyped-def]
    original = list(RULES)
    edited, inverse = edit.apply(RULES)
    assert original == RULES, "apply must not mutate its input"
    assert edited != RULES
    restored, again = inverse.apply(edited)
    assert restored == RULES
    # The inverse of the inverse redoes the edit (what a redo after an undo relies on).
    assert again.apply(restored)[0] == edited
    assert edit.describe()


def test_each_edit_does_what_it_says() -> None:
    by_uid = lambda rules: {r.uid: r for r in rules}  # noqa: E731
    assert by_uid(SetText("R2", "  new   words ,answer question. ").apply(RULES)[0])["R2"].text == \
        "new words ,answer question."
    assert by_uid(SetLabel("R1", "question").apply(RULES)[0])["R1"].label == "question"
    assert by_uid(SetEnabled("R3", True).apply(RULES)[0])["R3"].enabled is True
    assert [r.uid for r in Move("R1", 3).apply(RULES)[0]] == ["R2", "R3", "E1", "R1"]
    added, inv = Add("If x, answer question.", "question", 0).apply(RULES)
    assert added[0].uid == "E2" and added[0].micro_rule_ids == () and inv == Delete("E2")
    dup = Duplicate("R1").apply(RULES)[0]
    assert [r.uid for r in dup][:2] == ["R1", "E2"] and dup[1].micro_rule_ids == (1, 2)
    merged = Merge(("R1", "R3")).apply(RULES)[0]
    assert [r.uid for r in merged] == ["E2", "R2", "E1"]
    assert merged[0].micro_rule_ids == (1, 2, 4, 5) and merged[0].from_rules == ("R1", "R3")


def test_new_uids_are_unique_and_deterministic() -> None:
    rules = list(RULES)
    seen = {r.uid for r in rules}
    for _ in range(5):
        rules, _ = Duplicate("R1").apply(rules)
        rules, _ = Add("If y, answer question.", "question").apply(rules)
    uids = [r.uid for r in rules]
    assert len(uids) == len(set(uids)) and seen < set(uids)
    assert next_uid(RULES) == next_uid(RULES) == "E2"
    assert next_uid([rule(uid="E7", text="t", label="question")], taken=["E8"]) == "E9"


@pytest.mark.parametrize("edit, message", [
    (SetText("R9", "x"), "no rule R9"),
    (SetText("R1", "   "), "needs some text"),
    (Move("R1", 7), "Cannot move"),
    (Reorder(("R1", "R2")), "every rule"),
    (Merge(("R1",)), "at least two"),
    (Insert(rule(uid="R1", text="t", label="question"), 0), "already"),
    (Add("text", ""), "needs a label"),
])
def test_bad_edits_are_refused_with_a_clear_message(edit, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuleEditError, match=message):
        edit.apply(RULES)


def test_cheap_conflicts_same_condition_and_duplicates() -> None:
    assert normalised_condition("If the message mentions 'fee', answer complaint.") == "if the message mentions fee"
    rules = list(RULES) + rules_of(
        {"uid": "E5", "text": "if the message mentions FEE, answer question", "label": "question"},
        {"uid": "E6", "text": "If the message is rude,  answer complaint", "label": "complaint"})
    found = {(a, b, source) for a, b, source, _, _ in cheap_conflicts(rules, {"E5", "E6"})}
    assert found == {("E5", "R1", "same condition"), ("E1", "E6", "duplicate")}
    assert cheap_conflicts(rules, set()) == []  # only pairs with a changed rule are checked


# ---------------------------------------------------------------------------
# Saving versions in a real project (pipeline run on the doubles once, copied per test)
# ---------------------------------------------------------------------------
@pytest.fixture
def project(distilled_project: Project) -> Project:
    return distilled_project  # this test's copy of the session's distilled project (conftest)


def test_save_version_links_parent_and_rebuilds_the_prompt(project: Project) -> None:
    chosen = project.get_setting("chosen_rule_set_id")
    parent = project.rule_set(chosen)
    first, second = parent.rules[0], parent.rules[1]
    rules, _ = SetText(first.uid, "If the message says the fee is too high, answer complaint.").apply(parent.rules)
    rules, _ = SetEnabled(second.uid, False).apply(rules)
    new_id = save_version(project, chosen, rules, "edit: reworded and disabled")
    rs = project.rule_set(new_id)
    assert (rs.parent_id, rs.origin, rs.reason) == (chosen, "edit", "edit: reworded and disabled")
    assert list(rs.rules) == rules and rs.task == parent.task and rs.labels == parent.labels
    assert "1. If the message says the fee is too high, answer complaint. -> complaint" in rs.prompt_text
    # Disabled: kept in the version, left out of the prompt (the demo rules can repeat a text, so count).
    assert rs.prompt_text.count(second.text) == parent.prompt_text.count(second.text) - 1
    numbered = [line for line in rs.prompt_text.splitlines() if line[:1].isdigit()]
    assert len(numbered) == len(rules) - 1
    assert rs.prompt_sha256 == sha256_text(rs.prompt_text)
    assert project.get_setting(HEAD_SETTING) == new_id and editor_start_version(project) == new_id
    assert project.get_setting("chosen_rule_set_id") == chosen  # the pipeline's choice is not touched
    # A version of a version: the chain of parents is kept.
    again = save_version(project, new_id, SetLabel(first.uid, "question").apply(rules)[0], "edit: relabel")
    assert project.rule_set(again).parent_id == new_id


def test_save_version_carries_unchanged_conflicts_and_finds_cheap_ones(project: Project) -> None:
    chosen = project.get_setting("chosen_rule_set_id")
    parent = project.rule_set(chosen)
    old = project.conflicts(chosen)
    assert old, "the doubles' pipeline produces conflicts"
    edited_uid = old[0].rule_a
    rules, _ = Compound((SetText(edited_uid, "If the message mentions 'rude', answer complaint."),
                         SetLabel(edited_uid, "complaint"))).apply(parent.rules)
    target = next(r for r in rules if r.uid != edited_uid and r.label != "complaint")
    rules, _ = SetText(target.uid, "If the message mentions 'rude', answer " + target.label + ".").apply(rules)
    # A third rule repeats the edited one word for word (synthesis no longer leaves duplicate lone rules).
    dup_of = next(r for r in rules if r.label == "complaint" and r.uid != edited_uid)
    rules, _ = SetText(dup_of.uid, "If the message mentions 'rude', answer complaint.").apply(rules)
    new_id = save_version(project, chosen, rules, "edit: test")
    new = project.conflicts(new_id)
    kept = {(c.rule_a, c.rule_b, c.source) for c in new}
    changed = {edited_uid, target.uid, dup_of.uid}
    for c in old:
        key = (c.rule_a, c.rule_b, c.source)
        assert (key in kept) == (not ({c.rule_a, c.rule_b} & changed)), key
    assert any(c.source == "same condition" and {c.rule_a, c.rule_b} == {edited_uid, target.uid}
               for c in new)
    assert any(c.source == "duplicate" and {c.rule_a, c.rule_b} == {edited_uid, dup_of.uid}
               for c in new)


def test_an_edit_is_one_commit_with_its_conflicts(project: Project) -> None:
    """A saved edit (version, carried conflicts, working pointer) is one transaction: one commit, never a
    version without its conflicts; a failure inside it leaves nothing behind."""
    chosen = project.get_setting("chosen_rule_set_id")
    assert project.conflicts(chosen), "the doubles' pipeline produces conflicts to carry"
    rules = project.rule_set(chosen).rules
    statements: list[str] = []
    project._conn.set_trace_callback(statements.append)
    try:
        new_id = save_version(project, chosen, SetEnabled(rules[-1].uid, False).apply(rules)[0], "edit: off")
    finally:
        project._conn.set_trace_callback(None)
    assert sum(1 for s in statements if s.strip().upper() == "COMMIT") == 1, statements
    assert project.conflicts(new_id) and project.get_setting(HEAD_SETTING) == new_id
    versions = len(project.rule_sets())

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk gone")

    original = project.add_conflict
    project.add_conflict = broken  # type: ignore[method-assign]  # fail after the version row was written
    try:
        with pytest.raises(RuntimeError):
            save_version(project, new_id, SetEnabled(rules[0].uid, False).apply(rules)[0], "edit: fails")
    finally:
        project.add_conflict = original  # type: ignore[method-assign]
    assert len(project.rule_sets()) == versions and project.get_setting(HEAD_SETTING) == new_id


def test_save_version_refuses_bad_rules_and_writes_nothing(project: Project) -> None:
    chosen = project.get_setting("chosen_rule_set_id")
    rules = project.rule_set(chosen).rules
    before = len(project.rule_sets())
    with pytest.raises(RuleEditError, match="not one of"):
        save_version(project, chosen, SetLabel(rules[0].uid, "spam").apply(rules)[0], "x")
    with pytest.raises(RuleEditError, match="share the uid"):
        save_version(project, chosen, [*rules, rules[0]], "x")
    assert len(project.rule_sets()) == before


def test_model_conflicts_pass_adds_only_new_ones(project: Project) -> None:
    chosen = project.get_setting("chosen_rule_set_id")
    rules = project.rule_set(chosen).rules
    question = next(r for r in rules if r.label == "question")
    complaint = next(r for r in rules if r.label == "complaint")
    rules, _ = SetText(question.uid, complaint.text.replace("complaint", "question")).apply(rules)
    new_id = save_version(project, chosen, rules, "edit: copy a complaint rule's condition")
    before = project.conflicts(new_id)
    added = add_model_conflicts(project, FakeEmbedder(), new_id, settings())
    after = project.conflicts(new_id)
    assert added == len(after) - len(before) > 0
    assert any(c.source == "similarity" and question.uid in (c.rule_a, c.rule_b) for c in after)
    assert add_model_conflicts(project, FakeEmbedder(), new_id, settings()) == 0  # nothing twice
