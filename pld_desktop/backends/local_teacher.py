"""The local teacher: the core's Teacher protocol on a local GGUF chat model (default: bundled SmolLM2-135M).

Replies are constrained to the request's JSON schema by llama.cpp's grammar sampler, on a grammar built by
`teacher_grammar` (labels escaped, rules whole, the extraction label fixed); the core's schema validation stays
the judge.
Two generation paths, both greedy. The batched one (default; PLD_FAST_PATHS=0 or batched=False turns it off)
decodes up to `max_concurrency` requests together in one multi-sequence context on all cores
(`BatchedGenerator`): a request's system part (and what it shares with the previous request beyond it: phase 1's
task and labels) is evaluated once per model and shared, kept in the prefix-state caches in memory and on disk
like the student's, and a retry starts from the rejected request's prompt. Its replies are valid under the same
grammar; batching changes llama.cpp's floating-point order, so a reply can differ from the unbatched path's where
the model is near a tie.
The unbatched path evaluates the prompt on the fixed schedule of `LlamaContextCursor` (system part, then the rest)
before `create_chat_completion` samples from it, so the same request gives the same reply whatever was asked
before, while consecutive requests with one system text share its KV cache.
"""

from __future__ import annotations

import os
import time
from typing import Any

import llama_cpp
from llama_cpp.llama_chat_format import format_llama2
from llama_cpp.llama_grammar import LlamaGrammar
from llama_cpp.llama_types import ChatCompletionRequestMessage

from pld_desktop.backends.batched_generation import (
    BatchedGenerator,
    GenerationJob,
    GenerationQueue,
    decode_threads,
    default_parallel_sequences,
)
from pld_desktop.backends.bundled import ModelFileError, bundled_local_teacher_path
from pld_desktop.backends.context_cursor import LlamaContextCursor
from pld_desktop.backends.gguf_file import check_gguf_file, file_sha256, has_sliding_window
from pld_desktop.backends.llama_runtime import LlamaOwner, gguf_chat_formatter, template_supports_system
from pld_desktop.backends.prefix_cache import PrefixStateCache, PrefixStateDiskCache, state_settings
from pld_desktop.backends.teacher_grammar import rule_hit_bound, schema_grammar
from pld_desktop.backends.unpacked_weights import batched_weights
from pld_desktop.core.fast_paths import fast_paths_enabled
from pld_desktop.core.protocols import TeacherError, TeacherReply, TeacherRequest, TeacherUsage

__all__ = ["LocalTeacher", "ModelFileError"]


class LocalTeacher:
    """Teacher on a local GGUF model through llama-cpp-python.

    Thread contract: one owner thread holds the model and runs every generation; `generate()` may be called from
    any thread. Unbatched, calls are serialised (max_concurrency = 1); batched, up to `max_concurrency` calls
    are decoded together.
    """

    max_concurrency = 1
    price_per_million = (0.0, 0.0)

    def __init__(self, model_path: str | os.PathLike[str] | None = None, *, n_ctx: int = 8192,
                 max_tokens: int = 512, repeat_penalty: float = 1.1, max_string_chars: int = 320,
                 n_threads: int | None = None,
                 n_threads_batch: int | None = None, use_extra_bufts: bool | None = None,
                 batched: bool | None = None, n_parallel: int | None = None,
                 state_dir: str | os.PathLike[str] | None = None, disk_cache: bool = True,
                 flash_attn: bool | None = None, unpack: bool = True) -> None:
        """`max_tokens` bounds every reply (a tiny model can loop until the context is full); `repeat_penalty`
        1.1 (llama-cpp-python's chat-handler default; create_chat_completion's own is 1.0) stops SmolLM2's greedy
        decoding from repeating one word until max_tokens, which it did on 1 of 6 short test reviews.
        `batched` (default: on unless PLD_FAST_PATHS=0) selects the batched path, `n_parallel` its number of
        sequences (default from the cores and the context); `state_dir` is the on-disk prefix-state folder.
        `flash_attn` (default: on for the batched path of a model without a sliding window, else off, as on
        today's unbatched path) selects llama.cpp's attention kernel: on the bundled teacher it evaluates long
        prompts faster (phases 2 and 3: merges and rewrites of a few hundred to a few thousand tokens; a
        2,400-token prompt 10.4 s vs 12.1 s, a whole demo run 104 s vs 112-118 s) and costs nothing on phase 1's
        short ones. `unpack` lets the batched path decode an F16 copy of a small model whose weight type has no
        batched kernel (unpacked_weights.py: the bundled Q4_1 teacher)."""
        if max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
        source = check_gguf_file(bundled_local_teacher_path() if model_path is None else model_path)
        sha = file_sha256(source)
        if batched is None:
            batched = fast_paths_enabled()
        self.batched = batched
        # The model is named by the user's file (model_id, model_path); `weights_path` is the file decoded.
        path, self.weights_note = batched_weights(source, sha) if batched and unpack else (source, None)
        self.weights_path = path
        if flash_attn is None:
            # On a sliding-window model (Gemma 3 as teacher) the batched context keeps a full-size window cache,
            # and with flash attention its replies would then differ from the same request decoded alone.
            flash_attn = batched and not has_sliding_window(path)
        cores = os.cpu_count() or 1
        if batched:
            # llama-cpp-python's default is half the logical cores: decode on all that are free. The Llama's
            # own context only tokenizes here, so it is kept small; the batched context gets the n_ctx asked for.
            n_threads = n_threads or decode_threads(cores)
            n_threads_batch = n_threads_batch or n_threads
        self._owner = LlamaOwner(path, n_ctx=min(n_ctx, 512) if batched else n_ctx, n_threads=n_threads,
                                 n_threads_batch=n_threads_batch, name="local-teacher",
                                 use_extra_bufts=use_extra_bufts, flash_attn=bool(flash_attn))
        self._generator: BatchedGenerator | None = None
        self._jobs = GenerationQueue()
        try:
            self._model: _TeacherModel = self._owner.call(_TeacherModel)
            self.supports_system: bool = self._model.supports_system
            self.model_path = source
            self.model_id = f"local:{source.name}@{sha[:12]}"
            if batched:
                # Room for each reply's bound; the request's own prompt part (past the shared prefix) is counted when
                # it is admitted (BatchedGenerator.run holds back a request the context cannot take yet).
                parallel = n_parallel or default_parallel_sequences(n_ctx, max_tokens, cores)

                def make(llama: llama_cpp.Llama) -> BatchedGenerator:
                    generator = BatchedGenerator(llama, n_ctx=n_ctx, n_parallel=parallel,
                                                 n_threads=int(n_threads or 1), repeat_penalty=repeat_penalty,
                                                 prefix_cache=PrefixStateCache(256 << 20))
                    if disk_cache:
                        weights = sha if path == source else f"{sha}+{path.name}"
                        settings = state_settings(llama, weights, purpose="batched-teacher",
                                                  batched_n_ctx=generator.n_ctx,
                                                  batched_n_seq_max=generator.n_seq_max,
                                                  batched_kv_unified=True)
                        generator.disk_cache = PrefixStateDiskCache(state_dir, settings)
                    return generator

                self._generator = self._owner.call(make)
                self.max_concurrency = parallel
                self.n_ctx: int = self._generator.n_ctx
            else:
                self.n_ctx = self._owner.call(lambda llama: llama.n_ctx())
        except BaseException:
            self.close()
            raise
        self.max_tokens = max_tokens
        self.repeat_penalty = repeat_penalty
        self.max_string_chars = max_string_chars

    @property
    def decode_setup(self) -> dict[str, Any]:
        """How the batched path decodes (threads, parallel sequences, context); {} unbatched."""
        g = self._generator
        if g is None:
            return {}
        return {"threads": g.n_threads, "parallel": g.n_parallel, "n_ctx": g.n_ctx,
                "weights": self.weights_note or "as in the file"}

    @property
    def generation_stats(self) -> Any:
        """Counters of the batched path (None when unbatched)."""
        return None if self._generator is None else self._generator.stats

    def grammar_for(self, request: TeacherRequest) -> str:
        """The GBNF grammar the reply to `request` is decoded under (every label and literal escaped)."""
        try:
            return schema_grammar(request.schema.model_json_schema(), max_chars=self.max_string_chars,
                                  patterns=dict(request.grammar_patterns))
        except Exception as exc:
            raise TeacherError(f"Cannot build the grammar of {request.schema.__name__}: {exc}") from exc

    def messages_for(self, request: TeacherRequest) -> list[ChatCompletionRequestMessage]:
        """The chat messages sent for a request: a system turn when the template keeps one, else the
        instructions lead the user turn."""
        return _messages(request.system, request.user, self.supports_system)

    def generate(self, request: TeacherRequest) -> TeacherReply:
        if self._owner.closed:
            raise RuntimeError("The local teacher has been closed.")
        messages = self.messages_for(request)
        grammar = self.grammar_for(request)
        if self._generator is not None:
            return self._generate_batched(request, messages, grammar)
        max_tokens, repeat_penalty = self.max_tokens, self.repeat_penalty
        model = self._model

        def run(llama: llama_cpp.Llama) -> tuple[dict[str, Any], float]:
            started = time.perf_counter()
            model.evaluate_prompt(messages, request.system)
            # llama.cpp answers a grammar it cannot parse with a NULL sampler, which crashes the process later.
            check_grammar(llama, grammar)
            completion = llama.create_chat_completion(
                messages=messages, grammar=_parsed_grammar(grammar),
                temperature=0.0, max_tokens=max_tokens, repeat_penalty=repeat_penalty, stream=False)
            return completion, time.perf_counter() - started  # type: ignore[return-value]  # stream=False: a dict

        try:
            completion, latency = self._owner.call(run)
        except (ValueError, RuntimeError) as exc:
            raise self._failure(exc) from exc
        choice = completion["choices"][0]
        usage = completion.get("usage") or {}
        text = choice["message"].get("content") or ""
        return TeacherReply(
            text=text,
            usage=TeacherUsage(prompt_tokens=int(usage.get("prompt_tokens", 0)),
                               output_tokens=int(usage.get("completion_tokens", 0)),
                               total_tokens=int(usage.get("total_tokens", 0))),
            latency_s=latency, model=self.model_id,
            finish_reason=_finish_reason(text, str(choice.get("finish_reason") or "")))

    def _failure(self, exc: ValueError | RuntimeError) -> TeacherError:
        """The TeacherError for a llama.cpp failure on either generation path (a prompt too long for the context
        says so)."""
        if isinstance(exc, ValueError) and "exceed context window" in str(exc):
            return TeacherError(f"The request does not fit the local teacher's context of {self.n_ctx} "
                                f"tokens: {exc}", retryable=False)
        return TeacherError(f"The local teacher failed: {exc}", retryable=False)

    def _generate_batched(self, request: TeacherRequest, messages: list[ChatCompletionRequestMessage],
                          grammar: str) -> TeacherReply:
        generator, model, n_ctx, max_tokens = self._generator, self._model, self.n_ctx, self.max_tokens
        assert generator is not None

        def prepare(job: GenerationJob) -> None:  # on the owner thread
            tokens = model._tokens(messages)
            if len(tokens) >= n_ctx:
                raise ValueError(f"Requested tokens ({len(tokens)}) exceed context window of {n_ctx}")
            job.tokens = tokens
            job.prefix_len = model.shared_end(request.system, tokens)
            check_grammar(generator.llama, grammar)  # a NULL grammar sampler would crash the process
            job.grammar = _parsed_grammar(grammar)
            job.max_tokens = min(max_tokens, n_ctx - len(tokens))

        job = GenerationJob([], 0, None, 0, prepare=prepare)
        if self._jobs.put(job):
            self._owner.submit(lambda llama: generator.run(self._jobs))
        try:
            result = job.future.result()
        except TeacherError:
            raise
        except (ValueError, RuntimeError) as exc:
            raise self._failure(exc) from exc
        n_out = len(result.tokens)
        return TeacherReply(
            text=result.text,
            usage=TeacherUsage(prompt_tokens=result.prompt_tokens, output_tokens=n_out,
                               total_tokens=result.prompt_tokens + n_out),
            latency_s=result.latency_s, model=self.model_id,
            finish_reason=_finish_reason(result.text, result.finish_reason))

    def close(self) -> None:
        generator, self._generator = getattr(self, "_generator", None), None
        if generator is not None and not self._owner.closed:
            self._owner.submit(lambda llama: generator.close())  # after any running service (FIFO)
        self._owner.close()

    def __enter__(self) -> LocalTeacher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _TeacherModel:
    """Prompt preparation for the teacher's Llama. Lives on, and is only used from, the owner thread."""

    def __init__(self, llama: llama_cpp.Llama) -> None:
        self.llama = llama
        self.formatter = gguf_chat_formatter(llama)
        if self.formatter is not None:
            # Pin the chat format to the GGUF template, so the prompt evaluated here is the one the chat
            # completion tokenizes (llama-cpp-python could otherwise pick a built-in format by name).
            llama.chat_handler = self.formatter.to_chat_handler()
        # Without a GGUF template llama-cpp-python falls back to its "llama-2" format, which keeps system turns.
        self.supports_system = True if self.formatter is None else template_supports_system(self.formatter)
        self.cursor = LlamaContextCursor(llama)
        self._system_ends: dict[str, int] = {}
        self._last_prompts: dict[str, list[int]] = {}

    def _tokens(self, messages: list[ChatCompletionRequestMessage]) -> list[int]:
        """The prompt tokens `create_chat_completion` evaluates for `messages`: the GGUF template's rendering
        (which adds BOS itself), or without a template llama-cpp-python's fallback "llama-2" format, which it
        tokenizes with BOS added (`chat_formatter_to_chat_completion_handler`)."""
        if self.formatter is not None:
            result = self.formatter(messages=messages)
        elif self.llama.chat_format == "llama-2":
            result = format_llama2(messages)
        else:
            raise TeacherError(f"The local teacher has no prompt format for chat format {self.llama.chat_format!r}.",
                               retryable=False)
        return self.llama.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special, special=True)

    def _system_end(self, system: str) -> int:
        """Tokens of the prompt that depend only on the system text: the common prefix of the prompts of two
        unrelated probe requests with that system text (cached per system text)."""
        if system not in self._system_ends:
            probes = [self._tokens(_messages(system, probe, self.supports_system)) for probe in ("A", "z")]
            if len(self._system_ends) > 64:
                self._system_ends.clear()
            self._system_ends[system] = llama_cpp.Llama.longest_token_prefix(*probes)
        return self._system_ends[system]

    MIN_SHARED_EXTRA = 16

    def shared_end(self, system: str, tokens: list[int]) -> int:
        """Tokens of this prompt to keep once for the requests like it: the system part, or, where the previous
        prompt with this system text shares more (phase 1's requests all start with the task and the labels),
        that common part cut back to the end of a line, so that the requests of a phase agree on it."""
        base = self._system_end(system)
        previous = self._last_prompts.get(system)
        if len(self._last_prompts) > 64:
            self._last_prompts.clear()
        self._last_prompts[system] = tokens
        if previous is None:
            return base
        common = llama_cpp.Llama.longest_token_prefix(previous, tokens)
        while common > base and b"\n" not in self.llama.detokenize([tokens[common - 1]], special=True):
            common -= 1
        return common if common - base >= self.MIN_SHARED_EXTRA else base

    def evaluate_prompt(self, messages: list[ChatCompletionRequestMessage], system: str) -> None:
        """Evaluate the chat prompt on the cursor's fixed schedule; `Llama.generate()` then finds it fully
        cached with fresh logits and samples right away. Without a template, or if the prompt does not fit
        (the chat completion then reports it), the state is reset so the completion evaluates from scratch:
        slower, equally deterministic."""
        llama = self.llama
        tokens = self._tokens(messages) if self.formatter is not None else []
        if not tokens or len(tokens) >= llama.n_ctx():
            self.cursor.reset()
            llama.reset()  # type: ignore[no-untyped-call]  # llama_cpp leaves Llama.reset() unannotated
            return
        self.cursor.begin(tokens, self._system_end(system))
        self.cursor.position(tokens)


_grammars: dict[str, LlamaGrammar] = {}


def _parsed_grammar(text: str) -> LlamaGrammar:
    """`text` as a llama_cpp.LlamaGrammar, cached by text: parsing costs ~ms per request and both generation
    paths decode under the same grammar."""
    grammar = _grammars.get(text)
    if grammar is None:
        if len(_grammars) > 256:
            _grammars.clear()
        grammar = _grammars[text] = LlamaGrammar.from_string(text, verbose=False)
    return grammar


def _finish_reason(text: str, finish: str) -> str:
    """A rule that stopped at the grammar's word bound may be cut: report it as "length" so the core retries."""
    return "length" if rule_hit_bound(text) else finish


def check_grammar(llama: llama_cpp.Llama, grammar: str) -> None:
    """Raise TeacherError unless llama.cpp parses `grammar` with this model's vocabulary."""
    vocab = llama_cpp.llama_model_get_vocab(llama.model)
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
    if not sampler:
        raise TeacherError("The local teacher's reply grammar does not parse (a bug; please report it).",
                           retryable=False)
    llama_cpp.llama_sampler_free(sampler)


def _messages(system: str, user: str, supports_system: bool) -> list[ChatCompletionRequestMessage]:
    if supports_system:
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return [{"role": "user", "content": f"{system}\n\n{user}" if system.strip() else user}]


def bounded_schema(schema: Any, max_chars: int, patterns: dict[str, str] | None = None) -> Any:
    """A copy of a JSON schema for the grammar: strings get a maxLength, so a small model cannot ramble past
    `max_tokens` into a truncated (invalid) reply, and properties named in `patterns` get that regex (the
    request's grammar hints). The core still validates the reply against the original schema."""
    patterns = patterns or {}
    if isinstance(schema, dict):
        out = {k: bounded_schema(v, max_chars, patterns) for k, v in schema.items()}
        if isinstance(out.get("properties"), dict):
            for name, regex in patterns.items():
                prop = out["properties"].get(name)
                if isinstance(prop, dict) and prop.get("type") == "string":
                    prop.pop("maxLength", None)
                    prop.pop("minLength", None)
                    prop["pattern"] = regex
        if out.get("type") == "string" and not {"enum", "const", "pattern"} & set(out):
            out.setdefault("maxLength", max_chars)
        return out
    if isinstance(schema, list):
        return [bounded_schema(v, max_chars, patterns) for v in schema]
    return schema
