"""Where DCD's user-side correction (UCD) draws its samples within the teacher's top-M list.

Trains the student alone (the state DCD starts correcting from is close to it), computes the rank
discrepancies of every user's teacher list as DCD's refresh does, draws one UCD sample set per user
(p under-estimated entries, exactly as in training) for several ε, and reports the share of samples per band
of teacher positions beside the chance that an entry in that band is a held-out test item of the user.

Usage (a teacher checkpoint folder, e.g. one cached by bench/quality_sweep.py):
  .venv/bin/python bench/ucd_positions.py --dataset ml-1m --teacher-dir var/sweep-ucd/ml-1m/teachers/ml-1m-bpr200-seed0-... \
      --out bench/results/ucd-positions-ml-1m.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.checkpoint import library_versions, load_checkpoint  # noqa: E402
from core.config import TrainConfig  # noqa: E402
from core.data import load_interactions, split  # noqa: E402
from core.datasets import resolve  # noqa: E402
from core.distill import DCDDistiller, build_distiller  # noqa: E402
from core.distill.base import ListsCache  # noqa: E402
from core.distill.dcd import correction_weights  # noqa: E402
from core.eval import evaluate  # noqa: E402
from core.models.bpr import BPRMF  # noqa: E402
from core.train import fit  # noqa: E402


def band_shares(pos: torch.Tensor, bands: list[tuple[int, int]]) -> dict[str, float]:
    return {f"{a}-{b}": float(((pos >= a) & (pos < b)).float().mean()) for a, b in bands}


def against(under: torch.Tensor, over: torch.Tensor) -> float:
    """Share of (under, over) sample pairs of a row where the over-estimated entry has the better teacher
    position (smaller list position) than the under-estimated one."""
    return float((under[:, :, None] > over[:, None, :]).float().mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, help="cached name (ml-1m) or a file path")
    ap.add_argument("--teacher-dir", required=True, help="teacher checkpoint folder (trained on --seed's split)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--m", type=int, default=500)
    ap.add_argument("--p", type=int, default=40)
    ap.add_argument("--dim", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=100, help="student-alone epoch cap (patience 10)")
    ap.add_argument("--eps", default="0.1,0.03,0.01")
    ap.add_argument("--prefix", type=int, default=100, help="also report UCD over the first PREFIX entries")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = split(load_interactions(resolve(args.dataset)), seed=args.seed)
    teacher, manifest = load_checkpoint(args.teacher_dir)
    if manifest.get("data_fingerprint") not in (None, data.fingerprint):
        ap.error("the teacher was trained on another split (data fingerprint differs); pass its --seed")
    torch.manual_seed(args.seed)
    student = BPRMF(data.n_users, data.n_items, args.dim)
    result = fit(student, data, TrainConfig(epochs=args.epochs, lr=1e-3, patience=10, seed=args.seed, device="cpu"))
    lists: ListsCache = {}  # the teacher's lists, computed once for every distiller below

    def ucd(eps: float, correction_m: int | None = None) -> DCDDistiller:
        """A UCD-only distiller after DCD's own refresh on the trained student (discrepancies and sampler)."""
        d = build_distiller(
            "dcd", m=args.m, p=args.p, eps=eps, correction_m=correction_m, use_rkd=False, use_icd=False
        )
        assert isinstance(d, DCDDistiller)
        d.prepare(teacher, data, "cpu", lists_cache=lists)
        d.refresh(student)
        return d

    eps_values = [float(e) for e in args.eps.split(",")]
    first = ucd(eps_values[0])
    user_top, disc = first.user_top, first.user_disc
    assert user_top is not None and disc is not None
    m = user_top.shape[1]
    edges = [0, 10, 50, 100, 200, m]
    bands = [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if a < m]
    # Chance that the entry at a teacher position is one of the user's held-out test items.
    test = data.test.tocsr()
    hit = np.zeros(m)
    top = user_top.numpy()
    for u in range(data.n_users):
        held = test.indices[test.indptr[u] : test.indptr[u + 1]]
        if held.size:
            hit += np.isin(top[u], held)
    hit /= data.n_users
    report: dict = {
        "dataset": args.dataset,
        "command": "python bench/" + " ".join(shlex.quote(a) for a in [Path(__file__).name, *(argv or sys.argv[1:])]),
        "teacher": manifest.get("config"),
        "student": f"bpr:{args.dim} alone, {result.epochs_run} epochs (best {result.best_epoch})",
        "student_valid_ndcg@10": evaluate(student, data, "valid", ks=(10,))["ndcg@10"],
        "m": m,
        "p": args.p,
        "mean_abs_discrepancy": float(disc.abs().float().mean()),
        "test_item_rate_by_teacher_position": {f"{a}-{b}": float(hit[a:b].mean()) for a, b in bands},
        "ucd_under_sample_share_by_teacher_position": {},
        "ucd_over_sample_share_by_teacher_position": {},
        "share_of_saturated_under_weights": {},
        # The released UCD loss ranks every sampled under-estimated entry above every over-estimated one; a pair
        # is "against the teacher" when the teacher ranks the over-estimated entry higher.
        "share_of_under_over_pairs_against_teacher": {},
        "versions": library_versions(),
    }
    g = torch.Generator().manual_seed(args.seed)
    rows = torch.arange(data.n_users)
    # UCD over the whole list, then over its first --prefix entries (ranks re-taken within the prefix).
    for correction_m in (None, args.prefix) if args.prefix < m else (None,):
        for eps in eps_values:
            d = first if (eps, correction_m) == (eps_values[0], None) else ucd(eps, correction_m)
            sampler = d.user_sampler
            assert sampler is not None and d.user_disc is not None
            under, over = sampler.sample(rows, g), sampler.sample(rows + data.n_users, g)
            report["share_of_under_over_pairs_against_teacher"][f"M={sampler.m}, eps={eps}"] = against(under, over)
            if correction_m is None:
                report["ucd_under_sample_share_by_teacher_position"][str(eps)] = band_shares(under, bands)
                report["ucd_over_sample_share_by_teacher_position"][str(eps)] = band_shares(over, bands)
                wp, _ = correction_weights(d.user_disc, eps)
                report["share_of_saturated_under_weights"][str(eps)] = float((wp > 0.9).float().mean())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "versions"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
