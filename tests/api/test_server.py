"""``python -m api.server``: the real uvicorn server bounds a request's head (431) and serves normal requests,
uploads and keep-alive connections as before, with one process and with several; several processes each
listen on their own socket (connections spread over them), a process that dies is replaced, one that cannot
start stops the server, and a port already serving is refused."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.server import MAX_HEAD_BYTES
from tests.factories import free_port

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "deploy"))
from script_loader import load_script  # noqa: E402

spread = load_script("bench/api_spread.py")  # which API process holds each connection (/proc), and its bench


def _start(home: Path, port: int, workers: int) -> subprocess.Popen[bytes]:
    """``python -m api.server`` on a migrated home, once every process listens and /healthz answers."""
    env = {**os.environ, "RECDISTILL_HOME": str(home), "PYTHONPATH": str(ROOT)}
    if not home.exists():
        subprocess.run([sys.executable, "-m", "cli", "migrate"], cwd=ROOT, env=env, check=True, capture_output=True)
    proc = subprocess.Popen([sys.executable, "-m", "api.server", "--port", str(port), "--workers", str(workers),
                             "--log-level", "warning"], cwd=ROOT, env=env)
    try:
        spread.ready(port, proc, workers, timeout=60)
    except RuntimeError:
        _stop(proc)
        raise
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.terminate()
    return proc.wait(timeout=60)


@pytest.fixture(scope="module", params=[1, 2], ids=["one-process", "two-processes"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    port = free_port()
    proc = _start(tmp_path_factory.mktemp("server") / "home", port, request.param)
    try:
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        _stop(proc)


@pytest.fixture
def base(server: tuple[str, int]) -> str:
    return server[0]


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


def test_connections_opened_together_spread_over_the_processes(tmp_path: Path) -> None:
    # uvicorn's shared socket let the first process to wake accept every waiting connection: 8 connections
    # opened together all landed on one of four processes. With a socket per process the kernel spreads
    # them (by a hash of each connection: 24 on one of 2 processes has odds 2^-23).
    port = free_port()
    proc = _start(tmp_path / "home", port, 2)
    try:
        pids = spread.api_processes(proc.pid)
        assert len(pids) == 2
        owners = spread.trial(port, 24, pids)  # 24 connections opened together, a request on each
        assert set(owners) == set(pids), owners
    finally:
        assert _stop(proc) == 0


def test_a_killed_process_is_replaced_and_sigterm_stops_them_all(tmp_path: Path) -> None:
    port = free_port()
    proc = _start(tmp_path / "home", port, 2)
    try:
        first = spread.api_processes(proc.pid)
        os.kill(first[0], signal.SIGKILL)  # as the kernel's OOM killer would
        deadline = time.monotonic() + 60
        while not ((now := spread.api_processes(proc.pid)) and len(now) == 2 and first[0] not in now
                   and spread.listening(port) == 2):
            assert time.monotonic() < deadline, now
            time.sleep(0.2)
        for _ in range(20):  # every request is answered, by either process
            assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        assert proc.poll() is None
    finally:
        assert _stop(proc) == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in now)


def test_a_process_that_cannot_start_stops_the_server(tmp_path: Path) -> None:
    env = {**os.environ, "RECDISTILL_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT),
           "RECDISTILL_MAX_UPLOAD_MB": "lots"}
    res = subprocess.run([sys.executable, "-m", "api.server", "--port", str(free_port()), "--workers", "2"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert "RECDISTILL_MAX_UPLOAD_MB" in res.stderr and "stopping the server" in res.stderr


def test_a_port_already_serving_is_refused(server: tuple[str, int], tmp_path: Path) -> None:
    # SO_REUSEPORT would let a second server share the first one's port and take half its clients.
    port = int(server[0].rsplit(":", 1)[1])
    env = {**os.environ, "RECDISTILL_HOME": str(tmp_path / "home"), "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "api.server", "--port", str(port), "--workers", "2"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert "address already in use" in res.stderr.lower()


@pytest.mark.parametrize(("value", "message"), [("0", "at least 1"), ("many", "invalid int value")])
def test_a_bad_process_count_is_refused(value: str, message: str) -> None:
    res = subprocess.run([sys.executable, "-m", "api.server", "--workers", value], cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and message in res.stderr
