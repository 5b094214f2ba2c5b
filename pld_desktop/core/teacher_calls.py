"""Cached, validated, concurrent teacher calls: every attempt is recorded in the project file.

The phases describe *what* to ask (a `TeacherJob`); this module decides whether a call is needed
(request-content cache), runs the calls concurrently, validates each reply against its pydantic schema,
retries invalid replies, records every attempt, and stops cleanly on cancel or exhausted quota.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from pydantic import BaseModel, ValidationError

from .backends import Teacher, TeacherError, TeacherReply, TeacherRequest
from .progress import Cancelled, Progress
from .project import Project


class QuotaExhausted(Exception):
    """The remote teacher's quota is used up: the run stopped cleanly and can be resumed later."""


class LockedSplitError(RuntimeError):
    """A test-split example was about to be sent to the teacher. This is a bug, never a user error."""


@dataclass(frozen=True)
class TeacherJob:
    key: str                          # the phase's own item key (e.g. "example:17", "cluster:4")
    request: TeacherRequest
    example_ids: tuple[int, ...] = ()  # every example whose text is in the request (checked: no test rows)


@dataclass
class TeacherOutcome:
    key: str
    parsed: BaseModel | None
    call_id: int | None
    cached: bool
    error: str | None = None


@dataclass
class _Attempt:
    reply: TeacherReply | None
    error: TeacherError | None
    parsed: BaseModel | None
    invalid_reason: str | None


@dataclass
class BatchStats:
    cached: int = 0
    called: int = 0
    failed: int = 0
    attempts: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)


def request_hash(model_id: str, request: TeacherRequest) -> str:
    payload = {"model": model_id, "kind": request.kind, "system": request.system, "user": request.user,
               "schema": request.schema.model_json_schema()}
    if request.grammar_patterns:
        payload["grammar_patterns"] = [list(p) for p in request.grammar_patterns]
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


_FENCE = re.compile(r"^\s*```(?:json)?\s*(.*?)\s*```\s*$", re.S)


def parse_reply(text: str, schema: type[BaseModel]) -> BaseModel:
    """Validate a reply against its schema (tolerating a markdown code fence around the JSON)."""
    match = _FENCE.match(text or "")
    return schema.model_validate_json(match.group(1) if match else (text or ""))


def _short_validation_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "reply"
        return f"reply does not match the schema ({where}: {first.get('msg', 'invalid')})"
    return f"reply is not valid JSON ({exc})"


# Finish reasons meaning the output token bound was hit (local/OpenAI, Gemini): such a reply is retried, never
# stored, even when what arrived happens to parse.
_CUT_FINISH_REASONS = frozenset({"length", "MAX_TOKENS", "FinishReason.MAX_TOKENS"})


class _CutReply(ValueError):
    """A reply that hit the output bound."""


def _run_job(teacher: Teacher, request: TeacherRequest, max_attempts: int, progress: Progress) -> list[_Attempt]:
    """Worker-thread body: call, validate, retry invalid replies with the validation error appended."""
    attempts: list[_Attempt] = []
    current = request
    for _ in range(max_attempts):
        if progress.cancelled():
            break
        try:
            reply = teacher.generate(current)
        except TeacherError as exc:
            attempts.append(_Attempt(None, exc, None, None))
            if exc.quota_exhausted or not exc.retryable:
                break
            continue
        try:
            if reply.finish_reason in _CUT_FINISH_REASONS:
                raise _CutReply("the reply reached the length limit and may be cut; write a shorter, complete "
                                "reply")
            parsed = parse_reply(reply.text, request.schema)
        except (ValidationError, ValueError) as exc:
            reason = str(exc) if isinstance(exc, _CutReply) else _short_validation_error(exc)
            attempts.append(_Attempt(reply, None, None, reason))
            current = TeacherRequest(
                system=request.system, kind=request.kind, schema=request.schema,
                grammar_patterns=request.grammar_patterns,
                user=request.user + f"\n\nYour previous reply was rejected: {reason}. Reply again with JSON only.")
            continue
        attempts.append(_Attempt(reply, None, parsed, None))
        break
    return attempts


def run_teacher_jobs(project: Project, teacher: Teacher, jobs: Sequence[TeacherJob], progress: Progress, *,
                     phase: int, max_attempts: int = 3,
                     on_outcome: Callable[[TeacherOutcome], None] | None = None,
                     done_offset: int = 0, total: int | None = None) -> tuple[dict[str, TeacherOutcome], BatchStats]:
    """Run `jobs` against the teacher, reusing cached replies; call `on_outcome` (on this thread) per item.

    Writes happen on the calling thread only, one commit per completed item. Raises `Cancelled` or
    `QuotaExhausted` after recording everything that finished; a rerun resumes from the cache.
    """
    stats = BatchStats()
    outcomes: dict[str, TeacherOutcome] = {}
    total = total if total is not None else len(jobs)
    done = done_offset
    price_in, price_out = teacher.price_per_million

    def finish(outcome: TeacherOutcome) -> None:
        nonlocal done
        outcomes[outcome.key] = outcome
        if on_outcome is not None:
            on_outcome(outcome)
        done += 1
        progress.report(done, total, outcome.key)

    pending: list[tuple[TeacherJob, str]] = []
    for job in jobs:
        _guard_locked_split(project, job)
        h = request_hash(teacher.model_id, job.request)
        cached = project.cached_teacher_reply(h)
        if cached is not None:
            try:
                parsed = parse_reply(cached["response_text"], job.request.schema)
                stats.cached += 1
                finish(TeacherOutcome(job.key, parsed, cached["id"], True))
                continue
            except (ValidationError, ValueError):
                pass  # schema changed since; call again
        pending.append((job, h))

    if not pending:
        return outcomes, stats

    quota_hit: str | None = None
    workers = max(1, int(teacher.max_concurrency))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="teacher") as pool:
        queue = list(pending)
        running: dict[Future[list[_Attempt]], tuple[TeacherJob, str]] = {}
        while queue or running:
            while queue and len(running) < workers and not progress.cancelled() and quota_hit is None:
                job, h = queue.pop(0)
                running[pool.submit(_run_job, teacher, job.request, max_attempts, progress)] = (job, h)
            if not running:
                break
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED, timeout=0.5)
            for fut in finished:
                job, h = running.pop(fut)
                attempts = fut.result()
                stats.called += 1
                outcome = _record_attempts(project, teacher, job, h, attempts, price_in, price_out, stats, phase)
                if outcome is None:  # cancelled before the first attempt
                    continue
                if any(a.error is not None and a.error.quota_exhausted for a in attempts):
                    quota_hit = str(next(a.error for a in attempts if a.error is not None))
                finish(outcome)
            if (progress.cancelled() or quota_hit) and not running:
                break
    if quota_hit is not None:
        raise QuotaExhausted(f"{quota_hit} The run stopped; completed items are saved and a rerun resumes.")
    if progress.cancelled():
        raise Cancelled("cancelled by the user")
    return outcomes, stats


def _guard_locked_split(project: Project, job: TeacherJob) -> None:
    if not job.example_ids:
        return
    splits = project.split_of(job.example_ids)
    leaked = [i for i, s in splits.items() if s == "test"]
    if leaked:
        raise LockedSplitError(f"refusing to send test-split examples {leaked[:5]} to the teacher")


def _record_attempts(project: Project, teacher: Teacher, job: TeacherJob, h: str, attempts: list[_Attempt],
                     price_in: float, price_out: float, stats: BatchStats, phase: int) -> TeacherOutcome | None:
    if not attempts:
        return None
    request_json = json.dumps({"model": teacher.model_id, "kind": job.request.kind, "system": job.request.system,
                               "user": job.request.user, "schema": job.request.schema.model_json_schema()},
                              ensure_ascii=False)
    last_id: int | None = None
    example_id = job.example_ids[0] if len(job.example_ids) == 1 else None
    for n, att in enumerate(attempts, 1):
        stats.attempts += 1
        fields: dict[str, Any] = {"request_hash": h, "kind": job.request.kind, "model": teacher.model_id,
                                  "example_id": example_id, "request_json": request_json, "attempt": n}
        if att.reply is not None:
            u = att.reply.usage
            cost = (u.prompt_tokens * price_in + (u.output_tokens + u.thoughts_tokens) * price_out) / 1e6
            fields.update(response_text=att.reply.text, prompt_tokens=u.prompt_tokens, output_tokens=u.output_tokens,
                          thoughts_tokens=u.thoughts_tokens, total_tokens=u.total_tokens, cost_usd=cost,
                          latency_s=att.reply.latency_s,
                          status="ok" if att.parsed is not None else "invalid", error=att.invalid_reason)
        else:
            fields.update(status="error", error=str(att.error))
        last_id = project.record_teacher_call(**fields)
    final = attempts[-1]
    if final.parsed is not None:
        return TeacherOutcome(job.key, final.parsed, last_id, False)
    reason = final.invalid_reason or str(final.error) or "unknown error"
    stats.failed += 1
    stats.failures.append((job.key, reason))
    project.record_failure(phase, job.key, reason)
    return TeacherOutcome(job.key, None, last_id, False, error=reason)


def now() -> float:
    return time.time()
