"""Nobody in: a planted API key (environment and keychain) appears in no byte the app writes or prints.

Runs the real `pld` command against the fake Gemini server with faults, including 401/403/400 replies and an
HTML page that echo the key, then scans the project file, the exports (txt/md/json and the results CSV), stdout,
stderr, status output and any log file for the key in plain, base64, URL-encoded, UTF-16, hex and JSON forms.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pld_desktop.core.pipeline import run_pipeline
from pld_desktop.core.progress import SilentProgress
from pld_desktop.core.project import Project
from pld_desktop.core.results_csv import export_results_csv
from pld_desktop.core.settings import RunSettings
from pld_desktop.resources import DEMO_TASK

from . import crash_harness as ch
from . import fake_gemini as fg
from . import rawdb
from .fakes import FakeBackends

KEY = "AIzaSyKEYSCAN-9d8c7b6a5f4e3d2c1b0aQQ"


def _echo(status: int, name: str) -> fg.FakeResponse:
    # A hostile or buggy proxy that repeats the caller's key in its error message.
    return fg.error(status, name, f"Key {KEY} (key={KEY}) was rejected for this project.")


def _encoded_echoes(key: str) -> dict[str, str]:
    """The key as a hostile server might repeat it: encoded, re-cased, or cut short."""
    import base64
    raw = key.encode()
    return {"base64": base64.b64encode(raw).decode(), "base64_shifted": base64.b64encode(b"k:" + raw).decode(),
            "hex": raw.hex(), "hex_upper": raw.hex().upper(), "lower": key.lower(), "upper": key.upper(),
            "percent_bytes": "".join(f"%{b:02X}" for b in raw),
            "percent_bytes_lower": "".join(f"%{b:02x}" for b in raw),
            "minus_last": key[:-1], "minus_first": key[1:]}


ECHOING_FAULTS = [
    lambda b: _echo(401, "UNAUTHENTICATED"),
    lambda b: _echo(403, "PERMISSION_DENIED"),
    lambda b: _echo(400, "INVALID_ARGUMENT"),
    lambda b: fg.raw(502, f"<html><body>Bad gateway for x-goog-api-key: {KEY}</body></html>"),
    *[(lambda form: lambda b: fg.error(400, "INVALID_ARGUMENT", f"Unknown credential {form} for this project."))(f)
      for f in _encoded_echoes(KEY).values()],
]


def scan_all_forms(blob: bytes, key: str) -> list[str]:
    """`crash_harness.scan_for_secret` plus the forms above (byte-wise percent-encoding, hex in any case, the key
    minus its first or last character)."""
    found = set(ch.scan_for_secret(blob, key))
    low = blob.lower()
    for name, form in _encoded_echoes(key).items():
        if form.encode().lower() in low:
            found.add(name)
    return sorted(found)


class EchoingTeacher:
    """Deterministic replies, with the key-echoing faults above on a seeded share of requests."""

    def __init__(self, server: fg.FakeGemini, rate: float = 0.3) -> None:
        import random
        self.rng = random.Random(11)
        self.rate = rate
        self.injected = 0
        server.responder = self

    def __call__(self, body: Any) -> fg.FakeResponse:
        if self.rng.random() < self.rate:
            self.injected += 1
            return self.rng.choice(ECHOING_FAULTS)(body)
        return ch.teacher_reply(body)


def _scan_all(paths: list[Path], texts: dict[str, str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in paths:
        hits = scan_all_forms(path.read_bytes(), KEY)
        if hits:
            found[str(path)] = hits
    for name, text in texts.items():
        hits = scan_all_forms(text.encode("utf-8", "surrogateescape"), KEY)
        if hits:
            found[name] = hits
    return found


def _recent_files(folder: Path, since: float) -> list[Path]:
    if not folder.exists():
        return []
    return [p for p in folder.rglob("*") if p.is_file() and p.stat().st_mtime >= since]


@pytest.mark.parametrize("source", ["environment", "keychain"])
def test_planted_key_appears_nowhere(source: str, tmp_path: Path) -> None:
    started = time.time() - 1
    outputs: dict[str, str] = {}
    keyring_file = tmp_path / "keychain.json"
    if source == "environment":
        env = ch.pld_env(KEY)
    else:
        env = ch.pld_env(None, PYTHON_KEYRING_BACKEND="tests.crash_harness.FileKeyring",
                         PLD_TEST_KEYRING_FILE=str(keyring_file))
        r = subprocess.run([sys.executable, "-c",
                            f"from pld_desktop.backends import secrets; secrets.set_api_key({KEY!r}); "
                            "print(secrets.api_key_source())"],
                           capture_output=True, text=True, env=env, cwd=ch.REPO, timeout=60)
        assert r.returncode == 0 and "OS keychain" in r.stdout, r.stderr
    env["PLD_CACHE_DIR"] = str(tmp_path / "cache")
    with fg.FakeGemini(expected_key=KEY) as server:
        path = ch.make_project(tmp_path / "s.pld", ch.tiny_csv(tmp_path / "s.csv", per_label=8),
                               ch.gemini_settings(server.base_url, teacher_concurrency=2))
        # 1. Every request echoes the key back in an error: the run fails, and says why without the key.
        server.responder = lambda body: _echo(401, "UNAUTHENTICATED")
        r = ch.run_pld("run", str(path), "--phase", "1", "--yes", env=env, timeout=300)
        outputs["401 run stdout"], outputs["401 run stderr"] = r.stdout, r.stderr
        assert "rejected" in r.stderr, r.stderr[-2000:]
        # 1b. Every request echoes the key in an encoded or partial form, one form after the other.
        forms = iter(ECHOING_FAULTS[4:] * 40)
        server.responder = lambda body: next(forms)(body)
        # --retry-failed: the items given up in step 1 are sent again only on request.
        r = ch.run_pld("run", str(path), "--phase", "1", "--yes", "--retry-failed", env=env, timeout=300)
        outputs["encoded echo run stdout"], outputs["encoded echo run stderr"] = r.stdout, r.stderr
        assert "Unknown credential" in r.stderr, r.stderr[-2000:]
        # 2. A run with a 30% share of key-echoing faults, then a clean rerun.
        faults = EchoingTeacher(server)
        r = ch.run_pld("run", str(path), "--phase", "1", "--yes", "--retry-failed", env=env, timeout=300)
        outputs["faulty run stdout"], outputs["faulty run stderr"] = r.stdout, r.stderr
        assert faults.injected > 0
        # 3. Ctrl-C twice: the uncaught-interrupt path.
        ch.DeterministicTeacher(server, delay_s=0.3)
        with Project.open(path) as p:  # forget phase 1's rules so there is work to interrupt
            rawdb.execute(p, "DELETE FROM micro_rules")
            rawdb.execute(p, "DELETE FROM teacher_calls WHERE status = 'ok'")
        proc = subprocess.Popen(ch.pld_command("run", str(path), "--phase", "1", "--yes", "--retry-failed"), env=env,
                                cwd=ch.REPO,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        ch.nap_until(lambda: (ch.read_ro(path, "SELECT COUNT(*) FROM micro_rules") or [(0,)])[0][0] > 0, 120)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.2)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        outputs["interrupted stdout"], outputs["interrupted stderr"] = out, err
        assert proc.returncode == 130, err[-2000:]
        ch.DeterministicTeacher(server)
        r = ch.run_pld("run", str(path), "--phase", "1", "--yes", "--retry-failed", env=env, timeout=300)
        outputs["clean run stdout"], outputs["clean run stderr"] = r.stdout, r.stderr
        assert r.returncode == 0, r.stderr[-2000:]
        sent = [q for q in server.requests if q.had_key]
        assert sent and all(q.key_matched for q in sent)  # the key really was used
    # 4. Phases 2-4 (test doubles, in process) so that there are exports and per-example results.
    with Project.open(path) as p:
        assert run_pipeline(p, RunSettings(task=DEMO_TASK, loop_max_iterations=1), FakeBackends(), SilentProgress(),
                            phases=[2, 3, 4]).status == "done"
        (tmp_path / "exports").mkdir()
        export_results_csv(p, tmp_path / "exports" / "results.csv")
    r = ch.run_pld("export", str(path), "--out", str(tmp_path / "exports"), env=env)
    outputs["export stdout"], outputs["export stderr"] = r.stdout, r.stderr
    assert r.returncode == 0, r.stderr
    for args in (("status", str(path)), ("status", str(path), "--json")):
        r = ch.run_pld(*args, env=env)
        outputs[" ".join(args[:1] + args[2:])] = r.stdout + r.stderr
    scanned = [path, *sorted((tmp_path / "exports").iterdir()), *_recent_files(tmp_path / "cache", started),
               *[p for p in tmp_path.rglob("*.log")]]
    assert {p.suffix for p in scanned} >= {".pld", ".txt", ".md", ".json", ".csv"}
    with Project.open(path, read_only=True) as p:
        errors = " ".join(r["error"] or "" for r in rawdb.query(p, "SELECT error FROM teacher_calls"))
        reasons = " ".join(r["reason"] for r in rawdb.query(p, "SELECT reason FROM failed_items"))
    outputs["recorded errors"], outputs["failure reasons"] = errors, reasons
    assert "rejected" in errors  # the echoing replies were recorded, with their reasons
    found = _scan_all(scanned, outputs)
    ch.record_figures("secrets", source=source, files_scanned=len(scanned), outputs_scanned=len(outputs),
                      bytes_scanned=sum(p.stat().st_size for p in scanned) + sum(len(t) for t in outputs.values()),
                      occurrences=sum(len(v) for v in found.values()))
    assert found == {}, f"the key leaked: {found}"


def test_scanner_finds_every_encoding() -> None:
    """The scan itself must be able to fail: each encoded form of the key is detected inside other text."""
    import base64
    import urllib.parse
    for prefix in (b"", b"x", b"xy"):
        assert ch.scan_for_secret(b"header " + base64.b64encode(prefix + KEY.encode() + b" tail"), KEY)
    assert ch.scan_for_secret(urllib.parse.quote(f"k={KEY}&x", safe="").encode(), KEY)
    assert ch.scan_for_secret(f"..{KEY}..".encode("utf-16-le"), KEY)
    assert ch.scan_for_secret(KEY.encode().hex().encode(), KEY)
    assert ch.scan_for_secret(KEY.upper().encode(), KEY) == ["case_insensitive"]
    assert ch.scan_for_secret(b"nothing to see", KEY) == []
    for name, form in _encoded_echoes(KEY).items():
        assert name in scan_all_forms(f"error: {form}.".encode(), KEY), name


def test_redaction_removes_every_encoded_and_partial_form() -> None:
    """The one redaction home covers what the hostile server above sends, inside other text."""
    from pld_desktop.backends.secrets import redact
    for name, form in _encoded_echoes(KEY).items():
        text = f'{{"error": {{"message": "Unknown credential {form} for this project."}}}}'
        cleaned = redact(text, [KEY])
        assert scan_all_forms(cleaned.encode(), KEY) == [], (name, cleaned)
        assert "Unknown credential" in cleaned and "for this project" in cleaned
    assert redact("HTTP 400: the model gemini-2.5-flash is not found.", [KEY]) == \
        "HTTP 400: the model gemini-2.5-flash is not found."


def test_a_reply_that_repeats_the_key_is_not_stored(tmp_path: Path) -> None:
    from pld_desktop.backends.gemini_teacher import GeminiTeacher

    from .helpers import make_project
    project = make_project(tmp_path)
    with fg.FakeGemini(expected_key=KEY) as server:
        server.responder = lambda body: fg.success(f"not json, but here is your key: {KEY}")
        teacher = GeminiTeacher("gemini-2.5-flash", api_key=KEY, base_url=server.base_url, retry_attempts=1)
        backends = FakeBackends()
        backends.t = teacher  # type: ignore[assignment]
        run_pipeline(project, RunSettings(teacher="gemini", task=DEMO_TASK), backends, SilentProgress(), phases=[1])
        teacher.close()
    project.close()
    assert ch.scan_for_secret((tmp_path / "p.pld").read_bytes(), KEY) == []
