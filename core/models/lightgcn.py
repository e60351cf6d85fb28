"""LightGCN: embeddings propagated over the normalised user-item graph, mean of K layers, BPR loss.

Propagation costs a sparse product per layer, so its result is cached until a parameter changes.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from core.models.base import Recommender, check_init_std, check_reg


def normalized_adjacency(train: sp.spmatrix, n_users: int, n_items: int) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of the bipartite graph A = [[0, R], [R^T, 0]] as a sparse CSR tensor [N, N]."""
    coo = sp.coo_matrix(train)
    rows = coo.row.astype(np.int64)
    cols = coo.col.astype(np.int64) + n_users
    src = np.concatenate([rows, cols])
    dst = np.concatenate([cols, rows])
    n = n_users + n_items
    adj = sp.csr_matrix((np.ones(len(src), dtype=np.float32), (src, dst)), shape=(n, n))
    adj.data[:] = 1.0  # duplicates in the input collapse to one edge
    deg = np.asarray(adj.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(deg, dtype=np.float32)
    inv_sqrt[deg > 0] = deg[deg > 0] ** -0.5
    norm = sp.diags(inv_sqrt) @ adj @ sp.diags(inv_sqrt)
    norm = sp.csr_matrix(norm, dtype=np.float32)
    with warnings.catch_warnings():  # CSR is "beta" in torch, but its spmm is ~1.6x faster than COO here
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            torch.from_numpy(norm.indptr.astype(np.int64)),
            torch.from_numpy(norm.indices.astype(np.int64)),
            torch.from_numpy(norm.data.astype(np.float32)),
            size=(n, n),
            check_invariants=False,
        )


class LightGCN(Recommender):
    """Score = <mean_k(A^k E)_u, mean_k(A^k E)_i>; loss = BPR on propagated + reg * ||batch ego embeddings||^2."""

    name = "lightgcn"
    is_dot_product = True
    needs_train = True

    def __init__(
        self,
        n_users: int,
        n_items: int,
        dim: int,
        train: sp.spmatrix | None = None,
        n_layers: int = 3,
        reg: float = 0.0,
        init_std: float = 0.1,
    ) -> None:
        super().__init__(n_users, n_items, dim)
        if train is None or not sp.issparse(train):
            raise ValueError("train must be the scipy sparse training matrix (LightGCN builds its graph from it)")
        if train.shape != (n_users, n_items):
            raise ValueError(f"train has shape {train.shape}, expected ({n_users}, {n_items})")
        if not isinstance(n_layers, int) or n_layers < 0:
            raise ValueError(f"n_layers must be a non-negative integer, got {n_layers!r}")
        self.n_layers = n_layers
        self.reg = check_reg(reg)
        self.init_std = check_init_std(init_std)
        self.train_matrix = sp.csr_matrix(train, dtype=np.float32)
        self.user_emb = nn.Embedding(n_users, dim)
        self.item_emb = nn.Embedding(n_items, dim)
        nn.init.normal_(self.user_emb.weight, std=self.init_std)
        nn.init.normal_(self.item_emb.weight, std=self.init_std)
        # Not persistent: rebuilt from the train matrix (checkpoints store that as indices).
        self.register_buffer("adj", normalized_adjacency(train, n_users, n_items), persistent=False)
        self._cache: tuple[tuple[Any, ...], torch.Tensor, torch.Tensor] | None = None

    def options(self) -> dict[str, Any]:
        return {"n_layers": self.n_layers, "reg": self.reg, "init_std": self.init_std}

    # --- propagation cache --------------------------------------------------------------------
    def _cache_key(self) -> tuple[Any, ...]:
        # In-place optimiser steps and load_state_dict bump a tensor's version; moves change its pointer.
        params = (self.user_emb.weight, self.item_emb.weight)
        return (torch.is_grad_enabled(),) + tuple((p.data_ptr(), p._version, p.device) for p in params)

    def begin_step(self) -> None:
        self._cache = None

    def train(self, mode: bool = True) -> LightGCN:
        self._cache = None
        return super().train(mode)

    def _apply(self, fn: Any, recurse: bool = True) -> LightGCN:
        self._cache = None
        return super()._apply(fn, recurse)

    def propagate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Uncached propagation: user [n_users, d] and item [n_items, d] layer means."""
        ego = torch.cat([self.user_emb.weight, self.item_emb.weight], dim=0)  # [N, d]
        total = ego
        layer = ego
        for _ in range(self.n_layers):
            layer = self.adj @ layer  # [N, d]
            total = total + layer
        out = total / (self.n_layers + 1)
        return out[: self.n_users], out[self.n_users :]

    def embed(self) -> tuple[torch.Tensor, torch.Tensor]:
        key = self._cache_key()
        if self._cache is None or self._cache[0] != key:
            users, items = self.propagate()
            self._cache = (key, users, items)
        return self._cache[1], self._cache[2]

    # --- training ---------------------------------------------------------------------------
    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        u_all, i_all = self.embed()
        u, ip, ineg = u_all[users], i_all[pos], i_all[neg]  # [B, d]
        loss = -F.logsigmoid((u * (ip - ineg)).sum(-1)).sum()
        if self.reg > 0:
            ego = self.user_emb(users).pow(2).sum() + self.item_emb(pos).pow(2).sum() + self.item_emb(neg).pow(2).sum()
            loss = loss + self.reg * ego
        return loss
