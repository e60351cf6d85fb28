"""Teacher epoch cost on CPU: LightGCN against BPR-MF dim 200 (issue 13 asks for at most 4x).

Times ``--batches`` mini-batches of each configuration with the project's own fit pieces (one torch thread,
Adam, one sampled negative), alternating the configurations ``--rounds`` times so that a noisy shared machine
weighs on all alike, and scales each to a whole epoch (the training pairs divided by its batch size). A
LightGCN batch propagates over the whole graph, so its epoch cost falls with fewer, larger batches.

  python bench/teacher_epoch.py --dataset ml-1m --out bench/results/teacher-epoch-ml-1m.json
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from core.config import TrainConfig  # noqa: E402
from core.data import NegativeSampler, load_interactions, split  # noqa: E402
from core.datasets import resolve  # noqa: E402
from core.models import build_model  # noqa: E402
from core.train import make_optimizer  # noqa: E402

CONFIGS = [("bpr", 200, 1024), ("lightgcn", 64, 1024), ("lightgcn", 64, 8192), ("lightgcn", 64, 32768)]


def time_batches(name: str, dim: int, batch: int, data, n_batches: int) -> float:  # type: ignore[no-untyped-def]
    """Seconds per batch over ``n_batches`` training steps (after one untimed warm-up step)."""
    model = build_model(name, data.n_users, data.n_items, dim, train=data.train, seed=0)
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], TrainConfig(lr=1e-3))
    users, items = data.train_pairs()
    negs = NegativeSampler(data.train).reseed(0).sample(users)
    perm = np.random.default_rng(0).permutation(len(users))
    u, p, n = (torch.from_numpy(a[perm]) for a in (users, items, negs))
    model.train()
    times = []
    for b in range(n_batches + 1):
        lo = (b * batch) % max(1, len(users) - batch)
        start = time.perf_counter()
        model.begin_step()
        opt.zero_grad(set_to_none=True)
        loss = model.loss(u[lo:lo + batch], p[lo:lo + batch], n[lo:lo + batch])
        loss.backward()
        opt.step()
        if b:
            times.append(time.perf_counter() - start)
    return statistics.fmean(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ml-1m")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = split(load_interactions(resolve(args.dataset)), seed=0)
    n_pairs = int(data.train.nnz)
    per_batch: dict[str, list[float]] = {}
    for r in range(args.rounds):
        for name, dim, batch in CONFIGS:
            key = f"{name}:{dim} batch {batch}"
            per_batch.setdefault(key, []).append(time_batches(name, dim, batch, data, args.batches))
            print(f"round {r + 1}: {key}: {per_batch[key][-1] * 1e3:.1f} ms/batch", flush=True)
    rows = {}
    for (name, dim, batch), (key, vals) in zip(CONFIGS, per_batch.items(), strict=True):
        epoch = statistics.median(vals) * math.ceil(n_pairs / batch)
        rows[key] = {"model": name, "dim": dim, "batch_size": batch, "ms_per_batch": [v * 1e3 for v in vals],
                     "seconds_per_epoch": epoch}
    base = rows["bpr:200 batch 1024"]["seconds_per_epoch"]
    for row in rows.values():
        row["vs_bpr200_epoch"] = row["seconds_per_epoch"] / base
        print(f"{row['model']}:{row['dim']} batch {row['batch_size']}: {row['seconds_per_epoch']:.1f} s/epoch, "
              f"{row['vs_bpr200_epoch']:.1f}x BPR-200")
    result = {"dataset": args.dataset, "train_pairs": n_pairs, "threads": 1,
              "command": "python bench/teacher_epoch.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
              "note": "median over rounds of the mean ms per batch, times the batches in an epoch; ratios from one run",
              "configs": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
