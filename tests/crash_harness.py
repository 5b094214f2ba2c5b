"""Crash and fault harness: a deterministic Gemini teacher on 127.0.0.1, `pld` subprocesses, kills, snapshots.

The teacher's replies depend only on the request content (the same answers as tests/fakes.FakeTeacher), so an
interrupted-and-resumed run must end with exactly the rule sets and metrics of an uninterrupted one.
Figures for bench/robustness.py are appended as JSON lines to the file named by PLD_ROBUSTNESS_REPORT.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pld_desktop.core.dataset import ColumnMapping, SplitSettings, load_dataset
from pld_desktop.core.project import Project
from pld_desktop.core.settings import RunSettings, save_settings
from pld_desktop.core.teacher_prompts import EXTRACTION_SYSTEM, MERGE_SYSTEM, RESOLUTION_SYSTEM, REVIEW_SYSTEM
from pld_desktop.resources import DEMO_TASK, demo_csv

from . import fake_gemini as fg
from .fakes import FakeTeacher

REPO = Path(__file__).resolve().parents[1]
# A distinctive planted key: long enough that any accidental copy is unmistakable.
PLANTED_KEY = "AIzaSyPLANTED-crash-7f3c9e1d5b2a4680ZZ"
KINDS_BY_SYSTEM = {EXTRACTION_SYSTEM: "extraction", MERGE_SYSTEM: "merge", REVIEW_SYSTEM: "review",
                   RESOLUTION_SYSTEM: "resolution"}
PHASES = (1, 2, 3, 4)


def crash_trials(default: int = 1) -> int:
    """Kill trials per phase: PLD_CRASH_TRIALS (the full robustness run uses 10)."""
    return max(1, int(os.environ.get("PLD_CRASH_TRIALS", default)))


def record_figures(section: str, **figures: Any) -> None:
    """Append figures for bench/robustness.py (a no-op unless PLD_ROBUSTNESS_REPORT names a file)."""
    target = os.environ.get("PLD_ROBUSTNESS_REPORT")
    if not target:
        return
    with open(target, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"section": section, **figures}) + "\n")


# ---------------------------------------------------------------------------
# The deterministic teacher
# ---------------------------------------------------------------------------
def request_texts(body: dict[str, Any] | None) -> tuple[str, str]:
    """(system text, user text) of a generateContent body."""
    body = body or {}
    system = "".join(p.get("text", "") for p in (body.get("systemInstruction") or {}).get("parts") or [])
    user = "".join(p.get("text", "") for c in body.get("contents") or [] for p in c.get("parts") or [])
    return system, user


def teacher_reply(body: dict[str, Any] | None) -> fg.FakeResponse:
    """A schema-valid reply that depends only on the request (the FakeTeacher's answers, over HTTP)."""
    system, user = request_texts(body)
    kind = KINDS_BY_SYSTEM.get(system)
    if kind is None:
        return fg.bad_request(f"fake teacher: unknown system instruction {system[:40]!r}")
    reply = FakeTeacher()._reply(SimpleNamespace(kind=kind, user=user), {})  # type: ignore[arg-type]
    return fg.success(json.dumps(reply), prompt_tokens=len(user) // 4 + 50, output_tokens=40)


class DeterministicTeacher:
    """Installs `teacher_reply` as the fake server's responder, with an optional delay per reply."""

    def __init__(self, server: fg.FakeGemini, delay_s: float = 0.0) -> None:
        self.server = server
        self.delay_s = delay_s
        server.responder = self

    def __call__(self, body: dict[str, Any] | None) -> fg.FakeResponse:
        response = teacher_reply(body)
        response.delay_s = self.delay_s
        return response


# Fault kinds, each a function of the request body returning the faulty response.
def _timeout_fault(delay_s: float) -> Callable[[Any], fg.FakeResponse]:
    def make(body: Any) -> fg.FakeResponse:
        response = teacher_reply(body)
        response.delay_s = delay_s  # answers only after the client has given up
        return response
    return make


def _schema_violation(body: Any) -> fg.FakeResponse:
    return fg.success(json.dumps({"reasoning": "no rule here", "label": "not-a-label"}))


FAULTS: dict[str, Callable[[Any], fg.FakeResponse]] = {
    "429_no_retry_after": lambda b: fg.quota_exhausted(),
    "429_retry_after": lambda b: fg.quota_exhausted(retry_after=0.01),
    "500": lambda b: fg.server_error(),
    "503": lambda b: fg.unavailable(),
    "truncated_json": lambda b: fg.truncated_json(),
    "invalid_json": lambda b: fg.invalid_json(),
    "schema_violation": _schema_violation,
    "empty_candidates": lambda b: fg.empty_candidates(),
    "safety_finish": lambda b: fg.candidate_blocked("SAFETY"),
    "safety_prompt": lambda b: fg.safety_blocked("SAFETY"),
}


class FaultyTeacher:
    """The deterministic teacher with seeded faults: each request gets a fault with probability `rate`.

    `injected` counts the faults by kind; thread-safe (the fake server answers on many threads).
    """

    def __init__(self, server: fg.FakeGemini, *, rate: float = 0.3, seed: int = 1234,
                 kinds: Sequence[str] = tuple(FAULTS), timeout_delay_s: float | None = None) -> None:
        self.server = server
        self.rate = rate
        self.rng = random.Random(seed)
        self.faults = {k: FAULTS[k] for k in kinds}
        if timeout_delay_s is not None:
            self.faults["timeout"] = _timeout_fault(timeout_delay_s)
        self.injected: dict[str, int] = {}
        self.answered = 0
        self._lock = threading.Lock()
        server.responder = self

    def __call__(self, body: dict[str, Any] | None) -> fg.FakeResponse:
        with self._lock:
            self.answered += 1
            kind = self.rng.choice(sorted(self.faults)) if self.rng.random() < self.rate else None
            if kind is not None:
                self.injected[kind] = self.injected.get(kind, 0) + 1
        return self.faults[kind](body) if kind is not None else teacher_reply(body)

    @property
    def total_injected(self) -> int:
        return sum(self.injected.values())


# ---------------------------------------------------------------------------
# Projects and the pld command
# ---------------------------------------------------------------------------
def tiny_csv(path: Path, per_label: int = 10, labels: Sequence[str] = ("complaint", "fraud_report", "question"),
             transform: Callable[[dict[str, str]], dict[str, str]] | None = None) -> Path:
    """A balanced slice of the bundled demo data (optionally with rows rewritten by `transform`)."""
    with open(demo_csv(), newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    picked: list[dict[str, str]] = []
    for label in labels:
        picked += [r for r in rows if r["label"] == label][:per_label]
    if transform is not None:
        picked = [transform(dict(r)) for r in picked]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(picked)
    return path


def gemini_settings(base_url: str, **overrides: Any) -> RunSettings:
    """Small, deterministic run settings: the Gemini teacher at `base_url`, one teacher call at a time (so
    micro-rules are stored in example order whether or not the run was interrupted), one closed-loop round."""
    values: dict[str, Any] = dict(task=DEMO_TASK, teacher="gemini", teacher_base_url=base_url,
                                  teacher_concurrency=1, loop_max_iterations=1, loop_sample_size=9,
                                  loop_max_failures=4, loop_max_successes=4, student_n_ctx=2048)
    values.update(overrides)
    return RunSettings(**values)


def make_project(path: Path, csv_path: Path, settings: RunSettings) -> Path:
    ds = load_dataset(csv_path, ColumnMapping(("message",), "label", id_column="id"), SplitSettings())

    def fill(project: Project) -> None:
        project.store_dataset(ds, csv_path.name)
        save_settings(project, settings)
    Project.build(path, fill)
    # Made on this machine by its user: the servers and model files it names are accepted, as typing them was.
    from pld_desktop.backends.trust import TrustStore, settings_in_use
    TrustStore().trust(settings_in_use(settings))
    return path


def pld_env(key: str | None = PLANTED_KEY, **extra: str) -> dict[str, str]:
    """The environment for a `pld` subprocess: offscreen Qt, offline hubs, the planted key (or none)."""
    env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
    env.update(QT_QPA_PLATFORM="offscreen", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    if key is not None:
        env["GEMINI_API_KEY"] = key
    env.update(extra)
    return env


def pld_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pld_desktop.cli", *args]


def run_pld(*args: str, env: dict[str, str] | None = None, timeout: float = 900,
            preexec_fn: Callable[[], None] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(pld_command(*args), capture_output=True, text=True, cwd=REPO, timeout=timeout,
                          env=env or pld_env(), stdin=subprocess.DEVNULL, preexec_fn=preexec_fn)


# ---------------------------------------------------------------------------
# Read-only views of a project that another process is writing
# ---------------------------------------------------------------------------
def _ro(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)


def read_ro(path: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]] | None:
    """Rows of `sql` on a read-only connection; None when the file is locked or not there yet."""
    try:
        conn = _ro(path)
    except sqlite3.Error:
        return None
    try:
        return list(conn.execute(sql, params))
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def phase_states(path: Path) -> dict[int, str] | None:
    rows = read_ro(path, "SELECT phase, state FROM phases")
    return None if rows is None else {int(p): s for p, s in rows}


@dataclass
class Snapshot:
    """What the project holds at one moment: completed teacher calls, micro-rules, predictions."""

    ok_calls: dict[str, tuple[str, str]] = field(default_factory=dict)  # request hash -> (system, user)
    micro_rules: dict[int, str] = field(default_factory=dict)            # example id -> rule
    predictions: dict[tuple[str, int], str] = field(default_factory=dict)  # (evaluation key, example) -> label
    rule_sets: dict[int, str] = field(default_factory=dict)              # id -> prompt sha256

    @property
    def items(self) -> int:
        return len(self.ok_calls) + len(self.micro_rules) + len(self.predictions) + len(self.rule_sets)

    def missing_from(self, later: Snapshot) -> int:
        """Items present here but absent (or changed) in `later`: the items a crash or resume lost."""
        lost = sum(1 for h in self.ok_calls if h not in later.ok_calls)
        lost += sum(1 for k, v in self.micro_rules.items() if later.micro_rules.get(k) != v)
        lost += sum(1 for k, v in self.predictions.items() if later.predictions.get(k) != v)
        lost += sum(1 for k, v in self.rule_sets.items() if later.rule_sets.get(k) != v)
        return lost


def snapshot(path: Path, *, attempts: int = 50) -> Snapshot:
    for _ in range(attempts):
        try:
            conn = _ro(path)
            try:
                snap = Snapshot()
                for h, req in conn.execute("SELECT request_hash, request_json FROM teacher_calls WHERE status='ok'"):
                    body = json.loads(req)
                    snap.ok_calls[h] = (body["system"], body["user"])
                snap.micro_rules = {e: r for e, r in conn.execute("SELECT example_id, rule FROM micro_rules")}
                snap.predictions = {(k, e): p for k, e, p in conn.execute(
                    "SELECT v.cache_key, p.example_id, p.predicted FROM predictions p "
                    "JOIN evaluations v ON v.id = p.evaluation_id")}
                snap.rule_sets = {i: s for i, s in conn.execute("SELECT id, prompt_sha256 FROM rule_sets")}
                return snap
            finally:
                conn.close()
        except sqlite3.OperationalError:  # the writer holds the lock for a moment
            time.sleep(0.05)
    raise AssertionError(f"could not read {path}")


def final_result(path: Path) -> dict[str, Any]:
    """What must not depend on interruptions: every rule-set prompt, the chosen one, and the test metrics."""
    with Project.open(path, read_only=True) as p:
        last = p.get_setting("last_evaluation") or {}
        metrics = {}
        for kind in ("pld", "zero_shot", "few_shot"):
            if kind in last:
                m = dict(p.evaluation(last[kind]).metrics or {})
                metrics[kind] = {k: v for k, v in m.items() if "latency" not in k}  # timings differ by nature
        chosen = p.get_setting("chosen_rule_set_id")
        return {
            "rule_set_prompts": [r.prompt_sha256 for r in p.rule_sets()],
            "chosen_prompt_sha256": p.rule_set(chosen).prompt_sha256 if chosen else None,
            "evaluated_prompt_sha256": p.rule_set(last["rule_set_id"]).prompt_sha256 if last else None,
            "micro_rules": [m["rule"] for m in p.micro_rules()],
            "metrics": metrics,
            "phases": {k: v["state"] for k, v in p.phase_states().items()},
        }


def integrity(path: Path) -> str:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# Watching and killing a running process
# ---------------------------------------------------------------------------
def wait_for_phase(path: Path, proc: subprocess.Popen, phase: int, timeout_s: float = 600) -> float | None:
    """Poll until `phase` is running; the monotonic time it was first seen, or None if the process ended."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        states = phase_states(path)
        if states and states.get(phase) == "running":
            return time.monotonic()
        time.sleep(0.03)
    return None


def phase_windows(path: Path, proc: subprocess.Popen, timeout_s: float = 900) -> dict[int, float]:
    """Watch a run to its end; how long each phase was seen running (seconds)."""
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        now = time.monotonic()
        for phase, state in (phase_states(path) or {}).items():
            if state == "running":
                first.setdefault(phase, now)
                last[phase] = now
        time.sleep(0.03)
    return {p: max(0.05, last[p] - first[p]) for p in first}


@dataclass
class KillTrial:
    phase: int
    seed: int
    delay_s: float
    killed_in_phase: int | None = None  # the phase that was running when the kill landed
    before: Snapshot | None = None      # read just before the kill
    after_kill: Snapshot | None = None
    integrity: str = ""
    request_mark: int = 0               # index into the server's request log at the kill


def kill_during_phase(proc: subprocess.Popen, path: Path, phase: int, window_s: float, seed: int,
                      server: fg.FakeGemini | None = None) -> KillTrial:
    """SIGKILL `proc` at a seeded random point inside `phase` (a fraction of its measured duration)."""
    rng = random.Random(seed)
    trial = KillTrial(phase, seed, rng.uniform(0.1, 0.8) * window_s)
    started = wait_for_phase(path, proc, phase)
    if started is None:
        raise AssertionError(f"phase {phase} never ran (exit code {proc.poll()})")
    time.sleep(trial.delay_s)
    trial.before = snapshot(path)
    states = phase_states(path) or {}
    trial.killed_in_phase = next((p for p, s in states.items() if s == "running"), None)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    if server is not None:
        trial.request_mark = len(server.requests)
    trial.integrity = integrity(path)
    trial.after_kill = snapshot(path)
    return trial


def resent_completed_requests(server: fg.FakeGemini, mark: int, completed: Snapshot) -> int:
    """How many requests after `mark` repeat a teacher call that was already completed (recorded ok)."""
    done = set(completed.ok_calls.values())
    return sum(1 for r in server.requests[mark:] if request_texts(r.body) in done)


def scan_for_secret(blob: bytes, secret: str) -> list[str]:
    """Every encoding of `secret` found in `blob`: plain, base64 (3 alignments), URL-encoded, UTF-16, hex."""
    import base64
    import urllib.parse
    raw = secret.encode()
    forms = {"plain": raw, "url": urllib.parse.quote(secret, safe="").encode(),
             "url_plus": urllib.parse.quote_plus(secret).encode(), "utf16le": secret.encode("utf-16-le"),
             "hex": raw.hex().encode(), "json_escaped": json.dumps(secret).encode()[1:-1]}
    for shift in range(3):
        # base64 of the key at any offset in a longer text: encode with 0-2 bytes of padding in front and
        # keep only the characters that do not depend on the neighbours.
        enc = base64.b64encode(b"\0" * shift + raw)
        start = (shift * 4 + 2) // 3 + 1
        forms[f"base64_{shift}"] = enc[start:start + 24]
        forms[f"base64url_{shift}"] = base64.urlsafe_b64encode(b"\0" * shift + raw)[start:start + 24]
    found = [name for name, form in forms.items() if form and form in blob]
    if raw.lower() in blob.lower():
        found.append("case_insensitive")
    return sorted(set(found))


def nap_until(predicate: Callable[[], bool], timeout_s: float, step_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return predicate()


try:  # a keyring backend that a `pld` subprocess can use (PYTHON_KEYRING_BACKEND=tests.crash_harness.FileKeyring)
    import keyring.backend

    class FileKeyring(keyring.backend.KeyringBackend):
        """A test keychain: one JSON file named by PLD_TEST_KEYRING_FILE (stands in for the OS keychain)."""

        priority = 1  # type: ignore[assignment]

        def _load(self) -> dict[str, str]:
            target = Path(os.environ["PLD_TEST_KEYRING_FILE"])
            return json.loads(target.read_text()) if target.exists() else {}

        def get_password(self, service: str, username: str) -> str | None:
            return self._load().get(f"{service}/{username}")

        def set_password(self, service: str, username: str, password: str) -> None:
            data = self._load()
            data[f"{service}/{username}"] = password
            Path(os.environ["PLD_TEST_KEYRING_FILE"]).write_text(json.dumps(data))

        def delete_password(self, service: str, username: str) -> None:
            data = self._load()
            data.pop(f"{service}/{username}", None)
            Path(os.environ["PLD_TEST_KEYRING_FILE"]).write_text(json.dumps(data))
except ImportError:  # pragma: no cover - keyring is a dependency of the app
    pass
