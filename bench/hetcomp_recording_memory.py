"""Peak memory of HetComp's ensemble trajectories: one BPR-MF ensemble teacher trained with its top-k lists
recorded after every epoch, on a synthetic set with many users (a fresh subprocess per measurement; peak RSS
is ru_maxrss). With ``--baseline DIR`` the same is measured on that checkout, alternating, in the same run.

Usage:
    git worktree add /tmp/hetcomp-base <commit>
    .venv/bin/python bench/hetcomp_recording_memory.py --baseline /tmp/hetcomp-base \\
        --out bench/results/hetcomp-recording-memory.json
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

CHILD = """
import json, resource, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import numpy as np, torch
from core.config import HetCompConfig
from core.data import build_interactions, split
from core.jobs import trajectory
from core.models import build_model
from core.synth import SynthSpec, generate

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

users, items, interactions, k, epochs = (int(a) for a in sys.argv[2:7])
pairs = list(generate(SynthSpec(users, items, interactions)))
u = np.concatenate([p[0] for p in pairs]); i = np.concatenate([p[1] for p in pairs])
data = split(build_interactions(u, i, None, None, rating_threshold=None, kcore=0, source="synthetic"), seed=0)
teacher = build_model("bpr", data.n_users, data.n_items, 16, seed=0)
config = HetCompConfig(teachers=["bpr:16"], ensemble_epochs=epochs, k=k, stages=4)
base = peak_mb()
with tempfile.TemporaryDirectory() as cache:
    got = trajectory.trajectories(teacher, data, config, torch.device("cpu"), seed=0, cache=Path(cache))
print(json.dumps({"n_users": data.n_users, "n_items": data.n_items, "base_mb": base,
                  "trajectories_mb": peak_mb() - base,
                  "one_epoch_lists_mb": data.n_users * min(k, data.n_items - 1) * 4 / 2**20}))
"""


def measure(code: Path, users: int, items: int, interactions: int, k: int, epochs: int) -> dict[str, Any]:
    cmd = [sys.executable, "-c", CHILD, str(code), str(users), str(items), str(interactions), str(k), str(epochs)]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {k_: round(v, 1) if isinstance(v, float) else v for k_, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--interactions", type=int, default=2_000_000)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=40, help="the ensemble teacher's epochs (its minimum is 40)")
    parser.add_argument("--baseline", type=Path, help="a checkout of an earlier commit, measured alternately")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "hetcomp-recording-memory.json"))
    args = parser.parse_args(argv)
    codes = checkouts(args.baseline)
    runs = measure_each(codes, lambda _, code: measure(code, args.users, args.items, args.interactions, args.k,
                                                    args.epochs))
    report = {
        "command": "python bench/hetcomp_recording_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "what": __doc__.split("\n\n")[0],
        "settings": {"users": args.users, "items": args.items, "interactions": args.interactions, "k": args.k,
                     "ensemble_epochs": args.epochs, "teacher": "bpr:16", "ensemble": ["bpr:16"], "stages": 4},
        "commits": {name: git_commit(code) for name, code in codes.items()},
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
