"""Distillation: teacher top-M lists, RRD, DCD and HetComp, their samplers and losses; the ``DISTILLERS`` registry."""

from __future__ import annotations

from typing import Any

from core.config import DistillConfig, distill_config
from core.distill.base import Distiller, NoneDistiller
from core.distill.dcd import RELEASED_PROCEDURE, DCDDistiller
from core.distill.hetcomp import HetCompDistiller, Trajectory
from core.distill.losses import relaxed_ranking_loss
from core.distill.rrd import RRDDistiller
from core.distill.topm import teacher_topm

DISTILLERS: dict[str, type[Distiller]] = {
    "none": NoneDistiller, "rrd": RRDDistiller, "dcd": DCDDistiller, "hetcomp": HetCompDistiller}


def build_distiller(name: str, **cfg: Any) -> Distiller:
    """Build a distiller by registry name from raw options (the CLI's edge); bad names/options raise ValueError."""
    return distiller_for(name, distill_config(name, cfg))


def distiller_for(name: str, config: DistillConfig) -> Distiller:
    """The named distiller over an already validated config (a ``JobSpec``'s): no second validation."""
    return DISTILLERS[name](config)


__all__ = [
    "DISTILLERS",
    "DCDDistiller",
    "HetCompDistiller",
    "Trajectory",
    "Distiller",
    "NoneDistiller",
    "RELEASED_PROCEDURE",
    "RRDDistiller",
    "build_distiller",
    "distiller_for",
    "relaxed_ranking_loss",
    "teacher_topm",
]
