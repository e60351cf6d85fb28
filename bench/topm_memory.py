"""Peak-memory benchmark of the teacher top-M lists plus one DCD rank refresh (fresh subprocess per size).

Usage: .venv/bin/python bench/topm_memory.py [--m 500] [--out FILE]
Sizes: ML-1M (6,040 x 3,706) and a synthetic catalogue 10x larger (60,400 x 37,060), random embeddings
(teacher dim 200, student dim 20) and a random training matrix with ML-1M's mean of ~132 items per user.
Peak RSS (ru_maxrss) is reported beside the predicted sizes of the lists and of a dense users x items matrix.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

logger = logging.getLogger("bench.topm_memory")

SIZES = {"ml-1m": (6040, 3706), "synthetic-10x": (60400, 37060)}
PER_USER = 132  # ML-1M: 799,663 training pairs / 6,040 users (80% split)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(name: str, m: int, chunk: int) -> dict[str, Any]:
    """Runs inside the fresh subprocess: build, measure, return a dict."""
    import numpy as np
    import scipy.sparse as sp
    import torch

    from core.distill import build_distiller
    from core.models.bpr import BPRMF

    n_users, n_items = SIZES[name]
    rng = np.random.default_rng(0)
    rows = np.repeat(np.arange(n_users), PER_USER)
    cols = rng.integers(0, n_items, len(rows))
    train = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_users, n_items))
    train.sum_duplicates()
    train.data[:] = 1.0
    torch.manual_seed(0)
    teacher = BPRMF(n_users, n_items, 200, init_std=0.1).requires_grad_(False)
    student = BPRMF(n_users, n_items, 20, init_std=0.1)
    base = rss_mb()
    t0 = time.perf_counter()
    # bank 0: the lists and the refresh alone (the committed file was measured so); DCD's default bank of S = 8
    # samples adds an int16 [S, 2(users+items), p] table, 2*S*p*2 = 1,280 bytes per user or item at p = 40.
    distiller = build_distiller("dcd", m=m, chunk=chunk, use_rkd=False, bank=0)
    distiller.prepare(teacher, SimpleData(train), "cpu")
    after_topm, topm_s = rss_mb(), time.perf_counter() - t0
    t1 = time.perf_counter()
    distiller.on_epoch_start(student, 0)  # the rank refresh of both sides + samplers
    after_refresh, refresh_s = rss_mb(), time.perf_counter() - t1
    lists_mb = (n_users + n_items) * m * 8 / 2**20
    return {
        "n_users": n_users,
        "n_items": n_items,
        "m": m,
        "chunk": chunk,
        "train_nnz": int(train.nnz),
        "rss_before_mb": round(base, 1),
        "peak_rss_after_topm_mb": round(after_topm, 1),
        "peak_rss_after_refresh_mb": round(after_refresh, 1),
        "peak_increase_mb": round(after_refresh - base, 1),
        "topm_seconds": round(topm_s, 2),
        "refresh_seconds": round(refresh_s, 2),
        "predicted_lists_mb_(users+items)xMx8B": round(lists_mb, 1),
        "predicted_dense_scores_mb_usersxitemsx4B": round(n_users * n_items * 4 / 2**20, 1),
    }


class SimpleData:
    def __init__(self, train: Any) -> None:
        self.train = train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--m", type=int, default=500)
    parser.add_argument("--chunk", type=int, default=512)
    parser.add_argument("--child", choices=sorted(SIZES), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "topm-memory.json"))
    args = parser.parse_args(argv)
    if args.child:
        sys.stdout.write(json.dumps(child(args.child, args.m, args.chunk)) + "\n")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    results = {}
    for name in SIZES:
        cmd = [sys.executable, __file__, "--child", name, "--m", str(args.m), "--chunk", str(args.chunk)]
        proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        logger.info("%s: %s", name, results[name])
    a, b = results["ml-1m"], results["synthetic-10x"]
    report = {
        "command": "python bench/topm_memory.py " + " ".join(argv or sys.argv[1:]),
        "what": "teacher top-M lists (both sides) + one DCD refresh (both sides, samplers), RKD off",
        "results": results,
        "growth_10x": {
            "peak_increase": round(b["peak_increase_mb"] / max(a["peak_increase_mb"], 1e-9), 2),
            "(users+items)xM": 10.0,
            "usersxitems": 100.0,
        },
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    logger.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
