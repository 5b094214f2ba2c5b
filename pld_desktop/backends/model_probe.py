"""Will a model work here? A GGUF's memory need at the project's context size and seconds per example with the
project's current rule prompt (probe_model); the models dialog's checks of a student GGUF, a teacher and a
student server (one tiny real call each). Plain functions, run by the UI on a background thread."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.progress import Cancelled, Progress
from ..core.settings import RunSettings
from . import secrets
from .model_store import FoundModel, MemoryEstimate, describe_file, memory_estimate

__all__ = ["PROBE_LABELS", "PROBE_TASK", "PROBE_TEXT", "ProbeResult", "ServerCheck", "StudentCheck",
           "StudentServerCheck", "check_student", "check_student_server", "probe_model", "probe_openai_teacher",
           "probe_teacher"]

# The student-server check classifies one made-up message (the dialog has no project to take one from).
PROBE_TASK = "Decide what the message is about: the weather or food."
PROBE_TEXT = "It has rained all week and tomorrow brings snow."
PROBE_LABELS = ("weather", "food")

# Without a project the probe classifies made-up messages with a zero-shot prompt (as the models dialog does).
_DEMO_TASK = "Decide what the message is about: the weather or food."
_DEMO_ROWS = (("It has rained all week and tomorrow brings snow.", "weather"),
              ("The soup was too salty but the bread was fresh.", "food"),
              ("A heat wave is expected over the weekend.", "weather"),
              ("We baked a lemon cake for her birthday.", "food"))


@dataclass(frozen=True)
class ProbeResult:
    """What one probe measured. `first_s` includes processing the system prompt once; `per_example_s` is
    the median of the later examples (the prompt already processed, as in a run)."""

    path: str
    model: FoundModel
    memory: MemoryEstimate
    prompt_name: str
    prompt_tokens: int
    n_examples: int
    load_s: float
    first_s: float
    per_example_s: float | None
    correct: int
    predictions: list[tuple[str, str]] = field(default_factory=list)  # (gold, predicted)

    def describe(self) -> str:
        lines = [(f"{self.model.name} ({self.model.quantisation or '?'}, {self.model.size_bytes / 2**30:.2f} GiB): "
                  f"{self.memory.describe()}."),
                 f"Loaded in {self.load_s:.1f} s. Prompt: {self.prompt_name}, {self.prompt_tokens:,} tokens.",
                 f"First example {self.first_s:.2f} s (processes the prompt once)"
                 + (f"; then {self.per_example_s:.2f} s per example" if self.per_example_s is not None else "")
                 + f" over {self.n_examples} examples; {self.correct}/{self.n_examples} correct."]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "model": self.model.to_json(),
                "memory": {"weights": self.memory.weights, "kv_cache": self.memory.kv_cache,
                           "compute": self.memory.compute, "total": self.memory.total,
                           "available": self.memory.available, "fits": self.memory.fits, "n_ctx": self.memory.n_ctx},
                "prompt": self.prompt_name, "prompt_tokens": self.prompt_tokens, "n_examples": self.n_examples,
                "load_s": self.load_s, "first_s": self.first_s, "per_example_s": self.per_example_s,
                "correct": self.correct, "predictions": self.predictions}


def _project_prompt(project_path: str | os.PathLike[str], n_examples: int) -> tuple[str, str, list[str],
                                                                                    list[tuple[str, str]], int]:
    """(prompt name, prompt text, labels, (text, gold) rows, n_ctx) from a project: the rule editor's current
    version, else the chosen rule set, else the zero-shot baseline; dev examples (train if none)."""
    from ..core.compare import PromptChoice, resolve_prompt
    from ..core.project import EDITED_RULE_SET, Project
    from ..core.settings import load_settings
    from ..core.working import pipeline_choice

    with Project.open(project_path, read_only=True) as project:
        if not project.has_dataset():
            raise ValueError(f"The project {project_path} has no dataset yet.")
        settings = load_settings(project)
        chosen = pipeline_choice(project)
        if project.rule_set_pointer(EDITED_RULE_SET) is not None:
            choice = PromptChoice("current_edit")
        elif chosen is not None:
            choice = PromptChoice("version", int(chosen))
        else:
            choice = PromptChoice("zero_shot")
        resolved = resolve_prompt(project, choice, settings)
        rows = project.examples(split="dev") or project.examples(split="train")
        # The locked test split is never used for a decision, and choosing a model is one.
        picked = [(e.text, e.label) for e in rows[:n_examples]]
        return resolved.label, resolved.text, project.labels(), picked, settings.student_n_ctx


def probe_model(path: str | os.PathLike[str], progress: Progress, *, project: str | os.PathLike[str] | None = None,
                n_examples: int = 4, n_ctx: int | None = None, n_threads: int | None = None) -> ProbeResult:
    """Load the GGUF as the student, classify a few examples with the current rule prompt, and time it.
    The memory check comes first: a model that does not fit is refused before it is loaded."""
    from ..core.prompts import build_zero_shot_prompt
    from .bundled import ModelFileError
    from .llama_student import LlamaStudent

    found = describe_file(path)
    if not found.usable:
        raise ModelFileError(f"{Path(path).name} cannot be probed: {found.problem or 'not a language model'}.")
    if project is not None:
        prompt_name, prompt, labels, rows, project_ctx = _project_prompt(project, n_examples)
    else:
        labels = ["weather", "food"]
        prompt_name, prompt = "zero-shot (made-up examples)", build_zero_shot_prompt(_DEMO_TASK, labels)
        rows, project_ctx = list(_DEMO_ROWS[:n_examples]), 4096
    if not rows:
        raise ValueError("The project has no dev or training examples to probe with.")
    ctx = n_ctx or project_ctx
    memory = memory_estimate(found, ctx)
    if memory.fits is False:
        raise ModelFileError(f"{found.name} {memory.describe()}. Choose a smaller model or context size.")
    progress.begin(f"Probing {found.name}", len(rows) + 1)
    started = time.perf_counter()
    with LlamaStudent(path, n_ctx=ctx, n_threads=n_threads, disk_cache_bytes=0) as student:
        load_s = time.perf_counter() - started
        progress.report(1, len(rows) + 1, f"loaded in {load_s:.1f} s")
        prompt_tokens = student.count_tokens(prompt)
        student.check_fits(prompt, max((t for t, _ in rows), key=len), labels)
        times: list[float] = []
        predictions: list[tuple[str, str]] = []
        for i, (text, gold) in enumerate(rows):
            if progress.cancelled():
                raise Cancelled("cancelled by the user")
            t0 = time.perf_counter()
            predicted = student.classify(prompt, text, labels).label
            times.append(time.perf_counter() - t0)
            predictions.append((gold, predicted))
            progress.report(i + 2, len(rows) + 1, f"example {i + 1}: {times[-1]:.2f} s")
    later = sorted(times[1:])
    median = later[len(later) // 2] if later else None
    return ProbeResult(path=str(Path(path).resolve()), model=found, memory=memory, prompt_name=prompt_name,
                       prompt_tokens=prompt_tokens, n_examples=len(rows), load_s=load_s, first_s=times[0],
                       per_example_s=median, correct=sum(g == p for g, p in predictions), predictions=predictions)


# ---------------------------------------------------------------------------
# The models dialog's checks
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class StudentCheck:
    """What loading a student GGUF told us."""

    path: str
    name: str
    size_bytes: int
    architecture: str
    size_label: str
    n_params: int
    n_ctx_train: int
    n_ctx: int
    has_chat_template: bool
    load_s: float

    def describe(self) -> str:
        lines = [f"Loaded {self.name} in {self.load_s:.1f} s.",
                 f"File: {self.path} ({_human_bytes(self.size_bytes)})",
                 f"Architecture: {self.architecture or 'unknown'}, "
                 f"{_human_count(self.n_params)} parameters"
                 + (f" (labelled {self.size_label})" if self.size_label else ""),
                 f"Trained context: {self.n_ctx_train:,} tokens; context used here: {self.n_ctx:,} tokens.",
                 "Chat template: " + ("yes (prompts use the model's own template)" if self.has_chat_template
                                      else "none (plain-text prompts ending in 'Label:')")]
        if self.n_ctx_train and self.n_ctx > self.n_ctx_train:
            lines.append(f"Warning: the context size {self.n_ctx:,} exceeds what the model was trained on "
                         f"({self.n_ctx_train:,}); answers beyond that length are unreliable.")
        return "\n".join(lines)


def check_student(model_path: str | None, n_ctx: int, n_threads: int | None) -> StudentCheck:
    """Load a student GGUF (None: the bundled Gemma 3 270M) with these settings and read what it is."""
    # Imported here: llama.cpp is heavy and only needed when the user asks for a check.
    import llama_cpp.llama_cpp as llama_capi

    from .bundled import bundled_student_path
    from .gguf_file import check_gguf_file, read_gguf_metadata
    from .llama_runtime import LlamaOwner

    path = check_gguf_file(model_path) if model_path else bundled_student_path()
    header = read_gguf_metadata(path, {"general.name", "general.architecture", "general.size_label"})
    started = time.perf_counter()
    owner = LlamaOwner(path, n_ctx=n_ctx, n_threads=n_threads, name="student-check", flash_attn=True)
    try:
        def inspect(llama: Any) -> dict[str, Any]:
            meta = dict(llama.metadata or {})
            return {"n_params": int(llama_capi.llama_model_n_params(llama.model)),
                    "n_ctx_train": int(llama_capi.llama_model_n_ctx_train(llama.model)),
                    "n_ctx": int(llama.n_ctx()),
                    "chat": bool(meta.get("tokenizer.chat_template")),
                    "name": meta.get("general.name"), "arch": meta.get("general.architecture")}
        info = owner.call(inspect)
    finally:
        owner.close()
    return StudentCheck(
        path=str(Path(path).resolve()), name=str(info["name"] or header.get("general.name") or Path(path).name),
        size_bytes=Path(path).stat().st_size, architecture=str(info["arch"] or header.get("general.architecture", "")),
        size_label=str(header.get("general.size_label", "")), n_params=info["n_params"],
        n_ctx_train=info["n_ctx_train"], n_ctx=info["n_ctx"], has_chat_template=info["chat"],
        load_s=time.perf_counter() - started)


def probe_teacher(settings: RunSettings, api_key: str | None) -> str:
    """One tiny real call to the configured teacher; a sentence on success, an exception otherwise.
    `api_key` (a key typed but not saved yet) overrides the stored one for this call only."""
    if settings.teacher == "openai":
        return probe_openai_teacher(settings.teacher_openai_base_url or "", settings.teacher_openai_model,
                                    api_key).describe()
    if settings.teacher == "gemini":
        from .gemini_teacher import GeminiTeacher

        # One attempt, no backoff: the user is waiting and wants the first answer, good or bad.
        with GeminiTeacher(settings.teacher_model, api_key=api_key or None, base_url=settings.teacher_base_url,
                           max_concurrency=1, retry_attempts=1, timeout_s=30) as teacher:
            return teacher.test_connection()
    from pydantic import BaseModel

    from ..core.protocols import TeacherRequest
    from .local_teacher import LocalTeacher

    class Ping(BaseModel):
        answer: str

    started = time.perf_counter()
    with LocalTeacher(settings.teacher_gguf, n_ctx=512, max_tokens=24) as local:
        reply = local.generate(TeacherRequest("Reply in JSON.", 'Reply with {"answer": "OK"}.', Ping, "probe"))
        name = local.model_path.name
    elapsed = time.perf_counter() - started
    try:
        Ping.model_validate_json(reply.text)
    except ValueError:
        return (f"The local teacher {name} loaded and answered in {elapsed:.1f} s, but its reply was not the "
                f"requested JSON: {reply.text[:120]!r}. Runs validate and retry every reply.")
    return f"The local teacher {name} loaded and answered in {elapsed:.1f} s ({reply.usage.total_tokens} tokens)."


def _listed_models(http: Any) -> tuple[str, ...]:
    """The model ids an OpenAI-compatible server lists at /models (some list none yet accept any name)."""
    listing = http.get("/models")
    data = listing.get("data") if isinstance(listing, dict) else None
    return tuple(str(m["id"]) for m in (data or []) if isinstance(m, dict) and m.get("id"))


def _names(models: tuple[str, ...], limit: int = 8) -> str:
    shown = ", ".join(models[:limit])
    return shown + (f" and {len(models) - limit} more" if len(models) > limit else "")


@dataclass(frozen=True)
class ServerCheck:
    """What an OpenAI-compatible teacher server told us: the models it lists and how the tiny call went."""

    models: tuple[str, ...]
    message: str

    def describe(self) -> str:
        return self.message


def probe_openai_teacher(base_url: str, model: str, api_key: str | None) -> ServerCheck:
    """List the server's models, then make one tiny structured call to `model`, as a run would."""
    from pydantic import BaseModel

    from ..core.protocols import TeacherRequest
    from .openai_student import OpenAIHttp
    from .openai_teacher import OpenAITeacher

    key = api_key or secrets.get_api_key("openai", server=base_url)
    http = OpenAIHttp(base_url, key, timeout_s=30.0, max_connections=1, who="The teacher server")
    try:
        models = _listed_models(http)
        where = http.base_url
    finally:
        http.close()
    listed = f"it lists {_names(models)}" if models else "it lists no models"
    model = model.strip()
    if not model:
        return ServerCheck(models, f"The server at {where} answers; {listed}. Choose the teacher model "
                                   "above and test again.")

    class Ping(BaseModel):
        answer: str

    started = time.perf_counter()
    # One attempt, no backoff: the user is waiting and wants the first answer, good or bad.
    with OpenAITeacher(base_url, model, api_key=key, concurrency=1, retry_attempts=1, timeout_s=60.0) as teacher:
        reply = teacher.generate(TeacherRequest("Reply in JSON.", 'Reply with {"answer": "OK"}.', Ping, "probe"))
    elapsed = time.perf_counter() - started
    note = "" if not models or model in models else (
        f" Note: {model!r} is not among the listed models, but the server accepted the name.")
    try:
        Ping.model_validate_json(reply.text)
    except ValueError:
        return ServerCheck(models, f"Connected to {where} ({listed}). {model} answered in {elapsed:.1f} s, but "
                                   f"not with the requested JSON: {reply.text[:120]!r}. Runs validate and retry "
                                   f"every reply.{note}")
    return ServerCheck(models, f"Connected to {where} ({listed}). {model} answered in {elapsed:.1f} s with valid "
                               f"JSON ({reply.usage.total_tokens} tokens).{note}")


@dataclass(frozen=True)
class StudentServerCheck:
    """What an OpenAI-compatible student server told us, and one classification through the real scorer."""

    base_url: str
    models: tuple[str, ...]
    model: str
    scoring: str
    grammar: bool
    n_ctx: int
    prompt_format: str
    label: str
    probs: dict[str, float]
    latency_s: float
    requests: int

    def describe(self) -> str:
        how = ("next-token logprobs" + (", with a grammar for labels outside the top-k" if self.grammar else "")
               if self.scoring == "logprobs" else "constrained answers (the server returns no logprobs)")
        probs = ", ".join(f"{label} {p:.2f}" for label, p in self.probs.items())
        lines = [f"Connected to {self.base_url}: it lists {_names(self.models) if self.models else 'no models'}.",
                 f"Model: {self.model}; context {self.n_ctx:,} tokens; {self.prompt_format} route; labels scored "
                 f"from {how}.",
                 f"A test classification (\"{PROBE_TEXT}\") took {self.latency_s:.1f} s and {self.requests} "
                 f"request(s): {self.label} ({probs})."]
        if self.scoring != "logprobs":
            lines.append("Warning: without logprobs every answer gets probability 1.0, so the per-label "
                         "probabilities in the results carry no information.")
        return "\n".join(lines)


def check_student_server(settings: RunSettings, api_key: str | None) -> StudentServerCheck:
    """List the student server's models, set up the server-backed student as a run would, classify one text."""
    from .openai_student import OpenAIHttp, OpenAIStudent

    base_url = settings.student_base_url or ""
    key = api_key or secrets.get_api_key("openai", server=base_url)
    http = OpenAIHttp(base_url, key, timeout_s=30.0, max_connections=1, who="The student server")
    try:
        models = _listed_models(http)
    finally:
        http.close()
    with OpenAIStudent(base_url, settings.student_model or None, key, concurrency=1, timeout_s=60.0,
                       prompt_format=settings.student_prompt_format,
                       top_logprobs=settings.student_top_logprobs) as student:
        started = time.perf_counter()
        prediction = student.classify(PROBE_TASK, PROBE_TEXT, list(PROBE_LABELS))
        elapsed = time.perf_counter() - started
        return StudentServerCheck(
            base_url=student.base_url, models=models, model=student.model, scoring=student.scoring,
            grammar=bool(student.grammar), n_ctx=int(student.n_ctx), prompt_format=student.prompt_format,
            label=prediction.label, probs=dict(prediction.probs), latency_s=elapsed,
            requests=int(student.stats()["requests"]))


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} bytes"


def _human_count(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f} B"
    if n >= 1e6:
        return f"{n / 1e6:.0f} M"
    return f"{n:,}"
