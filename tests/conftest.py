"""Suite-wide settings: one torch thread (2-core CI machines run faster that way) and no stray env."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RECDISTILL_TORCH_THREADS", "1")

try:  # the API tests run without torch being imported anywhere else
    import torch
except ImportError:  # pragma: no cover - the train extra is not installed
    torch = None  # type: ignore[assignment]
if torch is not None:
    torch.set_num_threads(1)
