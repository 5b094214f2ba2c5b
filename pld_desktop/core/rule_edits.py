"""Edits of a rule list as small frozen commands with inverses, and saving an edited list as a new rule-set version."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from .domain import Conflict, Rule
from .progress import Progress, SilentProgress
from .project import EDITED_RULE_SET, Project
from .prompts import PromptRule, build_rules_prompt, sha256_text
from .protocols import Embedder
from .settings import RunSettings
from .working import set_working_rule_set, working_rule_set

EDIT_ORIGIN = "edit"
HEAD_SETTING = EDITED_RULE_SET  # the editor's latest version; the pipeline's choice is CHOSEN_RULE_SET
NEW_UID_PREFIX = "E"


class RuleEditError(ValueError):
    """An edit that cannot be applied to this rule list (unknown rule, empty text, bad position...)."""


class RuleEdit(Protocol):
    def apply(self, rules: Sequence[Rule]) -> tuple[list[Rule], RuleEdit]:
        """The edited list (the input is never mutated) and the edit that turns it back."""
        ...

    def describe(self) -> str: ...


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
def _copy(rules: Sequence[Rule]) -> list[Rule]:
    return list(rules)  # rules are frozen: a new list is a copy


def _index(rules: Sequence[Rule], uid: str) -> int:
    for i, r in enumerate(rules):
        if r.uid == uid:
            return i
    raise RuleEditError(f"There is no rule {uid} in this version.")


def _clean_text(text: str) -> str:
    cleaned = " ".join(str(text).split())
    if not cleaned:
        raise RuleEditError("A rule needs some text; delete the rule instead of emptying it.")
    return cleaned


def next_uid(rules: Sequence[Rule], taken: Sequence[str] = ()) -> str:
    """A uid not used by any rule: E<n> with n one above the highest E-number in use (deterministic, so
    redoing an add after an undo gives the rule the same uid again)."""
    used = {r.uid for r in rules} | set(taken)
    numbers = [int(m.group(1)) for u in used if (m := re.fullmatch(rf"{NEW_UID_PREFIX}(\d+)", u))]
    n = max(numbers, default=0) + 1
    while f"{NEW_UID_PREFIX}{n}" in used:
        n += 1
    return f"{NEW_UID_PREFIX}{n}"


# ---------------------------------------------------------------------------
# Edits
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SetText:
    uid: str
    text: str

    def apply(self, rules: Sequence[Rule]) -> tuple[list[Rule], RuleEdit]:
        out = _copy(rules)
        i = _index(out, self.uid)
        old = out[i].text
        out[i] = replace(out[i], text=_clean_text(self.text))
        return out, SetText(self.uid, old)

    def describe(self) -> str:
        return f"reworded {self.uid}"


@dataclass(frozen=True)
class SetLabel:
    uid: str
    label: str

    def apply(self, rules: Sequence[Rule]) -> tuple[list[Rule], RuleEdit]:
        out = _copy(rules)
        i = _index(out, self.uid)
        if not str(self.label).strip():
            raise RuleEditError("A rule needs a label.")
        old = out[i].label
        out[i] = replace(out[i], label=self.label)
        return out, SetLabel(self.uid, old)

    def describe(self) -> str:
        return f"relabelled {self.uid} as {self.label}"


@dataclass(frozen=True)
class SetEnabled:
    uid: str
    enabled: bool

    def apply(self, rules: Sequence[Rule]) -> tuple[list[Rule], RuleEdit]:
        out = _copy(rules)
        i = _index(out, self.uid)
        old = bool(out[i].enabled)
        out[i] = replace(out[i], enabled=bool(self.enabled))
        return out, SetEnabled(self.uid, old)

    def describe(self) -> str:
        return f"{'enabled' if self.enabled else 'disabled'} {self.uid}"


@dataclass(frozen=True)
class Move:
    """Move one rule so that it ends at position `to_index` (0-based) in the new list."""

    uid: str
    to_index: int

    def apply(self, rules: Sequence[Rule]) -> tuple[list[Rule], RuleEdit]:
        out = _copy(rules)
        i = _index(out, self.uid)
        if not 0 <= self.to_index < len(out):
            raise RuleEditError(f"Cannot move {self.uid} to position {self.to_index + 1} of {len(out)}.")
        out.insert(self.to_index, out.pop(i))
        return out, Move(self.uid, i)

    def describe(self) -> str:
        return f"moved {self.uid} to position {self.to_index + 1}"


@dataclass(frozen=True)
class Reorder:
    """Put the rules in the order of `uids` (a permutation of the current uids), e.g. a multi-rule drag."""

    uids: tuple[str, ...]

    def apply(self, rules: Sequence[Rule]) -> tuple[list[Rule], RuleEdit]:
        out = _copy(rules)
        current = tuple(r.uid for r in out)
        if sorted(current) != sorted(self.uids):
            raise RuleEditError("A reorder must list every rule of the version exactly once.")
        by_uid = {r.uid: r for r in out}
        return [by_uid[u] for u in self.uids], Reorder(current)

    def describe(self) -> str:
        return "reordered the rules"


@dataclass(frozen=True)
class Add:
    """A new, hand-written rule (no micro-rules behind it) at `index` (None: at the end)."""

    text: str
    label: str
    index: int | None = None
    enabled: bool = True

    def apply(self, rules: Sequence[Rule]) -> tuple[list[Rule], RuleEdit]:
        if not str(self.label).strip():
            raise RuleEditError("A rule needs a label.")
        out = _copy(rules)
        uid = next_uid(out)
        rule = Rule(uid=uid, text=_clean_text(self.text), label=self.label, enabled=bool(self.enabled),
                    origin="written in the rule editor")
        at = len(out) if self.index is None else self.index
        if not 0 <= at <= len(out):
            raise RuleEditError(f"Cannot add a rule at position {at + 1} of {len(out) + 1}.")
        out.insert(at, rule)
        return out, Delete(uid)

    def describe(self) -> str:
        return f"added a rule for {self.label}"


@dataclass(frozen=True)
class Insert:
    """Put back one complete rule (uid and provenance included) at `index`; the inverse of Delete."""

    rule: Rule
    index: int = 0

    def apply(self, rules: Sequence[Rule]) -> tuple[list[Rule], RuleEdit]:
        out = _copy(rules)
        rule = self.rule
        if any(r.uid == rule.uid for r in out):
            raise RuleEditError(f"A rule {rule.uid} is already in this version.")
        if not 0 <= self.index <= len(out):
            raise RuleEditError(f"Cannot insert a rule at position {self.index + 1} of {len(out) + 1}.")
        out.insert(self.index, rule)
        return out, Delete(rule.uid)

    def describe(self) -> str:
        return f"restored {self.rule.uid}"


@dataclass(frozen=True)
class Delete:
    uid: str

    def apply(self, rules: Sequence[Rule]) -> tuple[list[Rule], RuleEdit]:
        out = _copy(rules)
        i = _index(out, self.uid)
        removed = out.pop(i)
        return out, Insert(removed, i)

    def describe(self) -> str:
        return f"deleted {self.uid}"


@dataclass(frozen=True)
class Duplicate:
    """A copy of a rule, with a new uid, right after it (same provenance: a starting point for a variant)."""

    uid: str

    def apply(self, rules: Sequence[Rule]) -> tuple[list[Rule], RuleEdit]:
        out = _copy(rules)
        i = _index(out, self.uid)
        twin = replace(out[i], uid=next_uid(out), origin=f"duplicate of {self.uid}", duplicated_from=self.uid)
        out.insert(i + 1, twin)
        return out, Delete(twin.uid)

    def describe(self) -> str:
        return f"duplicated {self.uid}"


@dataclass(frozen=True)
class Merge:
    """Replace several rules by one at the first one's place: its text (or `text`), its label, and the union
    of their micro-rules and examples, so no provenance is lost."""

    uids: tuple[str, ...]
    text: str | None = None

    def apply(self, rules: Sequence[Rule]) -> tuple[list[Rule], RuleEdit]:
        if len(set(self.uids)) < 2:
            raise RuleEditError("Choose at least two rules to merge.")
        out = _copy(rules)
        positions = sorted(_index(out, u) for u in self.uids)
        first = out[positions[0]]
        parts = [out[p] for p in positions]
        merged = replace(first, uid=next_uid(out),
                         text=_clean_text(self.text) if self.text is not None else first.text,
                         micro_rule_ids=tuple(sorted({m for p in parts for m in p.micro_rule_ids})),
                         example_ids=tuple(sorted({e for p in parts for e in p.example_ids})),
                         from_rules=tuple(p.uid for p in parts),
                         origin="merged in the rule editor from " + ", ".join(p.uid for p in parts))
        for p in reversed(positions):
            out.pop(p)
        out.insert(positions[0], merged)
        # Undo: remove the merged rule, then put every part back where it was (ascending, so indexes hold).
        inverse: list[RuleEdit] = [Delete(merged.uid)]
        inverse += [Insert(parts[k], positions[k]) for k in range(len(parts))]
        return out, Compound(tuple(inverse), "unmerged " + ", ".join(p.uid for p in parts))

    def describe(self) -> str:
        return "merged " + ", ".join(self.uids)


@dataclass(frozen=True)
class Compound:
    """Several edits applied in order as one; the inverse undoes them in reverse order."""

    edits: tuple[RuleEdit, ...]
    label: str = ""

    def apply(self, rules: Sequence[Rule]) -> tuple[list[Rule], RuleEdit]:
        out = _copy(rules)
        inverses: list[RuleEdit] = []
        for edit in self.edits:
            out, inv = edit.apply(out)
            inverses.append(inv)
        return out, Compound(tuple(reversed(inverses)), f"undo {self.describe()}")

    def describe(self) -> str:
        return self.label or "; ".join(e.describe() for e in self.edits)


# ---------------------------------------------------------------------------
# Conflicts without models
# ---------------------------------------------------------------------------
_ANSWER_TAIL = re.compile(r",?\s*(then\s+)?(answer|label|the label is|it is)\s*[:=]?\s*\S+\s*\.?\s*$", re.I)


def normalised_condition(text: str) -> str:
    """The condition part of a rule, case- and punctuation-insensitive ("If X, answer L." -> "if x")."""
    body = _ANSWER_TAIL.sub("", " ".join(str(text).split()))
    return " ".join(re.findall(r"\w+", body.lower()))


def _normalised_text(text: str) -> str:
    return " ".join(re.findall(r"\w+", str(text).lower()))


def cheap_conflicts(rules: Sequence[Rule], changed: set[str]) -> list[tuple[str, str, str, str, dict[str, Any]]]:
    """(uid_a, uid_b, source, reason, evidence) for pairs with at least one changed rule: the same condition
    with different labels, and exact duplicates. No model is needed, so this runs on every edit."""
    found = []
    for a in range(len(rules)):
        for b in range(a + 1, len(rules)):
            ra, rb = rules[a], rules[b]
            if ra.uid not in changed and rb.uid not in changed:
                continue
            ua, ub = sorted((ra.uid, rb.uid))
            if ra.label == rb.label and _normalised_text(ra.text) == _normalised_text(rb.text):
                found.append((ua, ub, "duplicate", f"{ra.uid} and {rb.uid} say the same thing "
                              f"(both lead to {ra.label}).", {"text": ra.text}))
            elif ra.label != rb.label and normalised_condition(ra.text) \
                    and normalised_condition(ra.text) == normalised_condition(rb.text):
                found.append((ua, ub, "same condition",
                              f"{ra.uid} and {rb.uid} have the same condition but lead to "
                              f"{ra.label} and {rb.label}.",
                              {"condition": normalised_condition(ra.text)}))
    return found


# A rule's text can name a label ("..., answer unrelated.") that is not its label field: the prompt line then
# reads "If ..., answer unrelated. -> stereotype", which contradicts itself. The cue must stand right before the
# label so that "not stereotype" or a label word inside the condition is not taken for the rule's answer.
_LABEL_CUE = r"(?:answer(?:\s+(?:is|with))?|(?:the\s+)?label(?:\s+(?:is|it|it\s+as|as))?|labell?ed(?:\s+as)?|" \
             r"classif(?:y|ied)(?:\s+(?:it|this|the\s+\w+))?\s+as|->|=>|then(?:\s+it\s+is)?|it\s+is)"
LABEL_MISMATCH = "label mismatch"


def _label_matches(text: str, labels: Sequence[str]) -> list[re.Match[str]]:
    found = []
    for label in sorted(labels, key=len, reverse=True):
        pattern = re.compile(rf"(?<![\w-]){_LABEL_CUE}\s*[:=]?\s*[\"'\u201c\u2018*]?(?P<label>{re.escape(label)})"
                             rf"(?![\w-])", re.I)
        found += list(pattern.finditer(text))
    return sorted(found, key=lambda m: m.start("label"))


def text_label(text: str, labels: Sequence[str]) -> str | None:
    """The label the rule's text names as its answer (the last one cued by "answer", "label", "->", ...),
    spelled as in `labels`; None when the text names none."""
    return _text_label(str(text), tuple(labels))


@functools.lru_cache(maxsize=65_536)  # every version's every rule is checked on each edit and load; texts repeat
def _text_label(text: str, labels: tuple[str, ...]) -> str | None:
    matches = _label_matches(text, labels)
    if not matches:
        return None
    said = matches[-1].group("label").lower()
    return next(lab for lab in labels if lab.lower() == said)


def label_mismatches(rules: Sequence[Rule], labels: Sequence[str]) -> list[tuple[str, str, str]]:
    """(uid, label the text names, label field) for every rule whose text names another label than its own."""
    out = []
    for r in rules:
        said = text_label(r.text, labels)
        if said is not None and said != r.label:
            out.append((r.uid, said, r.label))
    return out


def mismatch_conflict(uid: str, said: str, label: str) -> tuple[str, str, str, str, dict[str, Any]]:
    return (uid, uid, LABEL_MISMATCH, f"text says {said}, label is {label}", {"text_label": said, "label": label})


def fix_label_to_text(rules: Sequence[Rule], uid: str, labels: Sequence[str]) -> SetLabel:
    """The edit that sets the rule's label to the label its text names (one-click fix of a label mismatch)."""
    rule = rules[_index(rules, uid)]
    said = text_label(rule.text, labels)
    if said is None:
        raise RuleEditError(f"The text of {uid} names no label.")
    return SetLabel(uid, said)


def fix_text_to_label(rules: Sequence[Rule], uid: str, labels: Sequence[str]) -> SetText:
    """The edit that rewrites the label the rule's text names into the rule's label field (the other fix)."""
    rule = rules[_index(rules, uid)]
    matches = _label_matches(rule.text, labels)
    if not matches:
        raise RuleEditError(f"The text of {uid} names no label.")
    m = matches[-1]
    text = rule.text[:m.start("label")] + rule.label + rule.text[m.end("label"):]
    return SetText(uid, text)


def changed_since(conflict: Conflict) -> list[str]:
    """The rules of a carried teacher conflict that were edited after the teacher named it (empty: unchanged)."""
    evidence = conflict.evidence
    return list(evidence.get("rule_changed_since", [])) if isinstance(evidence, dict) else []


def rule_contents(rules: Sequence[Rule]) -> dict[str, tuple[str, str]]:
    """uid -> (text, label): what decides whether a rule changed (for conflicts; enabling or moving it does not)."""
    return {r.uid: (r.text, r.label) for r in rules}


def _lineage(project: Project, rule_set_id: int, limit: int = 200) -> list[int]:
    """`rule_set_id` and its ancestors, nearest first."""
    parents = project.rule_set_parents()
    out: list[int] = []
    current: int | None = rule_set_id
    while current is not None and current not in out and len(out) < limit:
        out.append(current)
        current = parents.get(current)
    return out


def carry_conflicts(project: Project, parent_id: int, new_id: int, rules: Sequence[Rule]) -> None:
    """Conflicts of a new edited version, by stable rule id (uid).

    - A pair whose two rules have the same text and label as in the parent, or in an older ancestor, keeps that
      version's conflicts: undoing an edit gives back exactly the conflicts from before it. When the whole rule
      list equals an ancestor's, that ancestor's conflicts are copied as they are and nothing else is added.
    - A teacher conflict whose rule changed is kept, marked `rule_changed_since` (the teacher cannot be asked
      again on every keystroke); similarity and co-firing are for `recompute_conflicts` to find again.
    - Cheap conflicts (same condition, duplicates) of the changed rules and label mismatches are added.
    """
    content = rule_contents(rules)
    lineage = _lineage(project, parent_id)
    versions = {rs_id: project.rule_set(rs_id) for rs_id in lineage}
    same = next((rs_id for rs_id in lineage if rule_contents(versions[rs_id].rules) == content
                 and [r.uid for r in versions[rs_id].rules] == [r.uid for r in rules]), None)
    if same is not None:
        for c in project.conflicts(same):
            project.add_conflict(new_id, c.rule_a, c.rule_b, c.source, c.reason, c.evidence)
        return
    stored: dict[tuple[str, str, str], tuple[str, Any]] = {}
    for rs_id in lineage:
        there = rule_contents(versions[rs_id].rules)
        for c in project.conflicts(rs_id):
            key = (c.rule_a, c.rule_b, c.source)
            if key in stored or c.source == LABEL_MISMATCH:
                continue
            if all(u in content and content[u] == there.get(u) for u in (c.rule_a, c.rule_b)):
                stored[key] = (c.reason, c.evidence)
    parent_content = rule_contents(versions[parent_id].rules)
    for c in project.conflicts(parent_id):
        key = (c.rule_a, c.rule_b, c.source)
        if c.source != "teacher" or key in stored or not (c.rule_a in content and c.rule_b in content):
            continue
        edited = {u for u in (c.rule_a, c.rule_b) if content[u] != parent_content.get(u)}
        evidence = dict(c.evidence) if isinstance(c.evidence, dict) else {"was": c.evidence}
        evidence["rule_changed_since"] = sorted(set(changed_since(c)) | edited)
        stored[key] = (c.reason, evidence)
    changed = {u for u in content if content[u] != parent_content.get(u)}
    found = cheap_conflicts(rules, changed)
    found += [mismatch_conflict(*m) for m in label_mismatches(rules, versions[parent_id].labels)]
    for ua, ub, source, why, evidence in found:
        stored.setdefault((ua, ub, source), (why, evidence))
    for (ua, ub, source), (why, evidence) in stored.items():
        project.add_conflict(new_id, ua, ub, source, why, evidence)


# ---------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------
def prompt_for_rules(task: str, labels: Sequence[str], meanings: Mapping[str, str], rules: Sequence[Rule]) -> str:
    """The exact system prompt of a rule list: the same builder as synthesis and the closed loop; disabled
    rules stay in the version (nothing is dropped) but are left out of the prompt."""
    return build_rules_prompt(task, list(labels), [PromptRule(r.text, r.label) for r in rules
                                                   if r.enabled], meanings)


def _validate(rules: Sequence[Rule], labels: Sequence[str]) -> None:
    seen: set[str] = set()
    for n, r in enumerate(rules, 1):
        uid = r.uid
        if not uid:
            raise RuleEditError(f"Rule {n} has no uid.")
        if uid in seen:
            raise RuleEditError(f"Two rules share the uid {uid}.")
        seen.add(uid)
        if not str(r.text).strip():
            raise RuleEditError(f"Rule {n} ({uid}) has no text.")
        if r.label not in labels:
            raise RuleEditError(f"Rule {n} ({uid}) names the label '{r.label}', which is not one of "
                                f"{', '.join(labels)}.")


def save_version(project: Project, parent_id: int, rules: Sequence[Rule], reason: str, *,
                 set_head: bool = True) -> int:
    """Write `rules` as a new version (origin "edit", child of `parent_id`) with its rebuilt prompt, carry the
    parent's conflicts over for pairs of unchanged rules, add cheap conflicts for new or edited rules, and
    (by default) make it the editor's head. Returns the new version id."""
    parent = project.rule_set(parent_id)
    rules = _copy(rules)
    _validate(rules, parent.labels)
    prompt = prompt_for_rules(parent.task, parent.labels, parent.meanings, rules)
    # One transaction: a crash never leaves a version without its conflicts, and an edit costs one commit
    # (it cost one per carried conflict, ~6 per edit, on the GUI thread).
    with project.transaction():
        new_id = project.add_rule_set(parent_id=parent_id, reason=reason, origin=EDIT_ORIGIN, round=None,
                                      task=parent.task, labels=list(parent.labels), meanings=dict(parent.meanings),
                                      rules=rules, prompt_text=prompt, prompt_sha256=sha256_text(prompt))
        carry_conflicts(project, parent_id, new_id, rules)
        if set_head:
            set_working_rule_set(project, new_id)
    return new_id


def editor_start_version(project: Project) -> int | None:
    """The version the editor opens on: the working version (core.working)."""
    return working_rule_set(project)


class _NewConflictsOnly:
    """Lets synthesis's `store_conflicts` write into a version that already has conflicts without repeating them;
    with `only`, pairs without one of those rules are skipped (they were carried over unchanged)."""

    def __init__(self, project: Project, rule_set_id: int, only: set[str] | None = None) -> None:
        self.project = project
        self.existing = {(c.rule_a, c.rule_b, c.source) for c in project.conflicts(rule_set_id)}
        self.only = only
        self.added = 0

    def add_conflict(self, rule_set_id: int, rule_a: str, rule_b: str, source: str, reason: str,
                     evidence: Any) -> int:
        if (rule_a, rule_b, source) in self.existing:
            return 0
        if self.only is not None and rule_a not in self.only and rule_b not in self.only:
            return 0
        self.existing.add((rule_a, rule_b, source))
        self.added += 1
        return self.project.add_conflict(rule_set_id, rule_a, rule_b, source, reason, evidence)

    def transaction(self) -> Any:
        """The project's transaction: the conflicts added through this filter are committed together."""
        return self.project.transaction()


def add_model_conflicts(project: Project, embedder: Embedder, rule_set_id: int,
                        settings: RunSettings | None = None, progress: Progress | None = None, *,
                        only: set[str] | None = None) -> int:
    """The slower pass for a saved version: similarity and co-firing conflicts from the embedder (as synthesis
    finds them), skipping those already stored. Embeddings come from the project's cache when present.
    Returns how many conflicts were added. Meant for a background task after edits settle."""
    from .phases.synthesis import embed_cached, store_conflicts  # the phase module is heavy; load on use

    settings = settings or RunSettings()
    progress = progress or SilentProgress()
    rules = project.rule_set(rule_set_id).rules
    if len(rules) < 2:
        return 0
    micro = project.micro_rules()
    micro_vecs = embed_cached(project, embedder, [m["rule"] for m in micro], progress) if micro else None
    rule_vecs = embed_cached(project, embedder, [r.text for r in rules], progress)
    sink = _NewConflictsOnly(project, rule_set_id, only)
    store_conflicts(sink, rule_set_id, rules, rule_vecs, [], micro, micro_vecs, settings)
    return sink.added


def edited_rules(project: Project, rule_set_id: int) -> set[str]:
    """uids of the rules that are new or whose text or label differ from the parent version's."""
    rs = project.rule_set(rule_set_id)
    if rs.parent_id is None:
        return {r.uid for r in rs.rules}
    before = rule_contents(project.rule_set(rs.parent_id).rules)
    return {u for u, c in rule_contents(rs.rules).items() if before.get(u) != c}


def recompute_conflicts(project: Project, embedder: Embedder, rule_set_id: int,
                        settings: RunSettings | None = None, progress: Progress | None = None) -> int:
    """The background pass after an edit: similarity and co-firing conflicts of the edited rules (pairs of
    unchanged rules were carried over by `save_version`). Idempotent; returns how many conflicts were added."""
    return add_model_conflicts(project, embedder, rule_set_id, settings, progress,
                               only=edited_rules(project, rule_set_id))


def version_conflicts(project: Project, rule_set_id: int) -> list[Conflict]:
    """A version's stored conflicts plus its label mismatches (found from the text, so versions saved before
    the check existed, e.g. synthesis's, show them too)."""
    rs = project.rule_set(rule_set_id)
    conflicts = project.conflicts(rule_set_id)
    have = {(c.rule_a, c.source) for c in conflicts if c.source == LABEL_MISMATCH}
    for uid, said, label in label_mismatches(rs.rules, rs.labels):
        if (uid, LABEL_MISMATCH) not in have:
            ua, ub, source, reason, evidence = mismatch_conflict(uid, said, label)
            conflicts.append(Conflict(rule_set_id, ua, ub, source, reason, evidence))
    return conflicts
