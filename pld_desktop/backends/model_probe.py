"""Will a GGUF run here? Its memory need at the project's context size, and seconds per example measured with
the project's current rule prompt on the in-process student."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.progress import Cancelled, Progress
from .model_store import FoundModel, MemoryEstimate, describe_file, memory_estimate

__all__ = ["ProbeResult", "probe_model"]

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
