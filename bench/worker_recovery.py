"""Embedded-mode recovery time after ``kill -9`` of the local worker (or of ``recdistill serve``) mid-job.

Usage: .venv/bin/python bench/worker_recovery.py [--kill worker|serve] [--rounds 3] [--out FILE]
(default FILE: bench/results/recovery-embedded-kill-<worker|serve>.json)

Starts a real ``recdistill serve`` (SQLite database and queue, local Celery worker) on a fresh home with the
default 120 s lease, queues one DCD job on synthetic data, and each round, once a distill epoch is recorded,
sends SIGKILL to the worker that holds the job (``--kill worker``: serve restarts it) or to serve itself
(``--kill serve``: its worker must follow it; a new serve is started at once, as a supervisor would).
Measured per round, from the kill: ``queued_s`` (the job left the dead worker: back in the queue) and
``running_s`` (a new worker has claimed it again). At the end the job must succeed with no distill epoch
run twice.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.db import repo  # noqa: E402
from core.db.migrate import upgrade_head  # noqa: E402
from core.db.models import Job  # noqa: E402
from core.db.session import session_scope  # noqa: E402
from core.settings import Settings  # noqa: E402
from core.storage import ArtifactStore  # noqa: E402
from worker.celery_app import enqueue_job  # noqa: E402
from worker.embedded import settings_env  # noqa: E402

HP = {"epochs": 40, "teacher_epochs": 2, "batch_size": 64, "patience": 0, "lr": 0.01, "m": 20, "p": 5}


def make_job(settings: Settings) -> str:
    """A DCD job on 300 users x 120 items (two taste groups), long enough to be killed several times."""
    rng = np.random.default_rng(0)
    rows = ["user,item"]
    for u in range(300):
        half = np.arange(60) + (0 if u % 2 == 0 else 60)
        rows.extend(f"u{u},i{i}" for i in rng.choice(half, size=15, replace=False))
    store = ArtifactStore(settings.artifact_dir)
    with session_scope(settings.database_url) as s:
        ds = repo.create_dataset(
            s,
            name="recovery",
            original_filename="recovery.csv",
            path="pending",
            format="csv",
            user_col="user",
            item_col="item",
            n_users=300,
            n_items=120,
            n_interactions=4500,
            density=0.125,
            size_bytes=0,
        )
        file = store.dataset_file(ds.id, "recovery.csv")
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text("\n".join(rows) + "\n")
        ds.path = store.relative(file)
        return repo.create_job(
            s,
            dataset_id=ds.id,
            method="dcd",
            teacher={"model": "bpr", "dim": 16},
            student={"model": "bpr", "dim": 4},
            hyperparameters=HP,
            seed=0,
            split={"mode": "random"},
        ).id


def row(settings: Settings, job_id: str) -> Job:
    with session_scope(settings.database_url) as s:
        return repo.get_job(s, job_id)


def wait(settings: Settings, job_id: str, done: Any, timeout: float, poll: float = 0.02) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = row(settings, job_id)
        if done(job):
            return job
        time.sleep(poll)
    job = row(settings, job_id)
    raise SystemExit(f"timed out: status={job.status} phase={job.phase} epoch={job.epoch} error={job.error}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kill", choices=("worker", "serve"), default="worker")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep the temporary home (serve.log) for a look")
    args = parser.parse_args()
    out = args.out or ROOT / f"bench/results/recovery-embedded-kill-{args.kill}.json"

    home = Path(tempfile.mkdtemp(prefix="recdistill-recovery-"))
    settings = Settings(RECDISTILL_HOME=str(home), RECDISTILL_DEVICE="cpu", RECDISTILL_TORCH_THREADS=1)
    settings.ensure_dirs()
    upgrade_head(settings.database_url)
    job_id = make_job(settings)
    enqueue_job(job_id, settings)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = settings_env(settings)
    env.update(RECDISTILL_PORT=str(port), PYTHONPATH=str(ROOT))
    log = home / "serve.log"

    def start_serve() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "cli", "serve"],
            cwd=ROOT,
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    serve = start_serve()
    rounds: list[dict[str, Any]] = []
    try:
        for n in range(args.rounds):
            job = wait(settings, job_id, lambda j: j.status == "running" and j.phase == "distill", 300, 0.2)
            epoch = job.epoch
            job = wait(settings, job_id, lambda j, e=epoch: j.status != "running" or j.epoch > e, 120, 0.05)
            assert job.status == "running" and job.worker_id, (job.status, job.error)
            pid = int(job.worker_id.rsplit(":", 1)[1])
            os.kill(serve.pid if args.kill == "serve" else pid, signal.SIGKILL)
            killed = time.monotonic()
            if args.kill == "serve":
                serve.wait(timeout=10)
                serve = start_serve()
            old = job.worker_id
            queued = wait(settings, job_id, lambda j, w=old: j.worker_id != w, 60)
            queued_s = time.monotonic() - killed
            again = wait(settings, job_id, lambda j, w=old: j.status == "running" and j.worker_id not in (None, w), 120)
            running_s = time.monotonic() - killed
            rounds.append(
                {
                    "round": n + 1,
                    "killed_at_epoch": job.epoch,
                    "status_after_kill": queued.status,
                    "queued_s": round(queued_s, 2),
                    "running_s": round(running_s, 2),
                    "attempts": again.attempts,
                }
            )
            print(json.dumps(rounds[-1]), flush=True)
        final = wait(settings, job_id, lambda j: j.status in ("succeeded", "failed", "cancelled"), 900, 0.5)
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            try:
                serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    distill_epochs = [h["epoch"] for h in final.history if h["phase"] == "distill"]
    result = {
        "command": f"python bench/worker_recovery.py --kill {args.kill} --rounds {args.rounds}",
        "killed": args.kill,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.system()},
        "lease_s": settings.job_lease_s,
        "rounds": rounds,
        "max_queued_s": max(r["queued_s"] for r in rounds),
        "max_running_s": max(r["running_s"] for r in rounds),
        "final_status": final.status,
        "error": final.error,
        "distill_epochs_run_once": distill_epochs == list(range(1, HP["epochs"] + 1)),
        "note": "running_s includes the restart delay (1 s; --kill serve: a serve start) and a Celery worker "
        "start on a shared 2-core machine",
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))


if __name__ == "__main__":
    main()
