"""core.synth: deterministic, exact counts, distinct pairs, a heavy popularity tail, the known structure, bounds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from core import synth
from core.data import load_interactions
from core.data_read import DataError

ROOT = Path(__file__).resolve().parents[2]
SPEC = synth.SynthSpec(n_users=3000, n_items=800, n_interactions=36_000, alpha=1.0, clusters=8, seed=3)


def _pairs(spec: synth.SynthSpec, chunk_users: int = synth._CHUNK_USERS) -> tuple[np.ndarray, np.ndarray]:
    parts = list(synth.generate(spec, chunk_users=chunk_users))
    return np.concatenate([u for u, _ in parts]), np.concatenate([i for _, i in parts])


def test_deterministic_by_seed_and_seed_matters() -> None:
    u1, i1 = _pairs(SPEC)
    u2, i2 = _pairs(SPEC)
    np.testing.assert_array_equal(u1, u2)
    np.testing.assert_array_equal(i1, i2)
    u3, i3 = _pairs(synth.SynthSpec(**{**SPEC.__dict__, "seed": 4}))
    assert len(u3) == len(u1) and not np.array_equal(i3, i1)


def test_exact_counts_bounds_and_distinct_pairs() -> None:
    users, items = _pairs(SPEC, chunk_users=700)  # several chunks, the last one short
    assert len(users) == SPEC.n_interactions
    assert users.min() == 0 and users.max() == SPEC.n_users - 1
    assert items.min() >= 0 and items.max() < SPEC.n_items
    keys = users * SPEC.n_items + items
    assert len(np.unique(keys)) == len(keys)  # no duplicate (user, item) pair
    per_user = np.bincount(users, minlength=SPEC.n_users)
    assert per_user.min() >= SPEC.min_per_user and per_user.max() <= synth.per_user_cap(SPEC)
    np.testing.assert_array_equal(per_user, synth.user_counts(SPEC))


def test_popularity_tail_is_heavy() -> None:
    _, items = _pairs(SPEC)
    counts = np.sort(np.bincount(items, minlength=SPEC.n_items))[::-1]
    top = counts[: SPEC.n_items // 100].sum() / counts.sum()  # the top 1% of items
    assert top > 0.10, top  # 10x their share under uniform popularity
    assert np.median(counts) < counts.mean() / 2  # most items are rare
    # The log-log slope of count against rank over the head is close to -alpha (duplicates flatten the very top).
    ranks = np.arange(1, 101)
    slope = np.polyfit(np.log(ranks[5:]), np.log(counts[5:100]), 1)[0]
    assert -1.4 < slope < -0.5, slope


def test_uniform_popularity_with_alpha_zero() -> None:
    spec = synth.SynthSpec(n_users=2000, n_items=200, n_interactions=20_000, alpha=0.0, clusters=1, seed=0)
    _, items = _pairs(spec)
    counts = np.bincount(items, minlength=spec.n_items)
    assert counts.max() < 2 * counts.mean()


def test_known_structure_beats_popularity() -> None:
    """Ranking by the true clusters (own-cluster items first, by popularity) finds held-out items that ranking by
    popularity alone misses: the structure a learned model can pick up is there."""
    users, items = _pairs(SPEC)
    st = synth.structure(SPEC)
    rng = np.random.default_rng(0)
    held = np.zeros(len(users), dtype=bool)
    starts = np.r_[0, np.cumsum(np.bincount(users, minlength=SPEC.n_users))[:-1]]
    held[starts + rng.integers(0, SPEC.min_per_user, size=SPEC.n_users)] = True  # one held-out item per user
    pop = np.bincount(items[~held], minlength=SPEC.n_items).astype(float)
    seen = {(int(u), int(i)) for u, i in zip(users[~held], items[~held], strict=True)}

    def hit_rate(score_of) -> float:  # noqa: ANN001
        hits = 0
        for u, target in zip(users[held], items[held], strict=True):
            scores = score_of(int(u)).copy()
            scores[[i for i in range(SPEC.n_items) if (int(u), i) in seen]] = -np.inf
            hits += target in np.argsort(-scores)[:10]
        return hits / SPEC.n_users

    by_pop = hit_rate(lambda u: pop)
    by_cluster = hit_rate(lambda u: pop * np.where(st.item_cluster == st.user_cluster[u], 100.0, 1.0))
    assert by_cluster > 1.5 * by_pop, (by_cluster, by_pop)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"n_users": synth.MAX_USERS + 1}, "users must be"),
        ({"n_items": 1}, "items must be"),
        ({"n_interactions": synth.MAX_INTERACTIONS + 1}, "interactions must be"),
        ({"n_interactions": 100}, "at least users x min_per_user"),
        ({"n_users": 10, "n_items": 10, "n_interactions": 60}, "per-user cap"),
        ({"clusters": 0}, "clusters must be"),
        ({"clusters": 801}, "clusters must be"),
        ({"alpha": 5.0}, "alpha must be"),
        ({"affinity": 1.5}, "affinity must be"),
        ({"seed": -1}, "seed must be"),
    ],
)
def test_absurd_sizes_refused(change: dict, words: str) -> None:
    with pytest.raises(DataError, match=words):
        synth.SynthSpec(**{**SPEC.__dict__, **change}).check()


def test_write_reads_back_and_is_idempotent(tmp_path: Path) -> None:
    spec = synth.SynthSpec(n_users=500, n_items=100, n_interactions=5000, seed=1)
    path = tmp_path / "s.inter"
    meta = synth.write(spec, path)
    inter = load_interactions(path)
    assert (inter.n_users, inter.n_items, len(inter)) == (500, len(np.unique(_pairs(spec)[1])), 5000)
    assert json.loads(path.with_suffix(".json").read_text())["spec"] == meta["spec"]
    mtime = path.stat().st_mtime_ns
    synth.write(spec, path)
    assert path.stat().st_mtime_ns == mtime  # intact and the same spec: kept


def test_cli_writes_the_file_and_refuses_bounds(tmp_path: Path) -> None:
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    out = tmp_path / "x.inter"
    ok = subprocess.run(
        [sys.executable, "-m", "cli", "datasets", "synth", "--users", "300", "--items", "50", "--interactions",
         "3000", "--out", str(out)], capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == str(out) and out.is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "cli", "datasets", "synth", "--users", "9999999999", "--items", "50",
         "--interactions", "3000", "--out", str(out)], capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    assert bad.returncode != 0 and "users must be" in bad.stderr
