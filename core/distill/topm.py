"""Teacher top-M lists: per user the top-M unobserved items, per item the top-M users, in teacher order.

One streaming pass over user chunks: ``full_scores`` of a chunk [C, n_items] gives the users' lists, and each
item's running top-M takes the chunk's users that can still enter it (``_ItemLists``). Peak memory is
O((users + items) x M + items x chunk), never users x items.
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
    """(user_top [n_users, Mu] item codes, item_top [n_items, Mi] user codes), int32 on ``device``.

    int32, not the int64 that topk returns: the lists are DCD's and RRD's largest structures (with RKD each list
    entry is also a key, an int64), and 4 bytes an entry less on both sides is ~15 % of what DCD holds. torch
    indexes with int32 (index_select, gather, embeddings); arithmetic on codes that can pass 2^31 (keys
    row * n_cols + col) is done on int64 rows, which promotes. Codes past int32 (2^31 users or items) stay int64.

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
    codes = torch.int32 if max(n_users, n_items) <= torch.iinfo(torch.int32).max else torch.int64
    user_top = torch.empty((n_users, mu), dtype=codes, device=dev)
    items = _ItemLists(n_items, mi, dev, codes)
    for start, stop, scores, rows, cols in scored_chunks(teacher, csr, chunk, dev):
        # Masked entries sit below every real score but above the -inf placeholders of the item lists.
        scores[rows, cols] = torch.finfo(scores.dtype).min
        user_top[start:stop] = scores.topk(mu, dim=1).indices  # (copied as ``codes``)
        items.add(scores, start)
        del scores
    _log_padding(csr, mu, mi)
    return user_top, items.lists()


# Entries of the item rows handled at once by ``_ItemLists``: their temporaries are a block's, not every item's.
MERGE_BLOCK_ENTRIES = 1 << 20


class _ItemLists:
    """Every item's running top-Mi users over the user chunks seen so far (values descending, and their users).

    The chunk's users that reach an item's current Mi-th score, its threshold, are its candidates: they wait in a
    buffer of Mi slots and join the list in one top-Mi over list and buffer when the buffer is full, or at the
    end. A user below an item's threshold can never be in its final list (a threshold only rises), so the lists
    are those of one top-Mi over every user, except the order of exactly equal scores, which topk leaves
    unspecified. Merging every chunk into every list it could change (a top-Mi over Mi + chunk entries per item,
    for nearly every item at m = 500) kept a 10M-interaction job in ``teacher_topm`` for about 80 minutes
    (docs/results.md; bench/results/topm-speed-*.json compares the two).
    """

    def __init__(self, n_items: int, mi: int, device: torch.device, codes: torch.dtype) -> None:
        self.mi = mi
        self.vals = torch.full((n_items, mi), -torch.inf, device=device)
        self.top = torch.zeros((n_items, mi), dtype=codes, device=device)
        self.buf_vals = torch.full((n_items, mi), -torch.inf, device=device)
        self.buf_users = torch.zeros((n_items, mi), dtype=codes, device=device)
        self.fill = torch.zeros(n_items, dtype=torch.int64, device=device)

    def add(self, scores: torch.Tensor, start: int) -> None:
        """Take the candidates of a chunk's ``scores`` [C, n_items] (users ``start..start+C``)."""
        # Each item's candidates in this chunk, [C, n_items]. The thresholds are a column of ``vals`` (stride Mi):
        # compared as that strided view, the broadcast took 0.3-1.2 s a chunk of 512 users at 100k items, 5-17
        # times the contiguous copy's, and a third of the samples of teacher_topm in a 1M-user job (py-spy).
        hit = scores >= self.vals[:, -1].contiguous()
        n_users, n_items = hit.shape
        users = torch.arange(start, start + n_users, dtype=self.top.dtype, device=scores.device)
        step = max(1, MERGE_BLOCK_ENTRIES // (self.mi + n_users))
        # Blocks of consecutive items. A block's candidates are taken item-major from its transposed copy, so that
        # each item's come together and in user order: an item's k-th candidate goes to slot fill + k. (Gathering
        # the changing items' columns of ``hit`` and ranking them by a cumulative sum down its users was 39 % of
        # teacher_topm's samples in the 1M-user job; bench/results/topm-speed-*-blocks.json compares the two.)
        for a in range(0, n_items, step):
            b = min(a + step, n_items)
            cand = hit[:, a:b].T.contiguous()  # [B, C]
            count = cand.sum(1, dtype=torch.int32).long()
            if not bool(count.any()):
                continue
            rows = torch.arange(a, b, device=scores.device)
            full = self.fill[a:b] + count > self.mi
            if bool(full.any()):
                self._flush(rows[full])
            over = count > self.mi  # more candidates than a buffer holds (the first chunks): merged straight in
            if bool(over.any()):
                big = rows[over]
                self._merge(big, scores.index_select(1, big).T, users.expand(len(big), -1))
                cand[over] = False
                count[over] = 0
            flat = cand.view(-1).nonzero().squeeze(1)
            if flat.numel() == 0:
                continue
            item, user = flat // n_users, flat % n_users  # item within the block, user within the chunk
            first = count.cumsum(0) - count  # where each item's candidates begin in ``flat``
            rank = torch.arange(flat.numel(), device=scores.device) - first.index_select(0, item)
            # On flat views: index_select / index_copy_ are several times cheaper than advanced indexing on CPU.
            at = (a + item) * self.mi + self.fill[a:b].index_select(0, item) + rank
            self.buf_vals.view(-1).index_copy_(0, at, scores.view(-1).index_select(0, user * n_items + a + item))
            self.buf_users.view(-1).index_copy_(0, at, users.index_select(0, user))
            self.fill[a:b] += count

    def lists(self) -> torch.Tensor:
        """Every item's top-Mi users, the buffers merged."""
        waiting = self.fill.nonzero().squeeze(1)
        for rows in waiting.split(max(1, MERGE_BLOCK_ENTRIES // (2 * self.mi))) if waiting.numel() else ():
            self._flush(rows)
        return self.top

    def _flush(self, rows: torch.Tensor) -> None:
        self._merge(rows, self.buf_vals.index_select(0, rows), self.buf_users.index_select(0, rows))
        self.buf_vals.index_fill_(0, rows, -torch.inf)
        self.fill.index_fill_(0, rows, 0)

    def _merge(self, rows: torch.Tensor, vals: torch.Tensor, users: torch.Tensor) -> None:
        best_vals, best_pos = torch.cat([self.vals.index_select(0, rows), vals], dim=1).topk(self.mi, dim=1)
        both = torch.cat([self.top.index_select(0, rows), users], dim=1)
        self.top.index_copy_(0, rows, both.gather(1, best_pos))
        self.vals.index_copy_(0, rows, best_vals)


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
