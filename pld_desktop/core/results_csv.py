"""Per-example results as a spreadsheet-safe CSV: id, text, gold label, and each prompt's prediction and confidence."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .export import write_atomic
from .project import Project
from .scoring import latest_scores
from .working import require_working_rule_set, working_rule_set

# Order of the prompts in the file; only those scored with the version on the same examples appear.
PROMPT_KINDS = ("pld", "zero_shot", "few_shot")
# A spreadsheet treats a cell starting with one of these as a formula (or strips/obeys the control character):
# OWASP "CSV injection". A leading apostrophe makes Excel, LibreOffice and Sheets show the text as typed.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(value: Any) -> Any:
    """`value` with a leading apostrophe when it is text a spreadsheet would run as a formula; numbers as is."""
    if isinstance(value, str) and value.startswith(FORMULA_TRIGGERS):
        return "'" + value
    return value


def working_evaluation_ids(project: Project, rule_set_id: int | None = None) -> tuple[int, dict[str, int]]:
    """(version, prompt kind -> evaluation id) for the results of `rule_set_id` (default: the working version):
    its newest test score with the baselines on the same examples, else its newest dev score."""
    if rule_set_id is None and working_rule_set(project) is None:
        raise ValueError("No per-example results yet: the project has no rule set; run phase 4 (evaluation) after "
                         "phases 1-3, or score a version with pld eval.")
    rs_id = require_working_rule_set(project, rule_set_id)
    for split in ("test", "dev"):
        scores = latest_scores(project, rs_id, split)
        if scores:
            return rs_id, {("pld" if p == "rules" else p): s.evaluation_id for p, s in scores.items()}
    raise ValueError(f"No per-example results for version {rs_id} yet: score it first (pld eval --split dev, "
                     f"or run phase 4 / pld eval --split test for the final check).")


def results_rows(project: Project, evaluation_ids: dict[str, int] | None = None, *,
                 rule_set_id: int | None = None) -> tuple[list[str], list[list[Any]]]:
    """Header and rows: one row per evaluated example, one predicted/confidence column pair per prompt, and a
    last column naming the rule-set version whose prompt made the `pld_` predictions.

    `evaluation_ids` maps a prompt kind to an evaluation id; by default the working version's newest scores.
    """
    if evaluation_ids is None:
        rule_set_id, evaluation_ids = working_evaluation_ids(project, rule_set_id)
    elif "pld" in evaluation_ids:
        rule_set_id = project.evaluation(evaluation_ids["pld"]).rule_set_id
    if not evaluation_ids:
        raise ValueError("No per-example results yet: run phase 4 (evaluation) first.")
    kinds = [k for k in PROMPT_KINDS if k in evaluation_ids] + sorted(set(evaluation_ids) - set(PROMPT_KINDS))
    predictions = {k: project.predictions(evaluation_ids[k]) for k in kinds}
    example_ids = sorted(set().union(*(set(p) for p in predictions.values())))
    examples = {e.id: e for e in project.examples(ids=example_ids)}
    header = ["id", "split", "text", "gold"]
    for kind in kinds:
        header += [f"{kind}_predicted", f"{kind}_confidence"]
    header.append("rule_set")
    rows: list[list[Any]] = []
    for example_id in example_ids:
        ex = examples[example_id]
        row: list[Any] = [ex.ext_id, ex.split, ex.text, ex.label]
        for kind in kinds:
            pred = predictions[kind].get(example_id)
            if pred is None:  # an evaluation that stopped early: say so rather than invent a value
                row += ["", ""]
            else:
                row += [pred["predicted"], f"{float(pred['probs'].get(pred['predicted'], 0.0)):.6f}"]
        row.append(f"v{rule_set_id}" if rule_set_id is not None else "")
        rows.append(row)
    return header, rows


def encode_csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> bytes:
    """UTF-8 with BOM (so Excel detects the encoding), CRLF line ends, every text cell formula-neutralised."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow([neutralise_cell(h) for h in header])
    for row in rows:
        writer.writerow([neutralise_cell(v) for v in row])
    return ("\ufeff" + buf.getvalue()).encode("utf-8")


def export_results_csv(project: Project, path: str | Path, evaluation_ids: dict[str, int] | None = None, *,
                       rule_set_id: int | None = None) -> Path:
    """Write the per-example results to `path` atomically (temp file beside it, then replace)."""
    path = Path(path)
    header, rows = results_rows(project, evaluation_ids, rule_set_id=rule_set_id)
    write_atomic(path, encode_csv(header, rows))
    return path
