"""DCD (Dual Correction Distillation, CIKM'21): L = λ_rkd·L_RRD + λ_ucd·L_UCD + λ_icd·L_ICD.

Every ``period`` epochs the student's rank of each teacher-listed entry (within the list) is refreshed for all
users and items at once (chunked, no grad); per mini-batch, p under- and p over-estimated entries are drawn
without replacement ∝ tanh(relu(±ε·(rank_S − rank_T))) + floor for the batch's unique users and positive items.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from core.config import DCDConfig
from core.distill.base import Distiller, ListsCache, SplitLike, batch_rows, require_prepared
from core.distill.losses import RankingTerm, ranking_terms, score_items, score_users
from core.distill.ranking import RankingSide
from core.distill.sampling import EntryWeights, WeightedRowSampler
from core.models.base import Recommender

logger = logging.getLogger(__name__)

#: DCDConfig keys that make DCD compute its terms exactly as the released code does (every row of every batch,
#: fresh samples per batch, one step per batch), in place of the fast defaults.
RELEASED_PROCEDURE: dict[str, float | int] = {"row_fraction": 1.0, "bank": 0, "group": 1}
#: Rows (both sides' w+ and w- rows) sampled at once when a bank is filled: bounds its temporaries.
BANK_ROW_CHUNK = 65_536


def discrepancy(scores: torch.Tensor) -> torch.Tensor:
    """[R, M] student scores of a teacher list (teacher order) -> rank_S − rank_T, both 0-based within the list."""
    r, m = scores.shape
    order = scores.argsort(dim=1, descending=True, stable=True)
    positions = torch.arange(m, device=scores.device)
    rank_s = torch.empty_like(order).scatter_(1, order, positions.expand(r, m))
    return rank_s - positions


def correction_weight(d: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """tanh(relu(scale·d)), float32, scale = ε for w+ (an entry the student ranks d places below the teacher) and
    −ε for w− (above); a [R, 1] tensor scales each row. Computed in place on one float32 copy of ``d``."""
    return d.float().mul_(scale).relu_().tanh_()


def correction_weights(d: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(w+, w-) = (tanh(relu(ε·d)), tanh(relu(−ε·d))): under- and over-estimation weights."""
    return correction_weight(d, eps), correction_weight(d, -eps)


def correction_entry_weights(disc: torch.Tensor, eps: float) -> EntryWeights:
    """The weights a sampler draws from, computed from the discrepancies ``disc`` [R, M] when asked: rows 0..R-1
    are w+ of ``disc``'s rows, rows R..2R-1 their w- (``correction_weights``). Held as float32 rows beside their
    sampler they were 8 of its 22 bytes a list entry, and more than half of a refresh's peak
    (bench/results/dcd-refresh-memory.json)."""
    n, m = disc.shape
    flat = disc.view(-1)
    signed = torch.tensor([eps, -eps], dtype=torch.float32, device=disc.device)

    def weight(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        over = rows >= n  # a w- row
        start = (rows - n * over) * m  # where its discrepancy row begins in ``flat``
        d = flat.index_select(0, (cols + start[:, None]).reshape(-1)).view(cols.shape)
        return correction_weight(d, signed[over.long()][:, None])

    return weight


def _concat(pending: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """A group's rows and their weights, in batch order."""
    return torch.cat([r for r, _ in pending]), torch.cat([w for _, w in pending])


class DCDDistiller(Distiller):
    name = "dcd"
    config_cls = DCDConfig
    config: DCDConfig

    def __init__(self, config: DCDConfig | None = None) -> None:
        super().__init__(config)
        self.user_top: torch.Tensor | None = None  # [U, M] teacher lists (RKD)
        self.item_top: torch.Tensor | None = None
        self.user_list: torch.Tensor | None = None  # [U, Mc] the prefix UCD corrects (Mc = correction_m or M)
        self.item_list: torch.Tensor | None = None  # [I, Mc] the prefix ICD corrects
        self.rkd: RankingSide | None = None
        self.user_disc: torch.Tensor | None = None  # [U, Mu] int16 rank_S - rank_T
        self.item_disc: torch.Tensor | None = None  # [I, Mi]
        self.user_sampler: WeightedRowSampler | None = None
        self.item_sampler: WeightedRowSampler | None = None
        self.user_bank: torch.Tensor | None = None  # [S, 2U, p] positions (rows: w+ then w-)
        self.item_bank: torch.Tensor | None = None  # [S, 2I, p]
        # group > 1: the (rows, per-row weights) each batch of the current group selected, per side
        self._pending_users: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._pending_items: list[tuple[torch.Tensor, torch.Tensor]] = []
        # Training pairs the epoch has left to show ``loss``: an epoch is one pass over data.train's entries,
        # so the batch that brings this to 0 is the epoch's last and closes its group (no fit-loop hook needed).
        self._n_pairs = 0
        self._pairs_left = 0

    def prepare(
        self,
        teacher: Recommender | None,
        data: SplitLike,
        device: torch.device | str = "cpu",
        lists_cache: ListsCache | None = None,
    ) -> None:
        super().prepare(teacher, data, device, lists_cache)
        if teacher is None:
            raise ValueError("dcd needs a teacher")
        self._n_pairs = self._pairs_left = int(data.train.nnz)
        c = self.config
        if not (c.use_rkd or c.use_ucd or c.use_icd):
            raise ValueError("dcd: at least one of use_rkd, use_ucd, use_icd must be true")
        self.user_top, self.item_top = self.teacher_lists(teacher, data, c.m, c.chunk)
        mc = c.correction_m
        self.user_list = self.user_top if mc is None else self.user_top[:, :mc].contiguous()
        self.item_list = self.item_top if mc is None else self.item_top[:, :mc].contiguous()
        for side, top in (("user", self.user_list), ("item", self.item_list)):
            if c.p > top.shape[1]:
                raise ValueError(
                    f"p={c.p} exceeds the {side}-side corrected list length {top.shape[1]} (m, correction_m)"
                )
        if c.use_rkd:
            self.rkd = RankingSide(
                self.user_top, data.train.tocsr(), c.rkd_k, c.rkd_l, c.rkd_t, c.deterministic_topk
            )

    # --- per epoch ----------------------------------------------------------------------------
    def on_epoch_start(self, student: Recommender, epoch: int) -> None:
        require_prepared(self, "user_top", "dcd")
        self._pending_users, self._pending_items = [], []  # a group never spans epochs (keeps resume exact)
        self._pairs_left = self._n_pairs
        if self.rkd is not None:
            self.rkd.resample(self.generator)
        refreshed = (self.config.use_ucd or self.config.use_icd) and (
            epoch % self.config.period == 0 or self.user_disc is None
        )
        if refreshed:
            self.refresh(student)
        # A bank is drawn from the current weights: refilled at every refresh, and every `bank_epochs` epochs.
        if self.config.bank > 0 and (
            refreshed
            or (self.config.bank_epochs is not None and epoch % self.config.bank_epochs == 0)
            or (self.user_bank is None and self.item_bank is None)
        ):
            self.user_bank = self.item_bank = None  # the old banks are not kept while the new ones are drawn
            self.user_bank = self._fill_bank(self.user_sampler)
            self.item_bank = self._fill_bank(self.item_sampler)

    @torch.no_grad()
    def refresh(self, student: Recommender) -> None:
        """Recompute the rank discrepancies of every listed entry, both sides, then the samplers."""
        user_list = require_prepared(self, "user_list", "dcd")
        item_list = require_prepared(self, "item_list", "dcd")
        # What the last refresh built is dropped first: kept through the rebuild, it raised the peak of every
        # refresh after the first by ~30 bytes a list entry (bench/results/dcd-refresh-memory.json).
        self.user_sampler = self.item_sampler = None
        self.user_bank = self.item_bank = None
        self.user_disc = self.item_disc = None
        was_training = student.training
        student.eval()
        try:
            self.user_disc = self._discrepancies(user_list, lambda rows, lists: student.score(rows, lists))
            self.item_disc = self._discrepancies(item_list, lambda rows, lists: student.score_users(lists, rows))
        finally:
            student.train(was_training)
        self._build_samplers()

    def _discrepancies(
        self, lists: torch.Tensor, score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """rank_S - rank_T of every entry of ``lists`` [R, M], ``score(rows, their lists)`` giving the student's
        scores, chunk by chunk into one int16 tensor (int32 from M = 2^15, whose ranks int16 cannot hold)."""
        n, m = lists.shape
        out = torch.empty((n, m), dtype=torch.int16 if m < 2**15 else torch.int32, device=self.device)
        ch = self.config.chunk
        for s in range(0, n, ch):
            rows = torch.arange(s, min(s + ch, n), device=self.device)
            out[s : s + ch] = discrepancy(score(rows, lists[s : s + ch]))
        return out

    def _build_samplers(self) -> None:
        c = self.config
        self.user_sampler = self._sampler(self.user_disc) if c.use_ucd else None
        self.item_sampler = self._sampler(self.item_disc) if c.use_icd else None

    def _sampler(self, disc: torch.Tensor | None) -> WeightedRowSampler | None:
        """The sampler of one side's w+ and w- rows (2R rows over ``disc`` [R, M])."""
        if disc is None:
            return None
        weight = correction_entry_weights(disc, self.config.eps)
        return WeightedRowSampler(weight, (2 * disc.shape[0], disc.shape[1]), self.config.p, self.config.floor,
                                  self.device)

    def _fill_bank(self, sampler: WeightedRowSampler | None) -> torch.Tensor | None:
        if sampler is None:
            return None
        n_rows = sampler.n_rows
        small = torch.int16 if sampler.m < 2**15 else torch.int32
        bank = torch.empty((self.config.bank, n_rows, sampler.k), dtype=small, device=self.device)
        for s in range(self.config.bank):
            # Row chunks: a sample's rejection draws are [rows, ~k/acceptance] float64 temporaries, ~17 GB over
            # the 2M rows of a million users at once. A data set within one chunk draws exactly as unchunked.
            for start in range(0, n_rows, BANK_ROW_CHUNK):
                rows = torch.arange(start, min(start + BANK_ROW_CHUNK, n_rows), device=self.device)
                bank[s, start : start + len(rows)] = sampler.sample(rows, self.generator)
        return bank

    # --- per batch ----------------------------------------------------------------------------
    def _draw(
        self, sampler: WeightedRowSampler, bank: torch.Tensor | None, top: torch.Tensor, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(under [B, p] in teacher order, over [B, p]) list entries for the given rows; with
        ``correction_order="teacher"``, (all 2p in teacher order [B, 2p], an empty [B, 0])."""
        b, (n, m) = rows.shape[0], top.shape
        both = torch.cat([rows, rows + n])  # [2B]: w+ rows, then w- rows
        if bank is None:
            pos = sampler.sample(both, self.generator)  # [2B, p]
        else:
            pick = torch.randint(0, bank.shape[0], (2 * b,), generator=self.generator, device=self.device)
            # index_select on flat views: several times cheaper than advanced indexing on CPU.
            pos = bank.view(-1, bank.shape[2]).index_select(0, pick * (2 * n) + both).long()
        if self.config.correction_order == "teacher":
            # One list of the 2p sampled positions in teacher order (under- and over-estimated together).
            merged = torch.cat([pos[:b], pos[b:]], dim=1).sort(dim=1).values
            flat = top.view(-1).index_select(0, (rows[:, None] * m + merged).view(-1)).view(b, -1)
            return flat, flat[:, :0]
        flat = top.view(-1).index_select(0, (rows.repeat(2)[:, None] * m + pos).view(-1)).view(2 * b, -1)
        return flat[:b], flat[b:]

    def loss(
        self, student: Recommender, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
        user_rows, wu = batch_rows(users, c.row_fraction, self.generator)  # the same users for RKD and UCD
        if c.group == 1:
            return self._terms(student, user_rows, wu, pos, None, 1.0)
        self._pending_users.append((user_rows, torch.full(user_rows.shape, wu, device=user_rows.device)))
        if c.use_icd:
            item_rows, wi = batch_rows(pos, c.row_fraction, self.generator)
            self._pending_items.append((item_rows, torch.full(item_rows.shape, wi, device=item_rows.device)))
        self._pairs_left -= users.shape[0]
        if len(self._pending_users) < c.group and self._pairs_left != 0:
            return torch.zeros((), device=users.device), {}
        u_rows, u_w = _concat(self._pending_users)
        i_rows, i_w = _concat(self._pending_items) if c.use_icd else (None, None)
        self._pending_users, self._pending_items = [], []
        return self._terms(student, u_rows, u_w, pos, i_rows, i_w)

    def _terms(
        self,
        student: Recommender,
        user_rows: torch.Tensor,
        wu: float | torch.Tensor,
        pos: torch.Tensor,
        item_rows: torch.Tensor | None,
        wi: float | torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The weighted terms of the given rows. ``item_rows`` None: ICD's rows are drawn from ``pos`` here
        (after the user side, keeping group = 1's generator order)."""
        c = self.config
        user_list = require_prepared(self, "user_list", "dcd")
        terms: list[RankingTerm] = []
        # RKD and UCD score the same users: one [B, K + L + 2p] gather, split back into named parts.
        parts: dict[str, torch.Tensor] = {}
        if c.use_rkd:
            rkd = require_prepared(self, "rkd", "dcd")
            parts["rkd_ordered"], parts["rkd_others"] = rkd.samples(user_rows)
        if c.use_ucd:
            sampler = require_prepared(self, "user_sampler", "dcd (on_epoch_start)")
            parts["ucd_under"], parts["ucd_over"] = self._draw(sampler, self.user_bank, user_list, user_rows)
        if parts:
            cols = torch.cat(list(parts.values()), dim=1)
            split = score_items(student, user_rows, cols).split([x.shape[1] for x in parts.values()], dim=1)
            s = dict(zip(parts, split, strict=True))
            if c.use_rkd:
                terms.append(RankingTerm("rkd", s["rkd_ordered"], s["rkd_others"], c.lambda_rkd * wu))
            if c.use_ucd:
                terms.append(RankingTerm("ucd", s["ucd_under"], s["ucd_over"], c.lambda_ucd * wu))
        if c.use_icd:
            if item_rows is None:
                rows, wi = batch_rows(pos, c.row_fraction, self.generator)
            else:
                rows = item_rows
            item_list = require_prepared(self, "item_list", "dcd")
            sampler = require_prepared(self, "item_sampler", "dcd (on_epoch_start)")
            under, over = self._draw(sampler, self.item_bank, item_list, rows)
            si = score_users(student, torch.cat([under, over], dim=1), rows)  # [B, 2p]
            k = under.shape[1]
            terms.append(RankingTerm("icd", si[:, :k], si[:, k:], c.lambda_icd * wi))
        return ranking_terms(terms)

    # --- resume -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        state = super().state_dict()
        if self.user_disc is not None and self.item_disc is not None:
            state["dcd.user_disc"] = self.user_disc
            state["dcd.item_disc"] = self.item_disc
        if self.user_bank is not None and self.item_bank is not None:
            state["dcd.user_bank"] = self.user_bank
            state["dcd.item_bank"] = self.item_bank
        if self.rkd is not None:
            state.update(self.rkd.state("rkd_user"))
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(state)
        require_prepared(self, "user_top", "dcd")
        if "dcd.user_disc" in state:
            self.user_disc = state["dcd.user_disc"].to(self.device)
            self.item_disc = state["dcd.item_disc"].to(self.device)
            self._build_samplers()
        if "dcd.user_bank" in state:
            self.user_bank = state["dcd.user_bank"].to(self.device)
            self.item_bank = state["dcd.item_bank"].to(self.device)
        if self.rkd is not None:
            self.rkd.load("rkd_user", state)
