"""The GGUF models already on this machine (Hugging Face cache, LM Studio, Ollama, llama.cpp, added folders),
described from their headers, and the memory each needs at a given context size."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .gguf_file import GGUFHeader, HeaderError, read_gguf_header

__all__ = ["FoundModel", "Location", "MemoryEstimate", "add_model_folder", "describe_file", "find_models",
           "hf_hub_cache", "memory_estimate", "model_folders", "model_locations", "remove_model_folder"]

SOURCES = ("Hugging Face cache", "LM Studio", "Ollama", "llama.cpp cache", "added folder")
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
# Deep enough for LM Studio's publisher/repo/file and a user's own sorting, shallow enough not to crawl a home.
_MAX_FOLDER_DEPTH = 4
_FOLDERS_FILE = "model-folders.json"


@dataclass(frozen=True)
class Location:
    """A place models are kept, and whether it exists here."""

    source: str
    path: str
    exists: bool


@dataclass(frozen=True)
class FoundModel:
    """One GGUF file found on disk, described from its header.

    status: "ok"; "partial" (a download that did not finish, or a file shorter than its header says);
    "unreadable" (not GGUF, damaged, a missing blob). `problem` says what, in words.
    """

    path: str
    source: str
    label: str                  # how its source names it: repo/file, publisher/repo/file, gemma3:4b
    status: str
    problem: str = ""
    name: str = ""
    architecture: str = ""
    n_params: int = 0
    size_label: str = ""
    quantisation: str = ""
    size_bytes: int = 0
    n_ctx_train: int = 0
    has_chat_template: bool = False
    n_layer: int = 0
    n_embd: int = 0
    n_vocab: int = 0
    kv_bytes_per_token: int = 0  # f16 K and V over all layers, from the header's heads and dims
    sliding_window: int = 0
    split_part: int = 0          # 1-based part of a model split over several files (0: not split)
    split_count: int = 0
    embedding_only: bool = False  # an embedding model (pools its output; Ollama keeps these too)

    @property
    def usable(self) -> bool:
        """A complete language model that llama.cpp opens from this file: not a vision projector ('clip'), and of
        a split model only its first part (llama.cpp finds the others beside it)."""
        return (self.status == "ok" and self.architecture not in ("", "clip") and self.split_part <= 1
                and not self.embedding_only)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["usable"] = self.usable
        return data


# ---------------------------------------------------------------------------
# Where people keep models
# ---------------------------------------------------------------------------
def _home(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME") or Path.home())


def _xdg(env: Mapping[str, str], var: str, default: str) -> Path:
    value = env.get(var)
    return Path(value).expanduser() if value else _home(env) / default


def hf_hub_cache(env: Mapping[str, str] | None = None) -> Path:
    """The Hugging Face hub cache as huggingface_hub resolves it: HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE,
    HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub (~/.cache/huggingface/hub)."""
    env = os.environ if env is None else env
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return Path(env[var]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    return _xdg(env, "XDG_CACHE_HOME", ".cache") / "huggingface" / "hub"


def _config_dir(env: Mapping[str, str]) -> Path:
    return _xdg(env, "XDG_CONFIG_HOME", ".config") / "pld-desktop"


def model_folders(env: Mapping[str, str] | None = None) -> list[str]:
    """The folders the user added on this machine (kept in ~/.config/pld-desktop/model-folders.json, not in
    a project: a project moves between machines, folders do not)."""
    env = os.environ if env is None else env
    try:
        data = json.loads((_config_dir(env) / _FOLDERS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    folders = data.get("folders") if isinstance(data, dict) else None
    return [str(f) for f in folders or [] if isinstance(f, str)]


def _save_folders(folders: list[str], env: Mapping[str, str]) -> None:
    target = _config_dir(env) / _FOLDERS_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".model-folders-", dir=target.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"folders": folders}, f, indent=1)
    os.replace(tmp, target)


def add_model_folder(folder: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> list[str]:
    env = os.environ if env is None else env
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ValueError(f"The folder {path} does not exist.")
    resolved = str(path.resolve())
    folders = model_folders(env)
    if resolved not in folders:
        folders.append(resolved)
        _save_folders(folders, env)
    return folders


def remove_model_folder(folder: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> list[str]:
    env = os.environ if env is None else env
    target = str(Path(folder).expanduser().resolve())
    folders = [f for f in model_folders(env) if f not in (target, str(folder))]
    _save_folders(folders, env)
    return folders


def model_locations(env: Mapping[str, str] | None = None) -> list[Location]:
    """Every place searched, in order: the HF cache, LM Studio (current and older folder), Ollama (OLLAMA_MODELS,
    the user's store and the Linux service's), llama.cpp's cache (LLAMA_CACHE), then the added folders."""
    env = os.environ if env is None else env
    home = _home(env)
    places: list[tuple[str, Path]] = [("Hugging Face cache", hf_hub_cache(env)),
                                      ("LM Studio", home / ".lmstudio" / "models"),
                                      ("LM Studio", home / ".cache" / "lm-studio" / "models")]
    if env.get("OLLAMA_MODELS"):
        places.append(("Ollama", Path(env["OLLAMA_MODELS"]).expanduser()))
    places += [("Ollama", home / ".ollama" / "models"), ("Ollama", Path("/usr/share/ollama/.ollama/models"))]
    if env.get("LLAMA_CACHE"):
        places.append(("llama.cpp cache", Path(env["LLAMA_CACHE"]).expanduser()))
    else:
        places.append(("llama.cpp cache", _xdg(env, "XDG_CACHE_HOME", ".cache") / "llama.cpp"))
    places += [("added folder", Path(f)) for f in model_folders(env)]
    seen: set[Path] = set()
    out: list[Location] = []
    for source, path in places:
        if path in seen:
            continue
        seen.add(path)
        out.append(Location(source, str(path), path.is_dir()))
    return out


# ---------------------------------------------------------------------------
# Describing one file
# ---------------------------------------------------------------------------
def _int(value: Any) -> int:
    if isinstance(value, list):  # per-layer values (some architectures vary heads by layer)
        return int(max(value)) if value else 0
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def _kv_bytes_per_token(header: GGUFHeader) -> int:
    """f16 K and V cache bytes per token over all layers: n_head_kv x (key_length + value_length) per layer."""
    n_layer = _int(header.arch_value("block_count"))
    n_embd = _int(header.arch_value("embedding_length"))
    heads = header.arch_value("attention.head_count")
    heads_kv = header.arch_value("attention.head_count_kv")
    if heads_kv is None:
        heads_kv = heads
    n_head = _int(heads)
    if not n_layer or not n_head:
        return 0
    k_len = _int(header.arch_value("attention.key_length")) or n_embd // n_head
    v_len = _int(header.arch_value("attention.value_length")) or n_embd // n_head
    if isinstance(heads_kv, list):
        kv_heads_total = sum(int(h) for h in heads_kv[:n_layer])
    else:
        kv_heads_total = _int(heads_kv) * n_layer
    return kv_heads_total * (k_len + v_len) * 2


def describe_file(path: str | os.PathLike[str], source: str = "added folder", label: str = "") -> FoundModel:
    """A FoundModel for one file from its header; problems become its status, never an exception."""
    p = Path(path)
    label = label or p.name
    try:
        size = p.stat().st_size
    except OSError as exc:
        return FoundModel(str(p), source, label, "unreadable", f"cannot read the file: {exc.strerror or exc}")
    try:
        header = read_gguf_header(p)
    except HeaderError as exc:
        status = "partial" if "cut off" in str(exc) else "unreadable"
        return FoundModel(str(p), source, label, status, str(exc), size_bytes=size)
    except OSError as exc:
        return FoundModel(str(p), source, label, "unreadable", f"cannot read the file: {exc.strerror or exc}",
                          size_bytes=size)
    meta = header.metadata
    status, problem = "ok", ""
    if header.complete is False:
        status = "partial"
        problem = (f"the file holds {size:,} of the {header.expected_size:,} bytes its header describes "
                   "(an unfinished download or a cut-off copy)")
    elif header.architecture == "clip":
        problem = "a vision projector (mmproj), not a language model"
    embedding_only = _int(header.arch_value("pooling_type")) > 0
    if embedding_only:
        problem = "an embedding model (it pools its output), not a text generator"
    split_part = _int(meta.get("split.no")) + 1 if "split.no" in meta else 0  # split.no counts from 0
    split_count = _int(meta.get("split.count"))
    if split_part > 1:
        problem = f"part {split_part} of {split_count} of a split model: choose part 1"
    elif split_part == 1:
        problem = f"part 1 of {split_count} (llama.cpp loads the other parts from the same folder)"
    n_vocab = _int(header.arch_value("vocab_size")) or header.array_lengths.get("tokenizer.ggml.tokens", 0)
    return FoundModel(
        path=str(p), source=source, label=label, status=status, problem=problem,
        name=str(meta.get("general.name") or "").strip() or p.stem, architecture=header.architecture,
        n_params=header.n_params, size_label=str(meta.get("general.size_label") or ""),
        quantisation=header.quantisation, size_bytes=size, n_ctx_train=_int(header.arch_value("context_length")),
        has_chat_template=bool(meta.get("tokenizer.chat_template")),
        n_layer=_int(header.arch_value("block_count")), n_embd=_int(header.arch_value("embedding_length")),
        n_vocab=n_vocab, kv_bytes_per_token=_kv_bytes_per_token(header),
        sliding_window=_int(header.arch_value("attention.sliding_window")), split_part=split_part,
        split_count=split_count, embedding_only=embedding_only)


# ---------------------------------------------------------------------------
# Scanning each kind of store
# ---------------------------------------------------------------------------
def _walk_ggufs(root: Path, max_depth: int = _MAX_FOLDER_DEPTH) -> Iterator[Path]:
    base_depth = len(root.parts)
    for folder, dirs, files in os.walk(root, onerror=lambda _e: None):
        depth = len(Path(folder).parts) - base_depth
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < max_depth else []
        for name in sorted(files):
            if name.lower().endswith(".gguf"):
                yield Path(folder) / name


def _scan_hf(root: Path) -> Iterator[FoundModel]:
    """models--org--name/snapshots/<revision>/<file>.gguf (symlinks into blobs/), and unfinished downloads
    (blobs/<etag>.incomplete) of repos that hold GGUF files."""
    for repo_dir in sorted(root.glob("models--*")):
        repo = repo_dir.name[len("models--"):].replace("--", "/", 1)
        snapshots = repo_dir / "snapshots"
        # The revision refs/main names comes first, so a file kept in several revisions is listed by that one.
        main = (repo_dir / "refs" / "main")
        first = main.read_text(encoding="ascii", errors="replace").strip() if main.is_file() else ""
        revisions = sorted((d for d in snapshots.iterdir() if d.is_dir()), key=lambda d: d.name != first) \
            if snapshots.is_dir() else []
        has_gguf = False
        for rev in revisions:
            for file in _walk_ggufs(rev):
                has_gguf = True
                yield describe_file(file, "Hugging Face cache", f"{repo}/{file.relative_to(rev).as_posix()}")
        blobs = repo_dir / "blobs"
        if blobs.is_dir() and (has_gguf or repo.lower().endswith("gguf")):
            for part in sorted(blobs.glob("*.incomplete")):
                found = describe_file(part, "Hugging Face cache", f"{repo} (unfinished download)")
                yield _as_partial(found, "an unfinished download: `pld models fetch` resumes it")


def _as_partial(found: FoundModel, problem: str) -> FoundModel:
    return FoundModel(**{**asdict(found), "status": "partial" if found.status != "unreadable" else "unreadable",
                         "problem": problem if found.status != "unreadable" else f"{problem}; {found.problem}"})


def _ollama_name(parts: tuple[str, ...]) -> str:
    """registry.ollama.ai/library/gemma3/4b -> gemma3:4b; other namespaces and registries keep their prefix."""
    if len(parts) < 2:
        return ":".join(parts)
    *where, name, tag = parts
    if where and where[0] == "registry.ollama.ai":
        where = where[1:]
        if where == ["library"]:
            where = []
    return "/".join([*where, name]) + f":{tag}"


def _scan_ollama(root: Path) -> Iterator[FoundModel]:
    manifests = root / "manifests"
    if not manifests.is_dir():
        return
    for folder, _dirs, files in os.walk(manifests, onerror=lambda _e: None):
        for file in sorted(files):
            path = Path(folder) / file
            label = _ollama_name(path.relative_to(manifests).parts)
            try:
                manifest = json.loads(path.read_text(encoding="utf-8"))
                layers = manifest.get("layers") or []
                digest = next(layer["digest"] for layer in layers
                              if isinstance(layer, dict) and layer.get("mediaType") == OLLAMA_MODEL_LAYER)
            except (OSError, ValueError, StopIteration, KeyError, TypeError, AttributeError):
                yield FoundModel(str(path), "Ollama", label, "unreadable",
                                 "its manifest names no model layer (damaged, or not a language model)")
                continue
            blob = root / "blobs" / str(digest).replace(":", "-", 1)
            if not blob.is_file():
                yield FoundModel(str(blob), "Ollama", label, "unreadable",
                                 f"the manifest names blob {blob.name}, which is missing (an unfinished pull?)")
                continue
            yield describe_file(blob, "Ollama", label)


def _scan_folder(root: Path, source: str) -> Iterator[FoundModel]:
    for file in _walk_ggufs(root):
        yield describe_file(file, source, file.relative_to(root).as_posix())


def find_models(env: Mapping[str, str] | None = None) -> list[FoundModel]:
    """Every GGUF in every location, once each (a file reached twice, e.g. an HF snapshot symlink and the blob
    it points to from an added folder, is listed where it was found first)."""
    env = os.environ if env is None else env
    seen: set[str] = set()
    out: list[FoundModel] = []
    for loc in model_locations(env):
        if not loc.exists:
            continue
        root = Path(loc.path)
        if loc.source == "Hugging Face cache":
            found: Iterator[FoundModel] = _scan_hf(root)
        elif loc.source == "Ollama":
            found = _scan_ollama(root)
        else:
            found = _scan_folder(root, loc.source)
        for model in found:
            key = os.path.realpath(model.path)
            if key in seen:
                continue
            seen.add(key)
            out.append(model)
    return out


# ---------------------------------------------------------------------------
# Will it run here?
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a model needs in llama.cpp at a context size, against what is free."""

    weights: int
    kv_cache: int
    compute: int
    available: int | None
    n_ctx: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute

    @property
    def fits(self) -> bool | None:
        return None if self.available is None else self.total <= self.available

    def describe(self) -> str:
        gib = 2 ** 30
        text = (f"needs about {self.total / gib:.1f} GiB at {self.n_ctx:,} tokens of context (weights "
                f"{self.weights / gib:.1f} + KV cache {self.kv_cache / gib:.2f} + work buffers "
                f"{self.compute / gib:.2f})")
        if self.available is None:
            return text + "; free memory unknown"
        verdict = "fits" if self.fits else "does NOT fit"
        return f"{text}; {self.available / gib:.1f} GiB free: {verdict}"


def memory_estimate(model: FoundModel, n_ctx: int, available: int | None = None) -> MemoryEstimate:
    """Weights (the file, which llama.cpp maps whole) + f16 KV cache for `n_ctx` tokens on every layer
    (llama-cpp-python keeps full-size sliding-window caches) + llama.cpp's work buffers.

    The work-buffer term is an estimate: one 512-token batch of activations (embedding and vocabulary wide) in
    f32, which is the order of llama.cpp's CPU compute buffer."""
    if available is None:
        # Imported here: it loads llama.cpp, needed only when sizing is asked for.
        from .gguf_file import available_memory_bytes
        available = available_memory_bytes()
    kv = model.kv_bytes_per_token * n_ctx
    compute = 512 * 4 * (8 * model.n_embd + model.n_vocab) if model.n_embd else 0
    return MemoryEstimate(weights=model.size_bytes, kv_cache=kv, compute=compute, available=available, n_ctx=n_ctx)
