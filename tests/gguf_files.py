"""Tiny valid GGUF files for model-store tests, written with the `gguf` package (the dev extra installs it)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np


def write_tiny_gguf(path: Path, *, arch: str = "qwen2", name: str = "Tiny Test Model", n_layer: int = 2,
                    n_embd: int = 64, n_head: int = 4, n_head_kv: int = 2, n_ctx_train: int = 8192,
                    weight_elements: int = 4096, chat_template: str | None = "{{ messages }}",
                    file_type: int = 15, split: tuple[int, int] | None = None,
                    pooling_type: int | None = None) -> Path:
    """A GGUF header with the keys the store reads, and one f32 tensor of `weight_elements` values (its data is
    the file's bulk, so a large count makes a file big enough to stop mid-download)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_context_length(n_ctx_train)
    writer.add_block_count(n_layer)
    writer.add_embedding_length(n_embd)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_file_type(file_type)
    if split is not None:  # (0-based part, parts), as llama.cpp's gguf-split writes them
        writer.add_uint16("split.no", split[0])
        writer.add_uint16("split.count", split[1])
    if pooling_type is not None:  # embedding models (bert, nomic-bert, ...) say how they pool
        writer.add_uint32(f"{arch}.pooling_type", pooling_type)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    writer.add_token_list([b"<s>", b"</s>", b"a", b"b"])
    rng = np.random.default_rng(0)
    writer.add_tensor("token_embd.weight", rng.standard_normal(weight_elements).astype(np.float32))
    writer.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
