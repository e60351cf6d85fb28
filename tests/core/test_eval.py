"""Evaluation: every metric against hand-computed cases, exclusions, chunking and the sampled protocol."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from core.data import SplitData
from core.eval import evaluate, sample_candidates
from core.models.base import Recommender


class FixedScores(Recommender):
    """A 'model' whose scores are a given matrix."""

    name = "fixed"

    def __init__(self, scores: np.ndarray) -> None:
        super().__init__(scores.shape[0], scores.shape[1], 1)
        self.register_buffer("table", torch.as_tensor(scores, dtype=torch.float32))

    def full_scores(self, users: torch.Tensor) -> torch.Tensor:
        return self.table[users]

    def score(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.table[users.unsqueeze(1), items] if items.dim() == 2 else self.table[users, items]


def csr(cells: list[tuple[int, int]], shape: tuple[int, int]) -> sp.csr_matrix:
    rows = [r for r, _ in cells]
    cols = [c for _, c in cells]
    return sp.csr_matrix((np.ones(len(cells), np.float32), (rows, cols)), shape=shape)


def split(train: list, valid: list, test: list, shape: tuple[int, int]) -> SplitData:
    return SplitData(
        train=csr(train, shape),
        valid=csr(valid, shape),
        test=csr(test, shape),
        user_ids=np.array([str(u) for u in range(shape[0])]),
        item_ids=np.array([str(i) for i in range(shape[1])]),
        fingerprint="t",
    )


SCORES = np.array(
    [
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],  # user 0: ranking 0 1 2 3 4 5
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # user 1: no test items -> skipped
        [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # user 2
    ]
)


def d(pos: int) -> float:
    return 1 / math.log2(pos + 2)


def test_full_ranking_hand_computed() -> None:
    # user 0: train {0}, valid {1}, test {2, 5} -> test ranking after exclusion: 2 3 4 5 -> hits at 0 and 3
    # user 2: train {}, valid {0}, test {3}   -> ranking 1 2 3 4 5 -> hit at position 2
    data = split(train=[(0, 0)], valid=[(0, 1), (2, 0)], test=[(0, 2), (0, 5), (2, 3)], shape=(3, 6))
    m = evaluate(FixedScores(SCORES), data, "test", ks=(1, 3, 5))
    u0 = {
        "recall@1": 1 / 2,
        "precision@1": 1.0,
        "hit@1": 1.0,
        "ndcg@1": 1.0,
        "mrr@1": 1.0,
        "recall@3": 1 / 2,
        "precision@3": 1 / 3,
        "hit@3": 1.0,
        "ndcg@3": d(0) / (d(0) + d(1)),
        "mrr@3": 1.0,
        "recall@5": 1.0,
        "precision@5": 2 / 5,
        "hit@5": 1.0,
        "ndcg@5": (d(0) + d(3)) / (d(0) + d(1)),
        "mrr@5": 1.0,
    }
    u2 = {
        "recall@1": 0.0,
        "precision@1": 0.0,
        "hit@1": 0.0,
        "ndcg@1": 0.0,
        "mrr@1": 0.0,
        "recall@3": 1.0,
        "precision@3": 1 / 3,
        "hit@3": 1.0,
        "ndcg@3": d(2),
        "mrr@3": 1 / 3,
        "recall@5": 1.0,
        "precision@5": 1 / 5,
        "hit@5": 1.0,
        "ndcg@5": d(2),
        "mrr@5": 1 / 3,
    }
    assert set(m) == set(u0)
    for key in u0:
        assert m[key] == pytest.approx((u0[key] + u2[key]) / 2), key


def test_validation_split_and_exclusion_switches() -> None:
    data = split(train=[(0, 0)], valid=[(0, 1), (2, 0)], test=[(0, 2), (0, 5), (2, 3)], shape=(3, 6))
    # valid, user 0: ranking 1 2 3 4 5 -> hit at 0; user 2: item 0 is first
    m = evaluate(FixedScores(SCORES), data, "valid", ks=(1,))
    assert m["hit@1"] == 1.0 and m["ndcg@1"] == 1.0
    # without train exclusion user 0's item 0 takes the first place
    m = evaluate(FixedScores(SCORES), data, "valid", ks=(1, 2), exclude_train=False)
    assert m["hit@1"] == pytest.approx(0.5) and m["mrr@2"] == pytest.approx(0.75)


def test_chunking_does_not_change_results() -> None:
    rng = np.random.default_rng(0)
    shape = (30, 25)
    cells = {
        (int(u), int(i)) for u, i in zip(rng.integers(0, 30, 200), rng.integers(0, 25, 200), strict=True)
    }
    cells_l = sorted(cells)
    data = split(cells_l[::3], cells_l[1::3], cells_l[2::3], shape)
    model = FixedScores(rng.random(shape))
    whole = evaluate(model, data, "test", chunk_size=1024)
    assert whole == pytest.approx(evaluate(model, data, "test", chunk_size=4))
    assert set(whole) == {
        f"{m}@{k}" for m in ("recall", "ndcg", "hit", "mrr", "precision") for k in (5, 10, 20)
    }


@pytest.mark.parametrize("protocol", ["full", "sampled"])
def test_a_user_sample_counts_only_its_users(protocol: str) -> None:
    rng = np.random.default_rng(1)
    shape = (30, 25)
    cells = sorted({(int(u), int(i)) for u, i in zip(rng.integers(0, 30, 200), rng.integers(0, 25, 200), strict=True)})
    data = split(cells[::3], cells[1::3], cells[2::3], shape)
    model = FixedScores(rng.random(shape))
    users = np.array([0, 3, 4, 7, 11, 20])
    # the same as evaluating a split whose other users have no targets
    kept = [(u, i) for u, i in cells[1::3] if u in set(users.tolist())]
    alone = split(cells[::3], kept, cells[2::3], shape)
    assert evaluate(model, data, "valid", protocol=protocol, users=users) == pytest.approx(
        evaluate(model, alone, "valid", protocol=protocol))
    assert evaluate(model, data, "valid", users=np.arange(30)) == evaluate(model, data, "valid")
    with pytest.raises(ValueError, match="no interactions"):
        evaluate(model, data, "valid", users=np.array([], dtype=np.int64))


def test_sampled_protocol_hand_computed() -> None:
    # user 0 observed {0 train, 1 valid, 3 test}; unobserved {2, 4, 5}; 3 negatives -> all of them.
    scores = np.array([[0.0, 0.0, 0.9, 0.5, 0.1, 0.2]])
    data = split(train=[(0, 0)], valid=[(0, 1)], test=[(0, 3)], shape=(1, 6))
    m = evaluate(FixedScores(scores), data, "test", ks=(1, 2), protocol="sampled", n_negatives=3)
    # item 2 beats the target: 0-based rank 1
    assert m["hit@1"] == 0.0 and m["hit@2"] == 1.0
    assert m["ndcg@2"] == pytest.approx(d(1)) and m["mrr@2"] == pytest.approx(0.5)
    assert m["recall@2"] == 1.0 and m["precision@2"] == pytest.approx(0.5)


def test_sampled_ties_count_against_target_and_candidates_are_unobserved() -> None:
    data = split(train=[(0, 0), (1, 1)], valid=[(0, 1)], test=[(0, 2), (1, 3)], shape=(2, 40))
    m = evaluate(FixedScores(np.zeros((2, 40))), data, "test", ks=(5,), protocol="sampled", n_negatives=10)
    assert m["hit@5"] == 0.0  # a constant scorer earns nothing
    cands = sample_candidates(data, 10, seed=3, chunk_size=1)
    assert cands.shape == (2, 10)
    assert not set(cands[0]) & {0, 1, 2} and not set(cands[1]) & {1, 3}
    assert all(len(set(row)) == 10 for row in cands)
    np.testing.assert_array_equal(cands, sample_candidates(data, 10, seed=3, chunk_size=1))
    short = sample_candidates(data, 39, seed=0, chunk_size=8)
    assert (short[0] == -1).sum() == 2  # only 37 unobserved items: padded


def test_bad_arguments_name_the_field() -> None:
    data = split(train=[(0, 0)], valid=[], test=[(0, 1)], shape=(1, 3))
    model = FixedScores(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="split must be"):
        evaluate(model, data, "train")
    with pytest.raises(ValueError, match="protocol must be"):
        evaluate(model, data, protocol="paper")
    with pytest.raises(ValueError, match="ks must be"):
        evaluate(model, data, ks=(0,))
    with pytest.raises(ValueError, match="split 'valid' has no interactions"):
        evaluate(model, data, "valid")


def test_model_mode_is_restored() -> None:
    data = split(train=[(0, 0)], valid=[], test=[(0, 1)], shape=(1, 3))
    model = FixedScores(np.zeros((1, 3))).train()
    evaluate(model, data)
    assert model.training
