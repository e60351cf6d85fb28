"""HetComp's teacher trajectories: each ensemble teacher's ranking lists from easy (early) to hard (final).

A gradient teacher is trained here with its top-k lists recorded after every epoch; its stages are the lists at
1/S, 2/S, ..., S/S of its best epoch (the weights ``fit`` keeps). Halving fractions (1/8 ... 1) were tried
first: on ML-100K their first stages were popularity lists, and the student learned popularity (valid
NDCG@10 0.17 against 0.24 alone) before DKC moved on. A closed-form teacher (EASE)
has no trajectory, so its stages are solves along a regularisation path, L2 x 2^(S-1) down to L2 (a heavier
ridge ranks closer to popularity: the easier ranking). The job's own teacher, already trained, joins with its
final lists at every stage when it was trained by gradient steps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from core.config import HetCompConfig, ModelSpec, TrainConfig
from core.data import SplitData
from core.distill.hetcomp import Trajectory, observed_order, top_unobserved
from core.models import build_model
from core.models.base import Recommender
from core.train import EpochReport, fit

log = logging.getLogger(__name__)

# Ensemble teachers stop when validation NDCG@10 has not improved for PATIENCE epochs, never before MIN_EPOCHS:
# a model can sit on a popularity plateau for 20-30 epochs first (LightGCN on ML-100K stopped at epoch 22).
PATIENCE = 10
MIN_EPOCHS = 40
CACHE_VERSION = 2  # in the cache key: a change of how stages are chosen invalidates kept trajectories


class _Recorder:
    """Records the model's top-k lists after every epoch, each to its own file in ``folder`` (int32, U x k x 4
    bytes an epoch): held in memory, 100 epochs of a million users' top-100 lists were 40 GB; the stages
    are read back once the best epoch is known."""

    def __init__(self, model: Recommender, data: SplitData, k: int, chunk: int, device: torch.device,
                 folder: Path) -> None:
        self.model, self.train, self.k, self.chunk, self.device = model, data.train.tocsr(), k, chunk, device
        self.folder = folder
        self.epochs = 0

    def on_epoch_end(self, report: EpochReport) -> None:
        lists = top_unobserved(self.model, self.train, self.k, self.chunk, self.device).to("cpu", torch.int32)
        self.epochs += 1
        np.save(self.folder / f"epoch{self.epochs}.npy", lists.numpy())

    def read(self, epoch: int) -> torch.Tensor:
        """The lists recorded after ``epoch`` (1-based)."""
        return torch.from_numpy(np.load(self.folder / f"epoch{epoch}.npy"))


def stage_epochs(best_epoch: int, stages: int) -> list[int]:
    """Epochs whose lists are the stages: best x 1/S, 2/S, ..., 1 (at least epoch 1)."""
    return [max(1, round(best_epoch * (s + 1) / stages)) for s in range(stages)]


def _check_disk(folder: Path, spec: ModelSpec, n_users: int, k: int, epochs: int) -> None:
    """A ValueError naming the option when ``folder``'s disk cannot hold the recording of every epoch up to the
    cap (patience usually stops sooner): refused before training, not ended by a full disk hours into it."""
    need = n_users * k * np.dtype(np.int32).itemsize * epochs
    free = shutil.disk_usage(folder).free
    if need > free:
        raise ValueError(
            f"hyperparameters.ensemble_epochs: HetComp records the ensemble teacher {spec}'s top-k lists after "
            f"every epoch, up to {need / 1e9:.1f} GB of disk ({n_users:,} users x k = {k} x {epochs} epochs, "
            f"int32), and the job folder's disk has {free / 1e9:.1f} GB free: lower ensemble_epochs or k, or "
            f"free disk")


def _closed_form_path(spec: ModelSpec, data: SplitData, config: HetCompConfig, device: torch.device,
                      final: Recommender | None = None) -> Trajectory:
    k = min(config.k, data.n_items - 1)
    assert spec.l2 is not None
    stages = []
    for s in range(config.stages):
        l2 = spec.l2 * 2 ** (config.stages - 1 - s)
        if s == config.stages - 1 and final is not None:
            model = final
        else:
            model = build_model(spec.model, data.n_users, data.n_items, data.n_items, train=data.train, l2=l2)
            model.solve()
        stages.append(top_unobserved(model, data.train.tocsr(), k, config.chunk, "cpu"))
    return Trajectory(str(spec), stages, observed_order(model, data.train, config.positives, config.chunk))


def _trained(spec: ModelSpec, data: SplitData, config: HetCompConfig, seed: int, device: torch.device,
             callbacks: Sequence[Any], should_cancel: Callable[[], bool] | None, spill: Path | None) -> Trajectory:
    """Train ``spec``, its lists of every epoch recorded in a temporary folder under ``spill`` (the system's
    temporary folder when None), removed when the stages are read."""
    k = min(config.k, data.n_items - 1)
    dim, opts = spec.build_args(data.n_items)
    model = build_model(spec.model, data.n_users, data.n_items, dim, train=data.train, seed=seed, **opts)
    train = TrainConfig(epochs=config.ensemble_epochs, lr=config.ensemble_lr, patience=PATIENCE,
                        min_epochs=MIN_EPOCHS, seed=seed, device=str(device))
    if spill is not None:
        spill.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hetcomp-recording-", dir=spill) as folder:
        _check_disk(Path(folder), spec, data.n_users, k, config.ensemble_epochs)
        recorder = _Recorder(model, data, k, config.chunk, device, Path(folder))
        result = fit(model, data, train, callbacks=[recorder, *callbacks], should_cancel=should_cancel)
        epochs = stage_epochs(result.best_epoch, config.stages)
        log.info("hetcomp teacher %s: best epoch %d of %d (%s); stages at epochs %s", spec, result.best_epoch,
                 result.epochs_run, result.stopped_by, epochs)
        stages = [recorder.read(e).long() for e in epochs]
    return Trajectory(str(spec), stages, observed_order(model, data.train, config.positives, config.chunk))


def _cache_file(cache: Path, spec: str, data: SplitData, config: HetCompConfig, seed: int) -> Path:
    keys = {k: getattr(config, k) for k in ("ensemble_epochs", "ensemble_lr", "stages", "k", "positives", "chunk")}
    digest = hashlib.sha256(json.dumps([spec, keys, seed, CACHE_VERSION], sort_keys=True).encode()).hexdigest()[:12]
    return cache / f"hetcomp-{spec.replace(':', '')}-seed{seed}-{data.fingerprint[:12]}-{digest}.safetensors"


def trajectories(
    teacher: Recommender,
    data: SplitData,
    config: HetCompConfig,
    device: torch.device,
    seed: int,
    cache: Path | None = None,
    callbacks_for: Any = None,
    should_cancel: Callable[[], bool] | None = None,
) -> list[Trajectory]:
    """The ensemble: the job's teacher and every ``config.teachers`` entry; ``cache``: a folder where the
    trained teachers' trajectories are kept and reused (same spec, data, options and seed)."""
    k = min(config.k, data.n_items - 1)
    out: list[Trajectory] = []
    if teacher.closed_form:
        spec = ModelSpec.model_validate({"model": teacher.name, **teacher.options()})
        out.append(_closed_form_path(spec, data, config, device, final=teacher))
    else:
        final = top_unobserved(teacher, data.train.tocsr(), k, config.chunk, device).cpu()
        out.append(Trajectory(teacher.name, [final] * config.stages,
                              observed_order(teacher, data.train, config.positives, config.chunk)))
    for text in config.teachers:
        spec = ModelSpec.parse(text)
        path = _cache_file(cache, text, data, config, seed) if cache is not None else None
        if path is not None and path.is_file():
            tensors = load_file(str(path))
            out.append(Trajectory(text, [tensors[f"stage{s}"] for s in range(config.stages)], tensors["observed"]))
            log.info("hetcomp teacher %s: reusing %s", text, path)
            continue
        if spec.closed_form:
            traj = _closed_form_path(spec, data, config, device)
        else:
            callbacks = list(callbacks_for(f"hetcomp teacher {text}")) if callbacks_for else []
            traj = _trained(spec, data, config, seed, device, callbacks, should_cancel, cache)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".partial")
            save_file({**{f"stage{s}": t.contiguous().cpu() for s, t in enumerate(traj.stages)},
                       "observed": traj.observed.contiguous().cpu()}, str(tmp))
            tmp.replace(path)
        out.append(traj)
    return out
