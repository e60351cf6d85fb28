"""Serving throughput: /recommend/{user} vs a trivial route (/healthz) on one uvicorn worker, same run.

Builds an ML-1M-sized active student bundle (6,040 users x 3,706 items, dim 20; random embeddings unless
``--bundle`` names a real ``serving/`` folder; seen items from ``--inter`` if given, else synthetic),
starts ``uvicorn api.main:app`` (1 worker) on 127.0.0.1 and drives it with ``wrk`` from a separate process.

    .venv/bin/python bench/serve_throughput.py --inter <ml-1m.inter> --out bench/results/serve-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from faults_kit import free_port  # noqa: E402  (re-exported: stall.py and serve_scale.py take it from here)

from core.db import repo  # noqa: E402
from core.db.migrate import upgrade_head  # noqa: E402
from core.db.session import session_scope  # noqa: E402
from core.index import ServingBundle, write_bundle  # noqa: E402

N_USERS, N_ITEMS, DIM = 6040, 3706, 20


def synthetic_seen(rng: np.random.Generator) -> sp.csr_matrix:
    """About 1M interactions with ML-1M-like skew: lognormal user degrees, Zipf-ish item popularity."""
    degrees = np.clip(rng.lognormal(4.6, 0.9, N_USERS).astype(int), 20, 2000)
    item_p = 1.0 / np.arange(1, N_ITEMS + 1) ** 0.8
    item_p /= item_p.sum()
    rows, cols = [], []
    for u, d in enumerate(degrees):
        items = np.unique(rng.choice(N_ITEMS, size=d, p=item_p))
        rows.append(np.full(len(items), u))
        cols.append(items)
    r, c = np.concatenate(rows), np.concatenate(cols)
    return sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(N_USERS, N_ITEMS))


def build_bundle(args: argparse.Namespace, dest: Path, model_id: str) -> dict[str, Any]:
    if args.bundle:
        src = ServingBundle.load(args.bundle)
        write_bundle(dest, src.user_emb, src.item_emb, src.user_ids.tolist(), src.item_ids.tolist(), src.seen,
                     src.popularity, model_id)
        return {"source": f"trained bundle {args.bundle}", "n_users": src.n_users, "n_items": src.n_items,
                "dim": src.dim, "seen_interactions": int(src.seen.nnz)}
    rng = np.random.default_rng(0)
    if args.inter:
        from core.data import load_interactions

        inter = load_interactions(args.inter)
        n_users, n_items = inter.n_users, inter.n_items
        seen = sp.csr_matrix((np.ones(len(inter), np.float32), (inter.users, inter.items)), shape=(n_users, n_items))
        user_ids, item_ids = inter.user_ids.tolist(), inter.item_ids.tolist()
        seen_src = f"real interactions of {Path(args.inter).name}"
    else:
        n_users, n_items = N_USERS, N_ITEMS
        seen = synthetic_seen(rng)
        user_ids, item_ids = [f"u{i}" for i in range(n_users)], [f"i{j}" for j in range(n_items)]
        seen_src = "synthetic skewed interactions"
    user_emb = rng.standard_normal((n_users, DIM)).astype(np.float32) * 0.3
    item_emb = rng.standard_normal((n_items, DIM)).astype(np.float32) * 0.3
    pop = np.argsort(-np.asarray(seen.sum(axis=0)).ravel(), kind="stable")
    write_bundle(dest, user_emb, item_emb, user_ids, item_ids, seen, pop, model_id)
    return {"source": f"random embeddings (dim {DIM}), seen items from {seen_src}", "n_users": n_users,
            "n_items": n_items, "dim": DIM, "seen_interactions": int(seen.nnz)}


def setup_home(args: argparse.Namespace, home: Path) -> tuple[dict[str, Any], list[str]]:
    """Migrated SQLite database with dataset/job/model rows and an activation of the bench student."""
    env = {"RECDISTILL_HOME": str(home)}
    os.environ.update(env)
    from core.settings import clear_settings_cache, get_settings

    clear_settings_cache()
    settings = get_settings()
    settings.ensure_dirs()
    upgrade_head(settings.database_url)
    with session_scope(settings.database_url) as s:
        ds = repo.create_dataset(s, name="bench", original_filename="bench.inter", path="datasets/bench/data.inter",
                                 format="inter", user_col="user_id", item_col="item_id", rating_col=None,
                                 timestamp_col=None, rating_threshold=None, n_users=N_USERS, n_items=N_ITEMS,
                                 n_interactions=0, density=0.0, size_bytes=0)
        job = repo.create_job(s, dataset_id=ds.id, status="succeeded", method="dcd",
                              teacher={"model": "bpr", "dim": 200}, student={"model": "bpr", "dim": DIM})
        model = repo.create_model(s, job_id=job.id, dataset_id=ds.id, role="student", model_name="bpr", dim=DIM,
                                  method="dcd", artifact_path="", n_params=0, size_bytes=0, metrics={})
        model.artifact_path = f"models/{model.id}"
        model_id = model.id
    info = build_bundle(args, settings.artifact_dir / "models" / model_id / "serving", model_id)
    with session_scope(settings.database_url) as s:
        repo.activate_model(s, model_id)
    users = ServingBundle.load(settings.artifact_dir / "models" / model_id / "serving").user_ids.tolist()
    return info, users


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("server not ready")


LUA_USERS = """
users = {%s}
k = "%s"
request = function()
  return wrk.format("GET", "/recommend/" .. users[math.random(#users)] .. "?k=" .. k)
end
"""

LUA_BATCH = """
users = {%s}
n = %d
request = function()
  local picked = {}
  for i = 1, n do picked[i] = '"' .. users[math.random(#users)] .. '"' end
  local body = '{"k": %s, "users": [' .. table.concat(picked, ",") .. ']}'
  return wrk.format("POST", "/recommend/batch", {["Content-Type"] = "application/json"}, body)
end
"""


def cpu_seconds(pid: int) -> np.ndarray:
    """[user, system] CPU seconds of the server process (its cost, whatever else the machine is doing)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return np.array([int(fields[11]), int(fields[12])]) / os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, args: argparse.Namespace, script: str | None, workdir: Path, pid: int) -> dict[str, Any]:
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", "--timeout", "10s", "--latency", url]
    if script is not None:
        path = workdir / f"script-{time.monotonic_ns()}.lua"
        path.write_text(script)
        cmd[1:1] = ["-s", str(path)]
    cpu0 = cpu_seconds(pid)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(pid) - cpu0
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)

    def pct(p: str) -> float:
        value, unit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]

    return {"requests_per_s": rps, "requests": total, "non_2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": errors.group(1) if errors else None, "p50_ms": pct("50"), "p99_ms": pct("99"),
            "server_cpu_us_per_request": 1e6 * float(cpu.sum()) / max(total, 1),
            "server_user_sys_us_per_request": [round(1e6 * float(c) / max(total, 1), 1) for c in cpu]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="a trained student's serving/ folder (default: random embeddings)")
    parser.add_argument("--inter", help="interaction file whose users/items/seen items the random bundle uses")
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=2, help="alternating healthz/recommend rounds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve-cpu.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is required (apt-get install wrk)")

    workdir = Path(tempfile.mkdtemp(prefix="recdistill-bench-"))
    info, users = setup_home(args, workdir / "home")
    port = free_port()
    env = {**os.environ, "RECDISTILL_HOME": str(workdir / "home"), "RECDISTILL_LOG_LEVEL": "WARNING"}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "api.main:app", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--log-level", "warning", "--no-access-log"], cwd=ROOT, env=env)
    try:
        wait_ready(port, server)
        base = f"http://127.0.0.1:{port}"
        sample = [u for u in users[:: max(1, len(users) // 2000)]]
        lua_users = ",".join(json.dumps(u) for u in sample)
        rec_script = LUA_USERS % (lua_users, args.k)
        batch_script = LUA_BATCH % (lua_users, args.batch_size, args.k)
        for url, script in ((f"{base}/healthz", None), (base, rec_script)):  # warm-up
            run_wrk(url, argparse.Namespace(**{**vars(args), "duration": 2}), script, workdir, server.pid)
        rounds = []
        for _ in range(args.rounds):
            health = run_wrk(f"{base}/healthz", args, None, workdir, server.pid)
            rec = run_wrk(base, args, rec_script, workdir, server.pid)
            rounds.append({"healthz": health, "recommend": rec,
                           "ratio": rec["requests_per_s"] / health["requests_per_s"],
                           "cpu_ratio": health["server_cpu_us_per_request"] / rec["server_cpu_us_per_request"]})
        batch = run_wrk(base, args, batch_script, workdir, server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(workdir, ignore_errors=True)

    single_users_s = float(np.mean([r["recommend"]["requests_per_s"] for r in rounds]))
    batch["users_per_s"] = batch["requests_per_s"] * args.batch_size
    result = {
        "command": "python " + " ".join([f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "processor": _cpu_model()},
        "server": "uvicorn api.main:app --workers 1 (uvloop/httptools if installed), index flat",
        "load": f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s, random known users, k={args.k}, "
                "exclude_seen=true",
        "bundle": info,
        "rounds": rounds,
        "recommend_vs_healthz_ratio": float(np.mean([r["ratio"] for r in rounds])),
        # Server CPU per healthz request / per recommend request: the throughput ratio a CPU-bound server
        # reaches when nothing else competes for its core (robust to load from other processes).
        "recommend_vs_healthz_cpu_ratio": float(np.mean([r["cpu_ratio"] for r in rounds])),
        "load_average_after": os.getloadavg(),
        "target_ratio": 0.70,
        "batch": {**batch, "batch_size": args.batch_size},
        "batch_users_per_s_vs_single": batch["users_per_s"] / single_users_s,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
