"""Shared test helpers: a project on the demo CSV, the demo run settings, Gemini doubles, an in-memory keychain."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keyring
import keyring.backend
import keyring.errors

from pld_desktop.backends.bundled import bundled_local_teacher_path, bundled_student_path
from pld_desktop.core.dataset import ColumnMapping, SplitSettings, load_dataset
from pld_desktop.core.domain import Rule
from pld_desktop.core.project import Project
from pld_desktop.core.settings import RunSettings
from pld_desktop.resources import DEMO_TASK, demo_csv

from .fake_gemini import FakeGemini, success
from .fakes import FakeBackends
from .gguf_files import write_tiny_gguf

GEMINI_KEY = "AIzaSyPLANTED-KEY-0123456789"


def rule(**fields: Any) -> Rule:
    """A rule written like the JSON object it is stored as (lists for its sequences), for test input."""
    return Rule(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def rules_of(*dicts: dict[str, Any]) -> list[Rule]:
    return [rule(**d) for d in dicts]


# The three hand-written rules of the `project_with_rules` fixture.
PROBE_RULES = rules_of({"uid": "H1", "text": "If the customer did not authorise a payment, login or card use",
                        "label": "fraud_report", "enabled": True},
                       {"uid": "H2", "text": "If the customer is unhappy with a fee, delay or staff",
                        "label": "complaint", "enabled": True},
                       {"uid": "H3", "text": "If the customer asks how to do something", "label": "question",
                        "enabled": True})


def make_project(tmp_path: Path, name: str = "p.pld") -> Project:
    """A new project in `tmp_path` holding the demo dataset (bank messages), no phase run yet."""
    ds = load_dataset(demo_csv(), ColumnMapping(("message",), "label", id_column="id"), SplitSettings())
    project = Project.create(tmp_path / name)
    project.store_dataset(ds, "bank_messages.csv")
    return project


def settings(**kw: object) -> RunSettings:
    """The demo task's run settings with a two-round loop; `kw` overrides any field."""
    return RunSettings(task=DEMO_TASK, loop_max_iterations=2, **kw)  # type: ignore[arg-type]  # kw: field values


def extraction_responder(body: dict) -> object:
    """A fake-Gemini responder that answers each phase-1 extraction request with its gold label."""
    user = body["contents"][0]["parts"][0]["text"]
    gold = re.search(r"Gold label: (\S+)", user).group(1)  # type: ignore[union-attr]  # every extraction prompt has it
    return success(json.dumps({"reasoning": "because", "rule": f"If it looks like this, answer {gold}.",
                               "label": gold}), prompt_tokens=120, output_tokens=30)


def batch_teacher(server: FakeGemini, **kw: object) -> Any:
    """The real GeminiBatchTeacher (fast retries) pointed at the fake Gemini `server`."""
    from pld_desktop.backends.gemini_batch import GeminiBatchTeacher
    return GeminiBatchTeacher("gemini-2.5-flash", api_key=GEMINI_KEY, base_url=server.base_url, max_concurrency=4,
                              retry_initial_s=0.01, retry_max_s=0.05, retry_attempts=2, **kw)  # type: ignore[arg-type]


def gemini_backends(server: FakeGemini) -> FakeBackends:
    """The test doubles with the real GeminiTeacher (fast retries) pointed at the fake Gemini `server`."""
    from pld_desktop.backends.gemini_teacher import GeminiTeacher  # google-genai: only for the tests that use it
    teacher = GeminiTeacher("gemini-2.5-flash", api_key=GEMINI_KEY, base_url=server.base_url, max_concurrency=4,
                            retry_initial_s=0.01, retry_max_s=0.05, retry_attempts=3)
    backends = FakeBackends()
    backends.t = teacher  # type: ignore[assignment]  # a real teacher where the double's type is declared
    return backends


class MemoryKeyring(keyring.backend.KeyringBackend):
    """An in-memory OS keychain (the `memory_keyring` fixture installs one)."""

    priority = 1  # type: ignore[assignment]  # keyring declares it as a classproperty

    def __init__(self) -> None:
        super().__init__()
        self.store: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.store.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.store[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if self.store.pop((service, username), None) is None:
            raise keyring.errors.PasswordDeleteError("not stored")


def home_with_three_stores(home: Path) -> dict[str, Path]:
    """The bundled Gemma 3 270M in the HF cache layout, a tiny qwen2 GGUF in LM Studio's, the bundled SmolLM2
    behind an Ollama manifest."""
    hf_repo = home / ".cache" / "huggingface" / "hub" / "models--unsloth--gemma-3-270m-it-GGUF"
    blob = hf_repo / "blobs" / ("a" * 64)
    blob.parent.mkdir(parents=True)
    blob.symlink_to(bundled_student_path())
    commit = "c" * 40
    snap = hf_repo / "snapshots" / commit / "gemma-3-270m-Q4_K_M.gguf"
    snap.parent.mkdir(parents=True)
    snap.symlink_to(os.path.relpath(blob, snap.parent))
    (hf_repo / "refs").mkdir()
    (hf_repo / "refs" / "main").write_text(commit)

    lms = write_tiny_gguf(home / ".lmstudio" / "models" / "lmstudio-community" / "Tiny-GGUF" / "tiny-Q4_K_M.gguf")

    ollama = home / ".ollama" / "models"
    digest = "b" * 64
    (ollama / "blobs").mkdir(parents=True)
    (ollama / "blobs" / f"sha256-{digest}").symlink_to(bundled_local_teacher_path())
    manifest = ollama / "manifests" / "registry.ollama.ai" / "library" / "smollm2" / "135m"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": [
        {"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "d" * 64, "size": 10},
        {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}", "size": 1}]}))
    return {"hf": snap, "lmstudio": lms, "ollama": ollama / "blobs" / f"sha256-{digest}"}


@dataclass(frozen=True)
class CliResult:
    """What an in-process `pld` call (the `pld_main` fixture) returned and printed, named as subprocess names them."""

    returncode: int
    stdout: str
    stderr: str


def pld_in_process(*args: str) -> CliResult:
    """`pld ARGS` through the CLI's main(argv) in this process: no interpreter start, no imports again (~2 s saved).

    For argument and input errors, where the command's words and exit code are under test; exit codes after
    signals, the process's own streams and locks between processes need a subprocess. The signal handlers the
    CLI installs are put back afterwards.
    """
    from pld_desktop.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:  # argparse's own usage errors
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
    return CliResult(code, out.getvalue(), err.getvalue())
