"""Recommender models, their registry (``MODELS``: name -> class) and ``build_model``."""

from __future__ import annotations

from typing import Any

import scipy.sparse as sp

from core.models.base import Recommender
from core.models.bpr import BPRMF
from core.models.lightgcn import LightGCN
from core.models.neumf import NeuMF

MODELS: dict[str, type[Recommender]] = {"bpr": BPRMF, "neumf": NeuMF, "lightgcn": LightGCN}


def build_model(
    name: str, n_users: int, n_items: int, dim: int, train: sp.spmatrix | None = None, **opts: Any
) -> Recommender:
    """Construct a registered model; ``train`` is required by graph models (LightGCN) and ignored otherwise."""
    cls = MODELS.get(name)
    if cls is None:
        raise ValueError(f"model name {name!r} is unknown; choose one of {sorted(MODELS)}")
    try:
        if cls.needs_train:
            if train is None:
                raise ValueError(f"model {name!r} needs train= (the training interaction matrix)")
            return cls(n_users, n_items, dim, train=train, **opts)
        return cls(n_users, n_items, dim, **opts)
    except TypeError as exc:  # an unknown option name
        raise ValueError(f"bad options for model {name!r}: {exc}") from exc


__all__ = ["MODELS", "Recommender", "BPRMF", "NeuMF", "LightGCN", "build_model"]
