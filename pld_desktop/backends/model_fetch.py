"""Download GGUF models from the Hugging Face Hub into its cache: a curated list or any repo[:file], resumable,
checksum-verified, with progress and cancel; offline or refused downloads are explained in words."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.progress import Cancelled, Progress
from . import secrets
from .model_store import hf_hub_cache

__all__ = ["CURATED", "ChecksumMismatch", "CuratedModel", "FetchError", "FetchResult", "HubOffline",
           "fetch_model", "resolve_spec"]

# Read when this module is first imported, before the embedder may set HF_HUB_OFFLINE=1 for itself
# (backends/embedder.py): only the user's own setting should make a download refuse to start.
_USER_OFFLINE = (os.environ.get("HF_HUB_OFFLINE") or "").strip().lower() in ("1", "true", "yes", "on")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_MIN_FREE_MARGIN = 256 << 20  # leave this much free beyond the file: a full disk breaks the project file too


class FetchError(RuntimeError):
    """A download was refused or failed; the message says why and what to do (never the token)."""


class HubOffline(FetchError):
    """The Hub cannot be reached (offline mode, no network, proxy); what is on disk still works."""


class ChecksumMismatch(FetchError):
    """The downloaded bytes do not hash to the sha256 the Hub published; the file was deleted."""


@dataclass(frozen=True)
class CuratedModel:
    """A model worth having for this job, with where it lives on the Hub and what it costs to have."""

    key: str
    repo: str
    filename: str
    approx_bytes: int
    role: str          # "student" | "teacher" | "student or teacher"
    licence: str
    note: str

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "repo": self.repo, "filename": self.filename, "approx_bytes": self.approx_bytes,
                "role": self.role, "licence": self.licence, "note": self.note}


_GB = 10 ** 9
# Names and sizes as published on the Hub; the real size is read from the Hub before a download starts.
CURATED: tuple[CuratedModel, ...] = (
    CuratedModel("gemma-3-1b-it", "unsloth/gemma-3-1b-it-GGUF", "gemma-3-1b-it-Q4_K_M.gguf", int(0.81 * _GB),
                 "student", "Gemma Terms of Use (use restrictions apply; not OSI open source)",
                 "Gemma 3 1B instruct, Q4_K_M: fast on any laptop, weaker than 4B on hard rules."),
    CuratedModel("gemma-3-4b-it", "unsloth/gemma-3-4b-it-GGUF", "gemma-3-4b-it-Q4_K_M.gguf", int(2.49 * _GB),
                 "student", "Gemma Terms of Use (use restrictions apply; not OSI open source)",
                 "Gemma 3 4B instruct, Q4_K_M: the paper's student size; needs ~4 GB of free memory."),
    CuratedModel("gemma-3-4b-it-qat", "google/gemma-3-4b-it-qat-q4_0-gguf", "gemma-3-4b-it-q4_0.gguf",
                 int(3.16 * _GB), "student", "Gemma Terms of Use; gated: accept them on the model's Hub page and "
                 "save a Hugging Face token", "Google's quantisation-aware Q4_0 of Gemma 3 4B instruct."),
    CuratedModel("qwen2.5-1.5b-instruct", "Qwen/Qwen2.5-1.5B-Instruct-GGUF", "qwen2.5-1.5b-instruct-q4_k_m.gguf",
                 int(1.12 * _GB), "student", "Apache-2.0",
                 "Qwen 2.5 1.5B instruct, Q4_K_M: a permissively licensed small student."),
    CuratedModel("llama-3.2-3b-instruct", "bartowski/Llama-3.2-3B-Instruct-GGUF",
                 "Llama-3.2-3B-Instruct-Q4_K_M.gguf", int(2.02 * _GB), "student or teacher",
                 "Llama 3.2 Community License (acceptable-use policy applies)",
                 "Llama 3.2 3B instruct, Q4_K_M."),
    CuratedModel("qwen2.5-7b-instruct", "bartowski/Qwen2.5-7B-Instruct-GGUF", "Qwen2.5-7B-Instruct-Q4_K_M.gguf",
                 int(4.68 * _GB), "teacher", "Apache-2.0",
                 "Qwen 2.5 7B instruct, Q4_K_M: a local teacher that writes usable rules; ~6 GB of memory."),
    CuratedModel("gemma-3-12b-it", "unsloth/gemma-3-12b-it-GGUF", "gemma-3-12b-it-Q4_K_M.gguf", int(7.30 * _GB),
                 "teacher", "Gemma Terms of Use (use restrictions apply; not OSI open source)",
                 "Gemma 3 12B instruct, Q4_K_M: a strong local teacher; ~9 GB of memory."),
)


@dataclass(frozen=True)
class FetchResult:
    path: str             # the snapshot path in the HF cache (a symlink to the blob where symlinks work)
    repo: str
    filename: str
    revision: str         # the commit the file came from
    size_bytes: int
    sha256: str | None    # verified digest; None when the Hub published none for the file
    downloaded_bytes: int  # bytes fetched by this call (0: it was already there; less than size: resumed)
    resumed_from: int

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def resolve_spec(spec: str) -> tuple[str, str | None]:
    """A curated key, `org/repo`, or `org/repo:file.gguf` -> (repo, file or None)."""
    text = spec.strip()
    for model in CURATED:
        if text.lower() == model.key:
            return model.repo, model.filename
    repo, _, filename = text.partition(":")
    repo, filename = repo.strip().strip("/"), filename.strip()
    if repo.startswith(("http://", "https://")):
        raise ValueError(f"Give the repository as org/name (e.g. unsloth/gemma-3-1b-it-GGUF), not a URL: {spec!r}")
    if repo.count("/") != 1 or any(not part for part in repo.split("/")) or any(c.isspace() for c in repo):
        known = ", ".join(m.key for m in CURATED)
        raise ValueError(f"{spec!r} is neither a known model ({known}) nor a Hub repository as org/name[:file].")
    return repo, filename or None


def hf_token() -> str | None:
    """HF_TOKEN / HUGGING_FACE_HUB_TOKEN, else the OS keychain; None lets huggingface_hub use its own login."""
    return secrets.get_api_key("huggingface")


def _endpoint(env: Mapping[str, str]) -> str:
    return (env.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _hub() -> Any:
    """huggingface_hub, with its offline switch following the user's setting (see _USER_OFFLINE)."""
    import huggingface_hub
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE and not _USER_OFFLINE:
        # Set by our embedder (setdefault) after startup, not by the user: the user asked for this download.
        constants.HF_HUB_OFFLINE = False
    return huggingface_hub


def _words(exc: BaseException, repo: str, filename: str | None, token: str | None, endpoint: str) -> FetchError:
    """A huggingface_hub / network error as a FetchError the user can act on (token redacted)."""
    import httpx2
    from huggingface_hub import errors

    what = f"{repo}/{filename}" if filename else repo
    if isinstance(exc, errors.OfflineModeIsEnabled):
        return HubOffline("Offline: HF_HUB_OFFLINE is set, so nothing can be downloaded. Unset it to fetch "
                          f"{what}; the models already on this machine are listed by `pld models`.")
    if isinstance(exc, (httpx2.ConnectError, httpx2.TimeoutException, httpx2.NetworkError, ConnectionError)):
        detail = secrets.redact(str(exc), [token])
        return HubOffline(f"Offline: cannot reach the Hub at {endpoint} ({detail}). Check the network, or the "
                          "proxy (HTTPS_PROXY) and HF_ENDPOINT settings; the models already on this machine are "
                          "listed by `pld models`.")
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, errors.GatedRepoError) or (status in (401, 403) and not isinstance(
            exc, errors.RepositoryNotFoundError)):
        how = ("Your Hugging Face token was refused for it: check that it has read access and that you accepted "
               "the licence with the same account." if token else
               "No Hugging Face token is set: accept the licence on the model's page with your account, create a "
               "read token (huggingface.co/settings/tokens) and save it in Settings > Models, or set HF_TOKEN.")
        return FetchError(f"{repo} is gated (HTTP {status or 403}): its authors require you to accept their "
                          f"licence before downloading. {how}")
    if isinstance(exc, errors.RepositoryNotFoundError):
        extra = "" if token else " If it is private or gated, save a Hugging Face token first."
        return FetchError(f"The repository {repo} does not exist on {endpoint} (HTTP {status}).{extra}")
    if isinstance(exc, errors.RevisionNotFoundError):
        return FetchError(f"{repo} has no such revision.")
    if isinstance(exc, errors.EntryNotFoundError):
        return FetchError(f"{repo} has no file {filename!r}. `pld models fetch {repo}` lists its GGUF files.")
    detail = secrets.redact(str(exc).strip() or type(exc).__name__, [token])
    return FetchError(f"Downloading {what} failed: {detail}")


def _gguf_files(hub: Any, repo: str, token: str | None, endpoint: str) -> list[tuple[str, int | None]]:
    info = hub.HfApi(endpoint=endpoint, token=token).model_info(repo, files_metadata=True)
    return [(s.rfilename, getattr(s, "size", None)) for s in info.siblings or []
            if s.rfilename.lower().endswith(".gguf")]


def _pick_file(files: list[tuple[str, int | None]], repo: str) -> str:
    """The file to take from a repo when none was named: the only GGUF, else the Q4_K_M one (skipping
    vision projectors and split parts), else ask in words."""
    models = [f for f, _ in files if "mmproj" not in f.lower() and not re.search(r"-\d{5}-of-\d{5}", f)]
    if len(models) == 1:
        return models[0]
    q4km = [f for f in models if "q4_k_m" in f.lower()]
    if len(q4km) == 1:
        return q4km[0]
    if not models:
        raise FetchError(f"{repo} holds no single-file GGUF model.")
    listing = "\n".join(f"  {repo}:{f}" + (f"  ({s / 2**30:.2f} GiB)" if s else "") for f, s in files)
    raise FetchError(f"{repo} holds several GGUF files; name one:\n{listing}")


def _sha256_file(path: Path, progress: Progress, size: int) -> str:
    digest = hashlib.sha256()
    done = 0
    progress.begin("Verifying the checksum", size)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(8 << 20), b""):
            digest.update(block)
            done += len(block)
            progress.report(done, size, "verifying")
            if progress.cancelled():
                raise Cancelled("cancelled by the user")
    return digest.hexdigest()


def _progress_bar_class(progress: Progress, total: int) -> type:
    """A tqdm class that forwards huggingface_hub's byte counts to `progress` and raises Cancelled when asked."""
    from tqdm.auto import tqdm

    class Bar(tqdm):  # type: ignore[misc]  # tqdm.auto.tqdm is typed Any (no stubs): subclassing Any
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True  # no terminal output: `progress` shows it
            super().__init__(*args, **kwargs)
            self.done = int(kwargs.get("initial") or 0)

        def update(self, n: float | None = 1) -> bool | None:
            # http_get reports a chunk before writing it: stopping at the next report keeps the chunk reported.
            if progress.cancelled():
                raise Cancelled("cancelled by the user")
            self.done += int(n or 0)
            progress.report(self.done, total, "downloading")
            return None

    return Bar


def _pointer(storage: Path, commit: str, filename: str) -> Path:
    return storage / "snapshots" / commit / Path(*filename.split("/"))


def _link(blob: Path, pointer: Path) -> None:
    """The snapshot entry: a relative symlink to the blob (as huggingface_hub makes), else a copy of it."""
    pointer.parent.mkdir(parents=True, exist_ok=True)
    try:
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    except OSError:  # no symlinks (some Windows set-ups)
        shutil.copyfile(blob, pointer)


def fetch_model(spec: str, progress: Progress, *, revision: str = "main", token: str | None = None,
                env: Mapping[str, str] | None = None, cache: str | os.PathLike[str] | None = None) -> FetchResult:
    """Download one GGUF into the Hugging Face cache (HF_HUB_CACHE etc.), in its layout, so the HF tools and
    `find_models` see it.

    The bytes go to blobs/<sha256>.incomplete and are resumed from there with a Range request, also in a new
    process after a kill: huggingface_hub's own hf_hub_download (2.x) writes to a per-process temporary file
    and deletes it on failure, so it cannot resume a stopped download. Metadata, HTTP (HF_ENDPOINT, proxies from
    the environment, redirects, retries) and error words are huggingface_hub's."""
    env = os.environ if env is None else env
    repo, filename = resolve_spec(spec)
    token = (token if token is not None else hf_token()) or None
    endpoint = _endpoint(env)
    if token:
        secrets.protect_in_logs(token)
    hub = _hub()
    storage = Path(cache).expanduser() if cache else hf_hub_cache(env)
    storage = storage / f"models--{repo.replace('/', '--')}"
    filename, meta = _file_metadata(hub, repo, filename, revision, token, endpoint, progress)
    etag, commit, size = meta.etag, meta.commit_hash, meta.size
    if not etag or not commit:
        raise FetchError(f"The Hub at {endpoint} did not say which version of {repo}/{filename} it serves "
                         "(no ETag or X-Repo-Commit header); a proxy may be stripping them.")
    sha256 = etag if _SHA256.match(etag) else None
    pointer = _pointer(storage, commit, filename)
    blob = storage / "blobs" / etag
    if pointer.exists() and blob.exists():
        progress.log(f"{repo}/{filename} is already downloaded.")
        return FetchResult(str(pointer), repo, filename, commit, blob.stat().st_size, sha256, 0, 0)
    blob.parent.mkdir(parents=True, exist_ok=True)
    partial = blob.with_name(etag + ".incomplete")
    from filelock import FileLock, Timeout

    lock = FileLock(str(partial) + ".lock")
    try:
        lock.acquire(timeout=1)
    except Timeout:
        raise FetchError(f"{repo}/{filename} is being downloaded by another program right now.") from None
    try:
        have = _resume_point(partial, size, filename, progress)
        got = _download(meta, partial, have, size, repo, filename, token, endpoint, progress)
        _verify(partial, got, size, sha256, filename, progress)
        os.replace(partial, blob)
    finally:
        lock.release()
        Path(str(partial) + ".lock").unlink(missing_ok=True)
    _link(blob, pointer)
    if not _COMMIT.match(revision):
        ref = storage / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(commit, encoding="ascii")
    return FetchResult(str(pointer), repo, filename, commit, blob.stat().st_size, sha256, got - have, have)


def _file_metadata(hub: Any, repo: str, filename: str | None, revision: str, token: str | None, endpoint: str,
                   progress: Progress) -> tuple[str, Any]:
    """The file to fetch (the repo's one GGUF when none is named) and the Hub's metadata of it, errors in words."""
    try:
        if filename is None:
            progress.log(f"Listing the GGUF files of {repo}…")
            filename = _pick_file(_gguf_files(hub, repo, token, endpoint), repo)
        url = hub.hf_hub_url(repo, filename, revision=revision, endpoint=endpoint)
        return filename, hub.get_hf_file_metadata(url, token=token or None, endpoint=endpoint)
    except (FetchError, Cancelled):
        raise
    except Exception as exc:
        raise _words(exc, repo, filename, token, endpoint) from None


def _resume_point(partial: Path, size: int | None, filename: str, progress: Progress) -> int:
    """How many bytes of an earlier download to keep, once the disk is known to have room for the rest."""
    have = partial.stat().st_size if partial.exists() else 0
    if size is not None and have > size:  # not ours, or the file changed size: start again
        partial.unlink()
        have = 0
    if size is not None:
        free = shutil.disk_usage(partial.parent).free
        if free < size - have + _MIN_FREE_MARGIN:
            raise FetchError(
                f"Not enough disk space for {filename}: it needs {(size - have) / 2**30:.2f} GiB more in "
                f"{partial.parent}, and {free / 2**30:.2f} GiB is free (keeping {_MIN_FREE_MARGIN >> 20} MiB "
                "spare). Free some space, or point HF_HUB_CACHE at a bigger disk.")
    if have:
        progress.log(f"Resuming {filename} at {have / 2**20:.0f} MiB of {(size or 0) / 2**20:.0f} MiB.")
    return have


def _download(meta: Any, partial: Path, have: int, size: int | None, repo: str, filename: str, token: str | None,
              endpoint: str, progress: Progress) -> int:
    """Append the rest of the file to `partial` (a Range request from `have`); returns its size after."""
    from huggingface_hub import file_download
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]  # its __all__ is built at runtime

    progress.begin(f"Downloading {filename}", size or 0)
    headers = build_hf_headers(token=token or None)
    headers["Accept-Encoding"] = "identity"
    try:
        with partial.open("ab") as f:
            file_download.http_get(meta.location, f, resume_size=have, headers=headers, expected_size=size,
                                   displayed_filename=filename, tqdm_class=_progress_bar_class(progress, size or 0))
    except Cancelled:
        progress.log(f"Stopped; {partial.stat().st_size / 2**20:.0f} MiB kept, a new fetch resumes.")
        raise
    except Exception as exc:
        raise _words(exc, repo, filename, token, endpoint) from None
    return partial.stat().st_size


def _verify(partial: Path, got: int, size: int | None, sha256: str | None, filename: str,
            progress: Progress) -> None:
    """The downloaded bytes are the whole file and hash to the Hub's sha256; a mismatch deletes them."""
    if size is not None and got != size:
        raise FetchError(f"{filename}: received {got:,} bytes, the Hub announced {size:,}; run the fetch "
                         "again to resume.")
    if sha256 is None:
        progress.log(f"The Hub published no sha256 for {filename}; checked by size only.")
        return
    actual = _sha256_file(partial, progress, got)
    if actual != sha256:
        partial.unlink()
        raise ChecksumMismatch(
            f"{filename} failed its checksum: the Hub published sha256 {sha256}, the downloaded bytes "
            f"hash to {actual}. The file was deleted; nothing was installed. Try again; if it repeats, "
            "a proxy or the mirror at HF_ENDPOINT is altering the download.")
