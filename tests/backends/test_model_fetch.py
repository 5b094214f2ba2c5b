"""backends/model_fetch.py and `pld models fetch` against a local server that speaks the Hub's file API
(tests/fake_hub.py): download, resume after a kill, checksum refused, gated repo refused, offline, disk space."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pld_desktop.backends import model_fetch
from pld_desktop.backends.model_fetch import (
    ChecksumMismatch,
    FetchError,
    fetch_model,
    resolve_spec,
)
from pld_desktop.backends.model_store import find_models
from pld_desktop.core.progress import Cancelled, ProgressBase, SilentProgress
from tests.fake_hub import FakeHub, HubFile, HubRepo
from tests.gguf_files import write_tiny_gguf

REPO_ROOT = Path(__file__).resolve().parents[2]
REPO, FILE = "org/tiny-GGUF", "tiny-Q4_K_M.gguf"
TOKEN = "hf_test_token_0123456789"


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    # ~24 MB: huggingface_hub's http_get writes in 10 MiB chunks, so a stop in the middle keeps one or two.
    return write_tiny_gguf(tmp_path_factory.mktemp("src") / "t.gguf", weight_elements=6_000_000).read_bytes()


@pytest.fixture
def hub(model_bytes: bytes) -> Iterator[FakeHub]:
    server = FakeHub(repos={
        REPO: HubRepo({FILE: HubFile(model_bytes), "mmproj-tiny-f16.gguf": HubFile(b"GGUF-projector")}),
        "org/gated-GGUF": HubRepo({"g.gguf": HubFile(model_bytes)}, gated=True, token=TOKEN),
        "org/bad-GGUF": HubRepo({"b.gguf": HubFile(model_bytes, advertised_sha256="0" * 64)}),
    }).start()
    yield server
    server.stop()


def _env(home: Path, hub: FakeHub, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HOME",
                        "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", "XDG_CONFIG_HOME")}
    env.update(HOME=str(home), HF_ENDPOINT=hub.url, PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring", **extra)
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(proxy, None)
    return env


def _pld(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pld_desktop.cli", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    """In this process the test session set HF_HUB_OFFLINE=1 (conftest): lift it as a user without it would."""
    import huggingface_hub.constants
    monkeypatch.setattr(model_fetch, "_USER_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # as our embedder leaves it


def _blob_dir(home: Path) -> Path:
    return home / ".cache" / "huggingface" / "hub" / "models--org--tiny-GGUF" / "blobs"


def test_fetch_downloads_verifies_and_is_then_found(tmp_path: Path, hub: FakeHub, model_bytes: bytes) -> None:
    env = _env(tmp_path, hub)
    out = _pld(["models", "fetch", REPO], env)  # no file named: the only model GGUF (the projector is skipped)
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.strip())
    assert path.read_bytes() == model_bytes and path.is_symlink()
    assert f"sha256 {hashlib.sha256(model_bytes).hexdigest()} verified" in out.stderr
    found = [m for m in find_models(env) if m.source == "Hugging Face cache"]
    assert [(m.label, m.architecture, m.status) for m in found] == [(f"{REPO}/{FILE}", "qwen2", "ok")]
    again = _pld(["models", "fetch", f"{REPO}:{FILE}"], env)
    assert again.returncode == 0 and "already on disk" in again.stderr
    gets = [r for r in hub.requests if r["method"] == "GET" and "/resolve/" in r["path"]]
    assert len(gets) == 1  # the second fetch downloaded nothing


def test_resume_after_a_kill_mid_file(tmp_path: Path, hub: FakeHub, model_bytes: bytes) -> None:
    env = _env(tmp_path, hub)
    hub.stall_after = 12 << 20
    proc = subprocess.Popen([sys.executable, "-m", "pld_desktop.cli", "models", "fetch", f"{REPO}:{FILE}"],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    partial = _blob_dir(tmp_path) / (hashlib.sha256(model_bytes).hexdigest() + ".incomplete")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (partial.exists() and partial.stat().st_size >= 10 << 20):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    kept = partial.stat().st_size
    assert 10 << 20 <= kept < len(model_bytes)
    listed = {m.label: m for m in find_models(env)}
    assert listed[f"{REPO} (unfinished download)"].status == "partial"

    hub.stall_after = None
    hub.wait_idle()
    sent_before = hub.bytes_sent
    out = _pld(["models", "fetch", f"{REPO}:{FILE}"], env)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).read_bytes() == model_bytes
    ranges = [r["range"] for r in hub.requests if r["method"] == "GET" and "/resolve/" in r["path"]]
    assert ranges[-1] == f"bytes={kept}-"
    assert hub.bytes_sent - sent_before == len(model_bytes) - kept  # only the rest was sent
    assert not partial.exists()


def test_checksum_mismatch_is_refused_and_nothing_installed(tmp_path: Path, hub: FakeHub) -> None:
    env = _env(tmp_path, hub)
    out = _pld(["models", "fetch", "org/bad-GGUF:b.gguf"], env)
    assert out.returncode == 1
    assert "failed its checksum" in out.stderr and "deleted" in out.stderr
    storage = tmp_path / ".cache" / "huggingface" / "hub" / "models--org--bad-GGUF"
    assert not list(storage.rglob("*.gguf")) and not list((storage / "blobs").iterdir())
    assert [m for m in find_models(env) if "bad-GGUF" in m.label] == []


def test_gated_repo_without_a_token_is_refused_in_words(tmp_path: Path, hub: FakeHub, model_bytes: bytes) -> None:
    out = _pld(["models", "fetch", "org/gated-GGUF:g.gguf"], _env(tmp_path, hub))
    assert out.returncode == 1
    assert "gated" in out.stderr and "No Hugging Face token is set" in out.stderr and "HF_TOKEN" in out.stderr
    wrong = "hf_wrong_token_abcdefgh"
    out = _pld(["models", "fetch", "org/gated-GGUF:g.gguf"], _env(tmp_path, hub, HF_TOKEN=wrong))
    assert out.returncode == 1 and "token was refused" in out.stderr and wrong not in out.stderr + out.stdout
    out = _pld(["models", "fetch", "org/gated-GGUF:g.gguf"], _env(tmp_path, hub, HF_TOKEN=TOKEN))
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).read_bytes() == model_bytes
    assert TOKEN not in out.stderr


def test_offline_says_so_and_lists_what_is_on_disk(tmp_path: Path, hub: FakeHub) -> None:
    env = _env(tmp_path, hub)
    write_tiny_gguf(tmp_path / ".lmstudio" / "models" / "me" / "Local-GGUF" / "local.gguf")
    out = _pld(["models", "fetch", "gemma-3-1b-it"], {**env, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 1 and "Offline: HF_HUB_OFFLINE is set" in out.stderr
    assert "me/Local-GGUF/local.gguf" in out.stderr
    assert not [r for r in hub.requests]  # nothing was asked of the server
    hub.stop()  # nothing listens there any more: as with no network
    out = _pld(["models", "fetch", "gemma-3-1b-it"], env)
    assert out.returncode == 1 and "Offline: cannot reach the Hub" in out.stderr, out.stderr
    assert "me/Local-GGUF/local.gguf" in out.stderr


class _CancelAfter(ProgressBase):
    def __init__(self, after_bytes: int) -> None:
        super().__init__()
        self.after = after_bytes

    def on_report(self, done: int, total: int, message: str) -> None:
        if message == "downloading" and done >= self.after:
            self.cancel()


def test_cancel_keeps_the_part_and_the_next_fetch_resumes(tmp_path: Path, hub: FakeHub, model_bytes: bytes,
                                                          online: None) -> None:
    env = _env(tmp_path, hub)
    with pytest.raises(Cancelled):
        fetch_model(f"{REPO}:{FILE}", _CancelAfter(1), env=env, token="")
    partial = _blob_dir(tmp_path) / (hashlib.sha256(model_bytes).hexdigest() + ".incomplete")
    kept = partial.stat().st_size
    assert 0 < kept < len(model_bytes)
    hub.wait_idle()
    sent_before = hub.bytes_sent
    result = fetch_model(f"{REPO}:{FILE}", SilentProgress(), env=env, token="")
    assert result.resumed_from == kept and result.downloaded_bytes == len(model_bytes) - kept
    assert hub.bytes_sent - sent_before == len(model_bytes) - kept
    assert [r["range"] for r in hub.requests if r["method"] == "GET"][-1] == f"bytes={kept}-"
    assert Path(result.path).read_bytes() == model_bytes


def test_not_enough_disk_space_is_refused_before_downloading(tmp_path: Path, hub: FakeHub, online: None,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    real = model_fetch.shutil.disk_usage
    monkeypatch.setattr(model_fetch.shutil, "disk_usage",
                        lambda p: real(p)._replace(free=200 << 20))  # less than the file + the 256 MiB margin
    with pytest.raises(FetchError, match="Not enough disk space"):
        fetch_model(f"{REPO}:{FILE}", SilentProgress(), env=_env(tmp_path, hub), token="")
    assert not [r for r in hub.requests if r["method"] == "GET" and "/resolve/" in r["path"]]


def test_specs_and_repo_listing(tmp_path: Path, hub: FakeHub, online: None) -> None:
    assert resolve_spec("gemma-3-4b-it") == ("unsloth/gemma-3-4b-it-GGUF", "gemma-3-4b-it-Q4_K_M.gguf")
    assert resolve_spec(" org/x-GGUF:a/b.gguf ") == ("org/x-GGUF", "a/b.gguf")
    for bad in ("gemma", "https://huggingface.co/org/x", "a/b/c", "org/ x"):
        with pytest.raises(ValueError):
            resolve_spec(bad)
    hub.repos["org/many-GGUF"] = HubRepo({"m-Q8_0.gguf": HubFile(b"1"), "m-Q5_K_M.gguf": HubFile(b"2")})
    with pytest.raises(FetchError, match="several GGUF files") as err:
        fetch_model("org/many-GGUF", SilentProgress(), env=_env(tmp_path, hub), token="")
    assert "org/many-GGUF:m-Q8_0.gguf" in str(err.value)


def test_checksum_error_type(tmp_path: Path, hub: FakeHub, online: None) -> None:
    with pytest.raises(ChecksumMismatch):
        fetch_model("org/bad-GGUF:b.gguf", SilentProgress(), env=_env(tmp_path, hub), token="")


def test_a_curated_name_is_fetched_and_then_marked_on_disk(tmp_path: Path, hub: FakeHub, model_bytes: bytes) -> None:
    import json
    hub.repos["unsloth/gemma-3-1b-it-GGUF"] = HubRepo({"gemma-3-1b-it-Q4_K_M.gguf": HubFile(model_bytes)})
    env = _env(tmp_path, hub)
    out = _pld(["models", "fetch", "gemma-3-1b-it", "--json"], env)
    assert out.returncode == 0, out.stderr
    fetched = json.loads(out.stdout)
    assert (fetched["repo"], fetched["filename"]) == ("unsloth/gemma-3-1b-it-GGUF", "gemma-3-1b-it-Q4_K_M.gguf")
    listing = json.loads(_pld(["models", "--json"], env).stdout)
    marks = {c["key"]: c["on_disk"] for c in listing["curated"]}
    assert marks["gemma-3-1b-it"] is True and marks["gemma-3-4b-it"] is False
