"""Batched generation: several requests decoded together in one multi-sequence llama.cpp context."""

from __future__ import annotations

import ctypes
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as llama_capi

from pld_desktop.backends.greedy_sampling import GrammarFirstSampler, SamplingCounts
from pld_desktop.backends.prefix_cache import PrefixStateCache, PrefixStateDiskCache

__all__ = ["BatchedGenerator", "GenerationJob", "GenerationQueue", "GenerationResult", "GenerationStats",
           "busy_cores", "decode_threads", "default_parallel_sequences"]


# ---------------------------------------------------------------------------
# Batched generation: several requests decoded together in one multi-sequence context
# ---------------------------------------------------------------------------
def busy_cores() -> int | None:
    """Cores other work is using now: the runnable threads in /proc/stat less the one asking (the least of a few
    samples 10 ms apart, so a momentary burst does not count), or the 1-minute load average where /proc is
    absent. The load average alone misleads here: it lags by a minute and counts this process's own decode
    threads, so a teacher made right after other local work (the embedder, the student) went single-threaded."""
    samples: list[int] = []
    for attempt in range(3):
        try:
            with open("/proc/stat", "rb") as stat:
                running = next((int(line.split()[1]) for line in stat if line.startswith(b"procs_running ")), None)
        except (OSError, ValueError, IndexError):
            running = None
        if running is None:
            break
        samples.append(max(0, running - 1))
        if attempt < 2:
            time.sleep(0.01)
    if samples:
        return min(samples)
    try:
        return int(os.getloadavg()[0] + 0.5)
    except (OSError, AttributeError):
        return None


def decode_threads(cores: int | None = None, busy: int | None = None) -> int:
    """Threads for a decode: every core that other work is not already using (`busy`, default `busy_cores()`).
    llama.cpp's threads spin at each barrier, so on oversubscribed cores one descheduled thread stalls the rest:
    measured on 2 cores at load 11, a SmolLM2 one-token decode took 2.0 s on 2 threads and 0.05-0.1 s on 1
    (on quiet cores 10.4 ms on 2 vs 14.7 ms on 1, issue 15)."""
    cores = max(1, cores or os.cpu_count() or 1)
    if busy is None:
        busy = busy_cores()
    if busy is None:
        return cores
    return max(1, min(cores, cores - busy))


def default_parallel_sequences(n_ctx: int, per_request_tokens: int, cores: int | None = None) -> int:
    """How many requests to decode together: decoding k tokens in one batch costs far less than k single-token
    decodes (on SmolLM2 and 2 cores, 16 tokens ~60 ms vs 10 ms for one), up to about 8 per core; and every
    sequence needs room (`per_request_tokens`) in the shared context. Measured on phase 1 of a 105-row sst2
    sample (bundled teacher, 2 cores): 16 sequences (13 at once, as the context allowed) 24.5 s, 8 sequences
    29.0 s; on 20 rows, 12 requests all at once instead of 8 then 4: 7.1-7.9 s vs 8.5."""
    cores = max(1, cores or os.cpu_count() or 1)
    by_context = max(1, n_ctx // max(1, per_request_tokens))
    return max(1, min(16, 8 * cores, by_context))


@dataclass
class GenerationJob:
    """One request for `BatchedGenerator`: the prompt tokens, how many of them are a prefix shared with other
    requests (kept once in the context), the GBNF grammar of the reply, and its token bound."""
    tokens: list[int]
    prefix_len: int
    grammar: Any            # a llama_cpp.LlamaGrammar (its GBNF text and root rule)
    max_tokens: int
    future: Future[GenerationResult] = dataclass_field(default_factory=Future)
    # Fills the fields above on the owner thread when the job is admitted (tokenizing there keeps every llama
    # call on one thread); an exception it raises goes to the job's caller.
    prepare: Callable[[GenerationJob], None] | None = None


@dataclass
class GenerationResult:
    tokens: list[int]
    text: str
    finish_reason: str      # "stop" (end of generation) | "length" (max_tokens)
    prompt_tokens: int
    latency_s: float


@dataclass
class GenerationStats(SamplingCounts):  # + how the grammar was asked (grammar_first_accepted ...)
    requests: int = 0
    decodes: int = 0            # llama_decode calls
    tokens_decoded: int = 0     # tokens sent to llama_decode (prompt and replies)
    generated: int = 0          # tokens sampled
    prefix_evaluations: int = 0  # shared prefixes evaluated
    prefix_restores: int = 0    # shared prefixes restored from the prefix-state caches (memory or disk)
    prefix_reuses: int = 0      # requests that started from a shared prefix already in the context
    recent_reuses: int = 0      # requests that started from the last finished prompt (a retry, the next round)
    max_parallel: int = 0       # most replies advanced by one llama_decode
    decode_s: float = 0.0       # seconds in llama_decode
    sample_s: float = 0.0       # seconds sampling (repeat penalty, grammar, greedy), every sequence


class GenerationQueue:
    """Jobs waiting for a `BatchedGenerator`, put from any thread; `put()` says whether a service must be
    started (none is running)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: list[GenerationJob] = []
        self._serving = False

    def put(self, job: GenerationJob) -> bool:
        with self._lock:
            self._jobs.append(job)
            start, self._serving = not self._serving, True
            return start

    def take(self) -> GenerationJob | None:
        with self._lock:
            return self._jobs.pop(0) if self._jobs else None

    def put_back(self, job: GenerationJob) -> None:
        with self._lock:
            self._jobs.insert(0, job)

    def end_if_empty(self) -> bool:
        with self._lock:
            if self._jobs:
                return False
            self._serving = False
            return True

    def fail_all(self, exc: BaseException) -> None:
        with self._lock:
            jobs, self._jobs, self._serving = self._jobs, [], False
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(exc)


def _shared_len(job: GenerationJob) -> int:
    """The job's shared prefix, leaving at least its last prompt token to evaluate (its logits are read)."""
    return max(0, min(job.prefix_len, len(job.tokens) - 1))


class _Slot:
    def __init__(self, seq_id: int) -> None:
        self.seq_id = seq_id
        self.job: GenerationJob | None = None
        self.todo: list[int] = []   # prompt tokens still to evaluate
        self.pos = 0                # next position of this sequence
        self.last: int | None = None  # last sampled token, to decode next
        self.generated: list[int] = []
        self.sampler: Any = None
        self.reserved = 0
        self.started = 0.0


class BatchedGenerator:
    """Greedy, grammar-constrained generation of many requests at once in a second llama.cpp context of the
    owner's model (`n_seq_max` = parallel sequences + shared-prefix holders, one unified KV buffer).

    Each step is one `llama_decode` holding the next token of every reply in progress plus prompt tokens of
    newly admitted requests (continuous batching: a finished reply frees its sequence for the next request at
    once). A shared prefix (the system part of a teacher request) is evaluated once into a holder sequence, saved
    in the prefix-state caches (memory and disk, as the student's) and copied into each request's sequence
    (`llama_memory_seq_cp` shares the KV cells, nothing is recomputed). Sampling per sequence mirrors
    `create_chat_completion` at temperature 0: repeat penalties over the last `penalty_last_n` sampled tokens,
    the request's grammar, then greedy (the grammar asked about the best tokens first: greedy_sampling.py).
    Owner thread only: `run()` serves jobs from a queue until it is empty.
    """

    N_PREFIX_HOLDERS = 2

    def __init__(self, llama: llama_cpp.Llama, *, n_ctx: int, n_parallel: int, n_threads: int,
                 repeat_penalty: float, penalty_last_n: int = 64,
                 prefix_cache: PrefixStateCache | None = None,
                 disk_cache: PrefixStateDiskCache | None = None, grammar_first: bool = True) -> None:
        from llama_cpp import _internals
        self.llama = llama
        self.n_parallel = max(1, int(n_parallel))
        params = type(llama.context_params).from_buffer_copy(llama.context_params)
        params.n_ctx = int(n_ctx)
        # Sequences: the replies, the shared-prefix holders, and one keeping the last finished prompt.
        self.recent_seq = self.n_parallel + self.N_PREFIX_HOLDERS
        params.n_seq_max = self.n_seq_max = self.recent_seq + 1
        if hasattr(params, "kv_unified"):
            params.kv_unified = True  # one pool of cells: a prefix copied into many sequences is stored once
        params.n_threads = params.n_threads_batch = self.n_threads = int(n_threads)
        # The attention kernel is the Llama's own (LocalTeacher turns flash attention on for this path: prompts of
        # hundreds of tokens, as in phases 2 and 3, evaluate ~15-25% faster with it); a request decoded alone gives
        # create_chat_completion's tokens on a Llama with the same setting. The attention window spans up to the
        # highest used cell, which `_start_afresh` keeps low.
        self._ctx = _internals.LlamaContext(model=llama._model, params=params, verbose=False)
        self.n_ctx = int(llama_capi.llama_n_ctx(self._ctx.ctx))
        self.n_batch = int(params.n_batch)
        self._batch = llama_capi.llama_batch_init(self.n_batch, 0, 1)
        self._vocab = llama._model.vocab
        self.repeat_penalty = repeat_penalty
        self.penalty_last_n = penalty_last_n
        self.prefix_cache = prefix_cache
        self.disk_cache = disk_cache
        self.stats = GenerationStats()
        # Grammar-first sampling (greedy_sampling.py) picks what llama.cpp's sampler chain picks, at a fraction
        # of its cost; False keeps the chain (the old path, and the check that both agree).
        self.grammar_first = grammar_first
        self.closed = False
        self._slots = [_Slot(i) for i in range(self.n_parallel)]
        self._holders: OrderedDict[tuple[int, ...], int] = OrderedDict()  # shared prefix -> holder sequence
        self._free_holders: list[int] = []
        self._recent: tuple[int, ...] = ()   # the prompt whose cells `recent_seq` keeps
        self._clear()

    @property
    def ctx(self) -> Any:
        return self._ctx.ctx

    def close(self) -> None:
        self.closed = True
        for slot in self._slots:
            self._free_sampler(slot)
        if self._batch is not None:
            llama_capi.llama_batch_free(self._batch)
            self._batch = None
        self._ctx.close()  # type: ignore[no-untyped-call]  # llama_cpp._internals leaves close() unannotated

    # -- sequences ---------------------------------------------------------------------------------------
    def _memory(self) -> Any:
        return llama_capi.llama_get_memory(self.ctx)

    def _used(self) -> int:
        return (sum(slot.reserved for slot in self._slots if slot.job is not None) + sum(map(len, self._holders))
                + len(self._recent))

    # A retry repeats the rejected request's prompt and appends the reason, and the closed loop sends its long
    # requests one after another: the last finished prompt is kept (its cells, no copy) so that a request
    # sharing at least RECENT_MIN_GAIN tokens more with it than with the shared-prefix holder starts from it.
    RECENT_MIN_GAIN = 32

    def _keep_recent(self, slot: _Slot) -> None:
        job = slot.job
        assert job is not None
        self._forget_recent()
        llama_capi.llama_memory_seq_cp(self._memory(), slot.seq_id, self.recent_seq, 0, len(job.tokens))
        self._recent = tuple(job.tokens)

    def _forget_recent(self) -> None:
        if self._recent:
            llama_capi.llama_memory_seq_rm(self._memory(), self.recent_seq, -1, -1)
            self._recent = ()

    def _from_recent(self, job: GenerationJob, prefix_len: int) -> int:
        """How many of the job's first tokens to take from the kept prompt (0: none): all it shares (but the last
        token), when that is RECENT_MIN_GAIN more than the shared prefix, or covers a prefix no holder has yet
        (a retry: its shared prefix is nearly the whole rejected prompt)."""
        if not self._recent:
            return 0
        common = min(int(llama_cpp.Llama.longest_token_prefix(self._recent, job.tokens)), len(job.tokens) - 1)
        if common >= prefix_len + self.RECENT_MIN_GAIN:
            return common
        if 0 < prefix_len <= common and tuple(job.tokens[:prefix_len]) not in self._holders:
            return common
        return 0

    def _drop_holder(self, key: tuple[int, ...]) -> None:
        seq = self._holders.pop(key)
        for slot in self._slots:  # a running reply that shares these cells keeps them: count them there
            if slot.job is not None and tuple(slot.job.tokens[:len(key)]) == key:
                slot.reserved += len(key)
                break
        llama_capi.llama_memory_seq_rm(self._memory(), seq, -1, -1)
        self._free_holders.append(seq)

    def _holder(self, prefix: tuple[int, ...]) -> int:
        """The holder sequence of a shared prefix: already in the context, restored from a saved state, or
        evaluated now (alone, from position 0, in n_batch pieces, then saved)."""
        if prefix in self._holders:
            self._holders.move_to_end(prefix)
            self.stats.prefix_reuses += 1
            return self._holders[prefix]
        if not self._free_holders:
            self._drop_holder(next(iter(self._holders)))
        seq = self._free_holders.pop()
        if self._restore(prefix, seq):
            self.stats.prefix_restores += 1
        else:
            # A holder of a shorter piece of this prefix (the system part, under a longer shared part) is
            # copied, and only the rest evaluated.
            start = 0
            shorter = max((k for k in self._holders if len(k) < len(prefix) and prefix[:len(k)] == k),
                          key=len, default=None)
            if shorter is not None:
                llama_capi.llama_memory_seq_cp(self._memory(), self._holders[shorter], seq, -1, -1)
                start = len(shorter)
            for offset in range(start, len(prefix), self.n_batch):
                piece = prefix[offset:offset + self.n_batch]
                self._decode([(tok, offset + i, seq, False) for i, tok in enumerate(piece)])
            self.stats.prefix_evaluations += 1
            self._save(prefix, seq)
        self._holders[prefix] = seq
        return seq

    def _start_afresh(self, job: GenerationJob) -> None:
        """Before the first job of an idle context: drop the holders it does not share; if the rest can be
        restored from memory, clear the whole KV buffer, so cells are used from the start again (the attention
        window spans up to the highest used cell, and freed cells drift upwards)."""
        for key in [k for k in self._holders if tuple(job.tokens[:len(k)]) != k]:
            self._drop_holder(key)
        common = self._from_recent(job, _shared_len(job))
        if not common or len(self._recent) + len(job.tokens) - common + job.max_tokens > self.n_ctx:
            self._forget_recent()
        cache = self.prefix_cache
        if not self._recent and cache is not None and all(cache.get(key) is not None for key in self._holders):
            self._clear()

    def _restore(self, prefix: tuple[int, ...], seq: int) -> bool:
        state: bytes | bytearray | None = self.prefix_cache.get(prefix) if self.prefix_cache is not None else None
        from_disk = False
        if state is None and self.disk_cache is not None:
            state = self.disk_cache.load(prefix)
            from_disk = state is not None
        if state is None:
            return False
        buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        loaded = int(llama_capi.llama_state_seq_set_data(self.ctx, buffer, len(state), seq))
        del buffer
        if loaded != len(state) or int(llama_capi.llama_memory_seq_pos_max(self._memory(), seq)) != len(prefix) - 1:
            llama_capi.llama_memory_seq_rm(self._memory(), seq, -1, -1)
            return False
        if from_disk and self.prefix_cache is not None:
            self.prefix_cache.put(prefix, state)
        return True

    def _save(self, prefix: tuple[int, ...], seq: int) -> None:
        if self.prefix_cache is None and self.disk_cache is None:
            return
        size = int(llama_capi.llama_state_seq_get_size(self.ctx, seq))
        if size <= 0:
            return
        state = bytearray(size)
        view = (ctypes.c_uint8 * size).from_buffer(state)
        written = int(llama_capi.llama_state_seq_get_data(self.ctx, view, size, seq))
        del view
        if written <= 0:
            return
        del state[written:]
        if self.prefix_cache is not None:
            self.prefix_cache.put(prefix, state)
        if self.disk_cache is not None and prefix not in self.disk_cache:
            self.disk_cache.save(prefix, state)

    def _free_sampler(self, slot: _Slot) -> None:
        if slot.sampler is not None:
            slot.sampler.close()
            slot.sampler = None

    def _new_sampler(self, grammar: Any) -> Any:
        if self.grammar_first:
            return GrammarFirstSampler(self._vocab, self.llama.n_vocab(), grammar,
                                       repeat_penalty=self.repeat_penalty, penalty_last_n=self.penalty_last_n,
                                       counts=self.stats)
        from llama_cpp import _internals
        sampler = _internals.LlamaSampler()  # type: ignore[no-untyped-call]  # llama_cpp._internals: unannotated __init__
        sampler.add_penalties(n_vocab=self.llama.n_vocab(), penalty_last_n=self.penalty_last_n,
                              penalty_repeat=self.repeat_penalty, penalty_freq=0.0, penalty_present=0.0)
        if grammar is not None:
            sampler.add_grammar(self.llama._model, grammar)
        sampler.add_greedy()  # type: ignore[no-untyped-call]  # llama_cpp._internals: unannotated
        return sampler

    def _decode(self, entries: Sequence[tuple[int, int, int, bool]]) -> None:
        """One llama_decode of (token, position, sequence, wants_logits) entries (at most n_batch)."""
        batch = self._batch
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
        batch.n_tokens = len(entries)
        started = time.perf_counter()
        code = int(llama_capi.llama_decode(self.ctx, batch))
        self.stats.decode_s += time.perf_counter() - started
        self.stats.decodes += 1
        self.stats.tokens_decoded += len(entries)
        if code != 0:
            raise RuntimeError(f"llama_decode failed with code {code} (context of {self.n_ctx} tokens full?)")

    # -- serving -----------------------------------------------------------------------------------------
    def _admit(self, slot: _Slot, job: GenerationJob) -> None:
        prefix_len = _shared_len(job)
        slot.job, slot.generated, slot.last, slot.started = job, [], None, time.perf_counter()
        llama_capi.llama_memory_seq_rm(self._memory(), slot.seq_id, -1, -1)
        recent = self._from_recent(job, prefix_len)
        if recent:
            llama_capi.llama_memory_seq_cp(self._memory(), self.recent_seq, slot.seq_id, 0, recent)
            prefix_len = recent
            self.stats.recent_reuses += 1
        elif prefix_len > 0:
            holder = self._holder(tuple(job.tokens[:prefix_len]))
            llama_capi.llama_memory_seq_cp(self._memory(), holder, slot.seq_id, -1, -1)
        slot.reserved = len(job.tokens) - prefix_len + job.max_tokens
        slot.todo = list(job.tokens[prefix_len:])
        slot.pos = prefix_len
        slot.sampler = self._new_sampler(job.grammar)
        self.stats.requests += 1

    def _finish(self, slot: _Slot, reason: str) -> None:
        job = slot.job
        assert job is not None
        text = self.llama.detokenize(slot.generated, prev_tokens=job.tokens).decode("utf-8", errors="ignore")
        result = GenerationResult(list(slot.generated), text, reason, len(job.tokens),
                                  time.perf_counter() - slot.started)
        if len(job.tokens) - job.prefix_len >= self.RECENT_MIN_GAIN:
            self._keep_recent(slot)
        self._release(slot)
        if not job.future.done():
            job.future.set_result(result)

    def _release(self, slot: _Slot) -> None:
        llama_capi.llama_memory_seq_rm(self._memory(), slot.seq_id, -1, -1)
        self._free_sampler(slot)
        slot.job, slot.todo, slot.generated, slot.last, slot.reserved = None, [], [], None, 0

    def _fail_all(self, exc: BaseException) -> None:
        for slot in self._slots:
            if slot.job is not None:
                if not slot.job.future.done():
                    slot.job.future.set_exception(exc)
                self._release(slot)
        self._clear()

    def _clear(self) -> None:
        """Empty the KV buffer: no holders, no kept prompt (the slots must be free)."""
        llama_capi.llama_memory_clear(self._memory(), False)
        self._holders.clear()
        self._recent = ()
        self._free_holders = list(range(self.n_parallel, self.n_parallel + self.N_PREFIX_HOLDERS))

    def run(self, jobs: GenerationQueue) -> None:
        """Serve jobs from `jobs` until it is empty and nothing is in progress (then the queue is marked idle,
        atomically with the emptiness check, so a job put meanwhile starts a new service)."""
        if self.closed:  # a service queued behind close(): nothing may touch the freed context
            jobs.fail_all(RuntimeError("The model has been closed."))
            return
        try:
            while True:
                active = [s for s in self._slots if s.job is not None]
                for slot in self._slots:
                    if slot.job is not None:
                        continue
                    job = jobs.take()
                    if job is None:
                        break
                    if job.future.cancelled():
                        continue
                    if job.prepare is not None:
                        try:
                            job.prepare(job)
                        except Exception as exc:
                            job.future.set_exception(exc)
                            continue
                        job.prepare = None
                    if not active:
                        self._start_afresh(job)
                    elif self._used() + len(job.tokens) + job.max_tokens > self.n_ctx:
                        jobs.put_back(job)  # no room in the context: let running replies finish first
                        break
                    self._admit(slot, job)
                    active.append(slot)
                if not active:
                    if jobs.end_if_empty():
                        return
                    continue
                self._step(active)
        except BaseException as exc:
            self._fail_all(exc)
            jobs.fail_all(exc)
            raise


    def _step(self, active: list[_Slot]) -> None:
        entries: list[tuple[int, int, int, bool]] = []
        readers: list[tuple[_Slot, int]] = []
        for slot in active:
            if slot.last is not None:
                readers.append((slot, len(entries)))
                entries.append((slot.last, slot.pos, slot.seq_id, True))
                slot.pos += 1
        for slot in active:
            if slot.last is None and slot.todo and len(entries) < self.n_batch:
                piece = slot.todo[:self.n_batch - len(entries)]
                del slot.todo[:len(piece)]
                for i, tok in enumerate(piece):
                    last = not slot.todo and i == len(piece) - 1
                    if last:
                        readers.append((slot, len(entries)))
                    entries.append((tok, slot.pos, slot.seq_id, last))
                    slot.pos += 1
        self._decode(entries)
        self.stats.max_parallel = max(self.stats.max_parallel, len(readers))
        for slot, index in readers:
            job = slot.job
            assert job is not None
            started = time.perf_counter()
            if self.grammar_first:
                token = slot.sampler.sample(self.ctx, index)
            else:
                token = int(llama_capi.llama_sampler_sample(slot.sampler.sampler, self.ctx, index))
            self.stats.sample_s += time.perf_counter() - started
            self.stats.generated += 1
            if llama_capi.llama_vocab_is_eog(self._vocab, token):
                self._finish(slot, "stop")
                continue
            slot.generated.append(token)
            if len(slot.generated) >= job.max_tokens:
                self._finish(slot, "length")
            else:
                slot.last = token
