"""Serving bundle: round trip, top-K against a numpy argsort, seen/exclude filtering, paging, fallback, the
index chosen by size and its recall, memory-mapped loading, version 1 bundles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from core.ann import IndexSpec, choose_kind
from core.index import BundleError, ServingBundle, UnknownIdError, read_index_info, write_bundle
from tests.factories import write_v1_bundle


def make_bundle_arrays(n_users: int = 30, n_items: int = 50, dim: int = 8, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    seen = sp.random(n_users, n_items, density=0.15, random_state=seed, format="csr", dtype=np.float32)
    seen.data[:] = 1.0
    counts = np.asarray(seen.sum(axis=0)).ravel()
    return {
        "user_emb": rng.standard_normal((n_users, dim)).astype(np.float32),
        "item_emb": rng.standard_normal((n_items, dim)).astype(np.float32),
        "user_ids": [f"u{i}" for i in range(n_users)],
        "item_ids": [f"i{j}" for j in range(n_items)],
        "seen": seen,
        "popularity": np.argsort(-counts, kind="stable").astype(np.int64),
        "model_id": "m" * 32,
    }


@pytest.fixture()
def arrays() -> dict:
    return make_bundle_arrays()


@pytest.fixture()
def bundle(tmp_path: Path, arrays: dict) -> ServingBundle:
    write_bundle(tmp_path / "serving", **arrays)
    return ServingBundle.load(tmp_path / "serving")


def reference(arrays: dict, user: int, k: int, offset: int = 0, blocked: set[int] = frozenset()) -> list[str]:
    scores = arrays["item_emb"] @ arrays["user_emb"][user]
    order = [j for j in np.argsort(-scores, kind="stable") if j not in blocked]
    return [arrays["item_ids"][j] for j in order[offset : offset + k]]


def test_round_trip_files_and_meta(tmp_path: Path, arrays: dict) -> None:
    out = write_bundle(tmp_path / "serving", **arrays)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["model_id"] == arrays["model_id"] and meta["n_items"] == 50 and meta["dim"] == 8
    assert np.load(out / "item_emb.npy").dtype == np.float32
    # Only the bundle remains: the tmp folder was renamed into place.
    assert [p.name for p in tmp_path.iterdir()] == ["serving"]
    loaded = ServingBundle.load(out)
    np.testing.assert_array_equal(loaded.user_emb, arrays["user_emb"])
    assert (loaded.seen != arrays["seen"]).nnz == 0


def test_rewrite_replaces_existing_bundle(tmp_path: Path, arrays: dict) -> None:
    write_bundle(tmp_path / "serving", **arrays)
    write_bundle(tmp_path / "serving", **{**arrays, "model_id": "n" * 32})
    assert ServingBundle.load(tmp_path / "serving").model_id == "n" * 32
    assert [p.name for p in tmp_path.iterdir()] == ["serving"]


def test_topk_matches_numpy_argsort(bundle: ServingBundle, arrays: dict) -> None:
    for user in range(5):
        items, scores, source = bundle.recommend(f"u{user}", k=10, exclude_seen=False)
        assert source == "personalized"
        assert items == reference(arrays, user, 10)
        expected = np.sort(arrays["item_emb"] @ arrays["user_emb"][user])[::-1][:10]
        np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)


def test_seen_items_are_filtered(bundle: ServingBundle, arrays: dict) -> None:
    for user in range(10):
        seen = set(arrays["seen"][user].indices.tolist())
        items, _, _ = bundle.recommend(f"u{user}", k=15)
        assert items == reference(arrays, user, 15, blocked=seen)
        assert not {f"i{j}" for j in seen} & set(items)


def test_exclude_list_and_unknown_exclude_ids(bundle: ServingBundle, arrays: dict) -> None:
    top = reference(arrays, 3, 5, blocked=set(arrays["seen"][3].indices.tolist()))
    items, _, _ = bundle.recommend("u3", k=5, exclude=[top[0], top[2], "no-such-item"])
    assert top[0] not in items and top[2] not in items
    assert items[:3] == [top[1], top[3], top[4]]


def test_offset_pages_concatenate(bundle: ServingBundle) -> None:
    full = bundle.recommend("u1", k=12).items
    pages = bundle.recommend("u1", k=4).items + bundle.recommend("u1", k=4, offset=4).items
    pages += bundle.recommend("u1", k=4, offset=8).items
    assert pages == full


def test_k_larger_than_catalogue_returns_all_unseen(bundle: ServingBundle, arrays: dict) -> None:
    n_unseen = 50 - arrays["seen"][0].nnz
    assert len(bundle.recommend("u0", k=500).items) == n_unseen


def test_flat_search_equals_faiss_flat_index_with_selector(arrays: dict) -> None:
    """recommend() (k, offset, exclusions, seen filter) returns a plain IndexFlatIP + bitmap-selector search."""
    import faiss

    bundle = ServingBundle(**arrays)
    index = faiss.IndexFlatIP(arrays["item_emb"].shape[1])
    index.add(arrays["item_emb"])
    for user in range(30):
        for k, offset, exclude in [(5, 0, []), (10, 3, ["i1", "i7", "i7"]), (60, 0, ["i2"])]:
            blocked = set(arrays["seen"][user].indices.tolist()) | {int(i[1:]) for i in exclude}
            allowed = np.array([j not in blocked for j in range(50)], dtype=bool)
            bits = np.packbits(allowed, bitorder="little")
            params = faiss.SearchParameters(sel=faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits)))
            depth = min(k + offset, 50)
            scores, labels = index.search(arrays["user_emb"][user : user + 1], depth, params=params)
            keep = labels[0] >= 0
            want = labels[0][keep][offset : offset + k]
            items, got_scores, _ = bundle.recommend(f"u{user}", k=k, offset=offset, exclude=exclude)
            assert items == [f"i{j}" for j in want]
            np.testing.assert_allclose(got_scores, scores[0][keep][offset : offset + k], rtol=1e-5, atol=1e-5)


def test_user_who_saw_everything_gets_nothing(arrays: dict) -> None:
    seen = arrays["seen"].tolil()
    seen[4, :] = 1.0
    bundle = ServingBundle(**{**arrays, "seen": seen.tocsr()})
    assert bundle.recommend("u4", k=10) == ([], [], "personalized")
    assert len(bundle.recommend("u4", k=10, exclude_seen=False).items) == 10
    almost = seen.tocsr()
    almost[4, 7] = 0.0
    almost.eliminate_zeros()
    bundle = ServingBundle(**{**arrays, "seen": almost})
    assert bundle.recommend("u4", k=10).items == ["i7"]
    assert bundle.recommend("u4", k=10, offset=1).items == []


def test_unknown_user_popular_fallback_or_error(bundle: ServingBundle, arrays: dict) -> None:
    items, scores, source = bundle.recommend("stranger", k=5)
    assert source == "popular"
    assert items == [arrays["item_ids"][j] for j in arrays["popularity"][:5]]
    assert scores == sorted(scores, reverse=True)
    items2, _, _ = bundle.recommend("stranger", k=5, exclude=[items[0]])
    assert items2[:4] == items[1:]
    with pytest.raises(UnknownIdError, match="stranger"):
        bundle.recommend("stranger", k=5, fallback=False)


def test_batch_equals_single_calls(bundle: ServingBundle) -> None:
    users = ["u0", "nobody", "u7", "u7", "u29"]
    batch = bundle.recommend_batch(users, k=6, offset=1, exclude=["i3"])
    assert batch == [bundle.recommend(u, k=6, offset=1, exclude=["i3"]) for u in users]
    with pytest.raises(UnknownIdError):
        bundle.recommend_batch(users, k=6, fallback=False)


def test_similar_is_cosine_and_excludes_itself(bundle: ServingBundle, arrays: dict) -> None:
    emb = arrays["item_emb"] / np.linalg.norm(arrays["item_emb"], axis=1, keepdims=True)
    cos = emb @ emb[4]
    cos[4] = -np.inf
    items, scores, source = bundle.similar("i4", k=5)
    assert source == "similar" and "i4" not in items
    assert items == [arrays["item_ids"][j] for j in np.argsort(-cos, kind="stable")[:5]]
    np.testing.assert_allclose(scores, np.sort(cos)[::-1][:5], rtol=1e-5, atol=1e-5)
    with pytest.raises(UnknownIdError, match="nope"):
        bundle.similar("nope", k=3)


def test_bad_k_is_refused(bundle: ServingBundle) -> None:
    with pytest.raises(ValueError, match="k must be"):
        bundle.recommend("u0", k=0)


def test_inconsistent_arrays_refused_and_nothing_written(tmp_path: Path, arrays: dict) -> None:
    with pytest.raises(BundleError, match="item_ids"):
        write_bundle(tmp_path / "serving", **{**arrays, "item_ids": arrays["item_ids"][:-1]})
    with pytest.raises(BundleError, match="NaN"):
        bad = arrays["item_emb"].copy()
        bad[0, 0] = np.nan
        write_bundle(tmp_path / "serving", **{**arrays, "item_emb": bad})
    assert list(tmp_path.iterdir()) == []


def test_load_missing_or_corrupt_bundle(tmp_path: Path, arrays: dict) -> None:
    with pytest.raises(BundleError, match="missing"):
        ServingBundle.load(tmp_path / "nothing")
    out = write_bundle(tmp_path / "serving", **arrays)
    (out / "user_emb.npy").write_bytes(b"garbage")
    with pytest.raises(BundleError, match="unreadable"):
        ServingBundle.load(out)


def structured_embeddings(n_users: int, n_items: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Clustered factors like a trained MF model: a few taste clusters plus noise, popularity in the norms."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((16, dim))
    items = centers[rng.integers(0, 16, n_items)] + 0.5 * rng.standard_normal((n_items, dim))
    items *= rng.lognormal(0.0, 0.4, (n_items, 1))
    users = centers[rng.integers(0, 16, n_users)] + 0.5 * rng.standard_normal((n_users, dim))
    return users.astype(np.float32), items.astype(np.float32)


def structured_arrays(n_users: int = 500, n_items: int = 2000, dim: int = 20, density: float = 0.0) -> dict:
    users, items = structured_embeddings(n_users, n_items, dim, seed=1)
    seen = sp.random(n_users, n_items, density=density, random_state=2, format="csr", dtype=np.float32)
    seen.data[:] = 1.0
    return {
        "user_emb": users,
        "item_emb": items,
        "user_ids": [f"u{i}" for i in range(n_users)],
        "item_ids": [f"i{j}" for j in range(n_items)],
        "seen": seen,
        "popularity": np.arange(n_items, dtype=np.int64),
        "model_id": "h" * 32,
    }


def test_kind_is_chosen_by_size_unless_overridden() -> None:
    assert choose_kind(100_000, IndexSpec()) == "flat" and choose_kind(100_001, IndexSpec()) == "ivf"
    assert choose_kind(50, IndexSpec(exact_max_items=10)) == "ivf"
    assert choose_kind(10**6, IndexSpec(choice="flat")) == "flat"
    assert choose_kind(5, IndexSpec(choice="hnsw")) == "hnsw"


@pytest.mark.parametrize(("spec", "kind"), [(IndexSpec(exact_max_items=2000), "flat"),
                                            (IndexSpec(exact_max_items=1999), "ivf"),
                                            (IndexSpec(choice="hnsw"), "hnsw")])
def test_bundle_holds_the_chosen_index_and_its_measured_recall(tmp_path: Path, spec: IndexSpec, kind: str) -> None:
    arrays = structured_arrays()
    out = write_bundle(tmp_path / "serving", **arrays, index=spec)
    info = json.loads((out / "meta.json").read_text())["index"]
    assert info == read_index_info(out) and info["kind"] == kind and (out / "index.faiss").is_file()
    loaded = ServingBundle.load(out, IndexSpec(choice="flat"))  # the API's setting does not rebuild it
    assert loaded.kind == kind and loaded.index_info.to_json() == info
    if kind == "flat":
        assert info["recall_at_10"] is None and info["params"] == {}
        return
    assert info["recall_at_10"] >= 0.95 and info["recall_queries"] == 500
    # The stored recall is what the served index reaches at its stored breadth (no seen items here).
    exact = ServingBundle(**arrays, index="flat")
    ids = arrays["user_ids"]
    truth = [set(r.items) for r in exact.recommend_batch(ids, k=10)]
    got = loaded.recommend_batch(ids, k=10)
    recall = np.mean([len(set(g.items) & t) / 10 for g, t in zip(got, truth, strict=True)])
    assert recall == pytest.approx(info["recall_at_10"], abs=1e-9) and all(len(g.items) == 10 for g in got)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_filters_stay_exact_inside_an_approximate_search(tmp_path: Path, kind: str) -> None:
    arrays = structured_arrays(n_users=60, density=0.2)
    seen = arrays["seen"].tolil()
    seen[0, :] = 1.0  # user 0 has seen all but 12 items: the probed lists hold fewer than k unseen ones
    seen[0, np.arange(5, 2000, 166)] = 0.0
    arrays["seen"] = seen.tocsr()
    bundle = ServingBundle.load(write_bundle(tmp_path / "serving", **arrays, index=kind))
    blocked_ids = [f"i{j}" for j in range(0, 2000, 7)]
    for user in range(60):
        seen_codes = set(arrays["seen"][user].indices.tolist())
        rec = bundle.recommend(f"u{user}", 20, exclude=blocked_ids)
        assert len(rec.items) == min(20, 2000 - len(seen_codes | set(range(0, 2000, 7))))
        assert not {int(i[1:]) for i in rec.items} & (seen_codes | set(range(0, 2000, 7)))
    # User 0's 12 unseen items, every one of them, best first: the filtered search widened to all lists.
    assert bundle.recommend("u0", 20).items == reference(arrays, 0, 20, blocked=set(arrays["seen"][0].indices))
    if kind == "ivf":  # probing every list is exact: filtered answers equal the numpy reference
        bundle.set_breadth(bundle.index_info.params["nlist"])
        for user in range(1, 60):
            blocked = set(arrays["seen"][user].indices.tolist()) | set(range(0, 2000, 7))
            assert bundle.recommend(f"u{user}", 10, exclude=blocked_ids).items == reference(arrays, user, 10,
                                                                                              blocked=blocked)


def test_load_is_memory_mapped(tmp_path: Path, arrays: dict) -> None:
    """Arrays, id maps and the FAISS index are mapped from the bundle's files (shared by every process through
    the page cache), not read into private memory."""
    out = write_bundle(tmp_path / "serving", **arrays, index="ivf")
    bundle = ServingBundle.load(out)
    for arr in (bundle.user_emb, bundle.item_emb, bundle._seen_indices, bundle._seen_bytes, bundle._popular_order):
        assert isinstance(arr.base, np.memmap) and not arr.flags.writeable
    maps = Path("/proc/self/maps").read_text()
    for name in ("index.faiss", "item_ids.npy", "user_sorted.npy", "item_unit.npy"):
        assert str(out.resolve() / name) in maps, name
    assert bundle.recommend("u1", 5).items == ServingBundle(**arrays, index="ivf").recommend("u1", 5).items


def test_version_1_bundles_keep_serving_with_an_index_built_at_load(tmp_path: Path, arrays: dict) -> None:
    out = write_v1_bundle(tmp_path / "serving", arrays)
    old = ServingBundle.load(out, IndexSpec(exact_max_items=10))
    assert old.kind == "ivf" and old.index_info.recall_at_10 is not None and read_index_info(out) is None
    exact = ServingBundle.load(out)
    assert exact.kind == "flat" and exact.recommend("u2", 7).items == reference(
        arrays, 2, 7, blocked=set(arrays["seen"][2].indices))
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "version": 3}))
    with pytest.raises(BundleError, match="version 3"):
        ServingBundle.load(out)


def test_ids_with_odd_characters_round_trip(tmp_path: Path, arrays: dict) -> None:
    ids = ["a", "a\x00", "", "Godfather, The (1972)", "ü" * 40] + [f"i{j}" for j in range(45)]
    bundle = ServingBundle.load(write_bundle(tmp_path / "serving", **{**arrays, "item_ids": ids}))
    assert [bundle.item_ids[c] for c in range(50)] == ids
    assert [bundle.item_index.get(i) for i in ids] == list(range(50)) and bundle.item_index.get("a\x00\x00") is None
    assert "Godfather, The (1972)" in bundle.item_index and bundle.comma_id_widths == {"Godfather": (2,)}
    with pytest.raises(BundleError, match="not unique"):
        write_bundle(tmp_path / "dup", **{**arrays, "item_ids": ["x"] * 50})


def test_seen_byte_masks_equal_a_dense_bitmap() -> None:
    """The O(seen) per-user byte masks clear exactly the seen items, users with none included."""
    import scipy.sparse as sp

    from core.index import _seen_byte_masks

    rng = np.random.default_rng(3)
    dense = rng.random((40, 53)) < 0.2
    dense[5] = False  # a user with nothing seen
    dense[7] = True  # a user who saw everything
    seen = sp.csr_matrix(dense.astype(np.float32))
    ptr, byte_idx, inv = _seen_byte_masks(seen)
    n_bytes = (53 + 7) // 8
    for u in range(40):
        bits = np.full(n_bytes, 0xFF, dtype=np.uint8)
        bits[byte_idx[ptr[u] : ptr[u + 1]]] &= inv[ptr[u] : ptr[u + 1]]
        allowed = np.unpackbits(bits, bitorder="little")[:53].astype(bool)
        assert np.array_equal(allowed, ~dense[u]), u
