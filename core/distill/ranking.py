"""One side's teacher lists and their per-epoch RRD samples (interesting / uninteresting entries), shared by
RRD (user and item sides) and DCD's RKD term.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp
import torch

from core.distill.base import require_prepared
from core.distill.sampling import Excluded, excluded_block_rows, gumbel_topk, sample_excluding

logger = logging.getLogger(__name__)


# List entries per block when the excluded keys are built and when interesting entries are drawn: the
# temporaries are those of a block (tens of MB), not of every row.
BLOCK_ENTRIES = 1 << 20


def row_blocks(n_rows: int, m: int) -> range:
    """Starts of the row blocks of a [n_rows, m] table, ~BLOCK_ENTRIES entries each."""
    return range(0, n_rows, max(1, BLOCK_ENTRIES // max(m, 1)))


def excluded_columns(lists: torch.Tensor, observed: sp.spmatrix) -> Excluded:
    """The observed entries and those in ``lists`` [R, M], per row (``Excluded``), on ``lists``' device.

    Built ~BLOCK_ENTRIES entries at a time (never across two of ``Excluded``'s blocks): the temporaries (their
    int64 keys and sort) are those of ~1M entries; at once they were about 3 times the result (12 GB beside 4 GB
    at a million users and M = 500)."""
    n_rows, n_cols = observed.shape
    csr = observed.tocsr()
    dev = lists.device
    block = excluded_block_rows(n_cols)
    keys = torch.empty(csr.nnz + lists.numel(), dtype=torch.int32, device=dev)
    counts = torch.empty(n_rows, dtype=torch.int64, device=dev)
    fill, step = 0, row_blocks(n_rows, lists.shape[1]).step
    for block_start in range(0, n_rows, block):
        block_stop = min(block_start + block, n_rows)
        for start in range(block_start, block_stop, step):
            stop, first = min(start + step, block_stop), start - block_start  # rows counted from the block's start
            obs = csr[start:stop].tocoo()
            obs_keys = torch.from_numpy((obs.row.astype(np.int64) + first) * n_cols + obs.col.astype(np.int64))
            local = torch.arange(first, first + stop - start, device=dev)
            list_keys = (local[:, None] * n_cols + lists[start:stop]).reshape(-1)
            unique = torch.unique(torch.cat([obs_keys.to(dev), list_keys]))  # sorted: by row, then column
            counts[start:stop] = torch.bincount(torch.div(unique, n_cols, rounding_mode="floor") - first,
                                                minlength=stop - start)
            keys[fill : fill + unique.numel()] = unique
            fill += unique.numel()
    ptr = torch.zeros(n_rows + 1, dtype=torch.int64, device=dev)
    torch.cumsum(counts, 0, out=ptr[1:])
    # Fewer than the room only where a list was padded with observed entries (core.distill.topm): a few keys.
    return Excluded(ptr, keys[:fill], n_cols, block)


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
        self.excluded = excluded_columns(lists, observed)
        self.available = n_cols - self.excluded.counts()  # [R]
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
            self.interesting = None  # last epoch's is not kept while this one's is drawn
            interesting = torch.empty((self.n_rows, self.k), dtype=self.lists.dtype, device=dev)
            # In row blocks: gumbel_topk's float32 noise is 3 temporaries of [rows, M] (6 GB at a million users and
            # M = 500) at once. Blocks draw the same numbers as one call (the generator's stream is consumed in row order).
            blocks = row_blocks(self.n_rows, self.lists.shape[1])
            for start in blocks:
                stop = min(start + blocks.step, self.n_rows)
                logits = self.rank_logits.expand(stop - start, -1)
                positions = gumbel_topk(logits, self.k, generator)  # [B, K] sorted: teacher order kept
                interesting[start:stop] = self.lists[start:stop].gather(1, positions)
            self.interesting = interesting
        if self.l == 0:
            self.uninteresting = torch.empty((self.n_rows, 0), dtype=torch.int32, device=dev)
            return
        unint = sample_excluding(self.l, self.excluded, self.available, generator)
        for r in (self.available < self.l).nonzero().squeeze(1).tolist():
            unint[r] = self._short_row(r, generator).to(unint.dtype)
        self.uninteresting = unint

    def _short_row(self, r: int, generator: torch.Generator) -> torch.Tensor:
        dev = self.lists.device
        taken = self.excluded.columns(r)
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
            # Checkpoints from before int32 draws hold int64: read back as this version keeps them.
            self.interesting = state[f"{prefix}.interesting"].to(self.lists.device, self.lists.dtype)
            self.uninteresting = state[f"{prefix}.uninteresting"].to(self.lists.device, torch.int32)
