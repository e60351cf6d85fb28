"""Data the A/B benches build inside their child processes (each run against a checkout's code)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def random_train(n_users: int, n_items: int, per_user: int, seed: int = 0) -> sp.csr_matrix:
    """A users x items training matrix of ones: ``per_user`` uniformly random items a user (repeats merged)."""
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n_users), per_user)
    train = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, rng.integers(0, n_items, len(rows)))),
                          shape=(n_users, n_items))
    train.sum_duplicates()
    train.data[:] = 1.0
    return train
