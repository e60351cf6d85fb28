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
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from core.report import format_report  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from identity_check import finished_job, ml100k_service  # noqa: E402

RESULT = ROOT / "bench" / "results" / "compression-report-ml-100k.json"
HP = {"epochs": 20, "teacher_epochs": 20, "batch_size": 1024, "patience": 0}
RUNS = [("none", {"model": "bpr", "dim": 64}), ("dcd", {"model": "bpr", "dim": 64}),
        ("dcd", {"model": "neumf", "dim": 64})]


def main() -> None:
    reports: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="recdistill-report-") as tmp, ml100k_service(Path(tmp)) as (client, ds):
        for method, teacher in RUNS:
            job = finished_job(client, {"dataset_id": ds, "method": method, "seed": 0, "teacher": teacher,
                                        "student": {"model": "bpr", "dim": 8}, "hyperparameters": HP})
            reports.append(client.get(f"/models/{job['student_model_id']}/report").json())
            print(f"\n## {method}, teacher {teacher['model']}:{teacher['dim']} -> student bpr:8\n")
            print(format_report(reports[-1]))
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
