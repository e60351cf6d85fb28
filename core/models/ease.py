"""EASE (Steck, WWW 2019): a closed-form item-item model, used as a teacher.

B = I - P · diag(1 / diag(P)) with P = (XᵀX + λI)⁻¹, so that B has a zero diagonal (an item never explains
itself); a user's scores are her training row times B. One regularised inverse of the item Gram matrix, no
gradient steps: seconds on a CPU for catalogues of a few thousand items. Distillers read a teacher only
through its rankings (``full_scores``), so this scorer teaches like any other; it is never served (it is not
a dot product of per-user and per-item vectors of a small size).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch

from core.config import check_ease_items
from core.models.base import Recommender

EASE_MAX_L2 = 1e7


def check_l2(l2: float) -> float:
    if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not 0 < l2 <= EASE_MAX_L2:
        raise ValueError(f"l2 must be a number in (0, {EASE_MAX_L2:g}], got {l2!r}")
    return float(l2)


class EASE(Recommender):
    """Scores = X[u] @ B. ``dim`` is the catalogue size (a row of B is an item's n_items-long representation)."""

    name = "ease"
    is_dot_product = False
    needs_train = True
    closed_form: ClassVar[bool] = True

    def __init__(self, n_users: int, n_items: int, dim: int | None = None, train: sp.spmatrix | None = None,
                 l2: float = 1000.0) -> None:
        super().__init__(n_users, n_items, n_items)
        check_ease_items(n_items)
        if train is None:
            raise ValueError("ease needs train= (the training interaction matrix)")
        if train.shape != (n_users, n_items):
            raise ValueError(f"train is {train.shape[0]} x {train.shape[1]}, expected {n_users} x {n_items}")
        self.l2 = check_l2(l2)
        self.train_matrix = sp.csr_matrix(train, dtype=np.float32)
        self.train_matrix.data[:] = 1.0  # implicit feedback: duplicates and ratings count once
        # A buffer, not a parameter: nothing here is learned by gradient steps (fit calls solve()).
        self.register_buffer("weights", torch.zeros(n_items, n_items))

    def options(self) -> dict[str, Any]:
        return {"l2": self.l2}

    @torch.no_grad()
    def solve(self) -> None:
        """Compute B from the training matrix (float64 for the inverse: the Gram matrix is ill-conditioned
        for small λ)."""
        x = self.train_matrix
        gram = (x.T @ x).toarray().astype(np.float64)
        gram[np.diag_indices_from(gram)] += self.l2
        p = np.linalg.inv(gram)
        b = -p / np.diag(p)[None, :]
        b[np.diag_indices_from(b)] = 0.0
        self.weights.copy_(torch.from_numpy(b.astype(np.float32)))

    def full_scores(self, users: torch.Tensor) -> torch.Tensor:
        rows = self.train_matrix[users.detach().cpu().numpy()]
        b = self.weights
        if b.device.type == "cpu":  # sparse rows x dense B: cost of the rows' entries, not of n_items²
            return torch.from_numpy(np.asarray(rows @ b.numpy()))
        dense = torch.from_numpy(rows.toarray()).to(b.device)
        return dense @ b

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        full = self.full_scores(users).to(items.device)
        if items.dim() == 1:
            return full.gather(1, items[:, None]).squeeze(1)
        return full.gather(1, items)

    def embed(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise TypeError("EASE has no user/item embeddings: it scores by X @ B (a teacher, never served)")

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        raise TypeError("EASE is fitted in closed form (solve()), not by gradient steps")
