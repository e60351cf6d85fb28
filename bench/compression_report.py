"""The compression report through the service, on ML-100K: a student-alone (`none`) job, then DCD students of
a BPR-MF and of a NeuMF teacher with the same split and seed, and GET /models/{id}/report of each student.

    .venv/bin/python bench/compression_report.py     # writes bench/results/compression-report-ml-100k.json

CPU, one torch thread, a fresh home; the latency (p50/p99 of 200 single-user top-10 calls, measured by the
worker at the end of each job) depends on the machine and its load: the record says where it was measured.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from core.report import format_report  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from identity_check import CLI, env_for  # noqa: E402

RESULT = ROOT / "bench" / "results" / "compression-report-ml-100k.json"
HP = {"epochs": 20, "teacher_epochs": 20, "batch_size": 1024, "patience": 0}
RUNS = [("none", {"model": "bpr", "dim": 64}), ("dcd", {"model": "bpr", "dim": 64}),
        ("dcd", {"model": "neumf", "dim": 64})]


def wait_ready(client: httpx.Client, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or server.poll() is not None:
            raise RuntimeError(f"server did not start; see {log}")
        time.sleep(0.5)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="recdistill-report-") as tmp:
        work = Path(tmp)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = env_for(work / "home")
        data = subprocess.run([*CLI, "datasets", "fetch", "ml-100k"], cwd=ROOT, env=env, check=True,
                              capture_output=True, text=True).stdout.strip().splitlines()[-1]
        log = work / "serve.log"
        with log.open("w") as out:
            server = subprocess.Popen([*CLI, "serve", "--port", str(port)], cwd=ROOT, env=env, stdout=out,
                                      stderr=out, start_new_session=True)
        reports: list[dict[str, Any]] = []
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                wait_ready(client, server, log)
                with open(data, "rb") as fh:
                    res = client.post("/datasets", files={"file": ("ml-100k.inter", fh)}, data={"name": "ml-100k"})
                res.raise_for_status()
                dataset_id = res.json()["id"]
                for method, teacher in RUNS:
                    res = client.post("/jobs", json={"dataset_id": dataset_id, "method": method, "seed": 0,
                                                     "teacher": teacher, "student": {"model": "bpr", "dim": 8},
                                                     "hyperparameters": HP})
                    res.raise_for_status()
                    job_id = res.json()["id"]
                    while (job := client.get(f"/jobs/{job_id}").json())["status"] in ("queued", "running"):
                        time.sleep(1)
                    if job["status"] != "succeeded":
                        raise RuntimeError(f"{method} job ended {job['status']}: {job.get('error')}")
                    reports.append(client.get(f"/models/{job['student_model_id']}/report").json())
                    print(f"\n## {method}, teacher {teacher['model']}:{teacher['dim']} -> student bpr:8\n")
                    print(format_report(reports[-1]))
        finally:
            os.killpg(server.pid, 15)
            server.wait(timeout=90)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    RESULT.write_text(json.dumps({
        "command": "python bench/compression_report.py", "commit": commit, "job_hyperparameters": HP,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared, loaded); CPU, 1 torch thread",
        "reports": reports,
    }, indent=1) + "\n")
    print(f"\nwrote {RESULT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
