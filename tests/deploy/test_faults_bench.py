"""bench/faults.py: its measuring helpers and bars (fast), and a smoke run against a real serve (slow)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from script_loader import load_script

ROOT = Path(__file__).resolve().parents[2]


def load(name: str) -> ModuleType:
    return load_script(f"bench/{name}.py")


kit = load("faults_kit")
faults = load("faults")


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert kit.percentile(values, 50) == 50.0
    assert kit.percentile(values, 99) == 99.0
    assert kit.percentile([3.0], 99) == 3.0
    assert kit.percentile([], 50) is None


def test_recorder_counts_non_2xx_by_status_and_code() -> None:
    rec = kit.Recorder()
    ok = httpx.Response(200, json={})
    conflict = httpx.Response(409, json={"detail": "busy", "code": "dataset_in_use"})
    plain = httpx.Response(500, text="Internal Server Error")
    for resp in (ok, ok, conflict, plain):
        rec.add("GET /x", 1.0, kit.cause_of(resp))
    rec.add("GET /x", 2.0, "transport ConnectError")
    summary = rec.summary()
    assert (summary["requests"], summary["served_2xx"], summary["non_2xx_or_error"]) == (5, 2, 3)
    assert summary["non_2xx_by_cause"] == {
        "GET /x | 409 dataset_in_use": 1,
        "GET /x | 500 non-json": 1,
        "GET /x | transport ConnectError": 1,
    }
    assert summary["latency_ms"]["GET /x"]["n"] == 5


def test_multipart_body_is_complete_and_signals_half_way() -> None:
    data = kit.interactions_csv(10, 6, 2)
    assert data.splitlines()[0] == b"user,item" and len(data.splitlines()) == 21
    sent = threading.Event()
    body = b"".join(kit.multipart_chunks("B", {"user_col": "user"}, "f.csv", data, 16, sent, 0.0, len(data) // 2))
    assert sent.is_set()
    assert body.startswith(b'--B\r\nContent-Disposition: form-data; name="user_col"\r\n\r\nuser\r\n')
    assert data in body and body.endswith(b"\r\n--B--\r\n")


def passing_result() -> dict[str, Any]:
    job = {"job_id": "j", "status": "succeeded", "epochs_run_twice": [], "history_problems": []}
    killed = {"status": "succeeded", "recovery_s": 4.0}
    variant = {"dataset_whole_or_absent": True, "leftovers_after_restart": [], "orphaned_workers_after_kill": 0}
    return {
        "phases": {
            "final_jobs": {"lost": [], "jobs": [job]},
            "kill_worker": killed,
            "kill_serve_mid_job": {**killed, "orphaned_workers_after_kill": 0, "local_workers_after_restart": 1},
            "kill_serve_mid_upload": {"variants": [variant]},
            "swap": {"failed_requests": 0, "requests": 100},
            "soak": {"api_rss_growth_pct": 2.0},
        }
    }


def test_bars_pass_fail_and_not_measured() -> None:
    res = passing_result()
    assert all(b["pass"] for b in faults.bars(res, "embedded", 10.0))

    res["phases"]["kill_worker"]["recovery_s"] = 121.0  # waited out the lease
    res["phases"]["final_jobs"]["jobs"][0]["epochs_run_twice"] = ["distill:3"]
    res["phases"]["soak"]["api_rss_growth_pct"] = 12.5
    failed = {b["bar"] for b in faults.bars(res, "embedded", 10.0) if not b["pass"]}
    assert failed == {"kill_worker.recovery_s", "epochs_run_twice", "soak.api_rss_growth_pct"}

    del res["phases"]["swap"]  # a phase that did not run is a failed bar marked not measured, never a pass
    swap = next(b for b in faults.bars(res, "embedded", 10.0) if b["bar"] == "swap.failed_requests")
    assert swap == {"bar": "swap.failed_requests", "value": None, "limit": "== 0", "pass": False, "not_measured": True}


def test_only_loopback_targets() -> None:
    faults.local_only("postgresql://postgres@127.0.0.1:5432/postgres")
    with pytest.raises(SystemExit):
        faults.local_only("redis://10.0.0.5:6379/15")


@pytest.mark.slow
def test_smoke_run_kills_a_worker_and_soaks(tmp_path: Path) -> None:
    """Embedded: a worker killed mid-job and a 5 s soak; the job ends succeeded with no epoch run twice."""
    out = tmp_path / "faults.json"
    faults.main(["--only", "kill_worker,soak", "--soak-s", "5", "--lease", "5", "--epochs", "12",
                 "--job-every", "100", "--out", str(out)])
    res = json.loads(out.read_text())
    bars = {b["bar"]: b for b in res["bars"]}
    assert bars["lost_jobs"]["pass"] and bars["epochs_run_twice"]["pass"], res["bars"]
    assert bars["kill_worker.job_succeeded"]["pass"], res["phases"]["kill_worker"]
    assert res["phases"]["kill_worker"]["recovery_s"] is not None
    soak = res["phases"]["soak"]
    assert soak["requests"] > 0 and soak["rss_start"]["api_mb"] and soak["rss_end"]["api_mb"]
    assert bars["swap.failed_requests"].get("not_measured")
    assert res["commit"] and res["command"]
