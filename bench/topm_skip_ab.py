"""teacher_topm's CPU time at 316k users x 31.6k items, M = 100, one thread: this checkout against another
source tree (e.g. `git archive a4319be | tar -x -C /tmp/oldsrc`, before the item-side skip).

    cd SRC && OMP_NUM_THREADS=1 PYTHONPATH=SRC python THIS_CHECKOUT/bench/topm_skip_ab.py LABEL
"""

import sys
import time

import numpy as np
import scipy.sparse as sp
import torch

from core.distill.topm import teacher_topm
from core.models import build_model

torch.set_num_threads(1)
nu, ni = 316_228, 31_623
rng = np.random.default_rng(0)
rows = np.repeat(np.arange(nu), 10)
cols = rng.integers(0, ni, size=len(rows))
train = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(nu, ni))
train.data[:] = 1
teacher = build_model("bpr", nu, ni, 64, train=train, seed=0, init_std=1.0)
c0, w0 = time.thread_time(), time.perf_counter()
user_top, item_top = teacher_topm(teacher, train, m=100)
print(sys.argv[1], f"cpu_s {time.thread_time() - c0:.1f} wall_s {time.perf_counter() - w0:.1f}", int(item_top.sum()))
