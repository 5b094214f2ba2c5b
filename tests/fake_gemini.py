"""A scriptable fake of the Gemini REST API on 127.0.0.1 for tests that drive the real google-genai client."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

REDACTED = "***"
DEFAULT_MODEL_VERSION = "gemini-2.5-flash"


# ---------------------------------------------------------------------------
# Scripted responses and recorded requests
# ---------------------------------------------------------------------------
@dataclass
class FakeResponse:
    """One scripted HTTP answer. `body` is JSON-encoded unless it is bytes or str (sent as is)."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # sleep before answering (interrupted when the server stops)
    content_type: str = "application/json; charset=UTF-8"

    def encoded(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        if self.body is None:
            return b""
        return json.dumps(self.body).encode("utf-8")


# What a responder or route handler may return: a FakeResponse, a dict (200 JSON body), or None (fall through).
ResponseLike = FakeResponse | dict | None
Responder = Callable[[Any], ResponseLike]


@dataclass
class RecordedRequest:
    """One request as the server saw it; the API key is replaced by *** (`had_key` says whether one was sent)."""

    method: str
    path: str  # without the query string
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or None when the body was empty / not JSON
    raw_body: bytes
    had_key: bool
    key_matched: bool | None  # None when the server has no `expected_key`
    model: str | None = None  # from /v1beta/models/<model>:<action>
    action: str | None = None
    time: float = 0.0  # time.monotonic() on arrival

    @property
    def system_text(self) -> str:
        """The concatenated systemInstruction text of a generateContent body ("" when absent)."""
        parts = ((self.body or {}).get("systemInstruction") or {}).get("parts") or []
        return "".join(p.get("text", "") for p in parts)

    @property
    def user_text(self) -> str:
        """The concatenated text of all `contents` parts of a generateContent body."""
        contents = (self.body or {}).get("contents") or []
        return "".join(p.get("text", "") for c in contents for p in c.get("parts") or [])

    @property
    def generation_config(self) -> dict[str, Any]:
        return (self.body or {}).get("generationConfig") or {}


# ---------------------------------------------------------------------------
# Body and response builders
# ---------------------------------------------------------------------------
def usage_metadata(prompt_tokens: int = 10, output_tokens: int = 5, *, thoughts_tokens: int | None = None,
                   cached_tokens: int | None = None) -> dict[str, Any]:
    usage: dict[str, Any] = {"promptTokenCount": prompt_tokens, "candidatesTokenCount": output_tokens}
    if thoughts_tokens is not None:
        usage["thoughtsTokenCount"] = thoughts_tokens
    if cached_tokens is not None:
        usage["cachedContentTokenCount"] = cached_tokens
    usage["totalTokenCount"] = prompt_tokens + output_tokens + (thoughts_tokens or 0)
    return usage


def success_body(text: Any, *, prompt_tokens: int = 10, output_tokens: int = 5,
                 thoughts_tokens: int | None = None, cached_tokens: int | None = None,
                 finish_reason: str = "STOP", model_version: str = DEFAULT_MODEL_VERSION) -> dict[str, Any]:
    """A generateContent reply whose only part is `text` (a dict/list is JSON-encoded first)."""
    if not isinstance(text, str):
        text = json.dumps(text)
    return {
        "candidates": [{
            "content": {"role": "model", "parts": [{"text": text}]},
            "finishReason": finish_reason,
            "index": 0,
        }],
        "usageMetadata": usage_metadata(prompt_tokens, output_tokens, thoughts_tokens=thoughts_tokens,
                                        cached_tokens=cached_tokens),
        "modelVersion": model_version,
        "responseId": "fake-response",
    }


def success(text: Any, **kwargs: Any) -> FakeResponse:
    """200 with `success_body(text, **kwargs)`."""
    return FakeResponse(200, success_body(text, **kwargs))


def error_body(code: int, status: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Google's JSON error envelope."""
    err: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        err["details"] = details
    return {"error": err}


def error(code: int, status: str, message: str, *, details: list[dict[str, Any]] | None = None,
          headers: dict[str, str] | None = None, delay_s: float = 0.0) -> FakeResponse:
    return FakeResponse(code, error_body(code, status, message, details), dict(headers or {}), delay_s)


def quota_exhausted(*, retry_after: float | None = None, per_day: bool = False) -> FakeResponse:
    """429 RESOURCE_EXHAUSTED as the Gemini API sends it (optionally with Retry-After / a daily quota id)."""
    quota_id = ("GenerateRequestsPerDayPerProjectPerModel-FreeTier" if per_day
                else "GenerateRequestsPerMinutePerProjectPerModel-FreeTier")
    details = [{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
                "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                                "quotaId": quota_id}]}]
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = f"{retry_after:g}"
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{retry_after:g}s"})
    return error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota).",
                 details=details, headers=headers)


def server_error() -> FakeResponse:
    return error(500, "INTERNAL", "An internal error has occurred. Please retry or report in "
                                  "https://developers.generativeai.google/guide/troubleshooting")


def unavailable() -> FakeResponse:
    return error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")


def bad_request(message: str = "Invalid JSON payload received.") -> FakeResponse:
    return error(400, "INVALID_ARGUMENT", message)


def api_key_invalid() -> FakeResponse:
    """What Google really sends for a wrong key: 400 INVALID_ARGUMENT with reason API_KEY_INVALID."""
    return error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                 details=[{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                           "domain": "googleapis.com"}])


def unauthenticated() -> FakeResponse:
    return error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")


def permission_denied() -> FakeResponse:
    return error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers (callers without "
                                           "established identity). Please use API Key or other form of API "
                                           "consumer identity to call this API.")


def model_not_found(model: str = "gemini-nope") -> FakeResponse:
    return error(404, "NOT_FOUND", f"models/{model} is not found for API version v1beta, or is not supported "
                                   "for generateContent.")


def safety_blocked(reason: str = "SAFETY") -> FakeResponse:
    """The prompt itself was blocked: no candidates, `promptFeedback.blockReason` set."""
    return FakeResponse(200, {
        "promptFeedback": {"blockReason": reason, "safetyRatings": [
            {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}]},
        "usageMetadata": {"promptTokenCount": 10, "totalTokenCount": 10},
        "modelVersion": DEFAULT_MODEL_VERSION,
    })


def candidate_blocked(finish_reason: str = "SAFETY") -> FakeResponse:
    """The reply was stopped: one candidate without content, finishReason SAFETY / RECITATION / ..."""
    return FakeResponse(200, {
        "candidates": [{"finishReason": finish_reason, "index": 0}],
        "usageMetadata": {"promptTokenCount": 10, "totalTokenCount": 10},
        "modelVersion": DEFAULT_MODEL_VERSION,
    })


def empty_candidates() -> FakeResponse:
    return FakeResponse(200, {"candidates": [], "usageMetadata": {"promptTokenCount": 10, "totalTokenCount": 10},
                              "modelVersion": DEFAULT_MODEL_VERSION})


def truncated_json(value: Any = None) -> FakeResponse:
    """A JSON text cut off mid-way, finishReason MAX_TOKENS."""
    text = json.dumps(value if value is not None else {"label": "positive", "reason": "long explanation " * 4})
    return success(text[: len(text) // 2], finish_reason="MAX_TOKENS")


INVALID_JSON_TEXT = '{"label": "positive", reason: not quoted}'


def invalid_json(text: str = INVALID_JSON_TEXT) -> FakeResponse:
    return success(text)


def raw(status: int, body: bytes | str, *, content_type: str = "text/html; charset=UTF-8",
        headers: dict[str, str] | None = None) -> FakeResponse:
    """A non-JSON answer, e.g. a proxy's HTML 502 page."""
    return FakeResponse(status, body, dict(headers or {}), content_type=content_type)


def _not_scripted(request: RecordedRequest) -> FakeResponse:
    return error(500, "INTERNAL", f"fake gemini: no scripted response for {request.method} {request.path}")


# ---------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------
# A route handler gets the server, the recorded request and the path's regex match.
RouteHandler = Callable[["FakeGemini", RecordedRequest, "re.Match[str]"], ResponseLike]

class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog of 5 drops simultaneous connects, and the client's SYN retry costs 1 s.
    request_queue_size = 128


_MODEL_ACTION = re.compile(r"^/(?P<version>v1(?:alpha|beta)?)/models/(?P<model>[^/:]+):(?P<action>[A-Za-z]+)$")


class FakeGemini:
    """A fake Gemini API server. Answers `POST /{v1,v1beta}/models/<model>:generateContent` (google-genai 3.3
    uses v1 by default, 2.x used v1beta) from, in order:
    the queue (`enqueue`), the `responder(request_json)`, the `default` response; otherwise a 500.

    Other endpoints (batches, files, ...) can be added with `add_route`.
    """

    def __init__(self, *, expected_key: str | None = None, host: str = "127.0.0.1") -> None:
        self.expected_key = expected_key  # when set, a wrong/missing key gets Google's API_KEY_INVALID reply
        self.responder: Responder | None = None
        self.default: FakeResponse | None = None
        self._queue: deque[FakeResponse] = deque()
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._routes: list[tuple[str, re.Pattern[str], RouteHandler]] = []
        self._host = host
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None
        self.add_route("POST", _MODEL_ACTION, FakeGemini._generate_content_route)

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> FakeGemini:
        handler = type("_BoundHandler", (_Handler,), {"fake": self})
        self._httpd = _Server((self._host, 0), handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-gemini", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> FakeGemini:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        """Pass as `HttpOptions(base_url=...)`; the client appends `<api_version>/models/...`."""
        return f"http://{self._host}:{self.port}/"

    # -- scripting ---------------------------------------------------------
    def enqueue(self, *responses: FakeResponse | dict) -> None:
        """Answer the next requests with these, in order (a dict is a 200 JSON body)."""
        with self._lock:
            self._queue.extend(_as_response(r) for r in responses)

    def always(self, response: FakeResponse | dict) -> None:
        """Answer every request that the queue and responder leave over with `response` (e.g. 429 forever)."""
        self.default = _as_response(response)

    def add_route(self, method: str, pattern: str | re.Pattern[str], handler: RouteHandler) -> None:
        """Serve another endpoint. Routes added later are tried first; a handler returning None falls through."""
        self._routes.insert(0, (method.upper(), re.compile(pattern), handler))

    def reset(self) -> None:
        """Forget the script and the recorded requests."""
        with self._lock:
            self._queue.clear()
            self._requests.clear()
        self.responder = None
        self.default = None

    # -- inspection --------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of all requests received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def pending(self) -> int:
        """How many queued responses have not been used yet."""
        with self._lock:
            return len(self._queue)

    # -- internals ---------------------------------------------------------
    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _next_scripted(self, request: RecordedRequest) -> FakeResponse:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        if self.responder is not None:
            answer = _as_response(self.responder(request.body))
            if answer is not None:
                return answer
        if self.default is not None:
            return self.default
        return _not_scripted(request)

    def _generate_content_route(self, request: RecordedRequest, match: re.Match[str]) -> ResponseLike:
        if match.group("action") != "generateContent":
            return None
        return self._next_scripted(request)

    def _dispatch(self, request: RecordedRequest) -> FakeResponse:
        if self.expected_key is not None and not request.key_matched:
            return api_key_invalid() if request.had_key else permission_denied()
        for method, pattern, handler in self._routes:
            match = pattern.match(request.path)
            if method == request.method and match:
                answer = _as_response(handler(self, request, match))
                if answer is not None:
                    return answer
        return error(404, "NOT_FOUND", f"fake gemini: no route for {request.method} {request.path}")

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless the server stops first; True when it stopped."""
        return self._stopping.wait(seconds) if seconds > 0 else False


def _as_response(value: ResponseLike) -> FakeResponse | None:
    if value is None or isinstance(value, FakeResponse):
        return value
    if isinstance(value, Mapping):
        return FakeResponse(200, dict(value))
    raise TypeError(f"expected FakeResponse, dict or None, got {type(value).__name__}")


class _Handler(BaseHTTPRequestHandler):
    fake: FakeGemini
    protocol_version = "HTTP/1.1"  # keep-alive, as the real API
    # Headers and body go out in two writes; without TCP_NODELAY the client's delayed ACK holds the body back
    # ~40 ms per request (Nagle), which made every fake-server test call take ~48 ms instead of ~2 ms.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        arrived = time.monotonic()
        split = urlsplit(self.path)
        query = dict(parse_qsl(split.query))
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw_body) if raw_body else None
        except ValueError:
            body = None
        key = self.headers.get("x-goog-api-key") or query.get("key")
        headers = {k.lower(): v for k, v in self.headers.items()}
        if "x-goog-api-key" in headers:
            headers["x-goog-api-key"] = REDACTED
        if "key" in query:
            query["key"] = REDACTED
        fake = self.fake
        model_action = _MODEL_ACTION.match(split.path)
        request = RecordedRequest(
            method=self.command, path=split.path, query=query, headers=headers, body=body, raw_body=raw_body,
            had_key=bool(key), key_matched=None if fake.expected_key is None else key == fake.expected_key,
            model=model_action.group("model") if model_action else None,
            action=model_action.group("action") if model_action else None, time=arrived)
        fake._record(request)
        response = fake._dispatch(request)
        if fake._sleep(response.delay_s):
            self.close_connection = True
            return
        payload = response.encoded()
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in response.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle


# ---------------------------------------------------------------------------
# Batch API (google-genai: POST models/<m>:batchGenerateContent, GET batches/<id>, POST batches/<id>:cancel)
# ---------------------------------------------------------------------------
_BATCH_CREATE = r"^/v1(?:alpha|beta)?/models/(?P<model>[^/:]+):batchGenerateContent$"
_BATCH_GET = r"^/v1(?:alpha|beta)?/batches/(?P<id>[^/:]+)$"
_BATCH_CANCEL = r"^/v1(?:alpha|beta)?/batches/(?P<id>[^/:]+):cancel$"
_BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"


@dataclass
class FakeBatchJob:
    name: str
    model: str
    display_name: str
    inlined: list[dict[str, Any]]  # the inlinedResponses, computed at creation by the server's canned responder
    polls: int = 0
    state: str = "BATCH_STATE_PENDING"


class FakeBatches:
    """Batch endpoints on a FakeGemini (see `enable_batches`). Every field may be changed while a test runs."""

    def __init__(self, server: FakeGemini, *, pending_polls: int = 2, fail_state: str | None = None,
                 echo_metadata: bool = True) -> None:
        self.server = server
        self.pending_polls = pending_polls  # GETs answered PENDING/RUNNING before the job ends
        self.fail_state = fail_state        # e.g. "BATCH_STATE_FAILED" / "BATCH_STATE_EXPIRED" instead of success
        self.echo_metadata = echo_metadata  # the real API echoes each request's metadata; False tests the fallback
        self.create_error: FakeResponse | None = None  # answer the next create with this (e.g. quota_exhausted())
        self.jobs: dict[str, FakeBatchJob] = {}
        self.creates = 0
        self.gets = 0
        self.cancels = 0
        self.inner_requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        server.add_route("POST", _BATCH_CREATE, lambda srv, req, m: self._create(req, m))
        server.add_route("GET", _BATCH_GET, lambda srv, req, m: self._get(m.group("id")))
        server.add_route("POST", _BATCH_CANCEL, lambda srv, req, m: self._cancel(m.group("id")))

    def _create(self, request: RecordedRequest, match: re.Match[str]) -> ResponseLike:
        with self._lock:
            self.creates += 1
            if self.create_error is not None:
                answer, self.create_error = self.create_error, None
                return answer
        batch = (request.body or {}).get("batch") or {}
        items = ((batch.get("inputConfig") or {}).get("requests") or {}).get("requests") or []
        inlined = []
        for item in items:
            inner_body = item.get("request") or {}
            inner = RecordedRequest(method="POST", path=request.path, query={}, headers={}, body=inner_body,
                                    raw_body=b"", had_key=request.had_key, key_matched=request.key_matched,
                                    model=match.group("model"), action="generateContent", time=time.monotonic())
            with self._lock:
                self.inner_requests.append(inner)
            answer = self.server._next_scripted(inner)
            out: dict[str, Any] = {}
            if answer.status == 200:
                out["response"] = json.loads(answer.encoded())
            else:
                err = (json.loads(answer.encoded() or b"{}") or {}).get("error") or {}
                out["error"] = {"code": err.get("code", answer.status), "message": err.get("message", "error")}
            if self.echo_metadata and item.get("metadata") is not None:
                out["metadata"] = item["metadata"]
            inlined.append(out)
        with self._lock:
            name = f"batches/fake{len(self.jobs) + 1:04d}"
            job = FakeBatchJob(name, f"models/{match.group('model')}", batch.get("displayName", ""), inlined)
            self.jobs[name] = job
        return self._job_body(job)

    def _get(self, job_id: str) -> ResponseLike:
        with self._lock:
            self.gets += 1
            job = self.jobs.get(f"batches/{job_id}")
            if job is None:
                return error(404, "NOT_FOUND", f"Batch batches/{job_id} not found.")
            job.polls += 1
            if job.state in ("BATCH_STATE_PENDING", "BATCH_STATE_RUNNING"):
                if job.polls > self.pending_polls:
                    job.state = self.fail_state or "BATCH_STATE_SUCCEEDED"
                elif job.polls > 1:
                    job.state = "BATCH_STATE_RUNNING"
            return self._job_body(job)

    def _cancel(self, job_id: str) -> ResponseLike:
        with self._lock:
            self.cancels += 1
            job = self.jobs.get(f"batches/{job_id}")
            if job is None:
                return error(404, "NOT_FOUND", f"Batch batches/{job_id} not found.")
            job.state = "BATCH_STATE_CANCELLED"
            return {}

    @staticmethod
    def _job_body(job: FakeBatchJob) -> dict[str, Any]:
        metadata: dict[str, Any] = {"@type": _BATCH_TYPE, "name": job.name, "model": job.model,
                                    "displayName": job.display_name, "state": job.state,
                                    "createTime": "2026-11-28T10:00:00Z", "updateTime": "2026-11-28T10:00:01Z",
                                    "batchStats": {"requestCount": str(len(job.inlined))}}
        body: dict[str, Any] = {"name": job.name, "metadata": metadata}
        if job.state == "BATCH_STATE_SUCCEEDED":
            output = {"inlinedResponses": {"inlinedResponses": job.inlined}}
            metadata["output"] = output
            body["done"] = True
            body["response"] = {"@type": _BATCH_TYPE, **output}
        elif job.state in ("BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED", "BATCH_STATE_EXPIRED"):
            body["done"] = True
            body["error"] = {"code": 13, "message": f"fake gemini: the batch ended as {job.state}"}
        return body


def enable_batches(server: FakeGemini, *, pending_polls: int = 2, fail_state: str | None = None,
                   echo_metadata: bool = True) -> FakeBatches:
    """Serve the Batch API on `server`: inline replies come from its queue/responder/default, like generateContent."""
    return FakeBatches(server, pending_polls=pending_polls, fail_state=fail_state, echo_metadata=echo_metadata)


__all__ = [
    "INVALID_JSON_TEXT",
    "FakeBatchJob",
    "FakeBatches",
    "FakeGemini",
    "FakeResponse",
    "RecordedRequest",
    "api_key_invalid",
    "bad_request",
    "candidate_blocked",
    "empty_candidates",
    "enable_batches",
    "error",
    "error_body",
    "invalid_json",
    "model_not_found",
    "permission_denied",
    "quota_exhausted",
    "raw",
    "safety_blocked",
    "server_error",
    "success",
    "success_body",
    "truncated_json",
    "unauthenticated",
    "unavailable",
    "usage_metadata",
]
