"""The domain objects the project file holds, as frozen dataclasses (what `Project` returns instead of rows).

So far: rule-set versions, conflicts and evaluations. The rules inside a version are still the JSON dicts stored in
`rule_sets.rules_json` (`core.diff.Rule`); they move here when every reader of them does, not half-way.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


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
    labels: list[str]
    meanings: dict[str, str]
    rules: list[dict[str, Any]]
    prompt_text: str
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
