"""Synthetic implicit feedback with a known answer: Zipf item popularity over latent clusters, written as .inter.

Structure (all drawn from one seed): every item belongs to one of ``clusters`` latent clusters and has a
popularity weight ``w = rank^-alpha`` (its popularity rank a random permutation, independent of its cluster);
every user belongs to one cluster. Each of a user's interactions comes, with probability ``affinity``, from
the user's cluster (items drawn ∝ w within it) and otherwise from the whole catalogue (∝ w). So popularity
alone explains the ``1 - affinity`` part and a model that learns the clusters (any dot-product model with
dim >= clusters can) explains the rest. Users get ``min_per_user`` interactions plus a multinomial share of the
rest ∝ lognormal weights (a long tail of heavy users), capped so that distinct items stay easy to draw.
Generation walks user chunks (memory ~ chunk x mean interactions, never users x items); each user's items are
distinct, the rare leftovers after a few rejection rounds are filled uniformly from the catalogue.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from core.data_read import DataError
from core.storage import atomic_path, atomic_write_text

logger = logging.getLogger(__name__)

# Bounds: a client (or a typo) must not ask for a file of terabytes or a loop of days.
MAX_USERS = 5_000_000
MAX_ITEMS = 1_000_000
MAX_INTERACTIONS = 50_000_000
MAX_CLUSTERS = 4096
MAX_ALPHA = 3.0

_ROUNDS = 30  # rejection rounds of structured draws before leftovers are filled uniformly
_CHUNK_USERS = 65_536  # users generated (and written) per step
HEADER = "user_id:token\titem_id:token\n"


@dataclass(frozen=True)
class SynthSpec:
    """What to generate; every field bounded by :meth:`check`."""

    n_users: int
    n_items: int
    n_interactions: int
    alpha: float = 1.0  # Zipf exponent of item popularity: weight of the item of rank r is r^-alpha
    clusters: int = 16  # latent user/item clusters (the known low-rank structure)
    affinity: float = 0.8  # share of a user's interactions drawn from the user's own cluster
    min_per_user: int = 5  # at least this many per user (5: a valid and a test item each at 80/10/10)
    seed: int = 0

    def check(self) -> SynthSpec:
        """Raise DataError naming the first unusable field."""
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise DataError(f"synthetic data set: {msg}")

        need(2 <= self.n_users <= MAX_USERS, f"users must be in 2..{MAX_USERS:,}, got {self.n_users:,}")
        need(2 <= self.n_items <= MAX_ITEMS, f"items must be in 2..{MAX_ITEMS:,}, got {self.n_items:,}")
        need(1 <= self.n_interactions <= MAX_INTERACTIONS,
             f"interactions must be in 1..{MAX_INTERACTIONS:,}, got {self.n_interactions:,}")
        need(1 <= self.clusters <= min(MAX_CLUSTERS, self.n_items),
             f"clusters must be in 1..{min(MAX_CLUSTERS, self.n_items)} (and at most the items), got {self.clusters}")
        need(0.0 <= self.alpha <= MAX_ALPHA, f"alpha must be in 0..{MAX_ALPHA}, got {self.alpha}")
        need(0.0 <= self.affinity <= 1.0, f"affinity must be in 0..1, got {self.affinity}")
        need(1 <= self.min_per_user, f"min_per_user must be at least 1, got {self.min_per_user}")
        need(0 <= self.seed < 2**32, f"seed must be in 0..2^32-1, got {self.seed}")
        cap = per_user_cap(self)
        need(self.min_per_user <= cap,
             f"min_per_user={self.min_per_user} exceeds the per-user cap {cap} (half the catalogue)")
        need(self.n_interactions >= self.n_users * self.min_per_user,
             f"interactions ({self.n_interactions:,}) must be at least users x min_per_user "
             f"({self.n_users:,} x {self.min_per_user} = {self.n_users * self.min_per_user:,})")
        need(self.n_interactions <= self.n_users * cap,
             f"interactions ({self.n_interactions:,}) exceed users x the per-user cap "
             f"({self.n_users:,} x {cap} = {self.n_users * cap:,}); add users or items")
        return self

    @property
    def name(self) -> str:
        """A file stem that names the whole spec (the cache key)."""
        return (f"synth-u{self.n_users}-i{self.n_items}-n{self.n_interactions}-a{self.alpha:g}-c{self.clusters}"
                f"-f{self.affinity:g}-m{self.min_per_user}-s{self.seed}")


def per_user_cap(spec: SynthSpec) -> int:
    """At most half the catalogue per user: beyond it distinct draws stop being cheap (and the data stop being
    implicit feedback)."""
    return max(1, spec.n_items // 2)


@dataclass
class Structure:
    """The known answer: cluster of every user and item, every item's popularity weight."""

    user_cluster: np.ndarray  # int32 [n_users]
    item_cluster: np.ndarray  # int32 [n_items]
    item_weight: np.ndarray  # float64 [n_items], rank^-alpha


def structure(spec: SynthSpec) -> Structure:
    """The latent clusters and popularity weights of ``spec`` (deterministic by its seed)."""
    rng = np.random.default_rng([spec.seed, 1])
    rank = rng.permutation(spec.n_items) + 1  # popularity rank of each item, independent of its cluster
    weight = rank.astype(np.float64) ** -spec.alpha
    item_cluster = rng.integers(0, spec.clusters, size=spec.n_items).astype(np.int32)
    user_cluster = rng.integers(0, spec.clusters, size=spec.n_users).astype(np.int32)
    return Structure(user_cluster, item_cluster, weight)


def user_counts(spec: SynthSpec) -> np.ndarray:
    """int64 [n_users] interactions per user, summing to n_interactions, each in min_per_user..cap."""
    rng = np.random.default_rng([spec.seed, 2])
    cap = per_user_cap(spec)
    counts = np.full(spec.n_users, spec.min_per_user, dtype=np.int64)
    extra = spec.n_interactions - int(counts.sum())
    heavy = rng.lognormal(0.0, 1.0, size=spec.n_users)  # a long tail of heavy users
    while extra > 0:  # a few passes: what the cap cuts off goes to users still below it
        room = cap - counts
        p = np.where(room > 0, heavy, 0.0)
        add = np.minimum(rng.multinomial(extra, p / p.sum()), room)
        counts += add
        extra -= int(add.sum())
    return counts


class _ItemDrawer:
    """Draws items ∝ weight, from the whole catalogue or from one cluster (inverse CDF over cumulative sums)."""

    def __init__(self, st: Structure) -> None:
        self.global_cum = np.cumsum(st.item_weight)
        order = np.argsort(st.item_cluster, kind="stable")  # items grouped by cluster
        self.by_cluster = order
        self.cluster_cum = np.cumsum(st.item_weight[order])
        bounds = np.searchsorted(st.item_cluster[order], np.arange(int(st.item_cluster.max()) + 2))
        self.lo, self.hi = bounds[:-1], bounds[1:]  # [clusters] item range of each cluster in ``order``
        self.n_items = len(st.item_weight)

    def draw(self, rng: np.random.Generator, clusters: np.ndarray, own: np.ndarray) -> np.ndarray:
        """One item per entry: from ``clusters[k]`` where ``own[k]``, else from the catalogue."""
        out = np.empty(len(clusters), dtype=np.int64)
        g = ~own
        out[g] = np.searchsorted(self.global_cum, rng.random(int(g.sum())) * self.global_cum[-1], side="right")
        c = clusters[own]
        lo, hi = self.lo[c], self.hi[c]
        empty = lo == hi  # a cluster without items (tiny catalogues): fall back to the catalogue
        base = np.where(lo > 0, self.cluster_cum[np.maximum(lo - 1, 0)], 0.0)
        top = self.cluster_cum[np.maximum(hi - 1, 0)]
        u = base + rng.random(len(c)) * (top - base)
        pos = np.clip(np.searchsorted(self.cluster_cum, u, side="right"), lo, np.maximum(hi - 1, lo))
        picked = self.by_cluster[np.minimum(pos, self.n_items - 1)]
        if empty.any():
            picked[empty] = np.searchsorted(
                self.global_cum, rng.random(int(empty.sum())) * self.global_cum[-1], side="right")
        out[own] = picked
        return np.minimum(out, self.n_items - 1)


def _chunk_pairs(spec: SynthSpec, st: Structure, drawer: _ItemDrawer, counts: np.ndarray, start: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(users, items) of users start..start+len(counts): distinct items per user, sorted by (user, item)."""
    n = spec.n_items
    users = np.arange(start, start + len(counts), dtype=np.int64)
    keys = np.empty(0, dtype=np.int64)  # accepted user * n_items + item, sorted and distinct
    need = counts.copy()
    for round_ in range(_ROUNDS + 1):
        if not need.any():
            break
        u = np.repeat(users, need)
        if round_ < _ROUNDS:
            own = rng.random(len(u)) < spec.affinity
            items = drawer.draw(rng, st.user_cluster[u], own)
        else:  # leftovers of users whose cluster's head is exhausted: uniform over the catalogue until done
            items = rng.integers(0, n, size=len(u))
        keys = np.unique(np.concatenate([keys, u * n + items]))
        have = np.bincount(keys // n - start, minlength=len(counts))
        need = counts - have
        if round_ == _ROUNDS:
            while need.any():  # uniform draws of <= half the catalogue: a handful of passes
                u = np.repeat(users, need)
                keys = np.unique(np.concatenate([keys, u * n + rng.integers(0, n, size=len(u))]))
                need = counts - np.bincount(keys // n - start, minlength=len(counts))
    return keys // n, keys % n


def generate(spec: SynthSpec, chunk_users: int = _CHUNK_USERS):
    """Yield (users, items) int64 arrays chunk by chunk (users ascending); deterministic by ``spec.seed``."""
    spec.check()
    st = structure(spec)
    drawer = _ItemDrawer(st)
    counts = user_counts(spec)
    for start in range(0, spec.n_users, chunk_users):
        rng = np.random.default_rng([spec.seed, 3, start])  # per chunk: the same pairs whatever the chunking before
        stop = min(start + chunk_users, spec.n_users)
        yield _chunk_pairs(spec, st, drawer, counts[start:stop], start, rng)


def write(spec: SynthSpec, path: Path, progress: Callable[[str], None] | None = None) -> dict:
    """Write ``spec`` as a RecBole ``.inter`` file at ``path`` (atomically) plus ``<stem>.json`` (the spec and
    counts); returns that marker. An intact file with the same spec is kept as it is."""
    say = progress or (lambda msg: logger.info("%s", msg))
    spec.check()
    marker = path.with_suffix(".json")
    if path.is_file() and marker.is_file():
        try:
            meta = json.loads(marker.read_text(encoding="utf-8"))
        except ValueError:
            meta = {}
        if meta.get("spec") == asdict(spec) and meta.get("size_bytes") == path.stat().st_size:
            say(f"{path}: already generated")
            return meta
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    written = 0
    with atomic_path(path, user_file=True) as staged:
        with open(staged, "w", encoding="utf-8") as fh:
            fh.write(HEADER)
            for users, items in generate(spec):
                lines = np.char.add(np.char.add(users.astype(str), "\t"), items.astype(str))
                fh.write("\n".join(lines.tolist()))
                fh.write("\n")
                written += len(users)
                say(f"{path.name}: {written:,} / {spec.n_interactions:,} interactions")
        meta = {"name": spec.name, "spec": asdict(spec), "n_interactions": written,
                "size_bytes": staged.stat().st_size, "seconds": round(time.perf_counter() - t0, 2)}
        marker.unlink(missing_ok=True)  # a crash between the two replaces leaves "not generated", never stale
    atomic_write_text(marker, json.dumps(meta, indent=2) + "\n", user_file=True)
    return meta
