"""teacher_topm's time on a synthetic shape, this checkout against an earlier one (``--baseline``), one thread.

Each checkout runs in a fresh subprocess on the same data and teacher (random BPR-MF, dim 64, ``--per-user``
random training items a user); the item lists of the two are then compared: rows equal, rows holding the same
users in another order (exactly equal scores, whose order topk leaves unspecified), rows holding other users.

    git worktree add /tmp/topm-base <commit>
    OMP_NUM_THREADS=1 .venv/bin/python bench/topm_speed.py --shape 100000x10000x10 --m 500 \\
        --baseline /tmp/topm-base --out bench/results/topm-speed-100k.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from faults_kit import checkouts, git_commit, measure_each  # noqa: E402

CHILD = """
import sys, time
sys.path.insert(0, sys.argv[1])
import numpy as np, torch
from core.distill.topm import teacher_topm
from core.models.bpr import BPRMF

torch.set_num_threads(1)
n_users, n_items, per_user, m = (int(a) for a in sys.argv[2:6])
sys.path.insert(0, sys.argv[8])  # this bench's folder
from bench_data import random_train
train = random_train(n_users, n_items, per_user)
torch.manual_seed(0)
teacher = BPRMF(n_users, n_items, 64, init_std=0.1).requires_grad_(False)
c0, w0 = time.process_time(), time.perf_counter()
user_top, item_top = teacher_topm(teacher, train, m)
print(time.perf_counter() - w0, time.process_time() - c0)
np.save(sys.argv[6], item_top.numpy())
np.save(sys.argv[7], user_top.numpy())
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="100000x10000x10", help="USERSxITEMSxTRAINING_ITEMS_PER_USER")
    parser.add_argument("--m", type=int, default=500)
    parser.add_argument("--baseline", type=Path, help="a checkout of an earlier commit")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    n_users, n_items, per_user = (int(x) for x in args.shape.split("x"))
    codes = checkouts(args.baseline)
    work = Path(tempfile.mkdtemp(prefix="topm-speed-"))

    def measure(name: str, code: Path) -> dict[str, Any]:  # by name: a baseline may be this very checkout
        cmd = [sys.executable, "-c", CHILD, str(code), str(n_users), str(n_items), str(per_user), str(args.m),
               str(work / f"{name}-items.npy"), str(work / f"{name}-users.npy"),
               str(Path(__file__).resolve().parent)]
        wall, cpu = (float(x) for x in subprocess.run(cmd, check=True, capture_output=True, text=True
                                                     ).stdout.split()[-2:])
        return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}

    runs = measure_each(codes, measure)
    report: dict[str, Any] = {
        "command": "python bench/topm_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "shape": {"users": n_users, "items": n_items, "train_items_per_user": per_user, "m": args.m},
        "commits": {name: git_commit(code) for name, code in codes.items()},
        "runs": runs,
    }
    if args.baseline:
        a, b = (np.load(work / f"{n}-items.npy") for n in ("current", "baseline"))
        same_set = (np.sort(a, axis=1) == np.sort(b, axis=1)).all(axis=1)
        equal = (a == b).all(axis=1)
        report["item_lists"] = {"rows": len(a), "equal": int(equal.sum()),
                                "same_users_other_order": int((same_set & ~equal).sum()),
                                "other_users": int((~same_set).sum())}
        report["user_lists_equal"] = bool(np.array_equal(*(np.load(work / f"{n}-users.npy")
                                                             for n in ("current", "baseline"))))
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
