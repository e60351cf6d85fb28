"""Peak memory of DCD per teacher-list entry: after the lists (prepare), the first and the second refresh, the
trainer's checkpoint after them, and a job resuming from that checkpoint.

A job refreshes DCD's ranks every `period` epochs; from the second refresh on, what the previous one built
exists while the new one is made. Each measurement is a fresh subprocess (ru_maxrss is a process's peak; a
peak that a step does not raise reads as the one before it) on ML-1M's shape (6,040 x 3,706, ~132 random
training items a user) or ``--shape``, random BPR-MF embeddings (teacher dim 200, student dim 20, perturbed
between the refreshes, then given Adam moments and a best copy for the checkpoint), RKD off unless ``--rkd``
(then its excluded keys, built in prepare, and its per-epoch draws count too). ``held_after``: what is still
resident after the second refresh, free heap pages handed back (malloc_trim), the structures DCD keeps
through an epoch. ``*_s``: each step's seconds (a refresh's include RKD's draws and the bank's; the machine
shared, so compare versions within a run). ``resume_mb``: the peak of a second fresh process that does what
a resumed job does (the teacher, prepare, then the trainer's ``load_state`` of that checkpoint), against its own
``resume_prepare_mb``, the prepare alone. With ``--baseline DIR`` every setting is measured on that checkout
too, alternating with this one, in the same run.

Usage:
    git worktree add /tmp/dcd-base <commit>
    .venv/bin/python bench/dcd_refresh_memory.py --baseline /tmp/dcd-base --out bench/results/dcd-refresh-memory.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from faults_kit import ROOT, checkouts, git_commit, measure_each  # noqa: E402

ML_1M_SHAPE = "6040x3706x132"

CHILD = """
import ctypes, json, os, resource, sys, time
sys.path.insert(0, sys.argv[1])
import torch
from core.distill import build_distiller
from core.models.bpr import BPRMF

def peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def held_mb(trim=True):  # resident now, after handing the allocator's free pages back
    if trim:  # not at the start: the pages it hands back would be faulted in again inside the timed steps
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

m, bank, n_users, n_items, per_user, rkd = (int(a) for a in sys.argv[2:8])
sys.path.insert(0, sys.argv[8])  # this bench's folder
checkpoint, resuming = sys.argv[9], sys.argv[10] == "resume"
from bench_data import random_train
train = random_train(n_users, n_items, per_user)

class Data:
    def __init__(self, train):
        self.train = train

torch.manual_seed(0)
teacher = BPRMF(n_users, n_items, 200, init_std=0.1).requires_grad_(False)
student = BPRMF(n_users, n_items, 20, init_std=0.1)
base, base_held = peak_mb(), held_mb(trim=False)
dcd = build_distiller("dcd", m=m, chunk=512, use_rkd=bool(rkd), bank=bank, period=1)
t0 = time.perf_counter()
dcd.prepare(teacher, Data(train), "cpu")
t1, after_prepare = time.perf_counter(), peak_mb()
from pathlib import Path
from core.config import TrainConfig
from core.train_state import TrainState, load_state, save_state
opt = torch.optim.Adam(student.parameters(), lr=1e-3)
if resuming:  # a job resumed after a crash: prepare (above), then the trainer reads the checkpoint back
    load_state(Path(checkpoint), TrainConfig(), student, opt, dcd, torch.device("cpu"))
    t2, after_resume = time.perf_counter(), peak_mb()
    print(json.dumps({"resume_prepare_mb": after_prepare - base, "resume_mb": after_resume - base,
                      "resume_s": t2 - t1}))
    sys.exit(0)
dcd.on_epoch_start(student, 0)
t2, after_first = time.perf_counter(), peak_mb()
with torch.no_grad():
    for p in student.parameters():
        p.add_(torch.randn_like(p) * 0.1)
t3 = time.perf_counter()
dcd.on_epoch_start(student, 1)
t4, after_second = time.perf_counter(), peak_mb()
held_after = held_mb() - base_held
# The trainer's checkpoint at the end of that epoch: the student, its best copy, Adam's moments and DCD's state.
sum(p.square().sum() for p in student.parameters()).backward()
opt.step()
state = TrainState(best_tensors={k: v.detach().clone() for k, v in student.state_dict().items()})
t5 = time.perf_counter()
save_state(Path(checkpoint), state, TrainConfig(), student, opt, dcd)
t6, after_checkpoint = time.perf_counter(), peak_mb()
print(json.dumps({"base_mb": base, "prepare_mb": after_prepare - base, "first_refresh_mb": after_first - base,
                  "second_refresh_mb": after_second - base, "checkpoint_mb": after_checkpoint - base,
                  "held_after_mb": held_after, "prepare_s": t1 - t0, "first_refresh_s": t2 - t1,
                  "second_refresh_s": t4 - t3, "checkpoint_s": t6 - t5}))
"""


def measure(code: Path, m: int, bank: int, rkd: bool, shape: tuple[int, int, int]) -> dict[str, Any]:
    n_users, n_items, per_user = shape
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        for step in ("train", "resume"):  # the second process reads back the checkpoint the first one wrote
            cmd = [sys.executable, "-c", CHILD, str(code), str(m), str(bank), str(n_users), str(n_items),
                   str(per_user), str(int(rkd)), str(Path(__file__).resolve().parent),
                   str(Path(folder) / "train_state.safetensors"), step]
            run = subprocess.run(cmd, check=True, capture_output=True, text=True)
            out.update(json.loads(run.stdout.strip().splitlines()[-1]))
    entries = (n_users + n_items) * m  # M below both sides' sizes: no clipping
    per_entry = {k.removesuffix("_mb") + "_bytes_per_entry": round(v * 2**20 / entries, 1)
                 for k, v in out.items() if k.endswith("_mb") and k != "base_mb"}
    return {"m": m, "bank": bank, "rkd": rkd, **{k: round(v, 2 if k.endswith("_s") else 1) for k, v in out.items()}, **per_entry}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ms", default="500,1000")
    parser.add_argument("--banks", default="0,8")
    parser.add_argument("--shape", default=ML_1M_SHAPE, help="USERSxITEMSxTRAINING_ITEMS_PER_USER (default ML-1M's)")
    parser.add_argument("--rkd", action="store_true", help="with DCD's RKD term (the default job's setting)")
    parser.add_argument("--baseline", type=Path, help="a checkout of an earlier commit, measured alternately")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "dcd-refresh-memory.json"))
    args = parser.parse_args(argv)
    codes = checkouts(args.baseline)
    n_users, n_items, per_user = shape = tuple(int(x) for x in args.shape.split("x"))
    runs = []
    for m in (int(x) for x in args.ms.split(",")):
        for bank in (int(x) for x in args.banks.split(",")):
            runs += measure_each(codes, lambda _, code, m=m, bank=bank: measure(code, m, bank, args.rkd, shape))
    report = {
        "command": "python bench/dcd_refresh_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "what": __doc__.split("\n\n")[0],
        "shape": {"users": n_users, "items": n_items, "train_items_per_user": per_user},
        "commits": {name: git_commit(code) for name, code in codes.items()},
        "runs": runs,
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
