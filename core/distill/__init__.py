"""Distillation: teacher top-M lists, RRD and DCD, their samplers and losses; the ``DISTILLERS`` registry."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from core.distill.base import DistillConfig, Distiller, NoneDistiller
from core.distill.dcd import RELEASED_PROCEDURE, DCDConfig, DCDDistiller
from core.distill.losses import relaxed_ranking_loss
from core.distill.rrd import RRDConfig, RRDDistiller
from core.distill.topm import teacher_topm

DISTILLERS: dict[str, type[Distiller]] = {"none": NoneDistiller, "rrd": RRDDistiller, "dcd": DCDDistiller}


def build_distiller(name: str, **cfg: Any) -> Distiller:
    """Build a distiller by registry name with its typed config; bad names/options raise ValueError."""
    if name not in DISTILLERS:
        raise ValueError(f"unknown distiller {name!r}; choose one of {sorted(DISTILLERS)}")
    cls = DISTILLERS[name]
    try:
        config = cls.config_cls(**cfg)
    except ValidationError as exc:
        # A rule across keys has no location; its message names the keys.
        fields = ", ".join(
            (".".join(str(p) for p in e["loc"]) + f": {e['msg']}") if e["loc"] else str(e["ctx"]["error"])
            for e in exc.errors()
        )
        raise ValueError(f"invalid {name} distiller config ({fields})") from exc
    return cls(config)


__all__ = [
    "DISTILLERS",
    "DCDConfig",
    "DCDDistiller",
    "DistillConfig",
    "Distiller",
    "NoneDistiller",
    "RELEASED_PROCEDURE",
    "RRDConfig",
    "RRDDistiller",
    "build_distiller",
    "relaxed_ranking_loss",
    "teacher_topm",
]
