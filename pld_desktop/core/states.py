"""The states of phases, runs, teacher calls, evaluations and batch jobs, as the words the project file stores.

Each enum is a `StrEnum`: a member *is* its string, so it is written to and compared with the project file's
columns unchanged (old project files open as they are), while code names the states instead of typing them out.
Values read back from the file stay plain strings; compare them with the members (`row["status"] == CallStatus.OK`).
"""

from __future__ import annotations

from enum import StrEnum


class PhaseState(StrEnum):
    """`phases.state`: where one of the four phases stands."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"      # stopped by the user; resumable
    PAUSED = "paused"            # stopped because the teacher's quota ran out; resumable
    # Shown, never stored: a phase left "running" by a process that died, and a phase with no row yet.
    INTERRUPTED = "interrupted"
    NOT_STARTED = "not started"


# Phase states a rerun continues from (the Start button reads "Resume").
RESUMABLE_PHASE_STATES = frozenset({PhaseState.CANCELLED, PhaseState.PAUSED, PhaseState.FAILED, PhaseState.RUNNING,
                                    PhaseState.INTERRUPTED})


class RunStatus(StrEnum):
    """`runs.status` and a pipeline report's outcome."""

    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"
    QUOTA_EXHAUSTED = "quota_exhausted"
    INTERRUPTED = "interrupted"  # a run left "running" by a crash, marked when the next run starts


class CallStatus(StrEnum):
    """`teacher_calls.status`: one attempt of one teacher request (the file's CHECK constraint allows these)."""

    OK = "ok"            # a reply that matches the schema (reused by every later run)
    INVALID = "invalid"  # a reply that does not parse or fails the checks
    ERROR = "error"      # no reply: the call itself failed


class EvaluationStatus(StrEnum):
    """`evaluations.status`: one prompt scored on one set of examples."""

    RUNNING = "running"
    DONE = "done"


class BatchState(StrEnum):
    """`teacher_batches.state`: a batch job at the provider, in the core's words."""

    SUBMITTED = "submitted"
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"  # stored only: a job replaced by a new one for the same requests


OPEN_BATCH_STATES = (BatchState.SUBMITTED, BatchState.PENDING, BatchState.RUNNING)
FAILED_BATCH_STATES = (BatchState.FAILED, BatchState.CANCELLED, BatchState.EXPIRED)
