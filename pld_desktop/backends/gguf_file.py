"""A GGUF file on disk: cheap checks before llama.cpp loads it, its header (the one reader), its identity.

Nothing here imports llama.cpp at module level or reads a model's weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import struct
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from pld_desktop.backends.bundled import ModelFileError
from pld_desktop.backends.cache_dir import cache_dir
from pld_desktop.core.protocols import ModelIdentity

__all__ = ["FILE_TYPE_NAMES", "GGML_TYPE_SIZES", "GGUF_MAGIC", "GGUFHeader", "HeaderError", "available_memory_bytes",
           "backend_name", "check_fits_memory", "check_gguf_file", "file_sha256", "has_sliding_window",
           "model_identity", "read_gguf_header", "read_gguf_metadata"]

log = logging.getLogger(__name__)

GGUF_MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# Numeric arrays up to this length are kept (per-layer head counts, say); longer ones (token scores) are skipped.
_MAX_KEPT_ARRAY = 4096
# A header larger than this is not a header (a corrupt length would otherwise make us read gigabytes).
_MAX_STRING = 64 << 20
_MAX_COUNT = 1 << 32

# ggml tensor types: (elements per block, bytes per block), as in ggml.h / gguf-py's GGML_QUANT_SIZES.
GGML_TYPE_SIZES: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 40),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82),
    23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2),
    34: (256, 54), 35: (256, 66), 39: (32, 17), 40: (64, 36), 41: (128, 18),
}
# general.file_type (llama.cpp's llama_ftype): the quantisation a file was made with.
FILE_TYPE_NAMES: dict[int, str] = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0",
    37: "TQ2_0", 38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0",
}
_TENSOR_TYPE_NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 10: "Q2_K",
                      11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 20: "IQ4_NL", 23: "IQ4_XS", 30: "BF16",
                      39: "MXFP4"}


class HeaderError(ValueError):
    """The file is not a readable GGUF header (not GGUF, too old, or cut off inside the header)."""


@dataclass(frozen=True)
class GGUFHeader:
    """The metadata (scalars, strings, short numeric arrays; long arrays as their length) and tensor table."""

    version: int
    metadata: dict[str, Any]
    array_lengths: dict[str, int]
    n_tensors: int
    n_params: int
    tensor_types: dict[int, int]          # ggml type -> number of elements stored in it
    data_offset: int                      # where the tensor data starts
    data_bytes: int | None                # bytes of tensor data the table describes (None: an unknown type)
    file_size: int
    tensor_names: tuple[str, ...] = field(default=(), repr=False)

    @property
    def expected_size(self) -> int | None:
        return None if self.data_bytes is None else self.data_offset + self.data_bytes

    @property
    def complete(self) -> bool | None:
        """Whether the file holds all the tensor data its header describes (None: cannot tell)."""
        expected = self.expected_size
        return None if expected is None else self.file_size >= expected

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture") or "")

    def arch_value(self, key: str) -> Any:
        """`<architecture>.<key>`, e.g. arch_value("context_length")."""
        return self.metadata.get(f"{self.architecture}.{key}")

    @property
    def quantisation(self) -> str:
        """The file type's name (Q4_K_M, ...), else the tensor type holding most elements."""
        file_type = self.metadata.get("general.file_type")
        if isinstance(file_type, int) and file_type in FILE_TYPE_NAMES:
            return FILE_TYPE_NAMES[file_type]
        if not self.tensor_types:
            return ""
        dominant = max(self.tensor_types.items(), key=lambda kv: kv[1])[0]
        return _TENSOR_TYPE_NAMES.get(dominant, f"type {dominant}")


# ---------------------------------------------------------------------------
# The header reader
# ---------------------------------------------------------------------------
class _HeaderReader:
    """Reads a GGUF header's values in order from an open file; EOFError when the file ends inside one."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f

    def read(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        raw = self.f.read(size)
        if len(raw) != size:
            raise EOFError
        return struct.unpack(fmt, raw)[0]

    def read_str(self) -> bytes:
        n = self.read("<Q")
        if n > _MAX_STRING:
            raise HeaderError(f"a string of {n} bytes in the header: the file is damaged")
        raw = self.f.read(n)
        if len(raw) != n:
            raise EOFError
        return bytes(raw)

    def text(self) -> str:
        return self.read_str().decode("utf-8", "replace")

    def version(self) -> int:
        """The signature and version (2 or later); HeaderError for a file that is not GGUF or is too old."""
        if self.f.read(4) != GGUF_MAGIC:
            raise HeaderError("not a GGUF file (it does not start with the GGUF signature)")
        version = int(self.read("<I"))
        if version < 2:
            raise HeaderError(f"GGUF version {version}, which this reader does not know")
        return version

    def value(self, vtype: int, key: str, array_lengths: dict[str, int]) -> Any:
        """A string, a scalar or a short numeric array; None for a long or non-numeric array (skipped, its length
        recorded in `array_lengths`)."""
        if vtype == _STRING:
            return self.text()
        if vtype in _SCALARS:
            return self.read(_SCALARS[vtype])
        if vtype == _ARRAY:
            return self._array(key, array_lengths)
        raise HeaderError(f"unknown GGUF value type {vtype} (key {key!r}): the file is damaged")

    def _array(self, key: str, array_lengths: dict[str, int]) -> Any:
        etype, count = self.read("<I"), self.read("<Q")
        if count > _MAX_COUNT:
            raise HeaderError(f"an array of {count} values in the header: the file is damaged")
        array_lengths[key] = count
        if etype in _SCALARS and count <= _MAX_KEPT_ARRAY:
            fmt = _SCALARS[etype]
            raw = self.f.read(struct.calcsize(fmt) * count)
            if len(raw) != struct.calcsize(fmt) * count:
                raise EOFError
            return list(struct.unpack("<" + fmt[1:] * count, raw)) if count else []
        if etype in _SCALARS:
            self.f.seek(struct.calcsize(_SCALARS[etype]) * count, os.SEEK_CUR)
            return None
        for _ in range(count):
            self.value(etype, "", array_lengths)
        return None

    def skip(self, vtype: int) -> None:
        """Move past a value without reading it."""
        if vtype == _STRING:
            self.f.seek(self.read("<Q"), os.SEEK_CUR)
        elif vtype == _ARRAY:
            etype, count = self.read("<I"), self.read("<Q")
            if etype in _SCALARS:
                self.f.seek(struct.calcsize(_SCALARS[etype]) * count, os.SEEK_CUR)
            else:
                for _ in range(count):
                    self.skip(etype)
        elif vtype in _SCALARS:
            self.f.seek(struct.calcsize(_SCALARS[vtype]), os.SEEK_CUR)
        else:
            raise HeaderError(f"unknown GGUF value type {vtype}: the file is damaged")


@dataclass
class _TensorTable:
    n_params: int = 0
    types: dict[int, int] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)
    end: int = 0            # the end of the furthest tensor's data, relative to the data offset
    known: bool = True      # every tensor type's size is known (else `end` is not the data size)


def _read_metadata(reader: _HeaderReader, n_kv: int) -> tuple[dict[str, Any], dict[str, int]]:
    metadata: dict[str, Any] = {}
    array_lengths: dict[str, int] = {}
    for _ in range(n_kv):
        key = reader.text()
        got = reader.value(reader.read("<I"), key, array_lengths)
        if got is not None:
            metadata[key] = got
    return metadata, array_lengths


def _read_tensor_table(reader: _HeaderReader, n_tensors: int) -> _TensorTable:
    table = _TensorTable()
    for _ in range(n_tensors):
        name = reader.text()
        n_dims = reader.read("<I")
        if n_dims > 8:
            raise HeaderError(f"tensor {name!r} has {n_dims} dimensions: the file is damaged")
        dims = [reader.read("<Q") for _ in range(n_dims)]
        ggml_type, offset = reader.read("<I"), reader.read("<Q")
        count = math.prod(dims)
        table.n_params += count
        table.types[ggml_type] = table.types.get(ggml_type, 0) + count
        table.names.append(name)
        if ggml_type in GGML_TYPE_SIZES:
            block, nbytes = GGML_TYPE_SIZES[ggml_type]
            table.end = max(table.end, offset + count // block * nbytes)
        else:
            table.known = False
    return table


def _aligned(position: int, alignment: object) -> int:
    """`position` rounded up to the header's general.alignment (32 when missing or not a positive int)."""
    alignment = alignment if isinstance(alignment, int) and alignment > 0 else 32
    return -(-position // alignment) * alignment


def read_gguf_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Parse the header of a GGUF (version 2 or 3): every metadata key and the tensor table. Reads only the
    header (a few MB at most, mostly the tokenizer), never the weights. Raises HeaderError or OSError."""
    path = Path(path)
    file_size = path.stat().st_size
    with path.open("rb") as f:
        reader = _HeaderReader(f)
        try:
            version = reader.version()
            if version > 3:
                raise HeaderError(f"GGUF version {version}, which this reader does not know")
            n_tensors, n_kv = reader.read("<Q"), reader.read("<Q")
            if n_tensors > _MAX_COUNT or n_kv > _MAX_COUNT:
                raise HeaderError("implausible tensor or key counts: the file is damaged")
            metadata, array_lengths = _read_metadata(reader, n_kv)
            table = _read_tensor_table(reader, n_tensors)
        except EOFError:
            raise HeaderError(f"the file ends inside its header ({file_size:,} bytes): it is cut off") from None
        except struct.error as exc:
            raise HeaderError(f"the header is damaged ({exc})") from None
        data_offset = _aligned(f.tell(), metadata.get("general.alignment", 32))
    return GGUFHeader(version=version, metadata=metadata, array_lengths=array_lengths, n_tensors=n_tensors,
                      n_params=table.n_params, tensor_types=table.types, data_offset=data_offset,
                      data_bytes=table.end if table.known else None, file_size=file_size,
                      tensor_names=tuple(table.names))


def read_gguf_metadata(model_path: str | os.PathLike[str], keys: set[str]) -> dict[str, Any]:
    """Read the given scalar/string keys from a GGUF header without loading the model (stops as soon as all are
    found). Missing keys are left out; a malformed header gives an empty or partial dict, never an exception."""
    found: dict[str, Any] = {}
    try:
        with open(model_path, "rb") as f:
            reader = _HeaderReader(f)
            reader.version()
            _n_tensors, n_kv = reader.read("<Q"), reader.read("<Q")
            for _ in range(n_kv):
                key = reader.text()
                vtype = reader.read("<I")
                if key in keys and (vtype == _STRING or vtype in _SCALARS):
                    found[key] = reader.value(vtype, key, {})
                else:
                    reader.skip(vtype)
                if keys <= found.keys():
                    break
    except (OSError, EOFError, ValueError, struct.error, OverflowError):
        pass
    return found


# ---------------------------------------------------------------------------
# File checks
# ---------------------------------------------------------------------------
def has_sliding_window(model_path: str | os.PathLike[str]) -> bool:
    """Whether the GGUF declares sliding-window attention (Gemma 2/3); True if the header cannot be read (the
    cautious settings; the loader then says what is wrong)."""
    arch = read_gguf_metadata(model_path, {"general.architecture"}).get("general.architecture")
    if not isinstance(arch, str):
        return True
    window = read_gguf_metadata(model_path, {f"{arch}.attention.sliding_window"})
    return int(window.get(f"{arch}.attention.sliding_window", 0) or 0) > 0


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


def backend_name() -> str:
    import llama_cpp  # here, not at the top: the rest of this module needs no llama.cpp

    return f"llama.cpp (llama-cpp-python {llama_cpp.__version__})"


def model_identity(model_path: str | os.PathLike[str], metadata: Mapping[str, str] | None = None) -> ModelIdentity:
    """Name (GGUF general.name, else the file name), resolved path, sha256, size and backend of a model file.
    Pass `metadata` (e.g. `Llama.metadata`) when the model is loaded already; otherwise the header is read."""
    path = check_gguf_file(model_path)
    if metadata is None:
        metadata = read_gguf_metadata(path, {"general.name"})
    name = str(metadata.get("general.name") or "").strip() or path.name
    return ModelIdentity(name=name, path=str(path.resolve()), sha256=file_sha256(path),
                         size_bytes=path.stat().st_size, backend=backend_name())


