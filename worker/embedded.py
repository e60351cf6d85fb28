"""Worker processes started from Python: the embedded local worker of ``recdistill serve`` and the argv of
``recdistill worker``. Same task code path as the distributed mode (Celery), whatever the broker.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from core.jobs.lifecycle import recover, worker_id_for
from core.settings import Settings
from worker.celery_app import QUEUE, enqueue_job, ensure_broker_dir
from worker.lifeline import LIFELINE_FD_ENV, PARENT_PID_ENV

log = logging.getLogger(__name__)

LOCK_FILE = "local-worker.lock"


def worker_argv(
    settings: Settings, *, pool: str = "solo", concurrency: int = 1, name: str | None = None
) -> list[str]:
    """``celery worker`` arguments: one job at a time (prefetch 1), our queue, a unique node name."""
    node = name or f"recdistill-{os.getpid()}@{socket.gethostname()}"
    return [
        "worker",
        f"--pool={pool}",
        f"--concurrency={concurrency}",
        "--prefetch-multiplier=1",
        f"--queues={QUEUE}",
        f"--hostname={node}",
        f"--loglevel={settings.log_level}",
        "--without-gossip",
        "--without-mingle",
    ]


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a child process needs to see exactly these settings."""
    env = dict(os.environ)
    env.update(
        RECDISTILL_HOME=str(settings.home),
        DATABASE_URL=settings.database_url,
        CELERY_BROKER_URL=settings.celery_broker_url,
        ARTIFACT_DIR=str(settings.artifact_dir),
        RECDISTILL_JOB_LEASE=str(settings.job_lease_s),
        RECDISTILL_HEARTBEAT=str(settings.heartbeat_s),
        RECDISTILL_SWEEP_INTERVAL=str(settings.sweep_interval_s),
        RECDISTILL_DEVICE=settings.device,
    )
    if settings.torch_threads is not None:
        env["RECDISTILL_TORCH_THREADS"] = str(settings.torch_threads)
    return env


def _pid_alive(pid: object) -> bool:
    """Whether a process ``pid`` exists (False for a missing or malformed pid)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class LocalWorkerBusy(RuntimeError):
    """Another server's local worker still runs on this RECDISTILL_HOME: a second one is refused."""


class WorkerLock:
    """An exclusive ``flock`` on ``<home>/local-worker.lock``: at most one local worker per home.

    The server takes it before its first worker and passes the descriptor to every worker it starts, so the
    lock is held as long as either lives: a worker orphaned by ``kill -9`` of its server keeps a restarted
    server from starting a second one until it has exited. The file records the holder's pids and the
    worker's job-owner id, so the next holder can release the jobs a dead worker left running.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def acquire(self, wait_s: float) -> dict[str, Any]:
        """Take the lock, waiting up to ``wait_s``; returns the previous holder's record."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait_s
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = self.read()
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise LocalWorkerBusy(
                        f"a local worker of another `recdistill serve` still runs on {self.path.parent} "
                        f"(server pid {holder.get('serve_pid', '?')}, worker pid {holder.get('worker_pid', '?')}"
                        f"; waited {wait_s:g} s). Stop it (`make stop`, or kill that server), or start this "
                        "one with --no-worker."
                    ) from None
                if not told:
                    log.warning(
                        "waiting up to %g s for the local worker (pid %s) of a previous server to exit",
                        wait_s,
                        holder.get("worker_pid", "?"),
                    )
                    told = True
                time.sleep(0.2)
        self.fd = fd
        return self.read()

    def record(self, **info: Any) -> None:
        """Replace the file's content (only the holder writes it)."""
        if self.fd is None:
            return
        data = json.dumps(info).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # the lock lives on in a worker that still holds the inherited descriptor
            self.fd = None


class LocalWorker:
    """One ``celery worker --pool=solo`` subprocess of ``recdistill serve``, restarted if it dies.

    The worker dies with the server whatever the signal (``worker.lifeline``), only one runs per home
    (``WorkerLock``), and when it dies its running job is handed back at once (cancelled if a cancel was
    pending) instead of waiting out the lease: the server knows its worker is gone.
    """

    def __init__(
        self, settings: Settings, restart_delay: float = 1.0, command: list[str] | None = None
    ) -> None:
        self.settings = settings
        self.restart_delay = restart_delay
        # Tests start a light stand-in; the default is computed per spawn (its node name has our pid).
        self.command = command
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        # Held while (re)spawning, and by stop() while it reads ``proc``: a restart racing with stop() would
        # otherwise leave a fresh worker running after the server has gone.
        self._lock = threading.Lock()
        self._watch: threading.Thread | None = None
        self.file_lock = WorkerLock(settings.home / LOCK_FILE)
        self._lifeline: tuple[int, int] | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        ensure_broker_dir(self.settings)
        cmd = self.command or [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "worker.celery_app",
            *worker_argv(self.settings),
        ]
        env = settings_env(self.settings)
        keep: list[int] = []
        if self._lifeline is not None:
            env[LIFELINE_FD_ENV] = str(self._lifeline[0])
            keep.append(self._lifeline[0])
        env[PARENT_PID_ENV] = str(os.getpid())
        if self.file_lock.fd is not None:
            keep.append(self.file_lock.fd)
        proc = subprocess.Popen(cmd, env=env, pass_fds=keep)
        self.file_lock.record(serve_pid=os.getpid(), worker_pid=proc.pid, worker_id=worker_id_for(proc.pid))
        log.info("started local worker (pid %d) on %s", proc.pid, self.settings.celery_broker_url)
        return proc

    def start(self) -> None:
        """Take the home's worker lock (or raise LocalWorkerBusy), release what a previous server's dead
        worker left running, and start the worker and its watchdog."""
        previous = self.file_lock.acquire(self.settings.local_worker_wait_s)
        # The lock was free, so that worker has exited; unless its pid now names another process (reused
        # since), which may be a worker holding jobs of its own: then the lease decides, as for any worker.
        if previous.get("worker_id") and not _pid_alive(previous.get("worker_pid")):
            self._recover(str(previous["worker_id"]))
        # The server holds the write end and never writes: the worker reads EOF once the server is gone.
        self._lifeline = os.pipe()
        self._watch = threading.Thread(target=self._watchdog, name="local-worker-watchdog", daemon=True)
        self._watch.start()

    def _recover(self, worker_id: str) -> None:
        """Hand the dead worker's running jobs back to the queue at once (or end them cancelled, or failed
        once they have crashed ``job_max_crashes`` workers)."""
        try:
            rec = recover(self.settings, worker_ids=[worker_id])
            for job_id in rec.requeued:
                enqueue_job(job_id, self.settings)
        except Exception:  # the sweeper still recovers them once their lease lapses
            log.exception("could not release the jobs of dead worker %s", worker_id)
            return
        if rec.requeued or rec.cancelled or rec.failed:
            log.warning(
                "dead worker %s: re-queued %s, cancelled %s, failed %s",
                worker_id,
                rec.requeued or "-",
                rec.cancelled or "-",
                rec.failed or "-",
            )

    def _watchdog(self) -> None:
        delay = self.restart_delay
        try:
            while True:
                with self._lock:
                    if self._stopping.is_set():
                        return
                    self.proc = proc = self._spawn()
                started = time.monotonic()
                while proc.poll() is None:
                    if self._stopping.wait(0.2):
                        return
                if self._stopping.is_set():
                    return
                log.warning("local worker (pid %d) exited with %s; restarting it", proc.pid, proc.returncode)
                self._recover(worker_id_for(proc.pid))
                # A worker that exits by itself soon after starting (bad configuration, broker unreachable) is
                # restarted ever more slowly; one killed by a signal (kill -9, the OOM killer) comes back at once.
                crash_loop = proc.returncode >= 0 and time.monotonic() - started < 30
                delay = min(2 * delay, 30.0) if crash_loop else self.restart_delay
                if self._stopping.wait(delay):
                    return
        finally:
            # Linux sends the parent-death signal when the *thread* that started a child ends, not only the
            # process: stay until the worker has exited (stop() signals it).
            if self.proc is not None:
                self.proc.wait()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker: SIGTERM (a running job stops within a few batches and is re-queued, to resume
        from its last epoch on the next start), then SIGKILL after ``timeout``; then free the home's lock."""
        with self._lock:  # waits for a restart in progress, so its process is the one stopped
            self._stopping.set()
            proc = self.proc
        try:
            if proc is None or proc.poll() is not None:
                return
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("local worker did not stop in %.0fs; killing it", timeout)
                proc.kill()
                proc.wait()
        finally:
            if self._watch is not None:
                self._watch.join(timeout=5)
            self.file_lock.record()  # a clean stop leaves no job behind: nothing for the next server to do
            for fd in self._lifeline or ():
                os.close(fd)
            self._lifeline = None
            self.file_lock.release()
