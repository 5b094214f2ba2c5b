"""Prefix-state caches: llama.cpp sequence states of system prompts, kept in memory (LRU) and on disk."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
import time
import zlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp.llama_cpp as llama_capi
import numpy as np

from pld_desktop.backends.cache_dir import cache_dir

__all__ = ["PrefixStateCache", "PrefixStateDiskCache", "state_settings"]

log = logging.getLogger(__name__)


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
        start: int = head + header_len  # header_len comes from struct.unpack (Any)
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


