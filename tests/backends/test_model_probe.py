"""backends/model_probe.py and `pld models probe`: the real bundled student timed on a project's current rules."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pld_desktop.backends.bundled import ModelFileError, bundled_student_path
from pld_desktop.backends.model_probe import probe_model
from pld_desktop.core.progress import SilentProgress
from pld_desktop.core.project import Project
from tests.gguf_files import write_tiny_gguf

REPO_ROOT = Path(__file__).resolve().parents[2]
@pytest.mark.slow
def test_probe_times_the_bundled_student_on_the_current_rules(project_with_rules: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "pld_desktop.cli", "models", "probe", str(bundled_student_path()),
                          "--project", str(project_with_rules), "--n", "3", "--json", "--quiet"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    with Project.open(project_with_rules, read_only=True) as project:
        chosen = project.rule_set(project.get_setting("chosen_rule_set_id"))
        dev = project.examples(split="dev")[:3]
    assert result["prompt"] == f"version {chosen.id}"
    assert result["n_examples"] == 3 and len(result["predictions"]) == 3
    assert [gold for gold, _ in result["predictions"]] == [e.label for e in dev]
    assert all(pred in ("complaint", "fraud_report", "question") for _, pred in result["predictions"])
    assert result["per_example_s"] > 0 and result["first_s"] > 0 and result["load_s"] > 0
    assert result["memory"]["n_ctx"] == 1024  # the project's student context size
    assert result["memory"]["kv_cache"] == 1024 * result["model"]["kv_bytes_per_token"]
    assert result["model"]["architecture"] == "gemma3"


def test_probe_refuses_what_cannot_run(tmp_path: Path) -> None:
    cut = write_tiny_gguf(tmp_path / "t.gguf", weight_elements=50_000)
    data = cut.read_bytes()
    cut.write_bytes(data[:-500])
    with pytest.raises(ModelFileError, match="cannot be probed"):
        probe_model(cut, SilentProgress())
