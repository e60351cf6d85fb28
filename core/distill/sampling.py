"""Vectorised samplers without replacement: Gumbel top-k, an exact fast sampler for fixed per-row weights
(used per mini-batch by DCD) and uniform sampling outside an excluded set (RRD's uninteresting items).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch


def gumbel_topk(log_weights: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """k column positions per row drawn without replacement ∝ exp(log_weights), sorted ascending.

    One top-k over Gumbel-perturbed log-weights has the same distribution as sequential sampling
    without replacement (torch.multinomial(..., replacement=False)).  [R, M] -> [R, k] int64.
    """
    if k > log_weights.shape[1]:
        raise ValueError(f"k={k} exceeds the {log_weights.shape[1]} columns available")
    u = torch.rand(log_weights.shape, generator=generator, device=log_weights.device, dtype=log_weights.dtype)
    gumbel = -torch.log(-torch.log(u.clamp_min_(1e-20)))
    return (log_weights + gumbel).topk(k, dim=1).indices.sort(dim=1).values


def _take_first_distinct(
    pos: torch.Tensor, valid: torch.Tensor, need: torch.Tensor, chosen: torch.Tensor
) -> torch.Tensor:
    """Mark in ``chosen`` [A, M+1] the first ``need`` distinct valid draws of each row, in draw order.

    ``pos`` [A, D] column draws, ``valid`` [A, D] accepted and not chosen before. Returns ``keep`` [A, D], the
    draws taken. Keeping the first distinct values of i.i.d. draws is exactly sequential sampling without
    replacement.
    """
    a, d = pos.shape
    m1 = chosen.shape[1]
    cand = torch.where(valid, pos, m1 - 1)  # invalid draws land on the sentinel column
    # The draw-order table is [A, M+1]: int16 where D allows (4x less memory to fill and scatter into).
    small = torch.int16 if d < 2**15 else torch.int64
    order = torch.arange(d, device=pos.device, dtype=small).expand(a, d)
    first = torch.full((a, m1), d, dtype=small, device=pos.device)
    first.scatter_reduce_(1, cand, order, reduce="amin")
    is_first = valid & (first.gather(1, cand) == order)
    keep = is_first & (is_first.cumsum(1) <= need[:, None])
    chosen.scatter_(1, torch.where(keep, pos, m1 - 1), True)
    return keep


def _place(out: torch.Tensor, rows: torch.Tensor, count: torch.Tensor, pos: torch.Tensor, keep: torch.Tensor) -> None:
    """Write the kept draws of ``rows`` into ``out`` [R, k + 1] after each row's ``count`` entries (column k is a
    sink for the draws not kept)."""
    k = out.shape[1] - 1
    slot = torch.where(keep, count[:, None] + keep.cumsum(1) - 1, k)
    if rows.numel() == out.shape[0]:
        out.scatter_(1, slot, pos)
    else:
        sub = out.index_select(0, rows)
        sub.scatter_(1, slot, pos)
        out.index_copy_(0, rows, sub)


def _distinct_rounds(
    n_rows: int,
    n_cols: int,
    k: int,
    device: torch.device,
    draw: Callable[[torch.Tensor, torch.Tensor, bool], tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """k distinct columns per row, sorted ascending. Rounds of ``draw(active, need, first_round)`` ->
    (columns [A, D], accepted [A, D]) for the rows still short; each row keeps its first distinct accepted
    draws. A chosen-bitmap [n_rows, n_cols + 1] (last column: sentinel) rules out repeats across rounds."""
    chosen = torch.zeros((n_rows, n_cols + 1), dtype=torch.bool, device=device)
    count = torch.zeros(n_rows, dtype=torch.int64, device=device)
    out = torch.empty((n_rows, k + 1), dtype=torch.int64, device=device)  # the taken columns, in draw order
    active = torch.arange(n_rows, device=device)
    first_round = True
    while active.numel():
        have = count.index_select(0, active)
        need = k - have
        cols, ok = draw(active, need, first_round)
        if first_round:  # every row is active and nothing is chosen yet: work on ``chosen`` in place
            keep = _take_first_distinct(cols, ok, need, chosen)
        else:
            sub = chosen.index_select(0, active)
            ok &= ~sub.gather(1, cols)
            keep = _take_first_distinct(cols, ok, need, sub)
            chosen.index_copy_(0, active, sub)
        _place(out, active, have, cols, keep)
        count.index_add_(0, active, keep.sum(1))
        active = active[count.index_select(0, active) < k]
        first_round = False
    # Ascending columns per row (what reading the chosen-bitmap row by row gives), without scanning it.
    return out[:, :k].sort(dim=1).values


# Rows per block when a sampler is built: its temporaries are [block, M], not [R, M].
BUILD_ROW_CHUNK = 4096
# First-round rejection draws taken at once (rows x draws a row): bounds their temporaries to ~2 GB. Above
# every MovieLens bank (2 x 6,040 rows x at most 1,044 draws), so their samples are unchanged.
MAX_DRAWS = 1 << 24

#: ``weight(rows [A], cols [A, D])`` -> float32 [A, D]: the weights of the entries (row, col), non-negative.
EntryWeights = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def table_weights(weights: torch.Tensor) -> EntryWeights:
    """The entry weights of a dense [R, M] table."""
    m, flat = weights.shape[1], weights.reshape(-1)

    def weight(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return flat.index_select(0, (rows[:, None] * m + cols).reshape(-1)).view(cols.shape)

    return weight


class WeightedRowSampler:
    """Exact sampling of k positions per row without replacement ∝ (weights + floor), for fixed weights.

    Rows with at least ``2k`` positive weights use rejection sampling under a two-part envelope
    (positive slots at the row maximum, zero slots at the floor) followed by first-distinct selection;
    the others use one Gumbel top-k. Both are exact; the first is several times cheaper per batch.

    The weights are not held: ``weight`` gives those of the entries a build block or a draw needs, so a caller
    whose weights are a function of something smaller (DCD's int16 rank discrepancies) holds only that. What
    the sampler keeps is 2 bytes an entry (int16 slot positions; 4 from 2^15 columns) and a few numbers a row.
    """

    def __init__(self, weight: EntryWeights, shape: tuple[int, int], k: int, floor: float,
                 device: torch.device | str = "cpu") -> None:
        n_rows, m = shape
        if not 0 < k <= m:
            raise ValueError(f"k must be in 1..{m} (the list length), got {k}")
        if floor <= 0:
            raise ValueError(f"floor must be positive so that every row has k candidates, got {floor}")
        self.weight = weight
        self.n_rows, self.m, self.k = n_rows, m, k
        self.floor = float(floor)
        self.cols = torch.arange(m, device=device)
        # Positive slots first, then zero slots, each in position order, built in row blocks: the argsort's int64
        # [R, M] result was the largest temporary of a refresh (bench/results/dcd-refresh-memory.json).
        self.slot_pos = torch.empty((n_rows, m), dtype=torch.int16 if m < 2**15 else torch.int32, device=device)
        self.n_pos = torch.empty(n_rows, dtype=torch.int64, device=device)  # [R]
        wmax = torch.empty(n_rows, dtype=torch.float32, device=device)
        true_mass = torch.empty(n_rows, dtype=torch.float64, device=device)
        for start in range(0, n_rows, BUILD_ROW_CHUNK):
            stop = min(start + BUILD_ROW_CHUNK, n_rows)
            block = self.row_weights(torch.arange(start, stop, device=device))
            if bool(block.min() < 0):
                raise ValueError("weights must be non-negative")
            positive = block > 0
            self.n_pos[start:stop] = positive.sum(1)
            self.slot_pos[start:stop] = torch.argsort((~positive).to(torch.int8), dim=1, stable=True)
            wmax[start:stop] = block.max(1).values
            true_mass[start:stop] = block.sum(1, dtype=torch.float64)  # no float64 copy of the weights
        self.wmax = (wmax + self.floor).double()  # [R]
        self.pos_mass = self.n_pos.double() * self.wmax
        self.total = self.pos_mass + (m - self.n_pos).double() * self.floor
        self.use_gumbel = self.n_pos < 2 * k
        # Expected acceptance of one draw, used to size the first round.
        self.accept = ((true_mass + m * self.floor) / self.total).float()

    @classmethod
    def of_table(cls, weights: torch.Tensor, k: int, floor: float) -> WeightedRowSampler:
        """A sampler over a dense [R, M] table of weights (which it then holds)."""
        if weights.dim() != 2:
            raise ValueError(f"weights must be [R, M], got shape {tuple(weights.shape)}")
        return cls(table_weights(weights), (weights.shape[0], weights.shape[1]), k, floor, weights.device)

    def row_weights(self, rows: torch.Tensor) -> torch.Tensor:
        """[len(rows), M] float32: every weight of the given rows."""
        return self.weight(rows, self.cols.expand(rows.shape[0], self.m))

    def sample(self, rows: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """rows [B] -> [B, k] positions sorted ascending; each row takes the path ``use_gumbel`` [R] picks."""
        out = torch.empty((rows.shape[0], self.k), dtype=torch.int64, device=rows.device)
        gmask = self.use_gumbel.index_select(0, rows)
        g_idx = gmask.nonzero().squeeze(1)
        if g_idx.numel():
            logw = torch.log(self.row_weights(rows[g_idx]) + self.floor)
            out[g_idx] = gumbel_topk(logw, self.k, generator)
        r_idx = (~gmask).nonzero().squeeze(1)
        if r_idx.numel():
            out[r_idx] = self._rejection(rows[r_idx], generator)
        return out

    def _rejection(self, rows: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        k, m = self.k, self.m
        acc = float(self.accept[rows].min().clamp_min(0.05))
        if rows.numel() > 1 and rows.numel() * (1.3 * k / acc) > MAX_DRAWS:
            # Halves until a round's draws fit: each draw holds ~100 bytes of temporaries, and one row of low
            # acceptance sizes every row's draws (65,536 rows of a DCD bank at the 0.05 floor: ~7 GB by the
            # shapes; a 10M-interaction job at m = 500 was killed out of memory around its first bank). Rows within
            # the bound draw as they always did.
            half = rows.numel() // 2
            return torch.cat([self._rejection(rows[:half], generator), self._rejection(rows[half:], generator)])

        def draw(active: torch.Tensor, need: torch.Tensor, first_round: bool) -> tuple[torch.Tensor, torch.Tensor]:
            r = rows.index_select(0, active)
            n_draw = math.ceil((1.3 * k if first_round else 2.0 * float(need.max())) / acc) + 4
            x = torch.rand((r.shape[0], n_draw), generator=generator, device=r.device, dtype=torch.float64)
            # index_select rather than advanced indexing: several times cheaper per call on CPU.
            x.mul_(self.total.index_select(0, r)[:, None])
            pm = self.pos_mass.index_select(0, r)[:, None]
            wmax = self.wmax.index_select(0, r)[:, None]
            npos = self.n_pos.index_select(0, r)[:, None]
            in_pos = x < pm
            s_pos = torch.minimum((x / wmax).long(), npos - 1)
            s_zero = torch.minimum(npos + ((x - pm) / self.floor).long(), torch.full_like(npos, m - 1))
            slot = torch.where(in_pos, s_pos, s_zero)  # [A, D]
            flat = r[:, None] * m + slot
            coin = x - s_pos.double() * wmax
            pos = self.slot_pos.view(-1).index_select(0, flat.view(-1)).view_as(flat).long()
            ok = ~in_pos | (coin < (self.weight(r, pos) + self.floor).double())
            return pos, ok

        return _distinct_rounds(rows.shape[0], m, k, rows.device, draw)


#: Rows per block of ``Excluded`` (and per chunk of ``sample_excluding``), at most: each block's keys are int32.
EXCLUDED_BLOCK_ROWS = 2048


def excluded_block_rows(n_cols: int) -> int:
    """Rows per block whose keys (row within the block) * n_cols + col fit in int32."""
    return max(1, min(EXCLUDED_BLOCK_ROWS, (2**31 - 1) // max(n_cols, 1)))


class Excluded(NamedTuple):
    """Per row, the columns it must not draw, as sorted int32 keys local to blocks of ``block_rows`` rows:
    (row - block start) * n_cols + col; row r's are ``keys[ptr[r]:ptr[r + 1]]``. As one global int64 key each
    they were 8 B a teacher-list entry (4 GB of a 10M-interaction DCD job at M = 500); a block's keys are
    searched as they are, with no conversion."""

    ptr: torch.Tensor  # [R + 1] int64
    keys: torch.Tensor  # [nnz] int32, sorted within each block
    n_cols: int
    block_rows: int

    def counts(self) -> torch.Tensor:
        return self.ptr[1:] - self.ptr[:-1]

    def columns(self, r: int) -> torch.Tensor:
        """Row ``r``'s excluded columns (int64)."""
        return self.keys[int(self.ptr[r]) : int(self.ptr[r + 1])].long() - (r % self.block_rows) * self.n_cols


def sample_excluding(
    k: int, excluded: Excluded, available: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """k distinct columns per row, uniform among the columns ``excluded`` does not hold for it.

    ``available`` [R]: the number of allowed columns per row (rows with fewer than k must be handled by the
    caller and are skipped here, left as -1). int32 [R, k], as the teacher lists store columns: an epoch's
    draws are held through it (int64 was 320 MB at a million users and L = 40).
    """
    n_rows, n_cols, dev = excluded.ptr.numel() - 1, excluded.n_cols, excluded.ptr.device
    out = torch.full((n_rows, k), -1, dtype=torch.int32, device=dev)
    # Chunks of one block: the "already chosen" bitmap is a block x n_cols, and the keys searched a block's.
    for start in range(0, n_rows, excluded.block_rows):
        stop = min(start + excluded.block_rows, n_rows)
        rows = torch.arange(start, stop, device=dev)
        rows = rows[available[rows] >= k]
        if rows.numel():
            keys = excluded.keys[int(excluded.ptr[start]) : int(excluded.ptr[stop])]
            chunk = _excluding_chunk(rows - start, n_cols, k, keys, available.index_select(0, rows), generator)
            out[rows] = chunk.to(out.dtype)
    return out


def _excluding_chunk(
    rows: torch.Tensor,
    n_cols: int,
    k: int,
    excluded_keys: torch.Tensor,
    available: torch.Tensor,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """``rows`` within their block, ``excluded_keys`` the block's, ``available`` [len(rows)]."""
    frac = max(float((available.double() / n_cols).min()), 0.02)
    last = max(excluded_keys.numel() - 1, 0)

    def draw(active: torch.Tensor, need: torch.Tensor, first_round: bool) -> tuple[torch.Tensor, torch.Tensor]:
        n_draw = math.ceil(1.5 * float(need.max()) / frac) + 4
        cols = torch.randint(0, n_cols, (active.shape[0], n_draw), generator=generator, device=rows.device)
        if not excluded_keys.numel():
            return cols, torch.ones_like(cols, dtype=torch.bool)
        keys = (rows.index_select(0, active)[:, None] * n_cols + cols).to(excluded_keys.dtype)
        hit = torch.searchsorted(excluded_keys, keys).clamp_max_(last)
        return cols, excluded_keys.index_select(0, hit.view(-1)).view_as(keys) != keys

    return _distinct_rounds(rows.shape[0], n_cols, k, rows.device, draw)
