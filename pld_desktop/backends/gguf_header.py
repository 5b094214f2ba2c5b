"""Read what a GGUF file says about its model (metadata and tensor shapes) from its header, never its weights."""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["FILE_TYPE_NAMES", "GGML_TYPE_SIZES", "GGUFHeader", "HeaderError", "read_gguf_header"]

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


def _reader(f: BinaryIO) -> tuple[Any, Any]:
    def read(fmt: str) -> Any:
        size = struct.calcsize(fmt)
        raw = f.read(size)
        if len(raw) != size:
            raise EOFError
        return struct.unpack(fmt, raw)[0]

    def read_str() -> bytes:
        n = read("<Q")
        if n > _MAX_STRING:
            raise HeaderError(f"a string of {n} bytes in the header: the file is damaged")
        raw = f.read(n)
        if len(raw) != n:
            raise EOFError
        return bytes(raw)

    return read, read_str


def read_gguf_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Parse the header of a GGUF (version 2 or 3): every metadata key and the tensor table. Reads only the
    header (a few MB at most, mostly the tokenizer), never the weights. Raises HeaderError or OSError."""
    path = Path(path)
    file_size = path.stat().st_size
    with path.open("rb") as f:
        read, read_str = _reader(f)

        def value(vtype: int, key: str) -> Any:
            if vtype == _STRING:
                return read_str().decode("utf-8", "replace")
            if vtype in _SCALARS:
                return read(_SCALARS[vtype])
            if vtype == _ARRAY:
                etype, count = read("<I"), read("<Q")
                if count > _MAX_COUNT:
                    raise HeaderError(f"an array of {count} values in the header: the file is damaged")
                array_lengths[key] = count
                if etype in _SCALARS and count <= _MAX_KEPT_ARRAY:
                    fmt = _SCALARS[etype]
                    raw = f.read(struct.calcsize(fmt) * count)
                    if len(raw) != struct.calcsize(fmt) * count:
                        raise EOFError
                    return list(struct.unpack("<" + fmt[1:] * count, raw)) if count else []
                if etype in _SCALARS:
                    f.seek(struct.calcsize(_SCALARS[etype]) * count, os.SEEK_CUR)
                    return None
                for _ in range(count):
                    value(etype, "")
                return None
            raise HeaderError(f"unknown GGUF value type {vtype} (key {key!r}): the file is damaged")

        try:
            if f.read(4) != GGUF_MAGIC:
                raise HeaderError("not a GGUF file (it does not start with the GGUF signature)")
            version = read("<I")
            if version < 2 or version > 3:
                raise HeaderError(f"GGUF version {version}, which this reader does not know")
            n_tensors, n_kv = read("<Q"), read("<Q")
            if n_tensors > _MAX_COUNT or n_kv > _MAX_COUNT:
                raise HeaderError("implausible tensor or key counts: the file is damaged")
            metadata: dict[str, Any] = {}
            array_lengths: dict[str, int] = {}
            for _ in range(n_kv):
                key = read_str().decode("utf-8", "replace")
                got = value(read("<I"), key)
                if got is not None:
                    metadata[key] = got
            n_params = 0
            types: dict[int, int] = {}
            names: list[str] = []
            end = 0
            known = True
            for _ in range(n_tensors):
                name = read_str().decode("utf-8", "replace")
                n_dims = read("<I")
                if n_dims > 8:
                    raise HeaderError(f"tensor {name!r} has {n_dims} dimensions: the file is damaged")
                dims = [read("<Q") for _ in range(n_dims)]
                ggml_type, offset = read("<I"), read("<Q")
                count = math.prod(dims)
                n_params += count
                types[ggml_type] = types.get(ggml_type, 0) + count
                names.append(name)
                if ggml_type in GGML_TYPE_SIZES:
                    block, nbytes = GGML_TYPE_SIZES[ggml_type]
                    end = max(end, offset + count // block * nbytes)
                else:
                    known = False
        except EOFError:
            raise HeaderError(f"the file ends inside its header ({file_size:,} bytes): it is cut off") from None
        except struct.error as exc:
            raise HeaderError(f"the header is damaged ({exc})") from None
        alignment = metadata.get("general.alignment", 32)
        alignment = alignment if isinstance(alignment, int) and alignment > 0 else 32
        data_offset = -(-f.tell() // alignment) * alignment
    return GGUFHeader(version=version, metadata=metadata, array_lengths=array_lengths, n_tensors=n_tensors,
                      n_params=n_params, tensor_types=types, data_offset=data_offset,
                      data_bytes=end if known else None, file_size=file_size, tensor_names=tuple(names))
