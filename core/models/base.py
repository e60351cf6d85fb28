"""The model contract every recommender (teacher or student) implements.

Scores are broadcast: ``score(users[B], items[B])`` -> [B] and ``score(users[B], items[B, K])`` -> [B, K].
"""

from __future__ import annotations

import torch
from torch import nn


class Recommender(nn.Module):
    """Base class: subclasses implement ``embed`` (or override ``score``/``full_scores``) and ``loss``."""

    #: True when score(u, i) == <user_embeddings()[u], item_embeddings()[i]> (servable by an IP index).
    is_dot_product: bool = True

    def __init__(self, n_users: int, n_items: int, dim: int) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.n_users = n_users
        self.n_items = n_items
        self.dim = dim

    # --- embeddings -------------------------------------------------------------------------
    def embed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user [n_users, d] and item [n_items, d] representations used for scoring."""
        raise NotImplementedError

    def user_embeddings(self) -> torch.Tensor:
        return self.embed()[0]

    def item_embeddings(self) -> torch.Tensor:
        return self.embed()[1]

    # --- scoring ----------------------------------------------------------------------------
    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """users [B], items [B] or [B, K] -> scores of the same shape as items."""
        u_emb, i_emb = self.embed()
        u = u_emb[users]  # [B, d]
        it = i_emb[items]  # [B, d] or [B, K, d]
        if items.dim() == 1:
            return (u * it).sum(-1)
        return torch.einsum("bd,bkd->bk", u, it)

    def score_users(self, users: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        """Item-side scoring: item [B], users [B, K] -> [B, K] (score of each listed user for the item)."""
        u_emb, i_emb = self.embed()
        return torch.einsum("bkd,bd->bk", u_emb[users], i_emb[item])

    def full_scores(self, users: torch.Tensor) -> torch.Tensor:
        """users [B] -> scores for every item [B, n_items]."""
        u_emb, i_emb = self.embed()
        return u_emb[users] @ i_emb.T

    # --- training ---------------------------------------------------------------------------
    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """Base loss of one mini-batch (sum-reduced), L2 regularisation included."""
        raise NotImplementedError
