"""The distiller contract and the "none" distiller (student alone): an extra loss beside the base loss."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Protocol

import scipy.sparse as sp
import torch

from core.config import DistillConfig
from core.distill.topm import teacher_topm
from core.models.base import Recommender


class SplitLike(Protocol):
    """What a distiller reads from ``core.data.SplitData``: the training matrix (n_users x n_items)."""

    train: sp.csr_matrix


ListsCache = dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]


class Distiller:
    """Base class. Call order: ``prepare`` once, then per epoch ``on_epoch_start`` and ``loss`` per batch.

    The teacher is frozen: it is only read inside ``prepare`` (no grad), never in ``loss``.
    """

    name: ClassVar[str] = "base"
    config_cls: ClassVar[type[DistillConfig]] = DistillConfig
    #: Its loss reaches the student through whole tables (``fit`` refuses ``sparse_updates`` then).
    dense_gradients: ClassVar[bool] = True

    def __init__(self, config: DistillConfig | None = None) -> None:
        self.config = config if config is not None else self.config_cls()
        self.device = torch.device("cpu")
        self.generator = torch.Generator(device="cpu").manual_seed(self.config.seed)
        self._lists_cache: ListsCache | None = None

    def prepare(
        self,
        teacher: Recommender | None,
        data: SplitLike,
        device: torch.device | str = "cpu",
        lists_cache: ListsCache | None = None,
    ) -> None:
        """Precompute everything taken from the teacher (no grad, chunked) and move it to ``device``.

        ``lists_cache``: a dict shared by distillers of ONE teacher and split, so that the teacher's
        top-M lists are computed once for all of them (e.g. every method of an experiment seed).
        """
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(self.config.seed)
        self._lists_cache = lists_cache

    def teacher_lists(
        self, teacher: Recommender, data: SplitLike, m: int, chunk: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``teacher_topm`` on this distiller's device, reused from ``lists_cache`` when given."""
        cache = self._lists_cache
        key = (m, str(self.device))
        if cache is not None and key in cache:
            return cache[key]
        lists = teacher_topm(teacher, data.train, m, chunk, self.device)
        if cache is not None:
            cache[key] = lists
        return lists

    def on_epoch_start(self, student: Recommender, epoch: int) -> None:
        """Per-epoch work: resampling, rank refresh. ``epoch`` counts from 0. An epoch is one pass over the
        training pairs (``data.train``'s entries, each once), as ``core.train.fit`` runs it."""

    def may_stop(self) -> bool:
        """Whether early stopping may end the run now. A distiller whose targets change in phases says False
        until its last phase begins: ``fit`` then holds the patience count at zero (the epoch cap still holds)."""
        return True

    def loss(
        self, student: Recommender, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The extra (already weighted) loss of one mini-batch and its unweighted parts for logging (detached
        0-d tensors: fit sums them on the device)."""
        return torch.zeros((), device=users.device), {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors needed to resume mid-run exactly (safetensors-friendly: a flat dict of tensors)."""
        return {"rng_state": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore ``state_dict``; call after ``prepare``."""
        if "rng_state" not in state:
            raise KeyError("distiller state is missing 'rng_state'")
        self.generator.set_state(state["rng_state"].cpu().to(torch.uint8))

    def describe(self) -> dict[str, Any]:
        """Method name and full configuration, for manifests."""
        return {"method": self.name, **self.config.model_dump()}


class NoneDistiller(Distiller):
    """The student trained alone: zero extra loss."""

    name = "none"
    config_cls = DistillConfig
    dense_gradients = False  # no loss at all: the student alone may train with sparse updates


def batch_rows(x: torch.Tensor, fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """The batch's distinct ids, or a uniform random subset of ceil(fraction * n) of them, and the weight
    n / kept that makes the subset's summed loss an unbiased estimate of the all-rows sum."""
    rows = torch.unique(x)
    if fraction >= 1.0:
        return rows, 1.0
    n = rows.numel()
    kept = max(1, math.ceil(fraction * n))
    keep = torch.randperm(n, generator=generator, device=rows.device)[:kept]
    return rows[keep], n / kept


def require_prepared(obj: object, attr: str, what: str) -> Any:
    value = getattr(obj, attr, None)
    if value is None:
        raise RuntimeError(f"{what}: call prepare(teacher, data, device) first")
    return value
