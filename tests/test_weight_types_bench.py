"""bench.weight_types: copies of a model in other weight types, timed side by side (figures printed, not asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.slow
def test_it_times_the_file_and_each_copy_for_every_k(tmp_path: Path) -> None:
    from bench import weight_types
    out = tmp_path / "out.json"
    assert weight_types.main(["--types", "F16,Q8_0", "--k", "1,2", "--json", str(out)]) == 0
    result = json.loads(out.read_text(encoding="utf-8"))
    assert [r["weights"] for r in result["results"]] == ["Q4_1 (the file)", "F16", "Q8_0"]
    for r in result["results"]:
        assert set(r["decode_ms"]) == {"1", "2"} and all(v > 0 for v in r["decode_ms"].values())
        assert all(v > 0 for v in r["piece_ms_per_token"].values())
    assert [row["name"].split(":")[0] for row in result["ratios"]] == ["F16", "Q8_0"]
    assert all(row["ratio"] > 0 and row["target"] is None for row in result["ratios"])
