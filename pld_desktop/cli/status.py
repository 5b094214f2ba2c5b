"""`pld status` and `pld batch`: what a project holds and how far its phases are, as text or JSON."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..core.states import PhaseState
from .console import EXIT_OK


def _status_dict(project: Any) -> dict[str, Any]:
    from ..core.pipeline import PHASE_NAMES, shown_phase_state
    from ..core.project import CHOSEN_RULE_SET
    info = project.dataset_info() or {}
    counts = project.split_counts()
    phases = project.phase_states()
    evals = {}
    last = project.last_evaluation()
    for kind in ("pld", "zero_shot", "few_shot"):
        if kind in last:
            m = project.evaluation(last[kind]).metrics or {}
            evals[kind] = {"macro_f1": m.get("macro_f1"), "accuracy": m.get("accuracy"),
                           "latency_p50_s": m.get("latency_p50_s")}
    return {
        "project": str(project.path), "dataset": info.get("source_name"), "rows": info.get("n_rows"),
        "labels": info.get("labels"), "splits": counts,
        "phases": {PHASE_NAMES[p]: {"state": shown_phase_state(project.path, phases[p]["state"]),
                                    "done": phases[p]["done"],
                                    "total": phases[p]["total"], "message": phases[p]["message"]}
                   for p in sorted(phases)},
        "micro_rules": len(project.micro_rule_example_ids()), "failed_items": project.failed_item_count(),
        "rule_sets": len(project.rule_sets()), "chosen_rule_set": project.rule_set_pointer(CHOSEN_RULE_SET),
        "teacher": project.teacher_totals(), "evaluation": evals,
        **_quality_status(project),
    } | _loop_status(project)


STATE_WORDS: dict[str, str] = {PhaseState.INTERRUPTED: "interrupted, resumable"}


def _quality_status(project: Any) -> dict[str, Any]:
    """`rule_quality` and `chosen` (issue 12), kept in one function beside the other status fields."""
    from ..core.pipeline import quality_status
    return quality_status(project)


def _print_status(project: Any) -> None:
    s = _status_dict(project)
    print(f"Project {s['project']}")
    print(f"  dataset: {s['dataset']} ({s['rows']} rows; labels {', '.join(s['labels'] or [])}; "
          f"splits {s['splits']})")
    for name, ph in s["phases"].items():
        state = STATE_WORDS.get(ph["state"], ph["state"])
        print(f"  {name:<12} {state:<10} {ph['done']}/{ph['total']}  {ph['message'] or ''}")
    t = s["teacher"]
    print(f"  teacher: {t['calls']} calls ({t['failed']} invalid or failed attempts; {s['failed_items']} items "
          f"given up after retries), {t['prompt_tokens']:,} in / "
          f"{t['output_tokens'] + t['thoughts_tokens']:,} out tokens, ${t['cost_usd']:.4f}")
    print(f"  micro-rules: {s['micro_rules']}, rule-set versions: {s['rule_sets']}, chosen: {s['chosen_rule_set']}, "
          f"working: {s['working_rule_set']} ({s['working_source']}); versions scored on test: {s['test_use_count']}")
    for kind, m in s["evaluation"].items():
        print(f"  test {kind:<10} macro-F1 {m['macro_f1']:.3f}  accuracy {m['accuracy']:.3f}  "
              f"p50 {m['latency_p50_s']:.3f} s")
    _print_quality(s)


def _print_quality(s: dict[str, Any]) -> None:
    q, c = s.get("rule_quality") or {}, s.get("chosen") or {}
    if "micro_rules" in q:
        print(f"  rule quality: {q['micro_rules']} micro-rules, {q['truncated']} cut, {q['copied']} copy their "
              f"example, {q['off_label']} off-label; labels without a rule: "
              f"{', '.join(q['labels_without_rules']) or 'none'}")
        if q.get("given_up_items"):
            print(f"  {q['given_up_items']} teacher item(s) given up after retries; 'pld run --retry-failed' "
                  "tries them again")
    if c:
        def f(x: Any) -> str:
            return "-" if x is None else f"{x:.3f}"
        print(f"  chosen on dev: v{c['rule_set']} {c['prompt']}{' (calibrated)' if c['calibrated'] else ''} "
              f"macro-F1 {f(c['dev_macro_f1'])}; zero-shot {f(c['zero_shot_dev_macro_f1'])}, "
              f"5-shot {f(c['few_shot_dev_macro_f1'])}")
        if c.get("warning"):
            print(f"  warning: {c['warning']}")
    for kind, m in (s.get("test_raw_and_calibrated") or {}).items():
        if m.get("macro_f1_calibrated") is not None:
            print(f"  test {kind:<12} macro-F1 raw {m['macro_f1']:.3f}, calibrated {m['macro_f1_calibrated']:.3f}")


def cmd_batch(args: argparse.Namespace) -> int:
    from ..core.batch_extraction import batch_summary
    from ..core.project import Project
    with Project.open(args.project, read_only=True) as project:
        jobs = batch_summary(project)
    if args.json:
        print(json.dumps(jobs, indent=2))
        return EXIT_OK
    if not jobs:
        print("No batch jobs in this project (run phase 1 with --teacher gemini --batch).")
    for j in jobs:
        print(f"{j.get('name')}: {j.get('state')}, {j.get('n_requests')} requests, merged {j.get('merged')}"
              + (f" - {j['message']}" if j.get("message") else ""))
    return EXIT_OK

def cmd_status(args: argparse.Namespace) -> int:
    from ..core.project import Project
    with Project.open(args.project, read_only=True) as project:
        if args.json:
            print(json.dumps(_status_dict(project), indent=2))
        else:
            _print_status(project)
    return EXIT_OK


def _loop_status(project: Any) -> dict[str, Any]:
    """The working version, every score and the test-use count, for `pld status` (--json too)."""
    from ..core.scoring import status_evaluations, test_use_count
    from ..core.working import working_version
    wv = working_version(project)
    return {"working_rule_set": wv.rule_set_id if wv else None, "working_source": wv.source if wv else None,
            "evaluations": status_evaluations(project), "test_use_count": test_use_count(project)}
