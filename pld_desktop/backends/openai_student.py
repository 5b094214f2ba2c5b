"""The student on an OpenAI-compatible server (llama.cpp server, vLLM, Ollama, LM Studio): labels scored from logprobs.

The label is scored, not generated, as in `llama_student`: P(label) is the probability that decoding constrained to
the label set writes that label. Over HTTP the model's distribution is only visible as the top-k `logprobs` of the
next token (as text pieces, not token ids), so the scorer walks the same tree as `LabelSpace.score` over text
pieces: at each state where several labels are still possible it reads the next-token logprobs, keeps the pieces
that continue some label, renormalises them (the restricted softmax of grammar-constrained decoding) and follows
the ambiguous branches. Where a label's leading piece is not among the top k, a server that takes a GBNF `grammar`
(llama.cpp's servers) is asked once more with the grammar forcing that label: the sampled token's logprob is always
reported, so the label still gets its own score. Servers without logprobs fall back to grammar- or JSON-schema-
constrained generation; the chosen label then gets probability 1.0 and the identity says so.

Two prompt routes: "completion" sends the exact student prompt (`student_user_message`, the label after a space)
to /v1/completions, as `LlamaStudent` does for a GGUF without a chat template, and continues a partial label by
appending it to the prompt; "chat" sends it as the user turn to /v1/chat/completions (the server's chat template),
and continues a partial label through a grammar that forces it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

try:  # google-genai ships httpx2 (a namespaced httpx fork); plain httpx works the same where installed
    import httpx2 as httpx
except ImportError:  # pragma: no cover - depends on the environment
    import httpx  # type: ignore[no-redef]  # the same API under its own name

from pld_desktop.backends import secrets
from pld_desktop.backends.label_search import label_mass
from pld_desktop.core.prompts import student_user_message
from pld_desktop.core.protocols import ModelIdentity, Prediction, PromptTooLong
from pld_desktop.core.settings_check import server_url_fault

__all__ = ["OpenAIHttp", "OpenAIServerError", "OpenAIStudent", "gbnf_literal", "normalise_base_url"]

log = logging.getLogger(__name__)

_SERVER_MESSAGE_MAX = 400
# Server messages that mean "the prompt does not fit" (llama-cpp-python, llama.cpp, vLLM, OpenAI).
_CONTEXT_MARKERS = ("exceed context window", "context window", "maximum context length", "context_length_exceeded",
                    "too many tokens", "exceeds the available context")
_GRAMMAR_PROBE = " zq7"  # a text no model writes by chance: if the reply is exactly this, the grammar was applied


# ---------------------------------------------------------------------------
# HTTP plumbing shared with the OpenAI-compatible teacher
# ---------------------------------------------------------------------------
class OpenAIServerError(RuntimeError):
    """A request to an OpenAI-compatible server failed. The message is in words and never holds the API key."""

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False,
                 retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s


def normalise_base_url(base_url: str) -> str:
    """The API base that "/chat/completions" is appended to. "http://host:8080" becomes "http://host:8080/v1"
    (the usual place); a URL with a path ("https://api.example.com/openai/v1") is kept as given."""
    fault = server_url_fault(base_url)
    if fault:
        raise ValueError(fault)
    url = base_url.strip().rstrip("/")
    parts = urlsplit(url)
    return url if parts.path not in ("", "/") else url + "/v1"


def gbnf_literal(text: str) -> str:
    """`text` as a GBNF string literal."""
    out = []
    for ch in text:
        if ch in ('"', "\\"):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


class OpenAIHttp:
    """A thread-safe JSON client for one OpenAI-compatible server (httpx's pool is shared by all threads)."""

    def __init__(self, base_url: str, api_key: str | None, *, timeout_s: float, max_connections: int,
                 who: str = "The server") -> None:
        self.base_url = normalise_base_url(base_url)
        # Non-OpenAI extras (tokenize, props) live at the server root, next to /v1.
        self.root = self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url
        self.who = who
        key = (api_key or "").strip()
        self._secrets = (key,) if key else ()
        if key:
            secrets.protect_in_logs(key)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(timeout=timeout_s, headers=headers,
                                    limits=httpx.Limits(max_connections=max(1, max_connections) + 2))
        self.timeout_s = timeout_s

    def redact(self, text: str) -> str:
        return secrets.redact(text, self._secrets)

    def get(self, path: str, *, at_root: bool = False, timeout_s: float | None = None) -> Any:
        return self._request("GET", path, None, at_root, timeout_s)

    def post(self, path: str, body: dict[str, Any], *, at_root: bool = False,
             timeout_s: float | None = None) -> Any:
        return self._request("POST", path, body, at_root, timeout_s)

    def _request(self, method: str, path: str, body: dict[str, Any] | None, at_root: bool,
                 timeout_s: float | None) -> Any:
        url = (self.root if at_root else self.base_url) + path
        kwargs: dict[str, Any] = {"json": body} if body is not None else {}
        if timeout_s is not None:
            kwargs["timeout"] = timeout_s
        try:
            response = self._client.request(method, url, **kwargs)
        except httpx.TimeoutException as exc:
            raise OpenAIServerError(self.redact(
                f"{self.who} at {self.base_url} did not answer within {timeout_s or self.timeout_s:g} s "
                f"({type(exc).__name__})."), retryable=True) from None
        except httpx.HTTPError as exc:  # connection refused, DNS, protocol errors ...
            name = type(exc).__name__
            raise OpenAIServerError(self.redact(
                f"Could not reach {self.who.lower()} at {self.base_url} ({name}: {exc}). Is it running?"),
                retryable=name not in ("UnsupportedProtocol", "LocalProtocolError")) from None
        if response.status_code >= 400:
            raise self._status_error(method, path, response)
        try:
            return response.json()
        except ValueError:
            raise OpenAIServerError(self.redact(
                f"{self.who} at {self.base_url} sent a reply to {path} that is not JSON "
                f"(HTTP {response.status_code})."), status=response.status_code, retryable=True) from None

    def _status_error(self, method: str, path: str, response: Any) -> OpenAIServerError:
        code = int(response.status_code)
        said = server_message(response)
        retry_after = None
        try:
            retry_after = float(response.headers.get("retry-after", ""))
        except ValueError:
            pass
        said_text = f" The server said: {said}" if said else ""
        return OpenAIServerError(
            self.redact(f"{self.who} at {self.base_url} answered {method} {path} with HTTP {code}.{said_text}"),
            status=code, retryable=code in (408, 409, 429) or code >= 500, retry_after_s=retry_after)

    def close(self) -> None:
        self._client.close()


def server_message(response: Any) -> str:
    """The error text of an OpenAI-style ({"error": {"message"}}), FastAPI ({"detail"}) or plain reply, shortened."""
    try:
        body = response.json()
    except ValueError:
        body = response.text
    message: Any = body
    if isinstance(body, dict):
        error = body.get("error", body.get("detail", body.get("message", body)))
        message = error.get("message", error) if isinstance(error, dict) else error
    text = " ".join(str(message).split())
    return text[:_SERVER_MESSAGE_MAX] + "..." if len(text) > _SERVER_MESSAGE_MAX else text


# ---------------------------------------------------------------------------
# Scoring over text pieces
# ---------------------------------------------------------------------------
Distribution = Callable[[tuple[bytes, ...], bytes, list[str]], "dict[bytes, float] | None"]


def score_pieces(labels: Sequence[str], prefix: str, next_logprobs: Distribution, *, min_branch_prob: float = 3e-3,
                 max_evaluations: int = 8) -> tuple[dict[str, float], int, float]:
    """`LabelSpace.score` over text pieces. `next_logprobs(path, written, consistent)` returns the logprobs of the
    observed next pieces after the prompt plus `path` (b"" stands for "end of answer"), or None when that state
    cannot be read. Returns (probabilities, evaluations, dropped mass)."""
    spelled = {label: (prefix + label).encode("utf-8") for label in labels}
    by_text = {text: label for label, text in spelled.items()}

    def expand(path: tuple[Any, ...], written: bytes, alive: list[str]) -> list[tuple[bytes, bytes, float]]:
        seen = next_logprobs(path, written, alive)
        steps = []
        for piece, logprob in (seen or {}).items():
            if piece == b"":
                if written in by_text:
                    steps.append((piece, piece, logprob))
            elif any(spelled[label][len(written):].startswith(piece) for label in alive):
                steps.append((piece, piece, logprob))
        return steps

    return label_mass(spelled, expand, min_branch_prob=min_branch_prob, max_evaluations=max_evaluations,
                      who="server")


def _piece_bytes(entry: dict[str, Any]) -> bytes:
    raw = entry.get("bytes")
    if isinstance(raw, list) and all(isinstance(b, int) for b in raw):
        return bytes(raw)
    return str(entry.get("token", "")).encode("utf-8")


# ---------------------------------------------------------------------------
# The student
# ---------------------------------------------------------------------------
class OpenAIStudent:
    """The Student protocol on an OpenAI-compatible server.

    `prompt_format`: "completion" (exact student prompt on /v1/completions; right for a GGUF without a chat
    template, like the bundled Gemma 3 270M) or "chat" (the server applies its chat template).
    `scoring`: "auto" (logprobs if the server returns them, else constrained generation), "logprobs" or
    "constrained". `top_logprobs`: how many next-token logprobs to ask for (OpenAI and vLLM cap it at 20;
    llama.cpp servers take more, which makes the scores closer to the in-process student's).

    Thread contract: every public method may be called from any thread at once; `classify_many` runs up to
    `concurrency` requests in parallel.
    """

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None, *,
                 concurrency: int = 4, timeout_s: float = 120.0, n_ctx: int | None = None,
                 prompt_format: str = "completion", scoring: str = "auto", top_logprobs: int = 20,
                 min_branch_prob: float = 3e-3, max_evaluations: int = 8) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if prompt_format not in ("completion", "chat"):
            raise ValueError(f"prompt_format must be 'completion' or 'chat', not {prompt_format!r}")
        if scoring not in ("auto", "logprobs", "constrained"):
            raise ValueError(f"scoring must be 'auto', 'logprobs' or 'constrained', not {scoring!r}")
        if top_logprobs < 1:
            raise ValueError("top_logprobs must be at least 1")
        self._http = OpenAIHttp(base_url, api_key, timeout_s=timeout_s, max_connections=concurrency,
                                who="The student server")
        self.base_url = self._http.base_url
        self.concurrency = concurrency
        self.prompt_format = prompt_format
        self.top_logprobs = top_logprobs
        self.min_branch_prob = min_branch_prob
        self.max_evaluations = max_evaluations
        # The label follows "Label:" after a space in the raw prompt, and starts the reply in a chat turn.
        self.label_prefix = " " if prompt_format == "completion" else ""
        self._tokenizer: str | None = None
        self._bos_tokens = 0
        self._lock = threading.Lock()
        self._counters = {"requests": 0, "classifications": 0, "forced": 0, "dropped_mass": 0.0}
        try:
            entry = self._find_model(model)
            self.model: str = str(entry.get("id"))
            props = self._props()
            self.grammar = self._probe_grammar()
            self.scoring = self._probe_logprobs() if scoring == "auto" else scoring
            if self.scoring == "constrained" and not self.grammar and prompt_format == "completion":
                log.info("%s takes no grammar: constrained answers use JSON schema on the chat route", self.base_url)
            self.n_ctx: int = int(n_ctx or _discovered_n_ctx(entry, props) or 4096)
            self.identity: ModelIdentity = self._identity(entry, props)
        except BaseException:
            self._http.close()
            raise

    # -- set-up ---------------------------------------------------------------------------------------------
    def _find_model(self, wanted: str | None) -> dict[str, Any]:
        listing = self._http.get("/models", timeout_s=min(self._http.timeout_s, 30.0))
        models = [m for m in (listing.get("data") or []) if isinstance(m, dict) and m.get("id")] \
            if isinstance(listing, dict) else []
        if wanted:
            for m in models:
                if m["id"] == wanted:
                    return m
            if models:
                names = ", ".join(str(m["id"]) for m in models[:10])
                raise OpenAIServerError(self._http.redact(
                    f"The student server at {self.base_url} does not serve the model {wanted!r}; it serves: {names}."))
            return {"id": wanted}  # some servers list nothing but accept any name
        if not models:
            raise OpenAIServerError(f"The student server at {self.base_url} lists no models; name the model "
                                    "in Settings > Student.")
        return models[0]

    def _props(self) -> dict[str, Any]:
        """llama.cpp's native server describes itself at /props (model path, context); others have no such page."""
        try:
            props = self._http.get("/props", at_root=True, timeout_s=10.0)
        except OpenAIServerError:
            return {}
        return props if isinstance(props, dict) else {}

    def _probe_grammar(self) -> bool:
        body = self._body(student_user_message("Write one word.", "probe"), max_tokens=4)
        body["grammar"] = "root ::= " + gbnf_literal(_GRAMMAR_PROBE if self.prompt_format == "completion"
                                                     else _GRAMMAR_PROBE.strip())
        try:
            reply = self._post(body)
        except OpenAIServerError as exc:
            if exc.status is not None and 400 <= exc.status < 500:
                return False  # "unknown field grammar"
            raise
        return self._reply_text(reply).strip() == _GRAMMAR_PROBE.strip()

    def _probe_logprobs(self) -> str:
        body = self._body(student_user_message("Write one word.", "probe"), max_tokens=1, logprobs=True)
        try:
            reply = self._post(body)
        except OpenAIServerError as exc:
            if exc.status is not None and 400 <= exc.status < 600 and exc.status != 429:
                log.info("%s refused logprobs (%s); labels will be generated under constraints", self.base_url, exc)
                return "constrained"
            raise
        return "logprobs" if self._entries(reply) else "constrained"

    def _identity(self, entry: dict[str, Any], props: dict[str, Any]) -> ModelIdentity:
        # llama-cpp-python names a model by its file path unless given an alias; llama.cpp gives it in /props.
        candidates = [props.get("model_path"), self.model, entry.get("root")]
        local = next((Path(str(c)) for c in candidates if c and str(c).endswith(".gguf")
                      and Path(str(c)).is_file()), None)
        how = (f"logprobs top-{self.top_logprobs}" + (", grammar" if self.grammar else "")
               if self.scoring == "logprobs" else
               "constrained generation, probability 1.0 for the chosen label (the server gives no logprobs)")
        backend = f"OpenAI-compatible server {self.base_url} ({self.prompt_format} route, {how})"
        if local is not None:
            from pld_desktop.backends.gguf_file import file_sha256  # imports llama_cpp: only when needed
            return ModelIdentity(name=local.name, path=str(local), sha256=file_sha256(local),
                                 size_bytes=local.stat().st_size, backend=backend)
        # No file to hash: the identity is the server, the model name and the scoring, so cached evaluations are
        # reused only for the same served model name (a different model behind the same name is not detected).
        described = json.dumps([self.base_url, self.model, self.prompt_format, self.scoring, self.top_logprobs,
                                {k: entry.get(k) for k in ("root", "created", "owned_by", "meta") if k in entry}],
                               sort_keys=True, default=str)
        name = os.path.basename(self.model.rstrip("/")) or self.model
        return ModelIdentity(name=name, path=f"{self.base_url} model={self.model}",
                             sha256=hashlib.sha256(described.encode("utf-8")).hexdigest(), size_bytes=0,
                             backend=backend)

    # -- requests -------------------------------------------------------------------------------------------
    def _body(self, message: str, *, max_tokens: int, logprobs: bool = False, continuation: str = "",
              chat: bool | None = None) -> dict[str, Any]:
        chat = self.prompt_format == "chat" if chat is None else chat
        body: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens, "temperature": 0.0}
        if chat:
            body["messages"] = [{"role": "user", "content": message}]
            if logprobs:
                body.update(logprobs=True, top_logprobs=self.top_logprobs)
        else:
            body["prompt"] = message + continuation
            if logprobs:
                body["logprobs"] = self.top_logprobs
        return body

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        path = "/chat/completions" if "messages" in body else "/completions"
        with self._lock:
            self._counters["requests"] += 1
        try:
            reply = self._http.post(path, body)
        except OpenAIServerError as exc:
            if exc.status is not None and 400 <= exc.status < 600 and any(
                    marker in str(exc).lower() for marker in _CONTEXT_MARKERS):
                raise PromptTooLong(f"The prompt does not fit the student's context ({exc!s}). Shorten the "
                                    "rules or raise the server's context size.") from None
            raise
        if not isinstance(reply, dict) or not reply.get("choices"):
            raise OpenAIServerError(f"The student server at {self.base_url} sent a reply without choices.",
                                    retryable=True)
        return reply

    @staticmethod
    def _reply_text(reply: dict[str, Any]) -> str:
        choice = reply["choices"][0]
        if "message" in choice:
            return str((choice.get("message") or {}).get("content") or "")
        return str(choice.get("text") or "")

    @staticmethod
    def _entries(reply: dict[str, Any]) -> list[tuple[bytes, dict[bytes, float]]]:
        """Per generated token: (its piece, {piece: logprob} of the top alternatives and the token itself)."""
        logprobs = reply["choices"][0].get("logprobs") or {}
        out: list[tuple[bytes, dict[bytes, float]]] = []
        if isinstance(logprobs.get("content"), list):  # chat format
            for item in logprobs["content"]:
                top: dict[bytes, float] = {}
                for alt in item.get("top_logprobs") or []:
                    top.setdefault(_piece_bytes(alt), float(alt["logprob"]))
                piece = _piece_bytes(item)
                if item.get("logprob") is not None:
                    top.setdefault(piece, float(item["logprob"]))
                out.append((piece, top))
        elif isinstance(logprobs.get("top_logprobs"), list):  # text-completion format
            tokens = logprobs.get("tokens") or []
            sampled = logprobs.get("token_logprobs") or []
            for i, alternatives in enumerate(logprobs["top_logprobs"]):
                top = {str(k).encode("utf-8"): float(v) for k, v in (alternatives or {}).items()}
                piece = str(tokens[i]).encode("utf-8") if i < len(tokens) else b""
                if i < len(sampled) and sampled[i] is not None:
                    top.setdefault(piece, float(sampled[i]))
                out.append((piece, top))
        return [(piece, top) for piece, top in out if top]

    def _read_state(self, message: str, path: tuple[bytes, ...], written: bytes,
                    alive: list[str]) -> dict[bytes, float] | None:
        """The next-token logprobs after the prompt plus `path`; with a grammar, labels whose leading piece is
        missing from the top k get one forced request each."""
        try:
            written_text = written.decode("utf-8")
        except UnicodeDecodeError:
            return None  # a partial character: cannot be sent as text
        spelled = {label: (self.label_prefix + label).encode("utf-8") for label in alive}
        seen = self._state_request(message, path, written_text, None)
        if seen is None:
            return None
        if not self.grammar:
            return seen
        for label in alive:
            rest = spelled[label][len(written):]
            reached = any(piece and rest.startswith(piece) for piece in seen) or (not rest and b"" in seen)
            if reached or not rest:
                continue
            with self._lock:
                self._counters["forced"] += 1
            forced = self._state_request(message, path, written_text, rest.decode("utf-8", errors="ignore"),
                                         sampled_only=True)
            for piece, logprob in (forced or {}).items():
                seen.setdefault(piece, logprob)
        return seen

    def _state_request(self, message: str, path: tuple[bytes, ...], written_text: str, force: str | None, *,
                       sampled_only: bool = False) -> dict[bytes, float] | None:
        if self.prompt_format == "completion":
            body = self._body(message, max_tokens=1, logprobs=True, continuation=written_text)
            if force is not None:
                body["grammar"] = "root ::= " + gbnf_literal(force)
            entries = self._entries(self._post(body))
            if not entries:
                return None
            piece, top = entries[0]
            return {piece: top[piece]} if sampled_only else top
        # Chat: the reply cannot be pre-filled, so a grammar forces the path's text and the state is the next
        # token; the server's own tokenization of the forced text must match the path, or the state is unread.
        if (path or force is not None) and not self.grammar:
            return None
        body = self._body(message, max_tokens=len(path) + 1, logprobs=True)
        if path or force is not None:
            body["grammar"] = "root ::= " + gbnf_literal(written_text + (force or "")) + (
                "" if force is not None else " [^\\x00]*")
        entries = self._entries(self._post(body))
        if len(entries) <= len(path) or tuple(piece for piece, _ in entries[:len(path)]) != path:
            return None
        piece, top = entries[len(path)]
        return {piece: top[piece]} if sampled_only else top

    def _constrained(self, message: str, labels: Sequence[str]) -> str:
        if self.grammar:
            body = self._body(message, max_tokens=64)
            body["grammar"] = "root ::= " + " | ".join(gbnf_literal(self.label_prefix + label) for label in labels)
            text = self._reply_text(self._post(body))
            if text.strip() in labels:
                return text.strip()
        schema = {"type": "object", "properties": {"label": {"type": "string", "enum": list(labels)}},
                  "required": ["label"], "additionalProperties": False}
        body = self._body(message, max_tokens=128, chat=True)
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "label", "strict": True, "schema": schema}}
        text = self._reply_text(self._post(body))
        try:
            label = json.loads(text).get("label")
        except (ValueError, AttributeError):
            label = None
        if label not in labels:
            shown = text if len(text) < 120 else text[:120] + "..."
            raise OpenAIServerError(f"The student server at {self.base_url} answered {shown!r}, which is not one "
                                    f"of the labels ({', '.join(labels)}); it may not support constrained output.")
        return str(label)

    # -- Student protocol -----------------------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        """Tokens of `text` by the server's tokenizer (llama-cpp-python /extras/tokenize, llama.cpp or vLLM
        /tokenize); a server without a tokenize endpoint gets a conservative estimate of one token per 3 bytes."""
        if self._tokenizer is None:
            self._pick_tokenizer()
        if self._tokenizer == "extras":
            reply = self._http.post("/extras/tokenize", {"input": text, "model": self.model}, at_root=True)
            return max(0, len(reply.get("tokens") or []) - self._bos_tokens)
        if self._tokenizer == "llama.cpp":
            reply = self._http.post("/tokenize", {"content": text}, at_root=True)
            return len(reply.get("tokens") or [])
        if self._tokenizer == "vllm":
            reply = self._http.post("/tokenize", {"model": self.model, "prompt": text,
                                                  "add_special_tokens": False}, at_root=True)
            return int(reply.get("count", len(reply.get("tokens") or [])))
        return math.ceil(len(text.encode("utf-8")) / 3)

    def _pick_tokenizer(self) -> None:
        attempts: list[tuple[str, str, dict[str, Any]]] = [
            ("extras", "/extras/tokenize", {"input": "", "model": self.model}),
            ("llama.cpp", "/tokenize", {"content": ""}),
            ("vllm", "/tokenize", {"model": self.model, "prompt": "", "add_special_tokens": False}),
        ]
        for name, path, body in attempts:
            try:
                reply = self._http.post(path, body, at_root=True, timeout_s=15.0)
            except OpenAIServerError:
                continue
            if isinstance(reply, dict) and isinstance(reply.get("tokens"), list):
                # llama-cpp-python's endpoint adds BOS: "" tokenizes to [BOS], which count_tokens subtracts.
                self._bos_tokens = len(reply["tokens"]) if name == "extras" else 0
                self._tokenizer = name
                return
        self._tokenizer = "estimate"

    def check_fits(self, system_prompt: str, longest_input: str, labels: Sequence[str]) -> None:
        message = student_user_message(system_prompt, longest_input)
        # BOS, plus the chat template's markup on the chat route (a generous bound: templates add ~5-20 tokens).
        overhead = 1 if self.prompt_format == "completion" else 32
        longest_label = max((self.count_tokens(self.label_prefix + label) for label in labels), default=0)
        needed = self.count_tokens(message) + overhead + longest_label
        if needed > self.n_ctx:
            raise PromptTooLong(f"The prompt needs about {needed} tokens but the student's context is {self.n_ctx} "
                                "tokens. Shorten the rules or raise the context size (Settings > Student).")

    def classify(self, system_prompt: str, text: str, labels: Sequence[str]) -> Prediction:
        labels = list(labels)
        if not labels:
            raise ValueError("The student needs at least one label.")
        if len(set(labels)) != len(labels):
            raise ValueError("Duplicate labels: " + ", ".join(sorted({x for x in labels if labels.count(x) > 1})))
        started = time.perf_counter()
        message = student_user_message(system_prompt, text)
        if self.scoring == "constrained":
            chosen = self._constrained(message, labels)
            probs = {label: 1.0 if label == chosen else 0.0 for label in labels}
        else:
            probs, _evaluations, dropped = score_pieces(
                labels, self.label_prefix, lambda path, written, alive: self._read_state(message, path, written,
                                                                                         alive),
                min_branch_prob=self.min_branch_prob, max_evaluations=self.max_evaluations)
            if dropped > 0.5:
                log.warning("student server: %.0f%% of the label probability could not be read for one input; "
                            "the labels were mostly outside the top %d logprobs", 100 * dropped, self.top_logprobs)
            with self._lock:
                self._counters["dropped_mass"] += dropped
        with self._lock:
            self._counters["classifications"] += 1
        label = max(labels, key=lambda lab: probs[lab])  # the first label wins a tie, as in LlamaStudent
        return Prediction(label=label, probs=probs, latency_s=time.perf_counter() - started)

    def classify_many(self, system_prompt: str, texts: Sequence[str], labels: Sequence[str], *,
                      cancelled: Callable[[], bool] | None = None) -> Iterator[tuple[int, Prediction]]:
        """Classify `texts` with up to `concurrency` requests in flight; yields (index, prediction) as each
        finishes, so the caller can commit them one by one. Stops submitting when `cancelled()` turns true
        (requests in flight finish); the first error is raised after the in-flight requests end."""
        labels = list(labels)
        pending = iter(enumerate(texts))
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="openai-student") as pool:
            running: dict[Future[Prediction], int] = {}

            def fill() -> None:
                while len(running) < self.concurrency and not (cancelled is not None and cancelled()):
                    item = next(pending, None)
                    if item is None:
                        return
                    running[pool.submit(self.classify, system_prompt, item[1], labels)] = item[0]

            fill()
            while running:
                done, _ = wait(list(running), return_when=FIRST_COMPLETED)
                failed: BaseException | None = None
                for future in done:
                    index = running.pop(future)
                    if future.exception() is not None:
                        failed = failed or future.exception()
                    else:
                        yield index, future.result()
                if failed is not None:
                    for future in running:
                        future.cancel()
                    wait(list(running))
                    raise failed
                fill()

    def stats(self) -> dict[str, float]:
        """Requests made, classifications, forced requests and the total probability that could not be read."""
        with self._lock:
            return dict(self._counters)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> OpenAIStudent:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"OpenAIStudent(base_url={self.base_url!r}, model={self.model!r}, scoring={self.scoring!r})"


def _discovered_n_ctx(entry: dict[str, Any], props: dict[str, Any]) -> int | None:
    """The context size a server reports: llama.cpp /props, vLLM's max_model_len, or a `meta.n_ctx` field."""
    settings = props.get("default_generation_settings") or {}
    for value in (settings.get("n_ctx"), props.get("n_ctx"), entry.get("max_model_len"),
                  (entry.get("meta") or {}).get("n_ctx") if isinstance(entry.get("meta"), dict) else None):
        if isinstance(value, int) and value > 0:
            return value
    return None
