"""Peak memory of DCD per teacher-list entry: after the lists (prepare), the first and the second refresh.

A job refreshes DCD's ranks every `period` epochs; from the second refresh on, what the previous one built
exists while the new one is made. Each measurement is a fresh subprocess (ru_maxrss is a process's peak) on
ML-1M's shape (6,040 x 3,706, ~132 random training items a user), random BPR-MF embeddings (teacher dim 200,
student dim 20, perturbed between the refreshes), RKD off. With ``--baseline DIR`` every setting is measured
on that checkout too, alternating with this one, in the same run.

Usage:
    git worktree add /tmp/dcd-base <commit>
    .venv/bin/python bench/dcd_refresh_memory.py --baseline /tmp/dcd-base --out bench/results/dcd-refresh-memory.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from faults_kit import ROOT, checkouts, git_commit, measure_each  # noqa: E402

N_USERS, N_ITEMS, PER_USER = 6040, 3706, 132

CHILD = """
import json, resource, sys
sys.path.insert(0, sys.argv[1])
import numpy as np, scipy.sparse as sp, torch
from core.distill import build_distiller
from core.models.bpr import BPRMF

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

m, bank, n_users, n_items, per_user = (int(a) for a in sys.argv[2:7])
rng = np.random.default_rng(0)
rows = np.repeat(np.arange(n_users), per_user)
train = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, rng.integers(0, n_items, len(rows)))),
                      shape=(n_users, n_items))
train.sum_duplicates()
train.data[:] = 1.0

class Data:
    def __init__(self, train):
        self.train = train

torch.manual_seed(0)
teacher = BPRMF(n_users, n_items, 200, init_std=0.1).requires_grad_(False)
student = BPRMF(n_users, n_items, 20, init_std=0.1)
base = peak_mb()
dcd = build_distiller("dcd", m=m, chunk=512, use_rkd=False, bank=bank, period=1)
dcd.prepare(teacher, Data(train), "cpu")
after_prepare = peak_mb()
dcd.on_epoch_start(student, 0)
after_first = peak_mb()
with torch.no_grad():
    for p in student.parameters():
        p.add_(torch.randn_like(p) * 0.1)
dcd.on_epoch_start(student, 1)
after_second = peak_mb()
print(json.dumps({"base_mb": base, "prepare_mb": after_prepare - base, "first_refresh_mb": after_first - base,
                  "second_refresh_mb": after_second - base}))
"""


def measure(code: Path, m: int, bank: int) -> dict[str, Any]:
    cmd = [sys.executable, "-c", CHILD, str(code), str(m), str(bank), str(N_USERS), str(N_ITEMS), str(PER_USER)]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
    entries = (N_USERS + N_ITEMS) * m  # M below both sides' sizes: no clipping
    per_entry = {k.removesuffix("_mb") + "_bytes_per_entry": round(v * 2**20 / entries, 1)
                 for k, v in out.items() if k != "base_mb"}
    return {"m": m, "bank": bank, **{k: round(v, 1) for k, v in out.items()}, **per_entry}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ms", default="500,1000")
    parser.add_argument("--banks", default="0,8")
    parser.add_argument("--baseline", type=Path, help="a checkout of an earlier commit, measured alternately")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "dcd-refresh-memory.json"))
    args = parser.parse_args(argv)
    codes = checkouts(args.baseline)
    runs = []
    for m in (int(x) for x in args.ms.split(",")):
        for bank in (int(x) for x in args.banks.split(",")):
            runs += measure_each(codes, lambda code, m=m, bank=bank: measure(code, m, bank))
    report = {
        "command": "python bench/dcd_refresh_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "what": __doc__.split("\n\n")[0],
        "shape": {"users": N_USERS, "items": N_ITEMS, "train_items_per_user": PER_USER},
        "commits": {name: git_commit(code) for name, code in codes.items()},
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
