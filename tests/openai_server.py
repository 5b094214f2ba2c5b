"""OpenAI-compatible servers on 127.0.0.1 for tests: a scripted fake REST server, and the real llama_cpp.server."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

OPENAI_KEY = "sk-test-PLANTED-5f1c2e9a7b"


def ok_reply(content: str = '{"label": "fraud", "reason": "stolen card"}') -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion", "model": "served-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 21, "completion_tokens": 9, "total_tokens": 30,
                      "completion_tokens_details": {"reasoning_tokens": 4},
                      "prompt_tokens_details": {"cached_tokens": 8}}}


class FakeOpenAI:
    """A scripted OpenAI REST server on 127.0.0.1: `script` answers each POST with (status, body, headers)."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: Callable[[dict[str, Any]], tuple[int, Any, dict[str, str]]] = lambda body: (200, ok_reply(), {})
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, body: Any, headers: dict[str, str]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._send(200, {"object": "list", "data": [{"id": "served-model", "object": "model"}]}, {})

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.loads(raw or b"{}")
                fake.requests.append({"path": self.path, "body": body,
                                      "auth": self.headers.get("Authorization")})
                self._send(*fake.script(body))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# Real server: llama_cpp.server serving the bundled SmolLM2
# ---------------------------------------------------------------------------
# llama.cpp's AMX kernels crash on some CPUs (see cpu_probe.extra_buffer_types_usable); the launcher loads the
# model without extra buffer types where the probe says so, then runs llama_cpp.server's own main().
SERVER_LAUNCHER = """
import runpy, sys
from pld_desktop.backends.cpu_probe import extra_buffer_types_usable
import llama_cpp.llama_cpp as capi
model = sys.argv[sys.argv.index("--model") + 1]
if not extra_buffer_types_usable(model):
    original = capi.llama_model_default_params
    def params():
        p = original()
        p.use_extra_bufts = False
        return p
    capi.llama_model_default_params = params
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""


def start_llama_server(model: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """Start `python -m llama_cpp.server` on a free port and wait for /v1/models; (process, base URL)."""
    import httpx2
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_file = open(os.devnull, "wb")
    proc = subprocess.Popen([sys.executable, "-c", SERVER_LAUNCHER, "--model", str(model), "--host", "127.0.0.1",
                             "--port", str(port), "--verbose", "false", *extra],
                            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with code {proc.returncode}")
        try:
            if httpx2.get(url + "/models", timeout=2).status_code == 200:
                return proc, url
        except httpx2.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("llama_cpp.server did not start within 120 s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
