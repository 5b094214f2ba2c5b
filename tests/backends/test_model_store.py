"""backends/model_store.py + gguf_file.py: GGUFs found where people keep them, described from their headers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gguf  # the dev extra installs it: a missing package is a failure, not a skip
import pytest

from pld_desktop.backends.bundled import (
    bundled_local_teacher_path,
    bundled_student_path,
)
from pld_desktop.backends.gguf_file import FILE_TYPE_NAMES, GGML_TYPE_SIZES, HeaderError, read_gguf_header
from pld_desktop.backends.model_store import (
    add_model_folder,
    describe_file,
    find_models,
    hf_hub_cache,
    memory_estimate,
    model_folders,
    model_locations,
)
from tests.gguf_files import write_tiny_gguf
from tests.helpers import home_with_three_stores

REPO_ROOT = Path(__file__).resolve().parents[2]


def _env(home: Path) -> dict[str, str]:
    """An environment whose every model location is inside `home` (nothing of the real machine leaks in)."""
    return {"HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "XDG_CONFIG_HOME": str(home / ".config"),
            "PATH": os.environ.get("PATH", "")}


def test_header_tables_match_gguf_py() -> None:
    for ggml_type, sizes in GGML_TYPE_SIZES.items():
        assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)] == sizes, ggml_type
    for file_type, name in FILE_TYPE_NAMES.items():
        assert gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_") == name


@pytest.mark.slow  # gguf-py parses the 262k-token vocabulary element by element: about a minute
@pytest.mark.parametrize("which", ["student", "teacher"])
def test_header_of_the_bundled_models_matches_gguf_py(which: str) -> None:
    path = bundled_student_path() if which == "student" else bundled_local_teacher_path()
    header = read_gguf_header(path)
    reader = gguf.GGUFReader(path)
    assert header.n_tensors == len(reader.tensors)
    assert header.n_params == sum(int(t.n_elements) for t in reader.tensors)
    assert header.data_offset == reader.data_offset
    assert header.expected_size == max(int(t.data_offset) + int(t.n_bytes) for t in reader.tensors)
    assert header.complete is True
    for key, field in reader.fields.items():
        if not key.startswith("GGUF.") and field.types and field.types[0] != gguf.GGUFValueType.ARRAY:
            assert header.metadata[key] == field.contents(), key
    assert header.array_lengths["tokenizer.ggml.tokens"] == len(reader.fields["tokenizer.ggml.tokens"].data)


def test_three_stores_are_found_with_their_architecture(tmp_path: Path) -> None:
    paths = home_with_three_stores(tmp_path)
    found = {m.source: m for m in find_models(_env(tmp_path))}
    assert set(found) == {"Hugging Face cache", "LM Studio", "Ollama"}
    hf, lms, ollama = found["Hugging Face cache"], found["LM Studio"], found["Ollama"]
    assert (hf.label, hf.path) == ("unsloth/gemma-3-270m-it-GGUF/gemma-3-270m-Q4_K_M.gguf", str(paths["hf"]))
    assert (hf.architecture, hf.status, hf.quantisation) == ("gemma3", "ok", "Q4_K_M")
    assert 250e6 < hf.n_params < 300e6 and hf.n_ctx_train == 32768 and hf.sliding_window == 512
    assert lms.label == "lmstudio-community/Tiny-GGUF/tiny-Q4_K_M.gguf"
    assert (lms.architecture, lms.name, lms.n_ctx_train, lms.has_chat_template) == ("qwen2", "Tiny Test Model",
                                                                                     8192, True)
    assert lms.n_params == 4096 + 64
    assert (ollama.label, ollama.architecture) == ("smollm2:135m", "llama")
    assert ollama.path == str(paths["ollama"]) and ollama.usable


def test_kv_cache_size_comes_from_the_header(tmp_path: Path) -> None:
    tiny = describe_file(write_tiny_gguf(tmp_path / "t.gguf", n_layer=3, n_embd=64, n_head=4, n_head_kv=2))
    assert tiny.kv_bytes_per_token == 3 * 2 * (16 + 16) * 2  # layers x kv heads x (k + v dims) x f16
    gemma = describe_file(bundled_student_path())
    # Gemma 3 270M: 18 layers, 1 KV head, 256-wide keys and values.
    assert gemma.kv_bytes_per_token == 18 * 1 * (256 + 256) * 2
    est = memory_estimate(gemma, 4096, available=2**40)
    assert est.kv_cache == 4096 * gemma.kv_bytes_per_token and est.weights == gemma.size_bytes
    assert est.fits is True
    assert memory_estimate(gemma, 4096, available=est.total - 1).fits is False


def test_partial_and_unreadable_files_are_listed_as_such(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    good = write_tiny_gguf(folder / "good.gguf", weight_elements=50_000)
    data = good.read_bytes()
    (folder / "cut-in-data.gguf").write_bytes(data[: len(data) - 1000])
    (folder / "cut-in-header.gguf").write_bytes(data[:40])
    (folder / "not-gguf.gguf").write_bytes(b"PK\x03\x04 this is a zip file" * 10)
    (folder / "empty.gguf").write_bytes(b"")
    env = _env(tmp_path)
    add_model_folder(folder, env)
    assert model_folders(env) == [str(folder.resolve())]
    by_name = {Path(m.path).name: m for m in find_models(env)}
    assert by_name["good.gguf"].status == "ok" and by_name["good.gguf"].source == "added folder"
    assert by_name["cut-in-data.gguf"].status == "partial"
    assert "header describes" in by_name["cut-in-data.gguf"].problem
    assert by_name["cut-in-data.gguf"].architecture == "qwen2"  # still described from its header
    assert by_name["cut-in-header.gguf"].status == "partial" and "cut off" in by_name["cut-in-header.gguf"].problem
    assert by_name["not-gguf.gguf"].status == "unreadable" and "signature" in by_name["not-gguf.gguf"].problem
    assert by_name["empty.gguf"].status in ("partial", "unreadable")
    assert not any(m.usable for name, m in by_name.items() if name != "good.gguf")
    with pytest.raises(HeaderError):
        read_gguf_header(folder / "not-gguf.gguf")


def test_only_the_first_part_of_a_split_model_can_be_chosen(tmp_path: Path) -> None:
    first = describe_file(write_tiny_gguf(tmp_path / "m-00001-of-00002.gguf", split=(0, 2)))
    second = describe_file(write_tiny_gguf(tmp_path / "m-00002-of-00002.gguf", split=(1, 2)))
    assert (first.split_part, first.split_count, first.usable) == (1, 2, True)
    assert (second.split_part, second.usable) == (2, False) and "choose part 1" in second.problem
    assert describe_file(write_tiny_gguf(tmp_path / "whole.gguf")).split_part == 0


def test_an_embedding_model_is_listed_but_cannot_be_chosen(tmp_path: Path) -> None:
    embedder = describe_file(write_tiny_gguf(tmp_path / "e.gguf", arch="nomic-bert", pooling_type=1))
    assert embedder.status == "ok" and not embedder.usable and "embedding model" in embedder.problem
    assert describe_file(write_tiny_gguf(tmp_path / "g.gguf", pooling_type=0)).usable


def test_ollama_manifest_with_a_missing_blob_and_hf_unfinished_download(tmp_path: Path) -> None:
    manifest = tmp_path / ".ollama" / "models" / "manifests" / "registry.ollama.ai" / "library" / "gemma3" / "4b"
    manifest.parent.mkdir(parents=True)
    manifest.write_text(json.dumps({"layers": [{"mediaType": "application/vnd.ollama.image.model",
                                                "digest": "sha256:" + "e" * 64}]}))
    bad = manifest.parent.parent / "broken" / "latest"
    bad.parent.mkdir()
    bad.write_text("{not json")
    repo = tmp_path / "hf" / "models--org--thing-GGUF" / "blobs"
    repo.mkdir(parents=True)
    tiny = write_tiny_gguf(tmp_path / "tiny.gguf", weight_elements=20_000).read_bytes()
    (repo / ("f" * 64 + ".incomplete")).write_bytes(tiny[:3000])
    env = {**_env(tmp_path), "HF_HUB_CACHE": str(tmp_path / "hf")}
    found = {m.label: m for m in find_models(env)}
    assert found["gemma3:4b"].status == "unreadable" and "missing" in found["gemma3:4b"].problem
    assert found["broken:latest"].status == "unreadable"
    unfinished = found["org/thing-GGUF (unfinished download)"]
    assert unfinished.status == "partial" and "resumes" in unfinished.problem


def test_locations_follow_the_environment(tmp_path: Path) -> None:
    env = {**_env(tmp_path), "HF_HOME": str(tmp_path / "hfhome"), "OLLAMA_MODELS": str(tmp_path / "om"),
           "LLAMA_CACHE": str(tmp_path / "lc")}
    assert hf_hub_cache(env) == tmp_path / "hfhome" / "hub"
    assert hf_hub_cache({**env, "HF_HUB_CACHE": str(tmp_path / "x")}) == tmp_path / "x"
    paths = {(loc.source, loc.path) for loc in model_locations(env)}
    assert ("Ollama", str(tmp_path / "om")) in paths and ("llama.cpp cache", str(tmp_path / "lc")) in paths
    assert ("LM Studio", str(tmp_path / ".cache" / "lm-studio" / "models")) in paths
    lc = write_tiny_gguf(tmp_path / "lc" / "ggml-org_tiny-GGUF_tiny.gguf")
    assert [m.path for m in find_models(env) if m.source == "llama.cpp cache"] == [str(lc)]


def test_pld_models_json_lists_all_three(tmp_path: Path) -> None:
    """The issue's check: a home with a GGUF in each of the HF cache, LM Studio and Ollama layouts."""
    home_with_three_stores(tmp_path)
    env = {**os.environ, **_env(tmp_path)}
    for var in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "OLLAMA_MODELS", "LLAMA_CACHE"):
        env.pop(var, None)
    out = subprocess.run([sys.executable, "-m", "pld_desktop.cli", "models", "--json"], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    listing = json.loads(out.stdout)
    archs = {m["source"]: m["architecture"] for m in listing["models"]}
    assert archs == {"Hugging Face cache": "gemma3", "LM Studio": "qwen2", "Ollama": "llama"}
    for m in listing["models"]:
        assert m["memory"]["kv_cache"] == m["kv_bytes_per_token"] * 4096
    assert {c["key"] for c in listing["curated"]} >= {"gemma-3-1b-it", "gemma-3-4b-it"}
    text = subprocess.run([sys.executable, "-m", "pld_desktop.cli", "models"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and "smollm2:135m" in text.stdout and "gemma3" in text.stdout



_LLAMA_SIZES = r"""
import sys, llama_cpp
llama = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=int(sys.argv[2]), verbose=True)
del llama
"""


@pytest.mark.slow
@pytest.mark.parametrize("which", ["student", "teacher"])
def test_memory_estimate_matches_what_llama_cpp_allocates(which: str) -> None:
    """KV cache exactly, work buffers within 15%, as llama.cpp itself reports them when it loads the model."""
    import re
    path = bundled_student_path() if which == "student" else bundled_local_teacher_path()
    out = subprocess.run([sys.executable, "-c", _LLAMA_SIZES, str(path), "2048"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    mib = 2 ** 20
    kv = sum(float(x) for x in re.findall(r"llama_kv_cache: size =\s+([\d.]+) MiB", out.stderr)) * mib
    compute = float(re.findall(r"CPU compute buffer size =\s+([\d.]+) MiB", out.stderr)[0]) * mib
    est = memory_estimate(describe_file(path), 2048, available=2**40)
    assert est.kv_cache == kv
    assert abs(est.compute - compute) / compute < 0.15
