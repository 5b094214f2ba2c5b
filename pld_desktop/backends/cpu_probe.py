"""Whether this CPU runs llama.cpp's extra buffer types (AMX tiles, weight repacking): probed once, cached."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import llama_cpp

from pld_desktop.backends.bundled import ModelFileError, bundled_local_teacher_path
from pld_desktop.backends.cache_dir import cache_dir

__all__ = ["extra_buffer_types_usable", "smallest_probe_model"]

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------
# AMX guard: llama.cpp's "extra buffer types" (AMX tiles, weight repacking)
# ---------------------------------------------------------------------------
# A llama.cpp built with GGML_NATIVE on a CPU that reports AMX compiles AMX matmul kernels and uses them for
# quantised weights. Some virtual machines report AMX but cannot run it: the first decode dies with SIGSEGV
# in ggml_backend_amx_mul_mat (`ldtilecfg`), taking the whole app down. Loading with use_extra_bufts=False
# avoids AMX (and also the repacked kernels, which costs speed), so it is only done where a one-off probe in a
# subprocess crashed. The verdict is cached per llama.cpp build and CPU.
_PROBE_SOURCE = r"""
import sys, llama_cpp
llm = llama_cpp.Llama(sys.argv[1], n_ctx=256, n_batch=64, verbose=False)
tokens = llm.tokenize(b"The quick brown fox jumps over the lazy dog. " * 3, add_bos=True)[:32]
llm.eval(tokens)
llm.eval([tokens[1]])
print("probe-ok")
"""
_extra_bufts_lock = threading.Lock()
_extra_bufts_verdict: bool | None = None


def _cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return "amx_tile" in line.split()
    except OSError:
        pass
    return False


def _ggml_cpu_library() -> Path | None:
    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    for pattern in ("libggml-cpu*.so*", "libggml-cpu*.dylib", "ggml-cpu*.dll", "libggml.so*"):
        for candidate in sorted(lib_dir.glob(pattern)):
            if candidate.is_file() and not candidate.is_symlink():
                return candidate
    return None


def _library_has_amx_kernels(lib: Path) -> bool:
    try:
        return b"ggml_backend_amx_buffer_type" in lib.read_bytes()
    except OSError:
        return False


def extra_buffer_types_usable(probe_model: str | os.PathLike[str]) -> bool:
    """Whether models may be loaded with llama.cpp's extra buffer types (AMX / repacked weights) on this machine.
    True at once unless both the CPU and the llama.cpp build have AMX; then a small decode of `probe_model` runs
    once in a subprocess (a crash there is harmless) and the verdict is cached in ~/.cache/pld-desktop/."""
    global _extra_bufts_verdict
    with _extra_bufts_lock:
        if _extra_bufts_verdict is not None:
            return _extra_bufts_verdict
        lib = _ggml_cpu_library()
        if not _cpu_has_amx() or lib is None or not _library_has_amx_kernels(lib):
            _extra_bufts_verdict = True
            return True
        st = lib.stat()
        key = f"{llama_cpp.__version__}|{lib.resolve()}|{st.st_size}|{st.st_mtime_ns}|{_cpu_model_name()}"
        verdict_file = cache_dir() / "llama-amx-probe.json"
        try:
            cached = json.loads(verdict_file.read_text(encoding="utf-8"))
            if cached.get("key") == key and isinstance(cached.get("usable"), bool):
                _extra_bufts_verdict = cached["usable"]
                return _extra_bufts_verdict
        except (OSError, ValueError, AttributeError):
            pass
        try:
            proc = subprocess.run([sys.executable, "-c", _PROBE_SOURCE, str(probe_model)], capture_output=True,
                                  text=True, timeout=180, stdin=subprocess.DEVNULL)
            usable = proc.returncode == 0 and "probe-ok" in proc.stdout
            detail = f"exit code {proc.returncode}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            usable, detail = False, str(exc)
        if not usable:
            log.warning("llama.cpp's AMX kernels crash on this machine (%s); models load without extra buffer "
                        "types (no AMX, no weight repacking: slower but safe)", detail)
        _extra_bufts_verdict = usable
        try:
            verdict_file.parent.mkdir(parents=True, exist_ok=True)
            verdict_file.write_text(json.dumps({"key": key, "usable": usable, "detail": detail}), encoding="utf-8")
        except OSError:
            pass
        return usable


def _cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def smallest_probe_model(model_path: Path) -> Path:
    """The bundled SmolLM2 file (small, Q4_1: uses the AMX kernels) if installed, else the model itself."""
    try:
        candidate = bundled_local_teacher_path()
        return candidate if candidate.stat().st_size < model_path.stat().st_size else model_path
    except (ModelFileError, OSError):
        return model_path

