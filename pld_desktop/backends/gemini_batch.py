"""The Gemini Batch API as a `BatchTeacher`: inline requests in one job, polled by name, half the price."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

from google.genai import errors, types

from pld_desktop.backends.gemini_teacher import _TRANSPORT_ERRORS, GeminiTeacher
from pld_desktop.core.protocols import BatchItem, BatchItemResult, BatchStatus, TeacherError, TeacherReply
from pld_desktop.core.states import BatchState

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# google-genai reports JOB_STATE_*; the core speaks short words (stored in the project as they are).
_STATES = {
    "JOB_STATE_QUEUED": BatchState.PENDING, "JOB_STATE_PENDING": BatchState.PENDING,
    "JOB_STATE_UNSPECIFIED": BatchState.PENDING,
    "JOB_STATE_RUNNING": BatchState.RUNNING, "JOB_STATE_UPDATING": BatchState.RUNNING,
    "JOB_STATE_PAUSED": BatchState.RUNNING, "JOB_STATE_CANCELLING": BatchState.RUNNING,
    "JOB_STATE_SUCCEEDED": BatchState.SUCCEEDED, "JOB_STATE_PARTIALLY_SUCCEEDED": BatchState.SUCCEEDED,
    "JOB_STATE_FAILED": BatchState.FAILED, "JOB_STATE_CANCELLED": BatchState.CANCELLED,
    "JOB_STATE_EXPIRED": BatchState.EXPIRED,
}


class GeminiBatchTeacher(GeminiTeacher):
    """A GeminiTeacher that can also submit phase-1 requests as one Batch API job.

    Same `model_id` as the interactive teacher, so replies land in the same request-hash cache; `generate`
    (inherited) retries synchronously what the batch did not answer. Batch replies cost half the price.
    """

    # Inline requests travel in one HTTP body, which the API caps at 20 MB; stay well below it.
    max_batch_requests = 2000
    max_batch_chars = 8_000_000

    def submit_batch(self, items: Sequence[BatchItem], display_name: str) -> BatchStatus:
        if not items:
            raise ValueError("a batch job needs at least one request")
        requests = [types.InlinedRequest(model=self.model, contents=item.request.user, metadata={"key": item.key},
                                         config=self._batch_config(item)) for item in items]
        job = self._batch_call(lambda: self._client.batches.create(
            model=self.model, src=requests, config=types.CreateBatchJobConfig(display_name=display_name)),
            "submit the batch job")
        if not job.name:
            raise self._error("Gemini accepted the batch job but returned no job name.", retryable=False)
        log.info("gemini batch job %s submitted: %d requests", job.name, len(items))
        return self._status(job, [item.key for item in items])

    def batch_status(self, name: str) -> BatchStatus:
        job = self._batch_call(lambda: self._client.batches.get(name=name), f"check batch job {name}",
                               not_found=f"Gemini has no batch job {name} (it was deleted or has expired).")
        return self._status(job, None)

    # ------------------------------------------------------------------
    def _batch_config(self, item: BatchItem) -> types.GenerateContentConfig:
        # The same generation settings as `generate`, so a batch reply and a synchronous one are interchangeable.
        return types.GenerateContentConfig(
            system_instruction=item.request.system,
            response_mime_type="application/json",
            response_schema=item.request.schema,
            temperature=self.temperature,
            thinking_config=self._thinking_config(),
        )

    def _batch_call(self, call: Callable[[], _T], what: str, *, not_found: str | None = None) -> _T:
        if self._closed:
            raise TeacherError("The Gemini teacher is closed.", retryable=False)
        try:
            return call()
        except errors.APIError as exc:
            if not_found is not None and int(exc.code or 0) == 404:
                raise self._error(not_found, retryable=False, status=404) from None
            mapped = self._api_error(exc)
            raise self._error(f"Could not {what}: {mapped}", retryable=mapped.retryable,
                              quota_exhausted=mapped.quota_exhausted, status=mapped.status) from None
        except errors.UnknownApiResponseError as exc:
            raise self._error(f"Could not {what}: Gemini sent a reply that is not valid JSON "
                              f"({exc.__class__.__name__}).", retryable=True) from None
        except _TRANSPORT_ERRORS as exc:
            raise self._transport_error(exc) from None
        except ValueError as exc:
            raise self._error(f"Could not {what}: {exc}", retryable=False) from None

    def _status(self, job: types.BatchJob, keys: Sequence[str] | None) -> BatchStatus:
        raw_state = str(getattr(job.state, "value", job.state) or "JOB_STATE_UNSPECIFIED")
        state = _STATES.get(raw_state, BatchState.PENDING)
        message = ""
        if job.error is not None and (job.error.message or job.error.code):
            message = self._error(f"{job.error.code or ''} {job.error.message or ''}".strip()).args[0]
        results = None
        if state == BatchState.SUCCEEDED:
            inlined = (job.dest.inlined_responses if job.dest is not None else None) or []
            results = [self._result(n, r) for n, r in enumerate(inlined)]
        return BatchStatus(name=job.name or "", state=state, results=results, message=message)

    def _result(self, index: int, item: types.InlinedResponse) -> BatchItemResult:
        # The request hash comes back in the metadata; without it the core matches replies by position.
        key = (item.metadata or {}).get("key", "")
        if item.error is not None:
            return BatchItemResult(key, None, self._error(
                f"Gemini could not answer request {index + 1} of the batch "
                f"({item.error.code or ''} {item.error.message or ''}).".replace("( ", "(")).args[0])
        if item.response is None:
            return BatchItemResult(key, None, f"Gemini sent no reply for request {index + 1} of the batch.")
        try:
            text, finish_reason = self._reply_text(item.response)
        except TeacherError as exc:
            return BatchItemResult(key, None, str(exc))
        usage = self._usage(item.response)
        return BatchItemResult(key, TeacherReply(text=text, usage=usage, latency_s=0.0,
                                                 model=item.response.model_version or self.model,
                                                 finish_reason=finish_reason))
