"""The ML phases of a job (teacher, distill, evaluate, index): plain functions over explicit arguments.

Imported only inside the task path, so torch (and CUDA) is first touched there. ``core.pipeline`` owns the
database side: claims, status, progress rows and errors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from core.checkpoint import MODEL_FILE, load_checkpoint, save_checkpoint
from core.data import SplitData, load_interactions, split
from core.distill import build_distiller
from core.eval import evaluate
from core.index import write_bundle
from core.models import MODELS, build_model
from core.models.base import Recommender
from core.storage import size_of
from core.train import Callback, FitResult, TrainConfig, fit, resolve_device

log = logging.getLogger(__name__)

# Job hyperparameters that configure the fit loop; every other key goes to the distiller's config.
TRAIN_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "patience", "eval_every")
TEACHER_PREFIX = "teacher_"  # teacher_epochs, teacher_lr, ... override the teacher's fit loop
TEST_KS = (5, 10, 20)


@dataclass
class JobPlan:
    """A job's hyperparameters sorted into the teacher's and student's fit configs and the distiller's."""

    teacher_train: TrainConfig
    student_train: TrainConfig
    distiller: dict[str, Any]


def plan_job(method: str, hyperparameters: dict[str, Any], seed: int, device: str) -> JobPlan:
    """Split the job's hyperparameters; an unknown method, key or bad value raises ValueError naming it."""
    hp = {k: v for k, v in (hyperparameters or {}).items() if v is not None}
    student = {k: hp.pop(k) for k in TRAIN_KEYS if k in hp}
    teacher = dict(student)
    for key in TRAIN_KEYS:
        if TEACHER_PREFIX + key in hp:
            teacher[key] = hp.pop(TEACHER_PREFIX + key)
    hp.setdefault("seed", seed)
    build_distiller(method, **hp)  # fail before any training on an unknown method or option
    try:
        return JobPlan(
            teacher_train=TrainConfig(**teacher, seed=seed, device=device),
            student_train=TrainConfig(**student, seed=seed, device=device),
            distiller=hp,
        )
    except ValueError as exc:  # pydantic's ValidationError names the field
        raise ValueError(f"invalid hyperparameters: {exc}") from exc


def set_threads(n: int) -> None:
    """Cap torch's intra-op CPU threads (workers sharing cores oversubscribe them otherwise)."""
    torch.set_num_threads(n)


def load_split(path: Path, dataset: dict[str, Any], split_opts: dict[str, Any], seed: int) -> SplitData:
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
    mode = split_opts.get("mode", "random")
    ratios = tuple(split_opts.get("ratios", (0.8, 0.1, 0.1)))
    return split(inter, mode=mode, ratios=ratios, seed=seed)


def train_model(
    spec: dict[str, Any],
    data: SplitData,
    config: TrainConfig,
    checkpoint_dir: Path,
    callbacks: Sequence[Callback],
    should_cancel: Callable[[], bool],
    distiller: Any | None = None,
) -> tuple[Recommender, FitResult]:
    """Build ``spec`` ({model, dim}) and fit it, resuming from ``checkpoint_dir`` when a state is there."""
    model = build_model(spec["model"], data.n_users, data.n_items, int(spec["dim"]), train=data.train, seed=config.seed)
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


def check_spec(spec: dict[str, Any] | None, role: str) -> None:
    """A {model, dim} spec names a registered model and a positive dim (ValueError naming the field)."""
    if spec is None:
        return
    if spec.get("model") not in MODELS:
        raise ValueError(f"{role}.model {spec.get('model')!r} is unknown; choose one of {sorted(MODELS)}")
    dim = spec.get("dim")
    if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
        raise ValueError(f"{role}.dim must be a positive integer, got {dim!r}")


def make_distiller(
    method: str, options: dict[str, Any], teacher: Recommender, data: SplitData, device: str
) -> Any:
    """``build_distiller(method, **options)`` prepared against the frozen teacher."""
    distiller = build_distiller(method, **options)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    distiller.prepare(teacher, data, resolve_device(device))
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


def test_metrics(model: Recommender, data: SplitData) -> dict[str, float]:
    """Full-ranking test metrics at 5/10/20 (training items excluded)."""
    return {k: float(v) for k, v in evaluate(model, data, "test", ks=TEST_KS).items()}


def n_params(model: Recommender) -> int:
    return int(sum(p.numel() for p in model.parameters()))


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
def export_bundle(folder: Path, model: Recommender, data: SplitData, model_id: str) -> None:
    """Write the serving bundle (embeddings, id maps, seen items, popularity) for a dot-product model."""
    if not model.is_dot_product:
        raise ValueError(f"student model {model.name!r} is not a dot-product model and cannot be served")
    model.eval()
    user_emb = model.user_embeddings().detach().float().cpu().numpy()
    item_emb = model.item_embeddings().detach().float().cpu().numpy()
    seen = all_interactions(data)
    counts = np.asarray(seen.sum(axis=0)).ravel()
    popularity = np.argsort(-counts, kind="stable").astype(np.int64)
    write_bundle(
        folder,
        user_emb,
        item_emb,
        [str(u) for u in data.user_ids],
        [str(i) for i in data.item_ids],
        seen,
        popularity,
        model_id,
    )
