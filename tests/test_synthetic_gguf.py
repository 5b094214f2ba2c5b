"""bench/synthetic_gguf.py: the random-weight Gemma 3 stand-in, checked on its tiny variant (2 layers, embd 256).

Needs the bundled Gemma 3 270M (its tokenizer and tensor names are the template) and the `gguf` package (dev extra).
"""

from __future__ import annotations

import math
from pathlib import Path

import gguf  # the dev extra installs it: a missing package is a failure, not a skip
import numpy as np
import pytest

from bench.synthetic_gguf import ARCHS, Q4_0_SCALE, KeyValue, random_q4_0, target_metadata, write_synthetic_gguf
from pld_desktop.backends.llama_student import LlamaStudent

TINY = ARCHS["tiny"]
N_VOCAB = 262144


# Building the tiny file reads the bundled 270M model's 262k-token vocabulary twice in Python (~50 s): a real-model
# test of a bench tool, so it runs with the slow tests, not on every --fast run.
slow = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_gguf(tmp_path_factory.mktemp("synthetic") / "tiny.gguf", "tiny", seed=0)


def test_q4_0_blocks_carry_the_fixed_scale() -> None:
    data = random_q4_0(np.random.default_rng(0), (4, 64))
    assert data.shape == (4, 2 * 18) and data.dtype == np.uint8
    scales = data.reshape(-1, 18)[:, :2].copy().view(np.float16)
    assert np.all(scales == np.float16(Q4_0_SCALE))


def test_overrides_keep_types_and_drop_rope_scaling_for_1b() -> None:
    template = [KeyValue("gemma3.block_count", 18, gguf.GGUFValueType.UINT32),
                KeyValue("general.size_label", b"270M", gguf.GGUFValueType.STRING)]
    out = {kv.key: kv for kv in target_metadata(template, ARCHS["gemma3-1b"])}
    assert out["gemma3.block_count"].value == 26 and out["gemma3.block_count"].vtype == gguf.GGUFValueType.UINT32
    assert out["general.size_label"].value == "1B"
    assert "gemma3.rope.scaling.type" not in out
    four_b = {kv.key: kv.value for kv in target_metadata(template, ARCHS["gemma3-4b"])}
    assert four_b["gemma3.rope.scaling.type"] == "linear" and four_b["gemma3.rope.scaling.factor"] == 8.0


@slow
def test_tiny_file_has_the_arch_keys_tokenizer_and_shapes(tiny_gguf: Path) -> None:
    reader = gguf.GGUFReader(tiny_gguf)
    value = {key: field.contents() for key, field in reader.fields.items()
             if field.types and field.types[0] != gguf.GGUFValueType.ARRAY}
    assert value["general.architecture"] == "gemma3"
    assert value["gemma3.embedding_length"] == TINY.n_embd
    assert value["gemma3.block_count"] == TINY.n_layer
    assert value["gemma3.feed_forward_length"] == TINY.n_ff
    assert value["gemma3.attention.head_count"] == TINY.n_head
    assert value["gemma3.attention.head_count_kv"] == TINY.n_head_kv
    assert value["gemma3.attention.key_length"] == value["gemma3.attention.value_length"] == TINY.head_dim
    assert value["gemma3.attention.sliding_window"] == TINY.sliding_window
    assert value["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q4_0)
    assert "synthetic" in value["general.name"] and "general.size_label" not in value
    assert value["tokenizer.ggml.bos_token_id"] == 2
    tokens = reader.fields["tokenizer.ggml.tokens"]
    assert len(tokens.data) == N_VOCAB and tokens.contents(2) == "<bos>"

    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 2 + 13 * TINY.n_layer
    q_dim, kv_dim = TINY.n_head * TINY.head_dim, TINY.n_head_kv * TINY.head_dim
    expected = {  # GGUF order: (n_in, n_out)
        "token_embd.weight": [TINY.n_embd, N_VOCAB],
        "output_norm.weight": [TINY.n_embd],
        "blk.1.attn_q.weight": [TINY.n_embd, q_dim],
        "blk.1.attn_k.weight": [TINY.n_embd, kv_dim],
        "blk.1.attn_v.weight": [TINY.n_embd, kv_dim],
        "blk.1.attn_output.weight": [q_dim, TINY.n_embd],
        "blk.1.attn_q_norm.weight": [TINY.head_dim],
        "blk.1.ffn_gate.weight": [TINY.n_embd, TINY.n_ff],
        "blk.1.ffn_down.weight": [TINY.n_ff, TINY.n_embd],
        "blk.1.post_ffw_norm.weight": [TINY.n_embd],
    }
    for name, shape in expected.items():
        assert [int(d) for d in tensors[name].shape] == shape, name
    assert tensors["blk.0.ffn_up.weight"].tensor_type == gguf.GGMLQuantizationType.Q4_0
    assert tensors["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


@slow
def test_tiny_file_loads_and_classifies_with_finite_probabilities(tiny_gguf: Path) -> None:
    with LlamaStudent(tiny_gguf, n_ctx=1024, disk_cache_bytes=0) as student:
        prediction = student.classify("Classify the sentiment.", "I loved it", ["positive", "negative", "neutral"])
    assert set(prediction.probs) == {"positive", "negative", "neutral"}
    assert all(math.isfinite(p) and 0.0 <= p <= 1.0 for p in prediction.probs.values())
    assert sum(prediction.probs.values()) == pytest.approx(1.0, abs=1e-6)
