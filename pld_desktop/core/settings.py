"""Run settings: every default the method leaves open, saved in the project so a run is reproducible."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .prompts import DEFAULT_TASK


@dataclass
class RunSettings:
    # The task as the student reads it (editable).
    task: str = DEFAULT_TASK
    seed: int = 13
    # Teacher
    teacher: str = "local"                # "local" (bundled SmolLM2 or a GGUF) | "gemini" | "openai" (a server)
    teacher_model: str = "gemini-2.5-flash"
    teacher_gguf: str | None = None       # None -> bundled SmolLM2-135M-Instruct
    teacher_base_url: str | None = None   # Gemini endpoint override (tests, proxies)
    teacher_concurrency: int = 8
    teacher_openai_base_url: str | None = None  # an OpenAI-compatible server (Ollama, vLLM, LM Studio, llama.cpp)
    teacher_openai_model: str = ""
    teacher_batch: bool = False           # phase 1 through Gemini Batch (half price, minutes to hours)
    batch_poll_initial_s: float = 15.0
    batch_poll_max_s: float = 300.0
    teacher_max_attempts: int = 3         # validation retries per item before it is recorded as failed
    price_in_per_million: float = 0.30    # USD, user-editable price table for the remote teacher
    price_out_per_million: float = 2.50
    # Student
    student_gguf: str | None = None       # None -> bundled Gemma 3 270M
    student_n_ctx: int = 4096
    student_threads: int | None = None
    student_backend: str = "llama"        # "llama" (in-process GGUF) | "openai" (an OpenAI-compatible server)
    student_base_url: str | None = None   # e.g. http://127.0.0.1:8080/v1
    student_model: str | None = None      # None -> the first model the server lists
    student_concurrency: int = 4
    student_prompt_format: str = "completion"  # "completion" (exact, like the in-process student) | "chat"
    student_top_logprobs: int = 20        # 20 is OpenAI/vLLM's cap; llama.cpp servers accept more
    # Embedder
    embedder: str | None = None           # None -> bundled all-MiniLM-L6-v2
    # Phase 2: synthesis
    dbscan_eps: float = 0.4
    dbscan_min_samples: int = 6
    merge_max_members: int = 40           # micro-rules shown to the teacher per cluster
    conflict_similarity: float = 0.80     # consolidated rules closer than this with different labels conflict
    fire_similarity: float = 0.60         # a rule "fires" on a training item whose micro-rule is this close
    # Phase 3: closed loop
    loop_sample_size: int = 60
    loop_max_failures: int = 20
    loop_max_successes: int = 20
    loop_max_iterations: int = 5
    loop_patience: int = 2
    loop_min_delta: float = 0.005
    # Phase 4: evaluation
    few_shot_k: int = 5
    max_test_examples: int | None = None  # None -> the whole test split
    label_meanings: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> RunSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})


def load_settings(project: Any) -> RunSettings:
    return RunSettings.from_json(project.get_setting("run_settings"))


def save_settings(project: Any, settings: RunSettings) -> None:
    project.set_setting("run_settings", settings.to_json())
