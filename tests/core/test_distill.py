"""Distillation: losses vs slow loops, teacher lists vs a dense argsort, refresh weights, samplers, resume."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from core.distill import DISTILLERS, RELEASED_PROCEDURE, build_distiller, ranking, sampling, teacher_topm
from core.distill import dcd as dcd_module
from core.distill.dcd import DCDDistiller, correction_entry_weights, correction_weights
from core.distill.losses import (
    RankingTerm,
    ranking_terms,
    relaxed_ranking_loss,
    relaxed_ranking_loss_lse,
    relaxed_ranking_loss_rows,
    row_dot,
)
from core.distill.ranking import RankingSide
from core.distill.sampling import WeightedRowSampler, gumbel_topk
from core.models.bpr import BPRMF

N_USERS, N_ITEMS = 30, 40


def loop_loss(s1: np.ndarray, s2: np.ndarray) -> float:
    total = 0.0
    for r in range(s1.shape[0]):
        for k in range(s1.shape[1]):
            denom = sum(math.exp(x) for x in s1[r, k:]) + sum(math.exp(x) for x in s2[r])
            total -= s1[r, k] - math.log(denom)
    return total


@pytest.fixture()
def data() -> SimpleNamespace:
    rng = np.random.default_rng(0)
    dense = rng.random((N_USERS, N_ITEMS)) < 0.15
    dense[np.arange(N_USERS), rng.integers(0, N_ITEMS, N_USERS)] = True
    return SimpleNamespace(train=sp.csr_matrix(dense.astype(np.float32)), n_users=N_USERS, n_items=N_ITEMS)


def models() -> tuple[BPRMF, BPRMF]:
    torch.manual_seed(0)
    teacher = BPRMF(N_USERS, N_ITEMS, 8, init_std=1.0)
    student = BPRMF(N_USERS, N_ITEMS, 4, init_std=1.0)
    return teacher, student


# --- losses ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fn", [relaxed_ranking_loss, relaxed_ranking_loss_lse])
@pytest.mark.parametrize("n_other", [0, 3])
def test_relaxed_ranking_loss_matches_loop(fn, n_other: int) -> None:
    g = torch.Generator().manual_seed(1)
    s1 = torch.randn(4, 5, generator=g, dtype=torch.float64) * 3
    s2 = torch.randn(4, n_other, generator=g, dtype=torch.float64) * 3
    assert fn(s1, s2).item() == pytest.approx(loop_loss(s1.numpy(), s2.numpy()), rel=1e-9)


def test_relaxed_ranking_loss_is_stable_for_huge_spreads() -> None:
    s1 = torch.tensor([[1000.0, 0.0, -1000.0]])
    s2 = torch.tensor([[5.0]])
    # Hand value: k=0 gives ~0; k=1 gives log(1 + e^5); k=2 gives 1000 + log(e^-1000 + e^5) ≈ 1005.
    expect = math.log(1 + math.exp(5)) + 1005
    got = relaxed_ranking_loss(s1, s2).item()
    assert math.isfinite(got) and got == pytest.approx(expect, rel=1e-4)
    assert relaxed_ranking_loss_lse(s1, s2).item() == pytest.approx(expect, rel=1e-4)


def test_relaxed_ranking_loss_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="same R"):
        relaxed_ranking_loss(torch.zeros(2, 3), torch.zeros(3, 3))


# --- teacher lists ---------------------------------------------------------------------------------
def test_teacher_topm_matches_dense_argsort(data: SimpleNamespace) -> None:
    teacher, _ = models()
    user_top, item_top = teacher_topm(teacher, data.train, m=6, chunk=7)
    assert user_top.dtype == item_top.dtype == torch.int32  # 4 bytes an entry: the lists are the largest structures
    full = teacher.full_scores(torch.arange(N_USERS)).detach().numpy().astype(np.float64)
    observed = data.train.toarray() > 0
    masked = np.where(observed, -np.inf, full)
    np.testing.assert_array_equal(user_top.numpy(), np.argsort(-masked, axis=1, kind="stable")[:, :6])
    np.testing.assert_array_equal(item_top.numpy(), np.argsort(-masked.T, axis=1, kind="stable")[:, :6])


@pytest.mark.parametrize(("m", "chunk", "block"), [(5, 64, 1 << 20), (5, 64, 3 * (5 + 64)), (20, 7, 1 << 20)])
def test_teacher_topm_item_lists_take_only_the_users_that_can_enter_them(
    m: int, chunk: int, block: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many chunks: after the first ones a chunk holds few candidates for an item's list (they wait in its buffer
    until it is full), and the item lists still equal a dense argsort over all users; the items handled at once
    or 3 at a time; a list longer than a chunk (m 20, chunk 7) starts in the buffer."""
    from core.distill import topm
    from core.models import build_model

    monkeypatch.setattr(topm, "MERGE_BLOCK_ENTRIES", block)
    flushes: list[int] = []
    flush = topm._ItemLists._flush
    monkeypatch.setattr(topm._ItemLists, "_flush", lambda self, rows: (flushes.append(len(rows)), flush(self, rows)))

    n_users, n_items = 3000, 40
    rng = np.random.default_rng(5)
    train = sp.random(n_users, n_items, density=0.1, format="csr", random_state=rng, dtype=np.float32)
    train.data[:] = 1.0
    teacher = build_model("bpr", n_users, n_items, 8, train=train, seed=2)
    _, item_top = teacher_topm(teacher, train, m=m, chunk=chunk)
    full = teacher.full_scores(torch.arange(n_users)).detach().numpy().astype(np.float64)
    masked = np.where(train.toarray() > 0, -np.inf, full)
    np.testing.assert_array_equal(item_top.numpy(), np.argsort(-masked.T, axis=1, kind="stable")[:, :m])
    assert sum(flushes) > n_items  # buffers filled and merged along the way, not only at the end


def test_teacher_topm_clips_m_and_pads_with_observed(data: SimpleNamespace) -> None:
    teacher, _ = models()
    user_top, item_top = teacher_topm(teacher, data.train, m=500, chunk=8)
    assert user_top.shape == (N_USERS, N_ITEMS - 1) and item_top.shape == (N_ITEMS, N_USERS - 1)
    observed = data.train.toarray() > 0
    for u in range(N_USERS):
        n_free = int((~observed[u]).sum())
        row = user_top[u].numpy()
        assert len(set(row.tolist())) == len(row)  # distinct
        assert not observed[u, row[: min(n_free, len(row))]].any()  # unobserved entries first


# --- samplers ------------------------------------------------------------------------------------
def exact_set_probs(w: np.ndarray, k: int) -> dict[tuple[int, ...], float]:
    """Sequential sampling without replacement, enumerated: P(set)."""
    probs: dict[tuple[int, ...], float] = {}
    for perm in itertools.permutations(range(len(w)), k):
        p, left = 1.0, w.sum()
        for j in perm:
            p *= w[j] / left
            left -= w[j]
        key = tuple(sorted(perm))
        probs[key] = probs.get(key, 0.0) + p
    return probs


def empirical(samples: torch.Tensor) -> dict[tuple[int, ...], float]:
    keys, counts = np.unique(samples.numpy(), axis=0, return_counts=True)
    return {tuple(k.tolist()): c / len(samples) for k, c in zip(keys, counts, strict=True)}


@pytest.mark.parametrize("force", ["gumbel", "rejection", "rejection in halves"])
def test_weighted_sampler_matches_sequential_without_replacement(force: str, monkeypatch: pytest.MonkeyPatch) -> None:
    weights = torch.tensor([[0.9, 0.5, 0.0, 0.2, 0.0, 0.7]])
    floor, k, n = 0.05, 3, 20000
    if force == "rejection in halves":  # rows x draws above the bound: drawn in 8 or more blocks of rows
        monkeypatch.setattr(sampling, "MAX_DRAWS", 20000)
        calls: list[int] = []
        rejection = WeightedRowSampler._rejection
        monkeypatch.setattr(WeightedRowSampler, "_rejection",
                            lambda self, rows, g: (calls.append(len(rows)), rejection(self, rows, g))[1])
    sampler = WeightedRowSampler.of_table(weights, k, floor)
    g = torch.Generator().manual_seed(0)
    sampler.use_gumbel = torch.tensor([force == "gumbel"])  # route the row through the path under test
    out = sampler.sample(torch.zeros(n, dtype=torch.int64), g)
    assert (out[:, 1:] > out[:, :-1]).all()  # sorted ascending, distinct
    exact = exact_set_probs(weights[0].double().numpy() + floor, k)
    emp = empirical(out)
    # 20000 draws: the standard error of any frequency is <= 0.0036; 0.02 is > 5 sigma.
    assert max(abs(exact[s] - emp.get(s, 0.0)) for s in exact) < 0.02
    assert set(emp) <= set(exact)
    if force == "rejection in halves":
        assert max(calls) == n and min(calls) <= n // 8


def test_gumbel_topk_matches_torch_multinomial_distribution() -> None:
    logw = torch.log(torch.tensor([[0.1, 1.0, 2.0, 0.5]]))
    g = torch.Generator().manual_seed(3)
    out = gumbel_topk(logw.expand(20000, -1).contiguous(), 2, g)
    exact = exact_set_probs(logw.exp()[0].double().numpy(), 2)
    emp = empirical(out)
    assert max(abs(exact[s] - emp.get(s, 0.0)) for s in exact) < 0.02


def test_sampler_with_fewer_positive_weights_than_p() -> None:
    # Row 0: all zero (uniform through the floor); row 1: one positive weight; p = 3 > positives.
    weights = torch.tensor([[0.0] * 6, [0.0, 0.0, 0.8, 0.0, 0.0, 0.0]])
    sampler = WeightedRowSampler.of_table(weights, 3, 1e-5)
    assert sampler.use_gumbel.all()
    g = torch.Generator().manual_seed(0)
    out = sampler.sample(torch.tensor([0, 1] * 3000), g)
    assert out.shape == (6000, 3) and (out[:, 1:] > out[:, :-1]).all()
    zero_rows = out[0::2]
    freq = torch.bincount(zero_rows.reshape(-1), minlength=6).double() / len(zero_rows)
    assert torch.allclose(freq, torch.full((6,), 0.5, dtype=torch.float64), atol=0.04)  # 3 of 6 each
    assert (out[1::2] == 2).any(1).all()  # the one positive entry is always taken


def test_sampler_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError, match="floor"):
        WeightedRowSampler.of_table(torch.ones(2, 4), 2, 0.0)
    with pytest.raises(ValueError, match="k must be"):
        WeightedRowSampler.of_table(torch.ones(2, 4), 5, 1e-5)


def test_excluded_blocks_keep_their_int32_keys_below_2_31() -> None:
    assert sampling.excluded_block_rows(3706) == 2048  # MovieLens-sized and up to ~1M columns: 2,048 rows
    assert sampling.excluded_block_rows(2**20) == 2047 and sampling.excluded_block_rows(2**30) == 1
    for n_cols in (2**20, 2**20 + 1, 10**9):
        assert sampling.excluded_block_rows(n_cols) * n_cols - 1 < 2**31  # the largest key of a block


def test_sample_excluding_never_draws_an_excluded_column_in_any_row_chunks() -> None:
    # 7 rows x 12 columns; row 2 excludes all but 3 (fewer than k = 4: left to the caller, -1), row 5 nothing.
    g = torch.Generator().manual_seed(3)
    table = torch.rand(7, 12, generator=g) < 0.4
    table[2] = True
    table[2, [1, 5, 9]] = False
    table[5] = False
    counts = table.sum(1)
    ptr = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])
    rows, cols = table.nonzero().unbind(1)
    for block in (2048, 3, 1):  # each block of rows searches its own keys, counted from its first row
        excluded = sampling.Excluded(ptr, ((rows % block) * 12 + cols).to(torch.int32), 12, block)
        assert all(torch.equal(excluded.columns(r), table[r].nonzero().squeeze(1)) for r in range(7))
        out = sampling.sample_excluding(4, excluded, 12 - counts, torch.Generator().manual_seed(0))
        assert (out[2] == -1).all()
        for r in (0, 1, 3, 4, 5, 6):
            assert len(set(out[r].tolist())) == 4 and not table[r, out[r]].any()


def test_a_sampler_built_in_row_blocks_is_the_one_built_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(1)
    weights = torch.rand(11, 9, generator=g) * (torch.rand(11, 9, generator=g) > 0.4)
    floor = 1e-3
    monkeypatch.setattr(sampling, "BUILD_ROW_CHUNK", 4)  # blocks of 4, 4 and 3 rows
    blocks = WeightedRowSampler.of_table(weights, 3, floor)
    # What the sampler computed at once before it was built in blocks.
    positive = weights > 0
    order = torch.argsort((~positive).to(torch.int8), dim=1, stable=True)
    assert torch.equal(blocks.slot_pos, order.to(torch.int16))
    assert torch.equal(blocks.n_pos, positive.sum(1))
    total = positive.sum(1).double() * (weights.max(1).values + floor).double() + (9 - positive.sum(1)).double() * floor
    assert torch.equal(blocks.accept, ((weights.double().sum(1) + 9 * floor) / total).float())


def test_correction_samplers_compute_the_weights_they_do_not_hold() -> None:
    # Rows 0..R-1 are w+ of the discrepancies, R..2R-1 their w-, bit for bit, from any (row, column) entries.
    g = torch.Generator().manual_seed(2)
    d = torch.randint(-40, 41, (11, 9), generator=g, dtype=torch.int16)
    weight = correction_entry_weights(d, 0.1)
    table = torch.cat(correction_weights(d, 0.1))
    rows = torch.randint(0, 22, (30,), generator=g)
    cols = torch.randint(0, 9, (30, 5), generator=g)
    assert torch.equal(weight(rows, cols), table[rows[:, None], cols])
    # A sampler over them is the sampler over the table: the same draws from the same generator.
    over_table, computed = WeightedRowSampler.of_table(table, 3, 1e-5), WeightedRowSampler(weight, (22, 9), 3, 1e-5)
    for name in ("slot_pos", "n_pos", "wmax", "total", "accept", "use_gumbel"):
        assert torch.equal(getattr(over_table, name), getattr(computed, name))
    every = torch.arange(22).repeat(50)
    a = over_table.sample(every, torch.Generator().manual_seed(5))
    assert torch.equal(a, computed.sample(every, torch.Generator().manual_seed(5)))


# --- DCD refresh, losses, gradients, resume -------------------------------------------------------
def dcd(data: SimpleNamespace, **cfg) -> tuple[DCDDistiller, BPRMF, BPRMF]:
    teacher, student = models()
    # The released code's exact procedure unless a test asks otherwise (every row, fresh samples, no groups).
    d = build_distiller("dcd", m=10, p=3, rkd_k=4, rkd_l=5, chunk=7, **{**RELEASED_PROCEDURE, **cfg})
    assert isinstance(d, DCDDistiller)
    d.prepare(teacher, data, "cpu")
    d.on_epoch_start(student, 0)
    return d, teacher, student


def test_refresh_discrepancy_and_weights_match_loop(data: SimpleNamespace) -> None:
    d, _, student = dcd(data)
    with torch.no_grad():
        uemb, iemb = student.user_emb.weight.numpy(), student.item_emb.weight.numpy()
    for side, top, disc in (("user", d.user_top, d.user_disc), ("item", d.item_top, d.item_disc)):
        for r in range(top.shape[0]):
            listed = top[r].tolist()
            if side == "user":
                scores = [float(uemb[r] @ iemb[c]) for c in listed]
            else:
                scores = [float(uemb[c] @ iemb[r]) for c in listed]
            student_order = sorted(range(len(listed)), key=lambda j: -scores[j])
            for t_pos in range(len(listed)):
                assert disc[r, t_pos] == student_order.index(t_pos) - t_pos
    wp, wm = correction_weights(d.user_disc, 0.1)
    for x, a, b in zip(d.user_disc.reshape(-1).tolist(), wp.reshape(-1), wm.reshape(-1), strict=True):
        assert a.item() == pytest.approx(math.tanh(max(0.1 * x, 0)), abs=1e-6)
        assert b.item() == pytest.approx(math.tanh(max(-0.1 * x, 0)), abs=1e-6)


def test_discrepancies_beyond_int16_are_kept_as_int32(data: SimpleNamespace) -> None:
    # M >= 2^15 (a catalogue above 32,768 items): ranks int16 cannot hold are stored as int32, not wrapped.
    d, _, _ = dcd(data)
    m = 2**15 + 5
    lists = torch.arange(m).repeat(2, 1)
    reverse = torch.arange(m, 0, -1, dtype=torch.float32)  # the student ranks row 0 in the teacher's order
    disc = d._discrepancies(lists, lambda rows, listed: torch.stack([reverse, -reverse])[rows])
    assert disc.dtype == torch.int32 and disc[0].abs().max() == 0
    assert disc[1, 0] == m - 1 and disc[1, -1] == -(m - 1)


def test_a_refresh_drops_what_the_last_one_built_before_building_anew(
    data: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    d, _, student = dcd(data, bank=2)
    first = (d.user_sampler, d.item_sampler, d.user_bank)
    held: list[tuple[object, ...]] = []
    build, fill = dcd_module.WeightedRowSampler, DCDDistiller._fill_bank

    def sampler(*args: object) -> WeightedRowSampler:
        held.append((d.user_sampler, d.item_sampler, d.user_bank, d.item_bank))
        return build(*args)

    def fill_bank(self: DCDDistiller, s: WeightedRowSampler | None) -> torch.Tensor | None:
        held.append((self.user_bank, self.item_bank))
        return fill(self, s)

    monkeypatch.setattr(dcd_module, "WeightedRowSampler", sampler)
    monkeypatch.setattr(DCDDistiller, "_fill_bank", fill_bank)
    with torch.no_grad():
        student.user_emb.weight.add_(0.5)
    d.on_epoch_start(student, d.config.period)  # a refresh epoch
    # Built in turn: the user sampler, the item sampler, the user bank, the item bank; none beside an old one.
    user_sampler, item_sampler, user_bank, item_bank = held
    assert all(x is None for x in user_sampler)
    assert item_sampler[0] is d.user_sampler and all(x is None for x in item_sampler[1:])
    assert user_bank == (None, None) and item_bank[0] is d.user_bank and item_bank[1] is None
    assert all(new is not old for new, old in zip((d.user_sampler, d.item_sampler, d.user_bank), first, strict=True))
    assert d.user_bank is not None and d.user_bank.shape == (2, 2 * N_USERS, 3)


def test_dcd_loss_equals_loop_on_recorded_samples(data: SimpleNamespace) -> None:
    d, _, student = dcd(data)
    recorded: list[tuple[torch.Tensor, torch.Tensor]] = []
    draw = d._draw

    def spy(*args):  # record the per-batch samples the loss used
        out = draw(*args)
        recorded.append(out)
        return out

    d._draw = spy  # type: ignore[method-assign]
    users, pos = torch.tensor([0, 3, 3, 7]), torch.tensor([1, 5, 2, 5])
    total, parts = d.loss(student, users, pos, pos)
    uemb, iemb = student.user_emb.weight.detach().numpy(), student.item_emb.weight.detach().numpy()
    bu, bi = [0, 3, 7], [1, 2, 5]
    (under_u, over_u), (under_i, over_i) = recorded

    def s(u: int, i: int) -> float:
        return float(uemb[u] @ iemb[i])

    rkd = sum(
        loop_loss(
            np.array([[s(u, i) for i in d.rkd.interesting[u].tolist()]]),
            np.array([[s(u, i) for i in d.rkd.uninteresting[u].tolist()]]),
        )
        for u in bu
    )
    ucd = sum(
        loop_loss(
            np.array([[s(u, i) for i in under_u[r].tolist()]]),
            np.array([[s(u, i) for i in over_u[r].tolist()]]),
        )
        for r, u in enumerate(bu)
    )
    icd = sum(
        loop_loss(
            np.array([[s(u, i) for u in under_i[r].tolist()]]),
            np.array([[s(u, i) for u in over_i[r].tolist()]]),
        )
        for r, i in enumerate(bi)
    )
    assert parts["rkd"] == pytest.approx(rkd, rel=1e-4)
    assert parts["ucd"] == pytest.approx(ucd, rel=1e-4)
    assert parts["icd"] == pytest.approx(icd, rel=1e-4)
    assert total.item() == pytest.approx(1e-3 * rkd + 1e-3 * ucd + 5e-4 * icd, rel=1e-4)
    # Under-estimated entries keep the teacher order: their list positions increase along each row.
    for r, u in enumerate(bu):
        positions = [d.user_top[u].tolist().index(i) for i in under_u[r].tolist()]
        assert positions == sorted(positions)


def test_correction_m_limits_ucd_and_icd_to_the_list_prefix(data: SimpleNamespace) -> None:
    d, _, student = dcd(data, correction_m=6, bank=2)
    full, _, _ = dcd(data)
    assert torch.equal(d.user_top, full.user_top)  # RKD keeps the whole list ...
    assert torch.equal(d.rkd.lists, full.rkd.lists)
    assert d.user_disc.shape == (N_USERS, 6) and d.item_disc.shape == (N_ITEMS, 6)  # ... UCD/ICD the prefix
    # Ranks are re-taken within the prefix: the discrepancies are a permutation offset of 0..5 per row.
    assert torch.equal((d.user_disc + torch.arange(6)).sort(1).values, torch.arange(6).expand(N_USERS, 6))
    users = torch.arange(N_USERS)
    under, over = d._draw(d.user_sampler, d.user_bank, d.user_list, users)
    for r in range(N_USERS):
        prefix = set(d.user_top[r, :6].tolist())
        assert set(under[r].tolist()) | set(over[r].tolist()) <= prefix
    total, parts = d.loss(student, users, users % N_ITEMS, users % N_ITEMS)
    assert torch.isfinite(total) and parts["ucd"] > 0 and parts["icd"] > 0
    same, _, _ = dcd(data, correction_m=10)  # = m: exactly the spec's full-list behaviour
    assert torch.equal(same.user_disc, full.user_disc) and torch.equal(same.item_disc, full.item_disc)
    with pytest.raises(ValueError, match=r"p: must be at most correction_m \(2\)"):
        dcd(data, correction_m=2)  # p = 3 > 2: refused by the config, before any list is computed
    with pytest.raises(ValueError, match=r"correction_m: must be at most m \(10\)"):
        dcd(data, correction_m=11)
    teacher, _ = models()
    d = build_distiller("dcd", m=500, p=35, rkd_k=4)  # valid config; the user lists clip to N_ITEMS - 1 = 39 ...
    with pytest.raises(ValueError, match="item-side corrected list length 29"):
        d.prepare(teacher, data, "cpu")  # ... but the item lists to N_USERS - 1 = 29 < p


def test_bank_is_filled_in_row_chunks(data: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bank drawn in row chunks holds, per row, p distinct sorted positions of the list, like one drawn at once;
    with one chunk covering every row it is exactly the unchunked draw."""
    from core.distill import dcd as dcd_module

    whole, _, _ = dcd(data, bank=3)
    monkeypatch.setattr(dcd_module, "BANK_ROW_CHUNK", 7)  # 2 x 30 user rows and 2 x 40 item rows: many chunks
    chunked, _, _ = dcd(data, bank=3)
    for bank, top in ((chunked.user_bank, chunked.user_list), (chunked.item_bank, chunked.item_list)):
        assert bank.shape == (3, 2 * top.shape[0], chunked.config.p)
        pos = bank.long()
        assert bool((pos >= 0).all()) and bool((pos < top.shape[1]).all())
        assert bool((pos[..., 1:] > pos[..., :-1]).all())  # distinct, ascending
    monkeypatch.setattr(dcd_module, "BANK_ROW_CHUNK", 10_000)
    again, _, _ = dcd(data, bank=3)
    assert torch.equal(again.user_bank, whole.user_bank) and torch.equal(again.item_bank, whole.item_bank)


def test_bank_epochs_keeps_a_bank_until_the_next_refresh_or_its_epoch_count(data: SimpleNamespace) -> None:
    d, _, student = dcd(data, bank=2, bank_epochs=3, period=2)
    first = d.user_bank.clone(), d.item_bank.clone()
    d.on_epoch_start(student, 1)  # no refresh (1 % 2), not a bank epoch (1 % 3): the same bank
    assert torch.equal(d.user_bank, first[0]) and torch.equal(d.item_bank, first[1])
    d.on_epoch_start(student, 2)  # a refresh: the weights changed, so the bank is drawn again
    second = d.user_bank.clone()
    assert not torch.equal(second, first[0])
    d.on_epoch_start(student, 3)  # 3 % 3 == 0: drawn again although no refresh
    assert not torch.equal(d.user_bank, second)
    every, _, _ = dcd(data, bank=2, bank_epochs=1, period=2)  # a new bank every epoch
    b0 = every.user_bank.clone()
    every.on_epoch_start(student, 1)
    assert not torch.equal(every.user_bank, b0)
    per_refresh, _, _ = dcd(data, bank=2, period=2)  # the default: one bank per refresh period
    b0 = per_refresh.user_bank.clone()
    per_refresh.on_epoch_start(student, 1)
    assert torch.equal(per_refresh.user_bank, b0)
    per_refresh.on_epoch_start(student, 2)
    assert not torch.equal(per_refresh.user_bank, b0)


def test_group_sums_the_row_terms_of_its_batches(data: SimpleNamespace) -> None:
    # RKD only, every row: its samples are fixed per epoch, so with a fixed student the grouped step must equal
    # the sum of the per-batch terms.
    cfg = {"use_ucd": False, "use_icd": False}
    single, _, student = dcd(data, **cfg)
    grouped, _, _ = dcd(data, group=2, **cfg)
    b1, b2 = (torch.tensor([0, 3, 3, 7]), torch.tensor([1, 5, 2, 5])), (torch.tensor([3, 8]), torch.tensor([0, 1]))
    t1, p1 = single.loss(student, b1[0], b1[1], b1[1])
    t2, p2 = single.loss(student, b2[0], b2[1], b2[1])
    z, pz = grouped.loss(student, b1[0], b1[1], b1[1])
    assert z.item() == 0.0 and pz == {} and not z.requires_grad
    tg, pg = grouped.loss(student, b2[0], b2[1], b2[1])
    assert tg.item() == pytest.approx(t1.item() + t2.item(), rel=1e-5)
    assert pg["rkd"].item() == pytest.approx((p1["rkd"] + p2["rkd"]).item(), rel=1e-5)
    # Row weights of a subsampled batch follow its rows into the group (n / kept per batch).
    full, _, _ = dcd(data, group=3, row_fraction=0.5, bank=2)
    users = torch.arange(N_USERS)
    for _ in range(2):
        assert full.loss(student, users, users % N_ITEMS, users % N_ITEMS)[0].item() == 0.0
    assert len(full._pending_users) == 2 and torch.equal(full._pending_users[0][1], torch.full((15,), 2.0))
    total, parts = full.loss(student, users, users % N_ITEMS, users % N_ITEMS)
    assert torch.isfinite(total) and set(parts) == {"rkd", "ucd", "icd"} and full._pending_users == []
    total.backward()
    assert student.user_emb.weight.grad.abs().sum() > 0
    full.loss(student, users, users % N_ITEMS, users % N_ITEMS)
    full.on_epoch_start(student, 1)  # batches that did not end the pass: their incomplete group is dropped
    assert full._pending_users == [] and full._pending_items == []
    # An epoch is one pass over the training pairs (as fit runs it): the batch that ends the pass closes the
    # last group, so nothing is dropped, even when the epoch has fewer batches than the group.
    full.on_epoch_start(student, 2)
    coo = data.train.tocoo()
    pair_users, pair_items = torch.from_numpy(coo.row.astype(np.int64)), torch.from_numpy(coo.col.astype(np.int64))
    half = len(pair_users) // 2
    assert full.loss(student, pair_users[:half], pair_items[:half], pair_items[:half])[0].item() == 0.0
    total, parts = full.loss(student, pair_users[half:], pair_items[half:], pair_items[half:])
    assert total.item() > 0 and set(parts) == {"rkd", "ucd", "icd"} and full._pending_users == []


def test_teacher_correction_order_ranks_the_sampled_entries_in_teacher_order(data: SimpleNamespace) -> None:
    d, _, student = dcd(data, correction_order="teacher")
    released, _, _ = dcd(data)
    users = torch.arange(N_USERS)
    g_state = d.generator.get_state()
    merged, empty = d._draw(d.user_sampler, None, d.user_list, users)
    d.generator.set_state(g_state)
    released.generator.set_state(g_state)
    under, over = released._draw(released.user_sampler, None, released.user_list, users)
    assert merged.shape == (N_USERS, 6) and empty.shape == (N_USERS, 0)
    for r in range(N_USERS):
        listed = d.user_top[r].tolist()
        positions = [listed.index(i) for i in merged[r].tolist()]
        assert positions == sorted(positions)  # one list, teacher order
        assert sorted(merged[r].tolist()) == sorted(under[r].tolist() + over[r].tolist())  # the same draws
    # The loss is the relaxed ranking loss of that one list (no "others" set).
    recorded: list[tuple[torch.Tensor, torch.Tensor]] = []
    draw = d._draw

    def spy(*args):
        out = draw(*args)
        recorded.append(out)
        return out

    d._draw = spy  # type: ignore[method-assign]
    b_users, b_pos = torch.tensor([0, 3, 7]), torch.tensor([1, 2, 5])
    total, parts = d.loss(student, b_users, b_pos, b_pos)
    uemb, iemb = student.user_emb.weight.detach().numpy(), student.item_emb.weight.detach().numpy()
    (ucd_list, _), (icd_list, _) = recorded
    ucd = sum(
        loop_loss(np.array([[float(uemb[u] @ iemb[i]) for i in ucd_list[r].tolist()]]), np.zeros((1, 0)))
        for r, u in enumerate([0, 3, 7])
    )
    icd = sum(
        loop_loss(np.array([[float(uemb[u] @ iemb[i]) for u in icd_list[r].tolist()]]), np.zeros((1, 0)))
        for r, i in enumerate([1, 2, 5])
    )
    assert parts["ucd"] == pytest.approx(ucd, rel=1e-4)
    assert parts["icd"] == pytest.approx(icd, rel=1e-4)


def test_gradients_reach_only_the_student(data: SimpleNamespace) -> None:
    d, teacher, student = dcd(data)
    before = [p.detach().clone() for p in teacher.parameters()]
    teacher.score = None  # type: ignore[assignment]  # the loss must never call the teacher
    users = torch.arange(N_USERS)
    total, _ = d.loss(student, users, users % N_ITEMS, users % N_ITEMS)
    total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters(), strict=True))
    assert student.user_emb.weight.grad is not None and student.user_emb.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("bank", [0, 2])
def test_state_dict_round_trip_resumes_identically(data: SimpleNamespace, bank: int) -> None:
    d, teacher, student = dcd(data, bank=bank)
    state = {k: v.clone() for k, v in d.state_dict().items()}
    users, pos = torch.tensor([0, 1, 2, 9]), torch.tensor([3, 4, 5, 6])
    first = d.loss(student, users, pos, pos)[0].item()
    fresh = build_distiller("dcd", m=10, p=3, rkd_k=4, rkd_l=5, chunk=7, bank=bank, row_fraction=1.0, group=1)
    fresh.prepare(teacher, data, "cpu")
    fresh.load_state_dict(state)
    assert fresh.loss(student, users, pos, pos)[0].item() == pytest.approx(first, rel=1e-6)


@pytest.mark.parametrize("switch", ["use_rkd", "use_ucd", "use_icd"])
def test_ablation_switches_drop_their_term(data: SimpleNamespace, switch: str) -> None:
    d, _, student = dcd(data, **{switch: False})
    _, parts = d.loss(student, torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([2, 3]))
    assert {"use_rkd": "rkd", "use_ucd": "ucd", "use_icd": "icd"}[switch] not in parts
    assert len(parts) == 2


# --- RRD and registry ---------------------------------------------------------------------------
@pytest.mark.parametrize("deterministic", [False, True])
def test_rrd_samples(data: SimpleNamespace, deterministic: bool) -> None:
    teacher, student = models()
    d = build_distiller(
        "rrd", m=10, k=4, l=6, deterministic_topk=deterministic, item_side=True, k_item=3, l_item=2
    )
    d.prepare(teacher, data, "cpu")
    d.on_epoch_start(student, 0)
    side = d.user_ranking
    assert side.interesting.dtype == side.uninteresting.dtype == torch.int32  # as the lists hold columns
    observed = data.train.toarray() > 0
    for u in range(N_USERS):
        listed = side.lists[u].tolist()
        positions = [listed.index(i) for i in side.interesting[u].tolist()]
        assert positions == (list(range(4)) if deterministic else sorted(set(positions)))
        unint = side.uninteresting[u].tolist()
        assert len(set(unint)) == 6 and not set(unint) & set(listed) and not observed[u, unint].any()
    total, parts = d.loss(student, torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5]))
    assert set(parts) == {"rrd", "rrd_item"} and total.item() > 0


def test_rrd_draws_of_an_int64_checkpoint_read_back_as_int32(data: SimpleNamespace) -> None:
    # Checkpoints written before the draws were int32 hold int64 ones; a resumed job keeps them as it draws them.
    teacher, student = models()
    d = build_distiller("rrd", m=10, k=4, l=6)
    d.prepare(teacher, data, "cpu")
    d.on_epoch_start(student, 0)
    old = {k: v.long() for k, v in d.state_dict().items()}
    resumed = build_distiller("rrd", m=10, k=4, l=6)
    resumed.prepare(teacher, data, "cpu")
    resumed.load_state_dict(old)
    side, was = resumed.user_ranking, d.user_ranking
    assert side.interesting.dtype == side.uninteresting.dtype == torch.int32
    assert torch.equal(side.interesting, was.interesting) and torch.equal(side.uninteresting, was.uninteresting)
    batch = torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5])
    assert torch.equal(resumed.loss(student, *batch)[0], d.loss(student, *batch)[0])


def test_ranking_side_in_row_blocks_is_the_one_built_at_once(
    data: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    teacher, _ = models()
    lists = teacher_topm(teacher, data.train, 10)[0]
    lists[3, -2:] = torch.from_numpy(data.train[3].indices[:2].astype(np.int64))  # a padded row: duplicate keys
    sides = []
    # One block; then build blocks of 7 rows (M = 10) across key blocks of 3 rows, and within one of every row.
    for entries, key_rows in ((N_USERS * 10, 2048), (70, 3), (70, N_USERS)):
        monkeypatch.setattr(ranking, "BLOCK_ENTRIES", entries)
        monkeypatch.setattr(sampling, "EXCLUDED_BLOCK_ROWS", key_rows)
        side = RankingSide(lists, data.train, 4, 3, 10.0, False)
        side.resample(torch.Generator().manual_seed(4))
        sides.append(side)
    observed = data.train.toarray() > 0
    for side in sides:
        assert side.excluded.keys.dtype == torch.int32 and side.excluded.n_cols == N_ITEMS
        for u in range(N_USERS):
            expected = np.unique(np.concatenate([np.flatnonzero(observed[u]), lists[u].numpy()]))
            assert torch.equal(side.excluded.columns(u), torch.from_numpy(expected))
            assert int(side.available[u]) == N_ITEMS - len(expected)
            assert not np.isin(side.uninteresting[u].numpy(), expected).any()  # searched in its own key block
    whole = sides[0]
    assert torch.equal(whole.interesting, sides[1].interesting)  # the same draws from the same generator
    assert torch.equal(whole.uninteresting, sides[2].uninteresting)  # one chunk of every row in both


def test_none_distiller_adds_zero_and_registry_validates() -> None:
    assert set(DISTILLERS) == {"none", "rrd", "dcd", "hetcomp"}
    d = build_distiller("none")
    loss, parts = d.loss(BPRMF(3, 3, 2), torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    assert loss.item() == 0.0 and parts == {}
    assert d.describe()["method"] == "none"
    with pytest.raises(ValueError, match="unknown distiller"):
        build_distiller("kd")
    with pytest.raises(ValueError, match="p"):
        build_distiller("dcd", p=0)
    with pytest.raises(ValueError, match="bogus"):
        build_distiller("rrd", bogus=1)


def test_row_fraction_is_unbiased_and_uses_a_subset(data: SimpleNamespace) -> None:
    """With RRD samples fixed for the epoch, the mean of the row-subsampled (re-weighted) loss over many
    batches equals the full loss, and each draw touches only ceil(f * n) distinct users."""
    teacher, student = models()
    users = torch.arange(N_USERS)
    pos = torch.zeros(N_USERS, dtype=torch.long)
    full = build_distiller("rrd", k=5, l=5, m=20, seed=3)
    full.prepare(teacher, data, "cpu")
    full.on_epoch_start(student, 0)
    sub = build_distiller("rrd", k=5, l=5, m=20, seed=3, row_fraction=0.25)
    sub.prepare(teacher, data, "cpu")
    sub.on_epoch_start(student, 0)  # same seed: same interesting/uninteresting samples as `full`
    with torch.no_grad():
        ref = full.loss(student, users, pos, pos)[0].item()
        draws = [sub.loss(student, users, pos, pos)[0].item() for _ in range(1500)]
    assert np.mean(draws) == pytest.approx(ref, rel=0.03)
    assert np.std(draws) > 0  # really a random subset
    from core.distill.base import batch_rows

    rows, weight = batch_rows(users, 0.25, torch.Generator().manual_seed(0))
    assert weight == N_USERS / rows.numel()
    assert rows.numel() == math.ceil(0.25 * N_USERS) and rows.unique().numel() == rows.numel()


def test_lists_cache_computes_the_teacher_lists_once(
    data: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import core.distill.base as base

    calls = []
    real = base.teacher_topm

    def counting(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(base, "teacher_topm", counting)
    teacher, _ = models()
    cache: dict = {}
    rrd = build_distiller("rrd", m=20, k=5, l=5)
    rrd.prepare(teacher, data, "cpu", cache)
    dcd = build_distiller("dcd", m=20, p=5, rkd_k=5, rkd_l=5)
    dcd.prepare(teacher, data, "cpu", cache)
    assert calls == [20] and dcd.user_top is rrd.user_ranking.lists


# --- fused terms and the gather ----------------------------------------------------------------
def test_ranking_terms_equal_the_separate_losses() -> None:
    g = torch.Generator().manual_seed(3)
    a1, a2 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)  # stacked with b
    b1, b2 = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    c1, c2 = torch.randn(2, 6, generator=g), torch.randn(2, 0, generator=g)  # its own width: alone
    terms = [RankingTerm("a", a1, a2, 0.5), RankingTerm("b", b1, b2, 2.0), RankingTerm("c", c1, c2, 1e-3)]
    total, parts = ranking_terms(terms)
    expect = {n: relaxed_ranking_loss_lse(x, y).item() for n, x, y, _ in terms}
    assert parts == pytest.approx(expect, rel=1e-5)
    assert total.item() == pytest.approx(0.5 * expect["a"] + 2.0 * expect["b"] + 1e-3 * expect["c"], rel=1e-5)
    rows = relaxed_ranking_loss_rows(a1, a2)
    assert rows.shape == (5,)
    torch.testing.assert_close(
        rows, torch.stack([relaxed_ranking_loss_lse(a1[i : i + 1], a2[i : i + 1]) for i in range(5)])
    )
    with pytest.raises(ValueError):
        ranking_terms([])


def test_row_dot_matches_autograd_of_gather_and_dot() -> None:
    torch.manual_seed(0)
    rt = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    ct = torch.randn(9, 3, dtype=torch.float64, requires_grad=True)
    rows = torch.tensor([0, 4, 4, 6])  # repeated rows and columns accumulate
    cols = torch.tensor([[0, 8, 8], [1, 2, 3], [8, 8, 0], [5, 5, 5]])
    w = torch.randn(4, 3, dtype=torch.float64)
    out = row_dot(rt, ct, rows, cols)
    (out * w).sum().backward()
    got = rt.grad.clone(), ct.grad.clone()
    rt.grad = ct.grad = None
    expect = (rt[rows][:, None, :] * ct[cols]).sum(-1)
    (expect * w).sum().backward()
    torch.testing.assert_close(out, expect)
    torch.testing.assert_close(got[0], rt.grad)
    torch.testing.assert_close(got[1], ct.grad)
    assert torch.autograd.gradcheck(lambda a, b: row_dot(a, b, rows, cols), (rt, ct))
    # Only the table that needs a gradient gets one; constant tables take the no-autograd path.
    frozen = ct.detach()
    (row_dot(rt, frozen, rows, cols) * w).sum().backward()
    assert frozen.grad is None
    torch.testing.assert_close(row_dot(rt.detach(), frozen, rows, cols), expect.detach())


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_configs_refuse_non_finite_numbers(value: float) -> None:
    from pydantic import ValidationError

    from core.config import DCDConfig, RRDConfig, TrainConfig

    for cls, key in [(DCDConfig, "lambda_ucd"), (DCDConfig, "eps"), (RRDConfig, "t"), (TrainConfig, "lr")]:
        with pytest.raises(ValidationError, match="finite"):
            cls(**{key: value})
