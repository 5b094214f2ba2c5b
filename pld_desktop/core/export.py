"""Export a rule set and its evaluation as .txt (the exact prompt bytes), .md (readable) and .json (complete)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import __version__
from .deploy import DEPLOY_FORMATS, deploy_files
from .domain import Evaluation
from .project import Project
from .prompts import student_user_message
from .scoring import latest_scores
from .working import require_working_rule_set, working_rule_set

FORMATS = ("txt", "md", "json")
ALL_FORMATS = FORMATS + DEPLOY_FORMATS  # the prompt documents plus the deployment files (core/deploy.py)


def write_atomic(path: Path, data: bytes) -> None:
    """Temp file in the same folder, fsync, then replace: a reader never sees a half-written export."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600; an export is an ordinary document, so give it the user's usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+!|~])")


def md_escape(text: str) -> str:
    """Escape Markdown/HTML syntax in user- or teacher-written text so it renders as plain text."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def _fence(text: str) -> str:
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}text\n{text}\n{ticks}"


def export_payload(project: Project, rule_set_id: int | None = None) -> dict[str, Any]:
    """Everything the exports say, gathered once from the project."""
    if rule_set_id is None and working_rule_set(project) is None:
        raise ValueError("Nothing to export yet: the project has no rule set (run phases 1-2 first).")
    rs_id = require_working_rule_set(project, rule_set_id)
    rs = project.rule_set(rs_id)
    # The version's own newest scores (and the baselines on the same examples), never another version's.
    evaluations: dict[str, Evaluation] = {}
    dev_evaluations: dict[str, Evaluation] = {}
    for split, into in (("test", evaluations), ("dev", dev_evaluations)):
        for prompt, score in latest_scores(project, rs_id, split).items():
            into["pld" if prompt == "rules" else prompt] = project.evaluation(score.evaluation_id)
    for evs in (evaluations, dev_evaluations):
        pld_eval = evs.get("pld")
        if pld_eval is not None and pld_eval.prompt_sha256 != rs.prompt_sha256:
            raise RuntimeError("The evaluated prompt differs from the rule set's prompt; refusing to export.")
    micro = {m["id"]: m for m in project.micro_rules()}
    # One id scheme for examples everywhere a user reads them: the CSV's id, else its row number (ext_id).
    ext_ids = {e.id: e.ext_id for e in project.examples()}
    rules = []
    number = 0
    for r in rs.rules:
        enabled = bool(r.enabled)
        number += enabled
        # The export lists every key the rule has in the project file (unknown ones included), as stored.
        body = {k: v for k, v in r.to_dict().items() if k != "example_ids"}
        rules.append({**body, "enabled": enabled, "prompt_number": number if enabled else None,
                      "examples": [ext_ids.get(e, str(e)) for e in r.example_ids],
                      "micro_rules": [{"id": mid, "rule": micro[mid]["rule"], "example": micro[mid]["ext_id"]}
                                      for mid in r.micro_rule_ids if mid in micro]})
    info = project.dataset_info() or {}
    settings = project.settings().get("run_settings", {})
    scored_student = next((ev.student for ev in (evaluations.get("pld"), dev_evaluations.get("pld")) if ev), None)
    teachers = project.teacher_models()
    # Noise micro-rules are not in the prompt but are never dropped: the export lists them.
    noise = project.noise_micro_rules()
    return {
        "rule_set": rs, "rules": rules, "conflicts": project.conflicts(rs_id), "evaluations": evaluations,
        "dev_evaluations": dev_evaluations,
        "student": scored_student or _configured_student(settings),
        "teacher": _configured_teacher(settings),
        "dataset": {"source_name": info.get("source_name"), "source_sha256": info.get("source_sha256"),
                    "dataset_hash": info.get("dataset_hash"), "n_rows": info.get("n_rows"),
                    "labels": info.get("labels"), "mapping": info.get("mapping")},
        "teacher_models": teachers,
        "embedder": settings.get("embedder") or "bundled all-MiniLM-L6-v2",
        "teacher_usage": project.teacher_totals(),
        "noise_micro_rules": [{"id": n["id"], "rule": n["rule"], "label": n["label"], "example": n["ext_id"]}
                              for n in noise],
    }


def _configured_student(settings: dict[str, Any]) -> dict[str, Any]:
    """The student named by the run settings, for a version not scored yet (no file hash without loading it)."""
    if settings.get("student_backend") == "openai":
        return {"name": settings.get("student_model") or "the first model the server lists",
                "backend": "openai", "base_url": settings.get("student_base_url"), "scored": False}
    gguf = settings.get("student_gguf")
    return {"name": Path(gguf).name if gguf else "bundled Gemma 3 270M", "path": gguf, "backend": "llama",
            "n_ctx": settings.get("student_n_ctx"), "scored": False}


def _configured_teacher(settings: dict[str, Any]) -> dict[str, Any]:
    kind = settings.get("teacher", "local")
    if kind == "gemini":
        return {"kind": "gemini", "model": settings.get("teacher_model")}
    if kind == "openai":
        return {"kind": "openai", "model": settings.get("teacher_openai_model"),
                "base_url": settings.get("teacher_openai_base_url")}
    gguf = settings.get("teacher_gguf")
    return {"kind": "local", "model": Path(gguf).name if gguf else "bundled SmolLM2-135M-Instruct"}


def render_txt(payload: dict[str, Any]) -> bytes:
    return str(payload["rule_set"].prompt_text).encode("utf-8")


def render_json(payload: dict[str, Any]) -> bytes:
    rs = payload["rule_set"]
    evals = payload["evaluations"]
    doc = {
        "format": "pld-desktop.rule-set/1",
        "app_version": __version__,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rule_set": {"id": rs.id, "parent_id": rs.parent_id, "reason": rs.reason, "origin": rs.origin,
                     "round": rs.round, "task": rs.task, "labels": list(rs.labels),
                     "label_meanings": dict(rs.meanings)},
        "prompt": {"text": rs.prompt_text, "sha256": rs.prompt_sha256,
                   "student_user_message_template": student_user_message("{system_prompt}", "{input}")},
        "rules": payload["rules"],
        "conflicts": [{"rule_a": c.rule_a, "rule_b": c.rule_b, "source": c.source, "reason": c.reason,
                       "evidence": c.evidence} for c in payload["conflicts"]],
        "metrics": {k: v.metrics for k, v in evals.items()},
        "dev_metrics": {k: v.metrics for k, v in payload["dev_evaluations"].items()},
        "models": {"student": payload["student"], "teacher": payload["teacher"],
                   "teachers": payload["teacher_models"], "embedder": payload["embedder"]},
        "dataset": payload["dataset"],
        "teacher_usage": payload["teacher_usage"],
        "unclustered_micro_rules": payload["noise_micro_rules"],
    }
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _results_table(title: str, evals: dict[str, Evaluation]) -> list[str]:
    student = evals.get("pld", next(iter(evals.values()))).student
    out = [f"## {title}", "",
           f"Student: {md_escape(student.get('name', ''))} (sha256 `{student.get('sha256', '')[:16]}`), "
           f"{next(iter(evals.values())).n_examples} examples.", "",
           "| prompt | macro-F1 | accuracy | latency p50 (s) | latency p95 (s) |", "|---|---|---|---|---|"]
    names = {"pld": "PLD rules", "zero_shot": "zero-shot", "few_shot": "few-shot"}
    for kind, ev in evals.items():
        m = ev.metrics or {}
        p50, p95 = m.get("latency_p50_s"), m.get("latency_p95_s")
        out.append(f"| {names.get(kind, kind)} | {m['macro_f1']:.3f} | {m['accuracy']:.3f} | "
                   f"{'-' if p50 is None else f'{p50:.3f}'} | {'-' if p95 is None else f'{p95:.3f}'} |")
    return out + [""]


def render_md(payload: dict[str, Any]) -> bytes:
    rs = payload["rule_set"]
    evals = payload["evaluations"]
    out = [f"# Rule set v{rs.id}", "",
           f"- Version: {rs.id} ({md_escape(rs.origin)}" + (f", parent v{rs.parent_id}" if rs.parent_id else "") + ")",
           f"- Made by: {md_escape(rs.reason)}",
           f"- Prompt sha256: `{rs.prompt_sha256}`",
           f"- Dataset: {md_escape(payload['dataset'].get('source_name') or '')} "
           f"({payload['dataset'].get('n_rows')} rows, hash `{(payload['dataset'].get('dataset_hash') or '')[:16]}`)",
           f"- Exported by PLD Desktop {__version__}", ""]
    if evals:
        out += _results_table("Results on the test split", evals)
    if payload.get("dev_evaluations"):
        out += _results_table("Results on the dev split", payload["dev_evaluations"])
    out += ["## Task", "", md_escape(rs.task), "", "## Labels", ""]
    out += [f"- **{md_escape(lab)}**" + (f": {md_escape(rs.meanings[lab])}" if rs.meanings.get(lab) else "")
            for lab in rs.labels]
    # Prompt order and the prompt's own numbers, so rule 3 here is rule 3 of the .txt; disabled rules are not in
    # the prompt, so they are listed apart without a number.
    enabled = [r for r in payload["rules"] if r.get("enabled", True)]
    disabled = [r for r in payload["rules"] if not r.get("enabled", True)]
    out += ["", "## Rules (in prompt order)", ""]
    for r in enabled:
        out.append(f"{r['prompt_number']}. {md_escape(r['text'])} → **{md_escape(r['label'])}**  ")
        out.append(f"   *{md_escape(r['uid'])}, from {len(r.get('micro_rule_ids', []))} micro-rules, "
                   f"{len(r.get('examples', []))} examples*")
    if not enabled:
        out.append("*(no enabled rules: the prompt has no rule list)*")
    out.append("")
    if disabled:
        out += ["## Disabled rules (not in the prompt)", ""]
        for r in disabled:
            out.append(f"- {md_escape(r['text'])} → **{md_escape(r['label'])}** *({md_escape(r['uid'])})*")
        out.append("")
    if payload["conflicts"]:
        out += ["## Conflicts", "", "| rules | found by | reason |", "|---|---|---|"]
        for c in payload["conflicts"]:
            pair = md_escape(c.rule_a) if c.rule_a == c.rule_b else f"{md_escape(c.rule_a)} / {md_escape(c.rule_b)}"
            out.append(f"| {pair} | {md_escape(c.source)} | {md_escape(c.reason)} |")
        out.append("")
    if payload["noise_micro_rules"]:
        out += ["## Micro-rules left out (clustering noise)", "",
                f"{len(payload['noise_micro_rules'])} micro-rules fitted no cluster; they are not in the prompt.", ""]
        out += [f"- {md_escape(n['rule'])} *({md_escape(n['label'])}, example {md_escape(n['example'])})*"
                for n in payload["noise_micro_rules"]]
        out.append("")
    out += ["## The exact system prompt", "", _fence(rs.prompt_text), ""]
    return "\n".join(out).encode("utf-8")


RENDERERS = {"txt": render_txt, "md": render_md, "json": render_json}


def export_rule_set(project: Project, out_dir: str | os.PathLike[str], formats: tuple[str, ...] = FORMATS, *,
                    stem: str | None = None, rule_set_id: int | None = None) -> list[Path]:
    """Write the chosen formats atomically into `out_dir`; returns the written paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = export_payload(project, rule_set_id)
    rs = payload["rule_set"]
    stem = stem or f"{project.path.stem}-rules-v{rs.id}"
    unknown = [f for f in formats if f not in RENDERERS and f not in DEPLOY_FORMATS]
    if unknown:
        raise ValueError(f"Unknown export format '{unknown[0]}'; choose from {', '.join(ALL_FORMATS)}.")
    files: list[tuple[str, str, bytes]] = []  # rendered first, so a format that cannot be written writes nothing
    for fmt in formats:
        if fmt in RENDERERS:
            files.append((fmt, f"{stem}.{fmt}", RENDERERS[fmt](payload)))
        else:
            files += [(fmt, name, data) for name, data in deploy_files(fmt, payload, stem)]
    written = []
    pld = payload["evaluations"].get("pld") or payload["dev_evaluations"].get("pld")
    for fmt, name, data in files:
        path = out_dir / name
        write_atomic(path, data)
        project.record_export(path, fmt, hashlib.sha256(data).hexdigest(), rs.id, pld.id if pld else None)
        written.append(path)
    return written


def export_version(project: Project, out_dir: str | os.PathLike[str], formats: Sequence[str], *,
                   rule_set_id: int, csv_name: str | None = None) -> list[Path]:
    """What `pld export` and the window's Export menu both write for one version: the rule-set formats and
    deployment files (`export_rule_set`) and, for "csv", its per-example results (spreadsheet formulas
    neutralised) as `csv_name` (default `<project>-results-v<id>.csv`). Returns the written paths."""
    from .results_csv import export_results_csv  # results_csv imports this module
    out_dir = Path(out_dir)
    prompt_formats = tuple(f for f in formats if f != "csv")
    written = export_rule_set(project, out_dir, prompt_formats, rule_set_id=rule_set_id) if prompt_formats else []
    if "csv" in formats:
        out_dir.mkdir(parents=True, exist_ok=True)
        name = csv_name or f"{project.path.stem}-results-v{rule_set_id}.csv"
        written.append(export_results_csv(project, out_dir / name, rule_set_id=rule_set_id))
    return written


def default_export_formats(project: Project, rule_set_id: int) -> list[str]:
    """Every rule-set and deployment format, plus "csv" once the version has a dev or test score."""
    scored = bool(latest_scores(project, rule_set_id, "test") or latest_scores(project, rule_set_id, "dev"))
    return list(ALL_FORMATS) + (["csv"] if scored else [])
