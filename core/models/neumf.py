"""NeuMF: a GMF branch and an MLP tower (halving widths, ReLU) joined by a linear output layer.

Not a dot-product model: ``embed()`` exposes the GMF embeddings, but every score runs the full network.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.models.base import Recommender, check_init_std, check_reg

#: Elements allowed in one [users, items, hidden] block of ``full_scores`` (bounds its peak memory).
_BLOCK_ELEMENTS = 1 << 23


class NeuMF(Recommender):
    """Loss: BCE-with-logits (sum) on positives (label 1) and sampled negatives (label 0) + L2 on the batch."""

    name = "neumf"
    is_dot_product = False

    def __init__(
        self, n_users: int, n_items: int, dim: int, n_layers: int = 3, reg: float = 0.0, init_std: float = 0.01
    ) -> None:
        super().__init__(n_users, n_items, dim)
        if not isinstance(n_layers, int) or n_layers < 1:
            raise ValueError(f"n_layers must be a positive integer, got {n_layers!r}")
        self.n_layers = n_layers
        self.reg = check_reg(reg)
        self.init_std = check_init_std(init_std)
        self.gmf_user = nn.Embedding(n_users, dim)
        self.gmf_item = nn.Embedding(n_items, dim)
        self.mlp_user = nn.Embedding(n_users, dim)
        self.mlp_item = nn.Embedding(n_items, dim)
        for emb in (self.gmf_user, self.gmf_item, self.mlp_user, self.mlp_item):
            nn.init.normal_(emb.weight, std=self.init_std)
        widths = [2 * dim]
        for _ in range(n_layers):
            widths.append(max(1, widths[-1] // 2))
        self.tower = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.out = nn.Linear(dim + widths[-1], 1)

    def options(self) -> dict[str, Any]:
        return {"n_layers": self.n_layers, "reg": self.reg, "init_std": self.init_std}

    def embed(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.gmf_user.weight, self.gmf_item.weight

    # --- network ----------------------------------------------------------------------------
    def _head(self, gu: torch.Tensor, gi: torch.Tensor, mu: torch.Tensor, mi: torch.Tensor) -> torch.Tensor:
        """Embeddings [..., d] (broadcastable) -> logits [...]."""
        gu, gi, mu, mi = torch.broadcast_tensors(gu, gi, mu, mi)
        h = torch.cat([mu, mi], dim=-1)  # [..., 2d]
        for layer in self.tower:
            h = F.relu(layer(h))
        return self.out(torch.cat([gu * gi, h], dim=-1)).squeeze(-1)

    def _logits(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self._head(self.gmf_user(users), self.gmf_item(items), self.mlp_user(users), self.mlp_item(items))

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        if items.dim() == 2:
            users = users.unsqueeze(1)  # [B, 1] broadcasts against [B, K]
        return self._logits(users, items)

    def score_users(self, users: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        return self._logits(users, item.unsqueeze(1))  # [B, K]

    def full_scores(self, users: torch.Tensor) -> torch.Tensor:
        """Splits the first tower layer into user and item halves, so each half is projected once."""
        d = self.dim
        first = self.tower[0]
        w_out = self.out.weight[0]  # [d + h_last]
        gmf = (self.gmf_user(users) * w_out[:d]) @ self.gmf_item.weight.T  # [B, n_items]
        pu = self.mlp_user(users) @ first.weight[:, :d].T + first.bias  # [B, h1]
        pi = self.mlp_item.weight @ first.weight[:, d:].T  # [n_items, h1]
        chunk = max(1, _BLOCK_ELEMENTS // max(1, users.numel() * pi.shape[1]))
        parts = []
        for start in range(0, self.n_items, chunk):
            h = F.relu(pu.unsqueeze(1) + pi[start : start + chunk].unsqueeze(0))  # [B, c, h1]
            for layer in self.tower[1:]:
                h = F.relu(layer(h))
            parts.append(h @ w_out[d:])  # [B, c]
        return gmf + torch.cat(parts, dim=1) + self.out.bias

    # --- training ---------------------------------------------------------------------------
    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        gu, mu = self.gmf_user(users), self.mlp_user(users)  # [B, d]
        items = torch.stack([pos, neg], dim=1)  # [B, 2]
        gi, mi = self.gmf_item(items), self.mlp_item(items)  # [B, 2, d]
        logits = self._head(gu.unsqueeze(1), gi, mu.unsqueeze(1), mi)  # [B, 2]
        labels = torch.zeros_like(logits)
        labels[:, 0] = 1.0
        loss = F.binary_cross_entropy_with_logits(logits, labels, reduction="sum")
        if self.reg > 0:
            loss = loss + self.reg * (gu.pow(2).sum() + mu.pow(2).sum() + gi.pow(2).sum() + mi.pow(2).sum())
        return loss
