"""The ML phases of a job (teacher, distill, evaluate, index): plain functions over explicit arguments.

Pure: no database, no settings. ``core.jobs.phases`` runs them for a job, ``core.experiment`` for a comparison;
imported only inside the task path, so torch (and CUDA) is first touched there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from core.checkpoint import MODEL_FILE, load_checkpoint, save_checkpoint
from core.config import DistillConfig, HetCompConfig, ModelSpec, SplitSpec
from core.data import SplitData, load_interactions, split
from core.distill import distiller_for
from core.distill.base import ListsCache
from core.eval import evaluate
from core.index import BuiltIndex, IndexKind, IndexSpec, ServingBundle, build_index, write_bundle
from core.jobs import trajectory
from core.models import build_model
from core.models.base import Recommender
from core.storage import size_of
from core.train import Callback, FitResult, TrainConfig, fit, resolve_device

log = logging.getLogger(__name__)

TEST_KS = (5, 10, 20)
_WARMUP = 5  # untimed calls before a latency measurement (first-call allocations)


def set_threads(n: int) -> None:
    """Cap torch's intra-op CPU threads (workers sharing cores oversubscribe them otherwise)."""
    torch.set_num_threads(n)


def load_split(path: Path, dataset: dict[str, Any], split_opts: SplitSpec, seed: int) -> SplitData:
    """Read the dataset file with its stored column options and split it (job.split + job.seed)."""
    inter = load_interactions(
        path,
        user_col=dataset["user_col"],
        item_col=dataset["item_col"],
        rating_col=dataset.get("rating_col"),
        timestamp_col=dataset.get("timestamp_col"),
        fmt=dataset.get("format"),
        sep=dataset.get("sep"),
        rating_threshold=dataset.get("rating_threshold"),
    )
    return split(inter, mode=split_opts.mode, ratios=tuple(split_opts.ratios), seed=seed)


def train_model(
    spec: ModelSpec,
    data: SplitData,
    config: TrainConfig,
    checkpoint_dir: Path | None,
    callbacks: Sequence[Callback],
    should_cancel: Callable[[], bool] | None,
    distiller: Any | None = None,
    model_opts: dict[str, Any] | None = None,
) -> tuple[Recommender, FitResult]:
    """Build ``spec`` (with the model's own ``model_opts``) and fit it, resuming from ``checkpoint_dir`` when a
    state is there."""
    dim, spec_opts = spec.build_args(data.n_items)
    model = build_model(spec.model, data.n_users, data.n_items, dim, train=data.train, seed=config.seed,
                        **spec_opts, **(model_opts or {}))
    result = fit(
        model,
        data,
        config,
        distiller=distiller,
        callbacks=callbacks,
        checkpoint_dir=checkpoint_dir,
        resume=True,
        should_cancel=should_cancel,
    )
    return model, result


def make_distiller(
    method: str,
    config: DistillConfig,
    teacher: Recommender,
    data: SplitData,
    device: str,
    lists_cache: ListsCache | None = None,
    trajectory_cache: Path | None = None,
    callbacks_for: Callable[[str], Sequence[Callback]] | None = None,
    should_cancel: Callable[[], bool] | None = None,
) -> Any:
    """The method's distiller over its (validated) config, prepared against the frozen teacher (``lists_cache``:
    the teacher's top-M lists shared by every distiller of one teacher and split). HetComp first trains its
    ensemble's other teachers, recording their trajectories (``trajectory_cache``: a folder that keeps them)."""
    distiller = distiller_for(method, config)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    resolved = resolve_device(device)
    if isinstance(config, HetCompConfig):
        distiller.use_trajectories(trajectory.trajectories(
            teacher, data, config, resolved, config.seed, trajectory_cache, callbacks_for, should_cancel))
    distiller.prepare(teacher, data, resolved, lists_cache)
    return distiller


def load_model(folder: Path, data: SplitData, device: str) -> tuple[Recommender, dict[str, Any]]:
    """Load a checkpoint and check it was trained on the same users and items as ``data``."""
    model, manifest = load_checkpoint(folder, device=resolve_device(device))
    if (model.n_users, model.n_items) != (data.n_users, data.n_items):
        raise ValueError(
            f"teacher checkpoint {folder.name} has {model.n_users} users x {model.n_items} items, "
            f"the job's data has {data.n_users} x {data.n_items}: it was trained on another dataset"
        )
    if list(manifest.get("item_ids", [])) != [str(i) for i in data.item_ids]:
        raise ValueError(f"teacher checkpoint {folder.name} was trained on a different item catalogue")
    return model, manifest


def test_metrics(model: Recommender, data: SplitData, split: str = "test") -> dict[str, float]:
    """Full-ranking metrics of ``split`` at 5/10/20 (training items excluded)."""
    return {k: float(v) for k, v in evaluate(model, data, split, ks=TEST_KS).items()}


def n_params(model: Recommender) -> int:
    """Learned numbers: what a checkpoint stores (parameters, and persistent buffers such as a closed-form
    model's weights; LightGCN's cached adjacency is derived, not stored)."""
    return int(sum(t.numel() for t in model.state_dict().values()))


def save_model(folder: Path, model: Recommender, data: SplitData, manifest: dict[str, Any]) -> int:
    """Write the checkpoint (safetensors + manifest with id maps); returns the weight file's size in bytes."""
    full = {
        **manifest,
        "data_fingerprint": data.fingerprint,
        "user_ids": [str(u) for u in data.user_ids],
        "item_ids": [str(i) for i in data.item_ids],
    }
    save_checkpoint(folder, model, full)
    return size_of(folder / MODEL_FILE)


def all_interactions(data: SplitData) -> sp.csr_matrix:
    """Train + valid + test: everything a user has seen, filtered out when serving."""
    seen = (data.train + data.valid + data.test).tocsr()
    seen.data[:] = 1.0
    return seen


@torch.no_grad()
def bundle_arrays(model: Recommender, data: SplitData) -> dict[str, Any]:
    """What a serving bundle holds for a dot-product model: embeddings, id maps, seen items, popularity."""
    if not model.is_dot_product:
        raise ValueError(f"model {model.name!r} is not a dot-product model and cannot be served")
    model.eval()
    seen = all_interactions(data)
    counts = np.asarray(seen.sum(axis=0)).ravel()
    return {
        "user_emb": model.user_embeddings().detach().float().cpu().numpy(),
        "item_emb": model.item_embeddings().detach().float().cpu().numpy(),
        "user_ids": [str(u) for u in data.user_ids],
        "item_ids": [str(i) for i in data.item_ids],
        "seen": seen,
        "popularity": np.argsort(-counts, kind="stable").astype(np.int64),
    }


def serving_index(arrays: dict[str, Any], spec: IndexSpec | IndexKind) -> BuiltIndex:
    """Build (and tune) the FAISS index of a bundle's arrays once, with every core FAISS may use: the same index
    is saved into the bundle and timed for the report."""
    return build_index(arrays["item_emb"], arrays["user_emb"], spec)


def export_bundle(folder: Path, model: Recommender, data: SplitData, model_id: str,
                  spec: IndexSpec | IndexKind = IndexSpec(), built: BuiltIndex | None = None) -> None:
    """Write the serving bundle (embeddings, id maps, seen items, popularity and its FAISS index) for a
    dot-product model; ``built`` is the index already built over these arrays, else one is built to ``spec``."""
    write_bundle(folder, model_id=model_id, index=spec, built=built, **bundle_arrays(model, data))


def _percentiles(seconds: list[float], method: str, servable: bool, k: int) -> dict[str, Any]:
    ms = np.asarray(seconds) * 1000.0
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "queries": len(seconds),
        "k": k,
        "method": method,
        "servable": servable,
    }


@torch.no_grad()
def measure_latency(
    model: Recommender, data: SplitData, queries: int, spec: IndexSpec | IndexKind, k: int = 10, seed: int = 0,
    built: BuiltIndex | None = None,
) -> dict[str, Any]:
    """p50/p99 of ``queries`` (at least 1) single-user top-``k`` answers for random users, warm (a few untimed calls first).

    A dot-product model is timed through ``ServingBundle.recommend`` on its serving index (``built``, else one
    built to ``spec`` over the same arrays its exported bundle holds: what the API would serve), and the result
    names that index (kind, parameters, recall@10); any other model through ``full_scores`` with seen items
    masked and a top-k, since it cannot be served by an index. Users come from a numpy Generator of its own,
    so no random stream that training or evaluation reads is touched.
    """
    if queries <= 0:
        raise ValueError(f"queries must be at least 1, got {queries}")
    rng = np.random.default_rng(seed)
    users = rng.integers(0, data.n_users, size=queries + _WARMUP)
    seconds: list[float] = []
    if model.is_dot_product:
        arrays = bundle_arrays(model, data)
        bundle = ServingBundle(model_id="latency", index=spec, built=built or serving_index(arrays, spec), **arrays)
        ids = [bundle.user_ids[u] for u in users]
        for n, user in enumerate(ids):
            start = time.perf_counter()
            bundle.recommend(user, k)
            if n >= _WARMUP:
                seconds.append(time.perf_counter() - start)
        return {**_percentiles(seconds, f"faiss-{bundle.kind}", True, k), "index": bundle.index_info.to_json()}
    model.eval()
    seen = all_interactions(data)
    device = next(iter(model.state_dict().values())).device  # a closed-form model has buffers, no parameters
    for n, user in enumerate(users.tolist()):
        start = time.perf_counter()
        scores = model.full_scores(torch.tensor([user], device=device))[0]
        row = seen.indices[seen.indptr[user] : seen.indptr[user + 1]]
        scores[torch.as_tensor(row, device=scores.device, dtype=torch.long)] = -torch.inf
        torch.topk(scores, min(k, data.n_items)).indices.cpu()
        if n >= _WARMUP:
            seconds.append(time.perf_counter() - start)
    return _percentiles(seconds, "full-scores", False, k)
