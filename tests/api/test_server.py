"""``python -m api.server``: the real uvicorn server bounds a request's head (431) and serves normal requests,
uploads and keep-alive connections as before."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.server import MAX_HEAD_BYTES

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    home = tmp_path_factory.mktemp("server") / "home"
    env = {**os.environ, "RECDISTILL_HOME": str(home), "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "cli", "migrate"], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    proc = subprocess.Popen([sys.executable, "-m", "api.server", "--port", str(port), "--log-level", "warning"],
                            cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "server did not start"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _raw(base: str, request: bytes) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may close while we are still sending: its answer is already queued
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("where", ["header", "url"])
def test_an_oversized_head_is_431_and_closed(base: str, where: str) -> None:
    huge = b"y" * (4 * MAX_HEAD_BYTES)
    line = b"GET /healthz?a=" + huge if where == "url" else b"GET /healthz"
    extra = b"X-Big: " + huge + b"\r\n" if where == "header" else b""
    answer = _raw(base, line + b" HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431") and b'"code":"headers_too_large"' in answer


def test_normal_requests_keep_alive_and_large_bodies_pass(base: str) -> None:
    with httpx.Client(base_url=base, timeout=30) as client:
        for _ in range(3):  # one keep-alive connection: the head count restarts with each request
            assert client.get("/healthz", headers={"X-Pad": "z" * (MAX_HEAD_BYTES // 2)}).status_code == 200
        # A body far larger than the head limit, sent at once, is not mistaken for a head.
        res = client.post("/jobs", content=b"{" + b" " * (4 * MAX_HEAD_BYTES) + b"}",
                          headers={"Content-Type": "application/json"})
        assert res.status_code == 422, res.text
