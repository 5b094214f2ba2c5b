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
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from .progress import Cancelled, Progress
from .project import Project
from .protocols import Teacher, TeacherError, TeacherReply, TeacherRequest
from .states import CallStatus


class QuotaExhausted(Exception):
    """The remote teacher's quota is used up: the run stopped cleanly and can be resumed later."""


class LockedSplitError(RuntimeError):
    """A test-split example was about to be sent to the teacher. This is a bug, never a user error."""


# A content check on a schema-valid reply: None when the reply is usable, else the reason (sent back to the
# teacher as feedback on the retry, and recorded with the attempt).
ReplyCheck = Callable[[BaseModel], "str | None"]

# Finish reasons meaning "the reply hit the output bound" (Gemini, OpenAI-compatible servers, llama.cpp).
CUT_FINISH_REASONS = frozenset({"MAX_TOKENS", "FinishReason.MAX_TOKENS", "length", "max_tokens"})
CUT_REPLY = "the reply hit the output length bound"  # how cut_reason's reason begins


@dataclass(frozen=True)
class TeacherJob:
    key: str                          # the phase's own item key (e.g. "example:17", "cluster:4")
    request: TeacherRequest
    example_ids: tuple[int, ...] = ()  # every example whose text is in the request (checked: no test rows)
    check: ReplyCheck | None = None   # hard content rules beyond the schema (off-label, useless rewrite...)
    # Soft rules (a copied example, a meaning that is not words): retried like `check`, but a reply that still
    # fails them after the last attempt is kept, flagged with the reason, instead of being a failed item.
    soft_check: ReplyCheck | None = None


@dataclass
class TeacherOutcome:
    key: str
    parsed: BaseModel | None
    call_id: int | None
    cached: bool
    error: str | None = None
    flag: str | None = None      # set when a kept reply still fails its soft check
    attempts: int = 0            # teacher attempts this outcome took (0 when cached or given up earlier)


@dataclass
class _Attempt:
    reply: TeacherReply | None
    error: TeacherError | None
    parsed: BaseModel | None
    invalid_reason: str | None
    checked: BaseModel | None = None  # schema-valid but failed the soft check (kept, flagged, when out of attempts)


@dataclass
class BatchStats:
    cached: int = 0
    called: int = 0
    failed: int = 0
    attempts: int = 0
    given_up: int = 0            # items given up in an earlier run and not retried (see retry_failed)
    failures: list[tuple[str, str]] = field(default_factory=list)


def request_hash(model_id: str, request: TeacherRequest) -> str:
    payload: dict[str, Any] = {"model": model_id, "kind": request.kind, "system": request.system, "user": request.user,
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


def cut_reason(reply: TeacherReply) -> str | None:
    """Why a reply must not be stored: it hit the output bound (finish reason or the adapter's truncation flag)."""
    if reply.finish_reason in CUT_FINISH_REASONS or reply.truncated:
        return (f"{CUT_REPLY} (finish reason {reply.finish_reason or 'truncated'}) "
                "and was cut; write one complete, shorter sentence")
    return None


def _run_job(teacher: Teacher, request: TeacherRequest, max_attempts: int, progress: Progress,
             check: ReplyCheck | None = None, soft_check: ReplyCheck | None = None) -> list[_Attempt]:
    """Worker-thread body: call, validate, retry invalid, cut or check-failing replies with the reason appended."""
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
        checked: BaseModel | None = None
        try:
            reason = cut_reason(reply)
            if reason is None:
                parsed = parse_reply(reply.text, request.schema)
                reason = check(parsed) if check is not None else None
                if reason is None and soft_check is not None:
                    reason = soft_check(parsed)
                    checked = parsed if reason is not None else None
        except (ValidationError, ValueError) as exc:
            reason = _short_validation_error(exc)
        if reason is not None:
            attempts.append(_Attempt(reply, None, None, reason, checked))
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

    Writes happen on the calling thread only, one commit per completed item (its recorded attempts together
    with what `on_outcome` writes). Raises `Cancelled` or
    `QuotaExhausted` after recording everything that finished; a rerun resumes from the cache. A request
    given up in an earlier run (all attempts invalid or failed) is not sent again: a rerun costs nothing and
    reports the same figures; `pipeline.retry_failed_items` (``pld run --retry-failed``) lifts that.
    """
    run = _TeacherRun(project, teacher, progress, phase, max_attempts, on_outcome, done_offset,
                      total if total is not None else len(jobs))
    pending = run.answer_from_cache(jobs)
    if pending:
        quota_hit = run.call(pending)
        if quota_hit is not None:
            raise QuotaExhausted(f"{quota_hit} The run stopped; completed items are saved and a rerun resumes.")
        if progress.cancelled():
            raise Cancelled("cancelled by the user")
    return run.outcomes, run.stats


class _TeacherRun:
    """One run_teacher_jobs call in named steps: answer what the cache can, then call the teacher for the rest
    on a thread pool, recording each finished item in one commit on this thread."""

    def __init__(self, project: Project, teacher: Teacher, progress: Progress, phase: int, max_attempts: int,
                 on_outcome: Callable[[TeacherOutcome], None] | None, done: int, total: int) -> None:
        self.project, self.teacher, self.progress = project, teacher, progress
        self.phase, self.max_attempts, self.on_outcome = phase, max_attempts, on_outcome
        self.done, self.total = done, total
        self.stats = BatchStats()
        self.outcomes: dict[str, TeacherOutcome] = {}
        self.price_in, self.price_out = teacher.price_per_million

    def finish(self, outcome: TeacherOutcome, stored: bool = False) -> None:
        self.outcomes[outcome.key] = outcome
        if self.on_outcome is not None and not stored:
            self.on_outcome(outcome)
        self.done += 1
        self.progress.report(self.done, self.total, outcome.key)

    def answer_from_cache(self, jobs: Sequence[TeacherJob]) -> list[tuple[TeacherJob, str]]:
        """Finish every job a cached reply still answers, and every request given up earlier; return the rest
        with their request hashes."""
        pending: list[tuple[TeacherJob, str]] = []
        given_up = self.project.given_up_requests()
        for job in jobs:
            _guard_locked_split(self.project, job)
            h = request_hash(self.teacher.model_id, job.request)
            outcome = self._cached_outcome(job, h)
            if outcome is not None:
                self.stats.cached += 1
                self.finish(outcome)
            elif h in given_up:
                self.stats.given_up += 1
                self.finish(TeacherOutcome(job.key, None, None, True, error=given_up[h].get("reason", "given up")))
            else:
                pending.append((job, h))
        return pending

    def _cached_outcome(self, job: TeacherJob, h: str) -> TeacherOutcome | None:
        cached = self.project.cached_teacher_reply(h)
        if cached is None:
            return None
        try:
            parsed = parse_reply(cached["response_text"], job.request.schema)
            if job.check is not None and job.check(parsed) is not None:
                return None
            flag = job.soft_check(parsed) if job.soft_check is not None else None
        except (ValidationError, ValueError):
            return None  # schema or checks changed since; call again
        return TeacherOutcome(job.key, parsed, cached["id"], True, flag=flag)

    def call(self, pending: list[tuple[TeacherJob, str]]) -> str | None:
        """Call the teacher for `pending` on the teacher's concurrency; stop submitting on cancel or an exhausted
        quota (whose message is returned), and wait for what is running."""
        quota_hit: str | None = None
        workers = max(1, int(self.teacher.max_concurrency))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="teacher") as pool:
            queue = list(pending)
            running: dict[Future[list[_Attempt]], tuple[TeacherJob, str]] = {}
            while queue or running:
                while queue and len(running) < workers and not self.progress.cancelled() and quota_hit is None:
                    job, h = queue.pop(0)
                    running[pool.submit(_run_job, self.teacher, job.request, self.max_attempts, self.progress,
                                        job.check, job.soft_check)] = (job, h)
                if not running:
                    break
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED, timeout=0.5)
                for fut in finished:
                    job, h = running.pop(fut)
                    quota_hit = self._record(job, h, fut.result()) or quota_hit
                if (self.progress.cancelled() or quota_hit) and not running:
                    break
        return quota_hit

    def _record(self, job: TeacherJob, h: str, attempts: list[_Attempt]) -> str | None:
        """Record one finished item in one commit (its attempts, failure marks and the phase's own write);
        returns the quota message when an attempt found the quota exhausted."""
        self.stats.called += 1
        with self.project.transaction():
            outcome = _record_attempts(self.project, self.teacher, job, h, attempts, self.price_in, self.price_out,
                                       self.stats, self.phase, self.max_attempts)
            if outcome is not None and self.on_outcome is not None:
                self.on_outcome(outcome)
        if outcome is None:  # cancelled before the first attempt
            return None
        self.finish(outcome, stored=True)
        exhausted = next((a.error for a in attempts if a.error is not None and a.error.quota_exhausted), None)
        return str(exhausted) if exhausted is not None else None


def _guard_locked_split(project: Project, job: TeacherJob) -> None:
    if not job.example_ids:
        return
    splits = project.split_of(job.example_ids)
    leaked = [i for i, s in splits.items() if s == "test"]
    if leaked:
        raise LockedSplitError(f"refusing to send test-split examples {leaked[:5]} to the teacher")


def _record_attempts(project: Project, teacher: Teacher, job: TeacherJob, h: str, attempts: list[_Attempt],
                     price_in: float, price_out: float, stats: BatchStats, phase: int,
                     max_attempts: int = 1) -> TeacherOutcome | None:
    if not attempts:
        return None
    request_json = json.dumps({"model": teacher.model_id, "kind": job.request.kind, "system": job.request.system,
                               "user": job.request.user, "schema": job.request.schema.model_json_schema()},
                              ensure_ascii=False)
    last_id: int | None = None
    example_id = job.example_ids[0] if len(job.example_ids) == 1 else None
    final = attempts[-1]
    if final.checked is not None:
        # Out of attempts but schema-valid: keep the reply (status ok, so a rerun reuses it), flagged.
        attempts[-1] = final = _Attempt(final.reply, None, final.checked, final.invalid_reason)
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
                          status=CallStatus.OK if att.parsed is not None else CallStatus.INVALID,
                          error=att.invalid_reason)
        else:
            fields.update(status=CallStatus.ERROR, error=str(att.error))
        last_id = project.record_teacher_call(**fields)
    if final.parsed is not None:
        return TeacherOutcome(job.key, final.parsed, last_id, False, flag=final.invalid_reason,
                              attempts=len(attempts))
    reason = final.invalid_reason or str(final.error) or "unknown error"
    stats.failed += 1
    stats.failures.append((job.key, reason))
    project.record_failure(phase, job.key, reason)
    exhausted = len(attempts) >= max_attempts or (final.error is not None and not final.error.retryable)
    if exhausted and not (final.error is not None and final.error.quota_exhausted):
        # Given up: a rerun does not send it again (zero calls, stable figures) unless asked to retry.
        project.mark_given_up(h, phase, job.key, reason)
    return TeacherOutcome(job.key, None, last_id, False, error=reason, attempts=len(attempts))


def now() -> float:
    return time.time()
