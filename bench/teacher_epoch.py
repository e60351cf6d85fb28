"""Teacher epoch cost on CPU, from timed mini-batches of the project's own fit pieces (one torch thread, one
sampled negative), each configuration's mean batch time scaled to a whole epoch (the training pairs divided by
its batch size); configurations alternate ``--rounds`` times so that a noisy shared machine weighs on all alike.

Two questions, two modes:
- ``--dataset``: LightGCN against BPR-MF dim 200 (issue 13 asks for at most 4x). A LightGCN batch propagates
  over the whole graph, so its epoch cost falls with fewer, larger batches.
- ``--synth SIZES``: dense Adam against ``sparse_updates`` (lazy Adam over sparse gradients) for a BPR-MF
  teacher on synthetic data of growing size (core.synth, USERSxITEMSxINTERACTIONS), with each mode's growth
  exponent. Dense Adam steps every row of both tables at every batch, so its epoch grows with interactions x
  (users + items).

  python bench/teacher_epoch.py --dataset ml-1m --out bench/results/teacher-epoch-ml-1m.json
  python bench/teacher_epoch.py --synth 100000x10000x1000000,316228x31623x3162278,1000000x100000x10000000 \
      --out bench/results/teacher-epoch-scale.json
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
from core.train import make_optimizer, sparse_gradients  # noqa: E402

CONFIGS = [("bpr", 200, 1024), ("lightgcn", 64, 1024), ("lightgcn", 64, 8192), ("lightgcn", 64, 32768)]


def time_batches(name: str, dim: int, batch: int, data, n_batches: int, sparse: bool = False) -> float:  # type: ignore[no-untyped-def]
    """Seconds per batch over ``n_batches`` training steps (after one untimed warm-up step)."""
    model = build_model(name, data.n_users, data.n_items, dim, train=data.train, seed=0)
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], TrainConfig(lr=1e-3, sparse_updates=sparse))
    users, items = data.train_pairs()
    negs = NegativeSampler(data.train).reseed(0).sample(users)
    perm = np.random.default_rng(0).permutation(len(users))
    u, p, n = (torch.from_numpy(a[perm]) for a in (users, items, negs))
    model.train()
    times = []
    with sparse_gradients(model, sparse):
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


def scale_mode(args: argparse.Namespace) -> dict:
    """Dense against sparse updates of a BPR-MF teacher at each synthetic size, and each one's exponent."""
    from core import synth

    work = ROOT / "var" / "teacher-epoch-scale"
    sizes = []
    for size in args.synth.split(","):
        n_users, n_items, n_inter = (int(x) for x in size.split("x"))
        spec = synth.SynthSpec(n_users, n_items, n_inter, seed=0)
        path = work / f"{spec.name}.inter"
        synth.write(spec, path, progress=lambda _m: None)
        data = split(load_interactions(path), seed=0)
        n_pairs, n_batches = int(data.train.nnz), math.ceil(int(data.train.nnz) / args.batch_size)
        per_batch: dict[str, list[float]] = {"dense": [], "sparse": []}
        for r in range(args.rounds):
            for mode in per_batch:
                per_batch[mode].append(time_batches("bpr", args.dim, args.batch_size, data, args.batches,
                                                    sparse=mode == "sparse"))
                print(f"{size} round {r + 1}: {mode}: {per_batch[mode][-1] * 1e3:.1f} ms/batch", flush=True)
        row = {"users": data.n_users, "items": data.n_items, "train_pairs": n_pairs, "batches_per_epoch": n_batches}
        for mode, vals in per_batch.items():
            row[mode] = {"ms_per_batch": [v * 1e3 for v in vals],
                         "seconds_per_epoch": statistics.median(vals) * n_batches}
        row["dense_over_sparse"] = row["dense"]["seconds_per_epoch"] / row["sparse"]["seconds_per_epoch"]
        print(f"{size}: dense {row['dense']['seconds_per_epoch']:.1f} s/epoch, sparse "
              f"{row['sparse']['seconds_per_epoch']:.1f} s/epoch ({row['dense_over_sparse']:.1f}x)", flush=True)
        sizes.append(row)
        del data
    logn = np.log([r["train_pairs"] for r in sizes])
    exponents = {mode: float(np.polyfit(logn, np.log([r[mode]["seconds_per_epoch"] for r in sizes]), 1)[0])
                 for mode in ("dense", "sparse")} if len(sizes) >= 2 else {}
    return {"model": f"bpr:{args.dim}", "batch_size": args.batch_size, "threads": 1, "sizes": sizes,
            "exponents": exponents,
            "note": "median over rounds of the mean ms per batch, times the batches in an epoch; both modes "
                    "measured in one run, alternating; exponent = slope of log seconds/epoch on log train pairs"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ml-1m")
    ap.add_argument("--batches", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--synth", default=None, metavar="SIZES",
                    help="comma list of USERSxITEMSxINTERACTIONS: dense against sparse updates (BPR-MF)")
    ap.add_argument("--dim", type=int, default=64, help="--synth: the BPR-MF teacher's dim")
    ap.add_argument("--batch-size", type=int, default=8192, help="--synth: the mini-batch")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    command = "python bench/teacher_epoch.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    if args.synth:
        result = {"command": command, **scale_mode(args)}
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        return 0
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
              "command": command,
              "note": "median over rounds of the mean ms per batch, times the batches in an epoch; ratios from one run",
              "configs": rows}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
