"""bench.pipeline's ratios: issue 15's targets, computed from the two modes' figures."""

from __future__ import annotations

import os
from typing import Any

from bench.pipeline import ratio_rows


def _run(total_s: float, phase1_s: float, calls: int) -> dict[str, Any]:
    return {"total_s": total_s, "phases": {"1": {"seconds": phase1_s, "teacher_calls": calls}}}


def test_ratios_are_new_over_old_with_the_issues_targets() -> None:
    rows = ratio_rows({
        "demo-105": {"old": _run(230.0, 140.0, 64), "new": _run(106.0, 40.0, 63)},
        "sst2-20": {"old": _run(62.0, 20.0, 12), "new": _run(34.0, 10.0, 13)},
    })
    by_name = {row["name"]: row for row in rows}
    per_item = by_name["demo-105: phase-1 seconds per teacher item, new/old"]
    assert abs(per_item["ratio"] - (40.0 / 63) / (140.0 / 64)) < 1e-12
    assert per_item["target"] == 1 / 3 and per_item["met"] is True
    whole = by_name["demo-105: whole run, new/old"]
    assert abs(whole["ratio"] - 106.0 / 230.0) < 1e-12 and whole["target"] == 0.5 and whole["met"] is True
    # Phase 1's target holds on every dataset; the whole-run target only on the demo data.
    shared_p1 = by_name["sst2-20: phase-1 seconds per teacher item, new/old"]
    assert shared_p1["target"] == 1 / 3 and shared_p1["met"] is False
    shared_whole = by_name["sst2-20: whole run, new/old"]
    assert shared_whole["target"] is None and shared_whole["met"] is None


def test_a_missed_target_is_not_met_and_a_mode_missing_gives_no_row() -> None:
    rows = ratio_rows({"demo-30": {"old": _run(90.0, 40.0, 18), "new": _run(47.0, 16.0, 18)},
                       "demo-5": {"new": _run(10.0, 5.0, 3)}})
    assert [row["met"] for row in rows] == [False, False]  # 0.40 > 1/3 and 0.52 > 1/2
    assert all(row["name"].startswith("demo-30") for row in rows)


def test_the_teachers_f16_copy_is_made_once_before_the_runs_and_timed(tmp_path: Any, monkeypatch: Any) -> None:
    import argparse

    from bench import pipeline
    from pld_desktop.backends import unpacked_weights
    made: list[str | None] = []

    def fake(source: Any, sha: str) -> tuple[Any, str | None]:
        made.append(os.environ.get("PLD_CACHE_DIR"))
        return (tmp_path / "copy.f16.gguf", "Q4_1 weights") if "SmolLM2" in source.name else (source, None)

    monkeypatch.setattr(unpacked_weights, "batched_weights", fake)
    monkeypatch.delenv("PLD_CACHE_DIR", raising=False)
    one_time = pipeline.one_time_work(argparse.Namespace(teacher_gguf=None), tmp_path)
    assert one_time["teacher_f16_copy_s"] is not None and one_time["teacher_weights"] == "Q4_1 weights"
    assert made == [str(tmp_path / "one-time-cache")]           # in the runs' shared cache, not the user's
    assert "PLD_CACHE_DIR" not in os.environ
    from pld_desktop.backends.bundled import bundled_student_path
    other = pipeline.one_time_work(argparse.Namespace(teacher_gguf=str(bundled_student_path())), tmp_path)
    assert other["teacher_f16_copy_s"] is None and other["teacher_weights"] == "as in the file"
