"""Tests for core.data: every loader format, filtering, id maps, splits, errors with line numbers, negatives."""

from __future__ import annotations

import bz2
import gzip
import lzma
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.data import DataError, Interactions, NegativeSampler, load_interactions, split


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def pairs(inter: Interactions) -> set[tuple[str, str]]:
    return set(zip(inter.user_ids[inter.users].tolist(), inter.item_ids[inter.items].tolist(), strict=True))


# --- formats ------------------------------------------------------------------------------------------


def test_csv_with_quoted_commas_and_id_maps(tmp_path: Path) -> None:
    path = write(
        tmp_path, "d.csv", 'user_id,item_id\n1m_1,"Heat, The (1995)"\n1m_2,"Heat, The (1995)"\n1m_2,Up\n'
    )
    inter = load_interactions(path)
    assert (inter.n_users, inter.n_items, len(inter)) == (2, 2, 3)
    assert pairs(inter) == {("1m_1", "Heat, The (1995)"), ("1m_2", "Heat, The (1995)"), ("1m_2", "Up")}
    assert inter.users.dtype == np.int64 and inter.items.dtype == np.int64
    for raw, code in inter.item_index.items():
        assert inter.item_ids[code] == raw
    assert inter.user_index == {"1m_1": 0, "1m_2": 1}
    assert inter.timestamps is None


def test_tsv_keeps_quotes_inside_fields(tmp_path: Path) -> None:
    text = 'u\ti\tr\n1\t"Quoted" title, with comma\t5\n1\tOne Flew Over the Cuckoo\'s Nest (1975)\t4\n2\t"unclosed\t3\n'
    inter = load_interactions(write(tmp_path, "d.tsv", text), user_col="u", item_col="i", rating_col="r")
    assert set(inter.item_ids) == {
        '"Quoted" title, with comma',
        "One Flew Over the Cuckoo's Nest (1975)",
        '"unclosed',
    }
    assert sorted(inter.ratings.tolist()) == [3.0, 4.0, 5.0]


def test_recbole_inter_header_matched_before_colon(tmp_path: Path) -> None:
    text = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t242\t3\t881250949\n186\t302\t3\t891717742\n"
    inter = load_interactions(
        write(tmp_path, "x.inter", text), rating_col="rating", timestamp_col="timestamp"
    )
    assert pairs(inter) == {("196", "242"), ("186", "302")}
    assert inter.timestamps is not None and sorted(inter.timestamps.tolist()) == [881250949.0, 891717742.0]


def test_parquet_ints_become_plain_string_ids(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pd.DataFrame({"uid": [7, 7, 8], "iid": [1.0, 2.0, 1.0], "score": [5, 1, 4]}).to_parquet(path)
    inter = load_interactions(path, user_col="uid", item_col="iid", rating_col="score", rating_threshold=4)
    assert pairs(inter) == {("7", "1"), ("8", "1")}


def test_gzip_csv_and_explicit_format_and_separator(tmp_path: Path) -> None:
    gz = tmp_path / "d.csv.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as fh:
        fh.write("user_id,item_id\na,x\nb,y\n")
    assert len(load_interactions(gz)) == 2
    semi = write(tmp_path, "d.txt", "user_id;item_id\na;x\n")
    assert pairs(load_interactions(semi, fmt="csv", sep=";")) == {("a", "x")}


def test_iso_timestamps_are_parsed_to_seconds(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "user_id,item_id,ts\na,x,1970-01-01T00:01:40Z\na,y,1970-01-02\n")
    inter = load_interactions(path, timestamp_col="ts")
    assert inter.timestamps is not None and sorted(inter.timestamps.tolist()) == [100.0, 86400.0]


# --- filtering ----------------------------------------------------------------------------------------


def test_rating_threshold_keeps_ratings_at_or_above(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "user_id,item_id,rating\na,x,3.5\na,y,4\nb,x,5\nc,z,1\n")
    inter = load_interactions(path, rating_col="rating", rating_threshold=4)
    assert pairs(inter) == {("a", "y"), ("b", "x")}
    assert list(inter.user_ids) == ["a", "b"] and list(inter.item_ids) == ["x", "y"]  # "c" and "z" are gone


def test_duplicates_collapse_to_latest(tmp_path: Path) -> None:
    text = "user_id,item_id,rating,timestamp\na,x,1,10\na,x,5,30\na,x,3,20\nb,x,2,5\nb,x,2,5\n"
    inter = load_interactions(write(tmp_path, "d.csv", text), rating_col="rating", timestamp_col="timestamp")
    assert len(inter) == 2
    row = int(np.flatnonzero(inter.user_ids[inter.users] == "a")[0])
    assert inter.timestamps[row] == 30 and inter.ratings[row] == 5
    no_ts = load_interactions(write(tmp_path, "e.csv", "user_id,item_id\na,x\na,x\na,y\n"))
    assert len(no_ts) == 2


def _slow_kcore(rows: set[tuple[int, int]], k: int) -> set[tuple[int, int]]:
    while True:
        ucount: dict[int, int] = {}
        icount: dict[int, int] = {}
        for u, i in rows:
            ucount[u] = ucount.get(u, 0) + 1
            icount[i] = icount.get(i, 0) + 1
        kept = {(u, i) for u, i in rows if ucount[u] >= k and icount[i] >= k}
        if kept == rows:
            return rows
        rows = kept


@pytest.mark.parametrize("k", [2, 3, 4])
def test_kcore_matches_slow_loop(k: int) -> None:
    rng = np.random.default_rng(k)
    u, i = rng.integers(0, 40, 300), rng.integers(0, 30, 300)
    inter = Interactions.from_arrays(u, i, kcore=k)
    expected = {(str(a), str(b)) for a, b in _slow_kcore(set(zip(u.tolist(), i.tolist(), strict=True)), k)}
    assert pairs(inter) == expected and len(expected) > 0
    assert np.bincount(inter.users).min() >= k and np.bincount(inter.items).min() >= k
    assert inter.n_users == len(np.unique(inter.users)) and inter.n_items == len(np.unique(inter.items))


def test_kcore_cascades() -> None:
    # Dropping item "z" (1 user) leaves user "c" with 1 item, which in turn drops item "y" to 1 user ...
    inter = Interactions.from_arrays(["a", "a", "b", "b", "c", "c"], ["w", "x", "w", "x", "y", "z"], kcore=2)
    assert pairs(inter) == {("a", "w"), ("a", "x"), ("b", "w"), ("b", "x")}


# --- errors ------------------------------------------------------------------------------------------


def _error(path: Path, **kw: object) -> str:
    with pytest.raises(DataError) as exc:
        load_interactions(path, **kw)  # type: ignore[arg-type]
    return str(exc.value)


def test_missing_column_names_it_and_lists_available(tmp_path: Path) -> None:
    msg = _error(write(tmp_path, "d.csv", "user,item_id\na,x\n"))
    assert "missing user id column 'user_id'" in msg and "'user', 'item_id'" in msg and "line 1" in msg
    msg = _error(write(tmp_path, "e.csv", "user_id,item_id\na,x\n"), rating_col="stars")
    assert "'stars'" in msg


def test_wrong_delimiter_is_explained(tmp_path: Path) -> None:
    msg = _error(write(tmp_path, "d.tsv", "user_id,item_id,rating\n1,2,3\n"))
    assert "expected delimiter '\\t'" in msg and "sep=','" in msg


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "the file is empty"),
        ("\n\n", "the file is empty"),
        ("user_id,item_id\n", "only a header, line 1"),
    ],
)
def test_empty_files(tmp_path: Path, text: str, needle: str) -> None:
    assert needle in _error(write(tmp_path, "d.csv", text))


def test_non_numeric_rating_names_line_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "user_id,item_id,rating\na,x,1\n\nb,y,2\nc,z,abc\n")
    msg = _error(path, rating_col="rating")
    assert "non-numeric rating 'abc'" in msg and "line 5" in msg  # the blank line 3 still counts


def test_empty_rating_and_bad_timestamp(tmp_path: Path) -> None:
    assert "line 3" in _error(
        write(tmp_path, "d.tsv", "u\ti\tr\tt\na\tx\t1\t9\nb\ty\t\t9\n"),
        user_col="u",
        item_col="i",
        rating_col="r",
    )
    msg = _error(write(tmp_path, "e.csv", "user_id,item_id,t\na,x,5\nb,y,yesterday\n"), timestamp_col="t")
    assert "non-numeric timestamp 'yesterday'" in msg and "line 3" in msg


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("a\tx\t1\nb\ty\t2\t7\n", "line 3 has 4 fields, expected 3"),
        ("a\tx\t1\nb\ty\n", "line 3 has 2 fields, expected 3"),
        ("a\tx\t1\n\nb\n", "line 4 has 1 fields, expected 3"),
    ],
)
def test_wrong_field_count_names_the_line(tmp_path: Path, body: str, needle: str) -> None:
    path = write(tmp_path, "d.inter", "user_id:token\titem_id:token\trating:float\n" + body)
    assert needle in _error(path)
    assert needle in _error(path, rating_col="rating")  # the typed (float) fast path finds it too


@pytest.mark.parametrize("opener", [gzip.open, bz2.open, lzma.open])
def test_compressed_bad_line_is_located(tmp_path: Path, opener) -> None:  # noqa: ANN001 - an open function
    ext = {gzip.open: "gz", bz2.open: "bz2", lzma.open: "xz"}[opener]
    path = tmp_path / f"d.tsv.{ext}"
    with opener(path, "wt", encoding="utf-8") as fh:
        fh.write("user_id\titem_id\trating\na\tx\t1\nb\ty\tnope\n")
    assert "non-numeric rating 'nope' in column 'rating' at line 3" in _error(path, rating_col="rating")


def test_empty_id_names_the_line(tmp_path: Path) -> None:
    msg = _error(write(tmp_path, "d.csv", "user_id,item_id\na,x\n ,y\n"))
    assert "empty user id in column 'user_id' at line 3" in msg


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"user_id,item_id\na,x\nb,\xff\xfe\n")
    assert "line 3 is not valid UTF-8" in _error(path)


def test_nothing_left_after_filters(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "user_id,item_id,rating\na,x,1\nb,y,2\n")
    assert "nothing left after rating_threshold=4" in _error(path, rating_col="rating", rating_threshold=4)
    assert "nothing left after the 2-core filter" in _error(path, kcore=2)
    assert "needs a rating column" in _error(path, rating_threshold=4)


def test_bad_paths_formats_and_options(tmp_path: Path) -> None:
    assert "no such file" in _error(tmp_path / "nope.csv")
    assert "unknown file extension '.xlsx'" in _error(write(tmp_path, "d.xlsx", "x"))
    assert "unknown format 'json'" in _error(write(tmp_path, "d.csv", "user_id,item_id\na,x\n"), fmt="json")
    assert "different columns" in _error(tmp_path / "d.csv", item_col="user_id")
    assert "kcore must be >= 0" in _error(tmp_path / "d.csv", kcore=-1)


def test_parquet_errors(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pd.DataFrame({"user_id": ["a", None], "item": ["x", "y"]}).to_parquet(path)
    assert "missing item id column 'item_id'" in _error(path)
    assert "empty user id in column 'user_id' at row 2" in _error(path, item_col="item")
    assert "not a readable Parquet file" in _error(write(tmp_path, "bad.parquet", "not parquet"))


# --- splits ------------------------------------------------------------------------------------------


def _toy(n_users: int = 30, per_user: int = 20, n_items: int = 60, with_ts: bool = True) -> Interactions:
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(n_users), per_user)
    items = np.concatenate([rng.choice(n_items, per_user, replace=False) for _ in range(n_users)])
    ts = rng.permutation(len(users)).astype(float) if with_ts else None
    return Interactions.from_arrays([f"u{u}" for u in users], [f"i{i}" for i in items], ts)


def _rows(mat) -> set[tuple[int, int]]:  # noqa: ANN001 - csr matrix
    coo = mat.tocoo()
    return set(zip(coo.row.tolist(), coo.col.tolist(), strict=True))


def test_random_split_sizes_disjoint_and_complete() -> None:
    inter = _toy(per_user=20)
    data = split(inter, mode="random", seed=0)
    assert data.train.shape == data.valid.shape == data.test.shape == (inter.n_users, inter.n_items)
    tr, va, te = _rows(data.train), _rows(data.valid), _rows(data.test)
    assert not (tr & va or tr & te or va & te)
    assert tr | va | te == set(zip(inter.users.tolist(), inter.items.tolist(), strict=True))
    assert set(np.diff(data.train.indptr)) == {16} and set(np.diff(data.test.indptr)) == {2}
    assert set(np.diff(data.valid.indptr)) == {2} and data.train.dtype == np.float32
    u, i = data.train_pairs()
    assert u.dtype == np.int64 and len(u) == data.train.nnz


def test_random_split_keeps_one_train_item_for_small_users() -> None:
    inter = Interactions.from_arrays(["a", "b", "b", "c", "c", "c"], ["x", "x", "y", "x", "y", "z"])
    data = split(inter, mode="random", ratios=(0.4, 0.3, 0.3), seed=1)
    assert np.diff(data.train.indptr).min() >= 1
    assert data.train.nnz + data.valid.nnz + data.test.nnz == 6


def test_splits_are_seeded() -> None:
    inter = _toy()
    for mode in ("random", "loo"):
        a, b, c = (split(inter, mode=mode, seed=s) for s in (3, 3, 4))
        assert (
            a.fingerprint == b.fingerprint and (a.test != b.test).nnz == 0 and (a.train != b.train).nnz == 0
        )
    inter_no_ts = _toy(with_ts=False)
    for mode in ("random", "loo"):
        a, c = split(inter_no_ts, mode=mode, seed=3), split(inter_no_ts, mode=mode, seed=4)
        assert a.fingerprint != c.fingerprint and (a.test != c.test).nnz > 0


def test_fingerprint_covers_id_maps() -> None:
    a = Interactions.from_arrays(["a", "b"], ["x", "y"])
    b = Interactions.from_arrays(["a", "b"], ["x", "z"])
    assert split(a, seed=0).fingerprint != split(b, seed=0).fingerprint


def test_leave_one_out_takes_latest_by_timestamp() -> None:
    users = ["a"] * 4 + ["b"] * 3 + ["c"] * 2
    items = ["w", "x", "y", "z", "w", "x", "y", "w", "x"]
    ts = [4, 1, 3, 2, 10, 30, 20, 1, 2]
    inter = Interactions.from_arrays(users, items, ts)
    data = split(inter, mode="loo", seed=0)

    def named(mat) -> set[tuple[str, str]]:  # noqa: ANN001
        return {(str(inter.user_ids[u]), str(inter.item_ids[i])) for u, i in _rows(mat)}

    assert named(data.test) == {("a", "w"), ("b", "x")}
    assert named(data.valid) == {("a", "y"), ("b", "y")}
    assert named(data.train) == {("a", "x"), ("a", "z"), ("b", "w"), ("c", "w"), ("c", "x")}


def test_leave_one_out_without_timestamps_is_one_each() -> None:
    data = split(_toy(per_user=5, with_ts=False), mode="loo", seed=0)
    assert set(np.diff(data.test.indptr)) == {1} and set(np.diff(data.valid.indptr)) == {1}
    assert set(np.diff(data.train.indptr)) == {3}


@pytest.mark.parametrize("ratios", [(0.8, 0.1), (0.5, 0.5, 0.5), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1)])
def test_bad_ratios(ratios: tuple[float, ...]) -> None:
    with pytest.raises(DataError, match="ratios"):
        split(_toy(), ratios=ratios)


def test_bad_mode() -> None:
    with pytest.raises(DataError, match="unknown split mode 'temporal'"):
        split(_toy(), mode="temporal")


# --- negative sampling ----------------------------------------------------------------------------


def test_negative_sampler_never_returns_a_positive() -> None:
    inter = _toy(n_users=20, per_user=20, n_items=25)  # dense: 80% of each row observed
    data = split(inter, seed=0)
    sampler = NegativeSampler(data.train, seed=0)
    users = np.repeat(np.arange(data.n_users), 200)
    neg = sampler.sample(users)
    assert neg.min() >= 0 and neg.max() < data.n_items
    assert data.train[users, neg].sum() == 0


def test_negative_sampler_finds_the_single_free_item() -> None:
    import scipy.sparse as sp

    n_items = 500
    dense = np.ones((2, n_items), dtype=np.float32)
    dense[0, 123] = 0  # user 0 has one unobserved item; user 1 has none
    sampler = NegativeSampler(sp.csr_matrix(dense), seed=0)
    out = sampler.sample(np.array([0] * 50 + [1] * 5))
    assert (out[:50] == 123).all() and ((out[50:] >= 0) & (out[50:] < n_items)).all()


def test_negative_sampler_is_uniform_over_unobserved_items() -> None:
    import scipy.sparse as sp

    train = sp.csr_matrix(np.array([[1, 0, 1, 0, 0]], dtype=np.float32))
    counts = np.bincount(NegativeSampler(train, seed=1).sample(np.zeros(30_000, dtype=np.int64)), minlength=5)
    assert counts[0] == counts[2] == 0
    assert np.allclose(counts[[1, 3, 4]] / 30_000, 1 / 3, atol=0.02)
