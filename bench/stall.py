"""Can one client stall the server? /healthz latency while one client sends the worst request each endpoint
accepts (issue 10: p99 under 100 ms).

Starts ``uvicorn api.main:app`` (1 worker, an API key set, default limits) on 127.0.0.1 with an ML-1M-sized
active student bundle (built as in bench/serve_throughput.py), then for each scenario: one attacker process
sends the scenario's request back to back for ``--duration`` seconds while a prober in this process GETs
/healthz every 10 ms on its own connection. Records the prober's p50/p99/max and the attacker's request
count and statuses.

    .venv/bin/python bench/stall.py --out bench/results/stall.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_throughput import ROOT, free_port, setup_home, wait_ready  # noqa: E402

KEY = "bench-stall-key"
BAR_P99_MS = 100.0


def csv_bytes(mb: int) -> bytes:
    """A valid interaction file of about ``mb`` MiB (random users/items)."""
    rng = np.random.default_rng(0)
    n = mb * 1024 * 1024 // 16
    users, items = rng.integers(0, 50_000, n), rng.integers(0, 20_000, n)
    lines = "\n".join(f"{u},{i},{int(t)}" for u, i, t in zip(users, items, rng.integers(0, 10**9, n), strict=True))
    return ("user_id,item_id,timestamp\n" + lines + "\n").encode()


def scenarios(users: list[str], items: list[str], upload_mb: int) -> dict[str, Callable[[httpx.Client], httpx.Response]]:
    """name -> a function sending that scenario's worst request (default limits: k 1000, 1000 excluded ids,
    100,000 batch items, 1 MiB bodies)."""
    exclude = ",".join(items[:1000])
    nested = b"[" * 500_000 + b"]" * 500_000  # 1 MiB of nesting: the JSON parser's worst case
    upload = csv_bytes(upload_mb) if upload_mb else b""
    return {
        "recommend k=1000 exclude=1000": lambda c: c.get(f"/recommend/{users[7]}",
                                                         params={"k": 1000, "exclude": exclude}),
        "recommend unknown user k=1000 exclude=1000": lambda c: c.get("/recommend/nobody",
                                                                      params={"k": 1000, "exclude": exclude}),
        "batch 100 users x k=1000": lambda c: c.post("/recommend/batch", json={"users": users[:100], "k": 1000}),
        "batch 1000 users x k=100": lambda c: c.post("/recommend/batch", json={"users": users[:1000], "k": 100}),
        "similar k=1000": lambda c: c.get(f"/items/{items[3]}/similar", params={"k": 1000}),
        "list jobs limit=1000": lambda c: c.get("/jobs", params={"limit": 1000}),
        "POST /jobs 1 MiB nested JSON": lambda c: c.post("/jobs", content=nested,
                                                         headers={"Content-Type": "application/json"}),
        "POST /jobs 2 MiB body (over the limit)": lambda c: c.post("/jobs", content=b" " * (2 << 20),
                                                                   headers={"Content-Type": "application/json"}),
        f"upload {upload_mb} MiB CSV": lambda c: c.post("/datasets", files={"file": ("big.csv", upload)}),
        "metrics": lambda c: c.get("/metrics"),
    }


def attack(base: str, name: str, users: list[str], items: list[str], upload_mb: int, duration: float,
           out: Any) -> None:
    send = scenarios(users, items, upload_mb)[name]
    statuses: Counter[int] = Counter()
    times: list[float] = []
    with httpx.Client(base_url=base, headers={"X-API-Key": KEY}, timeout=120) as client:
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                statuses[send(client).status_code] += 1
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1  # type: ignore[index]
            times.append(time.perf_counter() - t0)
    out.put({"requests": sum(statuses.values()), "statuses": {str(k): v for k, v in statuses.items()},
             "request_p50_ms": 1e3 * float(np.median(times)) if times else None,
             "request_max_ms": 1e3 * max(times) if times else None})


def probe(base: str, duration: float, started: Callable[[], bool]) -> dict[str, Any]:
    lat: list[float] = []
    failed = 0
    with httpx.Client(base_url=base, timeout=30) as client:
        while not started():
            time.sleep(0.01)
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            t0 = time.perf_counter()
            try:
                ok = client.get("/healthz").status_code == 200
            except httpx.HTTPError:
                ok = False
            lat.append(1e3 * (time.perf_counter() - t0))
            failed += not ok
            time.sleep(0.01)
    arr = np.array(lat)
    return {"probes": len(lat), "failed": failed, "p50_ms": round(float(np.percentile(arr, 50)), 2),
            "p99_ms": round(float(np.percentile(arr, 99)), 2), "max_ms": round(float(arr.max()), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario")
    parser.add_argument("--upload-mb", type=int, default=50, help="size of the upload scenario's CSV")
    parser.add_argument("--only", help="comma list of scenario names to run (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "stall.json")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="recdistill-stall-"))
    info, users = setup_home(argparse.Namespace(bundle=None, inter=None), workdir / "home")
    items = [f"i{j}" for j in range(info["n_items"])]
    port = free_port()
    env = {**os.environ, "RECDISTILL_HOME": str(workdir / "home"), "RECDISTILL_LOG_LEVEL": "WARNING",
           "RECDISTILL_API_KEY": KEY}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--log-level", "warning", "--no-access-log"], cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    names = list(scenarios(users[:1], items[:1], args.upload_mb))
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    results: dict[str, Any] = {}
    try:
        wait_ready(port, server)
        results["idle"] = {"healthz": probe(base, args.duration, lambda: True)}
        ctx = mp.get_context("fork")
        for name in names:
            out = ctx.Queue()
            proc = ctx.Process(target=attack, args=(base, name, users, items, args.upload_mb, args.duration, out))
            proc.start()
            time.sleep(1.0)  # let the attacker build its request and start sending
            health = probe(base, args.duration - 1.0, lambda: True)
            attacker = out.get(timeout=args.duration + 300)
            proc.join(timeout=30)
            results[name] = {"healthz": health, "attacker": attacker,
                             "pass": health["p99_ms"] < BAR_P99_MS and health["failed"] == 0}
            print(f"{name:45s} healthz p50 {health['p50_ms']:7.2f} p99 {health['p99_ms']:7.2f} "
                  f"max {health['max_ms']:8.2f} ms  attacker {attacker['requests']} req {attacker['statuses']}",
                  flush=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)

    result = {
        "command": "python " + " ".join([f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                 text=True).stdout.strip(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "server": "uvicorn api.main:app --workers 1, default limits, API key set",
        "bundle": info,
        "bar": f"healthz p99 < {BAR_P99_MS} ms while one client sends the scenario's request back to back",
        "scenarios": results,
        "all_pass": all(r.get("pass", True) for r in results.values()),
        "load_average_after": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "scenarios"}, indent=2))


if __name__ == "__main__":
    main()
