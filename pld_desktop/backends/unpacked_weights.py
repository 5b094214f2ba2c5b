"""F16 copies of small GGUF models whose weight type has no batched matrix kernel on x86 CPUs.

llama.cpp multiplies a batch by Q4_1 or Q5_1 weights as one dot product per row and column: no repacked or
tiled kernel exists for these "offset" types on x86, so a decode of 8 sequences costs ~5 single ones. An F16
copy of the same weights goes through ggml's F16 matrix kernels instead. Measured (`python -m
bench.weight_types`) on the bundled SmolLM2-135M (Q4_1) on 2 cores, one llama_decode of 8 sequences: 37.5 ms on
Q4_1, 32.7 ms on the F16 copy (16: 69.4 vs 52.3 ms); a 50-token prompt piece 3.34 vs 2.12 ms per token; phase 1
of a 105-row sst2 sample 38.5 s vs 26.4-29.0 s.
One sequence alone decodes slower on F16 (10.6 vs 7.9 ms: more bytes read), so only the batched teacher
uses the copy, and only for small models, whose copy is a few hundred MB. Q4_0, Q5_0, Q8_0 and the K-quants
have fast batched kernels (Gemma 3 270M Q4_K_M: 44.4 ms per 8-sequence decode, 52.0 ms on its F16 copy).

The copy is faithful: every weight is the source's dequantized value (d*q + m) rounded once to F16, a relative
error of at most 2^-11, far below the 4-bit step itself. What changes is the arithmetic: activations stay in
F16 instead of being quantized to 8 bits, so greedy replies can differ where the model is near a tie, as
batching's floating-point order already makes them.
"""

from __future__ import annotations

import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import llama_cpp

from pld_desktop.backends.cache_dir import cache_dir
from pld_desktop.backends.gguf_file import GGUFHeader, HeaderError, available_memory_bytes, read_gguf_header
from pld_desktop.backends.quiet_load import quiet_llama

__all__ = ["MAX_UNPACKED_BYTES", "SLOW_BATCHED_TYPES", "batched_weights", "convert_model", "unpack_reason",
           "unpacked_copy"]

log = logging.getLogger(__name__)

# ggml tensor types without a batched kernel on x86 (measured: Q4_1, Q5_1; Q4_0, Q5_0, Q8_0 and Q4_K are fast).
SLOW_BATCHED_TYPES: dict[int, str] = {3: "Q4_1", 7: "Q5_1"}
# Bigger copies cost more memory than they save time: a 1B model's F16 copy would be 2 GB, read at every decode.
MAX_UNPACKED_BYTES = 1 << 30
KEEP_COPIES = 2  # the cache folder keeps the most recently used copies (one per teacher model in use)
_X86 = frozenset({"x86_64", "amd64", "x86", "i686", "i386"})


def unpack_reason(header: GGUFHeader, machine: str | None = None) -> str | None:
    """Why the batched teacher should decode an F16 copy of this model ("Q4_1 weights: ..."), or None."""
    machine = (machine if machine is not None else platform.machine()).lower()
    if machine not in _X86 or not header.n_params or header.complete is False:
        return None
    slow = {name: header.tensor_types.get(ggml_type, 0) for ggml_type, name in SLOW_BATCHED_TYPES.items()}
    name, count = max(slow.items(), key=lambda kv: kv[1])
    if count * 2 < header.n_params or header.n_params * 2 > MAX_UNPACKED_BYTES:
        return None
    return (f"{name} weights ({count / header.n_params:.0%} of the model) have no batched kernel on this CPU: "
            "the batched teacher decodes an F16 copy")


def _folder() -> Path:
    return cache_dir() / "unpacked-weights"


def unpacked_copy(source: str | os.PathLike[str], source_sha256: str) -> Path:
    """The F16 copy of `source` (made now if the cache has none): written under a temporary name and renamed, so
    a crash or a full disk never leaves a half copy under the final name. Raises OSError or RuntimeError."""
    folder = _folder()
    target = folder / f"{source_sha256[:40]}.f16.gguf"
    if target.is_file():
        try:
            if read_gguf_header(target).complete:
                os.utime(target)  # least recently used goes first
                return target
        except (OSError, HeaderError):
            pass
        log.warning("replacing the damaged F16 copy %s", target)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".partial-", suffix=".gguf", dir=folder)
    os.close(fd)
    try:
        convert_model(source, tmp, llama_cpp.LLAMA_FTYPE_MOSTLY_F16)
        os.replace(tmp, target)
        log.info("made an F16 copy of %s for batched decoding: %s (%.0f MB)", Path(source).name, target,
                 target.stat().st_size / 2**20)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _evict(keep=target)
    return target


def convert_model(source: str | os.PathLike[str], target: str | os.PathLike[str], ftype: int) -> None:
    """Write `source` to `target` in llama.cpp file type `ftype` (F16, or a requantization) with llama.cpp's own
    converter, quietly; RuntimeError when it fails or leaves an incomplete file."""
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True
    params.nthread = os.cpu_count() or 1
    with quiet_llama():
        code = int(llama_cpp.llama_model_quantize(os.fsencode(source), os.fsencode(target), params))
    if code != 0 or not read_gguf_header(target).complete:
        raise RuntimeError(f"llama.cpp could not write an F16 copy of {source} (code {code})"
                           if ftype == llama_cpp.LLAMA_FTYPE_MOSTLY_F16 else
                           f"llama.cpp could not convert {source} to file type {ftype} (code {code})")


def _evict(keep: Path) -> None:
    """Keep the KEEP_COPIES most recently used copies; delete partial files a crash left over an hour ago."""
    try:
        for partial in _folder().glob(".partial-*.gguf"):
            if time.time() - partial.stat().st_mtime > 3600:
                partial.unlink()
        copies = sorted((p for p in _folder().glob("*.f16.gguf") if p != keep), key=lambda p: p.stat().st_mtime_ns)
        for old in copies[:max(0, len(copies) - (KEEP_COPIES - 1))]:
            old.unlink()
    except OSError as exc:
        log.warning("could not tidy %s: %s", _folder(), exc)


def batched_weights(source: Path, source_sha256: str) -> tuple[Path, str | None]:
    """The file the batched teacher loads for `source` and why (None: the source itself). A copy that cannot be
    made is logged and the source used: the copy can make a run faster, never make it fail."""
    try:
        header = read_gguf_header(source)
    except (OSError, HeaderError):
        return source, None  # the loader reports what is wrong with the file
    reason = unpack_reason(header)
    if reason is None:
        return source, None
    free = available_memory_bytes()
    if free is not None and header.n_params * 2 * 2 > free:  # the copy must fit with room to spare
        log.info("decoding %s as it is: its F16 copy would need more memory than is free", source.name)
        return source, None
    try:
        return unpacked_copy(source, source_sha256), reason
    except (OSError, RuntimeError) as exc:
        log.warning("decoding %s as it is: %s", source.name, exc)
        return source, None
