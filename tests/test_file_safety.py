"""Issue 13 (part B): a hot journal or a lock is never damage, one writer per project, options checked before any
work, an unreachable teacher said at once, SIGTERM as SIGINT, and messages instead of tracebacks.

Every CLI check runs the real `pld` in a subprocess; the teacher is the real google-genai client against the fake
server (tests/fake_gemini.py); concurrency is two real processes.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pld_desktop.core.domain import Rule
from pld_desktop.core.project import Project, ProjectInUse
from pld_desktop.core.prompts import PromptRule, build_rules_prompt, sha256_text
from pld_desktop.core.run_lock import RunLock, holder_of, lock_path
from pld_desktop.core.settings import RunSettings, load_settings
from pld_desktop.core.settings_check import settings_problems
from pld_desktop.core.storage import file_checks
from pld_desktop.resources import DEMO_MEANINGS, DEMO_TASK

from . import crash_harness as ch
from . import fake_gemini as fg
from . import rawdb
from .fake_gemini import FakeGemini
from .helpers import CliResult, pld_in_process


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------
@pytest.fixture
def server() -> Iterator[FakeGemini]:
    with FakeGemini(expected_key=ch.PLANTED_KEY) as fake:
        ch.DeterministicTeacher(fake, delay_s=2.0)  # phase 1 lasts ~40 s: the other commands run meanwhile
        yield fake


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _project(folder: Path, base_url: str, *, rules: bool = False, per_label: int = 6, **overrides: Any) -> Path:
    path = ch.make_project(folder / "p.pld", ch.tiny_csv(folder / "t.csv", per_label=per_label),
                           ch.gemini_settings(base_url, **overrides))
    if rules:
        with Project.open(path) as project:
            labels = project.labels()
            rule_list = [Rule(uid=f"H{i}", text=f"If the message is about {label}", label=label, enabled=True)
                         for i, label in enumerate(labels)]
            prompt = build_rules_prompt(DEMO_TASK, labels, [PromptRule(r.text, r.label) for r in rule_list],
                                        DEMO_MEANINGS)
            rs_id = project.add_rule_set(parent_id=None, reason="test", origin="synthesis", round=None,
                                         task=DEMO_TASK, labels=list(labels), meanings=dict(DEMO_MEANINGS),
                                         rules=rule_list, prompt_text=prompt, prompt_sha256=sha256_text(prompt))
            project.set_setting("synthesis_rule_set_id", rs_id)
    return path


def _no_traceback(r: subprocess.CompletedProcess[str] | CliResult) -> None:
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr, r.stderr[-3000:]


def _child(code: str, *args: str) -> subprocess.Popen[str]:
    """A Python child running `code` (in this worktree) that prints "ready" once it holds what it holds."""
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ch.REPO, env=ch.pld_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc


# A writer killed in the middle of a big transaction: with a tiny page cache SQLite spills changed pages into
# the file itself before COMMIT, so after SIGKILL the file is inconsistent until its hot journal is rolled back.
SPILLING_WRITER = """
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("PRAGMA cache_size = 4")
    conn.execute("BEGIN IMMEDIATE")
    for i in range(3000):
        conn.execute("INSERT INTO settings (key, value) VALUES (?, ?)", (f"junk{i}", '"' + "x" * 1500 + '"'))
    conn.execute("DELETE FROM examples WHERE id % 2 = 0")
    print("ready", flush=True)
    time.sleep(600)
"""


# ---------------------------------------------------------------------------
# 2, 3: a hot journal and a lock are not damage
# ---------------------------------------------------------------------------
def test_a_writer_killed_with_a_hot_journal_leaves_a_project_that_opens(tmp_path: Path) -> None:
    path = _project(tmp_path, "http://127.0.0.1:9/", rules=True)
    before = path.read_bytes()
    n_examples = ch.read_ro(path, "SELECT COUNT(*) FROM examples")
    writer = _child(SPILLING_WRITER, str(path))
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    journal = path.with_name(path.name + "-journal")
    assert journal.exists() and journal.stat().st_size > 0
    assert path.read_bytes() != before, "the transaction did not spill into the file; the test proves nothing"
    # What the old check did, and why it called the file damaged: a read-only connection cannot roll back.
    ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        ro.execute("PRAGMA quick_check").fetchone()
    ro.close()

    r = ch.run_pld("status", str(path), timeout=120)
    _no_traceback(r)
    assert r.returncode == 0 and "damaged" not in r.stderr, r.stderr[-2000:]
    r = ch.run_pld("export", str(path), "--out", str(tmp_path / "out"), timeout=120)
    _no_traceback(r)
    assert r.returncode == 0, r.stderr[-2000:]
    assert {".json", ".md", ".txt"} <= {p.suffix for p in (tmp_path / "out").iterdir()}
    assert ch.integrity(path) == "ok"
    assert not journal.exists()
    assert ch.read_ro(path, "SELECT COUNT(*) FROM settings WHERE key LIKE 'junk%'") == [(0,)]
    assert ch.read_ro(path, "SELECT COUNT(*) FROM examples") == n_examples  # the killed transaction is undone


def test_a_busy_project_is_waited_for_not_called_damaged(tmp_path: Path) -> None:
    path = _project(tmp_path, "http://127.0.0.1:9/")
    holder = _child("""
        import sqlite3, sys, time
        conn = sqlite3.connect(sys.argv[1], isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        print("ready", flush=True)
        time.sleep(9)  # past Python's default 5 s busy wait (after pld's start-up), within BUSY_TIMEOUT_S (30 s)
        conn.execute("COMMIT")
    """, str(path))
    r = ch.run_pld("status", str(path), timeout=120)
    holder.wait(timeout=30)
    _no_traceback(r)
    assert r.returncode == 0 and "damaged" not in r.stderr, r.stderr[-2000:]


def test_a_project_locked_past_the_timeout_names_the_run_holding_it(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = _project(tmp_path, "http://127.0.0.1:9/")
    holder = _child("""
        import sqlite3, sys, time
        from pld_desktop.core.run_lock import RunLock
        lock = RunLock(sys.argv[1], "run").acquire()
        conn = sqlite3.connect(sys.argv[1], isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        print("ready", flush=True)
        time.sleep(600)
    """, str(path))
    try:
        monkeypatch.setattr(file_checks, "BUSY_TIMEOUT_S", 0.2)
        with pytest.raises(ProjectInUse, match=rf"in use by another run \(pid {holder.pid}"):
            Project.open(path, read_only=True)
        assert holder_of(path)["pid"] == holder.pid  # type: ignore[index]
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert holder_of(path) is None  # the kernel dropped the dead holder's lock: a stale file is no holder
    with Project.open(path, read_only=True) as project:
        assert project.has_dataset()


def test_the_integrity_verdict_is_reached_once_per_file_version(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = _project(tmp_path, "http://127.0.0.1:9/")
    statements: list[str] = []
    real_connect = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = real_connect(*args, **kwargs)
        conn.set_trace_callback(statements.append)
        return conn
    monkeypatch.setattr(sqlite3, "connect", traced)
    file_checks._checked_ok.clear()
    for _ in range(3):
        Project.open(path, read_only=True).close()
    assert sum("quick_check" in s for s in statements) == 1
    with Project.open(path) as project:  # a write makes a new version of the file: judged again
        project.set_setting("touched", 1)
    Project.open(path, read_only=True).close()
    assert sum("quick_check" in s for s in statements) == 2  # the read-write open reused the verdict


# ---------------------------------------------------------------------------
# 4, 8: one writer per project; SIGTERM as SIGINT; a dead run's phase is "interrupted"
# ---------------------------------------------------------------------------
def test_two_runs_and_an_init_force_on_one_project(tmp_path: Path, server: FakeGemini) -> None:
    path = _project(tmp_path, server.base_url, per_label=10)
    csv_path = tmp_path / "t.csv"
    first = subprocess.Popen(ch.pld_command("run", str(path), "--phase", "1", "--yes", "--quiet"), cwd=ch.REPO,
                             env=ch.pld_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert ch.wait_for_phase(path, first, 1, timeout_s=300) is not None, first.stderr.read()  # type: ignore[union-attr]
        second = ch.run_pld("run", str(path), "--phase", "1", "--yes", timeout=120)
        _no_traceback(second)
        assert second.returncode == 3, second.stderr[-2000:]
        assert f"in use by another run (pid {first.pid}" in second.stderr
        init = ch.run_pld("init", str(path), "--csv", str(csv_path), "--text", "message", "--label", "label",
                          "--force", timeout=120)
        _no_traceback(init)
        assert init.returncode == 3 and f"in use by another run (pid {first.pid}" in init.stderr, init.stderr
        status = ch.run_pld("status", str(path), timeout=120)
        assert status.returncode == 0 and "interrupted" not in status.stdout, status.stdout  # it really runs
        first.send_signal(signal.SIGTERM)  # a service manager's stop: like Ctrl-C, clean and resumable
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    assert ch.phase_states(path) == {1: "cancelled"}
    assert not lock_path(path).exists()

    # A run killed outright leaves its lock file and a phase marked "running": both are seen as stale.
    killed = subprocess.Popen(ch.pld_command("run", str(path), "--phase", "1", "--yes", "--quiet"), cwd=ch.REPO,
                              env=ch.pld_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    assert ch.wait_for_phase(path, killed, 1, timeout_s=300) is not None
    killed.kill()
    killed.wait()
    assert lock_path(path).exists() and ch.phase_states(path) == {1: "running"}
    status = ch.run_pld("status", str(path), timeout=120)
    assert status.returncode == 0 and "interrupted, resumable" in status.stdout, status.stdout
    ch.DeterministicTeacher(server)  # the resumed run has nothing to overlap with: no need for slow replies
    resumed = ch.run_pld("run", str(path), "--phase", "1", "--yes", "--quiet", timeout=600)
    _no_traceback(resumed)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert ch.phase_states(path) == {1: "done"}
    assert ch.integrity(path) == "ok"


def test_the_window_paths_refuse_a_project_in_use(tmp_path: Path, qtbot: Any) -> None:
    from pld_desktop.core.dataset import ColumnMapping, SplitSettings, load_dataset
    from pld_desktop.core.new_project import create_project
    from pld_desktop.ui.tasks import PipelineTask, QtProgress

    from .fakes import FakeBackends

    path = _project(tmp_path, "http://127.0.0.1:9/")
    holder = _child("""
        import sys, time
        from pld_desktop.core.run_lock import RunLock
        lock = RunLock(sys.argv[1], "run").acquire()
        print("ready", flush=True)
        time.sleep(600)
    """, str(path))
    try:
        task = PipelineTask(path, [1], backends_factory=FakeBackends)
        outcome = [task(QtProgress())]  # the task's body, here on the test thread
        task.release()
        assert outcome and outcome[0][0] == "failed" and f"in use by another run (pid {holder.pid}" in outcome[0][1]
        dataset = load_dataset(tmp_path / "t.csv", ColumnMapping(("message",), "label", id_column="id"),
                               SplitSettings())
        before = path.read_bytes()
        with pytest.raises(ProjectInUse, match=rf"pid {holder.pid}"):
            create_project(path, dataset, source_name="t.csv", overwrite=True)
        assert path.read_bytes() == before
    finally:
        holder.kill()
        holder.wait(timeout=30)
    with Project.open(path, read_only=True) as project:
        assert not project.phase_states()  # nothing ran


def test_a_run_lock_taken_twice_in_one_process_nests(tmp_path: Path) -> None:
    # The CLI takes the lock before asking anything, then run_pipeline takes it again: it never refuses itself.
    target = tmp_path / "x.pld"
    with RunLock(target, "run"):
        with RunLock(target, "run"):
            assert holder_of(target)["pid"] == os.getpid()  # type: ignore[index]
        assert lock_path(target).exists()
    assert not lock_path(target).exists() and holder_of(target) is None
    outer, inner = RunLock(target, "run").acquire(), RunLock(target, "run").acquire()
    outer.release()  # released out of order: the lock is held until the last holder lets go
    assert holder_of(target) is not None
    inner.release()
    assert holder_of(target) is None and not lock_path(target).exists()
    # Another thread of this process (the window's import dialog while the window runs a phase) is refused.
    import threading
    refused: list[BaseException] = []
    with RunLock(target, "gui"):
        worker = threading.Thread(target=lambda: _try_lock(target, refused))
        worker.start()
        worker.join()
    assert len(refused) == 1 and isinstance(refused[0], ProjectInUse), refused


def _try_lock(target: Path, refused: list[BaseException]) -> None:
    try:
        RunLock(target, "init").acquire().release()
    except ProjectInUse as exc:
        refused.append(exc)


# ---------------------------------------------------------------------------
# 5: options are validated before any work and never stick
# ---------------------------------------------------------------------------
BAD_OPTIONS = [
    (("--student", "/nonexistent.gguf"), "model file not found"),
    (("--n-ctx", "-1"), "--n-ctx"),
    (("--max-test", "-1"), "--max-test"),
    (("--sample-size", "-5"), "--sample-size"),
    (("--max-iterations", "-1"), "--max-iterations"),
    (("--teacher-gguf", str(Path(__file__))), "not a GGUF"),
]


@pytest.mark.parametrize("options,said", BAD_OPTIONS, ids=[o[0][0] for o in BAD_OPTIONS])
def test_bad_run_options_fail_at_once_and_are_not_saved(options: tuple[str, ...], said: str, tmp_path: Path) -> None:
    port = _closed_port()
    path = _project(tmp_path, f"http://127.0.0.1:{port}/", teacher="local" if "teacher" in options[0] else "gemini")
    with Project.open(path, read_only=True) as project:
        stored = project.get_setting("run_settings")
    r = ch.run_pld("run", str(path), "--yes", *options, timeout=120)
    _no_traceback(r)
    assert r.returncode == 2, r.stderr[-2000:]
    assert said in r.stderr, r.stderr
    with Project.open(path, read_only=True) as project:
        assert project.get_setting("run_settings") == stored
        assert rawdb.query(project, "SELECT COUNT(*) AS n FROM runs")[0]["n"] == 0


def test_a_stuck_bad_setting_is_refused_and_bundled_brings_back_the_embedded_models(tmp_path: Path) -> None:
    path = _project(tmp_path, "http://127.0.0.1:9/", teacher="local", teacher_gguf="/gone/teacher.gguf",
                    student_gguf="/gone/student.gguf")
    r = ch.run_pld("run", str(path), "--phase", "4", timeout=120)
    _no_traceback(r)
    assert r.returncode == 2 and "/gone/student.gguf" in r.stderr and "/gone/teacher.gguf" in r.stderr, r.stderr
    # Phase 2 without micro-rules stops after the settings are saved and before any model loads.
    r = ch.run_pld("run", str(path), "--phase", "2", "--student", "bundled", "--teacher", "bundled", timeout=120)
    _no_traceback(r)
    assert r.returncode == 2 and "needs micro-rules" in r.stderr, r.stderr
    with Project.open(path, read_only=True) as project:
        settings = load_settings(project)
    assert settings.student_gguf is None and settings.teacher == "local" and settings.teacher_gguf is None
    assert settings_problems(settings) == []


def test_one_validator_covers_every_number() -> None:
    for field, bad in [("student_n_ctx", -1), ("loop_max_iterations", -1), ("loop_sample_size", 0),
                       ("max_test_examples", -1), ("teacher_concurrency", 0), ("student_top_logprobs", 0),
                       ("student_threads", 0), ("price_in_per_million", -1.0), ("dbscan_eps", 0.0)]:
        problems = settings_problems(RunSettings(**{field: bad}))
        assert len(problems) == 1, (field, problems)
    assert settings_problems(RunSettings()) == []


# ---------------------------------------------------------------------------
# 6: an unreachable teacher is said at once; a phase whose items all failed is a failure
# ---------------------------------------------------------------------------
def test_a_closed_port_teacher_fails_within_seconds_with_the_cause(tmp_path: Path) -> None:
    port = _closed_port()
    path = _project(tmp_path, f"http://127.0.0.1:{port}/")
    r = ch.run_pld("run", str(path), "--yes", timeout=120)
    _no_traceback(r)
    assert r.returncode == 1, r.stderr[-2000:]
    assert f"127.0.0.1:{port}" in r.stderr and "refused" in r.stderr, r.stderr
    assert "needs micro-rules" not in r.stderr and "Finished" not in r.stderr
    assert ch.read_ro(path, "SELECT COUNT(*) FROM teacher_calls") == [(0,)]  # no item was tried
    assert ch.phase_states(path) == {1: "failed"}


def test_a_phase_whose_every_item_failed_is_a_failure(tmp_path: Path) -> None:
    with FakeGemini(expected_key=ch.PLANTED_KEY) as fake:
        fake.always(fg.bad_request("fake: this request is refused"))
        path = _project(tmp_path, fake.base_url, teacher_max_attempts=1)
        r = ch.run_pld("run", str(path), "--phase", "1", "--yes", "--quiet", timeout=300)
    _no_traceback(r)
    assert r.returncode == 1, r.stderr[-2000:]
    assert "items failed" in r.stderr and "this request is refused" in r.stderr, r.stderr[-2000:]
    assert "Finished" not in r.stderr
    assert ch.phase_states(path) == {1: "failed"}


# ---------------------------------------------------------------------------
# 9: messages, not tracebacks
# ---------------------------------------------------------------------------
def test_export_onto_an_existing_file_says_so(tmp_path: Path) -> None:
    path = _project(tmp_path, "http://127.0.0.1:9/", rules=True)
    target = tmp_path / "taken.txt"
    target.write_text("keep me")
    r = ch.run_pld("export", str(path), "--out", str(target), timeout=120)
    _no_traceback(r)
    assert r.returncode == 2 and "is a file" in r.stderr, r.stderr
    assert target.read_text() == "keep me"


def test_status_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    path = _project(tmp_path, "http://127.0.0.1:9/")
    command = " ".join(f"'{c}'" for c in ch.pld_command("status", str(path)))
    r = subprocess.run(["bash", "-c", f"set -o pipefail; {command} | true"], check=False, capture_output=True,
                       text=True,
                       cwd=ch.REPO, env=ch.pld_env(), timeout=120)
    _no_traceback(r)
    assert "BrokenPipe" not in r.stderr and r.stderr == "", r.stderr
    assert r.returncode in (0, 141)


@pytest.mark.parametrize("stored", ['"question"', '{"a": 1}', "[1, 2]", "not json"])
def test_stored_labels_that_are_not_a_list_are_reported(stored: str, tmp_path: Path) -> None:
    path = _project(tmp_path, "http://127.0.0.1:9/")
    conn = sqlite3.connect(path)
    conn.execute("UPDATE dataset SET labels_json = ?", [stored])
    conn.commit()
    conn.close()
    for args in (("status", str(path)), ("status", str(path), "--json")):
        r = pld_in_process(*args)  # the file's words, not the process, are under test
        _no_traceback(r)
        assert r.returncode == 2 and "labels" in r.stderr and "damaged" in r.stderr, (args, r.stderr)


def test_an_unexpected_error_is_a_message_not_a_traceback(tmp_path: Path) -> None:
    path = _project(tmp_path, "http://127.0.0.1:9/")
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO settings (key, value) VALUES ('last_evaluation', '{\"pld\": 99}')")
    conn.commit()
    conn.close()
    r = ch.run_pld("status", str(path), timeout=120)
    _no_traceback(r)
    assert r.returncode == 1 and r.stderr.startswith("error:") and "PLD_DEBUG=1" in r.stderr, r.stderr


def _small_tmpfs(mount: Path, size: str) -> None:
    mount.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=False,
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode(errors='replace').strip()}")


def _fill(folder: Path) -> None:
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def test_export_and_init_on_a_full_disk_say_so_and_leave_nothing(tmp_path: Path) -> None:
    path = _project(tmp_path, "http://127.0.0.1:9/", rules=True)
    big_csv = tmp_path / "big.csv"
    with open(big_csv, "w", encoding="utf-8") as fh:
        fh.write("id,message,label\n")
        fh.writelines(f"{i},message number {i} {'lorem ipsum ' * 20},{('a', 'b', 'c')[i % 3]}\n" for i in range(3000))
    mount = tmp_path / "small"
    _small_tmpfs(mount, "256k")
    try:
        _fill(mount)
        r = ch.run_pld("export", str(path), "--out", str(mount / "exports"), timeout=120)
        _no_traceback(r)
        assert r.returncode == 1 and "No space left" in r.stderr, r.stderr
        (mount / "filler").unlink()
        r = ch.run_pld("init", str(mount / "big.pld"), "--csv", str(big_csv), "--text", "message", "--label",
                       "label", "--id", "id", timeout=300)
        _no_traceback(r)
        # A full disk is the machine, not the input: exit 1 like the export above (README's exit codes).
        assert r.returncode == 1 and "full" in r.stderr and "cannot rollback" not in r.stderr, r.stderr
        assert sorted(p.name for p in mount.iterdir()) == ["exports"], list(mount.iterdir())
        assert list((mount / "exports").iterdir()) == []
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False, capture_output=True)


def test_the_window_shows_a_dead_runs_phase_as_interrupted(tmp_path: Path, qtbot: Any) -> None:
    from pld_desktop.ui.app import MainWindow

    from .fakes import FakeBackends

    path = _project(tmp_path, "http://127.0.0.1:9/")
    with Project.open(path) as project:  # what a SIGKILLed run leaves: phase 1 "running", nobody holding the lock
        project.set_phase(1, "running", 3, 14, "")
    window = MainWindow(backends_factory=FakeBackends)
    qtbot.addWidget(window)
    window.open_project(path)
    card = window.cards[1]
    assert "interrupted, resumable" in card.state.text()
    assert card.start_btn.text() == "Resume"
    holder = _child("""
        import sys, time
        from pld_desktop.core.run_lock import RunLock
        lock = RunLock(sys.argv[1], "run").acquire()
        print("ready", flush=True)
        time.sleep(600)
    """, str(path))
    try:  # a live run elsewhere (the CLI) really is running
        window._refresh()
        assert "running" in card.state.text() and "interrupted" not in card.state.text()
    finally:
        holder.kill()
        holder.wait(timeout=30)
