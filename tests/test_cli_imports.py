"""The commands that never score or cluster do not import scikit-learn (nor torch or llama.cpp).

scikit-learn alone took ~1.8 s of a 3.6 s `pld init`; importing it where it is used halved every such command
and the window's start. One fresh interpreter runs the commands in turn and reports what each left imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("sklearn", "scipy", "torch", "sentence_transformers", "llama_cpp")

SCRIPT = """
import json, sys
HEAVY = json.loads(sys.argv[2])
from pld_desktop.cli import main
seen = {}
for name, argv in json.loads(sys.argv[1]):
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    seen[name] = [code, sorted(m for m in HEAVY if m in sys.modules)]
import pld_desktop.ui.app  # the window's modules, as `pld-desktop` imports them before showing anything
seen["window"] = [0, sorted(m for m in HEAVY if m in sys.modules)]
print(json.dumps(seen))
"""


def test_init_status_rules_and_the_window_import_no_heavy_library(tmp_path: Path) -> None:
    csv = tmp_path / "d.csv"
    csv.write_text("text,label\n" + "".join(f"row {i},{'ab'[i % 2]}\n" for i in range(12)), encoding="utf-8")
    project = str(tmp_path / "p.pld")
    commands = [
        ("argument error", ["init"]),
        ("init", ["init", project, "--csv", str(csv), "--text", "text", "--label", "label"]),
        ("status", ["status", project]),
        ("status --json", ["status", project, "--json"]),
        ("rules (none yet)", ["rules", project]),
        ("export (nothing yet)", ["export", project, "--out", str(tmp_path / "out"), "--format", "txt"]),
    ]
    r = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(commands), json.dumps(HEAVY)], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.strip().splitlines()[-1])
    assert seen["init"][0] == 0 and seen["status"][0] == 0, seen  # the commands really ran
    assert seen["argument error"][0] == 2 and seen["rules (none yet)"][0] == 2, seen
    assert {name: mods for name, (_, mods) in seen.items() if mods} == {}


def test_metrics_and_clustering_still_work_once_imported() -> None:
    import numpy as np

    from pld_desktop.core.clustering import cluster_rules
    from pld_desktop.core.metrics import classification_metrics

    m = classification_metrics(["a", "b", "a"], ["a", "b", "b"], ["a", "b"])
    assert m["accuracy"] == 2 / 3 and m["confusion_matrix"] == [[1, 1], [0, 1]]
    rng = np.random.default_rng(0)
    vectors = np.vstack([np.array([1.0, 0.0, 0.0]) + rng.normal(0, 0.01, (8, 3)),
                         np.array([0.0, 1.0, 0.0]) + rng.normal(0, 0.01, (8, 3))])
    result = cluster_rules(vectors, eps=0.1, min_samples=3)
    assert result.labels.tolist() == [0] * 8 + [1] * 8, result
