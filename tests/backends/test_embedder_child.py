"""The window's embedder runs in a child process: the same vectors as in this process, torch never imported by
the window's process, and a child that cannot load or dies is said in words (and the next call starts a new one)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pld_desktop.backends.embedder import (
    ChildProcessEmbedder,
    EmbedderProcessError,
    SentenceTransformerEmbedder,
    _child_for,
    shutdown_child_embedders,
)
from pld_desktop.backends.factory import DefaultBackends, window_backends
from pld_desktop.core.settings import RunSettings

TEXTS = ["What time does the branch close on Saturdays?", "I was charged a late fee twice.", "", "ünïcode ✓"]


@pytest.fixture(autouse=True)
def _no_children_left():
    yield
    shutdown_child_embedders()


@pytest.mark.slow
def test_child_gives_the_same_vectors_and_is_shared() -> None:
    child = ChildProcessEmbedder()
    vectors = child.embed(TEXTS)
    local = SentenceTransformerEmbedder().embed(TEXTS)
    assert vectors.dtype == np.float32 and vectors.shape == local.shape == (len(TEXTS), child.dim)
    np.testing.assert_allclose(vectors, local, atol=1e-5)  # the same model and code, in another process
    assert child.model_id == SentenceTransformerEmbedder().model_id  # one embedding cache for both
    assert child.embed([]).shape == (0, child.dim)
    other = window_backends().embedder(RunSettings())  # a second task of the window: the same child
    assert isinstance(other, ChildProcessEmbedder) and other._child is child._child
    other.close()  # a task's close frees nothing shared
    assert child.embed(TEXTS[:1]).shape == (1, child.dim)


def test_cli_backends_embed_in_process() -> None:
    assert isinstance(DefaultBackends(trust=None).embedder(RunSettings()), SentenceTransformerEmbedder)


@pytest.mark.slow
def test_the_parent_never_imports_torch_and_its_main_script_is_not_run_again(tmp_path: Path) -> None:
    # A main script without the `if __name__ == "__main__"` guard: spawn would run it again in the child (which
    # would then try to start a child of its own); in the bundle that main script is absent on disk, and the
    # child died of it. The child needs only the embedder's module.
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent("""
        import sys
        from pld_desktop.backends.embedder import ChildProcessEmbedder, shutdown_child_embedders
        vectors = ChildProcessEmbedder().embed(["hello"])
        print(vectors.shape, "torch" in sys.modules, "sentence_transformers" in sys.modules)
        shutdown_child_embedders()
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["(1,", "384)", "False", "False"]


@pytest.mark.slow
def test_a_folder_that_is_not_a_model_is_said_in_words(tmp_path: Path) -> None:
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "readme.txt").write_text("nothing here")
    with pytest.raises(EmbedderProcessError, match="could not be loaded"):
        ChildProcessEmbedder(folder).embed(["x"])
    with pytest.raises(ValueError, match="not found"):
        ChildProcessEmbedder(tmp_path / "missing")


@pytest.mark.slow
def test_a_child_that_dies_is_reported_and_replaced() -> None:
    embedder = ChildProcessEmbedder()
    first = embedder.embed(TEXTS[:2])
    process = _child_for(embedder.model_path, embedder.batch_size)._process
    os.kill(process.pid, signal.SIGKILL)
    process.join(30)
    with pytest.raises(EmbedderProcessError, match="ended unexpectedly"):
        embedder.embed(TEXTS[:2])
    np.testing.assert_allclose(embedder.embed(TEXTS[:2]), first, atol=1e-6)  # a new child
