"""RRD (relaxed ranking distillation, DE-RRD CIKM'20): per-epoch interesting/uninteresting samples and L_RRD.

The user side is always on; the item side (IR-RRD: each item's teacher top-M users) is optional.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
import torch

from core.config import RRDConfig
from core.distill.base import Distiller, ListsCache, SplitLike, batch_rows, require_prepared
from core.distill.losses import RankingTerm, ranking_terms, score_items, score_users
from core.distill.sampling import gumbel_topk, sample_excluding
from core.models.base import Recommender

logger = logging.getLogger(__name__)


class RankingSide:
    """One side's teacher lists and its RRD samples: rows (users or items) x columns (items or users).

    ``interesting`` [R, K]: K list entries drawn ∝ exp(-rank/T) without replacement, in teacher order
    (or the top-K themselves when deterministic). ``uninteresting`` [R, L]: uniform over columns that are
    neither observed nor listed; rows with fewer than L such columns draw with replacement among them,
    or, when none exist, take the last L list entries.
    """

    def __init__(
        self,
        lists: torch.Tensor,
        observed: sp.csr_matrix,
        k: int,
        n_unint: int,
        t: float,
        deterministic: bool,
    ) -> None:
        n_rows, m = lists.shape
        n_cols = observed.shape[1]
        if k > m:
            logger.warning("K=%d exceeds the teacher list length %d; using K=%d", k, m, m)
            k = m
        self.lists, self.k, self.l, self.t, self.deterministic = lists, k, n_unint, t, deterministic
        self.n_rows, self.n_cols = n_rows, n_cols
        dev = lists.device
        obs = observed.tocoo()
        obs_keys = torch.from_numpy(obs.row.astype(np.int64) * n_cols + obs.col.astype(np.int64)).to(dev)
        list_keys = (torch.arange(n_rows, device=dev)[:, None] * n_cols + lists).reshape(-1)
        self.excluded = torch.unique(torch.cat([obs_keys, list_keys]))  # sorted
        counts = torch.bincount(torch.div(self.excluded, n_cols, rounding_mode="floor"), minlength=n_rows)
        self.available = n_cols - counts  # [R]
        self.rank_logits = -(torch.arange(m, device=dev, dtype=torch.float32) + 1.0) / t  # [M]
        self.interesting: torch.Tensor | None = None
        self.uninteresting: torch.Tensor | None = None

    def samples(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """This epoch's (interesting [B, K], uninteresting [B, L]) entries of the given rows."""
        inter = require_prepared(self, "interesting", "RRD (resample first)")
        unint = require_prepared(self, "uninteresting", "RRD (resample first)")
        return inter.index_select(0, rows), unint.index_select(0, rows)

    def resample(self, generator: torch.Generator) -> None:
        dev = self.lists.device
        if self.deterministic:
            self.interesting = self.lists[:, : self.k].clone()
        else:
            logits = self.rank_logits.expand(self.n_rows, -1)
            positions = gumbel_topk(logits, self.k, generator)  # [R, K] sorted: teacher order kept
            self.interesting = self.lists.gather(1, positions)
        if self.l == 0:
            self.uninteresting = torch.empty((self.n_rows, 0), dtype=torch.int64, device=dev)
            return
        unint = sample_excluding(self.n_rows, self.n_cols, self.l, self.excluded, self.available, generator)
        for r in (self.available < self.l).nonzero().squeeze(1).tolist():
            unint[r] = self._short_row(r, generator)
        self.uninteresting = unint

    def _short_row(self, r: int, generator: torch.Generator) -> torch.Tensor:
        dev = self.lists.device
        lo = int(torch.searchsorted(self.excluded, torch.tensor(r * self.n_cols, device=dev)))
        hi = int(torch.searchsorted(self.excluded, torch.tensor((r + 1) * self.n_cols, device=dev)))
        taken = self.excluded[lo:hi] - r * self.n_cols
        free = torch.ones(self.n_cols, dtype=torch.bool, device=dev)
        free[taken] = False
        allowed = free.nonzero().squeeze(1)
        if allowed.numel() == 0:
            return self.lists[r, -self.l :]
        pick = torch.randint(0, allowed.numel(), (self.l,), generator=generator, device=dev)
        return allowed[pick]

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        if self.interesting is None or self.uninteresting is None:
            return {}
        return {f"{prefix}.interesting": self.interesting, f"{prefix}.uninteresting": self.uninteresting}

    def load(self, prefix: str, state: dict[str, torch.Tensor]) -> None:
        if f"{prefix}.interesting" in state:
            self.interesting = state[f"{prefix}.interesting"].to(self.lists.device)
            self.uninteresting = state[f"{prefix}.uninteresting"].to(self.lists.device)


def rrd_terms(
    student: Recommender, side: RankingSide, rows: torch.Tensor, weight: float, name: str, item_side: bool
) -> RankingTerm:
    """The relaxed ranking term of the given distinct rows (users, or items when ``item_side``)."""
    inter, unint = side.samples(rows)
    cols = torch.cat([inter, unint], dim=1)
    s = score_users(student, cols, rows) if item_side else score_items(student, rows, cols)  # [B, K + L]
    k = inter.shape[1]
    return RankingTerm(name, s[:, :k], s[:, k:], weight)


class RRDDistiller(Distiller):
    name = "rrd"
    config_cls = RRDConfig
    config: RRDConfig

    def __init__(self, config: RRDConfig | None = None) -> None:
        super().__init__(config)
        self.user_side: RankingSide | None = None
        self.item_side: RankingSide | None = None

    def prepare(
        self,
        teacher: Recommender | None,
        data: SplitLike,
        device: torch.device | str = "cpu",
        lists_cache: ListsCache | None = None,
    ) -> None:
        super().prepare(teacher, data, device, lists_cache)
        if teacher is None:
            raise ValueError("rrd needs a teacher")
        c = self.config
        user_top, item_top = self.teacher_lists(teacher, data, c.m, c.chunk)
        self.user_side = RankingSide(user_top, data.train.tocsr(), c.k, c.l, c.t, c.deterministic_topk)
        if c.item_side:
            self.item_side = RankingSide(
                item_top, data.train.T.tocsr(), c.k_item, c.l_item, c.t, c.deterministic_topk
            )

    def on_epoch_start(self, student: Recommender, epoch: int, n_batches: int | None = None) -> None:
        side = require_prepared(self, "user_side", "rrd")
        side.resample(self.generator)
        if self.item_side is not None:
            self.item_side.resample(self.generator)

    def loss(
        self, student: Recommender, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.config
        user_rows, wu = batch_rows(users, c.row_fraction, self.generator)
        terms = [
            rrd_terms(
                student,
                require_prepared(self, "user_side", "rrd"),
                user_rows,
                c.lambda_rrd * wu,
                "rrd",
                False,
            )
        ]
        if self.item_side is not None:
            item_rows, wi = batch_rows(pos, c.row_fraction, self.generator)
            terms.append(rrd_terms(student, self.item_side, item_rows, c.lambda_item * wi, "rrd_item", True))
        return ranking_terms(terms)

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = super().state_dict()
        if self.user_side is not None:
            state.update(self.user_side.state("rrd_user"))
        if self.item_side is not None:
            state.update(self.item_side.state("rrd_item"))
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(state)
        require_prepared(self, "user_side", "rrd").load("rrd_user", state)
        if self.item_side is not None:
            self.item_side.load("rrd_item", state)
