"""The difference between two rule-set versions: rules added, removed, changed and moved, and why they differ."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .domain import Rule
from .project import Project

COMPARED_FIELDS = ("text", "label", "enabled")


def prompt_numbers(rules: Sequence[Rule]) -> dict[str, int | None]:
    """uid -> the rule's number in the prompt (enabled rules, 1-based, in order); None for a disabled rule."""
    out: dict[str, int | None] = {}
    n = 0
    for r in rules:
        if r.enabled:
            n += 1
            out[r.uid] = n
        else:
            out[r.uid] = None
    return out


@dataclass(frozen=True)
class RuleChange:
    uid: str
    before: Rule
    after: Rule
    fields: tuple[str, ...]  # which of text, label, enabled differ

    def to_json(self) -> dict[str, Any]:
        return {"uid": self.uid, "fields": list(self.fields),
                "before": {k: getattr(self.before, k) for k in COMPARED_FIELDS},
                "after": {k: getattr(self.after, k) for k in COMPARED_FIELDS}}


@dataclass(frozen=True)
class RuleMove:
    uid: str
    from_position: int  # 1-based place in the version's rule list (disabled rules included)
    to_position: int

    def to_json(self) -> dict[str, Any]:
        return {"uid": self.uid, "from": self.from_position, "to": self.to_position}


@dataclass
class VersionDiff:
    a: int
    b: int
    added: list[Rule] = field(default_factory=list)
    removed: list[Rule] = field(default_factory=list)
    changed: list[RuleChange] = field(default_factory=list)
    moved: list[RuleMove] = field(default_factory=list)
    reasons: list[tuple[int, str]] = field(default_factory=list)  # (version, reason) on the path a -> b

    @property
    def is_empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.moved)

    def to_json(self) -> dict[str, Any]:
        def slim(r: Rule) -> dict[str, Any]:
            return {"uid": r.uid, "text": r.text, "label": r.label, "enabled": bool(r.enabled)}

        return {"a": self.a, "b": self.b, "added": [slim(r) for r in self.added],
                "removed": [slim(r) for r in self.removed], "changed": [c.to_json() for c in self.changed],
                "moved": [m.to_json() for m in self.moved],
                "reasons": [{"rule_set": v, "reason": why} for v, why in self.reasons]}

    def to_text(self) -> str:
        lines = [f"v{self.a} -> v{self.b}"]
        for v, why in self.reasons:
            lines.append(f"  v{v}: {why}")
        for r in self.added:
            lines.append(f"+ {r.uid} [{r.label}] {r.text}")
        for r in self.removed:
            lines.append(f"- {r.uid} [{r.label}] {r.text}")
        for c in self.changed:
            for f in c.fields:
                lines.append(f"~ {c.uid} {f}: {getattr(c.before, f)!s} -> {getattr(c.after, f)!s}")
        for m in self.moved:
            lines.append(f"> {m.uid} moved from position {m.from_position} to {m.to_position}")
        if self.is_empty:
            lines.append("  (the two versions have the same rules in the same order)")
        return "\n".join(lines)


def _path_reasons(project: Project, a: int, b: int) -> list[tuple[int, str]]:
    """Reasons of the versions between a (exclusive) and b (inclusive) when b descends from a; else b's own
    ancestry up to the common ancestor, and a's side named too, so the reader sees both stories."""
    parents = project.rule_set_parents()

    def chain(x: int) -> list[int]:
        out: list[int] = []
        cur: int | None = x
        while cur is not None and cur not in out:
            out.append(cur)
            cur = parents.get(cur)
        return out

    ca, cb = chain(a), chain(b)
    common = next((v for v in cb if v in ca), None)
    path_b = cb[: cb.index(common)] if common is not None else cb
    path_a = ca[: ca.index(common)] if common is not None else ca
    versions = {r.id: r for r in project.rule_sets()}
    reasons = [(v, versions[v].reason) for v in reversed(path_b)]
    return [(v, f"(on v{a}'s side) {versions[v].reason}") for v in reversed(path_a)] + reasons


def diff_rules(a_rules: Sequence[Rule], b_rules: Sequence[Rule]) -> tuple[list[Rule], list[Rule], list[RuleChange],
                                                                          list[RuleMove]]:
    """(added, removed, changed, moved) from rule list a to b, matching rules by uid. A rule is "moved" when its
    order relative to the other rules kept in both differs (not merely shifted by an insertion or a removal)."""
    in_a = {r.uid: r for r in a_rules}
    in_b = {r.uid: r for r in b_rules}
    added = [r for r in b_rules if r.uid not in in_a]
    removed = [r for r in a_rules if r.uid not in in_b]
    changed = []
    for r in b_rules:
        old = in_a.get(r.uid)
        if old is None:
            continue
        diff = tuple(f for f in COMPARED_FIELDS if getattr(old, f) != getattr(r, f))
        if diff:
            changed.append(RuleChange(r.uid, old, r, diff))
    common_a = [r.uid for r in a_rules if r.uid in in_b]
    common_b = [r.uid for r in b_rules if r.uid in in_a]
    # The rules outside a longest increasing subsequence of a's order (in b's order) are the ones that moved.
    rank = {u: i for i, u in enumerate(common_a)}
    seq = [rank[u] for u in common_b]
    keep = _lis_members(seq)
    pos_a = {r.uid: i + 1 for i, r in enumerate(a_rules)}
    pos_b = {r.uid: i + 1 for i, r in enumerate(b_rules)}
    moved = [RuleMove(u, pos_a[u], pos_b[u]) for i, u in enumerate(common_b) if i not in keep]
    return added, removed, changed, moved


def _lis_members(seq: Sequence[int]) -> set[int]:
    """Indexes of one longest strictly increasing subsequence of `seq` (O(n^2); rule lists are short)."""
    if not seq:
        return set()
    best = [1] * len(seq)
    prev = [-1] * len(seq)
    for i in range(len(seq)):
        for j in range(i):
            if seq[j] < seq[i] and best[j] + 1 > best[i]:
                best[i], prev[i] = best[j] + 1, j
    i = max(range(len(seq)), key=lambda k: best[k])
    out = set()
    while i != -1:
        out.add(i)
        i = prev[i]
    return out


def diff_versions(project: Project, a: int, b: int) -> VersionDiff:
    """What changed from version `a` to version `b`, with the stated reason of every version in between (the
    closed loop's root cause for its rounds, the editor's description for edits)."""
    ra, rb = project.rule_set(a), project.rule_set(b)
    added, removed, changed, moved = diff_rules(ra.rules, rb.rules)
    return VersionDiff(a, b, added, removed, changed, moved, _path_reasons(project, a, b))
