"""F16 copies for the batched teacher (unpacked_weights.py): which models get one, how it is made, kept and checked."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import gguf  # the dev extra installs it: a missing package is a failure, not a skip
import numpy as np
import pytest

from pld_desktop.backends import unpacked_weights as uw
from pld_desktop.backends.bundled import bundled_local_teacher_path, bundled_student_path
from pld_desktop.backends.gguf_file import read_gguf_header
from tests.gguf_files import write_tiny_gguf


def test_only_small_models_stored_mostly_in_offset_types_are_unpacked_and_only_on_x86() -> None:
    smol = read_gguf_header(bundled_local_teacher_path())      # Q4_1 matrices, Q8_0 embeddings
    reason = uw.unpack_reason(smol, machine="x86_64")
    assert reason is not None and reason.startswith("Q4_1 weights (79% of the model)")
    assert uw.unpack_reason(smol, machine="AMD64") is not None
    assert uw.unpack_reason(smol, machine="arm64") is None      # measured on x86 only
    # Gemma 3 270M Q4_K_M: Q8_0 embeddings, Q5_0 and Q4_K matrices, all with batched kernels.
    assert uw.unpack_reason(read_gguf_header(bundled_student_path()), machine="x86_64") is None
    n = smol.n_params
    q5_1 = dataclasses.replace(smol, tensor_types={7: n * 3 // 4, 8: n - n * 3 // 4})
    assert (uw.unpack_reason(q5_1, machine="x86_64") or "").startswith("Q5_1 weights (75%")
    few = dataclasses.replace(smol, tensor_types={3: n // 3, 8: n - n // 3})  # mostly fast types
    assert uw.unpack_reason(few, machine="x86_64") is None
    big = dataclasses.replace(smol, n_params=uw.MAX_UNPACKED_BYTES, tensor_types={3: uw.MAX_UNPACKED_BYTES})
    assert uw.unpack_reason(big, machine="x86_64") is None      # its F16 copy would be 2 GiB
    cut = dataclasses.replace(smol, file_size=smol.data_offset + 10)
    assert uw.unpack_reason(cut, machine="x86_64") is None      # a truncated file is the loader's to report


class _FakeQuantize:
    """Stands in for llama_model_quantize: writes a tiny valid GGUF (or fails with `code`)."""

    def __init__(self, code: int = 0) -> None:
        self.calls: list[tuple[bytes, bytes, int]] = []
        self.code = code

    def __call__(self, source: bytes, target: bytes, params: Any) -> int:
        self.calls.append((source, target, int(params.ftype)))
        write_tiny_gguf(Path(os.fsdecode(target)), weight_elements=256)
        return self.code


@pytest.fixture
def fake_quantize(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> _FakeQuantize:
    monkeypatch.setenv("PLD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(uw.platform, "machine", lambda: "x86_64")
    fake = _FakeQuantize()
    monkeypatch.setattr(uw.llama_cpp, "llama_model_quantize", fake)
    return fake


def _folder_files(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "cache" / "unpacked-weights").iterdir())


def test_a_copy_is_made_once_then_reused_and_a_damaged_one_is_made_again(fake_quantize: _FakeQuantize,
                                                                         tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    source = bundled_local_teacher_path()
    path, reason = uw.batched_weights(source, "ab" * 32)
    assert path != source and path.name == f"{'ab' * 20}.f16.gguf" and reason is not None
    assert len(fake_quantize.calls) == 1 and fake_quantize.calls[0][2] == uw.llama_cpp.LLAMA_FTYPE_MOSTLY_F16
    assert uw.batched_weights(source, "ab" * 32)[0] == path and len(fake_quantize.calls) == 1
    with open(path, "r+b") as f:                                   # cut short, as by a full disk
        f.truncate(path.stat().st_size // 2)
    assert uw.batched_weights(source, "ab" * 32)[0] == path and len(fake_quantize.calls) == 2
    assert read_gguf_header(path).complete
    assert _folder_files(tmp_path) == [path.name]                  # no partial file left behind
    # Not when the copy would not fit in the memory that is free (the source may still).
    monkeypatch.setattr(uw, "available_memory_bytes", lambda: source.stat().st_size * 2)
    assert uw.batched_weights(source, "12" * 32) == (source, None) and len(fake_quantize.calls) == 2
    # A model with fast batched kernels is decoded as it is: no copy.
    student = bundled_student_path()
    assert uw.batched_weights(student, "cd" * 32) == (student, None) and len(fake_quantize.calls) == 2


def test_a_copy_that_cannot_be_made_leaves_the_source_and_nothing_behind(fake_quantize: _FakeQuantize,
                                                                        tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    fake_quantize.code = 1
    source = bundled_local_teacher_path()
    with caplog.at_level(logging.WARNING, logger=uw.__name__):
        assert uw.batched_weights(source, "ef" * 32) == (source, None)
    assert "could not write an F16 copy" in caplog.text
    assert _folder_files(tmp_path) == []


def test_the_folder_keeps_the_most_recently_used_copies(fake_quantize: _FakeQuantize, tmp_path: Path) -> None:
    source = bundled_local_teacher_path()
    first = uw.unpacked_copy(source, "01" * 32)
    second = uw.unpacked_copy(source, "02" * 32)
    os.utime(first, ns=(1, 1))
    os.utime(second, ns=(2, 2))
    uw.unpacked_copy(source, "01" * 32)                            # used again: now the newest
    third = uw.unpacked_copy(source, "03" * 32)
    assert _folder_files(tmp_path) == sorted([first.name, third.name])


@pytest.mark.slow
def test_the_copy_holds_the_sources_weights_rounded_once_to_f16(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLD_CACHE_DIR", str(tmp_path))
    source = bundled_local_teacher_path()
    copy = uw.unpacked_copy(source, "5e" * 32)                     # the real llama_model_quantize
    original = {t.name: t for t in gguf.GGUFReader(source).tensors}
    unpacked = {t.name: t for t in gguf.GGUFReader(copy).tensors}
    assert unpacked.keys() == original.keys()
    kinds = set()
    for name, tensor in original.items():
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32).reshape(-1)
        target = unpacked[name]
        kinds.add((tensor.tensor_type.name, target.tensor_type.name))
        got = np.asarray(target.data).astype(np.float32).reshape(-1)
        assert got.shape == values.shape, name
        if target.tensor_type == gguf.GGMLQuantizationType.F32:   # norms stay F32: exact
            np.testing.assert_array_equal(got, values, err_msg=name)
        else:
            # Rounded once to F16: within half an F16 step (2^-11 relative), allowed a whole step in case the
            # build's dequantization fuses d*q + m (one F32 step apart from numpy's) across a rounding boundary.
            # A requantization (to Q8_0, say) would be off by up to 2^-8.
            np.testing.assert_allclose(got, values, rtol=2.0 ** -10, atol=2.0 ** -24, err_msg=name)
    assert ("Q4_1", "F16") in kinds and ("Q8_0", "F16") in kinds
