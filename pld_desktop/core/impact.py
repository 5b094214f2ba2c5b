"""What each rule is worth: the working version's dev score without each enabled rule, and the examples that flip."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .evaluate import evaluate_prompt
from .progress import Progress, SilentProgress, check
from .project import Project
from .protocols import Student
from .rule_edits import prompt_for_rules
from .scoring import split_examples
from .settings import RunSettings, load_settings
from .working import require_working_rule_set

IMPACT_SETTING = "rule_impact"  # {str(rule_set_id): ImpactReport.to_json()}
ABLATION_KIND = "ablation"      # evaluations.kind of a "without rule i" prompt (not a version's own score)


@dataclass
class RuleImpact:
    uid: str
    prompt_number: int
    label: str
    text: str
    macro_f1_without: float
    delta: float                 # full macro-F1 minus macro-F1 without the rule: > 0 helps, < 0 hurts
    flips: list[dict[str, str]] = field(default_factory=list)  # {"example", "gold", "with", "without"}

    @property
    def hurts(self) -> bool:
        return self.delta < 0

    @property
    def fixed_without(self) -> int:
        """Examples the rule gets wrong that are right without it."""
        return sum(1 for f in self.flips if f["without"] == f["gold"])

    @property
    def broken_without(self) -> int:
        """Examples the rule gets right that are wrong without it."""
        return sum(1 for f in self.flips if f["with"] == f["gold"])


@dataclass
class ImpactReport:
    rule_set_id: int
    split: str
    n: int
    macro_f1: float
    student_sha256: str
    rules: list[RuleImpact] = field(default_factory=list)
    complete: bool = False

    def by_uid(self) -> dict[str, RuleImpact]:
        return {r.uid: r for r in self.rules}

    def to_json(self) -> dict[str, Any]:
        return {"rule_set": self.rule_set_id, "split": self.split, "n": self.n, "macro_f1": self.macro_f1,
                "student_sha256": self.student_sha256, "complete": self.complete,
                "rules": [asdict(r) | {"hurts": r.hurts} for r in self.rules]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImpactReport:
        rules = [RuleImpact(**{k: v for k, v in r.items() if k != "hurts"}) for r in data.get("rules", [])]
        return cls(int(data["rule_set"]), data["split"], int(data["n"]), float(data["macro_f1"]),
                   data.get("student_sha256", ""), rules, bool(data.get("complete")))


def prompt_without(project: Project, rule_set_id: int, uid: str) -> str:
    """The version's prompt with rule `uid` left out (as if disabled), built by the same builder."""
    rs = project.rule_set(rule_set_id)
    rules = [replace(r, enabled=False) if r.uid == uid else r for r in rs.rules]
    return prompt_for_rules(rs.task, rs.labels, rs.meanings, rules)


def stored_impact(project: Project, rule_set_id: int) -> ImpactReport | None:
    """The last impact computed for a version (possibly partial, see `.complete`), without a student."""
    data = (project.get_setting(IMPACT_SETTING) or {}).get(str(rule_set_id))
    return ImpactReport.from_json(data) if data else None


def _store(project: Project, report: ImpactReport) -> None:
    all_reports = dict(project.get_setting(IMPACT_SETTING) or {})
    all_reports[str(report.rule_set_id)] = report.to_json()
    project.set_setting(IMPACT_SETTING, all_reports)


def rule_impact(project: Project, student: Student, rule_set_id: int | None = None, *,
                settings: RunSettings | None = None, progress: Progress | None = None) -> ImpactReport:
    """Score the version (default: the working one) on dev without each enabled rule in turn.

    Each "without rule i" prompt shares its text up to rule i with the full prompt, so the student's prefix
    state cache makes it cheaper than a fresh evaluation; every prediction is committed, so a cancelled run
    keeps what it did (stored as a partial report) and a rerun only scores what is missing."""
    settings = settings or load_settings(project)
    progress = progress or SilentProgress()
    rs_id = require_working_rule_set(project, rule_set_id)
    rs = project.rule_set(rs_id)
    dev = split_examples(project, "dev", settings)
    if not dev:
        raise ValueError("Rule impact needs dev examples, and this project's dev split is empty.")
    full_id, full = evaluate_prompt(project, student, rs.prompt_text, dev, kind="pld", split="dev",
                                    progress=progress, rule_set_id=rs_id,
                                    stage=f"Rule impact: v{rs_id} with all rules on {len(dev)} dev examples")
    with_rules = project.predictions(full_id)
    enabled = [r for r in rs.rules if r.enabled]
    report = ImpactReport(rs_id, "dev", len(dev), float(full["macro_f1"]), student.identity.sha256)
    for number, rule in enumerate(enabled, 1):
        check(progress)
        eval_id, metrics = evaluate_prompt(
            project, student, prompt_without(project, rs_id, rule.uid), dev, kind=ABLATION_KIND, split="dev",
            progress=progress, rule_set_id=rs_id,
            stage=f"Rule impact {number}/{len(enabled)}: without rule {number} ({rule.uid})")
        without = project.predictions(eval_id)
        flips = [{"example": e.ext_id, "gold": e.label, "with": with_rules[e.id]["predicted"],
                  "without": without[e.id]["predicted"]}
                 for e in dev if with_rules[e.id]["predicted"] != without[e.id]["predicted"]]
        report.rules.append(RuleImpact(rule.uid, number, rule.label, rule.text, float(metrics["macro_f1"]),
                                       report.macro_f1 - float(metrics["macro_f1"]), flips))
        _store(project, report)
    report.complete = True
    _store(project, report)
    progress.log(f"Rule impact of v{rs_id}: {sum(r.hurts for r in report.rules)} of {len(report.rules)} "
                 f"enabled rules lower dev macro-F1")
    return report
