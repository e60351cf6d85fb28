"""``recdistill migrate`` / ``serve`` / ``worker`` command wiring (the long-running ones are exercised in
tests/worker and tests/integration)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cli import service as cli_service
from core.db.migrate import current_revision
from tests.factories import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_migrate_command_creates_the_embedded_database(tmp_path: Path) -> None:
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "ARTIFACT_DIR")
    }
    env["RECDISTILL_HOME"] = str(tmp_path / "home")
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "migrate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert current_revision(f"sqlite:///{tmp_path / 'home' / 'recdistill.db'}") == "0004"
    assert (tmp_path / "home" / "artifacts").is_dir()


def test_commands_and_defaults_are_registered() -> None:
    parser = argparse.ArgumentParser()
    cli_service.register(parser.add_subparsers(dest="command"))
    serve = parser.parse_args(["serve"])
    assert serve.handler is cli_service.run_serve and serve.local_worker is None and serve.migrate
    assert parser.parse_args(["serve", "--no-worker"]).local_worker is False
    worker = parser.parse_args(["worker"])
    assert worker.handler is cli_service.run_worker and worker.pool == "solo" and not worker.migrate
    assert parser.parse_args(["migrate"]).handler is cli_service.run_migrate


def test_the_command_line_starts_without_torch() -> None:
    # The API image has no torch but installs the `recdistill` script (recdistill migrate runs there).
    code = "import sys; from cli.main import build_parser; build_parser(); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stdout + proc.stderr


def _children(pid: int) -> dict[int, str]:
    """{pid: command line} of the live children of ``pid`` (read from /proc)."""
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == pid and state != "Z":
            found[int(entry.name)] = cmdline
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc to find the worker")
@pytest.mark.parametrize(
    ("sig", "group"),
    [
        pytest.param(signal.SIGTERM, False, id="kill-pid"),
        pytest.param(signal.SIGINT, True, id="ctrl-c-group"),
        pytest.param(signal.SIGINT, False, id="sigint-pid", marks=pytest.mark.slow),
    ],
)  # about 10 s each on a busy 2-core machine (server + worker start-up)
def test_serve_stops_its_local_worker_on_sigterm_and_ctrl_c(
    tmp_path: Path, sig: signal.Signals, group: bool
) -> None:
    port = free_port()
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "ARTIFACT_DIR")
    }
    env.update(RECDISTILL_HOME=str(tmp_path / "home"), RECDISTILL_HOST="127.0.0.1", RECDISTILL_PORT=str(port))
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        workers: dict[int, str] = {}
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            workers = {p: c for p, c in _children(proc.pid).items() if "celery" in c}
            try:
                if workers and httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            raise AssertionError(f"serve not ready with a worker in 90 s:\n{log.read_text()[-3000:]}")
        (worker_pid,) = workers
        time.sleep(1.0)  # let the worker install its signal handlers (the common case at a real Ctrl-C)
        if group:
            os.killpg(proc.pid, sig)  # what a terminal's Ctrl-C does: the whole foreground group
        else:
            os.kill(proc.pid, sig)
        assert proc.wait(timeout=40) in (0, 130), log.read_text()[-3000:]
        deadline = time.monotonic() + 5
        while _alive(worker_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker_pid), f"worker {worker_pid} outlived serve:\n{log.read_text()[-3000:]}"
        leftovers = [
            p for p in Path("/proc").iterdir() if p.name.isdigit() and _in_group(int(p.name), proc.pid)
        ]
        assert leftovers == [], f"processes left in serve's group: {leftovers}"
    finally:
        if proc.poll() is None or _group_has_members(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _in_group(pid: int, pgid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and int(fields[3]) == pgid


def _group_has_members(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _start_serve(home: Path, log: Path) -> tuple[subprocess.Popen[bytes], int, int]:
    """``recdistill serve`` in a session of its own; returns it, its port and its local worker's pid."""
    port = free_port()
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CELERY_BROKER_URL", "ARTIFACT_DIR")
    }
    env.update(RECDISTILL_HOME=str(home), RECDISTILL_HOST="127.0.0.1", RECDISTILL_PORT=str(port))
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        workers = [p for p, c in _children(proc.pid).items() if "celery" in c]
        try:
            if workers and httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc, port, workers[0]
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"serve not ready with a worker in 90 s:\n{log.read_text()[-3000:]}")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc to find the worker")
def test_kill_9_of_serve_takes_its_worker_down_and_a_restart_runs_one_worker(tmp_path: Path) -> None:
    # Issue 10 #6: the orphaned worker kept consuming the queue and the restarted serve started a second one.
    log = tmp_path / "serve.log"
    first, _, worker = _start_serve(tmp_path / "home", log)
    second = None
    try:
        time.sleep(1.0)  # the worker installs its lifeline at worker_init, before it consumes anything
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
        deadline = time.monotonic() + 15
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), f"worker {worker} outlived serve's kill -9:\n{log.read_text()[-3000:]}"
        second, _, new_worker = _start_serve(tmp_path / "home", log)
        home = tmp_path / "home"
        workers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_local_worker(int(p.name), home)]
        assert [int(p.name) for p in workers] == [new_worker], log.read_text()[-3000:]
    finally:
        for proc in (first, second):
            if proc is not None and _group_has_members(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            if proc is not None:
                proc.wait(timeout=10)


def _is_local_worker(pid: int, home: Path) -> bool:
    """A live Celery worker started by a server on ``home``."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return _alive(pid) and "celery" in cmdline and f"RECDISTILL_HOME={home}\0".encode() in environ


def test_serve_refuses_clearly_when_another_local_worker_holds_the_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import uvicorn

    from core.settings import clear_settings_cache
    from worker import embedded

    class Busy:
        def __init__(self, settings: object) -> None:
            pass

        def start(self) -> None:
            raise embedded.LocalWorkerBusy("a local worker of another `recdistill serve` still runs")

    monkeypatch.setenv("RECDISTILL_HOME", str(tmp_path))
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    monkeypatch.delenv("ARTIFACT_DIR", raising=False)
    clear_settings_cache()
    monkeypatch.setattr(embedded, "LocalWorker", Busy)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("served beside another local worker"))
    args = argparse.Namespace(local_worker=True, migrate=False, host=None, port=None)
    try:
        assert cli_service.run_serve(args) == 1
    finally:
        clear_settings_cache()
    assert "another `recdistill serve` still runs" in caplog.text
