"""Per-machine trust in endpoints and model files: a project file is data from someone else.

Endpoints (server addresses) and model paths stored in a project are used only once this machine's user has
accepted them. Accepted endpoint hosts and model paths are kept in a small JSON file in the user's config
folder (`PLD_CONFIG_DIR` overrides it), independent of any project, so accepting a colleague's server once
covers every project that names it, and a project can never vouch for itself.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

__all__ = ["TrustStore", "UntrustedSetting", "UntrustedSettingError", "config_dir", "endpoint_id",
           "reset_to_defaults", "settings_in_use", "untrusted_settings"]

_STORE_NAME = "trusted.json"
_lock = threading.Lock()


def config_dir() -> Path:
    """This user's PLD config folder (`PLD_CONFIG_DIR`, else the platform's per-user config location)."""
    override = os.environ.get("PLD_CONFIG_DIR", "").strip()
    if override:
        return Path(override)
    if sys.platform == "win32":
        return Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming") / "pld-desktop"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "pld-desktop"
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "pld-desktop"


def endpoint_id(url: str) -> str:
    """What trust is given to: scheme, host and port of a server address (`https://host:443`), so a path
    or query change does not need a new acceptance but another host or port does."""
    parsed = urlparse(url.strip() if "://" in url else f"https://{url.strip()}")
    scheme = (parsed.scheme or "https").lower()
    host = (parsed.hostname or "").lower()
    try:
        port = parsed.port
    except ValueError:
        port = None
    port = port or (443 if scheme == "https" else 80 if scheme == "http" else None)
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" + (f":{port}" if port else "")


def _model_id(path: str) -> str:
    return str(Path(path).expanduser().resolve())


@dataclass(frozen=True)
class UntrustedSetting:
    """One stored endpoint or model path not yet accepted on this machine."""

    field: str        # the RunSettings field
    kind: str         # "endpoint" | "model"
    value: str        # as stored in the project
    trust_id: str     # what acceptance records (endpoint_id or resolved path)
    option: str       # the CLI option that sets it

    def describe(self) -> str:
        what = "server" if self.kind == "endpoint" else "model file"
        return f"{what} {self.trust_id} ({self.field}, CLI option {self.option})"


class UntrustedSettingError(ValueError):
    """A backend was asked to use an endpoint or model file this machine's user has not accepted."""

    def __init__(self, items: Sequence[UntrustedSetting]) -> None:
        self.items = list(items)
        names = "; ".join(i.describe() for i in self.items)
        super().__init__(
            f"This project names {names}, which nothing on this machine has accepted yet; nothing was sent "
            "to it. A project file may come from someone else. If you trust it, rerun with "
            "--trust-project-settings or pass the same option again on the command line (the window asks).")


# (settings field, kind, CLI option, phases that use it, condition on the settings)
_FIELDS: tuple[tuple[str, str, str, frozenset[int], Any], ...] = (
    ("teacher_base_url", "endpoint", "--base-url", frozenset({1, 2, 3}), lambda s: s.teacher == "gemini"),
    ("teacher_openai_base_url", "endpoint", "--teacher-base-url", frozenset({1, 2, 3}),
     lambda s: s.teacher == "openai"),
    ("teacher_gguf", "model", "--teacher-gguf", frozenset({1, 2, 3}), lambda s: s.teacher == "local"),
    ("student_base_url", "endpoint", "--student-base-url", frozenset({3, 4}),
     lambda s: s.student_backend == "openai"),
    ("student_gguf", "model", "--student", frozenset({3, 4}), lambda s: s.student_backend != "openai"),
    ("embedder", "model", "(the window's model settings)", frozenset({2, 3}), lambda s: True),
)


def settings_in_use(settings: Any, phases: Iterable[int] = (1, 2, 3, 4)) -> list[UntrustedSetting]:
    """Every endpoint and model path `settings` would use for `phases` (bundled models are not listed)."""
    wanted = set(phases)
    out = []
    for name, kind, option, used_by, applies in _FIELDS:
        value = getattr(settings, name, None)
        if not value or not (used_by & wanted) or not applies(settings):
            continue
        value = str(value)
        if name == "embedder" and not (os.sep in value or "/" in value or Path(value).expanduser().exists()):
            continue  # a model name resolved by the bundled offline cache, not a path
        trust_id = endpoint_id(value) if kind == "endpoint" else _model_id(value)
        out.append(UntrustedSetting(name, kind, value, trust_id, option))
    return out


class TrustStore:
    """The accepted endpoints and model paths of this machine's user (a JSON file, written atomically)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else config_dir() / _STORE_NAME

    def _load(self) -> dict[str, list[str]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"endpoints": [], "models": []}
        if not isinstance(data, dict):
            return {"endpoints": [], "models": []}
        return {k: [str(v) for v in data.get(k, []) if isinstance(v, str)] for k in ("endpoints", "models")}

    def is_trusted(self, item: UntrustedSetting) -> bool:
        return item.trust_id in self._load()["endpoints" if item.kind == "endpoint" else "models"]

    def trust(self, items: Iterable[UntrustedSetting]) -> None:
        items = list(items)
        if not items:
            return
        with _lock:
            data = self._load()
            for item in items:
                bucket = data["endpoints" if item.kind == "endpoint" else "models"]
                if item.trust_id not in bucket:
                    bucket.append(item.trust_id)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".trusted-", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(data, f, indent=2)
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise

    def untrusted(self, settings: Any, phases: Iterable[int] = (1, 2, 3, 4)) -> list[UntrustedSetting]:
        return [item for item in settings_in_use(settings, phases) if not self.is_trusted(item)]


def reset_to_defaults(settings: Any, items: Iterable[UntrustedSetting]) -> Any:
    """A copy of `settings` with the given endpoints and model paths replaced by the bundled defaults."""
    import copy
    out = copy.copy(settings)
    before = {i.field for i in settings_in_use(settings)}
    pending = list(items)
    while pending:
        for item in pending:
            setattr(out, item.field, None)
            if item.field == "teacher_openai_base_url":  # a Gemini proxy falls back to Google's own endpoint
                out.teacher = "local"
            if item.field == "student_base_url":
                out.student_backend = "llama"
        # Falling back can bring a stored path into use that was not before (a GGUF behind a server student).
        pending = [i for i in settings_in_use(out) if i.field not in before]
        before |= {i.field for i in pending}
    return out


def untrusted_settings(settings: Any, phases: Iterable[int] = (1, 2, 3, 4),
                       store: TrustStore | None = None) -> list[UntrustedSetting]:
    """The endpoints and model paths `settings` would use for `phases` that this machine has not accepted."""
    return (store or TrustStore()).untrusted(settings, phases)
