"""Does a refactor change results? Fixed-seed ML-100K `none` and `dcd` runs through the two public entry points,
compared bit for bit with a committed record.

1. `recdistill experiment --dataset ml-100k ...` (teacher, student alone, DCD student; seed 0);
2. the service: `recdistill serve` on a fresh home, upload ML-100K, a `none` and a `dcd` job with seed 0,
   the metrics of the models they register.

Short runs (a few epochs) on CPU with one torch thread, so the check takes a couple of minutes and its
numbers do not depend on the core count.

    .venv/bin/python bench/identity_check.py --write     # record bench/results/identity-ml-100k.json
    .venv/bin/python bench/identity_check.py             # compare with the record (exit 1 on a difference)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT / "bench" / "results" / "identity-ml-100k.json"
CLI = [sys.executable, "-m", "cli"]
HP = {"epochs": 4, "teacher_epochs": 4, "batch_size": 1024, "patience": 0}
EXPERIMENT = ["experiment", "--dataset", "ml-100k", "--teacher", "bpr:64", "--student", "bpr:8",
              "--methods", "none,dcd", "--seeds", "0", "--max-epochs", "4", "--no-progress", "--device", "cpu"]


def env_for(home: Path) -> dict[str, str]:
    return {**os.environ, "RECDISTILL_HOME": str(home), "RECDISTILL_DEVICE": "cpu", "RECDISTILL_TORCH_THREADS": "1",
            "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "RECDISTILL_LOG_LEVEL": "WARNING"}


def run_experiment(work: Path) -> dict[str, Any]:
    out = work / "experiment.json"
    subprocess.run([*CLI, *EXPERIMENT, "--out", str(out)], cwd=ROOT, env=env_for(work / "exp-home"), check=True,
                   stdout=subprocess.DEVNULL)
    runs = json.loads(out.read_text())["runs"]
    return {r["method"]: {"test": r["test"], "valid": r["valid"], "epochs": r["epochs"]} for r in runs}


@contextlib.contextmanager
def ml100k_service(work: Path) -> Iterator[tuple[httpx.Client, str]]:
    """A `recdistill serve` on a fresh home under ``work`` with ML-100K uploaded: (client, data set id)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = env_for(work / "home")
    data = subprocess.run([*CLI, "datasets", "fetch", "ml-100k"], cwd=ROOT, env=env, check=True,
                          capture_output=True, text=True).stdout.strip().splitlines()[-1]
    log = work / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen([*CLI, "serve", "--port", str(port)], cwd=ROOT, env=env, stdout=out, stderr=out,
                                  start_new_session=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if client.get("/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"server did not start; see {log}")
                time.sleep(0.5)
            with open(data, "rb") as fh:
                res = client.post("/datasets", files={"file": ("ml-100k.inter", fh)}, data={"name": "ml-100k"})
            res.raise_for_status()
            yield client, res.json()["id"]
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=90)


def finished_job(client: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    """Submit a job and wait for it; its final row (RuntimeError unless it succeeded)."""
    res = client.post("/jobs", json=body)
    res.raise_for_status()
    job_id = res.json()["id"]
    while (job := client.get(f"/jobs/{job_id}").json())["status"] in ("queued", "running"):
        time.sleep(1)
    if job["status"] != "succeeded":
        raise RuntimeError(f"{body['method']} job ended {job['status']}: {job.get('error')}")
    return job


def run_jobs(work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with ml100k_service(work) as (client, dataset):
        for method in ("none", "dcd"):
            job = finished_job(client, {"dataset_id": dataset, "method": method, "seed": 0,
                                        "teacher": {"model": "bpr", "dim": 64}, "student": {"model": "bpr", "dim": 8},
                                        "hyperparameters": HP})
            student = client.get(f"/models/{job['student_model_id']}").json()
            out[method] = {"student": student["metrics"], "teacher": student["teacher_metrics"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="record the numbers instead of comparing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="recdistill-identity-") as tmp:
        got = {"experiment": run_experiment(Path(tmp)), "jobs": run_jobs(Path(tmp))}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    if args.write:
        RECORD.write_text(json.dumps({"command": "python bench/identity_check.py --write", "commit": commit,
                                      "experiment_args": EXPERIMENT, "job_hyperparameters": HP, **got},
                                     indent=1) + "\n")
        print(f"recorded {RECORD.relative_to(ROOT)} at {commit}")
        return
    record = json.loads(RECORD.read_text())
    want = {"experiment": record["experiment"], "jobs": record["jobs"]}
    if got == want:
        print(f"identical to the record made at {record['commit']} (checked at {commit})")
        return
    print(json.dumps({"recorded": want, "now": got}, indent=1))
    raise SystemExit("results differ from bench/results/identity-ml-100k.json")


if __name__ == "__main__":
    main()
