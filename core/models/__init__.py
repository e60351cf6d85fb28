"""Recommender models and their registry (``MODELS``): name -> class."""

from __future__ import annotations

from core.models.base import Recommender
from core.models.bpr import BPRMF

MODELS: dict[str, type[Recommender]] = {"bpr": BPRMF}

__all__ = ["MODELS", "Recommender", "BPRMF"]
