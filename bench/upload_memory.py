"""API memory while uploading a 200 MB CSV and gzip bombs to a real server (issue 10, item 3).

Starts ``uvicorn api.main:app`` (embedded mode, a temp RECDISTILL_HOME), warms it with one small upload,
then streams each file as a multipart body and samples the server's VmRSS every 20 ms (and the VmHWM of the
``core.ingest`` children it starts). Bar: API RSS growth <= 100 MB per upload.

    PYTHONPATH=$PWD .venv/bin/python bench/upload_memory.py --out bench/results/upload-memory.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.db.migrate import upgrade_head  # noqa: E402
from core.settings import Settings  # noqa: E402

BOUNDARY = "benchBOUNDARY7e5c73f"
MB = 1024 * 1024


def proc_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [int(c) for c in task.read_text().split()]
        except OSError:
            continue
    return out


class Sampler(threading.Thread):
    """Polls the server's VmRSS and its children's VmHWM until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak_kb, self.child_peak_kb = pid, 0, 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak_kb = max(self.peak_kb, proc_kb(self.pid, "VmRSS"))
            for c in children(self.pid):
                self.child_peak_kb = max(self.child_peak_kb, proc_kb(c, "VmHWM"))
            time.sleep(0.02)


def write_csv(path: Path, target_bytes: int) -> int:
    """user_id,item_id,rating,timestamp rows with skewed ids, written in 1M-row chunks; returns rows."""
    rng = np.random.default_rng(0)
    rows = 0
    with path.open("w") as fh:
        fh.write("user_id,item_id,rating,timestamp\n")
        while fh.tell() < target_bytes:
            n = 1_000_000
            users = rng.integers(0, 200_000, n)
            items = (rng.pareto(1.2, n) * 50).astype(np.int64) % 50_000
            ratings = rng.integers(1, 6, n)
            stamps = rng.integers(9e8, 1.7e9, n)
            fh.write("".join(f"u{u},i{i},{r},{t}\n" for u, i, r, t in zip(users, items, ratings, stamps, strict=True)))
            rows += n
    return rows


def write_bomb(path: Path, unpacked_bytes: int) -> None:
    """A .csv.gz of one repeated 1,000-row block (100 users x 10 items): gzip packs it ~1000:1."""
    block = "".join(f"u{u},i{i}\n" for u in range(100) for i in range(10)).encode()
    with gzip.open(path, "wb", compresslevel=9) as fh:
        fh.write(b"user_id,item_id\n")
        for _ in range(unpacked_bytes // len(block) + 1):
            fh.write(block)


def body(path: Path, filename: str) -> Iterator[bytes]:
    yield (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
           "Content-Type: application/octet-stream\r\n\r\n").encode()
    with path.open("rb") as fh:
        while chunk := fh.read(MB):
            yield chunk
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def upload(client: httpx.Client, pid: int, path: Path, filename: str) -> dict[str, Any]:
    time.sleep(1.0)  # let the previous request's garbage settle
    before = proc_kb(pid, "VmRSS")
    sampler = Sampler(pid)
    sampler.start()
    t0 = time.perf_counter()
    res = client.post("/datasets", content=body(path, filename),
                      headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"})
    wall = time.perf_counter() - t0
    time.sleep(0.5)
    sampler.stop.set()
    sampler.join()
    after = proc_kb(pid, "VmRSS")
    out = res.json()
    peak = max(sampler.peak_kb, before, after)
    return {
        "file": filename, "file_mb": round(path.stat().st_size / MB, 2), "status": res.status_code,
        "answer": {k: out.get(k) for k in ("n_users", "n_items", "n_interactions", "code", "detail") if k in out},
        "wall_s": round(wall, 2),
        "api_rss_mb": {"before": round(before / 1024, 1), "peak": round(peak / 1024, 1),
                       "after": round(after / 1024, 1), "growth_peak": round((peak - before) / 1024, 1),
                       "growth_after": round((after - before) / 1024, 1)},
        "ingest_child_peak_rss_mb": round(sampler.child_peak_kb / 1024, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv-mb", type=int, default=200)
    ap.add_argument("--bomb-mb", type=int, default=120, help="unpacked size of the bomb that is parsed")
    ap.add_argument("--big-bomb-mb", type=int, default=1200, help="unpacked size of the bomb past the default limit")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/upload-memory.json")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="upload-bench-"))
    try:
        files = tmp / "files"
        files.mkdir()
        t0 = time.perf_counter()
        rows = write_csv(files / "big.csv", args.csv_mb * MB)
        write_bomb(files / "bomb.csv.gz", args.bomb_mb * MB)
        write_bomb(files / "bigbomb.csv.gz", args.big_bomb_mb * MB)
        (files / "warm.csv").write_text("user_id,item_id\nu1,i1\nu1,i2\nu2,i1\n")
        print(f"files written in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

        env = {**os.environ, "RECDISTILL_HOME": str(tmp / "home"), "RECDISTILL_MAX_UPLOAD_MB": str(args.csv_mb + 50),
               "RECDISTILL_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}
        for k in [k for k in env if k.startswith("RECDISTILL_") and k not in (
                "RECDISTILL_HOME", "RECDISTILL_MAX_UPLOAD_MB", "RECDISTILL_LOG_LEVEL")]:
            del env[k]
        settings = Settings(RECDISTILL_HOME=tmp / "home")
        settings.ensure_dirs()
        upgrade_head(settings.database_url)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning"]
        server = subprocess.Popen(cmd, env=env, cwd=ROOT)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(300):
                try:
                    if httpx.get(base + "/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            results = []
            with httpx.Client(base_url=base, timeout=900) as client:
                warm = upload(client, server.pid, files / "warm.csv", "warm.csv")
                assert warm["status"] == 201, warm
                for name, label in (("big.csv", "big.csv"), ("bomb.csv.gz", "bomb.csv.gz"),
                                    ("bigbomb.csv.gz", "bigbomb.csv.gz")):
                    r = upload(client, server.pid, files / name, label)
                    print(json.dumps(r), file=sys.stderr)
                    results.append(r)
            hwm = proc_kb(server.pid, "VmHWM")
        finally:
            server.terminate()
            server.wait(30)
        sizes = {"big.csv": f"CSV of at least {args.csv_mb} MiB, {rows:,} rows (user_id,item_id,rating,timestamp)",
                 "bomb.csv.gz": f"gzip bomb unpacking to {args.bomb_mb} MiB (under the default limit: parsed)",
                 "bigbomb.csv.gz": f"gzip bomb unpacking to {args.big_bomb_mb} MiB (past the default limit: 413)"}
        for r in results:
            r["what"] = sizes[r["file"]]
        report = {
            "benchmark": "bench/upload_memory.py",
            "command": "PYTHONPATH=$PWD .venv/bin/python bench/upload_memory.py --out bench/results/upload-memory.json",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "server": " ".join(["uvicorn api.main:app", "(embedded mode, temp RECDISTILL_HOME, "
                                f"RECDISTILL_MAX_UPLOAD_MB={args.csv_mb + 50}, other limits at their defaults)"]),
            "bar": "API RSS growth (peak - before) <= 100 MB for each upload",
            "uploads": results,
            "api_vmhwm_mb_lifetime": round(hwm / 1024, 1),
            "passed": all(r["api_rss_mb"]["growth_peak"] <= 100 for r in results)
            and [r["status"] for r in results] == [201, 201, 413],
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
