"""Teacher top-M lists: per user the top-M unobserved items, per item the top-M users, in teacher order.

One streaming pass over user chunks: ``full_scores`` of a chunk [C, n_items] gives the users' lists, and a
running top-M per item is merged with the chunk's transposed scores (only for the items whose list can change). Peak memory is
O((users + items) x M + items x (M + chunk)), never users x items.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch

from core.config import list_lengths
from core.models.base import Recommender

logger = logging.getLogger(__name__)


def clip_list_lengths(m: int, n_users: int, n_items: int) -> tuple[int, int]:
    """(M for the user side, M for the item side), ``core.config.list_lengths``; a ValueError when a side would
    have no list."""
    if m <= 0:
        raise ValueError(f"m (teacher list length) must be positive, got {m}")
    if n_users < 2 or n_items < 2:
        raise ValueError(f"need at least 2 users and 2 items for teacher lists, got {n_users} x {n_items}")
    return list_lengths(m, n_users, n_items)


def training_entries(csr: sp.csr_matrix, start: int, stop: int, device: torch.device | str
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows relative to ``start``, columns) of the training entries of users ``start:stop``, int64 on ``device``."""
    block = csr[start:stop].tocoo()
    return (torch.from_numpy(block.row.astype(np.int64)).to(device),
            torch.from_numpy(block.col.astype(np.int64)).to(device))


@torch.no_grad()
def scored_chunks(
    model: Recommender, csr: sp.csr_matrix, chunk: int, device: torch.device | str
) -> Iterator[tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Chunk by chunk of users, in eval mode: (start, stop, their scores for every item [C, n_items] float32 on
    ``device``, rows relative to ``start`` and columns of their training entries), for the caller to mask and rank."""
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    dev = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        for start in range(0, csr.shape[0], chunk):
            stop = min(start + chunk, csr.shape[0])
            scores = model.full_scores(torch.arange(start, stop, device=dev)).float().to(dev)
            yield start, stop, scores, *training_entries(csr, start, stop, dev)
    finally:
        model.train(was_training)


@torch.no_grad()
def teacher_topm(
    teacher: Recommender,
    train_csr: sp.csr_matrix,
    m: int = 500,
    chunk: int = 512,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(user_top [n_users, Mu] item codes, item_top [n_items, Mi] user codes), int64 on ``device``.

    Training positives are masked (lowest finite score) before ranking. Mu = min(m, n_items - 1), Mi = min(m, n_users - 1).
    A row with fewer unobserved candidates than its M is padded at the end with observed entries
    (logged once); everything before the padding is unobserved, in teacher order.
    """
    n_users, n_items = train_csr.shape
    if (teacher.n_users, teacher.n_items) != (n_users, n_items):
        raise ValueError(
            f"teacher is sized {teacher.n_users} x {teacher.n_items} but train_csr is {n_users} x {n_items}"
        )
    mu, mi = clip_list_lengths(m, n_users, n_items)
    dev = torch.device(device)
    csr = train_csr.tocsr()
    user_top = torch.empty((n_users, mu), dtype=torch.int64, device=dev)
    item_vals = torch.full((n_items, mi), -torch.inf, device=dev)  # running best scores per item
    item_top = torch.zeros((n_items, mi), dtype=torch.int64, device=dev)
    for start, stop, scores, rows, cols in scored_chunks(teacher, csr, chunk, dev):
        # Masked entries sit below every real score but above the -inf placeholders of item_vals.
        scores[rows, cols] = torch.finfo(scores.dtype).min
        user_top[start:stop] = scores.topk(mu, dim=1).indices
        _merge_items(item_vals, item_top, scores, start)
        del scores
    _log_padding(csr, mu, mi)
    return user_top, item_top


# Entries (list plus chunk) of the item rows merged at once by ``_merge_items``.
MERGE_BLOCK_ENTRIES = 1 << 20


def _merge_items(item_vals: torch.Tensor, item_top: torch.Tensor, scores: torch.Tensor, start: int) -> None:
    """Merge a chunk's users (``scores`` [C, n_items], users ``start..start+C``) into every item's running top
    list, in place (``item_vals`` [n_items, Mi] sorted descending, ``item_top`` their users).

    Only the items where some chunk score reaches the list's current last value can change, so only their rows
    are merged (a top-k over [R, Mi + C]): once the lists hold real scores, after ~C x Mi users, the share of
    items that qualify falls like C x Mi / users seen (316k users x 31.6k items, M = 100: 126 s of CPU against
    182 s merging every item). A merged row is what merging every row gives (ties with the last value included,
    ``>=``), any other row keeps its list; so the lists are the same, except the order of exactly equal scores,
    which topk leaves unspecified and the merge of every row reshuffled at every chunk (30 of 31.6k item lists
    there, none on ML-100K or ML-1M shaped tests).
    """
    mi = item_vals.shape[1]
    changing = (scores.amax(dim=0) >= item_vals[:, -1]).nonzero().squeeze(1)  # [R] items whose list can change
    # In blocks of rows: a merged row holds ~60 bytes a list entry of temporaries (3 GB over 100k items at
    # M = 500 at once).
    for rows in changing.split(max(1, MERGE_BLOCK_ENTRIES // (mi + scores.shape[0]))):
        merged = torch.cat([item_vals.index_select(0, rows), scores.index_select(1, rows).T], dim=1)  # [R, Mi + C]
        best_vals, best_pos = merged.topk(mi, dim=1)
        del merged
        from_chunk = best_pos >= mi
        chunk_users = (best_pos - mi).clamp_min(0) + start
        kept = item_top.index_select(0, rows).gather(1, best_pos.clamp_max(mi - 1))
        item_top.index_copy_(0, rows, torch.where(from_chunk, chunk_users, kept))
        item_vals.index_copy_(0, rows, best_vals)


# (shape, Mu, Mi) already explained: an experiment computes the lists once per seed, and the same words once
# are enough; later ones go to DEBUG.
_padding_explained: set[tuple[int, int, int, int]] = set()


def _log_padding(csr: sp.csr_matrix, mu: int, mi: int) -> None:
    n_users, n_items = csr.shape
    short_users = int((n_items - np.diff(csr.indptr) < mu).sum())
    short_items = int((n_users - np.diff(csr.tocsc().indptr) < mi).sum())
    if short_users or short_items:
        key = (n_users, n_items, mu, mi)
        level = logging.DEBUG if key in _padding_explained else logging.WARNING
        _padding_explained.add(key)
        logger.log(
            level,
            "teacher lists: M is %d items per user and %d users per item (m clipped to n_items-1 and n_users-1), "
            "but %d users have fewer than %d items they have not interacted with, and %d items fewer than %d "
            "such users; their lists are filled up at the end with already-observed entries. Harmless on a "
            "small or dense data set; a smaller m (e.g. --set dcd.m=..., rrd.m=...) avoids it.",
            mu, mi, short_users, mu, short_items, mi,
        )
