"""Where a DCD epoch's time goes: per-epoch work (RKD resampling, rank refresh, sample bank) and the per-batch
distillation step (forward + backward), one thread, on ML-1M-sized data.

Usage:
  .venv/bin/python bench/dcd_profile.py ~/.cache/recdistill/datasets/ml-1m/ml-1m.inter \
      --config '{"row_fraction": 0.0625, "bank": 8}' --out bench/results/dcd-profile-ml-1m.json
The per-batch numbers time ``distiller.loss`` and its backward alone (the student's own loss is not included);
``--student-batches`` times the student's whole step (BPR loss, backward, Adam) for comparison.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dcd_epoch import make_teacher  # noqa: E402

from core.checkpoint import library_versions  # noqa: E402
from core.data import load_interactions, split  # noqa: E402
from core.distill import build_distiller  # noqa: E402
from core.models.bpr import BPRMF  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path")
    ap.add_argument("--config", default="{}", help="DCD options as JSON")
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--teacher-epochs", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    # One batch's step is timed: group 1 unless asked otherwise (with G > 1, G - 1 of every G calls only
    # collect rows; the committed file was measured before group existed, i.e. with group 1).
    cfg = {"group": 1, **json.loads(args.config)}
    data = split(load_interactions(args.path), seed=0)
    teacher = make_teacher(data, args.teacher_epochs, 0)
    d = build_distiller("dcd", seed=0, **cfg)
    d.prepare(teacher, data, "cpu")
    torch.manual_seed(0)
    student = BPRMF(data.n_users, data.n_items, 20)
    per_epoch: dict[str, float] = {}
    if d.rkd is not None:
        t = time.thread_time()
        d.rkd.resample(d.generator)
        per_epoch["rkd_resample_s"] = time.thread_time() - t
    t = time.thread_time()
    d.refresh(student)
    per_epoch["refresh_s (every `period` epochs)"] = time.thread_time() - t
    if d.config.bank:
        t = time.thread_time()
        d.user_bank, d.item_bank = d._fill_bank(d.user_sampler), d._fill_bank(d.item_sampler)
        per_epoch["bank_fill_s"] = time.thread_time() - t
    tr = data.train.tocoo()
    users = torch.from_numpy(tr.row.astype(np.int64))
    items = torch.from_numpy(tr.col.astype(np.int64))
    perm = torch.randperm(tr.nnz, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(student.parameters(), lr=1e-3)
    n_batches = int(np.ceil(tr.nnz / 1024))

    def batch(b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = perm[b * 1024 : (b + 1) * 1024]
        return users[idx], items[idx], torch.randint(0, data.n_items, (len(idx),))

    fwd = bwd = 0.0
    for b in range(args.batches):
        u, p, n = batch(b)
        t = time.thread_time()
        loss, _ = d.loss(student, u, p, n)
        fwd += time.thread_time() - t
        t = time.thread_time()
        opt.zero_grad()
        if loss.requires_grad:
            loss.backward()
        bwd += time.thread_time() - t
    t = time.thread_time()
    for b in range(args.batches):
        u, p, n = batch(b)
        opt.zero_grad()
        student.loss(u, p, n).backward()
        opt.step()
    student_step = (time.thread_time() - t) / args.batches
    report = {
        "command": "python bench/" + " ".join(shlex.quote(a) for a in [Path(__file__).name, *(argv or sys.argv[1:])]),
        "config": d.describe(),
        "batches_timed": args.batches,
        "batches_per_epoch": n_batches,
        "per_epoch_thread_seconds": per_epoch,
        "distill_step_ms": {"forward": 1e3 * fwd / args.batches, "backward": 1e3 * bwd / args.batches},
        "distill_seconds_per_epoch_estimate": (fwd + bwd) / args.batches * n_batches,
        "student_step_ms (BPR loss + backward + Adam)": 1e3 * student_step,
        "versions": library_versions(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
