"""A latency-only stand-in for a Gemma 3 student we cannot download: the real architecture, random weights.

    python -m bench.synthetic_gguf OUT.gguf [--arch gemma3-4b|gemma3-1b] [--seed 0]

The file has exactly the architecture of Gemma 3 4B (or 1B): every gemma3.* hyper-parameter, every tensor name
and shape, the 262,144-token tokenizer. Only the weights are random (Q4_0 blocks with a small fixed scale, norms
near 1), so llama.cpp does the same work per token as on the real model and its run time per token is that of
the real model at Q4_0. THE PREDICTIONS ARE MEANINGLESS: use the file for timing (e.g. `python -m bench.student
--model OUT.gguf`), never for accuracy.

All metadata (tokenizer.ggml.* arrays, special token ids, flags) is copied byte for byte from the bundled Gemma 3
270M GGUF, which shares the 4B's tokenizer; the gemma3.* hyper-parameters and a few general.* keys (name, size
label, file type) are then replaced. The tensor list mirrors the 270M file's (same names, same per-layer set)
with the target shapes. Tensors are generated and written one at a time (peak RSS ~1.1 GB for the 4B: the parsed
template plus its ~380 MB token embedding), into a temporary file that is renamed at the end.

Caveats for the timings: every matrix is Q4_0, while a downloaded Gemma 3 4B is often Q4_K_M (token embedding
Q6_K, some attn_v/ffn_down Q6_K, the rest Q4_K), whose kernels run at a somewhat different speed; and the number
of label evaluations per example depends on the label probabilities (branches under 0.3% are not expanded),
which are random here.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

ARCH = "gemma3"
DISCLAIMER = ("Synthetic GGUF: the real Gemma 3 architecture with RANDOM weights. For latency measurements only; "
              "its predictions are meaningless.")
Q4_0 = gguf.GGMLQuantizationType.Q4_0
Q4_0_BLOCK, Q4_0_BYTES = gguf.GGML_QUANT_SIZES[Q4_0]  # 32 weights in 18 bytes: float16 scale + 16 bytes of nibbles
# Weight = scale * (nibble - 8), so |w| <= 0.16 and a row of 2560 random weights has an RMS of ~0.09: activations
# stay finite through 34 layers (every block output is RMS-normalised by Gemma's post-norms anyway).
Q4_0_SCALE = 0.02


@dataclass(frozen=True)
class Arch:
    """The hyper-parameters of one Gemma 3 text model (what llama.cpp's gemma3 loader reads)."""

    name: str
    size_label: str | None
    n_embd: int
    n_layer: int
    n_ff: int
    n_head: int
    n_head_kv: int
    head_dim: int  # key_length = value_length
    sliding_window: int
    context_length: int
    rope_scaling_factor: float | None = None  # linear; llama.cpp applies it to the global (non-SWA) layers only


ARCHS: dict[str, Arch] = {
    # From the Hugging Face configs of google/gemma-3-4b-it (text_config) and google/gemma-3-1b-it.
    "gemma3-4b": Arch("Gemma 3 4B", "4B", n_embd=2560, n_layer=34, n_ff=10240, n_head=8, n_head_kv=4,
                      head_dim=256, sliding_window=1024, context_length=131072, rope_scaling_factor=8.0),
    "gemma3-1b": Arch("Gemma 3 1B", "1B", n_embd=1152, n_layer=26, n_ff=6912, n_head=4, n_head_kv=1,
                      head_dim=256, sliding_window=512, context_length=32768),
    # Hidden (not in --help): a few-MB-of-layers variant for the tests; the 262k-token embedding stays.
    "tiny": Arch("Gemma 3 tiny test", None, n_embd=256, n_layer=2, n_ff=512, n_head=2, n_head_kv=1,
                 head_dim=128, sliding_window=64, context_length=8192),
}
PUBLIC_ARCHS = ("gemma3-4b", "gemma3-1b")


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: Any
    vtype: gguf.GGUFValueType
    sub_type: gguf.GGUFValueType | None = None


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # numpy order (rows, columns): a weight matrix is (n_out, n_in)
    quantized: bool  # Q4_0 if True, else F32


# ---------------------------------------------------------------------------
# The template: the bundled Gemma 3 270M GGUF
# ---------------------------------------------------------------------------
def template_path() -> Path:
    """The bundled Gemma 3 270M GGUF (assembled into ~/.cache on first use)."""
    from pld_desktop.backends.bundled import bundled_student_path
    return bundled_student_path()


def field_value(field: gguf.ReaderField) -> tuple[Any, gguf.GGUFValueType, gguf.GGUFValueType | None]:
    """(value, type, array item type) of a metadata field. Strings stay bytes: tokens are copied byte for byte
    (a few of them need not be valid UTF-8 on their own)."""
    vtype = field.types[0]
    if vtype == gguf.GGUFValueType.ARRAY:
        sub_type = field.types[-1]
        if sub_type == gguf.GGUFValueType.STRING:
            return [bytes(field.parts[i]) for i in field.data], vtype, sub_type
        return field.contents(), vtype, sub_type
    if vtype == gguf.GGUFValueType.STRING:
        return bytes(field.parts[-1]), vtype, None
    return field.contents(), vtype, None


def template_metadata(reader: gguf.GGUFReader) -> list[KeyValue]:
    """Every key-value pair of the template, in file order (not the reader's GGUF.* header pseudo-fields)."""
    if reader.fields["general.architecture"].contents() != ARCH:
        raise ValueError(f"the template GGUF is not a {ARCH} model")
    return [KeyValue(key, *field_value(field)) for key, field in reader.fields.items()
            if not key.startswith("GGUF.")]


def template_tensor_layout(reader: gguf.GGUFReader) -> tuple[list[str], list[str]]:
    """(the non-layer tensor names, the per-layer suffixes of block 0), in file order."""
    names = [t.name for t in reader.tensors]
    top = [n for n in names if not n.startswith("blk.")]
    layer = [n[len("blk.0."):] for n in names if n.startswith("blk.0.")]
    return top, layer


# ---------------------------------------------------------------------------
# The target: metadata and tensor plan
# ---------------------------------------------------------------------------
def arch_overrides(arch: Arch) -> dict[str, Any]:
    """The gemma3.* and general.* values that differ from the template (None removes a key)."""
    a = f"{ARCH}."
    values: dict[str, Any] = {
        "general.name": f"{arch.name} architecture, synthetic weights (latency only)",
        "general.size_label": arch.size_label,
        "general.description": DISCLAIMER,
        "general.file_type": int(gguf.LlamaFileType.MOSTLY_Q4_0),
        a + "context_length": arch.context_length,
        a + "embedding_length": arch.n_embd,
        a + "block_count": arch.n_layer,
        a + "feed_forward_length": arch.n_ff,
        a + "attention.head_count": arch.n_head,
        a + "attention.head_count_kv": arch.n_head_kv,
        a + "attention.key_length": arch.head_dim,
        a + "attention.value_length": arch.head_dim,
        a + "attention.sliding_window": arch.sliding_window,
        a + "rope.freq_base": 1_000_000.0,
        a + "rope.scaling.type": "linear" if arch.rope_scaling_factor else None,
        a + "rope.scaling.factor": arch.rope_scaling_factor,
    }
    return values


def _value_type(value: Any) -> gguf.GGUFValueType:
    if isinstance(value, bool):
        return gguf.GGUFValueType.BOOL
    if isinstance(value, int):
        return gguf.GGUFValueType.UINT32
    if isinstance(value, float):
        return gguf.GGUFValueType.FLOAT32
    return gguf.GGUFValueType.STRING


def target_metadata(template: Sequence[KeyValue], arch: Arch) -> list[KeyValue]:
    """The template's pairs with the overrides applied in place (keeping each key's type), new keys appended."""
    overrides = arch_overrides(arch)
    out: list[KeyValue] = []
    for kv in template:
        if kv.key not in overrides:
            out.append(kv)
        elif overrides[kv.key] is not None:
            out.append(KeyValue(kv.key, overrides[kv.key], kv.vtype))
    present = {kv.key for kv in template}
    out += [KeyValue(key, value, _value_type(value)) for key, value in overrides.items()
            if value is not None and key not in present]
    return out


def tensor_shape(name: str, arch: Arch, n_vocab: int) -> tuple[tuple[int, ...], bool]:
    """(numpy shape, quantized?) of a gemma3 tensor, by its name (layer prefix stripped)."""
    q_dim, kv_dim = arch.n_head * arch.head_dim, arch.n_head_kv * arch.head_dim
    shapes: dict[str, tuple[tuple[int, ...], bool]] = {
        "token_embd.weight": ((n_vocab, arch.n_embd), True),
        "output_norm.weight": ((arch.n_embd,), False),
        "attn_norm.weight": ((arch.n_embd,), False),
        "attn_q.weight": ((q_dim, arch.n_embd), True),
        "attn_k.weight": ((kv_dim, arch.n_embd), True),
        "attn_v.weight": ((kv_dim, arch.n_embd), True),
        "attn_q_norm.weight": ((arch.head_dim,), False),
        "attn_k_norm.weight": ((arch.head_dim,), False),
        "attn_output.weight": ((arch.n_embd, q_dim), True),
        "post_attention_norm.weight": ((arch.n_embd,), False),
        "ffn_norm.weight": ((arch.n_embd,), False),
        "ffn_gate.weight": ((arch.n_ff, arch.n_embd), True),
        "ffn_up.weight": ((arch.n_ff, arch.n_embd), True),
        "ffn_down.weight": ((arch.n_embd, arch.n_ff), True),
        "post_ffw_norm.weight": ((arch.n_embd,), False),
    }
    if name not in shapes:
        raise ValueError(f"the template has a tensor this script does not know how to size: {name}")
    return shapes[name]


def tensor_plan(top: Sequence[str], layer: Sequence[str], arch: Arch, n_vocab: int) -> list[TensorSpec]:
    """The template's tensor names (its top-level ones, then its block-0 set for every layer) with `arch` shapes."""
    plan = [TensorSpec(name, *tensor_shape(name, arch, n_vocab)) for name in top]
    for i in range(arch.n_layer):
        plan += [TensorSpec(f"blk.{i}.{suffix}", *tensor_shape(suffix, arch, n_vocab)) for suffix in layer]
    return plan


# ---------------------------------------------------------------------------
# Random tensor data
# ---------------------------------------------------------------------------
def q4_0_bytes_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return gguf.quant_shape_to_byte_shape(shape, Q4_0)


def random_q4_0(rng: np.random.Generator, shape: tuple[int, ...], scale: float = Q4_0_SCALE) -> np.ndarray:
    """Raw Q4_0 blocks (uint8, shape (rows, bytes per row)): random nibbles, every block scale = `scale`."""
    data = rng.integers(0, 256, size=q4_0_bytes_shape(shape), dtype=np.uint8)
    blocks = data.reshape(-1, Q4_0_BYTES)
    blocks[:, :2] = np.frombuffer(np.float16(scale).tobytes(), dtype=np.uint8)
    return data


def random_norm(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """RMS-norm weights near 1 (llama.cpp's Gemma GGUFs store the multiplier itself, 1 + the HF offset)."""
    return (1.0 + 0.02 * rng.standard_normal(shape)).astype(np.float32)


def tensor_data(rng: np.random.Generator, spec: TensorSpec) -> np.ndarray:
    return random_q4_0(rng, spec.shape) if spec.quantized else random_norm(rng, spec.shape)


def nbytes(spec: TensorSpec) -> int:
    if spec.quantized:
        return int(np.prod(q4_0_bytes_shape(spec.shape)))
    return int(np.prod(spec.shape)) * 4


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------
def _add_tensor_infos(writer: gguf.GGUFWriter, plan: Sequence[TensorSpec]) -> None:
    for spec in plan:
        if spec.quantized:
            writer.add_tensor_info(spec.name, q4_0_bytes_shape(spec.shape), np.dtype(np.uint8), nbytes(spec),
                                   raw_dtype=Q4_0)
        else:
            writer.add_tensor_info(spec.name, spec.shape, np.dtype(np.float32), nbytes(spec))


def _stream(plan: Sequence[TensorSpec], seed: int) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    for spec in plan:
        yield tensor_data(rng, spec)


def write_synthetic_gguf(out: str | os.PathLike[str], arch: str | Arch = "gemma3-4b", seed: int = 0,
                         template: str | os.PathLike[str] | None = None, *, progress: bool = False) -> Path:
    """Write the synthetic GGUF to `out` (atomically) and return its path."""
    spec = ARCHS[arch] if isinstance(arch, str) else arch
    reader = gguf.GGUFReader(template or template_path())
    metadata = target_metadata(template_metadata(reader), spec)
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    plan = tensor_plan(*template_tensor_layout(reader), spec, n_vocab)

    out_path = Path(out)
    partial = out_path.with_name(f"{out_path.name}.partial-{os.getpid()}")
    writer = gguf.GGUFWriter(partial, ARCH)
    try:
        for kv in metadata:
            if kv.key != "general.architecture":  # the writer adds it itself
                writer.add_key_value(kv.key, kv.value, kv.vtype, sub_type=kv.sub_type)
        _add_tensor_infos(writer, plan)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        # Tensor by tensor (write_tensors_to_file would need them all in memory at once).
        for i, data in enumerate(_stream(plan, seed)):
            writer.write_tensor_data(data)
            if progress and (i % 20 == 0 or i == len(plan) - 1):
                print(f"  tensor {i + 1}/{len(plan)}", file=sys.stderr, flush=True)
        writer.close()
        os.replace(partial, out_path)
    finally:
        writer.close()
        partial.unlink(missing_ok=True)
    return out_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=DISCLAIMER)
    parser.add_argument("out", help="the .gguf file to write")
    parser.add_argument("--arch", default="gemma3-4b", choices=list(ARCHS), metavar="{" + ",".join(PUBLIC_ARCHS) + "}",
                        help="architecture to mirror (default gemma3-4b)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    parser.add_argument("--template", default=None, help="a gemma3 GGUF to copy the metadata and tensor names "
                        "from (default: the bundled Gemma 3 270M)")
    args = parser.parse_args(argv)
    print(DISCLAIMER, flush=True)
    started = time.perf_counter()
    path = write_synthetic_gguf(args.out, args.arch, args.seed, args.template, progress=True)
    size = path.stat().st_size
    print(f"wrote {path} ({size / 2**30:.2f} GiB, {size:,} bytes) in {time.perf_counter() - started:.1f} s")
    print(DISCLAIMER)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
