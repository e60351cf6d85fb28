"""Worker processes started from Python: the embedded local worker of ``recdistill serve`` and the argv of
``recdistill worker``. Same task code path as the distributed mode (Celery), whatever the broker.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading

from core.settings import Settings
from worker.celery_app import QUEUE, ensure_broker_dir

log = logging.getLogger(__name__)


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
        RECDISTILL_DEVICE=settings.device,
    )
    if settings.torch_threads is not None:
        env["RECDISTILL_TORCH_THREADS"] = str(settings.torch_threads)
    return env


class LocalWorker:
    """One ``celery worker --pool=solo`` subprocess, restarted if it dies while the server runs."""

    def __init__(self, settings: Settings, restart_delay: float = 2.0) -> None:
        self.settings = settings
        self.restart_delay = restart_delay
        self.proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        # Held while (re)spawning, and by stop() while it reads ``proc``: a restart racing with stop() would
        # otherwise leave a fresh worker running after the server has gone.
        self._lock = threading.Lock()
        self._watch: threading.Thread | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        ensure_broker_dir(self.settings)
        cmd = [sys.executable, "-m", "celery", "-A", "worker.celery_app", *worker_argv(self.settings)]
        proc = subprocess.Popen(cmd, env=settings_env(self.settings))
        log.info("started local worker (pid %d) on %s", proc.pid, self.settings.celery_broker_url)
        return proc

    def start(self) -> None:
        with self._lock:
            self.proc = self._spawn()
        self._watch = threading.Thread(target=self._watchdog, name="local-worker-watchdog", daemon=True)
        self._watch.start()

    def _watchdog(self) -> None:
        while not self._stopping.wait(1.0):
            if self.proc is not None and self.proc.poll() is not None:
                log.warning("local worker exited with %s; restarting it", self.proc.returncode)
                if self._stopping.wait(self.restart_delay):
                    return
                with self._lock:
                    if self._stopping.is_set():
                        return
                    self.proc = self._spawn()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the worker: SIGTERM (a running job stops within a few batches and is re-queued, to resume
        from its last epoch on the next start), then SIGKILL after ``timeout``."""
        with self._lock:  # waits for a restart in progress, so its process is the one stopped
            self._stopping.set()
            proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.warning("local worker did not stop in %.0fs; killing it", timeout)
            proc.kill()
            proc.wait()
