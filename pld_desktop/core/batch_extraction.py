"""Phase 1 through a remote batch job (half price, slow): submit, record, poll, merge into the teacher-call cache.

The flow only adds a cheaper way of filling the same cache the synchronous path uses: every reply is stored in
`teacher_calls` under the same request hash, validated against the same schema, and then the ordinary phase 1
(`run_extraction`) stores the micro-rules, finding every answered request in the cache and calling the teacher
synchronously only for what the batch did not answer (invalid replies, per-item errors).

A batch job lives at the provider, not in this process: its name and request hashes are saved in the project as
soon as it is submitted, so a later run (after Ctrl-C, a crash or a restart) polls the same job instead of paying
for the requests again. Cancelling stops the polling, never the job.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from .phases.extraction import PHASE, ExtractionReport, extraction_jobs, run_extraction
from .progress import Cancelled, Progress
from .project import Project
from .protocols import (
    BatchItem,
    BatchStatus,
    BatchTeacher,
    TeacherError,
)
from .settings import RunSettings
from .states import FAILED_BATCH_STATES, BatchState, CallStatus, PhaseState

# The same wording for a rejected reply as the synchronous path records (one message format in the project).
from .teacher_calls import (
    LockedSplitError,
    QuotaExhausted,
    TeacherJob,
    _short_validation_error,
    parse_reply,
    request_hash,
)

BATCH_PRICE_FACTOR = 0.5  # the Gemini Batch API bills half the interactive price


class BatchJobFailed(RuntimeError):
    """A batch job failed, expired or was cancelled at the provider; its requests stay pending for a new attempt."""


@dataclass(frozen=True)
class PollSchedule:
    """Exponential backoff between status checks (a batch job takes minutes to hours)."""

    initial_s: float = 15.0
    factor: float = 1.5
    max_s: float = 300.0

    def delays(self) -> Iterator[float]:
        delay = self.initial_s
        while True:
            yield delay
            delay = min(self.max_s, delay * self.factor)


@dataclass
class BatchExtractionReport:
    submitted: list[str] = field(default_factory=list)  # job names created by this run
    resumed: list[str] = field(default_factory=list)    # job names found in the project and polled
    merged_ok: int = 0
    merged_invalid: int = 0
    merged_errors: int = 0
    polls: int = 0
    extraction: ExtractionReport | None = None


# ---------------------------------------------------------------------------
# The flow
# ---------------------------------------------------------------------------
def run_batch_extraction(project: Project, teacher: BatchTeacher, settings: RunSettings, progress: Progress, *,
                         poll: PollSchedule = PollSchedule()) -> BatchExtractionReport:
    """Phase 1 with the unanswered extraction requests sent as batch job(s), then the ordinary phase 1.

    Raises `Cancelled` (polling stopped; the job keeps running and a rerun resumes polling), `BatchJobFailed`
    (the requests stay pending; a rerun submits them again) or `QuotaExhausted` (submission refused).
    """
    report = BatchExtractionReport()
    train_total = len(project.examples(split="train"))
    jobs = extraction_jobs(project, settings)
    by_hash: dict[str, TeacherJob] = {}
    for job in jobs:
        _guard_locked_split(project, job)
        by_hash.setdefault(request_hash(teacher.model_id, job.request), job)
    answered = {h for h in by_hash if project.cached_teacher_reply(h) is not None}

    open_batches = []
    for batch in project.teacher_batches(PHASE, open_only=True):
        if batch["model"] != teacher.model_id:
            progress.log(f"Batch job {batch['name']} was submitted for {batch['model']}, not {teacher.model_id}; "
                         "it is left alone (its replies would not match this teacher's requests).", "warning")
            continue
        if not any(h in by_hash and h not in answered for h in project.teacher_batch_requests(batch["id"])):
            # Everything it carries was answered meanwhile (e.g. a synchronous run): no reason to wait for it.
            project.update_teacher_batch(batch["id"], state=BatchState.SUPERSEDED,
                                         message="its requests were answered without it")
            continue
        open_batches.append(batch)
    in_flight = {h for b in open_batches for h in project.teacher_batch_requests(b["id"])}
    report.resumed = [b["name"] for b in open_batches]
    if open_batches:
        progress.log(f"Resuming {len(open_batches)} batch job(s) found in the project: "
                     f"{', '.join(report.resumed)} (nothing is submitted twice).")

    todo = [BatchItem(h, job.request) for h, job in by_hash.items() if h not in answered and h not in in_flight]
    progress.begin("Phase 1: extraction (batch)", train_total)
    project.set_phase(PHASE, PhaseState.RUNNING, train_total - len(jobs), train_total, "")
    for chunk in _chunks(todo, teacher.max_batch_requests, teacher.max_batch_chars):
        if progress.cancelled():
            raise Cancelled("cancelled by the user")
        display_name = f"pld phase 1 ({len(chunk)} requests)"
        try:
            status = teacher.submit_batch(chunk, display_name)
        except TeacherError as exc:
            if exc.quota_exhausted:
                raise QuotaExhausted(f"{exc} Nothing was submitted; a rerun tries again.") from None
            raise BatchJobFailed(f"The batch job could not be submitted: {exc} The requests stay pending; "
                                 "rerun to try again, or run phase 1 without batch mode.") from None
        items = [(item.key, by_hash[item.key].key) for item in chunk]
        batch_id = project.add_teacher_batch(status.name, phase=PHASE, model=teacher.model_id, state=status.state,
                                             items=items)
        report.submitted.append(status.name)
        open_batches.append({"id": batch_id, "name": status.name, "state": status.state})
        progress.log(f"Submitted batch job {status.name} with {len(chunk)} requests at the batch price "
                     f"({BATCH_PRICE_FACTOR:.0%} of the interactive price). Results can take minutes to hours; "
                     "if you stop now, a rerun resumes polling this job.")

    if open_batches:
        already = train_total - len(jobs) + len(answered)
        _poll_until_done(project, teacher, open_batches, by_hash, progress, poll, report, train_total, already)
    report.extraction = run_extraction(project, teacher, settings, progress)
    return report


def _poll_until_done(project: Project, teacher: BatchTeacher, batches: list[dict[str, Any]],
                     by_hash: dict[str, TeacherJob],
                     progress: Progress, poll: PollSchedule, report: BatchExtractionReport, train_total: int,
                     already: int) -> None:
    pending = {b["id"]: b for b in batches}
    failures: list[str] = []
    done_items = 0
    delays = poll.delays()
    while pending:
        for batch_id, batch in list(pending.items()):
            try:
                status = teacher.batch_status(batch["name"])
            except TeacherError as exc:
                if exc.retryable:  # network weather or a busy server: the job is fine, ask again later
                    progress.log(f"Could not check batch job {batch['name']} ({exc}); trying again.", "warning")
                    continue
                status = BatchStatus(batch["name"], BatchState.FAILED, message=str(exc))
            report.polls += 1
            if status.state == BatchState.SUCCEEDED and status.results is not None:
                done_items += _merge(project, teacher, batch_id, status, by_hash, report)
                del pending[batch_id]
            elif status.state in FAILED_BATCH_STATES:
                msg = (f"Batch job {batch['name']} ended as {status.state}"
                       + (f": {status.message}" if status.message else "") + ".")
                project.update_teacher_batch(batch_id, state=status.state, message=msg[:500])
                failures.append(msg)
                del pending[batch_id]
            elif status.state != batch["state"]:
                project.update_teacher_batch(batch_id, state=status.state)
                batch["state"] = status.state
        if not pending:
            break
        delay = next(delays)
        states = ", ".join(f"{b['name']} {b['state']}" for b in pending.values())
        words = f"waiting for the batch job ({states}); next check in {delay:.3g} s"
        progress.report(already + done_items, train_total, words)
        project.set_phase(PHASE, PhaseState.RUNNING, already + done_items, train_total, words[:500])
        if _wait(delay, progress):
            names = ", ".join(b["name"] for b in pending.values())
            progress.log(f"Stopped polling. The batch job(s) {names} keep running at the provider (not cancelled); "
                         "rerun phase 1 in batch mode to resume polling and merge the results.", "warning")
            project.set_phase(PHASE, PhaseState.CANCELLED, already + done_items, train_total,
                              f"Polling stopped; batch job(s) {names} keep running; rerun to resume."[:500])
            raise Cancelled("stopped polling; the batch job keeps running and a rerun resumes it")
    if failures:
        message = (" ".join(failures) + " Its requests stay pending: rerun to submit them in a new batch job, "
                                        "or run phase 1 without batch mode.")
        project.set_phase(PHASE, PhaseState.FAILED, already + done_items, train_total, message[:500])
        raise BatchJobFailed(message)


def _wait(seconds: float, progress: Progress) -> bool:
    """Sleep `seconds` in short steps; True as soon as the user cancels."""
    end = time.monotonic() + seconds
    while True:
        if progress.cancelled():
            return True
        left = end - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(0.2, left))


def _merge(project: Project, teacher: BatchTeacher, batch_id: int, status: BatchStatus,
           by_hash: dict[str, TeacherJob], report: BatchExtractionReport) -> int:
    """Validate a finished job's replies and record them as teacher calls, in one transaction."""
    price_in, price_out = teacher.price_per_million
    sent = project.teacher_batch_requests(batch_id)
    order = list(sent)
    calls = []
    for index, result in enumerate(status.results or []):
        if not result.key and index < len(order):
            result.key = order[index]  # no metadata echoed: the output keeps the order of the input
        job = by_hash.get(result.key)
        if result.key not in sent or job is None:
            # Answered meanwhile (e.g. a synchronous run) or the request changed since (task or labels edited).
            continue
        if project.cached_teacher_reply(result.key) is not None:
            continue
        request = job.request
        fields = {"request_hash": result.key, "kind": request.kind, "model": teacher.model_id,
                  "example_id": job.example_ids[0] if len(job.example_ids) == 1 else None,
                  "request_json": json.dumps({"model": teacher.model_id, "kind": request.kind,
                                              "system": request.system, "user": request.user,
                                              "schema": request.schema.model_json_schema(), "batch": status.name},
                                             ensure_ascii=False),
                  "attempt": 1, "latency_s": 0.0}  # a per-item latency means nothing inside a batch job
        if result.reply is None:
            fields.update(status=CallStatus.ERROR, error=(result.error or "no reply in the batch output")[:1000])
            report.merged_errors += 1
        else:
            u = result.reply.usage
            cost = BATCH_PRICE_FACTOR * (u.prompt_tokens * price_in + (u.output_tokens + u.thoughts_tokens)
                                         * price_out) / 1e6
            fields.update(response_text=result.reply.text, prompt_tokens=u.prompt_tokens,
                          output_tokens=u.output_tokens, thoughts_tokens=u.thoughts_tokens,
                          total_tokens=u.total_tokens, cost_usd=cost)
            try:
                parse_reply(result.reply.text, request.schema)
                fields.update(status=CallStatus.OK)
                report.merged_ok += 1
            except (ValidationError, ValueError) as exc:
                fields.update(status=CallStatus.INVALID, error=_short_validation_error(exc))
                report.merged_invalid += 1
        calls.append(fields)
    missing = len(sent) - len(status.results or [])
    if missing > 0:
        report.merged_errors += missing  # left unanswered: retried synchronously by phase 1
    project.merge_teacher_batch(batch_id, calls)
    return sum(1 for c in calls if c["status"] == CallStatus.OK)


def _chunks(items: Sequence[BatchItem], max_requests: int, max_chars: int) -> list[list[BatchItem]]:
    out: list[list[BatchItem]] = []
    current: list[BatchItem] = []
    size = 0
    for item in items:
        n = len(item.request.system) + len(item.request.user) + 2000  # + schema and JSON framing
        if current and (len(current) >= max_requests or size + n > max_chars):
            out.append(current)
            current, size = [], 0
        current.append(item)
        size += n
    if current:
        out.append(current)
    return out


def _guard_locked_split(project: Project, job: TeacherJob) -> None:
    splits = project.split_of(job.example_ids) if job.example_ids else {}
    leaked = [i for i, s in splits.items() if s == "test"]
    if leaked:
        raise LockedSplitError(f"refusing to send test-split examples {leaked[:5]} to the teacher")


def batch_summary(project: Project, phase: int = PHASE) -> list[dict[str, Any]]:
    """The batch jobs of a phase as plain dicts (for `pld status` and the GUI)."""
    return [{k: b[k] for k in ("name", "state", "n_requests", "merged", "message", "created_at", "updated_at")}
            for b in project.teacher_batches(phase)]

