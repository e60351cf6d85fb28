"""New-user fold-in (``ServingBundle.fold_in`` / ``recommend_items``): the ridge solve against a hand-computed
case, exclusion of the given items, unknown ids and the popular fallback."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from core.index import ServingBundle, UnknownIdError


@pytest.fixture()
def tiny() -> ServingBundle:
    # Items a=(1,0), b=(0,2), c=(1,1), d=(-1,0), e=(0,1); one known user who saw nothing.
    item_emb = np.array([[1, 0], [0, 2], [1, 1], [-1, 0], [0, 1]], dtype=np.float32)
    return ServingBundle(np.ones((1, 2), np.float32), item_emb, ["u"], list("abcde"),
                         sp.csr_matrix((1, 5), dtype=np.float32), np.array([4, 3, 2, 1, 0]), "m" * 32)


def test_ridge_fold_in_matches_hand_computed_case(tiny: ServingBundle) -> None:
    # V = [[1,0],[0,2]], lam 1: (V^T V + I) = diag(2, 5), V^T 1 = (1, 2)  ->  u = (1/2, 2/5).
    u = tiny.fold_in(np.array([0, 1]), lam=1.0)
    assert u == pytest.approx([0.5, 0.4])
    # The ridge is in units of the mean squared item norm: (1 + 4 + 2 + 1 + 1) / 5 = 1.8.
    assert tiny.mean_sq_norm == pytest.approx(1.8)
    # Scores u.v: c 0.9, e 0.4, d -0.5; a and b (the given items) are never returned.
    rec = tiny.recommend_items(["a", "b"], k=5, ridge=1 / 1.8)
    assert rec.source == "folded_in"
    assert rec.items == ["c", "e", "d"] and rec.scores == pytest.approx([0.9, 0.4, -0.5])


def test_unknown_and_repeated_items_and_exclude(tiny: ServingBundle) -> None:
    plain = tiny.recommend_items(["a", "b"], k=5, ridge=1 / 1.8)
    # Unknown ids are ignored and a repeated item counts once.
    assert tiny.recommend_items(["zz", "a", "b", "a"], k=5, ridge=1 / 1.8) == plain
    assert tiny.recommend_items(["a", "b"], k=5, exclude=["c", "nope"], ridge=1 / 1.8).items == ["e", "d"]
    assert tiny.recommend_items(["a", "b"], k=1, offset=1, ridge=1 / 1.8).items == ["e"]


def test_no_known_item_falls_back_to_popular_or_raises(tiny: ServingBundle) -> None:
    rec = tiny.recommend_items(["x", "y"], k=2)
    assert rec.source == "popular" and rec.items == ["e", "d"]
    with pytest.raises(UnknownIdError) as err:
        tiny.recommend_items(["x", "y"], k=2, fallback=False)
    assert err.value.kind == "item"
    with pytest.raises(ValueError, match="lam"):
        tiny.fold_in(np.array([0]), lam=0.0)


def test_ridge_is_relative_to_the_embedding_scale(tiny: ServingBundle) -> None:
    # Every embedding x 3: the same relative ridge gives the same ranking (scores x 1, as u shrinks by 3).
    scaled = ServingBundle(tiny.user_emb, tiny.item_emb * 3, ["u"], list("abcde"), tiny.seen, tiny.popularity,
                           tiny.model_id)
    a, b = tiny.recommend_items(["a", "c"], k=3), scaled.recommend_items(["a", "c"], k=3)
    assert a.items == b.items and a.scores == pytest.approx(b.scores, rel=1e-5)


def test_fold_in_equals_numpy_lstsq_on_random_bundle() -> None:
    rng = np.random.default_rng(0)
    item_emb = rng.standard_normal((40, 6)).astype(np.float32)
    bundle = ServingBundle(np.zeros((1, 6), np.float32), item_emb, ["u"], [f"i{j}" for j in range(40)],
                           sp.csr_matrix((1, 40), dtype=np.float32), np.arange(40), "m" * 32)
    codes = np.array([3, 7, 11, 20, 21, 30, 31, 39])
    lam = 0.3
    # Ridge as an augmented least squares: [V; sqrt(lam) I] u = [1; 0].
    a = np.vstack([item_emb[codes].astype(np.float64), np.sqrt(lam) * np.eye(6)])
    b = np.concatenate([np.ones(len(codes)), np.zeros(6)])
    expected = np.linalg.lstsq(a, b, rcond=None)[0]
    assert bundle.fold_in(codes, lam=lam) == pytest.approx(expected, rel=1e-4, abs=1e-5)
    rec = bundle.recommend_items([f"i{c}" for c in codes], k=40, ridge=lam / bundle.mean_sq_norm)
    assert len(rec.items) == 32 and not set(rec.items) & {f"i{c}" for c in codes}
    scores = item_emb @ expected
    order = [f"i{j}" for j in np.argsort(-scores) if j not in set(codes)]
    assert rec.items[:10] == order[:10]
