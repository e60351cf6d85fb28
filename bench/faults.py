"""Faults and load against a real ``recdistill serve``: kill -9 of the worker and of serve mid-job, kill -9 of
serve mid-upload, a model swap under load and a mixed soak; writes what it measured and the bars it checked.

Embedded mode: SQLite + the local worker of ``serve`` in a temporary RECDISTILL_HOME. Distributed mode: a fresh
Postgres database and a Redis db on 127.0.0.1, ``serve --no-worker`` and separate ``recdistill worker``
processes (a killed worker is replaced after ``--restart-delay`` s, as a supervisor would). Everything runs
on loopback with an API key that every request sends; every process started here is stopped at the end.

What is measured (JSON result, default bench/results/faults-<mode>.json):
- recovery_s: from a kill until the job runs again (claimed anew, a new epoch recorded, or ended);
- epochs run twice: an epoch whose history entry (duration, losses) seen before a kill changes afterwards, or
  a final history that is not exactly epochs 1..N per phase;
- lost jobs: submitted jobs that are gone or never end (within --job-timeout);
- kill -9 of serve: local workers still alive --orphan-grace s later, local workers after the restart; mid-upload:
  the data set exists whole or not at all, and no partial upload or unowned folder is left after the restart;
- swap and soak: requests, non-2xx by status + code, p50/p99 per endpoint, API and worker RSS over the soak.

    PYTHONPATH=. .venv/bin/python bench/faults.py                     # embedded, 10-minute soak
    PYTHONPATH=. .venv/bin/python bench/faults.py --mode distributed  # Postgres + Redis + Celery worker
    PYTHONPATH=. .venv/bin/python bench/faults.py --soak-s 30 --out /tmp/faults.json   # a short run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from faults_kit import (  # noqa: E402
    LOOPBACK,
    ROOT,
    Pacer,
    Processes,
    Recorder,
    alive,
    call,
    celery_children,
    dump,
    free_port,
    git_commit,
    interactions_csv,
    multipart_chunks,
    rss_mb,
)

FINAL = ("succeeded", "failed", "cancelled")
LOCAL_HOSTS = ("127.0.0.1", "localhost")


# ----------------------------------------------------------------------------------------------- the stack
class Stack:
    """serve (+ its local worker, embedded) or serve --no-worker + ``recdistill worker`` (distributed)."""

    def __init__(self, args: argparse.Namespace, home: Path, procs: Processes) -> None:
        self.args = args
        self.mode = args.mode
        self.home = home
        self.procs = procs
        self.port = args.port or free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.key = secrets.token_urlsafe(24)
        self.serve: Any = None
        self.workers: list[Any] = []
        self.n_started = 0

    def env(self, database_url: str | None, broker_url: str | None) -> dict[str, str]:
        # Nothing of the caller's service configuration leaks in: the bench owns every setting.
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("RECDISTILL_") and k not in ("DATABASE_URL", "CELERY_BROKER_URL", "ARTIFACT_DIR")
        }
        env.update(
            PYTHONPATH=str(ROOT),
            RECDISTILL_HOME=str(self.home),
            ARTIFACT_DIR=str(self.home / "artifacts"),
            RECDISTILL_HOST=LOOPBACK,
            RECDISTILL_PORT=str(self.port),
            RECDISTILL_API_KEY=self.key,
            RECDISTILL_DEVICE="cpu",
            RECDISTILL_TORCH_THREADS=str(self.args.torch_threads),
            RECDISTILL_LOG_LEVEL="INFO",
        )
        if self.args.lease:
            env["RECDISTILL_JOB_LEASE"] = str(self.args.lease)
            env["RECDISTILL_HEARTBEAT"] = str(min(10.0, self.args.lease / 4))
        if database_url:
            env["DATABASE_URL"] = database_url
        if broker_url:
            env["CELERY_BROKER_URL"] = broker_url
        return env

    def start_serve(self) -> float:
        """Start serve and wait for /healthz; seconds it took."""
        t0 = time.monotonic()
        extra = ["--no-worker"] if self.mode == "distributed" else []
        self.serve = self.procs.start("serve", ["serve", *extra])
        self.wait_ready()
        return time.monotonic() - t0

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.serve.poll() is not None:
                raise RuntimeError(f"serve exited with {self.serve.returncode}: {self.log_tail('serve')}")
            try:
                if httpx.get(f"{self.url}/healthz", headers={"X-API-Key": self.key}, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"serve not ready in {timeout}s: {self.log_tail('serve')}")

    def ensure_up(self) -> None:
        """After a failed phase: serve (and, distributed, one worker) running again."""
        if self.serve is None or self.serve.poll() is not None:
            self.start_serve()
        if self.mode == "distributed" and not any(w.poll() is None for w in self.workers):
            self.start_worker()

    def start_worker(self) -> None:
        self.n_started += 1
        name = f"w{self.n_started}"
        self.workers.append(self.procs.start(name, ["worker", "--name", f"faults-{name}@localhost"]))

    def worker_pids(self) -> list[int]:
        if self.mode == "embedded":
            pids = celery_children(self.serve.pid) if self.serve is not None else []
            self.procs.remember(pids)
            return pids
        return [w.pid for w in self.workers if w.poll() is None]

    def wait_worker(self, timeout: float = 60) -> int | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.worker_pids()
            if pids:
                return pids[0]
            time.sleep(0.2)
        return None

    def log_tail(self, name: str, n: int = 3000) -> str:
        path = self.procs.logs / f"{name}.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""


# ----------------------------------------------------------------------------------------------- jobs
class JobWatch:
    """Polls one job; remembers every (phase, epoch) entry of its history it saw, so an epoch whose entry
    changes (it was trained again: new duration) or appears twice is counted as run twice."""

    def __init__(self, http: httpx.Client, job_id: str, scenario: str) -> None:
        self.http, self.job_id, self.scenario = http, job_id, scenario
        self.seen: dict[tuple[str, int], tuple[Any, str]] = {}
        self.rerun: set[tuple[str, int]] = set()
        self.row: dict[str, Any] | None = None

    def poll(self, rec: Recorder | None = None) -> dict[str, Any] | None:
        resp = call(self.http, rec, "GET /jobs/{id}", "GET", f"/jobs/{self.job_id}")
        if resp is None or resp.status_code != 200:
            return None
        row = resp.json()
        for h in row.get("history") or []:
            key = (h["phase"], int(h["epoch"]))
            mark = (h.get("seconds"), json.dumps(h.get("losses"), sort_keys=True))
            if key in self.seen and self.seen[key] != mark:
                self.rerun.add(key)
            self.seen[key] = mark
        self.row = row
        return row

    def wait(self, done: Callable[[dict[str, Any]], bool], timeout: float, every: float = 0.2) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            row = self.poll()
            if row is not None and done(row):
                return row
            time.sleep(every)
        return None

    def duplicates(self) -> list[str]:
        """Epochs listed more than once, or missing, in the final history (per phase, 1..last)."""
        bad = []
        by_phase: dict[str, list[int]] = {}
        for h in (self.row or {}).get("history") or []:
            by_phase.setdefault(h["phase"], []).append(int(h["epoch"]))
        for phase, epochs in by_phase.items():
            if sorted(epochs) != list(range(1, max(epochs) + 1)):
                bad.append(f"{phase}: {epochs}")
        return bad

    def report(self) -> dict[str, Any]:
        row = self.row or {}
        return {
            "job_id": self.job_id,
            "scenario": self.scenario,
            "status": row.get("status"),
            "attempts": row.get("attempts"),
            "error": row.get("error"),
            "epochs_run_twice": sorted(f"{p}:{e}" for p, e in self.rerun),
            "history_problems": self.duplicates(),
        }


def progress_key(row: dict[str, Any]) -> tuple[int, int]:
    """Where a job is: (teacher 0 / distill 1 / later 2, epoch); ordered."""
    order = {"teacher": 0, "distill": 1}.get(row.get("phase") or "", 2 if row.get("phase") else -1)
    return order, int(row.get("epoch") or 0)


class Bench:
    def __init__(self, args: argparse.Namespace, stack: Stack, result: dict[str, Any], out: Path) -> None:
        self.args, self.stack, self.result, self.out = args, stack, result, out
        self.http = httpx.Client(base_url=stack.url, headers={"X-API-Key": stack.key}, timeout=60)
        self.watches: list[JobWatch] = []
        self.dataset_id = ""
        self.n_users = args.users

    def save(self) -> None:
        dump(self.out, self.result)

    # ------------------------------------------------------------------ helpers
    def upload(self, data: bytes, name: str, rec: Recorder | None = None) -> httpx.Response | None:
        return call(
            self.http, rec, "POST /datasets", "POST", "/datasets",
            files={"file": (f"{name}.csv", data, "text/csv")},
            data={"user_col": "user", "item_col": "item", "name": name},
        )

    def settled(self, dataset: dict[str, Any], rec: Recorder | None = None, timeout: float = 120) -> dict[str, Any]:
        """The data set once its ingest ended (uploads parsed off the API process report ``status: pending``
        first; a data set without a ``status`` field is complete when created)."""
        deadline = time.monotonic() + timeout
        while dataset.get("status", "ready") == "pending" and time.monotonic() < deadline:
            time.sleep(0.5)
            resp = call(self.http, rec, "GET /datasets/{id}", "GET", f"/datasets/{dataset['id']}")
            if resp is not None and resp.status_code == 200:
                dataset = resp.json()
        return dataset

    def kill_hp(self) -> dict[str, Any]:
        a = self.args
        return {"epochs": a.epochs, "teacher_epochs": a.teacher_epochs, "batch_size": a.batch_size, "patience": 0,
                "lr": 0.01, "m": 20, "p": 5, "rkd_k": 5, "rkd_l": 5}

    def tiny_hp(self) -> dict[str, Any]:
        return {"epochs": self.args.soak_job_epochs, "teacher_epochs": self.args.soak_job_epochs, "batch_size": 256,
                "lr": 0.01, "m": 10, "p": 3, "rkd_k": 3, "rkd_l": 3}

    def submit(self, scenario: str, hp: dict[str, Any], rec: Recorder | None = None) -> JobWatch:
        body = {"dataset_id": self.dataset_id, "teacher": {"model": "bpr", "dim": 8},
                "student": {"model": "bpr", "dim": 4}, "method": "dcd", "hyperparameters": hp, "seed": 0}
        resp = call(self.http, rec, "POST /jobs", "POST", "/jobs", json=body)
        if resp is None or not resp.is_success:
            raise RuntimeError(f"job not created: {resp.status_code if resp else 'no answer'} "
                               f"{resp.text[:300] if resp else ''}")
        watch = JobWatch(self.http, resp.json()["id"], scenario)
        self.watches.append(watch)
        return watch

    def recovery_bar(self) -> float:
        # Distributed: a dead worker is noticed only once its lease lapses; 10 s for the sweep and the re-claim.
        lease = float(self.args.lease or 120)
        return self.args.recovery_bar or (10.0 if self.args.mode == "embedded" else lease + 10.0)

    # ------------------------------------------------------------------ phases
    def setup(self) -> dict[str, Any]:
        a = self.args
        ready = self.stack.start_serve()
        if self.stack.mode == "distributed":
            self.stack.start_worker()
        worker = self.stack.wait_worker()
        resp = self.upload(interactions_csv(a.users, a.items, a.per_user), "faults-base")
        if resp is None or not resp.is_success:
            raise RuntimeError(f"base upload failed: {resp.text[:300] if resp else 'no answer'}")
        dataset = self.settled(resp.json())
        self.dataset_id = dataset["id"]
        return {"serve_ready_s": round(ready, 2), "worker_pid_found": worker is not None, "dataset": dataset}

    def _kill_point(self, watch: JobWatch) -> dict[str, Any]:
        row = watch.wait(lambda r: r["status"] in FINAL or (r["phase"] == "distill" and r["epoch"] >= self.args.kill_epoch),
                         timeout=self.args.job_timeout)
        if row is None or row["status"] in FINAL:
            raise RuntimeError(f"job reached no kill point (row: {row and {k: row[k] for k in ('status', 'phase', 'epoch')}}); "
                               "raise --epochs")
        return row

    def _recover(self, watch: JobWatch, before: dict[str, Any], t_kill: float) -> dict[str, Any]:
        """Watch the job after a kill until it ends; when it first ran again (re-claimed, or a new epoch)."""
        attempts0, key0 = before["attempts"], progress_key(before)
        t_run = t_progress = None
        deadline = time.monotonic() + self.args.job_timeout
        row = before
        while time.monotonic() < deadline:
            got = watch.poll()
            if got is not None:
                row = got
                now = time.monotonic() - t_kill
                if t_run is None and ((row["attempts"] > attempts0 and row["status"] == "running")
                                      or progress_key(row) > key0 or row["status"] in FINAL):
                    t_run = now
                if t_progress is None and (progress_key(row) > key0 or row["status"] in FINAL):
                    t_progress = now
                if row["status"] in FINAL:
                    break
            time.sleep(0.2)
        return {
            "killed_at": {"phase": before["phase"], "epoch": before["epoch"], "attempts": attempts0},
            "recovery_s": None if t_run is None else round(t_run, 2),
            "first_new_epoch_s": None if t_progress is None else round(t_progress, 2),
            "finished_s": round(time.monotonic() - t_kill, 2) if row["status"] in FINAL else None,
            **watch.report(),
        }

    def kill_worker(self) -> dict[str, Any]:
        watch = self.submit("kill_worker", self.kill_hp())
        self._kill_point(watch)
        pid = self.stack.wait_worker()
        if pid is None:
            raise RuntimeError("no worker process found")
        if self.stack.mode == "distributed":
            self.stack.procs.kill9(pid)
        else:  # a child of serve: serve reaps it
            os.kill(pid, signal.SIGKILL)
        t_kill = time.monotonic()
        time.sleep(0.3)
        before = watch.poll() or watch.row or {}
        if self.stack.mode == "distributed":
            time.sleep(self.args.restart_delay)  # the supervisor (systemd, compose) restarts the worker
            self.stack.start_worker()
        out = {"killed_pid": pid, **self._recover(watch, before, t_kill)}
        out["workers_after"] = len(self.stack.worker_pids())
        return out

    def _kill_serve(self) -> Callable[[], list[int]]:
        """``kill -9`` of serve alone. Returns a call that gives the local workers it had that were still alive
        ``--orphan-grace`` s after the kill (counted in the background: serve is restarted meanwhile)."""
        old_workers = self.stack.worker_pids() if self.stack.mode == "embedded" else []
        self.stack.procs.kill9(self.stack.serve.pid)
        orphans: list[int] = []
        timer = threading.Timer(self.args.orphan_grace, lambda: orphans.extend(p for p in old_workers if alive(p)))
        timer.start()

        def result() -> list[int]:
            timer.join()
            return orphans

        return result

    def _stop_orphans(self, orphans: list[int]) -> int:
        """A worker that outlived its serve keeps consuming the queue: stop it so later phases measure one."""
        left = [p for p in orphans if alive(p)]
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        return len(left)

    def kill_serve_mid_job(self) -> dict[str, Any]:
        watch = self.submit("kill_serve_mid_job", self.kill_hp())
        before = self._kill_point(watch)
        t_kill = time.monotonic()
        orphaned = self._kill_serve()
        ready = time.monotonic()
        self.stack.start_serve()
        out: dict[str, Any] = {"serve_restart_ready_s": round(time.monotonic() - ready, 2)}
        out.update(self._recover(watch, before, t_kill))
        if self.stack.mode == "embedded":
            self.stack.wait_worker(timeout=30)
            orphans = orphaned()
            out["orphaned_workers_after_kill"] = len(orphans)
            out["local_workers_after_restart"] = len([p for p in orphans if alive(p)]) + len(self.stack.worker_pids())
            out["orphans_killed_by_bench_after_job"] = self._stop_orphans(orphans)
        return out

    def kill_serve_mid_upload(self) -> dict[str, Any]:
        a = self.args
        per_user = 20
        n_users = max(100, int(a.upload_mb * 1024 * 1024 / (per_user * 13)))
        data = interactions_csv(n_users, 2000, per_user, seed=7, prefix="x")
        expected = data.count(b"\n") - 1
        out: dict[str, Any] = {"upload_bytes": len(data), "variants": []}
        for variant, fraction in (("mid_body", 0.5), ("after_body", 1.0)):
            name = f"faults-killed-upload-{variant}"
            boundary = uuid.uuid4().hex
            sent = threading.Event()
            chunk = 64 * 1024
            n_chunks = max(1, len(data) // chunk)
            delay = a.upload_stream_s / n_chunks
            body = multipart_chunks(boundary, {"user_col": "user", "item_col": "item", "name": name}, f"{name}.csv",
                                    data, chunk, sent, delay, int(len(data) * fraction) - chunk)
            outcome: dict[str, Any] = {}

            def send(body: Any = body, outcome: dict[str, Any] = outcome, boundary: str = boundary) -> None:
                try:
                    resp = self.http.post("/datasets", content=body,
                                          headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
                    outcome["status"] = resp.status_code
                except httpx.HTTPError as exc:
                    outcome["status"] = f"transport {type(exc).__name__}"

            sender = threading.Thread(target=send, daemon=True)
            sender.start()
            sent.wait(timeout=120)
            orphaned = self._kill_serve()
            sender.join(timeout=30)
            leftovers_before = self._upload_leftovers(set())
            self.stack.start_serve()
            orphans = orphaned()
            resp = call(self.http, None, "GET /datasets", "GET", "/datasets", params={"limit": 1000})
            rows = resp.json()["data"] if resp is not None and resp.status_code == 200 else []
            mine = [self.settled(r, timeout=30) for r in rows if r["name"] == name]
            # A row left pending or failed by the crash is a half-written data set, not a whole one.
            whole = all(r["n_interactions"] == expected and r.get("status", "ready") == "ready" for r in mine)
            leftovers = self._upload_leftovers({r["id"] for r in rows})
            out["variants"].append({
                "variant": variant, "client_saw": outcome.get("status"), "dataset_rows": len(mine),
                "dataset_status": [r.get("status", "ready") for r in mine],
                "dataset_whole_or_absent": whole and len(mine) <= 1,
                "leftovers_before_restart": leftovers_before, "leftovers_after_restart": leftovers,
                "orphaned_workers_after_kill": len(orphans), "orphans_killed_by_bench": self._stop_orphans(orphans),
            })
            for r in mine:  # keep the catalogue small for the soak
                call(self.http, None, "DELETE /datasets/{id}", "DELETE", f"/datasets/{r['id']}")
        if self.stack.mode == "embedded":
            self.stack.wait_worker()
        return out

    def _upload_leftovers(self, known_ids: set[str]) -> list[str]:
        """Partial uploads and data set folders no data set row owns (paths relative to the home)."""
        home = self.stack.home
        found = [str(p.relative_to(home)) for p in home.rglob("upload.part")]
        datasets = home / "artifacts" / "datasets"
        if known_ids and datasets.is_dir():
            found += [str(p.relative_to(home)) for p in datasets.iterdir() if p.name not in known_ids]
        return sorted(set(found))

    def _students(self) -> list[str]:
        resp = call(self.http, None, "GET /models", "GET", "/models", params={"role": "student", "limit": 1000})
        return [m["id"] for m in resp.json()["data"]] if resp is not None and resp.status_code == 200 else []

    def swap(self) -> dict[str, Any]:
        a = self.args
        students = self._students()
        extra = 0
        while len(students) < 2 and extra < 3:  # the kill scenarios' jobs normally leave two students
            extra += 1
            watch = self.submit("swap_setup", self.tiny_hp())
            watch.wait(lambda r: r["status"] in FINAL, timeout=a.job_timeout, every=0.5)
            students = self._students()
        if len(students) < 2:
            raise RuntimeError("fewer than two student models to swap")
        pair = students[:2]
        first = call(self.http, None, "POST /models/{id}/activate", "POST", f"/models/{pair[0]}/activate")
        if first is None or first.status_code != 200:
            raise RuntimeError(f"activation failed: {first.text[:300] if first else 'no answer'}")
        rec, swaps = Recorder(), Recorder()
        wrong: list[str] = []
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(base_url=self.stack.url, headers={"X-API-Key": self.stack.key}, timeout=30) as http:
                rng = random.Random()
                while not stop.is_set():
                    resp = call(http, rec, "GET /recommend/{user}", "GET", f"/recommend/u{rng.randrange(self.n_users)}",
                                params={"k": 10})
                    if resp is not None and resp.status_code == 200 and resp.json().get("model_id") not in pair:
                        wrong.append(resp.json().get("model_id"))

        threads = [threading.Thread(target=client, daemon=True) for _ in range(a.swap_clients)]
        for t in threads:
            t.start()
        n = 0
        deadline = time.monotonic() + a.swap_s
        try:
            while time.monotonic() < deadline:
                n += 1
                call(self.http, swaps, "POST /models/{id}/activate", "POST", f"/models/{pair[n % 2]}/activate")
                time.sleep(a.swap_interval)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
        summary = rec.summary()
        return {"models": pair, "activations": swaps.summary(), "clients": a.swap_clients, **summary,
                "wrong_model_id": len(wrong),
                "failed_requests": summary["non_2xx_or_error"] + len(wrong)}

    def soak(self) -> dict[str, Any]:
        a = self.args
        stack = self.stack
        rec = Recorder()
        stop = threading.Event()
        users = [f"u{i}" for i in range(self.n_users)]
        self._warmup(users)
        rss: list[dict[str, Any]] = []

        def sample() -> dict[str, Any]:
            workers = stack.worker_pids()
            return {"t_s": round(time.monotonic() - t0, 1), "api_mb": rss_mb(stack.serve.pid),
                    "worker_mb": rss_mb(workers[0]) if workers else None}

        t0 = time.monotonic()
        rss.append(sample())

        def guarded(fn: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                try:
                    fn()
                except Exception:  # a crashed load thread must show in the result, not vanish
                    errors.append(traceback.format_exc(limit=3))
            return run

        errors: list[str] = []
        cap = threading.Semaphore(a.max_requests)

        def allowed() -> bool:
            return cap.acquire(blocking=False)

        rec_pace = Pacer(a.rps)

        def recommend() -> None:
            with httpx.Client(base_url=stack.url, headers={"X-API-Key": stack.key}, timeout=30) as http:
                rng = random.Random()
                while rec_pace.wait(stop) and allowed():
                    call(http, rec, "GET /recommend/{user}", "GET", f"/recommend/{rng.choice(users)}", params={"k": 10})

        batch_pace = Pacer(a.batch_rps)

        def batch() -> None:
            with httpx.Client(base_url=stack.url, headers={"X-API-Key": stack.key}, timeout=60) as http:
                rng = random.Random()
                while batch_pace.wait(stop) and allowed():
                    call(http, rec, "POST /recommend/batch", "POST", "/recommend/batch",
                         json={"users": rng.sample(users, min(a.batch_users, len(users))), "k": 10})

        health_pace = Pacer(2.0)

        def health() -> None:
            with httpx.Client(base_url=stack.url, headers={"X-API-Key": stack.key}, timeout=30) as http:
                while health_pace.wait(stop) and allowed():
                    call(http, rec, "GET /healthz", "GET", "/healthz")

        uploads = {"created": 0, "deleted": 0}

        def upload() -> None:
            n = 0
            while not stop.wait(a.upload_every) and allowed():
                n += 1
                resp = self.upload(interactions_csv(100, 50, 8, seed=n, prefix="s"), f"soak-{n}", rec)
                if resp is not None and resp.is_success:
                    uploads["created"] += 1
                    self.settled(resp.json(), rec)
                    gone = call(self.http, rec, "DELETE /datasets/{id}", "DELETE", f"/datasets/{resp.json()['id']}")
                    uploads["deleted"] += int(gone is not None and gone.status_code == 204)

        soak_jobs: list[JobWatch] = []

        def jobs() -> None:
            while not stop.is_set() and allowed():
                started = time.monotonic()
                watch: JobWatch | None = None
                try:
                    watch = self.submit("soak", self.tiny_hp(), rec)
                except RuntimeError as exc:
                    errors.append(str(exc))
                if watch is not None:
                    soak_jobs.append(watch)
                    end = time.monotonic() + a.job_timeout
                    # Polled until it ends, also after the soak's end (bounded by --job-timeout).
                    while time.monotonic() < end:
                        row = watch.poll(rec)
                        if row is not None and row["status"] in FINAL:
                            break
                        time.sleep(1.0)
                stop.wait(max(0.0, a.job_every - (time.monotonic() - started)))

        def sampler() -> None:
            while not stop.wait(5.0):
                rss.append(sample())

        threads = [threading.Thread(target=guarded(fn), daemon=True)
                   for fn in [*[recommend] * a.clients, batch, health, upload, jobs, sampler]]
        for t in threads:
            t.start()
        deadline = t0 + a.soak_s
        while time.monotonic() < deadline and not stop.is_set():
            time.sleep(0.5)
        stop.set()
        rss.append(sample())
        elapsed = time.monotonic() - t0
        for t in threads:
            t.join(timeout=a.job_timeout + 30)
        start, end = rss[0], rss[-1]
        growth = None
        if start["api_mb"] and end["api_mb"]:
            growth = round(100 * (end["api_mb"] - start["api_mb"]) / start["api_mb"], 2)
        return {
            "duration_s": round(elapsed, 1),
            "rates": {"recommend_rps": a.rps, "batch_rps": a.batch_rps, "batch_users": a.batch_users,
                      "upload_every_s": a.upload_every, "job_every_s": a.job_every, "clients": a.clients},
            **rec.summary(),
            "uploads": uploads,
            "jobs": [w.report() for w in soak_jobs],
            "rss_start": start, "rss_end": end, "rss_max_api_mb": max((s["api_mb"] or 0) for s in rss),
            "api_rss_growth_pct": growth, "rss_samples": rss, "thread_errors": errors,
        }

    def _warmup(self, users: list[str]) -> None:
        """A few requests of each kind before the start RSS, so first-use imports don't count as growth."""
        for u in users[:20]:
            call(self.http, None, "warm", "GET", f"/recommend/{u}", params={"k": 10})
        for _ in range(3):
            call(self.http, None, "warm", "POST", "/recommend/batch", json={"users": users[:self.args.batch_users], "k": 10})
        resp = self.upload(interactions_csv(100, 50, 8, seed=999, prefix="s"), "soak-warmup")
        if resp is not None and resp.is_success:
            self.settled(resp.json())
            call(self.http, None, "warm", "DELETE", f"/datasets/{resp.json()['id']}")

    def final_jobs(self) -> dict[str, Any]:
        """Every job this run submitted: still there, and ended (waited for up to --job-timeout)."""
        deadline = time.monotonic() + self.args.job_timeout
        lost, reports = [], []
        for w in self.watches:
            row = w.wait(lambda r: r["status"] in FINAL, timeout=max(1.0, deadline - time.monotonic()), every=0.5)
            if row is None:
                lost.append(w.job_id)
            reports.append(w.report())
        return {"submitted": len(self.watches), "lost": lost, "jobs": reports}


# ----------------------------------------------------------------------------------------------- bars
def bars(res: dict[str, Any], mode: str, recovery_limit: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    ph = res["phases"]

    def bar(name: str, value: Any, limit: str, ok: bool | None) -> None:
        out.append({"bar": name, "value": value, "limit": limit, "pass": bool(ok) if ok is not None else False,
                    **({"not_measured": True} if ok is None else {})})

    final = ph.get("final_jobs", {})
    jobs = final.get("jobs", [])
    bar("lost_jobs", len(final["lost"]) if "lost" in final else None, "== 0",
        None if "lost" not in final else not final["lost"])
    not_ok = [j["job_id"] for j in jobs if j["status"] != "succeeded"]
    bar("jobs_not_succeeded", len(not_ok) if jobs else None, "== 0", (not not_ok) if jobs else None)
    twice = sum(len(j["epochs_run_twice"]) + len(j["history_problems"]) for j in jobs)
    bar("epochs_run_twice", twice if jobs else None, "== 0", (twice == 0) if jobs else None)
    for name in ("kill_worker", "kill_serve_mid_job"):
        p = ph.get(name, {})
        bar(f"{name}.job_succeeded", p.get("status"), "succeeded", p.get("status") == "succeeded" if p else None)
        rec = p.get("recovery_s")
        bar(f"{name}.recovery_s", rec, f"<= {recovery_limit:g}", (rec is not None and rec <= recovery_limit) if p else None)
    p = ph.get("kill_serve_mid_job", {})
    if mode == "embedded":
        bar("kill_serve_mid_job.orphaned_workers", p.get("orphaned_workers_after_kill"), "== 0",
            p.get("orphaned_workers_after_kill") == 0 if p else None)
        bar("kill_serve_mid_job.local_workers_after_restart", p.get("local_workers_after_restart"), "== 1",
            p.get("local_workers_after_restart") == 1 if p else None)
    up = ph.get("kill_serve_mid_upload", {}).get("variants", [])
    bar("kill_serve_mid_upload.whole_or_absent", [v["dataset_whole_or_absent"] for v in up], "all true",
        all(v["dataset_whole_or_absent"] for v in up) if up else None)
    if mode == "embedded":
        orphaned = sum(v["orphaned_workers_after_kill"] for v in up)
        bar("kill_serve_mid_upload.orphaned_workers", orphaned if up else None, "== 0", (orphaned == 0) if up else None)
    left = len({path for v in up for path in v["leftovers_after_restart"]})
    bar("kill_serve_mid_upload.leftovers_after_restart", left if up else None, "== 0", (left == 0) if up else None)
    sw = ph.get("swap", {})
    bar("swap.failed_requests", sw.get("failed_requests"), "== 0",
        sw.get("failed_requests") == 0 and sw.get("requests", 0) > 0 if sw else None)
    soak = ph.get("soak", {})
    growth = soak.get("api_rss_growth_pct")
    bar("soak.api_rss_growth_pct", growth, "< 10", growth < 10 if growth is not None else None)
    return out


# ----------------------------------------------------------------------------------------------- main
def redis_flush(url: str) -> None:
    """FLUSHDB on the Redis db of ``url`` (raw RESP: no client library needed)."""
    parts = urlsplit(url)
    db = (parts.path or "/0").lstrip("/") or "0"
    with socket.create_connection((parts.hostname or LOOPBACK, parts.port or 6379), timeout=5) as sock:
        cmd = f"*2\r\n$6\r\nSELECT\r\n${len(db)}\r\n{db}\r\n*1\r\n$7\r\nFLUSHDB\r\n".encode()
        sock.sendall(cmd)
        reply = b""
        while reply.count(b"\r\n") < 2:
            got = sock.recv(1024)
            if not got:
                break
            reply += got
    if not reply.startswith(b"+OK"):
        raise RuntimeError(f"redis {url}: {reply!r}")


def local_only(url: str) -> None:
    host = urlsplit(url).hostname
    if host not in LOCAL_HOSTS:
        sys.exit(f"refusing {url}: this bench only targets 127.0.0.1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("embedded", "distributed"), default="embedded")
    p.add_argument("--out", type=Path, help="result file (default bench/results/faults-<mode>.json)")
    p.add_argument("--port", type=int, help="serve port on 127.0.0.1 (default: a free one)")
    p.add_argument("--soak-s", type=float, default=600, help="mixed soak duration (s)")
    p.add_argument("--users", type=int, default=200, help="users of the generated training data")
    p.add_argument("--items", type=int, default=100, help="items of the generated training data")
    p.add_argument("--per-user", type=int, default=10, help="interactions per user")
    p.add_argument("--epochs", type=int, default=20, help="distillation epochs of the killed jobs")
    p.add_argument("--teacher-epochs", type=int, default=2, help="teacher epochs of the killed jobs")
    p.add_argument("--batch-size", type=int, default=64, help="batch size of the killed jobs")
    p.add_argument("--kill-epoch", type=int, default=2, help="kill once this distillation epoch is recorded")
    p.add_argument("--soak-job-epochs", type=int, default=2, help="epochs (teacher and student) of soak jobs")
    p.add_argument("--torch-threads", type=int, default=1, help="RECDISTILL_TORCH_THREADS of the workers")
    p.add_argument("--lease", type=int, help="RECDISTILL_JOB_LEASE (default: the service's default)")
    p.add_argument("--recovery-bar", type=float,
                   help="recovery limit in s (default 10 embedded; distributed: the lease (120 unless --lease) + 10)")
    p.add_argument("--orphan-grace", type=float, default=5.0,
                   help="s after a kill -9 of serve by which its local worker must have exited")
    p.add_argument("--restart-delay", type=float, default=2.0, help="distributed: s before a killed worker is replaced")
    p.add_argument("--job-timeout", type=float, default=600, help="longest wait for one job (s)")
    p.add_argument("--upload-mb", type=float, default=8, help="size of the upload killed mid-body")
    p.add_argument("--upload-stream-s", type=float, default=4, help="seconds the killed upload is streamed over")
    p.add_argument("--swap-s", type=float, default=20, help="model swap under load: duration")
    p.add_argument("--swap-interval", type=float, default=0.25, help="seconds between activations")
    p.add_argument("--swap-clients", type=int, default=4, help="concurrent recommend clients during swaps")
    p.add_argument("--clients", type=int, default=2, help="soak: recommend client threads")
    p.add_argument("--rps", type=float, default=40, help="soak: GET /recommend requests per second (all clients)")
    p.add_argument("--batch-rps", type=float, default=1, help="soak: POST /recommend/batch per second")
    p.add_argument("--batch-users", type=int, default=100, help="soak: users per batch request")
    p.add_argument("--upload-every", type=float, default=10, help="soak: s between uploads (each deleted after)")
    p.add_argument("--job-every", type=float, default=30, help="soak: s between job submissions (one at a time)")
    p.add_argument("--max-requests", type=int, default=200_000, help="soak: cap on requests")
    p.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres", help="distributed: admin URL")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/15", help="distributed: Redis db (flushed)")
    p.add_argument("--keep-home", action="store_true", help="keep the temporary RECDISTILL_HOME (logs) afterwards")
    p.add_argument("--only", help="comma-separated phases to run (setup always runs)")
    return p.parse_args(argv)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


PHASES = ("kill_worker", "kill_serve_mid_job", "kill_serve_mid_upload", "swap", "soak")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or ROOT / "bench" / "results" / f"faults-{args.mode}.json"
    home = Path(tempfile.mkdtemp(prefix="recdistill-faults-"))
    (home / "logs").mkdir()
    procs = Processes({}, home / "logs")
    stack = Stack(args, home, procs)
    pg_name = None
    result: dict[str, Any] = {
        "bench": "faults", "mode": args.mode, "commit": git_commit(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else f"faults.main({argv})",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "phases": {},
    }
    # SIGTERM ends the run like Ctrl-C: the finally clause stops every process started here.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    bench = None
    try:
        db_url = broker = None
        if args.mode == "distributed":
            import psycopg  # the project's own Postgres driver; only to create and drop the throwaway database
            from psycopg import sql

            local_only(args.pg)
            local_only(args.redis)
            pg_name = f"recdistill_faults_{uuid.uuid4().hex[:10]}"
            with psycopg.connect(args.pg, autocommit=True, connect_timeout=5) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(pg_name)))
            db_url = f"{args.pg.rsplit('/', 1)[0].replace('postgresql://', 'postgresql+psycopg://', 1)}/{pg_name}"
            broker = args.redis
            redis_flush(broker)
        procs.env = stack.env(db_url, broker)
        bench = Bench(args, stack, result, out)
        only = set(args.only.split(",")) if args.only else set(PHASES)
        result["phases"]["setup"] = bench.setup()
        bench.save()
        for name in PHASES:
            if name not in only:
                continue
            t0 = time.monotonic()
            print(f"[faults] {name} ...", file=sys.stderr, flush=True)
            try:
                result["phases"][name] = getattr(bench, name)()
            except Exception as exc:  # noqa: BLE001 - recorded as a failed phase; the next phases still run
                result["phases"][name] = {"error": f"{type(exc).__name__}: {exc}",
                                          "trace": traceback.format_exc(limit=4)}
                stack.ensure_up()
            result["phases"][name]["phase_s"] = round(time.monotonic() - t0, 1)
            print(f"[faults] {name}: {json.dumps(result['phases'][name])[:400]}", file=sys.stderr, flush=True)
            bench.save()
        result["phases"]["final_jobs"] = bench.final_jobs()
    except KeyboardInterrupt:
        result["interrupted"] = True
    finally:
        result["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        result["bars"] = bars(result, args.mode, bench.recovery_bar() if bench else 10.0)
        result["all_bars_pass"] = all(b["pass"] for b in result["bars"])
        if bench is not None:
            bench.http.close()
        procs.close()
        if any("error" in p for p in result["phases"].values()):
            result["serve_log_tail"] = stack.log_tail("serve", 1500)
        dump(out, result)
        if pg_name:
            import psycopg
            from psycopg import sql

            with psycopg.connect(args.pg, autocommit=True, connect_timeout=5) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(pg_name)))
            redis_flush(args.redis)
        signal.signal(signal.SIGTERM, previous)
        if args.keep_home:
            print(f"[faults] home kept: {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)
    for b in result["bars"]:
        verdict = "SKIP" if b.get("not_measured") else "PASS" if b["pass"] else "FAIL"
        print(f"{verdict}  {b['bar']} = {b['value']} ({b['limit']})")
    print(f"result: {out}")
    return 0 if result["all_bars_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
