"""The domain objects the project file holds, as frozen dataclasses (what `Project` returns instead of rows).

So far: conflicts. Rules and rule-set bodies are still the JSON dicts stored in `rule_sets.rules_json`
(`core.diff.Rule`); they move here when every reader of them does, not half-way.
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
