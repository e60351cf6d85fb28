"""RRD (relaxed ranking distillation, DE-RRD CIKM'20): L_RRD over each side's per-epoch samples
(``core.distill.ranking``).

The user side is always on; the item side (IR-RRD: each item's teacher top-M users) is optional.
"""

from __future__ import annotations

import torch

from core.config import RRDConfig
from core.distill.base import Distiller, ListsCache, SplitLike, batch_rows, require_prepared
from core.distill.losses import RankingTerm, ranking_terms, score_items, score_users
from core.distill.ranking import RankingSide
from core.models.base import Recommender


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
        # Named *_ranking, not *_side: ``config.item_side`` is the bool that switches the item side on.
        self.user_ranking: RankingSide | None = None
        self.item_ranking: RankingSide | None = None

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
        self.user_ranking = RankingSide(user_top, data.train.tocsr(), c.k, c.l, c.t, c.deterministic_topk)
        if c.item_side:
            self.item_ranking = RankingSide(
                item_top, data.train.T.tocsr(), c.k_item, c.l_item, c.t, c.deterministic_topk
            )

    def on_epoch_start(self, student: Recommender, epoch: int) -> None:
        side = require_prepared(self, "user_ranking", "rrd")
        side.resample(self.generator)
        if self.item_ranking is not None:
            self.item_ranking.resample(self.generator)

    def loss(
        self, student: Recommender, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
        user_rows, wu = batch_rows(users, c.row_fraction, self.generator)
        terms = [
            rrd_terms(
                student,
                require_prepared(self, "user_ranking", "rrd"),
                user_rows,
                c.lambda_rrd * wu,
                "rrd",
                False,
            )
        ]
        if self.item_ranking is not None:
            item_rows, wi = batch_rows(pos, c.row_fraction, self.generator)
            terms.append(rrd_terms(student, self.item_ranking, item_rows, c.lambda_item * wi, "rrd_item", True))
        return ranking_terms(terms)

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = super().state_dict()
        if self.user_ranking is not None:
            state.update(self.user_ranking.state("rrd_user"))
        if self.item_ranking is not None:
            state.update(self.item_ranking.state("rrd_item"))
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(state)
        require_prepared(self, "user_ranking", "rrd").load("rrd_user", state)
        if self.item_ranking is not None:
            self.item_ranking.load("rrd_item", state)
