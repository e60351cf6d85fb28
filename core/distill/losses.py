"""The relaxed ranking loss shared by RRD (L_RKD) and DCD's corrections (L_UCD, L_ICD), and batch scoring.

ℓ(S1, S2) = −Σ_rows Σ_k [ S1_k − log( Σ_{j≥k} exp S1_j + Σ_l exp S2_l ) ], summed (spec §2.1, §3.4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from core.models.base import Recommender


def relaxed_ranking_loss_lse(ordered: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """Reference form: reversed ``logcumsumexp`` + ``logsumexp`` (stable for any score range)."""
    return _rows_lse(ordered, others).sum()


def _rows_lse(ordered: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    _check(ordered, others)
    if ordered.shape[1] == 0:
        return ordered.sum(1) * 0.0
    tail = torch.logcumsumexp(ordered.flip(1), dim=1).flip(1)  # [R, K] log Σ_{j≥k} exp S1_j
    if others.shape[1] > 0:
        tail = torch.logaddexp(tail, torch.logsumexp(others, dim=1, keepdim=True))
    return (tail - ordered).sum(1)


def relaxed_ranking_loss_rows(ordered: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """Per-row relaxed Plackett-Luce loss [R] (``relaxed_ranking_loss`` is its sum).

    ``ordered`` [R, K]: scores that must keep this order (teacher order, best first); ``others`` [R, L]:
    scores that stay in every denominator, order ignored (L may be 0). Stabilised by the row maximum and
    accumulated in float64 (a plain reversed cumsum, ~2x faster than ``logcumsumexp`` on CPU); when some
    row's score spread would underflow even float64 (> ~700), the log-cumsum-exp form is used instead.
    """
    _check(ordered, others)
    if ordered.shape[1] == 0:
        return ordered.sum(1) * 0.0
    both = torch.cat([ordered, others], dim=1)
    top = both.detach().max(dim=1, keepdim=True).values  # [R, 1]
    e = (both - top).double().exp()  # [R, K + L], every entry <= 1
    k = ordered.shape[1]
    tail = e[:, :k].flip(1).cumsum(1).flip(1) + e[:, k:].sum(1, keepdim=True)  # [R, K]
    if not bool((tail > 0).all()):
        return _rows_lse(ordered, others)
    return tail.log().sum(1).to(ordered.dtype) + k * top.squeeze(1) - ordered.sum(1)


def relaxed_ranking_loss(ordered: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """Sum-reduced relaxed Plackett-Luce loss (see ``relaxed_ranking_loss_rows``)."""
    return relaxed_ranking_loss_rows(ordered, others).sum()


class RankingTerm(NamedTuple):
    """One weighted relaxed-ranking term: ``weight * relaxed_ranking_loss(ordered, others)``; a tensor weight
    [R] weighs each row."""

    name: str
    ordered: torch.Tensor
    others: torch.Tensor
    weight: float | torch.Tensor


def ranking_terms(terms: Sequence[RankingTerm]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Σ weight·ℓ over the terms, and each term's unweighted ℓ (for logging).

    Terms whose [R, K] / [R, L] widths agree are evaluated as one stacked call (with the default RKD K = L
    = p = 40, RKD, UCD and ICD all share one), which saves most of the per-op overhead on CPU.
    """
    if not terms:
        raise ValueError("ranking_terms needs at least one term")
    groups: dict[tuple[int, int], list[int]] = {}
    for i, t in enumerate(terms):
        groups.setdefault((t.ordered.shape[1], t.others.shape[1]), []).append(i)
    weighted: list[torch.Tensor | None] = [None] * len(terms)
    plain: list[torch.Tensor | None] = [None] * len(terms)  # unweighted ℓ, for logging
    for members in groups.values():
        ordered, others = [terms[i].ordered for i in members], [terms[i].others for i in members]
        rows = relaxed_ranking_loss_rows(
            *((ordered[0], others[0]) if len(members) == 1 else (torch.cat(ordered), torch.cat(others)))
        )
        for i, part in zip(members, rows.split([terms[i].ordered.shape[0] for i in members]), strict=True):
            w = terms[i].weight
            plain[i] = part.sum()
            weighted[i] = (part * w.to(part.dtype)).sum() if isinstance(w, torch.Tensor) else plain[i] * w
    # Detached tensors, not floats: reading a value back per batch would stall an accelerator (fit sums them).
    return torch.stack(weighted).sum(), {t.name: v.detach() for t, v in zip(terms, plain, strict=True)}  # type: ignore[union-attr]


def _check(ordered: torch.Tensor, others: torch.Tensor) -> None:
    if ordered.dim() != 2 or others.dim() != 2 or ordered.shape[0] != others.shape[0]:
        raise ValueError(
            f"ordered and others must be [R, K] and [R, L] with the same R, got {tuple(ordered.shape)} "
            f"and {tuple(others.shape)}"
        )


class _RowDot(torch.autograd.Function):
    """scores[b, k] = row_table[rows[b]] · col_table[cols[b, k]] with a hand-written backward.

    Forward gathers the [B, d] row and [B, K, d] column embeddings once and takes one batched mat-vec;
    backward forms each table's gradient with one batched product and one ``index_put_(accumulate=True)``
    into a zero table. Autograd through gather + broadcast multiply + sum would materialise two more
    [B, K, d] tensors and reduce one of them again; this is the per-batch hot path of RRD and DCD.
    """

    @staticmethod
    def forward(ctx, row_table, col_table, rows, cols):  # type: ignore[no-untyped-def, override]
        r, c, scores = _row_dot_forward(row_table, col_table, rows, cols)
        ctx.save_for_backward(r, c, rows, cols)
        ctx.shapes = (row_table.shape, col_table.shape)
        return scores

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def, override]
        r, c, rows, cols = ctx.saved_tensors
        grad = grad.contiguous()
        g_rows = g_cols = None
        if ctx.needs_input_grad[0]:
            g_rows = grad.new_zeros(ctx.shapes[0])
            g_rows.index_put_((rows,), torch.bmm(grad.unsqueeze(1), c).squeeze(1), accumulate=True)
        if ctx.needs_input_grad[1]:
            g_cols = grad.new_zeros(ctx.shapes[1])
            outer = (grad.unsqueeze(2) * r.unsqueeze(1)).view(-1, r.shape[1])  # [B*K, d]
            g_cols.index_put_((cols.reshape(-1),), outer, accumulate=True)
        return g_rows, g_cols, None, None


def _row_dot_forward(
    row_table: torch.Tensor, col_table: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row embeddings [B, d], column embeddings [B, K, d], scores [B, K])."""
    b, k = cols.shape
    r = row_table.index_select(0, rows)
    c = col_table.index_select(0, cols.reshape(-1)).view(b, k, -1)
    return r, c, torch.bmm(c, r.unsqueeze(2)).squeeze(2)


def row_dot(row_table: torch.Tensor, col_table: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """rows [B], cols [B, K] -> [B, K] dot products of ``row_table[rows[b]]`` and ``col_table[cols[b, k]]``,
    differentiable w.r.t. both tables."""
    if not (row_table.requires_grad or col_table.requires_grad):
        return _row_dot_forward(row_table, col_table, rows, cols)[2]
    return _RowDot.apply(row_table, col_table, rows, cols)


def score_items(student: Recommender, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """users [B], items [B, K] -> [B, K]. Dot-product models use ``row_dot``; others ``student.score``."""
    if not student.is_dot_product:
        return student.score(users, items)
    u_emb, i_emb = student.embed()
    return row_dot(u_emb, i_emb, users, items)


def score_users(student: Recommender, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """users [B, K], items [B] -> [B, K] (each listed user's score for the row's item)."""
    if not student.is_dot_product:
        return student.score_users(users, items)
    u_emb, i_emb = student.embed()
    return row_dot(i_emb, u_emb, items, users)
