"""The domain objects the project file holds, as frozen dataclasses (what `Project` returns instead of rows).

Rule-set versions (`RuleSetRecord`, the rules inside them as `Rule`, the list as `RuleSetSummary`), conflicts and
evaluations. Only the storage layer (core/project.py) turns a rule into the JSON of `rule_sets.rules_json` and back
(`Rule.from_dict` / `Rule.to_dict`); everything else reads attributes and edits with `dataclasses.replace`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from types import MappingProxyType
from typing import Any


def _frozen(value: Any) -> Any:
    """A JSON value that cannot be changed in place (lists as tuples, objects as read-only mappings)."""
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    return value


def _thawed(value: Any) -> Any:
    """The JSON value `_frozen` froze (tuples back to lists, mappings back to dicts, in their order)."""
    if isinstance(value, tuple):
        return [_thawed(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _thawed(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Rule:
    """One rule of a rule-set version: its stable id (`uid`), what it says and the label it leads to, whether it
    is in the prompt, and where it came from (the cluster and micro-rules behind it, their examples, the rules it
    was rewritten or merged from, and a note on its origin).

    `flag` is why synthesis kept a rule out of the prompt (it copies an example); `duplicated_from` names the rule
    a duplicate was copied from. `extra` holds keys this version of the program does not know (from a newer or
    hand-made file), kept so that nothing is lost when the rule is saved again. `stored_keys` is the key order of
    the stored JSON object (empty for a rule made by the program): a rule read and saved again writes the same
    JSON. It does not take part in comparisons.
    """

    uid: str
    text: str
    label: str
    enabled: bool = True
    cluster_id: int | None = None
    micro_rule_ids: tuple[int, ...] = ()
    example_ids: tuple[int, ...] = ()
    from_rules: tuple[str, ...] | None = None
    origin: str = ""
    flag: str | None = None
    duplicated_from: str | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    stored_keys: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any]) -> Rule:
        """A rule from its JSON object in `rules_json` (for the storage layer)."""
        values: dict[str, Any] = {}
        for name in _RULE_KEYS:
            if name in stored:
                value = stored[name]
                values[name] = tuple(value) if name in _SEQUENCE_KEYS and isinstance(value, list) else value
        values.setdefault("uid", "")
        values.setdefault("text", "")
        values.setdefault("label", "")
        extra = {k: v for k, v in stored.items() if k not in _RULE_KEYS}
        return cls(**values, extra=_frozen(extra), stored_keys=tuple(stored))

    def to_dict(self) -> dict[str, Any]:
        """The rule's JSON object for `rules_json` (for the storage layer): the keys it was read with, in their
        order, then any field an edit set that the stored object lacked; a rule made by the program writes
        uid, text, label, enabled, cluster_id, micro_rule_ids, example_ids, from_rules (if any), origin, flag
        (if any) and duplicated_from (if any), as the code that made rules as dicts wrote them."""
        out: dict[str, Any] = {}
        for key in self.stored_keys:
            out[key] = self._stored_value(key)
        for name in _RULE_KEYS:
            value = getattr(self, name)
            if name in out:
                continue
            # Left out: a key the stored object lacked and no edit set, or an optional key a new rule never set.
            left_out = value == _ABSENT[name] if self.stored_keys else (name in _OPTIONAL_KEYS and value is None)
            if left_out:
                continue
            out[name] = list(value) if isinstance(value, tuple) else value
        for key, value in self.extra.items():
            out.setdefault(key, _thawed(value))
        return out

    def _stored_value(self, key: str) -> Any:
        if key in _RULE_KEYS:
            value = getattr(self, key)
            return list(value) if key in _SEQUENCE_KEYS and isinstance(value, tuple) else value
        return _thawed(self.extra[key])


_RULE_KEYS = tuple(f.name for f in fields(Rule) if f.name not in ("extra", "stored_keys"))
# A field's value when its key is missing from the stored object (what `from_dict` fills in).
_ABSENT: dict[str, Any] = {"uid": "", "text": "", "label": ""} | {
    f.name: f.default for f in fields(Rule) if f.name in _RULE_KEYS and f.default is not MISSING}
_SEQUENCE_KEYS = frozenset({"micro_rule_ids", "example_ids", "from_rules"})
_OPTIONAL_KEYS = frozenset({"from_rules", "flag", "duplicated_from"})  # written only when set


@dataclass(frozen=True)
class Conflict:
    """Two rules of one version that disagree (or one rule with a problem of its own: `rule_a == rule_b`).

    `source` says who found it ("teacher", "similarity", "co-firing", "same condition", "label mismatch", ...);
    `evidence` is the JSON value the finder stored with it. `id` and `created_at` are None for a conflict
    computed on the fly and never stored (a label mismatch found in the text of an older version).
    """

    rule_set_id: int
    rule_a: str
    rule_b: str
    source: str
    reason: str
    evidence: Any
    id: int | None = None
    created_at: float | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Conflict:
        """A row of the `conflicts` table (evidence still as `evidence_json`)."""
        return cls(rule_set_id=row["rule_set_id"], rule_a=row["rule_a"], rule_b=row["rule_b"], source=row["source"],
                   reason=row["reason"], evidence=json.loads(row["evidence_json"]), id=row["id"],
                   created_at=row["created_at"])


@dataclass(frozen=True)
class RuleSetRecord:
    """One saved version of the rule set (never changed once written: every edit is a new version)."""

    id: int
    parent_id: int | None
    reason: str
    origin: str
    round: int | None
    task: str
    labels: tuple[str, ...]
    meanings: Mapping[str, str]
    rules: tuple[Rule, ...]
    prompt_text: str
    prompt_sha256: str
    created_at: float


@dataclass(frozen=True)
class RuleSetSummary:
    """One version as `Project.rule_sets()` lists it: its place in the lineage and why it was made, no rules."""

    id: int
    parent_id: int | None
    reason: str
    origin: str
    round: int | None
    prompt_sha256: str
    created_at: float


@dataclass(frozen=True)
class Evaluation:
    """One prompt scored by one student on one set of examples (its predictions are read separately).

    `kind` is the prompt ("pld", "zero_shot", "few_shot", ...); `metrics` is None until `status` is DONE.
    """

    id: int
    cache_key: str
    kind: str
    rule_set_id: int | None
    split: str
    prompt_text: str
    prompt_sha256: str
    student: dict[str, Any]
    n_examples: int
    status: str
    metrics: dict[str, Any] | None
    created_at: float
    finished_at: float | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Evaluation:
        """A row of the `evaluations` table (metrics and student still as JSON text)."""
        return cls(id=row["id"], cache_key=row["cache_key"], kind=row["kind"], rule_set_id=row["rule_set_id"],
                   split=row["split"], prompt_text=row["prompt_text"], prompt_sha256=row["prompt_sha256"],
                   student=json.loads(row["student_json"]), n_examples=row["n_examples"], status=row["status"],
                   metrics=json.loads(row["metrics_json"] or "null"), created_at=row["created_at"],
                   finished_at=row["finished_at"])
