"""The one place run settings are validated (CLI, window and pipeline): cheap checks, no model loaded, no call made.

A run validates its settings before anything is saved or any model loads, so a bad option fails at once with
words and never sticks in the project. The word "bundled" (or an empty value) names an embedded model.
"""

from __future__ import annotations

import math
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


class SettingsError(ValueError):
    """One or more settings would make a run fail; the message lists every problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(problems[0] if len(problems) == 1 else
                         "the settings have problems:\n  " + "\n  ".join(problems))


def model_path_value(value: str | None) -> str | None:
    """A model path as given by the user: None for the embedded model ("bundled", "" or nothing)."""
    if value is None:
        return None
    text = str(value).strip()
    return None if text == "" or text.lower() == BUNDLED else text


def gguf_problem(role: str, value: str) -> str | None:
    """Why `value` is not a usable GGUF file (exists, is a file, starts with the signature), or None."""
    path = Path(value).expanduser()
    if not path.exists():
        return f"{role}: model file not found: {path} (use '{BUNDLED}' for the embedded model)."
    if not path.is_file():
        return f"{role}: the model path is not a file: {path}."
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        return f"{role}: cannot read the model file {path}: {exc.strerror or exc}."
    if head != GGUF_MAGIC:
        return f"{role}: {path.name} is not a GGUF model file (it does not start with the GGUF signature)."
    return None


def url_problem(role: str, url: str | None, *, required: bool) -> str | None:
    if not (url or "").strip():
        return f"{role}: enter the server's address, e.g. http://127.0.0.1:8080/v1." if required else None
    parsed = urlparse(str(url).strip())
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        return f"{role}: the address must start with http:// or https:// and name a host (got {url!r})."
    try:
        parsed.port  # noqa: B018 - raises on a port that is not a number or out of range
    except ValueError:
        return f"{role}: the address has an invalid port (got {url!r})."
    return None


def _at_least(problems: list[str], name: str, value: Any, minimum: float, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value) or value < minimum:
        problems.append(f"{name} must be {'a number ' if isinstance(minimum, float) else 'a whole number '}"
                        f"of at least {minimum} (got {value!r}).")


def settings_problems(s: RunSettings) -> list[str]:  # noqa: C901 (issue 14: not yet broken into named steps)
    """Every problem with `s` that would make a run fail, in words (empty when the settings are usable)."""
    p: list[str] = []
    if s.teacher not in TEACHERS:
        p.append(f"teacher must be one of {', '.join(TEACHERS)} (got {s.teacher!r}).")
    if s.teacher == "local" and model_path_value(s.teacher_gguf):
        p += [x for x in [gguf_problem("Teacher", str(s.teacher_gguf))] if x]
    if s.teacher == "gemini":
        if not (s.teacher_model or "").strip() or any(c.isspace() for c in s.teacher_model):
            p.append("Teacher: the Gemini model name must be a name without spaces, e.g. gemini-2.5-flash.")
        p += [x for x in [url_problem("Teacher (--base-url)", s.teacher_base_url, required=False)] if x]
    if s.teacher == "openai":
        p += [x for x in [url_problem("Teacher (--teacher-base-url)", s.teacher_openai_base_url, required=True)]
              if x]
        if not (s.teacher_openai_model or "").strip():
            p.append("Teacher: the OpenAI-compatible teacher needs the served model's name (--teacher-openai-model).")
    if s.student_backend not in STUDENT_BACKENDS:
        p.append(f"student backend must be one of {', '.join(STUDENT_BACKENDS)} (got {s.student_backend!r}).")
    if s.student_backend == "llama" and model_path_value(s.student_gguf):
        p += [x for x in [gguf_problem("Student", str(s.student_gguf))] if x]
    if s.student_backend == "openai":
        p += [x for x in [url_problem("Student (--student-base-url)", s.student_base_url, required=True)] if x]
    if s.student_prompt_format not in PROMPT_FORMATS:
        p.append(f"student prompt format must be one of {', '.join(PROMPT_FORMATS)} "
                 f"(got {s.student_prompt_format!r}).")
    if s.embedder:
        folder = Path(s.embedder).expanduser()
        if not folder.is_dir():
            p.append(f"Embedder: the folder {folder} does not exist.")
        elif not ((folder / "modules.json").is_file() or (folder / "config.json").is_file()):
            p.append(f"Embedder: {folder} is not a sentence-transformers model folder "
                     "(no modules.json or config.json).")
    _at_least(p, "student context size (--n-ctx)", s.student_n_ctx, MIN_N_CTX)
    _at_least(p, "student threads", s.student_threads, 1, optional=True)
    _at_least(p, "teacher concurrency (--concurrency)", s.teacher_concurrency, 1)
    _at_least(p, "student concurrency (--student-concurrency)", s.student_concurrency, 1)
    _at_least(p, "student top logprobs (--student-top-logprobs)", s.student_top_logprobs, 1)
    _at_least(p, "teacher attempts per item", s.teacher_max_attempts, 1)
    _at_least(p, "closed-loop rounds (--max-iterations)", s.loop_max_iterations, 0)
    _at_least(p, "closed-loop sample size (--sample-size)", s.loop_sample_size, 1)
    _at_least(p, "closed-loop failures shown", s.loop_max_failures, 0)
    _at_least(p, "closed-loop successes shown", s.loop_max_successes, 0)
    _at_least(p, "closed-loop patience", s.loop_patience, 1)
    _at_least(p, "test examples (--max-test)", s.max_test_examples, 1, optional=True)
    _at_least(p, "few-shot examples", s.few_shot_k, 0)
    _at_least(p, "DBSCAN min_samples", s.dbscan_min_samples, 1)
    _at_least(p, "input price per million tokens", s.price_in_per_million, 0.0)
    _at_least(p, "output price per million tokens", s.price_out_per_million, 0.0)
    if not (isinstance(s.dbscan_eps, (int, float)) and 0 < s.dbscan_eps <= 2):
        p.append(f"DBSCAN eps must be a cosine distance above 0 and at most 2 (got {s.dbscan_eps!r}).")
    if s.teacher_batch and s.teacher != "gemini":
        p.append("Batch mode needs the Gemini teacher (--teacher gemini).")
    if not (s.task or "").strip():
        p.append("the task description is empty.")
    return p


def check_settings(s: RunSettings) -> None:
    """Raise `SettingsError` listing every problem; call before anything is saved or any model loads."""
    problems = settings_problems(s)
    if problems:
        raise SettingsError(problems)
