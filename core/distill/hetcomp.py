"""HetComp (Kang et al., WWW 2023, "Distillation from Heterogeneous Models for Top-K Recommendation").

The student learns from an ensemble of heterogeneous teachers, not from their final rankings at once but along
each teacher's training trajectory: early checkpoints rank by broad, easy patterns; later ones are sharper.
For every user and teacher, a stage (a checkpoint) is selected; the ensemble's target is the top-``k`` of the
summed rank importances exp(-rank / T) of the selected stages' lists. Every ``period`` epochs, dynamic knowledge
construction (DKC) moves a teacher to its next stage for a user unless the student is still steadily closing
its distance (1 - NDCG) to that next stage. Before every teacher reaches its last stage the loss asks only that
the target items (and the user's ensemble-ranked observed items) rank above everything else ("overall"); then
it asks for their order too (listwise, Plackett-Luce).

The trajectories are recorded while the teachers train (``core.jobs.trajectory``); this module only uses them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import scipy.sparse as sp
import torch

from core.config import HetCompConfig
from core.distill.base import Distiller, ListsCache, SplitLike, batch_rows, require_prepared
from core.distill.topm import scored_chunks, training_entries
from core.models.base import Recommender

logger = logging.getLogger(__name__)

_CLAMP = 40.0  # the student's scores are clamped before exp (as in the authors' code): no overflow


@dataclass
class Trajectory:
    """One teacher: per stage (easy to hard) its top-M unobserved items per user [U, M] in its order, and the
    user's observed items in the final stage's order [U, P] (-1 pads users with fewer)."""

    name: str
    stages: list[torch.Tensor]
    observed: torch.Tensor


def importance(lists: torch.Tensor, n_items: int, temperature: float) -> torch.Tensor:
    """[R, M] ranked lists -> [R, n_items] importances exp(-rank / T) (0 for unlisted items)."""
    rows, m = lists.shape
    weights = torch.exp(-torch.arange(m, device=lists.device, dtype=torch.float32) / temperature)
    out = torch.zeros((rows, n_items), device=lists.device)
    valid = lists >= 0
    out.scatter_add_(1, lists.clamp_min(0), weights.expand(rows, m) * valid)
    return out


def list_ndcg(student: torch.Tensor, target: torch.Tensor, n_items: int) -> torch.Tensor:
    """NDCG of the student's top lists [R, k] against the target lists' items [R, k'] (membership; the gain of
    a hit at student position t is 2^exp(-t/10) - 1, as the authors' DKC)."""
    rows, k = student.shape
    member = torch.zeros((rows, n_items), dtype=torch.bool, device=student.device)
    member.scatter_(1, target.clamp_min(0), target >= 0)
    pos = torch.arange(k, device=student.device, dtype=torch.float32)
    gain = (2.0 ** torch.exp(-pos / 10.0) - 1.0) / torch.log2(pos + 2.0)
    dcg = (member.gather(1, student).float() * gain).sum(1)
    return dcg / gain.sum()


class HetCompDistiller(Distiller):
    name = "hetcomp"
    config_cls = HetCompConfig

    def __init__(self, config: HetCompConfig | None = None) -> None:
        super().__init__(config)
        self.config: HetCompConfig
        self.trajectories: list[Trajectory] | None = None
        self.train_csr: sp.csr_matrix | None = None
        self.stage: torch.Tensor | None = None  # [T, U] selected stage per teacher and user
        self.last_dist: torch.Tensor | None = None  # [T, U] distance to the next stage at the last DKC (-1: none yet)
        self.targets: torch.Tensor | None = None  # [U, k] the ensemble's target items
        self.observed: torch.Tensor | None = None  # [U, P] observed items in ensemble order (-1 pads)
        self._final = False  # every stage selected is the last (set by _select)

    def use_trajectories(self, trajectories: list[Trajectory]) -> None:
        """The ensemble (call before ``prepare``); without it ``prepare`` uses the given teacher alone, its final
        lists at every stage."""
        if not trajectories:
            raise ValueError("hetcomp needs at least one teacher trajectory")
        counts = {len(t.stages) for t in trajectories}
        if len(counts) != 1:
            raise ValueError(f"every teacher trajectory needs the same number of stages, got {sorted(counts)}")
        self.trajectories = trajectories

    def prepare(
        self,
        teacher: Recommender | None,
        data: SplitLike,
        device: torch.device | str = "cpu",
        lists_cache: ListsCache | None = None,
    ) -> None:
        super().prepare(teacher, data, device, lists_cache)
        c = self.config
        if self.trajectories is None:
            if teacher is None:
                raise ValueError("hetcomp needs a teacher or trajectories")
            top = top_unobserved(teacher, data.train.tocsr(), min(c.k, data.train.shape[1] - 1), c.chunk, self.device)
            observed = observed_order(teacher, data.train, c.positives, c.chunk)
            self.trajectories = [Trajectory(teacher.name, [top] * c.stages, observed)]
        self.trajectories = [
            Trajectory(t.name, [s.to(self.device) for s in t.stages], t.observed.to(self.device)) for t in self.trajectories
        ]
        self.train_csr = data.train.tocsr()
        n_users = self.train_csr.shape[0]
        n_t = len(self.trajectories)
        self.stage = torch.zeros((n_t, n_users), dtype=torch.int64, device=self.device)
        self.last_dist = torch.full((n_t, n_users), -1.0, device=self.device)
        self.observed = self._ensemble_observed()
        self._select()

    # ------------------------------------------------------------------------------------------------ targets
    @property
    def n_stages(self) -> int:
        return len(require_prepared(self, "trajectories", "hetcomp")[0].stages)

    @property
    def final(self) -> bool:
        """Every teacher at its last stage for every user: the hard (listwise) phase."""
        require_prepared(self, "stage", "hetcomp")
        return self._final

    def _select(self) -> None:
        """After the selected stages change: the ensemble's targets, and whether the hard phase has begun (read
        back once here, not at every batch: on an accelerator each read waits for its queue to drain)."""
        self.targets = self._ensemble_targets()
        self._final = bool((require_prepared(self, "stage", "hetcomp") == self.n_stages - 1).all())

    def _ensemble_targets(self) -> torch.Tensor:
        trajectories = require_prepared(self, "trajectories", "hetcomp")
        stage = require_prepared(self, "stage", "hetcomp")
        csr = require_prepared(self, "train_csr", "hetcomp")
        n_users, n_items = csr.shape
        k = min(self.config.k, n_items - 1)
        out = torch.empty((n_users, k), dtype=torch.int64, device=self.device)
        for start in range(0, n_users, self.config.chunk):
            stop = min(start + self.config.chunk, n_users)
            total = torch.zeros((stop - start, n_items), device=self.device)
            for t, traj in enumerate(trajectories):
                # Each user's lists from the stage selected for her: stack the stages, pick per row.
                stacked = torch.stack([s[start:stop] for s in traj.stages])  # [S, R, M]
                rows = torch.arange(stop - start, device=self.device)
                total += importance(stacked[stage[t, start:stop], rows], n_items, self.config.temperature)
            total[training_entries(csr, start, stop, self.device)] = -1.0
            out[start:stop] = total.topk(k, dim=1).indices
        return out

    def _ensemble_observed(self) -> torch.Tensor:
        """Each user's observed items ordered by the summed importance of their rank in every teacher's order."""
        trajectories = require_prepared(self, "trajectories", "hetcomp")
        csr = require_prepared(self, "train_csr", "hetcomp")
        n_users, n_items = csr.shape
        p = min(self.config.positives, trajectories[0].observed.shape[1])
        out = torch.full((n_users, p), -1, dtype=torch.int64, device=self.device)
        for start in range(0, n_users, self.config.chunk):
            stop = min(start + self.config.chunk, n_users)
            total = torch.zeros((stop - start, n_items), device=self.device)
            for traj in trajectories:
                total += importance(traj.observed[start:stop], n_items, self.config.temperature)
            vals, idx = total.topk(p, dim=1)
            out[start:stop] = torch.where(vals > 0, idx, -1)
        return out

    # ------------------------------------------------------------------------------------------------ DKC
    def update_stages(self, student: Recommender, epoch: int) -> None:
        """DKC: per teacher and user, move to the next stage unless the student's distance to it shrank by a
        factor in [1, threshold] since the last update (still learning the current stage)."""
        trajectories = require_prepared(self, "trajectories", "hetcomp")
        stage = require_prepared(self, "stage", "hetcomp")
        last = require_prepared(self, "last_dist", "hetcomp")
        c = self.config
        csr = require_prepared(self, "train_csr", "hetcomp")
        n_items = csr.shape[1]
        k = min(c.ndcg_k, n_items - 1, trajectories[0].stages[0].shape[1])
        mine = top_unobserved(student, csr, k, c.chunk, self.device)
        users = torch.arange(stage.shape[1], device=self.device)
        threshold = c.alpha * 0.995 ** (epoch // c.period)
        top = self.n_stages - 1
        for t, traj in enumerate(trajectories):
            stacked = torch.stack([s[:, :k] for s in traj.stages])  # [S, U, k]
            nxt = (stage[t] + 1).clamp_max(top)
            dist = 1.0 - list_ndcg(mine, stacked[nxt, users], n_items)
            first = last[t] < 0
            ratio = last[t] / dist.clamp_min(1e-6)
            move = ~first & (stage[t] < top) & ((ratio > threshold) | (ratio < 1.0))
            stage[t] = torch.where(move, nxt, stage[t])
            after = (stage[t] + 1).clamp_max(top)
            new_dist = 1.0 - list_ndcg(mine, stacked[after, users], n_items)
            last[t] = torch.where(move, new_dist, torch.where(first, dist, last[t]))
        self._select()

    def on_epoch_start(self, student: Recommender, epoch: int) -> None:
        if epoch > 0 and epoch % self.config.period == 0 and not self.final:
            self.update_stages(student, epoch)
            if self.final:
                logger.info("hetcomp: hard phase from epoch %d", epoch + 1)

    def may_stop(self) -> bool:
        return self.final or not self.config.patience_from_hard

    # ------------------------------------------------------------------------------------------------ loss
    def loss(
        self, student: Recommender, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        targets = require_prepared(self, "targets", "hetcomp")
        observed = require_prepared(self, "observed", "hetcomp")
        csr = require_prepared(self, "train_csr", "hetcomp")
        # A random share of the batch's users (row_fraction) gets the term, weighted back to the all-rows sum:
        # each term scores every item for its user, and a user sits in many batches of an epoch.
        rows, weight = batch_rows(users, self.config.row_fraction, self.generator)
        scores = student.full_scores(rows).clamp(-_CLAMP, _CLAMP)  # [B, N]
        top, obs = targets[rows], observed[rows]
        valid = obs >= 0
        exp = scores.exp()
        block = csr[rows.cpu().numpy()].tocoo()  # the batch's users, in the order of ``rows``
        seen = torch.zeros_like(scores, dtype=torch.bool)
        seen[torch.from_numpy(block.row).long().to(scores.device), torch.from_numpy(block.col).long().to(scores.device)] = True
        unobserved_mass = (exp * ~seen).sum(1, keepdim=True)  # [B, 1]
        s_obs = scores.gather(1, obs.clamp_min(0))
        if not self.final:
            s_top = scores.gather(1, top)
            rest = unobserved_mass - s_top.exp().sum(1, keepdim=True)  # everything outside the target
            listed = torch.cat([s_obs, s_top], 1)
            keep = torch.cat([valid, torch.ones_like(top, dtype=torch.bool)], 1)
            terms = listed - torch.log((rest + listed.exp()).clamp_min(1e-5))
            part = -(terms * keep).sum() * weight
            return self.config.lambda_easy * part, {"hetcomp_easy": part.detach()}
        half = max(1, top.shape[1] // 2)
        tenth = max(1, top.shape[1] // 10)
        part = _listwise(scores, obs, valid, unobserved_mass, top[:, :half])
        part_top = _listwise(scores, top[:, :half], torch.ones_like(top[:, :half], dtype=torch.bool),
                             unobserved_mass, top[:, :half])
        part_sub = _listwise(scores, top[:, :tenth], torch.ones_like(top[:, :tenth], dtype=torch.bool),
                             unobserved_mass, top[:, :tenth])
        total = (part + (part_top + part_sub) / 2) * weight
        return self.config.lambda_hard * total, {"hetcomp_hard": total.detach()}

    # ------------------------------------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, torch.Tensor]:
        state = super().state_dict()
        state["stage"] = require_prepared(self, "stage", "hetcomp").cpu().clone()
        state["last_dist"] = require_prepared(self, "last_dist", "hetcomp").cpu().clone()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state_dict(state)
        for key in ("stage", "last_dist"):
            if key not in state:
                raise KeyError(f"hetcomp state is missing {key!r}")
        self.stage = state["stage"].to(self.device).long()
        self.last_dist = state["last_dist"].to(self.device).float()
        self._select()


def _listwise(scores: torch.Tensor, ranked: torch.Tensor, valid: torch.Tensor, unobserved_mass: torch.Tensor,
              excluded: torch.Tensor) -> torch.Tensor:
    """Plackett-Luce negative log-likelihood of ``ranked`` [B, L] (in order; invalid entries skipped) ranked above
    each other in that order and above the unobserved items outside ``excluded``."""
    s = scores.gather(1, ranked.clamp_min(0))
    e = s.exp() * valid
    below = unobserved_mass - scores.gather(1, excluded).exp().sum(1, keepdim=True)
    tail = e.flip(1).cumsum(1).flip(1)  # sum over this and every later entry
    terms = s - torch.log((tail + below).clamp_min(1e-5))
    return -(terms * valid).sum()


@torch.no_grad()
def _top_per_user(model: Recommender, train: sp.spmatrix, k: int, chunk: int, device: torch.device | str,
                  observed: bool) -> torch.Tensor:
    """[U, k] each user's top-``k`` items by ``model`` among her training items (``observed``; -1 pads users
    with fewer) or among the others, chunk by chunk of users."""
    csr = sp.csr_matrix(train)
    n_users, n_items = csr.shape
    out = torch.full((n_users, k), -1, dtype=torch.int64, device=device)
    for start, stop, scores, rows, cols in scored_chunks(model, csr, chunk, device):
        if observed:
            keep = torch.full_like(scores, -math.inf)
            keep[rows, cols] = 0.0
            vals, idx = (scores + keep).topk(min(k, n_items), dim=1)
            out[start:stop, : idx.shape[1]] = torch.where(torch.isfinite(vals), idx, -1)
        else:
            scores[rows, cols] = -torch.inf
            out[start:stop] = scores.topk(k, dim=1).indices
    return out


def observed_order(model: Recommender, train: sp.spmatrix, p: int, chunk: int) -> torch.Tensor:
    """[U, p] each user's observed items in ``model``'s order (-1 pads users with fewer than ``p``), on the CPU."""
    return _top_per_user(model, train, p, chunk, "cpu", observed=True)


def top_unobserved(model: Recommender, train: sp.csr_matrix, k: int, chunk: int,
                   device: torch.device | str = "cpu") -> torch.Tensor:
    """[U, k] each user's top-``k`` unobserved items by ``model`` (its training items excluded), best first."""
    return _top_per_user(model, train, k, chunk, device, observed=False)
