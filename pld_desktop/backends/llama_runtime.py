"""Shared llama.cpp plumbing: the owner thread of a model, GGUF file checks, identity hashing, chat templates.

A `llama_cpp.Llama` is not thread-safe (house style point 3, library notes section 1): every model gets one
`LlamaOwner` whose single worker thread constructs it, runs every call on it, and frees it.
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import itertools
import json
import logging
import os
import queue
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
import zlib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any, TypeVar

import llama_cpp
import llama_cpp.llama_cpp as llama_capi
import numpy as np
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from pld_desktop.backends.bundled import ModelFileError, bundled_local_teacher_path
from pld_desktop.core.protocols import ModelIdentity, PromptTooLong

__all__ = [
    "GGUF_MAGIC",
    "BatchedGenerator",
    "EvalStats",
    "GenerationJob",
    "GenerationQueue",
    "GenerationResult",
    "LlamaContextCursor",
    "LlamaOwner",
    "ModelFileError",
    "PrefixStateCache",
    "PrefixStateDiskCache",
    "backend_name",
    "cache_dir",
    "check_gguf_file",
    "decode_threads",
    "default_parallel_sequences",
    "extra_buffer_types_usable",
    "file_sha256",
    "gguf_chat_formatter",
    "load_llama",
    "model_identity",
    "read_gguf_metadata",
    "state_settings",
    "template_supports_system",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
GGUF_MAGIC = b"GGUF"


def backend_name() -> str:
    return f"llama.cpp (llama-cpp-python {llama_cpp.__version__})"


def cache_dir() -> Path:
    """PLD Desktop's cache folder: $PLD_CACHE_DIR if set, else $XDG_CACHE_HOME/pld-desktop (~/.cache/pld-desktop)."""
    override = os.environ.get("PLD_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pld-desktop"


# ---------------------------------------------------------------------------
# File checks
# ---------------------------------------------------------------------------
def check_gguf_file(model_path: str | os.PathLike[str]) -> Path:
    """Cheap checks before llama.cpp sees the file: it exists, is a file, and starts with the GGUF signature.
    Truncation and corruption inside the file are caught by llama.cpp's own loader (see LlamaOwner)."""
    path = Path(model_path).expanduser()
    if not path.exists():
        raise ModelFileError(f"Model file not found: {path}")
    if not path.is_file():
        raise ModelFileError(f"Model path is not a file: {path}")
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise ModelFileError(f"Cannot read the model file {path}: {exc}") from exc
    if head[:4] != GGUF_MAGIC:
        raise ModelFileError(
            f"{path.name} is not a GGUF model file (it does not start with the GGUF signature). "
            f"Choose a llama.cpp .gguf file. Path: {path}")
    if len(head) < 8:
        raise ModelFileError(f"The model file {path} is truncated (only {path.stat().st_size} bytes).")
    version = struct.unpack("<I", head[4:8])[0]
    if version < 2:
        raise ModelFileError(f"{path.name} is a GGUF version {version} file, which llama.cpp no longer "
                             f"reads. Convert it again with a current llama.cpp. Path: {path}")
    return path


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else physical pages; None when unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_fits_memory(path: Path) -> None:
    """Refuse, in words and before llama.cpp maps it, a model whose weights (about the file's size) do not fit in
    the memory this machine has free: loading it would swap for minutes or get the app killed."""
    size = path.stat().st_size
    free = available_memory_bytes()
    if free is not None and size > free:
        raise ModelFileError(
            f"{path.name} needs about {size / 2**30:.1f} GiB of memory for its weights, but only "
            f"{free / 2**30:.1f} GiB is available on this machine. Choose a smaller or more quantised model "
            f"(e.g. a Q4_K_M file), or close other programs.")


# ---------------------------------------------------------------------------
# Identity: sha256 with a small on-disk cache
# ---------------------------------------------------------------------------
_hash_lock = threading.Lock()
_HASH_CACHE_NAME = "sha256-cache.json"
_HASH_CACHE_MAX_ENTRIES = 200


def _hash_cache_path() -> Path:
    return cache_dir() / _HASH_CACHE_NAME


def _load_hash_cache() -> dict[str, Any]:
    try:
        data = json.loads(_hash_cache_path().read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("entries"), dict):
            return data
    except (OSError, ValueError):
        pass
    return {"version": 1, "entries": {}}


def _save_hash_cache(data: dict[str, Any]) -> None:
    target = _hash_cache_path()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".sha256-cache-", dir=target.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, target)
    except OSError as exc:  # a read-only home must not break model loading
        log.warning("could not write the model hash cache %s: %s", target, exc)


def file_sha256(model_path: str | os.PathLike[str]) -> str:
    """sha256 of a file, remembered in ~/.cache/pld-desktop/sha256-cache.json under (realpath, size, mtime_ns):
    hashing a 2.5 GB GGUF takes several seconds, so it is done once per file version."""
    real = os.path.realpath(model_path)
    st = os.stat(real)
    with _hash_lock:
        entry = _load_hash_cache()["entries"].get(real)
        if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
            return str(entry["sha256"])
    digest = hashlib.sha256()
    with open(real, "rb") as f:
        for block in iter(lambda: f.read(4 << 20), b""):
            digest.update(block)
    sha = digest.hexdigest()
    with _hash_lock:
        data = _load_hash_cache()  # re-read: another process may have added entries meanwhile
        entries = data["entries"]
        entries.pop(real, None)
        entries[real] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha}
        while len(entries) > _HASH_CACHE_MAX_ENTRIES:
            entries.pop(next(iter(entries)))
        _save_hash_cache(data)
    return sha


_GGUF_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
                 12: "<d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


def read_gguf_metadata(model_path: str | os.PathLike[str], keys: set[str]) -> dict[str, Any]:
    """Read the given scalar/string keys from a GGUF header without loading the model (stops as soon as all are
    found). Missing keys are left out; a malformed header gives an empty or partial dict, never an exception."""
    found: dict[str, Any] = {}
    try:
        with open(model_path, "rb") as f:
            def read(fmt: str) -> Any:
                size = struct.calcsize(fmt)
                raw = f.read(size)
                if len(raw) != size:
                    raise EOFError
                return struct.unpack(fmt, raw)[0]

            def read_str() -> bytes:
                n = read("<Q")
                raw = f.read(n)
                if len(raw) != n:
                    raise EOFError
                return raw

            def skip_value(vtype: int) -> None:
                if vtype == _GGUF_STRING:
                    f.seek(read("<Q"), os.SEEK_CUR)
                elif vtype == _GGUF_ARRAY:
                    etype, count = read("<I"), read("<Q")
                    if etype in _GGUF_SCALARS:
                        f.seek(struct.calcsize(_GGUF_SCALARS[etype]) * count, os.SEEK_CUR)
                    else:
                        for _ in range(count):
                            skip_value(etype)
                elif vtype in _GGUF_SCALARS:
                    f.seek(struct.calcsize(_GGUF_SCALARS[vtype]), os.SEEK_CUR)
                else:
                    raise ValueError(f"unknown GGUF value type {vtype}")

            if f.read(4) != GGUF_MAGIC or read("<I") < 2:
                return found
            _n_tensors, n_kv = read("<Q"), read("<Q")
            for _ in range(n_kv):
                key = read_str().decode("utf-8", "replace")
                vtype = read("<I")
                if key in keys and vtype == _GGUF_STRING:
                    found[key] = read_str().decode("utf-8", "replace")
                elif key in keys and vtype in _GGUF_SCALARS:
                    found[key] = read(_GGUF_SCALARS[vtype])
                else:
                    skip_value(vtype)
                if keys <= found.keys():
                    break
    except (OSError, EOFError, ValueError, struct.error, OverflowError):
        pass
    return found


def model_identity(model_path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None) -> ModelIdentity:
    """Name (GGUF general.name, else the file name), resolved path, sha256, size and backend of a model file.
    Pass `metadata` (e.g. `Llama.metadata`) when the model is loaded already; otherwise the header is read."""
    path = check_gguf_file(model_path)
    if metadata is None:
        metadata = read_gguf_metadata(path, {"general.name"})
    name = str(metadata.get("general.name") or "").strip() or path.name
    return ModelIdentity(name=name, path=str(path.resolve()), sha256=file_sha256(path),
                         size_bytes=path.stat().st_size, backend=backend_name())


# ---------------------------------------------------------------------------
# Chat templates
# ---------------------------------------------------------------------------
def gguf_chat_formatter(llama: llama_cpp.Llama, *, add_generation_prompt: bool = True) -> Jinja2ChatFormatter | None:
    """The model's own chat template (GGUF `tokenizer.chat_template`) as llama-cpp-python renders it for
    `create_chat_completion`; None if the file has no template. Call on the model's owner thread."""
    template = (llama.metadata or {}).get("tokenizer.chat_template")
    if not template:
        return None

    def token_text(token_id: int) -> str:
        return llama._model.token_get_text(token_id) if token_id != -1 else ""  # as Llama.__init__ does

    return Jinja2ChatFormatter(template=template, eos_token=token_text(llama.token_eos()),
                               bos_token=token_text(llama.token_bos()),
                               add_generation_prompt=add_generation_prompt, stop_token_ids=[llama.token_eos()])


def template_supports_system(formatter: Jinja2ChatFormatter) -> bool:
    """Whether a template keeps a system message (some drop it silently, some raise)."""
    marker = "PLD-SYSTEM-MARKER-7f3a"
    try:
        prompt = formatter(messages=[{"role": "system", "content": marker},
                                     {"role": "user", "content": "hello"}]).prompt
    except Exception:
        return False
    return marker in prompt


# ---------------------------------------------------------------------------
# Positioning a context at a token sequence, deterministically
# ---------------------------------------------------------------------------
@dataclass
class EvalStats:
    calls: int = 0              # position() calls
    tokens_evaluated: int = 0   # tokens sent to llama_decode
    tokens_reused: int = 0      # tokens whose KV cache entries were kept
    full_resets: int = 0        # times the cache could not be trimmed and everything was evaluated again
    classifications: int = 0    # classify() calls
    label_evaluations: int = 0  # contexts whose logits were read while scoring labels
    state_saves: int = 0        # system-part states stored in the prefix-state cache
    state_restores: int = 0     # system parts restored from the prefix-state cache instead of evaluated
    state_evictions: int = 0    # states dropped from the prefix-state cache (LRU, bounded by bytes)
    disk_saves: int = 0         # system-part states written to the on-disk prefix-state cache
    disk_loads: int = 0         # system parts restored from a state file instead of evaluated
    disk_rejects: int = 0       # state files found unusable (corrupted, truncated, other settings) and deleted


class PrefixStateCache:
    """LRU of llama.cpp sequence states (`llama_state_seq_get_data` of sequence 0), keyed by the token tuple of
    the system piece they hold, bounded by the total bytes of the states. Owner thread only.
    States are kept as bytearrays so a restore can hand llama.cpp the buffer without copying it first."""

    def __init__(self, capacity_bytes: int = 1 << 30) -> None:
        self.capacity_bytes = int(capacity_bytes)
        self._states: OrderedDict[tuple[int, ...], bytes | bytearray] = OrderedDict()
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, key: tuple[int, ...]) -> bool:
        return key in self._states

    def get(self, key: tuple[int, ...]) -> bytes | bytearray | None:
        state = self._states.get(key)
        if state is not None:
            self._states.move_to_end(key)
        return state

    def put(self, key: tuple[int, ...], state: bytes | bytearray) -> int:
        """Store a state; returns how many older states were evicted. A state larger than the whole capacity
        is not stored."""
        if key in self._states:
            self.nbytes -= len(self._states.pop(key))
        if len(state) > self.capacity_bytes:
            return 0
        evicted = 0
        while self._states and self.nbytes + len(state) > self.capacity_bytes:
            _, old = self._states.popitem(last=False)
            self.nbytes -= len(old)
            evicted += 1
        self._states[key] = state
        self.nbytes += len(state)
        return evicted

    def clear(self) -> None:
        self._states.clear()
        self.nbytes = 0


def state_settings(llama: llama_cpp.Llama, model_sha256: str, **extra: Any) -> dict[str, Any]:
    """Everything a saved sequence state depends on besides the prompt tokens: the model file, the llama.cpp
    build and CPU features (kernels round differently), and the context settings that change the KV layout or
    its numbers (size, batching, KV types, attention kernel, SWA cache size). Call on the owner thread."""
    params = llama.context_params
    fields = ("n_ctx", "n_batch", "n_ubatch", "n_seq_max", "type_k", "type_v", "flash_attn_type", "swa_full",
              "kv_unified", "offload_kqv", "embeddings", "rope_freq_base", "rope_freq_scale")
    settings: dict[str, Any] = {name: getattr(params, name) for name in fields if hasattr(params, name)}
    settings.update(model_sha256=model_sha256, llama_cpp_python=llama_cpp.__version__,
                    system_info=llama_capi.llama_print_system_info().decode("utf-8", "replace").strip(),
                    n_ctx_actual=int(llama.n_ctx()), **extra)
    return settings


class PrefixStateDiskCache:
    """System-piece states saved as files, so a new process (reopening a project) restores a prompt's state
    instead of evaluating the prompt again.

    A file is named by the sha256 of (`settings`, the piece's tokens); see `state_settings` for what the
    settings hold. Files are written atomically (temporary file in the same folder, then `os.replace`), so
    processes sharing the folder never see half a file; each holds a header with its key, token count, payload
    size and CRC-32, and a file that fails any check (truncated, corrupted, another key) is deleted and ignored.
    The folder is bounded by `capacity_bytes`: after each write the least recently used files (by mtime, which a
    load refreshes) are deleted. Every file-system error is logged and treated as a miss: the cache can make a
    run faster, never make it fail. One instance is used from one thread (the model's owner thread).
    """

    MAGIC = b"PLDSTATE"
    FORMAT = 1
    SUFFIX = ".state"

    def __init__(self, directory: str | os.PathLike[str] | None, settings: Mapping[str, Any], *,
                 capacity_bytes: int = 4 << 30) -> None:
        self.directory = Path(directory).expanduser() if directory is not None else cache_dir() / "prefix-states"
        self.capacity_bytes = int(capacity_bytes)
        self._settings_blob = json.dumps(dict(settings), sort_keys=True, default=str).encode("utf-8")

    def key(self, tokens: Sequence[int]) -> str:
        digest = hashlib.sha256(self._settings_blob)
        digest.update(b"\0tokens\0")
        digest.update(np.asarray(tokens, dtype=np.int64).tobytes())
        return digest.hexdigest()

    def path(self, tokens: Sequence[int]) -> Path:
        return self.directory / f"{self.key(tokens)}{self.SUFFIX}"

    def __contains__(self, tokens: Sequence[int]) -> bool:
        return self.path(tokens).is_file()

    def load(self, tokens: Sequence[int]) -> bytearray | None:
        """The saved state of this token piece, or None (missing, or unusable and then deleted)."""
        key = self.key(tokens)
        path = self.directory / f"{key}{self.SUFFIX}"
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                data = bytearray(size)
                got = f.readinto(data)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("could not read the saved prompt state %s: %s", path, exc)
            return None
        payload_start = self._check(data, got, key, len(tokens))
        if payload_start is None:
            log.warning("ignoring and deleting the damaged or foreign prompt-state file %s", path)
            self._unlink(path)
            return None
        try:
            os.utime(path)  # LRU by mtime: a state in use is the last one evicted
        except OSError:
            pass
        del data[:payload_start]  # in place: the payload stays the only copy
        return data

    def _check(self, data: bytearray, got: int, key: str, n_tokens: int) -> int | None:
        """Offset of the payload if the file is complete and is the state for `key`, else None."""
        head = len(self.MAGIC) + 4
        if got != len(data) or got < head or bytes(data[:len(self.MAGIC)]) != self.MAGIC:
            return None
        (header_len,) = struct.unpack("<I", data[len(self.MAGIC):head])
        if header_len > got - head:
            return None
        try:
            header = json.loads(bytes(data[head:head + header_len]).decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None
        start = head + header_len
        if not isinstance(header, dict) or header.get("format") != self.FORMAT or header.get("key") != key:
            return None
        if header.get("n_tokens") != n_tokens or header.get("payload_bytes") != got - start:
            return None
        if header.get("crc32") != zlib.crc32(memoryview(data)[start:]):
            return None
        return start

    def save(self, tokens: Sequence[int], state: bytes | bytearray) -> bool:
        """Write the state of this token piece (atomically), then evict the oldest files beyond the capacity.
        False if it was not written (too large, or a file-system error)."""
        if not state or len(state) > self.capacity_bytes:
            return False
        key = self.key(tokens)
        header = json.dumps({"format": self.FORMAT, "key": key, "n_tokens": len(tokens),
                             "payload_bytes": len(state), "crc32": zlib.crc32(state),
                             "created": time.time()}).encode("utf-8")
        target = self.directory / f"{key}{self.SUFFIX}"
        tmp: str | None = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".partial-", suffix=self.SUFFIX, dir=self.directory)
            with os.fdopen(fd, "wb") as f:
                f.write(self.MAGIC + struct.pack("<I", len(header)) + header)
                f.write(state)
            os.replace(tmp, target)
            tmp = None
        except OSError as exc:
            log.warning("could not save a prompt state in %s: %s", self.directory, exc)
            return False
        finally:
            if tmp is not None:
                self._unlink(Path(tmp))
        self.evict(keep=target)
        return True

    def entries(self) -> list[tuple[Path, int, int]]:
        """(path, bytes, mtime_ns) of every state file, oldest first."""
        found = []
        try:
            candidates = list(self.directory.glob(f"*{self.SUFFIX}"))
        except OSError:
            return []
        for path in candidates:
            if path.name.startswith(".partial-"):
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            found.append((path, st.st_size, st.st_mtime_ns))
        found.sort(key=lambda entry: entry[2])
        return found

    def evict(self, keep: Path | None = None) -> int:
        """Delete the least recently used files until the folder holds at most `capacity_bytes`; returns how
        many were deleted. `keep` (the file just written) goes last."""
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        removed = 0
        for path, size, _ in sorted(entries, key=lambda entry: entry[0] == keep):
            if total <= self.capacity_bytes:
                break
            if self._unlink(path):
                removed += 1
            total -= size
        return removed

    def nbytes(self) -> int:
        return sum(size for _, size, _ in self.entries())

    def clear(self) -> None:
        for path, _, _ in self.entries():
            self._unlink(path)

    @staticmethod
    def _unlink(path: Path) -> bool:
        try:
            path.unlink()
            return True
        except FileNotFoundError:
            return False
        except OSError as exc:
            log.warning("could not delete %s: %s", path, exc)
            return False


def common_prefix_length(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> int:
    """How many leading tokens `a` and `b` share (vectorised: the Python loop cost ~0.4 ms per call on a
    4.6k-token prompt, several times per example)."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.flatnonzero(np.asarray(a[:n], dtype=np.int64) != np.asarray(b[:n], dtype=np.int64))
    return int(differ[0]) if differ.size else n


class LlamaContextCursor:
    """Keeps a Llama's context positioned at a token sequence and reads the logits of its last token.

    Call only from the model's owner thread. Bookkeeping follows `Llama.generate()`:
    `llama.input_ids[:llama.n_tokens]` are the tokens in the KV cache, and moving to another sequence keeps the
    common prefix (`llama_memory_seq_rm` of the rest) and evaluates only the remainder.

    Determinism: llama.cpp's numbers for a token depend on how it was batched (a quantised model's logits move
    by ~1e-2 between a 1-token and a 40-token batch), so reusing whatever prefix happens to be cached would make
    a result depend on the previous call. The cursor therefore evaluates on a fixed schedule: `begin(prompt,
    system_end)` cuts every sequence of the call (the prompt, or the prompt plus a continuation) at the end of
    the system part and at the end of the prompt, and each piece is one `eval()`: [0, system_end),
    [system_end, prompt_end), [prompt_end, end). Only whole pieces are reused, and across calls only the first.
    So every logits vector is a function of (prompt, continuation) alone, bit-identical with or without reuse,
    whatever came before.

    Prefix-state cache (for interleaved prompts): right after the first piece [0, system_end) is evaluated from
    an empty cache, the KV state of sequence 0 is copied into `prefix_cache` (keyed by those tokens); a later
    `begin()` whose system piece is not the one in the context but is in the cache clears the context and
    restores that state instead of evaluating the piece again. The restored KV entries are the bytes the
    evaluation produced, so what follows is bit-identical to the fresh path (tests check it). With a
    `disk_cache` the state is also written to a file, and a piece found in neither the context nor memory is
    loaded from its file (a new process, e.g. a reopened project, then skips the evaluation).
    """

    def __init__(self, llama: llama_cpp.Llama, *, reuse_prefix: bool = True,
                 prefix_cache: PrefixStateCache | None = None,
                 disk_cache: PrefixStateDiskCache | None = None) -> None:
        self.llama = llama
        self.reuse_prefix = reuse_prefix
        self.prefix_cache = prefix_cache if reuse_prefix else None
        self.disk_cache = disk_cache if reuse_prefix else None
        self.n_vocab = llama.n_vocab()
        self.n_swa = int(llama_capi.llama_model_n_swa(llama.model))
        self.stats = EvalStats()
        self.anchor: int | None = None      # tokens [0, anchor) were evaluated as one piece from position 0
        self._boundaries: tuple[int, ...] = ()
        self._logits_at: int | None = None  # n_tokens for which the current logits were decoded

    def _memory(self):
        return llama_capi.llama_get_memory(self.llama.ctx)

    def _clear(self) -> None:
        memory = self._memory()
        if memory is not None:
            # data=False: only the cell metadata. Clearing the data memsets the whole KV buffer (150 MB for a
            # 270M model at n_ctx 8192), which cost more than restoring a state; cells not in use are masked
            # out and their old (finite) values never reach a result.
            llama_capi.llama_memory_clear(memory, False)
        self.llama.n_tokens = 0
        self.anchor = None
        self._logits_at = None

    def _can_keep(self, keep: int) -> bool:
        """Whether the cache still holds every position the token at `keep` attends to. A sliding-window
        (SWA) cache that is not full-size drops old positions; recurrent memories cannot be trimmed."""
        memory = self._memory()
        if memory is None:
            return False
        pos_min = int(llama_capi.llama_memory_seq_pos_min(memory, 0))
        if pos_min < 0:
            return False
        required = max(0, keep - self.n_swa) if self.n_swa > 0 else 0
        return pos_min <= required

    def _truncate(self, keep: int) -> int:
        """Drop the cache from position `keep` on; returns what is kept (0 if the cache had to be cleared)."""
        llama = self.llama
        if keep >= llama.n_tokens:
            return llama.n_tokens
        if keep > 0 and self._can_keep(keep) and llama_capi.llama_memory_seq_rm(self._memory(), 0, keep, -1):
            llama.n_tokens = keep
            self._logits_at = None
            if self.anchor is not None and self.anchor > keep:
                self.anchor = None
            return keep
        if keep > 0:
            self.stats.full_resets += 1
        self._clear()
        return 0

    def reset(self) -> None:
        """Empty the KV cache (the next position() evaluates from scratch)."""
        self._clear()

    def begin(self, prompt: Sequence[int], system_end: int) -> None:
        """Start a call whose prompt is `prompt` and whose first `system_end` tokens depend only on the system
        prompt: keep that piece if it is what the cache starts with, else start from an empty cache."""
        llama = self.llama
        prompt = [int(t) for t in prompt]
        if len(prompt) > llama.n_ctx():
            raise PromptTooLong(f"The prompt needs {len(prompt)} tokens but the context is {llama.n_ctx()} tokens.")
        system_end = max(0, min(system_end, len(prompt) - 1))
        self._boundaries = tuple(sorted({system_end, len(prompt)} - {0}))
        if (self.reuse_prefix and system_end > 0 and self.anchor == system_end
                and llama.n_tokens >= system_end
                and common_prefix_length(llama.input_ids[:system_end], prompt) == system_end):
            if self._truncate(system_end) == system_end:
                return
        self._clear()
        if system_end > 0 and len(self._boundaries) > 1:
            self._restore_saved(prompt[:system_end])

    # -- prefix-state caches ---------------------------------------------------------------------------
    @property
    def keeps_states(self) -> bool:
        return self.prefix_cache is not None or self.disk_cache is not None

    def attach_disk_cache(self, disk_cache: PrefixStateDiskCache | None) -> None:
        self.disk_cache = disk_cache if self.reuse_prefix else None

    def _restore_saved(self, system_tokens: Sequence[int]) -> bool:
        """Restore the system piece from memory, else from disk (then kept in memory too). The context is
        cleared on entry and stays cleared on a miss."""
        key = tuple(system_tokens)
        if self.prefix_cache is not None:
            state = self.prefix_cache.get(key)
            if state is not None and self._restore(system_tokens, state):
                return True
        if self.disk_cache is None:
            return False
        state = self.disk_cache.load(key)
        if state is None:
            return False
        if not self._restore(system_tokens, state):
            # Intact file that llama.cpp refuses (e.g. a changed KV layout the key did not capture): drop it.
            self.stats.disk_rejects += 1
            self.disk_cache._unlink(self.disk_cache.path(key))
            return False
        self.stats.disk_loads += 1
        if self.prefix_cache is not None:
            self.stats.state_evictions += self.prefix_cache.put(key, state)
        return True

    def _save_state(self, system_tokens: Sequence[int]) -> None:
        key = tuple(int(t) for t in system_tokens)
        memory_cache, disk_cache = self.prefix_cache, self.disk_cache
        in_memory = memory_cache is None or key in memory_cache
        on_disk = disk_cache is None or key in disk_cache
        if in_memory and on_disk:
            return
        ctx = self.llama.ctx
        size = int(llama_capi.llama_state_seq_get_size(ctx, 0))
        if size <= 0:
            return
        state = bytearray(size)
        view = (ctypes.c_uint8 * size).from_buffer(state)  # llama.cpp writes straight into the bytearray
        written = int(llama_capi.llama_state_seq_get_data(ctx, view, size, 0))
        del view  # release the buffer export so the bytearray can be trimmed
        if written <= 0:
            return
        del state[written:]
        if not in_memory and len(state) <= memory_cache.capacity_bytes:  # type: ignore[union-attr]
            self.stats.state_evictions += memory_cache.put(key, state)  # type: ignore[union-attr]
            self.stats.state_saves += 1
        if not on_disk and disk_cache.save(key, state):  # type: ignore[union-attr]
            self.stats.disk_saves += 1

    def _restore(self, system_tokens: Sequence[int], state: bytes | bytearray) -> bool:
        """Load a saved system-piece state into the (cleared) context; False (context cleared) on failure."""
        llama = self.llama
        n = len(system_tokens)
        if isinstance(state, bytearray):
            buffer = (ctypes.c_uint8 * len(state)).from_buffer(state)  # no copy
        else:
            buffer = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        try:
            loaded = int(llama_capi.llama_state_seq_set_data(llama.ctx, buffer, len(state), 0))
        finally:
            del buffer
        if loaded != len(state):
            log.warning("could not restore a saved prompt state; evaluating the prompt again")
            self._clear()
            return False
        memory = self._memory()
        if memory is None or int(llama_capi.llama_memory_seq_pos_max(memory, 0)) != n - 1:
            self._clear()
            return False
        llama.input_ids[:n] = system_tokens
        llama.n_tokens = n
        self.anchor = n
        self._logits_at = None
        self.stats.state_restores += 1
        return True

    def position(self, tokens: Sequence[int]) -> None:
        """Make `tokens` the evaluated sequence, with fresh logits for its last token."""
        llama = self.llama
        target = [int(t) for t in tokens]
        if not target:
            raise ValueError("Cannot position the context at an empty token sequence.")
        if len(target) > llama.n_ctx():
            raise PromptTooLong(f"The prompt needs {len(target)} tokens but the context is {llama.n_ctx()} tokens.")
        self.stats.calls += 1
        n = llama.n_tokens
        common = common_prefix_length(llama.input_ids[:n], target) if n else 0
        if common == len(target) == n and self._logits_at == n:
            return
        # Keep only whole pieces of the schedule, and decode at least one token (for fresh logits).
        limit = min(common, len(target) - 1)
        system_end = self._boundaries[0] if len(self._boundaries) > 1 else None
        keep = max([0] + [b for b in self._boundaries if b <= limit and (b != system_end or self.anchor == b)])
        keep = self._truncate(keep)
        self.stats.tokens_reused += keep
        cuts = [keep] + [b for b in self._boundaries if keep < b < len(target)] + [len(target)]
        try:
            for start, stop in itertools.pairwise(cuts):
                llama.eval(target[start:stop])
                self.stats.tokens_evaluated += stop - start
                if start == 0:
                    self.anchor = stop
                    if (self.keeps_states and stop < len(target) and len(self._boundaries) > 1
                            and stop == self._boundaries[0]):
                        self._save_state(target[:stop])
        except BaseException:
            self._clear()  # the cache is in an unknown state
            raise
        self._logits_at = llama.n_tokens

    def last_logits(self) -> np.ndarray:
        """The logits after the last evaluated token: a view into llama.cpp's buffer, valid until the next
        evaluation (copy what you keep)."""
        if self._logits_at is None or self._logits_at != self.llama.n_tokens:
            raise RuntimeError("No fresh logits: call position() first.")
        pointer = llama_capi.llama_get_logits_ith(self.llama.ctx, -1)
        if not pointer:
            raise RuntimeError("llama.cpp returned no logits for the last token.")
        return np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))


# ---------------------------------------------------------------------------
# AMX guard: llama.cpp's "extra buffer types" (AMX tiles, weight repacking)
# ---------------------------------------------------------------------------
# A llama.cpp built with GGML_NATIVE on a CPU that reports AMX compiles AMX matmul kernels and uses them for
# quantised weights. Some virtual machines report AMX but cannot run it: the first decode dies with SIGSEGV
# in ggml_backend_amx_mul_mat (`ldtilecfg`), taking the whole app down. Loading with use_extra_bufts=False
# avoids AMX (and also the repacked kernels, which costs speed), so it is only done where a one-off probe in a
# subprocess crashed. The verdict is cached per llama.cpp build and CPU.
_PROBE_SOURCE = r"""
import sys, llama_cpp
llm = llama_cpp.Llama(sys.argv[1], n_ctx=256, n_batch=64, verbose=False)
tokens = llm.tokenize(b"The quick brown fox jumps over the lazy dog. " * 3, add_bos=True)[:32]
llm.eval(tokens)
llm.eval([tokens[1]])
print("probe-ok")
"""
_extra_bufts_lock = threading.Lock()
_extra_bufts_verdict: bool | None = None
_default_params_lock = threading.Lock()


def _cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_tile" in line.split()
    except OSError:
        pass
    return False


def _ggml_cpu_library() -> Path | None:
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    for pattern in ("libggml-cpu*.so*", "libggml-cpu*.dylib", "ggml-cpu*.dll", "libggml.so*"):
        for candidate in sorted(lib_dir.glob(pattern)):
            if candidate.is_file() and not candidate.is_symlink():
                return candidate
    return None


def _library_has_amx_kernels(lib: Path) -> bool:
    try:
        return b"ggml_backend_amx_buffer_type" in lib.read_bytes()
    except OSError:
        return False


def extra_buffer_types_usable(probe_model: str | os.PathLike[str]) -> bool:
    """Whether models may be loaded with llama.cpp's extra buffer types (AMX / repacked weights) on this machine.
    True at once unless both the CPU and the llama.cpp build have AMX; then a small decode of `probe_model` runs
    once in a subprocess (a crash there is harmless) and the verdict is cached in ~/.cache/pld-desktop/."""
    global _extra_bufts_verdict
    with _extra_bufts_lock:
        if _extra_bufts_verdict is not None:
            return _extra_bufts_verdict
        lib = _ggml_cpu_library()
        if not _cpu_has_amx() or lib is None or not _library_has_amx_kernels(lib):
            _extra_bufts_verdict = True
            return True
        st = lib.stat()
        key = f"{llama_cpp.__version__}|{lib.resolve()}|{st.st_size}|{st.st_mtime_ns}|{_cpu_model_name()}"
        verdict_file = cache_dir() / "llama-amx-probe.json"
        try:
            cached = json.loads(verdict_file.read_text(encoding="utf-8"))
            if cached.get("key") == key and isinstance(cached.get("usable"), bool):
                _extra_bufts_verdict = cached["usable"]
                return _extra_bufts_verdict
        except (OSError, ValueError, AttributeError):
            pass
        try:
            proc = subprocess.run([sys.executable, "-c", _PROBE_SOURCE, str(probe_model)], capture_output=True,
                                  text=True, timeout=180, stdin=subprocess.DEVNULL)
            usable = proc.returncode == 0 and "probe-ok" in proc.stdout
            detail = f"exit code {proc.returncode}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            usable, detail = False, str(exc)
        if not usable:
            log.warning("llama.cpp's AMX kernels crash on this machine (%s); models load without extra buffer "
                        "types (no AMX, no weight repacking: slower but safe)", detail)
        _extra_bufts_verdict = usable
        try:
            verdict_file.parent.mkdir(parents=True, exist_ok=True)
            verdict_file.write_text(json.dumps({"key": key, "usable": usable, "detail": detail}), encoding="utf-8")
        except OSError:
            pass
        return usable


def _cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _smallest_probe_model(model_path: Path) -> Path:
    """The bundled SmolLM2 file (small, Q4_1: uses the AMX kernels) if installed, else the model itself."""
    try:
        candidate = bundled_local_teacher_path()
        return candidate if candidate.stat().st_size < model_path.stat().st_size else model_path
    except (ModelFileError, OSError):
        return model_path


def load_llama(model_path: str | os.PathLike[str], *, use_extra_bufts: bool = True,
               **kwargs: Any) -> llama_cpp.Llama:
    """`llama_cpp.Llama(model_path, **kwargs)`, optionally with the model parameter use_extra_bufts=False, which
    `Llama.__init__` does not expose: its llama_model_default_params() is wrapped for the duration of the call
    (loads are serialised by a lock so no other load sees the wrapper)."""
    with _default_params_lock:
        if use_extra_bufts:
            return llama_cpp.Llama(model_path=str(model_path), **kwargs)
        original = llama_capi.llama_model_default_params

        def default_params_without_extra_bufts():
            params = original()
            params.use_extra_bufts = False
            return params

        llama_capi.llama_model_default_params = default_params_without_extra_bufts
        try:
            return llama_cpp.Llama(model_path=str(model_path), **kwargs)
        finally:
            llama_capi.llama_model_default_params = original


# ---------------------------------------------------------------------------
# The owner thread
# ---------------------------------------------------------------------------
_live_owners: weakref.WeakSet[LlamaOwner] = weakref.WeakSet()


@atexit.register
def _close_live_owners() -> None:
    for owner in list(_live_owners):
        owner.close()


class LlamaOwner:
    """One dedicated thread that constructs a `llama_cpp.Llama`, runs every call on it and frees it.

    `submit(fn)` queues `fn(llama)` and returns a Future; `call(fn)` waits for the result. Jobs run one at a time in
    FIFO order; a job must not `call()` its own owner (that would deadlock, so it raises instead).
    Functions must not keep references to the Llama or to its buffers after they return.
    The constructor blocks until the model is loaded and raises `ModelFileError` for a missing, non-GGUF or
    unloadable (truncated, corrupted, unsupported) file.
    """

    def __init__(self, model_path: str | os.PathLike[str], *, n_ctx: int, n_threads: int | None = None,
                 n_threads_batch: int | None = None, seed: int = 0, name: str = "llama",
                 use_extra_bufts: bool | None = None, **llama_kwargs: Any) -> None:
        self.model_path = check_gguf_file(model_path)
        check_fits_memory(self.model_path)
        if n_ctx <= 0:
            raise ValueError(f"n_ctx must be positive, got {n_ctx}")
        if use_extra_bufts is None:
            use_extra_bufts = extra_buffer_types_usable(_smallest_probe_model(self.model_path))
        self.use_extra_bufts = use_extra_bufts
        self._kwargs = dict(n_ctx=int(n_ctx), n_threads=n_threads, n_threads_batch=n_threads_batch, seed=seed,
                            verbose=False, **llama_kwargs)
        self._jobs: queue.SimpleQueue[tuple[Future, Callable[[llama_cpp.Llama], Any]] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._loaded: Future[None] = Future()
        self._thread = threading.Thread(target=self._run, name=f"llama-owner:{name}", daemon=True)
        self._thread.start()
        try:
            self._loaded.result()
        except BaseException:
            self._thread.join()
            self._closed = True
            raise
        _live_owners.add(self)

    # -- worker ------------------------------------------------------------------------------------------
    def _load(self) -> llama_cpp.Llama:
        try:
            return load_llama(self.model_path, use_extra_bufts=self.use_extra_bufts, **self._kwargs)
        except ValueError as exc:
            text = str(exc)
            if "Failed to load model" in text or "Failed to get vocab" in text:
                raise ModelFileError(
                    f"llama.cpp could not load the model file {self.model_path}: the file may be truncated or "
                    f"corrupted, or its architecture is not supported by llama-cpp-python "
                    f"{llama_cpp.__version__}.") from exc
            if "Failed to create llama_context" in text:
                raise RuntimeError(
                    f"llama.cpp could not create a context of {self._kwargs['n_ctx']} tokens for "
                    f"{self.model_path.name} (not enough memory?). Lower the context size.") from exc
            raise

    def _run(self) -> None:
        try:
            llama = self._load()
        except BaseException as exc:
            self._loaded.set_exception(exc)
            return
        self._loaded.set_result(None)
        try:
            while True:
                item = self._jobs.get()
                if item is None:
                    break
                future, fn = item
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(fn(llama))
                except BaseException as exc:
                    future.set_exception(exc)
                del item, future, fn
        finally:
            llama.close()
            del llama

    # -- public ------------------------------------------------------------------------------------------
    @property
    def on_owner_thread(self) -> bool:
        return threading.current_thread() is self._thread

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, fn: Callable[[llama_cpp.Llama], T]) -> Future[T]:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"The model {self.model_path.name} has been closed.")
            future: Future[T] = Future()
            self._jobs.put((future, fn))
        return future

    def call(self, fn: Callable[[llama_cpp.Llama], T]) -> T:
        if self.on_owner_thread:
            raise RuntimeError("LlamaOwner.call() from a job on its own owner thread would deadlock: "
                               "call the function directly")
        return self.submit(fn).result()

    def close(self) -> None:
        """Finish the queued jobs, free the model and stop the thread. Safe to call more than once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._jobs.put(None)
        if not self.on_owner_thread:
            self._thread.join()
        _live_owners.discard(self)

    def __enter__(self) -> LlamaOwner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# ---------------------------------------------------------------------------
# Batched generation: several requests decoded together in one multi-sequence context
# ---------------------------------------------------------------------------
def decode_threads(cores: int | None = None) -> int:
    """Threads for a decode: every core that other work is not already using (1-minute load average).
    llama.cpp's threads spin at each barrier, so on oversubscribed cores one descheduled thread stalls the rest:
    measured on 2 cores at load 11, a SmolLM2 one-token decode took 2.0 s on 2 threads and 0.05-0.1 s on 1
    (on quiet cores 10.4 ms on 2 vs 14.7 ms on 1, issue 15)."""
    cores = max(1, cores or os.cpu_count() or 1)
    try:
        busy = int(os.getloadavg()[0] + 0.5)
    except (OSError, AttributeError):
        return cores
    return max(1, min(cores, cores - busy))


def default_parallel_sequences(n_ctx: int, per_request_tokens: int, cores: int | None = None) -> int:
    """How many requests to decode together: decoding k tokens in one batch costs far less than k single-token
    decodes (on SmolLM2 and 2 cores, 16 tokens ~60 ms vs 10 ms for one), up to about 8 per core; and every
    sequence needs room for its own part of the prompt plus its reply in the shared context."""
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
    future: Future = dataclass_field(default_factory=Future)
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
class GenerationStats:
    requests: int = 0
    decodes: int = 0            # llama_decode calls
    tokens_decoded: int = 0     # tokens sent to llama_decode (prompt and replies)
    generated: int = 0          # tokens sampled
    prefix_evaluations: int = 0  # shared prefixes evaluated
    prefix_restores: int = 0    # shared prefixes restored from the prefix-state caches (memory or disk)
    prefix_reuses: int = 0      # requests that started from a shared prefix already in the context
    max_parallel: int = 0       # most replies advanced by one llama_decode


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
    the request's grammar, then greedy. Owner thread only: `run()` serves jobs from a queue until it is empty.
    """

    N_PREFIX_HOLDERS = 2

    def __init__(self, llama: llama_cpp.Llama, *, n_ctx: int, n_parallel: int, n_threads: int,
                 repeat_penalty: float, penalty_last_n: int = 64,
                 prefix_cache: PrefixStateCache | None = None,
                 disk_cache: PrefixStateDiskCache | None = None) -> None:
        from llama_cpp import _internals
        self.llama = llama
        self.n_parallel = max(1, int(n_parallel))
        params = type(llama.context_params).from_buffer_copy(llama.context_params)
        params.n_ctx = int(n_ctx)
        params.n_seq_max = self.n_parallel + self.N_PREFIX_HOLDERS
        if hasattr(params, "kv_unified"):
            params.kv_unified = True  # one pool of cells: a prefix copied into many sequences is stored once
        params.n_threads = params.n_threads_batch = int(n_threads)
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
        self.closed = False
        self._slots = [_Slot(i) for i in range(self.n_parallel)]
        self._holders: OrderedDict[tuple[int, ...], int] = OrderedDict()
        self._free_holders = list(range(self.n_parallel, self.n_parallel + self.N_PREFIX_HOLDERS))

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
        self._ctx.close()

    # -- sequences ---------------------------------------------------------------------------------------
    def _memory(self) -> Any:
        return llama_capi.llama_get_memory(self.ctx)

    def _used(self) -> int:
        return sum(slot.reserved for slot in self._slots if slot.job is not None) + sum(map(len, self._holders))

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
            for start in range(0, len(prefix), self.n_batch):
                piece = prefix[start:start + self.n_batch]
                self._decode([(tok, start + i, seq, False) for i, tok in enumerate(piece)])
            self.stats.prefix_evaluations += 1
            self._save(prefix, seq)
        self._holders[prefix] = seq
        return seq

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
        from llama_cpp import _internals
        sampler = _internals.LlamaSampler()
        sampler.add_penalties(n_vocab=self.llama.n_vocab(), penalty_last_n=self.penalty_last_n,
                              penalty_repeat=self.repeat_penalty, penalty_freq=0.0, penalty_present=0.0)
        if grammar is not None:
            sampler.add_grammar(self.llama._model, grammar)
        sampler.add_greedy()
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
        code = int(llama_capi.llama_decode(self.ctx, batch))
        self.stats.decodes += 1
        self.stats.tokens_decoded += len(entries)
        if code != 0:
            raise RuntimeError(f"llama_decode failed with code {code} (context of {self.n_ctx} tokens full?)")

    # -- serving -----------------------------------------------------------------------------------------
    def _admit(self, slot: _Slot, job: GenerationJob) -> None:
        n = len(job.tokens)
        prefix_len = max(0, min(job.prefix_len, n - 1))
        slot.job, slot.generated, slot.last, slot.started = job, [], None, time.perf_counter()
        slot.reserved = n - prefix_len + job.max_tokens
        llama_capi.llama_memory_seq_rm(self._memory(), slot.seq_id, -1, -1)
        if prefix_len > 0:
            holder = self._holder(tuple(job.tokens[:prefix_len]))
            llama_capi.llama_memory_seq_cp(self._memory(), holder, slot.seq_id, -1, -1)
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
        llama_capi.llama_memory_clear(self._memory(), False)
        self._holders.clear()
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
                        for key in [k for k in self._holders if tuple(job.tokens[:len(k)]) != k]:
                            self._drop_holder(key)
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
            token = int(llama_capi.llama_sampler_sample(slot.sampler.sampler, self.ctx, index))
            self.stats.generated += 1
            if llama_capi.llama_vocab_is_eog(self._vocab, token):
                self._finish(slot, "stop")
                continue
            slot.generated.append(token)
            if len(slot.generated) >= job.max_tokens:
                self._finish(slot, "length")
            else:
                slot.last = token
