"""Issue 14 item 3 through the service: a synthetic data set uploaded, a DCD job run, its student activated and
served, at each size, by a client of a real ``recdistill serve`` (embedded mode: SQLite and the local worker).

Per size: generate the data (``recdistill datasets synth``), start serve in a fresh RECDISTILL_HOME, upload the
file (``POST /datasets``), submit one job (teacher, DCD student, full-ranking test, bundle and index), poll it
to the end, activate the student and time ``GET /recommend/{user}``; then stop serve. Time per phase comes from
the job's own record (its ``phase`` as polled every second, and each epoch's ``seconds`` in its history); the
worker's memory is its peak (VmHWM, exact, over the whole job: each size has a fresh worker) and the largest
resident size sampled in each phase (every 0.5 s: a sample, so a lower bound). Exponents are least-squares
slopes of log(seconds) and log(peak MB) against log(interactions) over the sizes run.

    PYTHONPATH=. .venv/bin/python bench/scale_job.py \\
        --sizes 100000x10000x1000000,316228x31623x3162278,1000000x100000x10000000 \\
        --out bench/results/scale-job.json

Only the standard library, httpx and the CLI as a subprocess: it drives the service as a client would.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import random
import secrets
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from faults_kit import LOOPBACK, ROOT, Processes, celery_children, dump, free_port, git_commit, percentile  # noqa: E402

FINAL = ("succeeded", "failed", "cancelled")


def parse_sizes(text: str) -> list[tuple[int, int, int]]:
    out = []
    for part in text.split(","):
        users, items, inter = (int(x) for x in part.lower().split("x"))
        out.append((users, items, inter))
    return out


def ok(resp: httpx.Response) -> httpx.Response:
    """``resp`` when 2xx; else a RuntimeError with the service's answer (its detail names the field)."""
    if not resp.is_success:
        raise RuntimeError(f"{resp.request.method} {resp.request.url.path}: {resp.status_code} {resp.text[:2000]}")
    return resp


def status_kb(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log(y) on log(x); None with fewer than two positive points."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return round(sum((p[0] - mx) * (p[1] - my) for p in pts) / den, 2) if den else None


class Sampler:
    """Every 0.5 s: the worker's resident size, kept as the largest seen per job phase (``phase`` is set by
    the poller)."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.phase = "queued"
        self.peaks: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            if self.pid is None:
                continue
            kb = status_kb(self.pid, "VmRSS")
            if kb is not None:
                mb = kb / 1024
                self.peaks[self.phase] = max(self.peaks.get(self.phase, 0.0), mb)


def run_size(args: argparse.Namespace, size: tuple[int, int, int], work: Path) -> dict[str, Any]:
    users, items, inter = size
    name = f"synth-{users}x{items}x{inter}"
    data = work / "data" / f"{name}.inter"
    out: dict[str, Any] = {"size": {"users": users, "items": items, "interactions": inter}}
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECDISTILL_")}
    env["PYTHONPATH"] = str(ROOT)
    if not data.exists():
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cli", "datasets", "synth", "--users", str(users), "--items", str(items),
                        "--interactions", str(inter), "--seed", "0", "--out", str(data)],
                       cwd=ROOT, env=env, check=True, capture_output=True)
        out["generate_seconds"] = round(time.perf_counter() - t0, 1)
    out["file_mb"] = round(data.stat().st_size / 2**20, 1)

    home = work / "home" / name
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    port, key = free_port(), secrets.token_urlsafe(24)
    env.update(
        RECDISTILL_HOME=str(home), ARTIFACT_DIR=str(home / "artifacts"), RECDISTILL_HOST=LOOPBACK,
        RECDISTILL_PORT=str(port), RECDISTILL_API_KEY=key, RECDISTILL_DEVICE="cpu",
        RECDISTILL_TORCH_THREADS=str(args.torch_threads), RECDISTILL_LOG_LEVEL="INFO",
        RECDISTILL_MAX_UPLOAD_MB=str(max(500, int(out["file_mb"]) + 64)),
        RECDISTILL_MAX_UPLOAD_DECOMPRESSED_MB=str(max(1024, int(out["file_mb"]) + 64)),
        RECDISTILL_INGEST_TIMEOUT="3600",
        # A job killed (out of memory) is measured once, not re-run by the crash cap for hours.
        RECDISTILL_JOB_MAX_CRASHES="1",
    )
    url, headers = f"http://{LOOPBACK}:{port}", {"X-API-Key": key}
    procs = Processes(env, home)
    sampler = Sampler()
    try:
        serve = procs.start("serve", ["serve"])
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/healthz", headers=headers, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or serve.poll() is not None:
                raise RuntimeError("serve did not start: " + (home / "serve.log").read_text()[-2000:])
            time.sleep(0.2)
        with httpx.Client(base_url=url, headers=headers, timeout=httpx.Timeout(30.0, read=3600.0)) as http:
            t0 = time.perf_counter()
            with data.open("rb") as fh:
                resp = http.post("/datasets", files={"file": (data.name, fh, "text/plain")},
                                 data={"name": name, "format": "inter"})
            dataset = ok(resp).json()
            out["upload"] = {"seconds": round(time.perf_counter() - t0, 1),
                             "answer": {k: dataset[k] for k in ("n_users", "n_items", "n_interactions")}}
            job_body = {
                "dataset_id": dataset["id"], "teacher": {"model": "bpr", "dim": args.teacher_dim},
                "student": {"model": "bpr", "dim": args.student_dim}, "method": "dcd", "seed": 0,
                "hyperparameters": {
                    "epochs": args.epochs, "teacher_epochs": args.epochs, "batch_size": args.batch_size,
                    "lr": args.lr, "valid_users": args.valid_users, "teacher_sparse_updates": True, "m": args.m,
                },
            }
            resp = http.post("/jobs", json=job_body)
            job_id = ok(resp).json()["id"]
            out["job_request"] = job_body | {"dataset_id": "…"}
            sampler.thread.start()
            phases: dict[str, float] = {}
            t_job = time.perf_counter()
            job: dict[str, Any] = {}
            while True:
                if sampler.pid is None:
                    pids = celery_children(serve.pid)
                    sampler.pid = pids[0] if pids else None
                job = http.get(f"/jobs/{job_id}").json()
                phase = job.get("phase") or job["status"]
                if phase not in phases:
                    phases[phase] = time.perf_counter() - t_job
                    print(f"{name}: {phase} at {phases[phase]:.0f} s", file=sys.stderr, flush=True)  # noqa: T201
                sampler.phase = phase
                if job["status"] in FINAL:
                    break
                time.sleep(1.0)
            total = time.perf_counter() - t_job
            hwm = status_kb(sampler.pid, "VmHWM") if sampler.pid else None
            sampler.stop.set()
            out["job"] = {"status": job["status"], "error": job.get("error"), "seconds": round(total, 1),
                          "worker_peak_rss_mb": round(hwm / 1024, 1) if hwm else None}
            names = list(phases)
            ends = [phases[n] for n in names[1:]] + [total]
            out["phases"] = [
                {"phase": n, "seconds": round(end - phases[n], 1),
                 "sampled_peak_rss_mb": round(sampler.peaks.get(n, 0.0), 1) or None}
                for n, end in zip(names, ends, strict=True)
            ]
            out["epochs"] = [{k: h.get(k) for k in ("phase", "epoch", "seconds", "valid")} for h in job["history"]]
            if job["status"] != "succeeded":
                return out
            model = http.get(f"/models/{job['student_model_id']}").json()
            teacher = http.get(f"/models/{job['result_teacher_model_id']}").json()
            out["student"] = {k: model.get(k) for k in ("metrics", "n_params", "size_bytes", "index")}
            out["teacher"] = {k: teacher.get(k) for k in ("metrics", "n_params", "size_bytes")}
            out["report"] = http.get(f"/models/{job['student_model_id']}/report").json()
            t0 = time.perf_counter()
            resp = http.post(f"/models/{job['student_model_id']}/activate")
            ok(resp)
            out["activation_seconds"] = round(time.perf_counter() - t0, 2)
            rng = random.Random(0)
            with data.open() as fh:
                next(fh)
                sample = {line.split("\t", 1)[0] for _, line in zip(range(200_000), fh, strict=False)}
            ids = rng.sample(sorted(sample), min(args.queries, len(sample)))
            lat, bad = [], 0
            for uid in ids:
                t0 = time.perf_counter()
                resp = http.get(f"/recommend/{uid}", params={"k": 10})
                lat.append((time.perf_counter() - t0) * 1000)
                bad += resp.status_code != 200
            out["recommend"] = {"queries": len(ids), "non_200": bad, "p50_ms": round(percentile(lat, 50) or 0, 2),
                                "p99_ms": round(percentile(lat, 99) or 0, 2)}
            serve_rss = status_kb(serve.pid, "VmRSS")
            out["serve_rss_mb"] = round(serve_rss / 1024, 1) if serve_rss else None
        return out
    finally:
        sampler.stop.set()
        procs.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", required=True, help="USERSxITEMSxINTERACTIONS, comma-separated")
    p.add_argument("--epochs", type=int, default=1, help="epoch cap of the teacher and the student")
    p.add_argument("--teacher-dim", type=int, default=64)
    p.add_argument("--student-dim", type=int, default=16)
    p.add_argument("--m", type=int, default=100, help="DCD's list length M")
    p.add_argument("--valid-users", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=8192)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--work", default="var/scale-job", help="data files and service homes")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    work = (ROOT / args.work).resolve()
    result: dict[str, Any] = {
        "command": "PYTHONPATH=. python bench/scale_job.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "code": git_commit(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "device": "cpu"},
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "work", "sizes")},
        "sizes": [],
    }
    out = ROOT / args.out
    for size in parse_sizes(args.sizes):
        result["sizes"].append(run_size(args, size, work))
        dump(out, result)
    done = [s for s in result["sizes"] if s.get("job", {}).get("status") == "succeeded"]
    xs = [s["size"]["interactions"] for s in done]
    growth: dict[str, Any] = {}
    for name in {p["phase"] for s in done for p in s["phases"]}:
        secs = [next((p["seconds"] for p in s["phases"] if p["phase"] == name), None) for s in done]
        growth[name] = slope(xs, secs)
    growth["job_seconds"] = slope(xs, [s["job"]["seconds"] for s in done])
    growth["worker_peak_rss_mb"] = slope(xs, [s["job"]["worker_peak_rss_mb"] for s in done])
    result["exponents"] = growth
    dump(out, result)


if __name__ == "__main__":
    main()
