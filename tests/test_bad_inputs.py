"""Every malformed input in tests/fixtures/bad_csv (plus a few made at test time) through the real `pld init`.

The commands run in this process (`pld_in_process`: the CLI's own main, ~2 s less each than a new interpreter);
test_a_real_process_says_the_same holds that a `pld` process answers the same, and the FIFO case runs in one.

Nothing lost, nobody in: a bad input must be refused with exit code 2, a message that says what is wrong and
no traceback, and must leave no project file behind (nor replace an existing one). Awkward but valid inputs
(expect "ok") must import, and the project must open.

cases.json holds one object per case: file, text_columns, label_column, expect (a case-insensitive substring of
the error message, or "ok"), note; optionally name (the test id; default the file's stem), id_column, args
(extra `pld init` arguments), xfail (a known bug: the reason; the case is a strict xfail), info (fields that
dataset_info() must have, for ok cases) and texts (texts that must be stored exactly, for ok cases).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pld_desktop.core.dataset import ColumnMapping, load_dataset
from pld_desktop.core.project import Project

from .helpers import CliResult, pld_in_process

FIXTURES = Path(__file__).parent / "fixtures" / "bad_csv"
CASES: list[dict[str, Any]] = json.loads((FIXTURES / "cases.json").read_text(encoding="utf-8"))
REPO = Path(__file__).resolve().parents[1]

# name -> (expected ok?, handled as expected?) for every case that ran; read by the summary test at the end.
OUTCOMES: dict[str, tuple[bool, bool]] = {}


def _name(case: dict[str, Any]) -> str:
    return case.get("name") or case["file"].rsplit(".", 1)[0]


def _param(case: dict[str, Any]) -> Any:
    marks = [pytest.mark.xfail(reason=case["xfail"], strict=True)] if case.get("xfail") else []
    return pytest.param(case, id=_name(case), marks=marks)


Result = CliResult | subprocess.CompletedProcess[str]
pld = pld_in_process


def pld_process(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pld_desktop.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)


def init_args(project: Path, csv: Path | str, text: list[str], label: str, id_column: str | None = None,
              extra: list[str] | None = None) -> list[str]:
    args = ["init", str(project), "--csv", str(csv), "--text", *text, "--label", label]
    if id_column:
        args += ["--id", id_column]
    return args + list(extra or [])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def refusal_problems(r: Result, expect: str, project: Path) -> list[str]:
    """What is wrong with how `pld init` refused a bad input (empty when it was refused cleanly)."""
    problems = []
    if r.returncode != 2:
        problems.append(f"exit code {r.returncode}, expected 2")
    if expect.lower() not in r.stderr.lower():
        problems.append(f"message lacks {expect!r}")
    if "Traceback" in r.stdout or "Traceback" in r.stderr:
        problems.append("traceback shown")
    left = sorted(p.name for p in project.parent.iterdir()) if project.parent.exists() else []
    if left:
        problems.append(f"left behind: {left}")
    return problems


def check_refused(name: str, r: Result, expect: str, project: Path) -> None:
    problems = refusal_problems(r, expect, project)
    OUTCOMES[name] = (False, not problems)
    assert not problems, f"{name}: {'; '.join(problems)}\nstdout: {r.stdout}\nstderr: {r.stderr}"


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_manifest_case(case: dict[str, Any], tmp_path: Path) -> None:
    name = _name(case)
    out = tmp_path / "out"  # holds nothing but the project, so anything left behind shows up
    out.mkdir()
    project = out / "p.pld"
    r = pld(*init_args(project, FIXTURES / case["file"], case["text_columns"], case["label_column"],
                       case.get("id_column"), case.get("args")))
    if case["expect"] != "ok":
        check_refused(name, r, case["expect"], project)
        assert not project.with_name("p.pld.creating").exists()
        return

    OUTCOMES[name] = (True, False)
    assert r.returncode == 0, f"{name}: exit {r.returncode}\nstderr: {r.stderr}"
    assert "Traceback" not in r.stdout + r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["p.pld"]
    with Project.open(project, read_only=True) as opened:
        assert opened.has_dataset()
        info = opened.dataset_info()
        assert info is not None
        for key, value in case.get("info", {}).items():
            assert info[key] == value, f"{name}: dataset_info[{key!r}] is {info[key]!r}, expected {value!r}"
        stored = {e.text for e in opened.examples()}
        assert len(stored) == info["n_rows"]
        for text in case.get("texts", []):
            assert text in stored, f"{name}: {text!r} was not stored verbatim; stored: {sorted(stored)}"
    OUTCOMES[name] = (True, True)


# ---------------------------------------------------------------------------------------------------------------
# Inputs made at test time (too big to commit, or not files at all)
# ---------------------------------------------------------------------------------------------------------------

GOOD_CSV = "text,label\n" + "".join(f"the parcel {i} arrived broken,complaint\n" for i in range(4)) + \
    "".join(f"how do I reset my pin number {i},question\n" for i in range(4))


def _ten_mb_cell(d: Path) -> Path:
    p = d / "ten_mb_cell.csv"
    p.write_text('text,label\n"' + "x" * 10_000_000 + '",complaint\n' + GOOD_CSV.split("\n", 1)[1], encoding="utf-8")
    return p


def _cell_over_limit(d: Path) -> Path:
    p = d / "cell_over_limit.csv"
    p.write_text("text,label\n" + "y" * 100_001 + ",complaint\n" + GOOD_CSV.split("\n", 1)[1], encoding="utf-8")
    return p


def _directory(d: Path) -> Path:
    p = d / "folder.csv"
    p.mkdir()
    return p


def _missing(d: Path) -> Path:
    return d / "no_such_file.csv"


def _unreadable(d: Path) -> Path:
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        pytest.skip("running as root: root reads files whatever their permissions")
    if sys.platform == "win32":
        pytest.skip("chmod cannot make a file unreadable on Windows")
    p = d / "unreadable.csv"
    p.write_text(GOOD_CSV, encoding="utf-8")
    p.chmod(0)
    return p


GENERATED: list[tuple[str, Callable[[Path], Path], str]] = [
    ("ten_mb_single_cell", _ten_mb_cell, "longer than"),
    ("cell_over_100k_chars", _cell_over_limit, "the limit is 100,000"),
    ("directory_path", _directory, "is a folder"),
    ("missing_file", _missing, "does not exist"),
    ("no_read_permission", _unreadable, "permission"),
]


@pytest.mark.parametrize(("name", "make", "expect"), GENERATED, ids=[g[0] for g in GENERATED])
def test_generated_bad_input(name: str, make: Callable[[Path], Path], expect: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    csv = make(src)
    out = tmp_path / "out"
    out.mkdir()
    project = out / "p.pld"
    try:
        r = pld(*init_args(project, csv, ["text"], "label"))
    finally:
        if csv.exists() and not csv.is_dir():
            csv.chmod(0o600)  # let tmp_path be cleaned up
    check_refused(name, r, expect, project)


def test_project_in_a_missing_folder(tmp_path: Path) -> None:
    csv = tmp_path / "good.csv"
    csv.write_text(GOOD_CSV, encoding="utf-8")
    project = tmp_path / "out" / "nested" / "p.pld"
    r = pld(*init_args(project, csv, ["text"], "label"))
    check_refused("project_in_missing_folder", r, "does not exist", project)


def test_project_path_is_a_folder_with_force(tmp_path: Path) -> None:
    csv = tmp_path / "good.csv"
    csv.write_text(GOOD_CSV, encoding="utf-8")
    folder = tmp_path / "p.pld"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine", encoding="utf-8")
    r = pld(*init_args(folder, csv, ["text"], "label", extra=["--force"]))
    ok = (r.returncode == 2 and "folder" in r.stderr.lower() and "Traceback" not in r.stdout + r.stderr
          and (folder / "keep.txt").read_text(encoding="utf-8") == "mine")
    OUTCOMES["project_path_is_folder_with_force"] = (False, ok)
    assert ok, f"exit {r.returncode}\nstderr: {r.stderr}"


def test_200k_rows_import(tmp_path: Path) -> None:
    """A big valid file imports (through load_dataset directly, to keep the suite fast; no timing asserted)."""
    OUTCOMES["200k_rows_valid"] = (True, False)
    csv = tmp_path / "big.csv"
    labels = ("billing", "delivery", "other")
    with open(csv, "w", encoding="utf-8", newline="") as fh:
        fh.write("id,text,label\n")
        fh.writelines(f"{i},message number {i} about an order,{labels[i % 3]}\n" for i in range(200_000))
    dataset = load_dataset(csv, ColumnMapping(("text",), "label", id_column="id"))
    assert len(dataset.rows) == 200_000
    assert dataset.labels == list(labels)
    counts = dataset.split_counts()
    assert sum(counts.values()) == 200_000 and all(n > 0 for n in counts.values())
    OUTCOMES["200k_rows_valid"] = (True, True)


# ---------------------------------------------------------------------------------------------------------------
# An existing project must survive a failed `pld init` byte for byte, with or without --force
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture
def existing_project(tmp_path: Path) -> Path:
    csv = tmp_path / "good.csv"
    csv.write_text(GOOD_CSV, encoding="utf-8")
    project = tmp_path / "out" / "p.pld"
    project.parent.mkdir()
    r = pld(*init_args(project, csv, ["text"], "label", extra=["--task", "Sort messages."]))
    assert r.returncode == 0, r.stderr
    return project


BAD_FOR_EXISTING = [
    ("bad_csv", "ragged_rows.csv", []),
    ("not_a_csv", "xlsx_like.csv", []),
    ("bad_mapping", "no_label_column.csv", []),
    ("ratios_all_zero", "bad_ratios.csv", ["--ratios", "0/0/0"]),  # a traceback today, but before any write
]


@pytest.mark.parametrize("force", [False, True], ids=["no_force", "force"])
@pytest.mark.parametrize(("what", "file", "extra"), BAD_FOR_EXISTING, ids=[b[0] for b in BAD_FOR_EXISTING])
def test_existing_project_is_untouched(existing_project: Path, what: str, file: str, extra: list[str],
                                       force: bool) -> None:
    before = sha256(existing_project)
    mtime = existing_project.stat().st_mtime_ns
    args = init_args(existing_project, FIXTURES / file, ["text"], "label" if what != "bad_mapping" else "category",
                     extra=extra + (["--force"] if force else []))
    r = pld(*args)
    assert r.returncode != 0
    assert sha256(existing_project) == before
    assert existing_project.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in existing_project.parent.iterdir()) == ["p.pld"]
    with Project.open(existing_project, read_only=True) as project:
        assert project.dataset_info()["n_rows"] == 8


def test_existing_project_without_force_is_refused_even_with_a_good_csv(existing_project: Path) -> None:
    before = sha256(existing_project)
    csv = existing_project.parent.parent / "good.csv"
    r = pld(*init_args(existing_project, csv, ["text"], "label"))
    assert r.returncode == 2 and "already exists" in r.stderr and "Traceback" not in r.stderr
    assert sha256(existing_project) == before


def test_force_never_overwrites_a_file_that_is_not_a_project(tmp_path: Path) -> None:
    csv = tmp_path / "good.csv"
    csv.write_text(GOOD_CSV, encoding="utf-8")
    before = csv.read_bytes()
    r = pld(*init_args(csv, csv, ["text"], "label", extra=["--force"]))
    assert r.returncode == 2 and "not a PLD project" in r.stderr and "Traceback" not in r.stderr
    assert csv.read_bytes() == before


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    r = pld_process(*init_args(tmp_path / "p.pld", fifo, ["text"], "label"))
    assert r.returncode == 2 and "not a regular file" in r.stderr


@pytest.mark.parametrize("case", [c for c in CASES if _name(c) in ("ragged_rows", "crlf_ok")], ids=_name)
def test_a_real_process_says_the_same(case: dict[str, Any], tmp_path: Path) -> None:
    """A `pld init` process exits and speaks as the in-process call the other cases use (one refusal, one import)."""
    results = []
    for how, run in (("process", pld_process), ("in_process", pld)):
        out = tmp_path / how
        out.mkdir()
        r = run(*init_args(out / "p.pld", FIXTURES / case["file"], case["text_columns"], case["label_column"],
                           case.get("id_column"), case.get("args")))
        results.append((r.returncode, r.stdout.replace(str(out), "OUT"), r.stderr.replace(str(out), "OUT"),
                        sorted(p.name for p in out.iterdir())))
    assert results[0] == results[1]
    assert results[0][0] == (0 if case["expect"] == "ok" else 2), results[0]


# ---------------------------------------------------------------------------------------------------------------
# Summary (keep this test last in the module)
# ---------------------------------------------------------------------------------------------------------------

def test_zz_summary(capsys: pytest.CaptureFixture[str]) -> None:
    known_bugs = {_name(c) for c in CASES if c.get("xfail")}
    bad = {n: clean for n, (ok, clean) in OUTCOMES.items() if not ok}
    valid = {n: accepted for n, (ok, accepted) in OUTCOMES.items() if ok}
    line = (f"bad inputs tried: {len(bad)}, cleanly refused: {sum(bad.values())} "
            f"(known bugs: {len(known_bugs & set(bad))}); "
            f"awkward but valid inputs tried: {len(valid)}, accepted: {sum(valid.values())}")
    with capsys.disabled():
        print("\n" + line)
    unexpected = sorted(n for n, clean in {**bad, **valid}.items() if not clean and n not in known_bugs)
    assert not unexpected, f"not handled as expected: {unexpected}"

