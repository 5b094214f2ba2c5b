"""Nobody in: teacher faults at a seeded 30% rate, broken student models and unusable project files.

Every teacher failure is retried or recorded with its reason and counted for the user; a broken model or project
file gets a clear refusal (exit code 2, no traceback) before any work starts, and the project file stays
byte-identical.
"""

from __future__ import annotations

import csv
import hashlib
import os
import random
import shutil
import sqlite3
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pld_desktop.backends.gemini_teacher import GeminiTeacher
from pld_desktop.core.dataset import ColumnMapping, SplitSettings, load_dataset
from pld_desktop.core.pipeline import run_pipeline
from pld_desktop.core.progress import SilentProgress
from pld_desktop.core.project import Project
from pld_desktop.core.settings import RunSettings
from pld_desktop.resources import DEMO_TASK, demo_csv

from . import crash_harness as ch
from . import rawdb
from .fake_gemini import FakeGemini, quota_exhausted
from .fakes import FakeBackends
from .helpers import pld_in_process

KEY = ch.PLANTED_KEY


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def many_items_csv(path: Path, n_rows: int) -> Path:
    """`n_rows` distinct rows made from the demo messages (a numbered suffix keeps every text unique)."""
    with open(demo_csv(), newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for i in range(n_rows):
            r = dict(rows[i % len(rows)])
            r["id"] = f"m{i}"
            r["message"] = f"{r['message']} (ref {i})"
            w.writerow(r)
    return path


# ---------------------------------------------------------------------------
# Teacher faults
# ---------------------------------------------------------------------------
def test_phase1_on_200_items_survives_30_percent_faults(tmp_path: Path) -> None:
    ds = load_dataset(many_items_csv(tmp_path / "many.csv", 334), ColumnMapping(("message",), "label", id_column="id"),
                      SplitSettings())
    project = Project.create(tmp_path / "f.pld")
    project.store_dataset(ds, "many.csv")
    train = project.examples(split="train")
    assert len(train) >= 200
    with FakeGemini(expected_key=KEY) as server:
        faults = ch.FaultyTeacher(server, rate=0.3, seed=5, timeout_delay_s=2.5)
        teacher = GeminiTeacher("gemini-2.5-flash", api_key=KEY, base_url=server.base_url, max_concurrency=8,
                                timeout_s=1.0, retry_attempts=6, retry_initial_s=0.01, retry_max_s=0.05)
        backends = FakeBackends()
        backends.t = teacher  # type: ignore[assignment]
        report = run_pipeline(project, RunSettings(teacher="gemini", task=DEMO_TASK), backends, SilentProgress(),
                              phases=[1])
        teacher.close()
    assert report.status == "done", report.message
    assert set(faults.injected) == set(ch.FAULTS) | {"timeout"}, faults.injected  # every kind was exercised
    ex1 = report.phases[1]
    rules = project.micro_rule_example_ids()
    failed = {r["item_key"]: r["reason"] for r in rawdb.query(project, "SELECT item_key, reason FROM failed_items")}
    # Every item is accounted for: a micro-rule, or a recorded failure with its reason.
    for ex in train:
        assert ex.id in rules or f"example:{ex.ext_id}" in failed, ex.ext_id
    assert all(reason.strip() for reason in failed.values())
    assert len(rules) + len(failed) == len(train)
    bad = rawdb.query(project, "SELECT status, error FROM teacher_calls WHERE status != 'ok'")
    assert bad and all(r["error"] for r in bad)
    reasons = " ".join(r["error"] for r in bad).lower()
    for said in ("schema", "invalid json", "blocked", "stopped the reply", "empty reply"):
        assert said in reasons, said
    # Told to the user: the phase message and the report count the failures.
    message = project.phase_states()[1]["message"]
    assert f"{len(failed)} failed" in message and ex1.failed == len(failed)
    assert KEY not in reasons and KEY not in message
    ch.record_figures("faults", injected=faults.total_injected, by_kind=faults.injected,
                      items=len(train), survived=len(rules), recorded_failures=len(failed), lost=0)
    project.close()


def _small_gemini_project(tmp_path: Path, server: FakeGemini, per_label: int = 6) -> Path:
    return ch.make_project(tmp_path / "q.pld", ch.tiny_csv(tmp_path / "q.csv", per_label=per_label),
                           ch.gemini_settings(server.base_url, teacher_concurrency=2))


def test_cli_reports_failed_items_and_quota_stops_then_resumes(tmp_path: Path) -> None:
    with FakeGemini(expected_key=KEY) as server:
        path = _small_gemini_project(tmp_path, server, per_label=8)
        n_train = len(Project.open(path, read_only=True).examples(split="train"))
        answered = {"n": 0}

        def responder(body: Any) -> Any:
            answered["n"] += 1
            if answered["n"] == 2:
                return ch.FAULTS["safety_prompt"](body)  # one item is given up: must be counted
            return ch.teacher_reply(body) if answered["n"] <= 6 else quota_exhausted(retry_after=0.01)
        server.responder = responder
        r = ch.run_pld("run", str(path), "--phase", "1", "--yes", env=ch.pld_env())
        assert r.returncode == 4, r.stderr[-2000:]
        assert "quota" in r.stderr.lower() and "Traceback" not in r.stderr and KEY not in r.stderr + r.stdout
        assert ch.integrity(path) == "ok"
        with Project.open(path, read_only=True) as p:
            assert p.phase_states()[1]["state"] == "paused"
            done_before = len(p.micro_rules())
        assert done_before >= 4
        assert "blocked" in r.stderr  # the given-up item was reported as it happened
        before = ch.snapshot(path)
        mark = len(server.requests)
        ch.DeterministicTeacher(server)
        r = ch.run_pld("run", str(path), "--phase", "1", "--yes", env=ch.pld_env())
        assert r.returncode == 0, r.stderr[-2000:]
        assert ch.resent_completed_requests(server, mark, before) == 0
        # The status the CLI prints counts the attempts that failed and the items given up (over all runs).
        with Project.open(path, read_only=True) as p:
            given_up = rawdb.query(p, "SELECT COUNT(*) AS n FROM failed_items")[0]["n"]
            bad_attempts = rawdb.query(p, "SELECT COUNT(*) AS n FROM teacher_calls WHERE status != 'ok'")[0]["n"]
            # Issue 12: a plain rerun does not resend the given-up item (zero calls, stable figures) ...
            assert len(p.micro_rules()) == n_train - 1
        assert given_up >= 1
        assert f"({bad_attempts} invalid or failed attempts; {given_up} items given up after retries)" in r.stdout
        assert "--retry-failed" in r.stdout
        # ... `--retry-failed` does.
        r = ch.run_pld("run", str(path), "--phase", "1", "--yes", "--retry-failed", env=ch.pld_env())
        assert r.returncode == 0, r.stderr[-2000:]
        with Project.open(path, read_only=True) as p:
            assert len(p.micro_rules()) == n_train
    ch.record_figures("faults", injected=1 + max(0, answered["n"] - 6), by_kind={"quota_cli": 1}, items=n_train,
                      survived=n_train, recorded_failures=0, lost=0)


# ---------------------------------------------------------------------------
# Student model faults: a clear error before any work starts
# ---------------------------------------------------------------------------
def _gguf_string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def huge_tensor_gguf(path: Path) -> Path:
    """A GGUF v3 whose header claims one 2^40-element F32 tensor (4 TiB) and holds no data."""
    kv = _gguf_string("general.architecture") + struct.pack("<I", 8) + _gguf_string("llama")
    tensor = _gguf_string("token_embd.weight") + struct.pack("<I", 2) + struct.pack("<QQ", 1 << 20, 1 << 20) \
        + struct.pack("<I", 0) + struct.pack("<Q", 0)
    data = b"GGUF" + struct.pack("<I", 3) + struct.pack("<QQ", 1, 1) + kv + tensor
    path.write_bytes(data + b"\0" * (-len(data) % 32))
    return path


@pytest.fixture(scope="module")
def rules_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose phases 1-2 ran (with test doubles), so `pld eval` only needs the student."""
    folder = tmp_path_factory.mktemp("student")
    path = ch.make_project(folder / "r.pld", ch.tiny_csv(folder / "r.csv", per_label=8),
                           RunSettings(task=DEMO_TASK, student_n_ctx=2048))
    with Project.open(path) as p:
        assert run_pipeline(p, RunSettings(task=DEMO_TASK), FakeBackends(), SilentProgress(),
                            phases=[1, 2]).status == "done"
    return path


def _bad_student_files(folder: Path) -> dict[str, Path]:
    from pld_desktop.backends.bundled import bundled_student_path
    real = bundled_student_path()
    truncated = folder / "truncated.gguf"
    with open(real, "rb") as src, open(truncated, "wb") as dst:
        dst.write(src.read(real.stat().st_size // 3))
    not_gguf = folder / "weights.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 this is a zip archive, not a model" + os.urandom(4096))
    header_only = folder / "header.gguf"
    header_only.write_bytes(b"GGUF")
    return {"missing": folder / "nope.gguf", "truncated": truncated, "not_gguf": not_gguf,
            "header_only": header_only, "huge_tensors": huge_tensor_gguf(folder / "huge.gguf"),
            "folder": folder}


@pytest.mark.slow
def test_broken_student_models_are_refused_before_any_work(tmp_path: Path, rules_project: Path) -> None:
    expect = {"missing": "not found", "truncated": "", "not_gguf": "not a gguf", "header_only": "truncated",
              "huge_tensors": "", "folder": "not a file"}
    refused = 0
    for name, model in _bad_student_files(tmp_path).items():
        path = tmp_path / f"{name}.pld"
        shutil.copy(rules_project, path)
        with Project.open(path, read_only=True) as p:
            n_eval = len(p.evaluations())
        r = ch.run_pld("eval", str(path), "--student", str(model), timeout=300)
        assert r.returncode == 2, (name, r.returncode, r.stderr[-2000:])
        assert "Traceback" not in r.stderr, (name, r.stderr[-2000:])
        message = r.stderr.lower()
        assert message.startswith("error:") or "\nerror:" in message, (name, r.stderr[-500:])
        assert expect[name] in message, (name, r.stderr[-500:])
        with Project.open(path, read_only=True) as p:
            assert len(p.evaluations()) == n_eval and not rawdb.query(p, "SELECT 1 FROM predictions")
        refused += 1
    ch.record_figures("bad_inputs", kind="student_model", tried=len(expect), refused=refused)


@pytest.mark.slow
@pytest.mark.parametrize("n_ctx", ["64", "256"])  # below the minimum, and a context the rule prompt outgrows
def test_a_prompt_longer_than_the_context_is_refused_before_scoring(tmp_path: Path, rules_project: Path,
                                                                     n_ctx: str) -> None:
    path = tmp_path / "ctx.pld"
    shutil.copy(rules_project, path)
    with Project.open(path, read_only=True) as p:  # phase 3 already scored on dev; nothing may be added
        before = len(rawdb.query(p, "SELECT 1 FROM predictions"))
    r = ch.run_pld("eval", str(path), "--n-ctx", n_ctx, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    message = r.stderr.lower()
    # 64 is refused by the settings check (below the minimum), 256 by the fit check (in tokens).
    assert "Traceback" not in r.stderr and "context" in message and ("tokens" in message or "at least" in message)
    with Project.open(path, read_only=True) as p:
        assert len(rawdb.query(p, "SELECT 1 FROM predictions")) == before
    ch.record_figures("bad_inputs", kind="prompt_too_long", tried=1, refused=1)


def larger_than_memory_gguf(path: Path) -> Path:
    """A valid GGUF header in a sparse file twice the size of free memory (no disk blocks are used)."""
    from pld_desktop.backends.gguf_file import available_memory_bytes
    free = available_memory_bytes() or 2**34
    data = huge_tensor_gguf(path).read_bytes()
    with path.open("r+b") as f:
        f.write(data)
        f.truncate(2 * free)
    return path


@pytest.mark.slow
def test_a_model_larger_than_memory_says_so(tmp_path: Path, rules_project: Path) -> None:
    path = tmp_path / "mem.pld"
    shutil.copy(rules_project, path)
    r = ch.run_pld("eval", str(path), "--student", str(larger_than_memory_gguf(tmp_path / "huge.gguf")),
                   timeout=300)
    assert r.returncode == 2 and "memory" in r.stderr.lower() and "Traceback" not in r.stderr, r.stderr[-1000:]
    with Project.open(path, read_only=True) as p:
        assert not rawdb.query(p, "SELECT 1 FROM predictions")


# ---------------------------------------------------------------------------
# Project file faults: clear refusal, file byte-identical
# ---------------------------------------------------------------------------
def _as_nobody() -> None:
    os.setgid(65534)
    os.setuid(65534)


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A folder every user can enter (pytest's tmp_path is private to its owner)."""
    folder = Path(tempfile.mkdtemp(prefix="pld-faults-"))
    folder.chmod(0o777)
    yield folder
    for p in folder.rglob("*"):
        p.chmod(0o777)
    shutil.rmtree(folder, ignore_errors=True)


def _base_project(folder: Path) -> Path:
    return ch.make_project(folder / "base.pld", ch.tiny_csv(folder / "b.csv", per_label=6),
                           RunSettings(task=DEMO_TASK, teacher="gemini", teacher_base_url="http://127.0.0.1:9/"))


def _truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _newer_schema(p: Path) -> None:
    conn = sqlite3.connect(p)
    conn.execute("INSERT INTO _sqlite_migrations (migration_set, name, applied_at) "
                 "VALUES ('pld_desktop', 'm099_from_the_future', '2030-01-01')")
    conn.commit()
    conn.close()


def _corrupt_pages(p: Path) -> None:
    data = bytearray(p.read_bytes())
    for offset in range(4096 + 100, len(data), 4096):  # scribble over every page after the header page
        data[offset:offset + 64] = random.Random(offset).randbytes(64)
    p.write_bytes(bytes(data))


def _not_pld(p: Path) -> None:
    p.write_bytes(b"id,message,label\n1,hello,question\n")


FILE_FAULTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (_truncate, ""),
    "corrupt_pages": (_corrupt_pages, "damaged"),
    "newer_schema": (_newer_schema, "newer version"),
    "not_pld": (_not_pld, "not a pld project"),
}


@pytest.mark.parametrize("fault", sorted(FILE_FAULTS))
def test_unusable_project_file_is_refused_untouched(fault: str, tmp_path: Path) -> None:
    path = _base_project(tmp_path)
    make, said = FILE_FAULTS[fault]
    make(path)
    before = digest(path)
    for args in (("run", str(path), "--phase", "1", "--yes"), ("eval", str(path)), ("status", str(path)),
                 ("export", str(path), "--out", str(tmp_path / "x"))):
        r = pld_in_process(*args)  # the refusal's words and code, not the process, are under test
        assert r.returncode == 2, (fault, args, r.stderr[-1000:])
        assert "Traceback" not in r.stderr and r.stderr.startswith("error:"), r.stderr[-1000:]
        assert said in r.stderr.lower(), r.stderr
        assert digest(path) == before, f"{fault}: {args[0]} changed the file"
    assert not (tmp_path / "x").exists()
    ch.record_figures("bad_inputs", kind=f"project_{fault}", tried=4, refused=4)


def _mount_tmpfs(mount: Path, size: str) -> None:
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode(errors='replace').strip()}")


def test_read_only_file_and_folder_are_refused_untouched(tmp_path: Path) -> None:
    """Permission bits where they bind (not root); for root, a read-only mount (root ignores permission bits)."""
    source = _base_project(tmp_path)
    refused = 0
    if os.geteuid() != 0:
        folder = tmp_path / "perm"
        folder.mkdir()
        path = folder / "p.pld"
        cases = {"read-only": (0o444, 0o755), "not writable": (0o644, 0o555)}
        for name, (file_mode, dir_mode) in cases.items():
            shutil.copy(source, path)
            path.chmod(file_mode)
            folder.chmod(dir_mode)
            before = digest(path)
            r = ch.run_pld("run", str(path), "--phase", "1", "--yes")
            folder.chmod(0o755)
            path.chmod(0o644)
            assert r.returncode == 2 and name in r.stderr and "Traceback" not in r.stderr, r.stderr[-1000:]
            assert digest(path) == before
            refused += 1
    else:
        mount = tmp_path / "ro"
        mount.mkdir()
        _mount_tmpfs(mount, "8m")
        try:
            path = mount / "p.pld"
            shutil.copy(source, path)
            subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
            before = digest(path)
            r = ch.run_pld("run", str(path), "--phase", "1", "--yes")
            assert r.returncode == 2, r.stderr[-1000:]
            assert "read-only" in r.stderr and "Traceback" not in r.stderr, r.stderr[-1000:]
            assert digest(path) == before and sorted(p.name for p in mount.iterdir()) == ["p.pld"]
            refused += 1
        finally:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)
    ch.record_figures("bad_inputs", kind="project_permissions", tried=refused, refused=refused)


def test_full_disk_refuses_cleanly_and_keeps_the_file(tmp_path: Path) -> None:
    """A small tmpfs filled to the last block (needs root and mount; skipped elsewhere)."""
    source = _base_project(tmp_path)
    mount = tmp_path / "small"
    mount.mkdir()
    _mount_tmpfs(mount, f"{source.stat().st_size + (256 << 10)}")
    try:
        path = mount / "full.pld"
        shutil.copy(source, path)
        filler = mount / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        _full_disk_checks(path, filler)
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _full_disk_checks(path: Path, filler: Path) -> None:
    before = digest(path)
    r = ch.run_pld("run", str(path), "--phase", "1", "--yes", timeout=120)
    assert r.returncode == 1, r.stderr[-1000:]  # a full disk is exit 1 for every command (README)
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "full" in r.stderr.lower(), r.stderr[-1000:]
    assert digest(path) == before
    filler.unlink()
    assert ch.integrity(path) == "ok"
    ch.record_figures("bad_inputs", kind="project_full_disk", tried=1, refused=1)
