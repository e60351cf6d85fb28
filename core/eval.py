"""Top-K evaluation, the only place @K metrics are computed: full ranking (default) and the sampled protocol.

Metric definitions (binary relevance; T = a user's held-out target items; hits = targets in the top K):
- ``recall@K`` = hits / |T|;  ``precision@K`` = hits / K;  ``hit@K`` = 1 if hits > 0 else 0;
- ``ndcg@K`` = sum over hit positions p (0-based) of 1/log2(p + 2), divided by the ideal
  sum over p < min(|T|, K);
- ``mrr@K`` = 1 / (1 + position of the first hit) if there is a hit in the top K, else 0.
Each metric is averaged over users with at least one target (``full``) or over (user, target) cases
(``sampled``). Ranking excludes training items, and for the test split also validation items.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from core.data import SplitData
from core.models.base import Recommender

logger = logging.getLogger(__name__)

METRICS = ("recall", "ndcg", "hit", "mrr", "precision")
#: Negatives per held-out item in the sampled ("paper lineage") protocol.
SAMPLED_NEGATIVES = 499


def _check(split: str, ks: Sequence[int], protocol: str, chunk_size: int) -> tuple[int, ...]:
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', got {split!r}")
    if protocol not in ("full", "sampled"):
        raise ValueError(f"protocol must be 'full' or 'sampled', got {protocol!r}")
    if not ks or any(not isinstance(k, int) or k <= 0 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks!r}")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    return tuple(sorted(set(ks)))


def _exclusion(data: SplitData, split: str, exclude_train: bool) -> sp.csr_matrix:
    parts = [data.train] if exclude_train else []
    if split == "test":
        parts.append(data.valid)
    if not parts:
        return sp.csr_matrix((data.n_users, data.n_items), dtype=np.float32)
    out = parts[0]
    for extra in parts[1:]:
        out = out + extra
    return sp.csr_matrix(out)


def _rows_to_index(csr: sp.csr_matrix, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Nonzeros of the selected rows as (row position in ``rows``, column) index tensors."""
    sub = csr[rows].tocoo()
    return torch.from_numpy(sub.row.astype(np.int64)), torch.from_numpy(sub.col.astype(np.int64))


def metrics_from_hits(hits: torch.Tensor, n_targets: torch.Tensor, ks: Sequence[int]) -> dict[str, torch.Tensor]:
    """hits [B, Kmax] bool (ranked lists), n_targets [B] -> per-row metric tensors [B] for every K."""
    kmax = hits.shape[1]
    discounts = 1.0 / torch.log2(torch.arange(kmax, dtype=torch.float64) + 2.0)  # [Kmax]
    hits_f = hits.to(torch.float64)
    n_t = n_targets.to(torch.float64)
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        h = hits_f[:, :k]  # [B, k]
        n_hits = h.sum(1)
        ideal = torch.cumsum(discounts[:k], 0)[(n_t.clamp(max=k) - 1).long().clamp(min=0)]  # [B]
        first = torch.where(h.any(1), h.argmax(1).to(torch.float64), torch.full_like(n_hits, float("inf")))
        out[f"recall@{k}"] = n_hits / n_t
        out[f"precision@{k}"] = n_hits / k
        out[f"hit@{k}"] = (n_hits > 0).to(torch.float64)
        out[f"ndcg@{k}"] = (h * discounts[:k]).sum(1) / ideal
        out[f"mrr@{k}"] = 1.0 / (first + 1.0)
    return out


@torch.no_grad()
def _full(model: Recommender, data: SplitData, targets: sp.csr_matrix, excl: sp.csr_matrix,
          ks: tuple[int, ...], chunk_size: int, device: torch.device) -> dict[str, float]:
    kmax = min(max(ks), data.n_items)
    users = np.flatnonzero(np.diff(targets.indptr) > 0)
    sums: dict[str, float] = {}
    for start in range(0, len(users), chunk_size):
        rows = users[start : start + chunk_size]
        scores = model.full_scores(torch.from_numpy(rows).to(device)).float()  # [B, n_items]
        er, ec = _rows_to_index(excl, rows)
        scores[er.to(device), ec.to(device)] = -torch.inf
        top = torch.topk(scores, kmax, dim=1).indices  # [B, Kmax]
        del scores
        # A hit is a (row, item) key among the chunk's target keys: no second [B, n_items] array to fill.
        tr, tc = _rows_to_index(targets, rows)
        target_keys = (tr * data.n_items + tc).to(device)  # [T]
        top_keys = torch.arange(len(rows), device=device)[:, None] * data.n_items + top  # [B, Kmax]
        hits = torch.isin(top_keys, target_keys).cpu()  # [B, Kmax]
        n_targets = torch.from_numpy(np.diff(targets.indptr)[rows])
        for name, vals in metrics_from_hits(hits, n_targets, ks).items():
            sums[name] = sums.get(name, 0.0) + float(vals.sum())
    return {name: total / len(users) for name, total in sums.items()}


def sample_candidates(data: SplitData, n_neg: int, seed: int, chunk_size: int) -> np.ndarray:
    """[n_users, n_neg] items each user never interacted with (train, valid or test); -1 pads short rows.

    Seeded and computed over all users in fixed chunks, so valid and test share the same candidates.
    """
    observed = sp.csr_matrix(data.train + data.valid + data.test)
    rng = np.random.default_rng(seed)
    n_neg_eff = min(n_neg, data.n_items)
    out = np.full((data.n_users, n_neg_eff), -1, dtype=np.int64)
    for start in range(0, data.n_users, chunk_size):
        stop = min(start + chunk_size, data.n_users)
        keys = rng.random((stop - start, data.n_items))  # [B, n_items] random keys
        sub = observed[start:stop].tocoo()
        keys[sub.row, sub.col] = np.inf  # observed items sort last
        part = np.argpartition(keys, n_neg_eff - 1, axis=1)[:, :n_neg_eff]  # [B, n_neg]
        valid = np.take_along_axis(keys, part, axis=1) < np.inf
        out[start:stop] = np.where(valid, part, -1)
    return out


@torch.no_grad()
def _sampled(model: Recommender, data: SplitData, targets: sp.csr_matrix, ks: tuple[int, ...],
             n_neg: int, seed: int, chunk_size: int, device: torch.device) -> dict[str, float]:
    cands = sample_candidates(data, n_neg, seed, chunk_size)  # [n_users, n_neg]
    coo = targets.tocoo()
    order = np.lexsort((coo.col, coo.row))
    case_users, case_items = coo.row[order].astype(np.int64), coo.col[order].astype(np.int64)
    sums: dict[str, float] = {}
    for start in range(0, len(case_users), chunk_size):
        u = case_users[start : start + chunk_size]
        items = np.concatenate([case_items[start : start + chunk_size, None], cands[u]], axis=1)  # [B, 1+n]
        pad = torch.from_numpy(items < 0).to(device)
        scores = model.score(torch.from_numpy(u).to(device), torch.from_numpy(np.maximum(items, 0)).to(device))
        scores = scores.float()  # [B, 1+n]
        target = scores[:, :1]
        # Ties count against the target (pessimistic), so a constant scorer earns nothing.
        beaten = ((scores[:, 1:] >= target) & ~pad[:, 1:]).sum(1).cpu()  # [B] 0-based rank
        kmax = max(ks)
        hits = torch.arange(kmax).unsqueeze(0) == beaten.unsqueeze(1)  # [B, Kmax]
        for name, vals in metrics_from_hits(hits, torch.ones(len(u)), ks).items():
            sums[name] = sums.get(name, 0.0) + float(vals.sum())
    return {name: total / len(case_users) for name, total in sums.items()}


def evaluate(
    model: Recommender,
    data: SplitData,
    split: str = "test",
    ks: Sequence[int] = (5, 10, 20),
    protocol: str = "full",
    *,
    exclude_train: bool = True,
    chunk_size: int = 1024,
    n_negatives: int = SAMPLED_NEGATIVES,
    seed: int = 0,
    users: np.ndarray | None = None,
) -> dict[str, float]:
    """Metrics ``"<name>@<k>"`` of ``model`` on the valid or test split (see the module docstring).

    ``full``: every item is ranked, ``chunk_size`` users at a time (at most chunk x n_items scores live).
    ``sampled``: each target item is ranked among ``n_negatives`` (seeded) items the user never touched.
    ``users``: only these users' targets count (the others' rows are left out); None: every user's.
    Raises ``ValueError`` when the split has no target interactions (among ``users``).
    """
    ks = _check(split, ks, protocol, chunk_size)
    targets = sp.csr_matrix(data.valid if split == "valid" else data.test)
    if users is not None:
        users = np.asarray(users, dtype=np.int64)
        if users.size and (users.min() < 0 or users.max() >= targets.shape[0]):
            raise ValueError(f"users must be user codes in [0, {targets.shape[0]}), got {users.min()}..{users.max()}")
        keep = np.zeros((targets.shape[0], 1), dtype=targets.dtype)
        keep[users] = 1
        targets = sp.csr_matrix(targets.multiply(keep))
        targets.eliminate_zeros()
    if targets.nnz == 0:
        raise ValueError(f"split {split!r} has no interactions to evaluate")
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    device = tensor.device if tensor is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        if protocol == "full":
            excl = _exclusion(data, split, exclude_train)
            return _full(model, data, targets, excl, ks, chunk_size, device)
        return _sampled(model, data, targets, ks, n_negatives, seed, chunk_size, device)
    finally:
        model.train(was_training)
