"""Approximate (HNSW or IVF-flat) vs exact (IndexFlatIP) serving: recall@10 and per-query latency, seen items
filtered, per search breadth (HNSW efSearch, IVF nprobe). The bundle's own build tunes the breadth to
RECDISTILL_INDEX_TARGET_RECALL; this bench shows the whole curve.

Embeddings are random but structured like a trained MF model (taste clusters, popularity in the norms);
``--bundle`` measures a real trained student's ``serving/`` folder instead.

    .venv/bin/python bench/serve_hnsw_recall.py --out bench/results/serve-hnsw-recall.json
    .venv/bin/python bench/serve_hnsw_recall.py --kind ivf --breadth 8 16 32 64 --out bench/results/serve-ivf-recall.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.index import ServingBundle  # noqa: E402


def structured(n_users: int, n_items: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, sp.csr_matrix]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((32, dim))
    items = centers[rng.integers(0, 32, n_items)] + 0.6 * rng.standard_normal((n_items, dim))
    items *= rng.lognormal(0.0, 0.4, (n_items, 1))
    users = centers[rng.integers(0, 32, n_users)] + 0.6 * rng.standard_normal((n_users, dim))
    # ~2.5% of the catalogue seen per user, popular items more often (ML-1M: ~4.5%).
    p = np.linalg.norm(items, axis=1) ** 2
    p /= p.sum()
    per_user = max(5, int(0.025 * n_items))
    rows = np.repeat(np.arange(n_users), per_user)
    cols = rng.choice(n_items, size=n_users * per_user, p=p)
    seen = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))
    seen.data[:] = 1.0
    return users.astype(np.float32), items.astype(np.float32), seen


def timed(bundle: ServingBundle, users: list[str], k: int) -> tuple[list[list[str]], float]:
    start = time.perf_counter()
    out = [bundle.recommend(u, k).items for u in users]
    return out, (time.perf_counter() - start) / len(users) * 1e6


def measure(name: str, parts: tuple[np.ndarray, np.ndarray, sp.csr_matrix], args: argparse.Namespace) -> dict[str, Any]:
    user_emb, item_emb, seen = parts
    n_users, n_items = user_emb.shape[0], item_emb.shape[0]
    uids, iids = [f"u{i}" for i in range(n_users)], [f"i{j}" for j in range(n_items)]
    pop = np.argsort(-np.asarray(seen.sum(axis=0)).ravel(), kind="stable")
    exact = ServingBundle(user_emb, item_emb, uids, iids, seen, pop, "exact", index="flat")
    rng = np.random.default_rng(1)
    queries = [uids[i] for i in rng.choice(n_users, size=min(args.queries, n_users), replace=False)]
    truth, flat_us = timed(exact, queries, args.k)
    start = time.perf_counter()
    approx = ServingBundle(user_emb, item_emb, uids, iids, seen, pop, args.kind, index=args.kind)
    build_s = time.perf_counter() - start  # includes tuning to the default target recall
    name_of = {"hnsw": "ef_search", "ivf": "nprobe"}[args.kind]
    rows = []
    for breadth in args.breadth:
        approx.set_breadth(breadth)
        got, us = timed(approx, queries, args.k)
        recall = float(np.mean([len(set(g) & set(t)) / len(t) for g, t in zip(got, truth, strict=True)]))
        rows.append({name_of: breadth, "recall_at_10": round(recall, 4), "us_per_query": round(us, 1)})
    return {"catalogue": name, "n_users": n_users, "n_items": n_items, "dim": int(item_emb.shape[1]),
            "seen_filtered": True, "queries": len(queries), "flat_us_per_query": round(flat_us, 1),
            "kind": args.kind, "params": approx.index_info.params, "build_and_tune_s": round(build_s, 2),
            args.kind: rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="a trained student's serving/ folder (default: structured random)")
    parser.add_argument("--items", type=int, nargs="+", default=[3706, 100_000], help="catalogue sizes")
    parser.add_argument("--users", type=int, default=6040)
    parser.add_argument("--dim", type=int, default=20)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--kind", choices=["hnsw", "ivf"], default="hnsw")
    parser.add_argument("--breadth", type=int, nargs="+", default=[16, 32, 64, 128, 256],
                        help="efSearch (hnsw) or nprobe (ivf) values")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve-hnsw-recall.json")
    args = parser.parse_args()
    faiss.omp_set_num_threads(1)  # as in the API process
    results = []
    if args.bundle:
        b = ServingBundle.load(args.bundle)
        results.append(measure(f"trained bundle {args.bundle}", (b.user_emb, b.item_emb, b.seen), args))
    else:
        for n_items in args.items:
            parts = structured(args.users, n_items, args.dim, seed=0)
            results.append(measure("structured random (clustered, norm-skewed)", parts, args))
    out = {"command": "python " + " ".join([f"bench/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
           "date": datetime.now(UTC).isoformat(timespec="seconds"), "cpus": os.cpu_count(),
           "load_average_after": os.getloadavg(), "k": args.k, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
