"""``LocalWorker``: a restart racing with ``stop()`` leaves no worker behind; the worker dies with its server
whatever the signal; one local worker per home; a dead worker's jobs are handed back at once."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from jobkit import create_job, wait_for

from core.db import repo
from core.db.session import session_scope
from core.jobs.lifecycle import worker_id_for
from core.settings import Settings
from core.storage import ArtifactStore
from worker import embedded as embedded_module
from worker.embedded import LocalWorker


class FakeProc:
    """Stands in for ``subprocess.Popen``: alive until it is signalled or killed."""

    def __init__(self, pid: int, alive: bool) -> None:
        self.pid, self.alive, self.signals = pid, alive, list[int]()

    @property
    def returncode(self) -> int | None:
        return None if self.alive else -15

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        self.alive = False

    def wait(self, timeout: float | None = None) -> int:
        return 0

    def kill(self) -> None:
        self.alive = False


def test_stop_during_a_restart_stops_the_restarted_worker(
    embedded: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    spawning, release = threading.Event(), threading.Event()
    spawned: list[FakeProc] = []

    def fake_spawn() -> FakeProc:
        if spawned:  # the watchdog's restart: stop() arrives while it is under way
            spawning.set()
            release.wait(5)
        proc = FakeProc(len(spawned) + 1, alive=bool(spawned))  # the first one dies at once
        spawned.append(proc)
        return proc

    worker = LocalWorker(embedded, restart_delay=0.0)
    monkeypatch.setattr(worker, "_spawn", fake_spawn)
    worker.start()
    assert spawning.wait(5), "the watchdog never restarted the dead worker"
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    stopper.join(0.3)  # stop() is now waiting for the restart to finish
    release.set()
    stopper.join(5)
    assert worker._watch is not None
    worker._watch.join(5)
    assert not stopper.is_alive() and not worker._watch.is_alive()
    assert len(spawned) == 2  # no further restart after stop()
    assert spawned[1].signals == [signal.SIGTERM], "the restarted worker was left running"


# ---------------------------------------------------------------- real processes (a light stand-in worker)

ROOT = Path(__file__).resolve().parents[2]
# Stands in for the Celery worker: the same lifeline as `celery -A worker.celery_app` installs at worker_init.
CHILD = "import time; from worker.lifeline import watch_parent; watch_parent(); time.sleep(600)"
# Stands in for `recdistill serve`: a LocalWorker on the home in argv[1], waiting argv[2] s for the lock.
PARENT = f"""
import sys, time
from core.settings import Settings
from worker.embedded import LocalWorker, LocalWorkerBusy
s = Settings(RECDISTILL_HOME=sys.argv[1], RECDISTILL_LOCAL_WORKER_WAIT=float(sys.argv[2]))
w = LocalWorker(s, command=[sys.executable, "-c", {CHILD!r}])
try:
    w.start()
except LocalWorkerBusy as exc:
    print("busy:", exc, flush=True)
    sys.exit(3)
while w.proc is None:
    time.sleep(0.05)
print("worker", w.proc.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has exited; only its parent's wait is missing)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _wait_dead(pid: int, timeout: float) -> float:
    """Seconds until ``pid`` is gone; fails after ``timeout``."""
    start = time.monotonic()
    while _alive(pid):
        assert time.monotonic() - start < timeout, f"process {pid} still alive after {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - start


class Parent:
    """A serve-like parent process in a session of its own; ``worker`` is its local worker's pid."""

    def __init__(self, home: Path, wait_s: float = 0.0, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PARENT, str(home), str(wait_s)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def first_line(self, timeout: float = 30.0) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, "the parent printed nothing"
        return self.proc.stdout.readline().decode()

    def worker(self) -> int:
        line = self.first_line()
        assert line.startswith("worker "), line + self.rest()
        return int(line.split()[1])

    def rest(self) -> str:
        if self.proc.poll() is None:
            return ""
        assert self.proc.stdout is not None
        return self.proc.stdout.read().decode()

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


pytestmark_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")


@pytestmark_proc
@pytest.mark.parametrize("pdeathsig", [True, False], ids=["prctl", "pipe-only"])
def test_kill_9_of_the_server_takes_its_worker_down(embedded: Settings, pdeathsig: bool) -> None:
    parent = Parent(embedded.home, env={} if pdeathsig else {"RECDISTILL_NO_PDEATHSIG": "1"})
    try:
        worker = parent.worker()
        time.sleep(0.5)  # let the worker install its lifeline (the Celery worker does it at worker_init)
        assert _alive(worker)
        os.kill(parent.proc.pid, signal.SIGKILL)  # only the server: its worker is not signalled
        parent.proc.wait(timeout=10)
        _wait_dead(worker, timeout=5)
    finally:
        parent.kill_group()


@pytestmark_proc
def test_two_servers_never_run_two_local_workers(embedded: Settings) -> None:
    first = Parent(embedded.home)
    second = third = None
    try:
        worker = first.worker()
        second = Parent(embedded.home, wait_s=0.5)
        assert second.proc.wait(timeout=10) == 3, second.rest()
        out = second.rest()
        assert "busy:" in out and f"server pid {first.proc.pid}" in out, out
        # kill -9 of the first server: the next one waits for the orphan to go, then starts its own worker.
        os.kill(first.proc.pid, signal.SIGKILL)
        third = Parent(embedded.home, wait_s=20)
        new_worker = third.worker()
        assert not _alive(worker), "the restarted server started a worker beside the orphan"
        assert _alive(new_worker)
    finally:
        for p in (first, second, third):
            if p is not None:
                p.kill_group()


def test_dead_local_worker_hands_its_jobs_back_at_once(
    embedded: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[str] = []
    monkeypatch.setattr(embedded_module, "enqueue_job", lambda job_id, settings: sent.append(job_id))
    store = ArtifactStore(embedded.artifact_dir)
    running, cancelling = create_job(embedded), create_job(embedded)
    worker = LocalWorker(embedded, restart_delay=30.0, command=[sys.executable, "-c", CHILD])
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while worker.proc is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert worker.proc is not None
        owner = worker_id_for(worker.proc.pid)
        with session_scope(embedded.database_url) as s:
            assert repo.claim_job(s, running, owner, 3600)
            assert repo.claim_job(s, cancelling, owner, 3600)
        with session_scope(embedded.database_url) as s:
            repo.request_cancel(s, cancelling)  # the worker dies before it sees the cancel
        (store.checkpoint_dir(cancelling, "distill")).mkdir(parents=True)
        killed = time.monotonic()
        os.kill(worker.proc.pid, signal.SIGKILL)
        job = wait_for(embedded, running, lambda j: j.status != "running", timeout=5)
        took = time.monotonic() - killed
    finally:
        worker.stop()
    assert (job.status, job.worker_id) == ("queued", None)
    assert took < 3, f"took {took:.1f} s: the server should not wait out the lease"
    assert sent == [running]
    with session_scope(embedded.database_url) as s:
        gone = repo.get_job(s, cancelling)
        assert (gone.status, gone.worker_id) == ("cancelled", None) and gone.finished_at is not None
    assert not store.job_dir(cancelling).exists()


@pytest.mark.parametrize("pid_reused", [False, True])
def test_a_new_server_releases_the_jobs_a_dead_servers_worker_left_running(
    embedded: Settings, monkeypatch: pytest.MonkeyPatch, pid_reused: bool
) -> None:
    # An orphan that had to exit hard (or a worker killed with its server) left its job running; the lock
    # being free proves it is gone, and its record names the job's owner. If its pid names a live process
    # again, that may be another worker with that id: the lease decides instead.
    sent: list[str] = []
    monkeypatch.setattr(embedded_module, "enqueue_job", lambda job_id, settings: sent.append(job_id))
    job_id = create_job(embedded)
    pid = os.getpid() if pid_reused else 2**22 + 1
    dead = worker_id_for(pid)
    with session_scope(embedded.database_url) as s:
        assert repo.claim_job(s, job_id, dead, 3600)
    record = {"serve_pid": 1, "worker_pid": pid, "worker_id": dead}
    (embedded.home / embedded_module.LOCK_FILE).write_text(json.dumps(record))
    worker = LocalWorker(embedded, command=[sys.executable, "-c", CHILD])
    worker.start()
    try:
        with session_scope(embedded.database_url) as s:
            status = repo.get_job(s, job_id).status
    finally:
        worker.stop()
    assert (status, sent) == (("running", []) if pid_reused else ("queued", [job_id]))
    assert json.loads((embedded.home / embedded_module.LOCK_FILE).read_text() or "{}") == {}  # clean stop


def test_a_worker_that_keeps_failing_at_start_is_restarted_ever_more_slowly(
    embedded: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []
    worker = LocalWorker(embedded, restart_delay=0.01)
    spawned: list[FakeProc] = []

    def failing_spawn() -> FakeProc:
        proc = FakeProc(len(spawned) + 1, alive=False)
        spawned.append(proc)
        if len(spawned) == 4:
            worker._stopping.set()
        return proc

    real_wait = worker._stopping.wait

    def record_wait(timeout: float | None = None) -> bool:
        if timeout is not None and timeout != 0.2:
            waits.append(timeout)
        return real_wait(0)

    monkeypatch.setattr(worker, "_spawn", failing_spawn)
    monkeypatch.setattr(FakeProc, "returncode", property(lambda self: None if self.alive else 1))
    monkeypatch.setattr(worker._stopping, "wait", record_wait)
    worker.start()
    assert worker._watch is not None
    worker._watch.join(5)
    worker.stop()
    assert waits == [0.02, 0.04, 0.08]
