"""Recommender models, their registry (``MODELS``: name -> class) and ``build_model``."""

from __future__ import annotations

from typing import Any

import scipy.sparse as sp
import torch

from core.models.base import Recommender
from core.models.bpr import BPRMF
from core.models.ease import EASE
from core.models.lightgcn import LightGCN
from core.models.neumf import NeuMF

MODELS: dict[str, type[Recommender]] = {"bpr": BPRMF, "neumf": NeuMF, "lightgcn": LightGCN, "ease": EASE}


def build_model(
    name: str, n_users: int, n_items: int, dim: int, train: sp.spmatrix | None = None, *,
    seed: int | None = None, **opts: Any
) -> Recommender:
    """Construct a registered model; ``train`` is required by graph models (LightGCN) and ignored otherwise.

    With ``seed``, the initial weights are drawn from a generator seeded with it and nothing else: the same
    seed gives the same model whatever ran before in the process (the global generator is left as it was).
    """
    cls = MODELS.get(name)
    if cls is None:
        raise ValueError(f"model name {name!r} is unknown; choose one of {sorted(MODELS)}")
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model(name, n_users, n_items, dim, train, **opts)
    try:
        if cls.needs_train:
            if train is None:
                raise ValueError(f"model {name!r} needs train= (the training interaction matrix)")
            return cls(n_users, n_items, dim, train=train, **opts)
        return cls(n_users, n_items, dim, **opts)
    except TypeError as exc:  # an unknown option name
        raise ValueError(f"bad options for model {name!r}: {exc}") from exc


__all__ = ["MODELS", "Recommender", "BPRMF", "NeuMF", "LightGCN", "EASE", "build_model"]
