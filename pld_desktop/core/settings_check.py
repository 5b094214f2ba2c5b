"""The one place run settings are validated (CLI, window and pipeline): cheap checks, no model loaded, no call made.

A run validates its settings before anything is saved or any model loads, so a bad option fails at once with
words and never sticks in the project. The word "bundled" (or an empty value) names an embedded model.

Each problem names the setting at fault (a `RunSettings` field) and its rule; its words name settings through
placeholders that the surface showing it fills from a small mapping (`names`): the command line names
`teacher_openai_base_url` "--teacher-base-url", the models dialog names its field, and `DEFAULT_NAMES` is for
everything else. A key "field=value" names a choice ("teacher=openai": "--teacher openai").
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .settings import RunSettings

BUNDLED = "bundled"
GGUF_MAGIC = b"GGUF"
TEACHERS = ("local", "gemini", "openai")
STUDENT_BACKENDS = ("llama", "openai")
PROMPT_FORMATS = ("completion", "chat")
MIN_N_CTX = 128
SERVER_EXAMPLE = "http://127.0.0.1:8080/v1"
SERVER_EXAMPLES = {"teacher_openai_base_url": "http://127.0.0.1:11434/v1 for Ollama, http://127.0.0.1:8000/v1 for vLLM",
                   "student_base_url": f"{SERVER_EXAMPLE} for llama.cpp's server"}

# How a setting is named where no surface says otherwise (the pipeline, the benchmarks).
DEFAULT_NAMES: Mapping[str, str] = {
    "teacher": "teacher", "teacher=openai": "The OpenAI-compatible teacher", "teacher=gemini": "the Gemini teacher",
    "teacher_gguf": "Teacher", "teacher_model": "Teacher", "teacher_base_url": "Teacher (Gemini address)",
    "teacher_openai_base_url": "the teacher's server address", "teacher_openai_model": "the teacher's model name",
    "teacher_batch": "Batch mode", "student_backend": "student backend",
    "student_backend=openai": "The student on an OpenAI-compatible server", "student_gguf": "Student",
    "student_base_url": "the student's server address", "student_prompt_format": "student prompt format",
    "embedder": "Embedder", "student_n_ctx": "student context size", "student_threads": "student threads",
    "teacher_concurrency": "teacher concurrency", "student_concurrency": "student concurrency",
    "student_top_logprobs": "student top logprobs", "teacher_max_attempts": "teacher attempts per item",
    "loop_max_iterations": "closed-loop rounds", "loop_sample_size": "closed-loop sample size",
    "loop_max_failures": "closed-loop failures shown", "loop_max_successes": "closed-loop successes shown",
    "loop_patience": "closed-loop patience", "max_test_examples": "test examples", "few_shot_k": "few-shot examples",
    "dbscan_min_samples": "DBSCAN min_samples", "dbscan_eps": "DBSCAN eps",
    "price_in_per_million": "input price per million tokens",
    "price_out_per_million": "output price per million tokens", "task": "the task description",
}


class _Names(dict[str, str]):
    """A surface's names, falling back to `DEFAULT_NAMES`, then to the field's own name."""

    def __missing__(self, key: str) -> str:
        return DEFAULT_NAMES.get(key, key)


def _esc(text: str) -> str:
    """`text` safe inside a template (the user's braces are not placeholders)."""
    return text.replace("{", "{{").replace("}", "}}")


def _lit(value: Any) -> str:
    return _esc(repr(value))


@dataclass(frozen=True)
class SettingProblem:
    """One broken rule: `rule` (a stable id), `setting` (the RunSettings field at fault) and the words, with
    "{field}" / "{field=value}" placeholders for how the surface names a setting."""

    rule: str
    setting: str
    template: str

    def words(self, names: Mapping[str, str] | None = None) -> str:
        return self.template.format_map(_Names(names or {}))

    def __str__(self) -> str:
        return self.words()


class SettingsError(ValueError):
    """One or more settings would make a run fail; the message lists every problem, in the surface's names."""

    def __init__(self, problems: list[SettingProblem], names: Mapping[str, str] | None = None) -> None:
        self.problems = problems
        said = [p.words(names) for p in problems]
        super().__init__(said[0] if len(said) == 1 else "the settings have problems:\n  " + "\n  ".join(said))


def model_path_value(value: str | None) -> str | None:
    """A model path as given by the user: None for the embedded model ("bundled", "" or nothing)."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text == "" or text.lower() == BUNDLED else text


def gguf_problem(setting: str, value: str) -> SettingProblem | None:
    """Why `value` is not a usable GGUF file (exists, is a file, has the signature and a version llama.cpp reads)."""
    path = Path(value).expanduser()
    shown = _esc(str(path))

    def problem(words: str) -> SettingProblem:
        return SettingProblem("model-file", setting, "{" + setting + "}: " + words)
    if not path.exists():
        return problem(f"model file not found: {shown} (use '{BUNDLED}' for the embedded model).")
    if not path.is_file():
        return problem(f"the model path is not a file: {shown}.")
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        return problem(f"cannot read the model file {shown}: {_esc(exc.strerror or str(exc))}.")
    name = _esc(path.name)
    if head[:4] != GGUF_MAGIC:
        return problem(f"{name} is not a GGUF model file (it does not start with the GGUF signature).")
    if len(head) < 8:
        return problem(f"the model file {shown} is truncated ({len(head)} bytes).")
    version = struct.unpack("<I", head[4:8])[0]
    if version < 2:
        return problem(f"{name} is a GGUF version {version} file, which llama.cpp no longer reads; "
                       "convert it again with a current llama.cpp.")
    return None


def server_url_problem(setting: str, url: str | None, *, needed_by: str | None = None) -> SettingProblem | None:
    """Why `url` is not a usable server address (`server_url_fault`), or None. `needed_by`: the choice
    ("teacher=openai") that makes an address required; without it an empty address is fine."""
    text = (url or "").strip()
    if not text:
        if needed_by is None:
            return None
        example = SERVER_EXAMPLES.get(setting, SERVER_EXAMPLE)
        return SettingProblem("server-address-missing", setting,
                              f"{{{needed_by}}} needs the server's address: {{{setting}}} (e.g. {example}).")
    fault = server_url_fault(text)
    if fault is None:
        return None
    return SettingProblem("server-address-invalid", setting, f"{{{setting}}}: {_esc(fault)}")


def server_url_fault(url: str) -> str | None:
    """Why `url` is not a server's address (http or https, a host, a valid port), in words, or None; the one URL
    rule (backends.openai_student.normalise_base_url refuses with the same words)."""
    parsed = urlparse((url or "").strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return f"The server URL {url!r} is not an http(s) URL; use e.g. {SERVER_EXAMPLE}"
    try:
        parsed.port  # noqa: B018 - raises on a port that is not a number or out of range
    except ValueError:
        return f"The server URL {url!r} has an invalid port; use e.g. {SERVER_EXAMPLE}"
    return None


def _one_of(s: RunSettings, setting: str, allowed: tuple[str, ...]) -> Iterator[SettingProblem]:
    value = getattr(s, setting)
    if value not in allowed:
        yield SettingProblem("choice", setting, f"{{{setting}}} must be one of {', '.join(allowed)} "
                                                f"(got {_lit(value)}).")


def _present(*problems: SettingProblem | None) -> Iterator[SettingProblem]:
    yield from (p for p in problems if p is not None)


def _teacher_problems(s: RunSettings) -> Iterator[SettingProblem]:
    yield from _one_of(s, "teacher", TEACHERS)
    if s.teacher == "local" and model_path_value(s.teacher_gguf):
        yield from _present(gguf_problem("teacher_gguf", str(s.teacher_gguf)))
    if s.teacher == "gemini":
        if not (s.teacher_model or "").strip() or any(c.isspace() for c in s.teacher_model):
            yield SettingProblem("gemini-model-name", "teacher_model", "{teacher_model}: the Gemini model name "
                                 "must be a name without spaces, e.g. gemini-2.5-flash.")
        yield from _present(server_url_problem("teacher_base_url", s.teacher_base_url))
    if s.teacher == "openai":
        yield from _present(server_url_problem("teacher_openai_base_url", s.teacher_openai_base_url,
                                               needed_by="teacher=openai"))
        yield from _served_model_problems(s.teacher_openai_model)
    if s.teacher_batch and s.teacher != "gemini":
        yield SettingProblem("batch-needs-gemini", "teacher_batch", "{teacher_batch} needs {teacher=gemini}.")


def _served_model_problems(name: str | None) -> Iterator[SettingProblem]:
    text = (name or "").strip()
    if not text:
        yield SettingProblem("served-model-name", "teacher_openai_model", "{teacher=openai} needs the served "
                             "model's name: {teacher_openai_model} (e.g. qwen2.5:7b-instruct on Ollama).")
    elif any(c.isspace() for c in text):
        yield SettingProblem("served-model-name", "teacher_openai_model", "{teacher_openai_model}: the served "
                             f"model's name has spaces ({_lit(text)}); use the name the server lists, "
                             "e.g. qwen2.5:7b-instruct.")


def _student_problems(s: RunSettings) -> Iterator[SettingProblem]:
    yield from _one_of(s, "student_backend", STUDENT_BACKENDS)
    if s.student_backend == "llama" and model_path_value(s.student_gguf):
        yield from _present(gguf_problem("student_gguf", str(s.student_gguf)))
    if s.student_backend == "openai":
        yield from _present(server_url_problem("student_base_url", s.student_base_url,
                                               needed_by="student_backend=openai"))
    yield from _one_of(s, "student_prompt_format", PROMPT_FORMATS)


def _embedder_problems(s: RunSettings) -> Iterator[SettingProblem]:
    if not s.embedder:
        return
    folder = Path(s.embedder).expanduser()
    shown = _esc(str(folder))
    if not folder.is_dir():
        yield SettingProblem("embedder-folder", "embedder", f"{{embedder}}: the folder {shown} does not exist.")
    elif not ((folder / "modules.json").is_file() or (folder / "config.json").is_file()):
        yield SettingProblem("embedder-folder", "embedder", f"{{embedder}}: {shown} is not a sentence-transformers "
                             "model folder (no modules.json or config.json).")


# The numbers and their least values; (field, minimum, None allowed). A float minimum allows fractions.
_LEAST_VALUES: tuple[tuple[str, float, bool], ...] = (
    ("student_n_ctx", MIN_N_CTX, False), ("student_threads", 1, True), ("teacher_concurrency", 1, False),
    ("student_concurrency", 1, False), ("student_top_logprobs", 1, False), ("teacher_max_attempts", 1, False),
    ("loop_max_iterations", 0, False), ("loop_sample_size", 1, False), ("loop_max_failures", 0, False),
    ("loop_max_successes", 0, False), ("loop_patience", 1, False), ("max_test_examples", 1, True),
    ("few_shot_k", 0, False), ("dbscan_min_samples", 1, False), ("price_in_per_million", 0.0, False),
    ("price_out_per_million", 0.0, False))
NUMBER_SETTINGS = frozenset(setting for setting, _, _ in _LEAST_VALUES)


def _number_problems(s: RunSettings) -> Iterator[SettingProblem]:
    for setting, minimum, optional in _LEAST_VALUES:
        value = getattr(s, setting)
        if value is None and optional:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < minimum:
            kind = "a number" if isinstance(minimum, float) else "a whole number"
            yield SettingProblem("at-least", setting, f"{{{setting}}} must be {kind} of at least {minimum} "
                                                      f"(got {_lit(value)}).")
    if not (isinstance(s.dbscan_eps, (int, float)) and 0 < s.dbscan_eps <= 2):
        yield SettingProblem("dbscan-eps", "dbscan_eps", "{dbscan_eps} must be a cosine distance above 0 and at "
                                                         f"most 2 (got {_lit(s.dbscan_eps)}).")


def _task_problems(s: RunSettings) -> Iterator[SettingProblem]:
    if not (s.task or "").strip():
        yield SettingProblem("task-empty", "task", "{task} is empty.")


def settings_problems(s: RunSettings) -> list[SettingProblem]:
    """Every problem with `s` that would make a run fail (empty when the settings are usable)."""
    return [*_teacher_problems(s), *_student_problems(s), *_embedder_problems(s), *_number_problems(s),
            *_task_problems(s)]


def check_settings(s: RunSettings, names: Mapping[str, str] | None = None) -> None:
    """Raise `SettingsError` listing every problem, in `names` (how the caller's surface names each setting);
    call before anything is saved or any model loads."""
    problems = settings_problems(s)
    if problems:
        raise SettingsError(problems, names)
