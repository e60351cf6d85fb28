"""Early stopping on a user sample (TrainConfig.valid_users): what one validation pass costs and how far its
NDCG@10 lies from the pass over every user.

A full-ranking pass scores users x items; at 1M users x 100k items it took 8 minutes on one busy core in
bench/results/scale-train.json, and the fit loop runs one per evaluated epoch. For each synthetic size
(core.synth, USERSxITEMSxINTERACTIONS) a BPR-MF teacher trains ``--epochs`` epochs (sparse updates, so that the
big sizes stay cheap), then the validation pass over every user and over ``--samples`` seeded samples of
``--valid-users`` users are timed in one run (one torch thread).

  python bench/valid_sample.py --out bench/results/valid-sample.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from core import synth  # noqa: E402
from core.config import TrainConfig  # noqa: E402
from core.data import load_interactions, split  # noqa: E402
from core.eval import evaluate  # noqa: E402
from core.models import build_model  # noqa: E402
from core.train import fit, validation_users  # noqa: E402

MONITOR = "ndcg@10"


def one_size(size: str, args: argparse.Namespace) -> dict:
    n_users, n_items, n_inter = (int(x) for x in size.split("x"))
    spec = synth.SynthSpec(n_users, n_items, n_inter, seed=0)
    path = ROOT / "var" / "teacher-epoch-scale" / f"{spec.name}.inter"  # shared with bench/teacher_epoch.py
    synth.write(spec, path, progress=lambda _m: None)
    data = split(load_interactions(path), seed=0)
    model = build_model("bpr", data.n_users, data.n_items, args.dim, seed=0)
    fit(model, data, TrainConfig(epochs=args.epochs, batch_size=8192, lr=1e-2, patience=0, device="cpu",
                                 sparse_updates=True, valid_users=args.valid_users))
    t0 = time.perf_counter()
    full = evaluate(model, data, "valid", ks=(10,))[MONITOR]
    full_s = time.perf_counter() - t0
    samples = []
    for seed in range(args.samples):
        users = validation_users(data, TrainConfig(valid_users=args.valid_users, seed=seed))
        t0 = time.perf_counter()
        value = evaluate(model, data, "valid", ks=(10,), users=users)[MONITOR]
        samples.append({"seed": seed, MONITOR: value, "seconds": time.perf_counter() - t0})
    values = [s[MONITOR] for s in samples]
    row = {"users": data.n_users, "items": data.n_items, "train_pairs": int(data.train.nnz),
           "users_with_valid": int((data.valid.getnnz(axis=1) > 0).sum()),
           "full": {MONITOR: full, "seconds": full_s}, "samples": samples,
           "sample_mean_abs_error": float(np.mean(np.abs(np.array(values) - full))),
           "full_over_sample_seconds": full_s / float(np.median([s["seconds"] for s in samples]))}
    print(f"{size}: full pass {full_s:.1f} s, NDCG@10 {full:.4f}; samples of {args.valid_users}: "
          f"{', '.join(f'{v:.4f}' for v in values)} ({row['full_over_sample_seconds']:.0f}x faster)", flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000x10000x1000000,316228x31623x3162278")
    ap.add_argument("--valid-users", type=int, default=10_000)
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    result = {"command": "python bench/valid_sample.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
              "model": f"bpr:{args.dim}", "epochs": args.epochs, "valid_users": args.valid_users, "threads": 1,
              "note": "one run; the teacher trained with sparse updates, validating on a sample of valid_users "
                      "(seed 0) for its early stopping; then one full pass and one pass per sample seed",
              "sizes": [one_size(s, args) for s in args.sizes.split(",")]}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
