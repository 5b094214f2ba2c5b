"""The analyst's loop on the command line (issue 11): `pld rules` (list, score, edit), `pld versions`, `pld diff`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .console import EXIT_OK, ConsoleProgress
from .runs import _with_student

if TYPE_CHECKING:
    from ..core.domain import Conflict, Rule


def _rule_ref(rules: Sequence[Rule], ref: str) -> str:
    """A rule's uid from what the user typed: its number in the prompt ("3"), its uid ("R3", "E1"), or "dK"
    for the K-th disabled rule (disabled rules have no number in the prompt)."""
    from ..core.diff import prompt_numbers
    numbers = prompt_numbers(rules)
    text = str(ref).strip()
    if text.isdigit():
        for uid, n in numbers.items():
            if n == int(text):
                return uid
        numbered = max([n or 0 for n in numbers.values()] + [0])
        raise ValueError(f"There is no rule {text} in the prompt (it has {numbered}"
                         " numbered rules; disabled rules are named d1, d2, ... or by uid).")
    disabled = [r.uid for r in rules if not r.enabled]
    if text.lower().startswith("d") and text[1:].isdigit():
        k = int(text[1:])
        if 1 <= k <= len(disabled):
            return disabled[k - 1]
        raise ValueError(f"There is no disabled rule {text} ({len(disabled)} rules are disabled).")
    if any(r.uid == text for r in rules):
        return text
    raise ValueError(f"'{ref}' names no rule: use its number in the prompt, its uid (R3) or d1, d2 for disabled ones.")


def _full_index_of_number(rules: Sequence[Rule], number: int, *, allow_end: bool) -> int:
    from ..core.diff import prompt_numbers
    numbers = prompt_numbers(rules)
    for i, r in enumerate(rules):
        if numbers[r.uid] == number:
            return i
    count = max([n or 0 for n in numbers.values()] + [0])
    if allow_end and number == count + 1:
        return len(rules)
    raise ValueError(f"Position {number} is outside the prompt's rules 1-{count}" + (f" (or {count + 1} for the end)"
                                                                                      if allow_end else "") + ".")


def _rule_edit(args: argparse.Namespace, rules: Sequence[Rule], labels: Sequence[str]) -> Any:
    from ..core import rule_edits as E
    action = args.action
    if action == "add":
        if not args.text or not args.label:
            raise ValueError("pld rules P add needs --text and --label.")
        if args.label not in labels:
            raise ValueError(f"'{args.label}' is not a label of this project ({', '.join(labels)}).")
        at = None if args.at is None else _full_index_of_number(rules, args.at, allow_end=True)
        return E.Add(args.text, args.label, at)
    if args.number is None:
        raise ValueError(f"pld rules P {action} needs the rule's number, e.g. pld rules P {action} 3.")
    uid = _rule_ref(rules, args.number)
    if action == "set":
        if args.text is None and args.label is None:
            raise ValueError("pld rules P set N needs --text and/or --label.")
        if args.label is not None and args.label not in labels:
            raise ValueError(f"'{args.label}' is not a label of this project ({', '.join(labels)}).")
        edits = ([E.SetText(uid, args.text)] if args.text is not None else []) + \
            ([E.SetLabel(uid, args.label)] if args.label is not None else [])
        return edits[0] if len(edits) == 1 else E.Compound(tuple(edits))
    if action in ("disable", "enable"):
        return E.SetEnabled(uid, action == "enable")
    if action == "delete":
        return E.Delete(uid)
    if action == "move":
        if args.to is None:
            raise ValueError("pld rules P move N needs --to M (the rule's new number in the prompt).")
        return E.Move(uid, _full_index_of_number(rules, args.to, allow_end=False))
    if action == "fix-label":
        return E.fix_label_to_text(rules, uid, labels)
    if action == "fix-text":
        return E.fix_text_to_label(rules, uid, labels)
    raise ValueError(f"Unknown rules action '{action}'.")


def _conflict_notes(conflicts: Sequence[Conflict]) -> dict[str, list[str]]:
    from ..core.rule_edits import changed_since
    notes: dict[str, list[str]] = {}
    for c in conflicts:
        a, b = c.rule_a, c.rule_b
        mark = " (rule changed since)" if changed_since(c) else ""
        if a == b:
            notes.setdefault(a, []).append(f"{c.source}: {c.reason}")
            continue
        notes.setdefault(a, []).append(f"{c.source} with {b}{mark}")
        notes.setdefault(b, []).append(f"{c.source} with {a}{mark}")
    return notes


def _print_rules(project: Any, rs_id: int, impact: Any = None, as_json: bool = False) -> None:
    from ..core.diff import prompt_numbers
    from ..core.rule_edits import version_conflicts
    from ..core.working import working_version
    rs = project.rule_set(rs_id)
    numbers = prompt_numbers(rs.rules)
    notes = _conflict_notes(version_conflicts(project, rs_id))
    by_uid = impact.by_uid() if impact is not None else {}
    if as_json:
        rows = []
        for r in rs.rules:
            imp = by_uid.get(r.uid)
            rows.append({"number": numbers[r.uid], "uid": r.uid, "label": r.label, "text": r.text,
                         "enabled": bool(r.enabled), "conflicts": notes.get(r.uid, []),
                         "impact": None if imp is None else {"delta_macro_f1": imp.delta, "hurts": imp.hurts,
                                                             "macro_f1_without": imp.macro_f1_without,
                                                             "flips": imp.flips}})
        print(json.dumps({"rule_set": rs_id, "rules": rows,
                          "impact": None if impact is None else {"macro_f1": impact.macro_f1, "n": impact.n,
                                                                 "split": impact.split,
                                                                 "complete": impact.complete}}, indent=2))
        return
    wv = working_version(project)
    print(f"Rule-set version {rs_id}" + (" (working version)" if wv and wv.rule_set_id == rs_id else "")
          + f": {sum(1 for n in numbers.values() if n)} rules in the prompt, "
          f"{sum(1 for n in numbers.values() if n is None)} disabled")
    if impact is not None:
        print(f"Impact on dev (n={impact.n}, macro-F1 with every rule {impact.macro_f1:.3f}); delta = with - "
              "without: positive helps, negative hurts" + ("" if impact.complete else " [partial]"))
    disabled = 0
    for r in rs.rules:
        n = numbers[r.uid]
        if n is None:
            disabled += 1
        tag = f"{n:>3}." if n is not None else f" d{disabled}"
        state = "" if n is not None else "  [disabled]"
        line = f"{tag} {r.uid:<5} {r.label:<14} {r.text}{state}"
        imp = by_uid.get(r.uid)
        if imp is not None:
            line += f"\n       impact {imp.delta:+.3f} macro-F1, {len(imp.flips)} examples flip" + \
                ("  HURTS" if imp.hurts else "")
            if imp.flips:
                line += "\n       flips: " + ", ".join(f"{f['example']} {f['with']}->{f['without']}"
                                                      for f in imp.flips[:8]) + (" ..." if len(imp.flips) > 8 else "")
        for note in notes.get(r.uid, []):
            line += f"\n       conflict: {note}"
        print(line)


def cmd_rules(args: argparse.Namespace) -> int:
    """List the working version's rules (with --impact: what each is worth on dev), or edit them: every edit is
    a new version made by the same core edit commands as the window's undo stack."""
    from ..core.impact import rule_impact, stored_impact
    from ..core.project import Project
    from ..core.rule_edits import label_mismatches, save_version
    from ..core.working import require_working_rule_set

    if args.action is None:
        if args.impact:
            def work(project: Any, student: Any, settings: Any, progress: ConsoleProgress) -> int:
                rs_id = require_working_rule_set(project, args.rule_set)
                report = rule_impact(project, student, rs_id, settings=settings, progress=progress)
                progress.close()
                _print_rules(project, rs_id, report, args.json)
                return EXIT_OK
            return _with_student(args, work)
        with Project.open(args.project, read_only=True) as project:
            rs_id = require_working_rule_set(project, args.rule_set)
            _print_rules(project, rs_id, stored_impact(project, rs_id), args.json)
        return EXIT_OK
    with Project.open(args.project) as project:
        parent_id = require_working_rule_set(project, args.rule_set)
        parent = project.rule_set(parent_id)
        edit = _rule_edit(args, parent.rules, parent.labels)
        rules, _ = edit.apply(parent.rules)
        new_id = save_version(project, parent_id, rules, f"pld rules: {edit.describe()}")
        print(f"v{new_id} (from v{parent_id}): {edit.describe()}; v{new_id} is now the working version.")
        for uid, said, label in label_mismatches(rules, parent.labels):
            print(f"warning: {uid}'s text says {said}, its label is {label} (fix: pld rules {args.project} "
                  f"fix-label {uid}, or fix-text {uid})", file=sys.stderr)
    if not args.no_model_conflicts:
        _recompute_conflicts(args, new_id)
    return EXIT_OK


def _recompute_conflicts(args: argparse.Namespace, rs_id: int) -> None:
    """Similarity and co-firing conflicts of the edited rules, with the embedder (as the window does in the
    background); a failure here leaves the version saved with its carried-over conflicts."""
    from ..backends.factory import DefaultBackends
    from ..core.progress import SilentProgress
    from ..core.project import Project
    from ..core.rule_edits import recompute_conflicts
    from ..core.settings import load_settings
    backends = DefaultBackends()
    try:
        with Project.open(args.project) as project:
            settings = load_settings(project)
            added = recompute_conflicts(project, backends.embedder(settings), rs_id, settings, SilentProgress())
        if added:
            print(f"{added} similarity or co-firing conflict(s) found for the edited rule(s).", file=sys.stderr)
    finally:
        backends.close()


def cmd_versions(args: argparse.Namespace) -> int:
    from ..core.project import Project
    from ..core.scoring import version_history
    with Project.open(args.project, read_only=True) as project:
        history = version_history(project)
    if args.json:
        print(json.dumps(history.to_json(), indent=2))
        return EXIT_OK
    if not history.rows:
        print("No rule-set versions yet: run phases 1-2 (pld run) first.")
        return EXIT_OK

    def score(s: Any, delta: float | None) -> str:
        if s is None:
            return "-"
        return f"{s.macro_f1:.3f}" + (f" ({delta:+.3f})" if delta is not None else "")

    print(f"{'ver':>4} {'parent':>6}  {'dev F1 (vs parent)':<19} {'test F1 (vs parent)':<20} reason")
    for r in history.rows:
        marks = ("W" if r.is_working else " ") + ("P" if r.is_pipeline_choice else " ")
        print(f"{marks}{r.rule_set_id:>3} {r.parent_id if r.parent_id else '-':>6}  "
              f"{score(r.dev, r.dev_delta_vs_parent):<19} {score(r.test, r.test_delta_vs_parent):<20} "
              f"{r.origin}: {r.reason}")
    for split, base in history.baselines.items():
        print(f"  baselines on {split}: " + ", ".join(f"{k} {s.macro_f1:.3f} (n={s.n})" for k, s in base.items()))
    print(f"W = working version (v{history.working_rule_set}), P = pipeline's choice (v{history.pipeline_choice}); "
          f"versions scored on test: {history.test_use_count}")
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    from ..core.diff import diff_versions
    from ..core.project import Project
    with Project.open(args.project, read_only=True) as project:
        d = diff_versions(project, args.a, args.b)
    print(json.dumps(d.to_json(), indent=2) if args.json else d.to_text())
    return EXIT_OK


def _add_loop_parsers(sub: Any, run_options: Any) -> None:
    ru = sub.add_parser("rules", help="list the working version's rules (numbered as in the prompt) or edit them")
    ru.add_argument("project")
    ru.add_argument("action", nargs="?", choices=["set", "disable", "enable", "move", "add", "delete",
                                                  "fix-label", "fix-text"],
                    help="an edit (each makes a new version); none: list the rules")
    ru.add_argument("number", nargs="?", help="the rule: its number in the prompt, its uid (R3), or d1, d2... "
                                              "for disabled rules")
    ru.add_argument("--text", help="the rule's new text (set, add)")
    ru.add_argument("--label", help="the rule's label (set, add)")
    ru.add_argument("--to", type=int, help="move: the rule's new number in the prompt")
    ru.add_argument("--at", type=int, help="add: the new rule's number in the prompt (default: last)")
    ru.add_argument("--rule-set", type=int, help="the version to list or edit (default: the working version)")
    ru.add_argument("--impact", action="store_true",
                    help="score the version on dev without each enabled rule: the change in macro-F1 and the "
                         "examples that flip (runs the student; cached)")
    ru.add_argument("--no-model-conflicts", action="store_true",
                    help="after an edit, skip the embedder's similarity and co-firing check of the edited rule")
    ru.add_argument("--json", action="store_true")
    run_options(ru)
    ru.set_defaults(func=cmd_rules)

    v = sub.add_parser("versions", help="every rule-set version: parent, reason, dev and test scores")
    v.add_argument("project")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_versions)

    df = sub.add_parser("diff", help="rules added, removed, changed and moved between two versions")
    df.add_argument("project")
    df.add_argument("a", type=int)
    df.add_argument("b", type=int)
    df.add_argument("--json", action="store_true")
    df.set_defaults(func=cmd_diff)
