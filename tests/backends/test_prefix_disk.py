"""Prefix states saved to disk: the file cache itself (fast) and a fresh process restoring it exactly (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pld_desktop.backends.cache_dir import cache_dir
from pld_desktop.backends.prefix_cache import PrefixStateDiskCache

SETTINGS = {"model_sha256": "ab" * 32, "llama_cpp_python": "0.3.36", "n_ctx": 4096, "flash_attn_type": 1}


def disk(tmp_path: Path, capacity: int = 1 << 20, **changes) -> PrefixStateDiskCache:
    return PrefixStateDiskCache(tmp_path / "states", {**SETTINGS, **changes}, capacity_bytes=capacity)


# ---------------------------------------------------------------------------
# Fast: the file cache
# ---------------------------------------------------------------------------
def test_round_trip_and_keys(tmp_path: Path) -> None:
    cache = disk(tmp_path)
    tokens = [2, 105, 2364, 107, 9]
    state = bytearray(os.urandom(5000))
    assert cache.load(tokens) is None and tokens not in cache
    assert cache.save(tokens, state)
    assert tokens in cache and cache.load(tokens) == state
    assert [p.name for p in cache.directory.iterdir()] == [cache.path(tokens).name]  # no temporary files left
    # Any other prompt or setting is another key: never a state for the wrong model, build or context.
    assert cache.load(tokens[:-1]) is None
    for change in ({"model_sha256": "cd" * 32}, {"llama_cpp_python": "0.3.37"}, {"n_ctx": 8192},
                   {"flash_attn_type": 0}, {"type_k": 8}):
        other = disk(tmp_path, **change)
        assert other.key(tokens) != cache.key(tokens)
        assert other.load(tokens) is None
    assert cache.load(tokens) == state  # the misses of other keys deleted nothing


@pytest.mark.parametrize("damage", ["truncate", "flip_payload", "flip_header", "garbage", "empty", "renamed"])
def test_damaged_files_are_ignored_and_deleted(tmp_path: Path, damage: str) -> None:
    cache = disk(tmp_path)
    tokens, state = [1, 2, 3], os.urandom(4096)
    cache.save(tokens, state)
    path = cache.path(tokens)
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(raw[:-100])
    elif damage == "flip_payload":
        raw[-10] ^= 0xFF
        path.write_bytes(raw)
    elif damage == "flip_header":
        raw[20] ^= 0x01
        path.write_bytes(raw)
    elif damage == "garbage":
        path.write_bytes(b"not a state file at all" * 10)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "renamed":  # an intact file under another prompt's name
        cache.save([4, 5], os.urandom(100))
        os.replace(cache.path([4, 5]), path)
    assert cache.load(tokens) is None
    assert not path.exists()
    assert cache.save(tokens, state) and cache.load(tokens) == state  # and the cache works on


def test_folder_is_bounded_with_lru_eviction_by_mtime(tmp_path: Path) -> None:
    cache = disk(tmp_path, capacity=3 * 1200)
    for i in range(3):
        assert cache.save([i], os.urandom(1000))
        os.utime(cache.path([i]), ns=(10**18 + i * 10**9,) * 2)  # distinct mtimes, oldest first
    assert cache.load([0]) is not None  # a load refreshes the mtime: [0] is now the newest
    assert cache.save([3], os.urandom(1000))  # over capacity: the least recently used ([1]) goes
    names = {p.name for p, _, _ in cache.entries()}
    assert names == {cache.path([i]).name for i in (0, 2, 3)}
    assert cache.nbytes() <= cache.capacity_bytes
    assert not cache.save([9], os.urandom(5000))  # larger than the whole folder: not written
    assert [9] not in cache and len(cache.entries()) == 3
    cache.clear()
    assert cache.entries() == []


def test_file_system_errors_are_misses_not_crashes(tmp_path: Path) -> None:
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("x")
    cache = PrefixStateDiskCache(blocker / "states", SETTINGS)
    assert not cache.save([1], b"state")  # the folder cannot be created
    assert cache.load([1]) is None and cache.entries() == [] and cache.evict() == 0


def test_cache_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLD_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "pld-desktop"
    assert PrefixStateDiskCache(None, SETTINGS).directory == tmp_path / "xdg" / "pld-desktop" / "prefix-states"
    monkeypatch.setenv("PLD_CACHE_DIR", str(tmp_path / "pld"))
    assert cache_dir() == tmp_path / "pld"
    assert PrefixStateDiskCache(None, SETTINGS).directory == tmp_path / "pld" / "prefix-states"


# ---------------------------------------------------------------------------
# Slow: the real student, in fresh processes
# ---------------------------------------------------------------------------
SENTIMENT = ["positive", "negative", "neutral"]
TEXTS = ["I loved this movie, it was wonderful!", "Terrible service, I will never come back.",
         "The package arrived on Tuesday.", "Meh.", "¡Qué maravilla! Me encantó."]

# Run in a child process: classify TEXTS with a prompt whose system part is longer than Gemma 3's sliding
# window (512 tokens), and print the predictions, counters and system-part size as JSON.
CHILD = r"""
import json, sys
from pld_desktop.backends.llama_student import LlamaStudent
from pld_desktop.core.prompts import PromptRule, build_rules_prompt
labels, texts = json.loads(sys.argv[2]), json.loads(sys.argv[3])
rules = [PromptRule(f"Rule note {i}: a review may mention delivery, price or staff; judge the feeling", labels[i % 3])
         for i in range(40)]
prompt = build_rules_prompt("Classify the sentiment of the review.", labels, rules)
kwargs = dict(n_ctx=4096, state_dir=sys.argv[1])
if sys.argv[4] == "uncached":
    kwargs.update(prefix_cache_bytes=0, disk_cache_bytes=0)
with LlamaStudent(**kwargs) as student:
    preds = [student.classify(prompt, text, labels) for text in texts]
    first_evaluated = None
    stats = student.stats()
    system_end = student.prompt_split(prompt, texts[0])[1]
    print(json.dumps({"preds": [[p.label, p.probs] for p in preds], "stats": vars(stats),
                      "system_end": system_end, "prompt": prompt}))
"""


def run_child(state_dir: Path, mode: str = "cached") -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(state_dir), json.dumps(SENTIMENT), json.dumps(TEXTS),
                           mode], capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def assert_same_predictions(got: list, expected: list) -> None:
    assert len(got) == len(expected)
    for (label, probs), (label_e, probs_e) in zip(got, expected):
        assert label == label_e
        assert probs == pytest.approx(probs_e, abs=1e-4)


@pytest.mark.slow
def test_fresh_process_restores_the_saved_state_and_predicts_the_same(tmp_path: Path) -> None:
    states = tmp_path / "states"
    first = run_child(states)  # empty folder: evaluates the system part and saves it
    assert first["system_end"] > 600
    assert first["stats"]["disk_saves"] == 1 and first["stats"]["disk_loads"] == 0
    assert first["stats"]["tokens_evaluated"] >= first["system_end"]
    files = list(states.glob("*.state"))
    assert len(files) == 1 and files[0].stat().st_size > 1 << 20

    second = run_child(states)  # a fresh process: loads the file instead of evaluating the system part
    assert second["stats"]["disk_loads"] == 1 and second["stats"]["disk_saves"] == 0
    assert second["stats"]["tokens_evaluated"] < first["system_end"] // 4
    uncached = run_child(tmp_path / "unused", "uncached")  # no cache of any kind
    assert uncached["stats"]["disk_loads"] == uncached["stats"]["state_restores"] == 0
    assert not (tmp_path / "unused").exists()
    assert_same_predictions(second["preds"], uncached["preds"])
    assert_same_predictions(first["preds"], uncached["preds"])

    # A damaged file in a fresh process: ignored, deleted, the prompt evaluated and saved again, same answers.
    raw = bytearray(files[0].read_bytes())
    raw[len(raw) // 2] ^= 0x5A
    files[0].write_bytes(raw)
    third = run_child(states)
    assert third["stats"]["disk_loads"] == 0 and third["stats"]["disk_saves"] == 1
    assert third["stats"]["tokens_evaluated"] >= first["system_end"]
    assert_same_predictions(third["preds"], uncached["preds"])


@pytest.mark.slow
def test_a_new_student_in_the_same_process_loads_from_disk(tmp_path: Path) -> None:
    from pld_desktop.backends.llama_student import LlamaStudent
    from pld_desktop.core.prompts import PromptRule, build_rules_prompt
    rules = [PromptRule(f"Note {i}: the price, the staff or the delivery may be mentioned", SENTIMENT[i % 3])
             for i in range(40)]
    prompt = build_rules_prompt("Classify the sentiment of the review.", SENTIMENT, rules)
    with LlamaStudent(n_ctx=2048, state_dir=tmp_path) as first:
        expected = [first.classify(prompt, text, SENTIMENT) for text in TEXTS[:3]]
        assert first.stats().disk_saves == 1
        assert first.disk_cache is not None and len(first.disk_cache.entries()) == 1
    with LlamaStudent(n_ctx=2048, state_dir=tmp_path) as second:
        got = [second.classify(prompt, text, SENTIMENT) for text in TEXTS[:3]]
        stats = second.stats()
        assert stats.disk_loads == 1 and stats.disk_saves == 0 and stats.state_restores == 1
        assert second.prefix_cache_info()[0] == 1  # the loaded state is kept in memory too
        second.clear_prefix_cache(disk=True)
        assert second.prefix_cache_info() == (0, 0) and second.disk_cache.entries() == []
    for g, e in zip(got, expected):
        assert g.label == e.label and g.probs == pytest.approx(e.probs, abs=1e-9)
    # Another context size is another key: nothing is loaded, the state is evaluated and saved anew.
    with LlamaStudent(n_ctx=4096, state_dir=tmp_path) as other:
        other.classify(prompt, TEXTS[0], SENTIMENT)
        assert other.stats().disk_loads == 0 and other.stats().disk_saves == 1
