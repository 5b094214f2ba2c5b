"""Phase 2, clustering and logic synthesis: embed micro-rules, cluster them, merge each cluster, find conflicts.

Decision (see method.md "known weakness": synthesis drops minority labels): micro-rules are clustered
*within each gold label*, so every label keeps at least one consolidated rule and each merged rule names
exactly one label. Cross-label overlap is then caught as conflicts (similarity and co-firing evidence).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from ..clustering import centroid_order, cluster_rules, keep_every_label, map_2d
from ..domain import Rule
from ..progress import Progress, check
from ..project import SYNTHESIS_RULE_SET, NewCluster, Project
from ..prompts import PromptRule, build_rules_prompt, sha256_text
from ..protocols import Embedder, Teacher, TeacherRequest
from ..settings import RunSettings
from ..states import PhaseState
from ..teacher_calls import TeacherJob, run_teacher_jobs
from ..teacher_prompts import (
    MERGE_SYSTEM,
    REVIEW_SYSTEM,
    Review,
    copy_reason,
    meaning_reason,
    merge_schema,
    merge_user,
    off_label_reason,
    review_user,
    rule_pattern,
)

PHASE = 2


@dataclass
class SynthesisReport:
    micro_rules: int = 0
    clusters: int = 0
    noise_rules: int = 0
    rules: int = 0
    conflicts: int = 0
    failed_merges: int = 0
    copied_micro_rules: int = 0
    flagged_rules: int = 0     # merged rules kept out of the prompt (still copying an example after the retries)
    rejected_meanings: list[str] = field(default_factory=list)
    rule_set_id: int | None = None
    methods: dict[str, str] = field(default_factory=dict)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def embed_cached(project: Project, embedder: Embedder, texts: Sequence[str], progress: Progress) -> np.ndarray:
    """Embeddings for `texts`, computed once per (model, text) and kept in the project file."""
    hashes = [text_hash(t) for t in texts]
    cached = project.cached_embeddings(embedder.model_id, hashes)
    missing = sorted({h: t for h, t in zip(hashes, texts) if h not in cached}.items())
    progress.begin("Phase 2: embedding rules", len(set(hashes)))
    done = len(set(hashes)) - len(missing)
    batch = 256
    for start in range(0, len(missing), batch):
        check(progress)
        chunk = missing[start:start + batch]
        vecs = np.asarray(embedder.embed([t for _, t in chunk]), dtype=np.float32)
        project.store_embeddings(embedder.model_id, [(h, vecs.shape[1], v.tobytes()) for (h, _), v in zip(chunk, vecs)])
        for (h, _), v in zip(chunk, vecs):
            cached[h] = v.tobytes()
        done += len(chunk)
        progress.report(done, len(set(hashes)), "embedded")
    return np.stack([np.frombuffer(cached[h], dtype=np.float32) for h in hashes]) if hashes else np.zeros((0, 1))


def _clustering_key(micro: list[dict[str, Any]], embedder: Embedder, settings: RunSettings) -> str:
    raw = json.dumps([[m["id"], m["rule"], m["label"]] for m in micro] +
                     [embedder.model_id, settings.dbscan_eps, settings.dbscan_min_samples, "regroup-v2"])
    return hashlib.sha256(raw.encode()).hexdigest()


def _cluster_and_store(project: Project, micro: list[dict[str, Any]], vectors: np.ndarray, embedder: Embedder,
                       settings: RunSettings, report: SynthesisReport) -> str:
    """Cluster per label and store clusters + members + map coordinates (once per identical input)."""
    key = _clustering_key(micro, embedder, settings)
    if project.has_clustering(key):
        return key
    coords = map_2d(vectors)
    report_json: dict[str, Any] = {}
    planned: list[tuple[str, int, list[int]]] = []  # (label, cluster index, member positions)
    for label in project.labels():
        idx = [i for i, m in enumerate(micro) if m["label"] == label]
        if not idx:
            continue
        result = cluster_rules(vectors[idx], settings.dbscan_eps, settings.dbscan_min_samples)
        report_json[label] = {"method": result.method, "degenerate": result.degenerate_reason,
                              "clusters": result.n_clusters, "noise_fraction": result.noise_fraction,
                              "tried": result.tried}
        final, note = keep_every_label(vectors[idx], result.labels, result.degenerate_reason)
        if note:
            report_json[label]["note"] = note
        groups: dict[int, list[int]] = {}
        for local, c in zip(idx, final):
            groups.setdefault(int(c), []).append(local)
        planned += [(label, c, members) for c, members in sorted(groups.items())]
    clusters: list[NewCluster] = []
    for label, c, members in planned:
        xy = coords[members].mean(axis=0)
        clusters.append(NewCluster(label, c, float(xy[0]), float(xy[1]), tuple(micro[i]["id"] for i in members)))
    project.store_clustering(
        key, method="per-label dbscan",
        params={"eps": settings.dbscan_eps, "min_samples": settings.dbscan_min_samples, "embedder": embedder.model_id},
        report={"labels": report_json,
                "points": {str(m["id"]): [float(x), float(y)] for m, (x, y) in zip(micro, coords)}},
        clusters=clusters)
    return key


def latest_clustering(project: Project) -> str | None:
    return project.latest_clustering_key()


def clusters_of(project: Project, key: str) -> list[dict[str, Any]]:
    return project.clusters(key)


@dataclass
class _MicroRules:
    """The micro-rules synthesis works from, their embeddings (row i = micro[i]) and the training texts."""

    micro: list[dict[str, Any]]
    vectors: np.ndarray
    texts: dict[int, str]                    # training example id -> its text
    by_id: dict[int, int] = field(init=False)  # micro-rule id -> its index in `micro`

    def __post_init__(self) -> None:
        self.by_id = {m["id"]: i for i, m in enumerate(self.micro)}

    def indices(self, micro_rule_ids: Sequence[int]) -> list[int]:
        return [self.by_id[m] for m in micro_rule_ids]

    def source_text(self, i: int) -> str:
        return self.texts.get(self.micro[i]["example_id"], "")


def run_synthesis(project: Project, teacher: Teacher, embedder: Embedder, settings: RunSettings,
                  progress: Progress) -> SynthesisReport:
    report = SynthesisReport()
    micro = project.micro_rules()
    report.micro_rules = len(micro)
    if not micro:
        project.set_phase(PHASE, PhaseState.FAILED, 0, 0, "No micro-rules: run phase 1 first.")
        raise ValueError("Phase 2 needs micro-rules; run phase 1 (extraction) first.")
    texts = {e.id: e.text for e in project.examples(split="train")}
    micro = _without_copies(micro, texts, report)
    project.set_phase(PHASE, PhaseState.RUNNING, 0, 0, "embedding")
    vectors = embed_cached(project, embedder, [m["rule"] for m in micro], progress)
    data = _MicroRules(micro, vectors, texts)
    key = _cluster_and_store(project, micro, vectors, embedder, settings, report)
    clusters = clusters_of(project, key)
    real = [c for c in clusters if not c["is_noise"]]
    report.clusters = len(real)
    report.noise_rules = sum(c["size"] for c in clusters if c["is_noise"])
    labels = tuple(project.labels())

    jobs = _merge_jobs(data, real, labels, settings)
    progress.begin("Phase 2: merging clusters", len(jobs))
    outcomes, stats = run_teacher_jobs(project, teacher, jobs, progress, phase=PHASE,
                                       max_attempts=settings.teacher_max_attempts)
    report.failed_merges = stats.failed
    rules = _cluster_rules(data, real, outcomes, labels, report)
    meanings, teacher_conflicts = _review(project, teacher, rules, labels, settings, progress)
    report.rejected_meanings = [lab for lab in labels if lab not in meanings]
    if report.rejected_meanings:
        progress.log("No usable meaning from the teacher for " + ", ".join(report.rejected_meanings)
                     + " (empty or not a description); left empty. Type one in the rule editor if it helps.",
                     "warning")

    rs_id = _store_rule_set(project, embedder, rules, list(labels), meanings, teacher_conflicts, settings, progress,
                            f"synthesis: {len(rules)} rules from {len(micro)} micro-rules in "
                            f"{len(real)} clusters ({report.noise_rules} noise rules kept aside)")
    report.rule_set_id = rs_id
    report.rules = len(rules)
    report.conflicts = len(project.conflicts(rs_id))
    project.set_rule_set_pointer(SYNTHESIS_RULE_SET, rs_id)
    msg = _done_message(report, len(micro), len(real))
    project.set_phase(PHASE, PhaseState.DONE, len(real), len(real), msg)
    progress.log(msg)
    return report


def _without_copies(micro: list[dict[str, Any]], texts: dict[int, str],
                    report: SynthesisReport) -> list[dict[str, Any]]:
    """A micro-rule that still copies its example after the retries stays out of synthesis (shown flagged),
    unless its label has no other micro-rule."""
    copied = {m["id"] for m in micro if copy_reason(m["rule"], [texts.get(m["example_id"], "")])}
    general_labels = {m["label"] for m in micro if m["id"] not in copied}
    report.copied_micro_rules = len(copied)
    return [m for m in micro if m["id"] not in copied or m["label"] not in general_labels]


def _merge_jobs(data: _MicroRules, real: list[dict[str, Any]], labels: tuple[str, ...],
                settings: RunSettings) -> list[TeacherJob]:
    """Merge each cluster (the members closest to the centroid first, capped to keep the request small)."""
    jobs: list[TeacherJob] = []
    for c in real:
        idx = data.indices(c["micro_rule_ids"])
        order = [idx[j] for j in centroid_order(data.vectors[idx])][: settings.merge_max_members]
        rules = [data.micro[i]["rule"] for i in order]
        # The merged rule must lead to the cluster's label (a one-value enum) and not copy a source example.
        request = TeacherRequest(MERGE_SYSTEM, merge_user(settings.task, c["label"], rules),
                                 merge_schema((c["label"],)), "merge", rule_pattern([c["label"]]))
        sources = [data.source_text(i) for i in idx]
        jobs.append(TeacherJob(f"cluster:{c['id']}", request, tuple(data.micro[i]["example_id"] for i in order),
                               check=_off_label_check(c["label"], labels), soft_check=_copy_check(sources)))
    return jobs


def _cluster_rules(data: _MicroRules, real: list[dict[str, Any]], outcomes: dict[str, Any],
                   labels: tuple[str, ...], report: SynthesisReport) -> list[Rule]:
    """One rule per cluster (its merge, else its most central micro-rule), ordered by label then cluster size."""
    rules: list[Rule] = []
    for c in real:
        outcome = outcomes.get(f"cluster:{c['id']}")
        members = c["micro_rule_ids"]
        idx = data.indices(members)
        if outcome is None or outcome.parsed is None:
            # Keep the cluster's knowledge: fall back to its most central micro-rule, marked as such.
            text = data.micro[idx[int(centroid_order(data.vectors[idx])[0])]]["rule"]
            origin = "central micro-rule (merge failed)"
        else:
            text = " ".join(outcome.parsed.rule.split())
            origin = "merged"
        flag = copy_reason(text, [data.source_text(i) for i in idx])
        # A flagged rule is kept out of the prompt, shown (disabled) with the reason.
        rules.append(Rule(uid=f"C{c['id']}", text=text, label=c["label"], enabled=flag is None, cluster_id=c["id"],
                          micro_rule_ids=tuple(members),
                          example_ids=tuple(sorted(data.micro[i]["example_id"] for i in idx)), origin=origin,
                          flag=flag or None))
        report.flagged_rules += bool(flag)
    rules.sort(key=lambda r: (labels.index(r.label), -len(r.micro_rule_ids)))
    return [replace(r, uid=f"R{i}") for i, r in enumerate(rules, 1)]


def _review(project: Project, teacher: Teacher, rules: Sequence[Rule], labels: tuple[str, ...],
            settings: RunSettings, progress: Progress) -> tuple[dict[str, str], list[tuple[int, int, str]]]:
    """Review: label meanings (in label order) + teacher-named conflicts."""
    meanings = dict(settings.label_meanings)
    teacher_conflicts: list[tuple[int, int, str]] = []
    if rules:
        to_explain = [lab for lab in labels if lab not in meanings]
        review_job = TeacherJob("review", TeacherRequest(REVIEW_SYSTEM, review_user(
            settings.task, labels, [(r.text, r.label) for r in rules]), Review, "review"),
            soft_check=_meanings_check(to_explain))
        progress.begin("Phase 2: reviewing rules", 1)
        rev, _ = run_teacher_jobs(project, teacher, [review_job], progress, phase=PHASE,
                                  max_attempts=settings.teacher_max_attempts)
        parsed = rev["review"].parsed if "review" in rev else None
        if parsed is not None:
            # Meanings typed at import are used as given; the teacher's are used only when they are words.
            for lm in parsed.label_meanings:  # type: ignore[attr-defined]  # the review schema (create_model)
                if lm.label in labels and lm.label not in meanings and meaning_reason(lm.meaning, lm.label) is None:
                    meanings[lm.label] = " ".join(lm.meaning.split())
            for pair in parsed.conflicts:  # type: ignore[attr-defined]  # the review schema (create_model)
                teacher_conflicts.append((pair.rule_a, pair.rule_b, pair.reason))
    return {lab: meanings[lab] for lab in labels if lab in meanings}, teacher_conflicts


def _store_rule_set(project: Project, embedder: Embedder, rules: Sequence[Rule], labels: list[str],
                    meanings: dict[str, str], teacher_conflicts: list[tuple[int, int, str]], settings: RunSettings,
                    progress: Progress, reason: str) -> int:
    """The synthesised rule set as a version with its conflicts; an identical earlier one is reused."""
    prompt = build_rules_prompt(settings.task, labels,
                                [PromptRule(r.text, r.label) for r in rules if r.enabled], meanings)
    existing = project.find_rule_set(origin="synthesis", parent_id=None, rules=rules, task=settings.task,
                                     labels=labels, meanings=meanings)
    if existing is not None:
        return existing
    rs_id = project.add_rule_set(
        parent_id=None, reason=reason,
        origin="synthesis", round=None, task=settings.task, labels=labels, meanings=meanings, rules=rules,
        prompt_text=prompt, prompt_sha256=sha256_text(prompt))
    find_conflicts(project, embedder, rs_id, rules, teacher_conflicts, settings, progress)
    return rs_id


def _done_message(report: SynthesisReport, n_micro: int, n_clusters: int) -> str:
    return (f"{report.rules} rules from {n_micro} micro-rules ({n_clusters} clusters, {report.noise_rules} noise "
            f"rules kept aside, {report.conflicts} conflicts, {report.failed_merges} merges failed"
            + (f", {report.copied_micro_rules} micro-rules copying their example left out"
               if report.copied_micro_rules else "")
            + (f", {report.flagged_rules} rules copying an example kept out of the prompt (flagged)"
               if report.flagged_rules else "")
            + (f"; no meaning for {', '.join(report.rejected_meanings)}" if report.rejected_meanings else "") + ")")


def _off_label_check(label: str, labels: Sequence[str]) -> Any:
    return lambda parsed: off_label_reason(parsed.rule, label, labels)


def _copy_check(sources: Sequence[str]) -> Any:
    return lambda parsed: copy_reason(parsed.rule, sources)


def _meanings_check(wanted: Sequence[str]) -> Any:
    """Every label without a typed meaning needs one line of words from the review (not a number, not empty)."""
    def check(parsed: Any) -> str | None:
        given = {lm.label: lm.meaning for lm in parsed.label_meanings}
        for lab in wanted:
            reason = meaning_reason(given.get(lab, ""), lab)
            if reason:
                return reason + "; give one meaning for every label, using the label names exactly"
        return None
    return check


def find_conflicts(project: Project, embedder: Embedder, rule_set_id: int, rules: Sequence[Rule],
                   teacher_pairs: list[tuple[int, int, str]], settings: RunSettings, progress: Progress) -> None:
    """Store a version's conflicts: the teacher's pairs plus the data's evidence (embeddings come from the cache)."""
    micro = project.micro_rules()
    micro_vecs = embed_cached(project, embedder, [m["rule"] for m in micro], progress) if micro else None
    rule_vecs = embed_cached(project, embedder, [r.text for r in rules], progress)
    store_conflicts(project, rule_set_id, rules, rule_vecs, teacher_pairs, micro, micro_vecs, settings)


class ConflictSink(Protocol):
    """Where `store_conflicts` writes: a Project, or a filter in front of one (rule_edits)."""

    def add_conflict(self, rule_set_id: int, rule_a: str, rule_b: str, source: str, reason: str,
                     evidence: Any) -> int: ...

    def transaction(self) -> AbstractContextManager[Any]: ...


def store_conflicts(project: ConflictSink, rule_set_id: int, rules: Sequence[Rule], rule_vecs: np.ndarray,
                    teacher_pairs: list[tuple[int, int, str]], micro: list[dict[str, Any]] | None,
                    micro_vecs: np.ndarray | None, settings: RunSettings) -> None:
    """Conflicts from the teacher, from similar rules with different labels, and from co-firing on training items.

    A version's conflicts are stored in one commit.
    """
    with project.transaction():
        _store_conflicts(project, rule_set_id, rules, rule_vecs, teacher_pairs, micro, micro_vecs, settings)


def _store_conflicts(project: ConflictSink, rule_set_id: int, rules: Sequence[Rule], rule_vecs: np.ndarray,
                     teacher_pairs: list[tuple[int, int, str]], micro: list[dict[str, Any]] | None,
                     micro_vecs: np.ndarray | None, settings: RunSettings) -> None:
    seen: set[tuple[str, str, str]] = set()

    def add(a: int, b: int, source: str, reason: str, evidence: Any) -> None:
        ua, ub = sorted((rules[a].uid, rules[b].uid))
        if (ua, ub, source) in seen:
            return
        seen.add((ua, ub, source))
        project.add_conflict(rule_set_id, ua, ub, source, reason, evidence)

    for a, b, reason in teacher_pairs:
        if 1 <= a <= len(rules) and 1 <= b <= len(rules) and a != b and rules[a - 1].label != rules[b - 1].label:
            add(a - 1, b - 1, "teacher", reason, {"named_by": "teacher"})
    if len(rules) < 2:
        return
    sims = rule_vecs @ rule_vecs.T
    for a in range(len(rules)):
        for b in range(a + 1, len(rules)):
            if rules[a].label != rules[b].label and sims[a, b] >= settings.conflict_similarity:
                add(a, b, "similarity", f"The rules are very similar (cosine {sims[a, b]:.2f}) but lead to "
                                        f"{rules[a].label} and {rules[b].label}.",
                    {"cosine": round(float(sims[a, b]), 4)})
    if micro is None or micro_vecs is None or not len(micro):
        return
    fires = (micro_vecs @ rule_vecs.T) >= settings.fire_similarity  # (items, rules)
    pair_items: dict[tuple[int, int], list[str]] = {}
    for i, row in enumerate(fires):
        on = np.flatnonzero(row)
        for x in range(len(on)):
            for y in range(x + 1, len(on)):
                a, b = int(on[x]), int(on[y])
                if rules[a].label != rules[b].label:
                    pair_items.setdefault((a, b), []).append(micro[i]["ext_id"])
    for (a, b), items in sorted(pair_items.items(), key=lambda kv: -len(kv[1])):
        add(a, b, "co-firing", f"Both rules apply to {len(items)} training item(s) but lead to different labels.",
            {"examples": items[:10], "count": len(items)})
