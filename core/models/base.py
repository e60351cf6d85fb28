"""The model contract every recommender (teacher or student) implements.

Scores are broadcast: ``score(users[B], items[B])`` -> [B] and ``score(users[B], items[B, K])`` -> [B, K].
"""

from __future__ import annotations

from numbers import Integral
from typing import Any, ClassVar

import torch
from torch import nn


class Recommender(nn.Module):
    """Base class: subclasses implement ``embed`` (or override ``score``/``full_scores``) and ``loss``."""

    #: Registry name, written into checkpoint manifests.
    name: ClassVar[str] = ""
    #: True when score(u, i) == <user_embeddings()[u], item_embeddings()[i]> (servable by an IP index).
    is_dot_product: ClassVar[bool] = True
    #: True when the constructor needs the training matrix (``train=``), e.g. graph models.
    needs_train: ClassVar[bool] = False
    #: True when the model is computed in one closed-form step (``solve()``) instead of by gradient epochs.
    closed_form: ClassVar[bool] = False
    #: True when every gradient of ``loss`` reaches the parameters through ``nn.Embedding`` lookups, so that
    #: training can use sparse gradients (TrainConfig.sparse_updates; core.config.SPARSE_UPDATE_MODEL_NAMES).
    sparse_lookups: ClassVar[bool] = False

    def __init__(self, n_users: int, n_items: int, dim: int) -> None:
        super().__init__()
        for field, value in (("n_users", n_users), ("n_items", n_items), ("dim", dim)):
            if not isinstance(value, Integral) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{field} must be a positive integer, got {value!r}")
        self.n_users = int(n_users)
        self.n_items = int(n_items)
        self.dim = int(dim)

    def options(self) -> dict[str, Any]:
        """Constructor keyword options (beyond n_users, n_items, dim) needed to rebuild this model."""
        return {}

    def solve(self) -> None:
        """Closed-form models only: compute the weights from the training matrix given at construction."""
        raise TypeError(f"model {self.name!r} is trained by gradient steps, not solved in closed form")

    def begin_step(self) -> None:
        """Called by the trainer before every mini-batch; models with per-step caches clear them here."""

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


def check_reg(reg: float) -> float:
    """Validate an L2 coefficient (shared by the models)."""
    if not isinstance(reg, (int, float)) or reg < 0 or reg != reg:
        raise ValueError(f"reg must be a non-negative number, got {reg!r}")
    return float(reg)


def check_init_std(init_std: float) -> float:
    if not isinstance(init_std, (int, float)) or not init_std > 0:
        raise ValueError(f"init_std must be a positive number, got {init_std!r}")
    return float(init_std)
