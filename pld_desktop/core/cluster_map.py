"""The clusters view's read model: the latest clustering's groups, members, merged rules and map points."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .domain import Rule
from .project import SYNTHESIS_RULE_SET, Project


@dataclass
class MapGroup:
    """One cluster (or one label's noise) as the view shows it."""

    key: str
    label: str
    cluster_id: int
    index: int                      # the cluster number within its label (-1 for noise)
    is_noise: bool
    members: list[dict[str, Any]]   # micro-rules: id, rule, ext_id
    rule_uid: str | None = None     # the consolidated rule made from this cluster, if any
    rule_text: str | None = None
    rule_origin: str | None = None

    @property
    def size(self) -> int:
        return len(self.members)


@dataclass
class ClusterMap:
    labels: list[str]
    groups: list[MapGroup]
    points: dict[int, tuple[float, float]]
    methods: dict[str, str] = field(default_factory=dict)  # label -> clustering method (+ note)


def read_cluster_map(project: Project) -> ClusterMap | None:
    """The latest clustering with members, merged rule texts and map points; None before phase 2 clustered."""
    key = project.latest_clustering_key()
    if key is None:
        return None
    report = project.clustering_report(key)
    points = {int(k): (float(v[0]), float(v[1])) for k, v in (report.get("points") or {}).items()}
    methods: dict[str, str] = {}
    for label, info in (report.get("labels") or {}).items():
        text = str(info.get("method", ""))
        if info.get("degenerate"):
            text += f" (replaced: {info['degenerate']})"
        if info.get("note"):
            text += f"; {info['note']}"
        methods[label] = text
    micro = {m["id"]: m for m in project.micro_rules()}
    merged: dict[int, Rule] = {}
    rs_id = project.rule_set_pointer(SYNTHESIS_RULE_SET)
    if rs_id is not None:
        for merged_rule in project.rule_set(rs_id).rules:
            if merged_rule.cluster_id is not None:
                merged[int(merged_rule.cluster_id)] = merged_rule
    groups: list[MapGroup] = []
    for c in project.clusters(key):
        members = [{"id": mid, "rule": micro[mid]["rule"] if mid in micro else "(micro-rule no longer stored)",
                    "ext_id": micro[mid]["ext_id"] if mid in micro else ""} for mid in c["micro_rule_ids"]]
        noise = bool(c["is_noise"])
        rule = merged.get(int(c["id"]))
        groups.append(MapGroup(
            key=f"noise:{c['label']}" if noise else f"c:{c['id']}", label=c["label"], cluster_id=int(c["id"]),
            index=int(c["cluster_index"]), is_noise=noise, members=members,
            rule_uid=rule.uid if rule else None, rule_text=rule.text if rule else None,
            rule_origin=rule.origin if rule else None))
    labels = [lab for lab in project.labels() if any(g.label == lab for g in groups)]
    labels += sorted({g.label for g in groups} - set(labels))
    return ClusterMap(labels=labels, groups=groups, points=points, methods=methods)


def read_loop_rounds(project: Project) -> list[dict[str, Any]]:
    """The rounds of the latest closed-loop run (a rerun records its rounds again under a new run id)."""
    rows = project.loop_rounds()
    if not rows:
        return []
    last_run = rows[-1]["run_id"]
    return [r for r in rows if r["run_id"] == last_run]
