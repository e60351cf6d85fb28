"""Serving at scale (issue 14): a 1M-item bundle served by one and by four API processes.

Writes one bundle the way the worker does (``write_bundle``: index chosen by size, built and tuned on all cores,
recall@10 measured on the model's own users), then for ``python -m api.server --workers N`` (N = 1, 4; with
``--listen shared``, also uvicorn's own ``--workers``, whose processes share one listening socket) on a
fresh home whose bundle files are hard links of that one (same inodes, so the page cache is shared as with one
artifact store): memory per process before and after activation (/proc/<pid>/smaps_rollup: ``Anonymous`` is
memory a process holds privately — its own copies; ``Pss`` its proportional share of everything it maps;
``Rss`` counts shared pages in full in every process), activation time (POST /models/{id}/activate reply, and
until every process answers with the new activation), bounded closed-loop load from loopback with ``wrk``
(a fixed number of connections) on ``/recommend/{user}`` and ``/recommend/batch``, and recall@10 of what the
API served against an exact numpy top-10 with the same seen items removed.

Embeddings are synthetic but structured like a trained MF model (taste clusters, popularity in the norms);
seen items are drawn with Zipf-like popularity.

    .venv/bin/python bench/serve_scale.py --out bench/results/serve-scale-1m.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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

import api_spread as spread  # noqa: E402
import serve_throughput as st  # noqa: E402

from core.db import repo  # noqa: E402
from core.db.migrate import upgrade_head  # noqa: E402
from core.db.session import session_scope  # noqa: E402
from core.index import IndexSpec, write_bundle  # noqa: E402


def synthetic(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((64, args.dim))
    items = centers[rng.integers(0, 64, args.items)] + 0.7 * rng.standard_normal((args.items, args.dim))
    items *= rng.lognormal(0.0, 0.3, (args.items, 1))
    users = centers[rng.integers(0, 64, args.users)] + 0.7 * rng.standard_normal((args.users, args.dim))
    p = 1.0 / np.arange(1, args.items + 1) ** 0.8
    p = p[rng.permutation(args.items)]
    p /= p.sum()
    rows = np.repeat(np.arange(args.users), args.seen)
    cols = rng.choice(args.items, size=len(rows), p=p)
    seen = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(args.users, args.items))
    seen.sum_duplicates()
    seen.data[:] = 1.0
    counts = np.asarray(seen.sum(axis=0)).ravel()
    return {"user_emb": users.astype(np.float32), "item_emb": items.astype(np.float32),
            "user_ids": [f"u{i}" for i in range(args.users)], "item_ids": [f"i{j}" for j in range(args.items)],
            "seen": seen, "popularity": np.argsort(-counts, kind="stable").astype(np.int64)}


def make_home(home: Path, bundle: Path) -> dict[str, Path]:
    """A migrated SQLite home with two student rows (model id -> its serving folder) whose bundle files are hard
    links of ``bundle``: the same inodes (one page cache) under two paths, so that swapping between them shows
    in each process's /proc/<pid>/maps."""
    env = {"RECDISTILL_HOME": str(home), "RECDISTILL_INDEX": "flat"}  # flat: only a version 1 bundle would use it
    os.environ.update(env)
    from core.settings import clear_settings_cache, get_settings

    clear_settings_cache()
    settings = get_settings()
    settings.ensure_dirs()
    upgrade_head(settings.database_url)
    meta = json.loads((bundle / "meta.json").read_text())
    folders = {}
    with session_scope(settings.database_url) as s:
        ds = repo.create_dataset(s, name="scale", original_filename="scale.inter", path="datasets/scale/data.inter",
                                 format="inter", user_col="user_id", item_col="item_id", rating_col=None,
                                 timestamp_col=None, rating_threshold=None, n_users=meta["n_users"],
                                 n_items=meta["n_items"], n_interactions=0, density=0.0, size_bytes=0)
        job = repo.create_job(s, dataset_id=ds.id, status="succeeded", method="dcd",
                              teacher={"model": "bpr", "dim": 200}, student={"model": "bpr", "dim": meta["dim"]})
        for _ in range(2):
            model = repo.create_model(s, job_id=job.id, dataset_id=ds.id, role="student", model_name="bpr",
                                      dim=meta["dim"], method="dcd", artifact_path="", n_params=0, size_bytes=0,
                                      metrics={})
            model.artifact_path = f"models/{model.id}"
            folders[model.id] = settings.artifact_dir / "models" / model.id / "serving"
    for model_id, dest in folders.items():
        dest.mkdir(parents=True)
        for f in bundle.iterdir():
            if f.name != "meta.json":
                os.link(f, dest / f.name)
        (dest / "meta.json").write_text(json.dumps({**meta, "model_id": model_id}))
    return folders


def memory(pid: int) -> dict[str, int]:
    """MiB from /proc/<pid>/smaps_rollup."""
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value, *_ = line.split()
        if key.rstrip(":") in ("Rss", "Pss", "Anonymous", "Private_Clean", "Private_Dirty", "Shared_Clean"):
            out[key.rstrip(":")] = round(int(value) / 1024, 1)
    return out


def maps_index(pid: int, folder: Path) -> bool:
    return str(folder.resolve() / "index.faiss") in Path(f"/proc/{pid}/maps").read_text()


def activate(port: int, model_id: str, folders: dict[str, Path], pids: list[int], key: str) -> dict[str, Any]:
    """POST /activate (that process loads the bundle before replying), then watch every API process's
    /proc/<pid>/maps until each maps the new bundle's index and no longer the other's (the pollers swap within
    ~1 s): the time until the last one has swapped."""
    import httpx

    start = time.perf_counter()
    res = httpx.post(f"http://127.0.0.1:{port}/models/{model_id}/activate", headers={"X-API-Key": key}, timeout=120)
    res.raise_for_status()
    reply_s = time.perf_counter() - start
    new = folders[model_id]
    old = next(f for m, f in folders.items() if m != model_id)
    waiting = set(pids)
    while waiting and time.perf_counter() - start < 60:
        waiting = {p for p in waiting if not maps_index(p, new) or maps_index(p, old)}
        time.sleep(0.01)
    return {"activate_reply_s": round(reply_s, 3),
            "all_processes_swapped_s": None if waiting else round(time.perf_counter() - start, 3)}


def wrk(url: str, script: str, connections: int, duration: int, workdir: Path, pids: list[int]) -> dict[str, Any]:
    """One wrk run; ``cpu_s_per_process``: CPU seconds each API process spent meanwhile (how the kernel spread
    the connections over the processes)."""
    ns = argparse.Namespace(threads=1, connections=connections, duration=duration)
    cpu0 = [st.cpu_seconds(p).sum() for p in pids]
    out = st.run_wrk(url, ns, script, workdir, pids[0])
    cpu = [round(float(st.cpu_seconds(p).sum() - c), 2) for p, c in zip(pids, cpu0, strict=True)]
    out.pop("server_cpu_us_per_request"), out.pop("server_user_sys_us_per_request")  # one process only
    return {**out, "connections": connections, "duration_s": duration, "cpu_s_per_process": cpu}


def swaps_under_load(base: str, script: str, port: int, folders: dict[str, Path], pids: list[int], key: str,
                     args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """wrk on /recommend while the two models are activated in turn every 2 s (each a hot swap in every
    process): any failed request shows as non_2xx or socket errors."""
    import threading

    stop = threading.Event()
    swaps: list[dict[str, Any]] = []
    order = list(folders)

    def swapper() -> None:
        while not stop.wait(2.0):
            swaps.append(activate(port, order[len(swaps) % 2], folders, pids, key))

    thread = threading.Thread(target=swapper)
    thread.start()
    try:
        out = wrk(base, script, max(args.connections), args.duration, workdir, pids)
    finally:
        stop.set()
        thread.join()
    swapped = [s["all_processes_swapped_s"] for s in swaps]
    return {**out, "swaps": len(swaps), "swap_all_processes_s": swapped}


def served_recall(port: int, arrays: dict[str, Any], n: int) -> float:
    """recall@10 of GET /recommend against exact top-10 (numpy, seen items removed) for ``n`` random users."""
    import httpx

    rng = np.random.default_rng(7)
    users = rng.choice(len(arrays["user_ids"]), size=n, replace=False)
    seen, items = arrays["seen"], arrays["item_emb"]
    hits = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        for u in users.tolist():
            got = [x["item"] for x in client.get(f"/recommend/u{u}", params={"k": 10}).json()["items"]]
            scores = items @ arrays["user_emb"][u]
            scores[seen.indices[seen.indptr[u] : seen.indptr[u + 1]]] = -np.inf
            top = np.argpartition(-scores, 10)[:10]
            hits.append(len(set(got) & {f"i{j}" for j in top}) / 10)
    return round(float(np.mean(hits)), 4)


def run_servers(args: argparse.Namespace, bundle: Path, arrays: dict[str, Any], n_workers: int, listen: str,
                workdir: Path) -> dict[str, Any]:
    home = workdir / f"home-{n_workers}-{listen}"
    folders = make_home(home, bundle)
    first, second = list(folders)
    port = st.free_port()
    key = "bench-key-0123456789"
    env = {**os.environ, "RECDISTILL_HOME": str(home), "RECDISTILL_LOG_LEVEL": "WARNING", "RECDISTILL_API_KEY": key,
           "RECDISTILL_OPEN_SERVING": "true"}
    # What the API container runs (a listening socket per process), or uvicorn's shared socket to compare.
    server = subprocess.Popen(
        [sys.executable, *spread.COMMANDS[listen], "--host", "127.0.0.1", "--port", str(port), "--workers",
         str(n_workers), "--log-level", "warning"], cwd=ROOT, env=env)
    try:
        pids = spread.ready(port, server, n_workers)
        time.sleep(2)
        before = [memory(p) for p in pids]
        activation = activate(port, first, folders, pids, key)
        again = activate(port, second, folders, pids, key)  # a hot swap to the other model
        sample = ",".join(json.dumps(f"u{u}") for u in range(0, len(arrays["user_ids"]), len(arrays["user_ids"]) // 2000))
        rec = st.LUA_USERS % (sample, 10)
        batch = st.LUA_BATCH % (sample, args.batch_size, 10)
        base = f"http://127.0.0.1:{port}"
        wrk(base, rec, 2, 3, workdir, pids)  # warm-up: first touches of the mapped pages
        runs = {f"recommend_c{c}": wrk(base, rec, c, args.duration, workdir, pids) for c in args.connections}
        runs["recommend_during_swaps"] = swaps_under_load(base, rec, port, folders, pids, key, args, workdir)
        runs[f"batch{args.batch_size}_c{args.batch_connections}"] = wrk(
            base, batch, args.batch_connections, args.duration, workdir, pids)
        for name, r in runs.items():
            if name.startswith("batch"):
                r["users_per_s"] = round(r["requests_per_s"] * args.batch_size, 1)
        after = [memory(p) for p in pids]
        recall = served_recall(port, arrays, args.recall_users) if n_workers == 1 else None
    finally:
        server.terminate()
        server.wait(timeout=60)
    return {
        "api_processes": n_workers,
        "listen": listen if n_workers > 1 else "one process",
        "activation": activation,
        "hot_swap_again": again,
        "load": runs,
        "memory_mib_before_activation": before,
        "memory_mib_after_load": after,
        "anonymous_growth_mib": [round(a["Anonymous"] - b["Anonymous"], 1) for a, b in zip(after, before, strict=True)],
        "served_recall_at_10": recall,
        "load_average_after": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--seen", type=int, default=50, help="seen items drawn per user (10M interactions)")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--listen", choices=["per-process", "shared"], nargs="+", default=["per-process"],
                        help="with several processes: python -m api.server (a socket per process), and/or "
                             "uvicorn --workers (one shared socket)")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--batch-connections", type=int, default=4)
    parser.add_argument("--duration", type=int, default=15)
    parser.add_argument("--recall-users", type=int, default=300)
    parser.add_argument("--index", choices=["auto", "flat", "ivf", "hnsw"], default="auto",
                        help="RECDISTILL_INDEX for the bundle (auto: by size, IVF-flat at 1M items)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve-scale-1m.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is required (apt-get install wrk)")
    workdir = Path(tempfile.mkdtemp(prefix="recdistill-scale-"))
    try:
        start = time.perf_counter()
        arrays = synthetic(args)
        gen_s = time.perf_counter() - start
        start = time.perf_counter()
        bundle = write_bundle(workdir / "bundle", model_id="0" * 32, index=IndexSpec(choice=args.index), **arrays)
        write_s = time.perf_counter() - start
        meta = json.loads((bundle / "meta.json").read_text())
        sizes = {f.name: f.stat().st_size for f in sorted(bundle.iterdir())}
        load = subprocess.run(  # a cold process: imports excluded, load + first answer included
            [sys.executable, "-c", "import sys, time; sys.path.insert(0, '.'); from core.index import ServingBundle;"
             f"t = time.perf_counter(); b = ServingBundle.load({str(bundle)!r}); b.recommend('u1', 10);"
             "print(time.perf_counter() - t)"], cwd=ROOT, capture_output=True, text=True, check=True)
        runs = [run_servers(args, bundle, arrays, n, listen, workdir)
                for n in args.workers for listen in (args.listen if n > 1 else args.listen[:1])]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    index_mib = sizes["index.faiss"] / 2**20
    result = {
        "command": "python " + " ".join([f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "processor": st._cpu_model(), "load_average_at_end": os.getloadavg()},
        "data": {"items": args.items, "users": args.users, "dim": args.dim,
                 "interactions": int(arrays["seen"].nnz), "generate_s": round(gen_s, 1),
                 "embeddings": "synthetic, clustered (64 tastes) with norm skew; seen items Zipf(0.8)"},
        "bundle": {"write_bundle_s": round(write_s, 1), "index": meta["index"], "file_bytes": sizes,
                   "index_mib": round(index_mib, 1), "load_in_fresh_process_s": round(float(load.stdout), 3)},
        "runs": runs,
        "memory_note": "Anonymous = private memory of a process (its own copies); the bundle's arrays, id maps "
                       "and index are file-backed mappings shared through the page cache (Pss splits them).",
    }
    one = runs[0]
    worst_p99 = max(r["p99_ms"] for run in runs for n, r in run["load"].items() if n.startswith("recommend_c"))
    extra = [g for r in runs if r["api_processes"] > 1 for g in r["anonymous_growth_mib"]]
    result["bars"] = {
        "recommend_p99_ms_le_15": {"value": worst_p99, "met": worst_p99 <= 15,
                                   "of": "the worst /recommend p99 over every process count and connection count "
                                         "(not counting the run with swaps every 2 s)"},
        "no_failed_request_during_swaps": {
            "value": sum(r["load"]["recommend_during_swaps"]["non_2xx"] for r in runs),
            "met": all(r["load"]["recommend_during_swaps"]["non_2xx"] == 0
                       and not r["load"]["recommend_during_swaps"]["socket_errors"] for r in runs)},
        "recall_at_10_ge_0.95": {"value": one["served_recall_at_10"], "met": (one["served_recall_at_10"] or 0) >= 0.95},
        "activation_s_le_10": {"value": max(r["activation"]["all_processes_swapped_s"] or 1e9 for r in runs),
                               "met": all((r["activation"]["all_processes_swapped_s"] or 1e9) <= 10 for r in runs)},
        "anonymous_growth_per_extra_process_le_10pct_of_index": {
            "value_mib": max(extra) if extra else None, "limit_mib": round(0.1 * index_mib, 1),
            "met": bool(extra) and max(extra) <= 0.1 * index_mib},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
