"""A local HTTP server on 127.0.0.1 that speaks the Hugging Face Hub's file API, for download tests.

HEAD/GET /{repo}/resolve/{revision}/{file} with X-Repo-Commit, ETag and X-Linked-Etag (the sha256, as for LFS
files), X-Linked-Size, Accept-Ranges and Range requests (206); GET /api/models/{repo}[/revision/{rev}] with the
siblings list; gated repos answer 401 with X-Error-Code GatedRepo unless a bearer token is sent; unknown repos
401 RepoNotFound and unknown files 404 EntryNotFound, as the Hub does.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class HubFile:
    content: bytes
    advertised_sha256: str | None = None  # None: the true sha256 (set another to test a mismatch)

    @property
    def sha256(self) -> str:
        return self.advertised_sha256 or hashlib.sha256(self.content).hexdigest()


@dataclass
class HubRepo:
    files: dict[str, HubFile]
    gated: bool = False
    token: str = "hf_test_token_0123456789"
    commit: str = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class FakeHub:
    repos: dict[str, HubRepo] = field(default_factory=dict)
    # After this many body bytes of one GET the server stalls (sleeps) instead of sending more: lets a test kill
    # the downloading process mid-file. None: no stall.
    stall_after: int | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    bytes_sent: int = 0
    active: int = 0  # requests being answered now
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_HEAD(self) -> None:
                hub._handle(self, head=True)

            def do_GET(self) -> None:
                hub._handle(self, head=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- request handling ---------------------------------------------------------------------------------
    def _error(self, h: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        h.send_response(status)
        h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", message)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _authorised(self, h: BaseHTTPRequestHandler, repo: HubRepo) -> bool:
        return not repo.gated or h.headers.get("Authorization") == f"Bearer {repo.token}"

    def _handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        with self._lock:
            self.active += 1
        try:
            self._answer(h, head)
        finally:
            with self._lock:
                self.active -= 1

    def wait_idle(self, timeout_s: float = 30.0) -> None:
        """Until no request is being answered (a client that went away may leave a handler writing)."""
        deadline = time.monotonic() + timeout_s
        while self.active and time.monotonic() < deadline:
            time.sleep(0.02)

    def _answer(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        self.requests.append({"method": h.command, "path": h.path, "range": h.headers.get("Range"),
                              "authorization": h.headers.get("Authorization")})
        path = h.path.split("?", 1)[0]
        api = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?", path)
        if api:
            return self._model_info(h, api.group(1))
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if not m:
            return self._error(h, 404, "EntryNotFound", f"no route {path}")
        repo_id, _revision, filename = m.groups()
        repo = self.repos.get(repo_id)
        if repo is None:
            return self._error(h, 401, "RepoNotFound", f"Repository Not Found for url: {path}.")
        if not self._authorised(h, repo):
            return self._error(h, 401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have "
                                                    "access to it and be authenticated to access it.")
        file = repo.files.get(filename)
        if file is None:
            return self._error(h, 404, "EntryNotFound", f"{filename} does not exist in {repo_id}")
        data = file.content
        start = 0
        rng = h.headers.get("Range")
        if rng and not head:
            rm = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if rm:
                start = int(rm.group(1))
        body = data[start:]
        h.send_response(206 if start else 200)
        h.send_header("X-Repo-Commit", repo.commit)
        h.send_header("ETag", f'"{file.sha256}"')
        h.send_header("X-Linked-Etag", f'"{file.sha256}"')
        h.send_header("X-Linked-Size", str(len(data)))
        h.send_header("Accept-Ranges", "bytes")
        h.send_header("Content-Type", "application/octet-stream")
        h.send_header("Content-Length", str(len(body) if not head else len(data)))
        if start:
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        h.end_headers()
        if head:
            return
        sent = 0
        chunk = 64 << 10
        try:
            while sent < len(body):
                if self.stall_after is not None and sent >= self.stall_after:
                    while not self._stop.is_set() and self.stall_after is not None:
                        time.sleep(0.05)  # hold the connection open until the client is killed
                    return
                piece = body[sent:sent + chunk]
                h.wfile.write(piece)
                h.wfile.flush()
                sent += len(piece)
                self.bytes_sent += len(piece)
        except (BrokenPipeError, ConnectionResetError):
            return

    def _model_info(self, h: BaseHTTPRequestHandler, repo_id: str) -> None:
        repo = self.repos.get(repo_id)
        if repo is None:
            return self._error(h, 401, "RepoNotFound", "Repository Not Found")
        if not self._authorised(h, repo):
            return self._error(h, 401, "GatedRepo", f"Access to model {repo_id} is restricted.")
        body = json.dumps({
            "id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": False, "gated": repo.gated,
            "siblings": [{"rfilename": name, "size": len(f.content),
                          "lfs": {"sha256": f.sha256, "size": len(f.content), "pointerSize": 134}}
                         for name, f in repo.files.items()]}).encode()
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
