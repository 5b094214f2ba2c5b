"""The run options of `pld run`, `pld eval` and `pld rules`: their arguments, the settings they set, the names a
problem with a setting is reported by, and the machine's acceptance of what they name."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ..core.settings_check import DEFAULT_NAMES, NUMBER_SETTINGS

# The run options and the settings they set; a problem with a setting names its option (core.settings_check).
_RUN_OPTIONS = {"teacher": "teacher", "teacher_model": "teacher_model", "teacher_gguf": "teacher_gguf",
                "student": "student_gguf", "base_url": "teacher_base_url", "concurrency": "teacher_concurrency",
                "teacher_openai_base_url": "teacher_openai_base_url", "teacher_openai_model": "teacher_openai_model",
                "student_backend": "student_backend", "student_base_url": "student_base_url",
                "student_model": "student_model", "student_concurrency": "student_concurrency",
                "student_prompt_format": "student_prompt_format", "student_top_logprobs": "student_top_logprobs",
                "max_iterations": "loop_max_iterations", "max_test": "max_test_examples", "n_ctx": "student_n_ctx",
                "task": "task", "sample_size": "loop_sample_size"}
_OPTIONS = {field: "--" + option.replace("_", "-") for option, field in _RUN_OPTIONS.items()}
# A number is named by what it is and its option: "--n-ctx must be at least 128" does not say what.
CLI_NAMES = {**{field: f"{DEFAULT_NAMES[field]} ({option})" if field in NUMBER_SETTINGS else option
                for field, option in _OPTIONS.items()},
             "teacher_openai_base_url": "--teacher-base-url", "teacher_batch": "--batch",
             "teacher=openai": "--teacher openai", "teacher=gemini": "the Gemini teacher (--teacher gemini)",
             "student_backend=openai": "--student-backend openai"}


def _apply_run_overrides(settings: Any, args: argparse.Namespace) -> None:
    """Copy the run options given on the command line into `settings` (saved with the run, so a rerun without
    them resumes the same way); `check_settings(settings, CLI_NAMES)` then says what is wrong, by option."""
    from ..core.settings_check import BUNDLED, model_path_value
    if getattr(args, "teacher", None) == BUNDLED:  # the embedded local teacher, whatever the project had
        args.teacher, args.teacher_gguf = "local", BUNDLED
    for arg, field in _RUN_OPTIONS.items():
        value = getattr(args, arg, None)
        if value is not None:
            if arg in ("student", "teacher_gguf"):
                value = model_path_value(value)  # "bundled" or "" -> the embedded model
            setattr(settings, field, value)
    if getattr(args, "batch", None):
        settings.teacher_batch = True
    if getattr(args, "student", None) is not None and getattr(args, "student_backend", None) is None:
        settings.student_backend = "llama"  # a GGUF named on the command line is meant to run in this process


# The run options that name an endpoint or a model file: typing one on this machine accepts it.
_TRUSTED_OPTIONS = {"base_url": "teacher_base_url", "teacher_openai_base_url": "teacher_openai_base_url",
                    "teacher_gguf": "teacher_gguf", "student": "student_gguf", "student_base_url": "student_base_url"}


def _accept_trust(trust: Any, settings: Any, args: argparse.Namespace, phases: Sequence[int]) -> list[Any]:
    """Record as accepted what this command line names (all in use with --trust-project-settings); return what
    is still not accepted."""
    from ..backends.trust import settings_in_use
    typed = {field for option, field in _TRUSTED_OPTIONS.items() if getattr(args, option, None)}
    everything = bool(getattr(args, "trust_project_settings", False))
    trust.trust(i for i in settings_in_use(settings, phases) if everything or i.field in typed)
    return list(trust.untrusted(settings, phases))


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _positive_int(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _nonnegative_int(text: str) -> int:
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _add_run_options(sp: argparse.ArgumentParser) -> None:
    """The options of every command that runs a model: pld run, eval and rules."""
    sp.add_argument("--teacher", choices=["gemini", "local", "openai", "bundled"],
                    help="openai: an OpenAI-compatible server (Ollama, vLLM, LM Studio, llama.cpp); "
                         "bundled: the embedded SmolLM2 teacher")
    sp.add_argument("--teacher-model", help="Gemini model name")
    sp.add_argument("--teacher-gguf", help="GGUF file for the local teacher ('bundled': the embedded one)")
    sp.add_argument("--base-url", help="Gemini endpoint (proxies, tests)")
    sp.add_argument("--teacher-base-url", dest="teacher_openai_base_url", metavar="URL",
                    help="OpenAI-compatible teacher server, e.g. http://127.0.0.1:11434/v1 "
                         "(API key: OPENAI_API_KEY or the OS keychain)")
    sp.add_argument("--teacher-openai-model", metavar="NAME", help="model name on the teacher server")
    sp.add_argument("--concurrency", type=_positive_int, help="teacher requests in flight at once")
    sp.add_argument("--student", help="student GGUF ('bundled' or default: the embedded Gemma 3 270M)")
    sp.add_argument("--student-backend", choices=["llama", "openai"],
                    help="llama: the GGUF in this process (default); openai: an OpenAI-compatible server")
    sp.add_argument("--student-base-url", metavar="URL", help="student server, e.g. http://127.0.0.1:8080/v1")
    sp.add_argument("--student-model", metavar="NAME",
                    help="model name on the student server (default: the first one it lists)")
    sp.add_argument("--student-concurrency", type=_positive_int, help="student requests in flight at once")
    sp.add_argument("--student-prompt-format", choices=["completion", "chat"],
                    help="completion: the exact prompt on /v1/completions (default); chat: the server's "
                         "chat template")
    sp.add_argument("--student-top-logprobs", type=_positive_int,
                    help="next-token logprobs asked per step (OpenAI and vLLM allow at most 20)")
    sp.add_argument("--n-ctx", type=_positive_int, help="student context size")
    sp.add_argument("--max-iterations", type=_nonnegative_int, help="closed-loop rounds at most")
    sp.add_argument("--sample-size", type=_positive_int, help="closed-loop training sample per round")
    sp.add_argument("--max-test", type=_positive_int, help="evaluate on at most N test examples")
    sp.add_argument("--batch", action="store_true", default=None,
                    help="phase 1 through Gemini Batch (half price; minutes to hours; a rerun resumes polling)")
    sp.add_argument("--yes", action="store_true", help="do not ask before a paid teacher run")
    sp.add_argument("--trust-project-settings", action="store_true",
                    help="accept the servers and model files this project names (remembered on this machine)")
    sp.add_argument("--quiet", action="store_true")
