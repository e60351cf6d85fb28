"""The trainer's resumable state: early-stopping bookkeeping plus its one-file checkpoint (save/restore).

Tensors (model, best weights, Adam moments, torch RNG, distiller state) go to safetensors; the rest is JSON.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from core.checkpoint import CheckpointError, cpu_tensors, load_train_state, save_train_state

if TYPE_CHECKING:
    from core.config import TrainConfig
    from core.models.base import Recommender

#: Config fields that must match for a resumed run to equal an uninterrupted one.
_MUST_MATCH = (
    "seed", "batch_size", "lr", "weight_decay", "monitor", "eval_every", "eval_ks", "valid_users", "sparse_updates",
)


@dataclass
class TrainState:
    epoch: int = 0  # completed epochs
    best_epoch: int = 0
    best_score: float | None = None
    best_valid: dict[str, float] = field(default_factory=dict)
    bad_evals: int = 0
    stopped: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    best_tensors: dict[str, torch.Tensor] | None = None

    def observe(self, epoch: int, valid: dict[str, float], monitor: str, patience: int, model: Recommender,
                min_epochs: int = 0, may_stop: bool = True) -> None:
        """Record one validation result; keeps a copy of the best weights and decides early stopping (never
        before ``min_epochs``: the count of bad evaluations goes on, the stop waits). ``may_stop`` False (the
        distiller's last phase has not begun) holds the count at zero: patience counts from that phase on."""
        score = valid[monitor]
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_epoch, self.best_valid, self.bad_evals = score, epoch, dict(valid), 0
            self.best_tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
        elif not may_stop:
            self.bad_evals = 0
        else:
            self.bad_evals += 1
            if patience and self.bad_evals >= patience and epoch >= min_epochs:
                self.stopped = True


def _rng_json() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": [version, list(internal), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached]}


def save_state(
    path: Path, state: TrainState, config: TrainConfig, model: Recommender,
    optimizer: torch.optim.Optimizer, distiller: Any,
) -> None:
    tensors = cpu_tensors(model.state_dict(), "model/")
    if state.best_tensors is not None:
        tensors.update(cpu_tensors(state.best_tensors, "best/"))
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in opt["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):  # Adam's moments: written from where they are, not copied
                tensors.update(cpu_tensors({f"optim/{idx}/{key}": value}))
            else:
                scalars.setdefault(str(idx), {})[key] = value
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    has_distill_state = distiller is not None and hasattr(distiller, "state_dict")
    if has_distill_state:
        tensors.update(cpu_tensors(distiller.state_dict(), "distill/"))
    meta = {
        "epoch": state.epoch, "best_epoch": state.best_epoch, "best_score": state.best_score,
        "best_valid": state.best_valid, "bad_evals": state.bad_evals, "stopped": state.stopped,
        "history": state.history, "config": config.model_dump(mode="json"),
        "optim_param_groups": opt["param_groups"], "optim_scalars": scalars,
        "optim_state_ids": [str(i) for i in opt["state"]], "rng": _rng_json(),
        "has_distill_state": has_distill_state,
    }
    save_train_state(path, tensors, meta)


def _check_config(meta: dict[str, Any], config: TrainConfig, path: Path) -> None:
    saved = meta.get("config", {})
    now = config.model_dump(mode="json")
    defaults = type(config)().model_dump(mode="json")
    for name in _MUST_MATCH:
        # A field newer than the checkpoint had its default then.
        was = saved.get(name, defaults[name])
        if was != now[name]:
            raise CheckpointError(
                f"{path}: config field {name!r} was {was!r} but is now {now[name]!r}; "
                "resume with the same value or pass resume=False"
            )


def _take(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_state(
    path: Path, config: TrainConfig, model: Recommender, optimizer: torch.optim.Optimizer,
    distiller: Any, device: torch.device,
) -> TrainState:
    """Restore model, optimizer, RNGs and distiller from ``path``; returns the bookkeeping state."""
    tensors, meta = load_train_state(path)
    _check_config(meta, config, path)
    try:
        model.load_state_dict(_take(tensors, "model/"), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} holds weights of another model: {exc}") from exc
    opt_state: dict[int, dict[str, Any]] = {}
    for idx in meta["optim_state_ids"]:
        entry: dict[str, Any] = dict(meta["optim_scalars"].get(idx, {}))
        entry.update(_take(tensors, f"optim/{idx}/"))
        opt_state[int(idx)] = entry
    optimizer.load_state_dict({"state": opt_state, "param_groups": meta["optim_param_groups"]})
    torch.set_rng_state(tensors["rng/torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda/")]
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda_states)
    version, internal, gauss = meta["rng"]["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["rng"]["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if meta.get("has_distill_state") and distiller is not None and hasattr(distiller, "load_state_dict"):
        distiller.load_state_dict({k: v.to(device) for k, v in _take(tensors, "distill/").items()})
    best = _take(tensors, "best/")
    return TrainState(
        epoch=meta["epoch"], best_epoch=meta["best_epoch"], best_score=meta["best_score"],
        best_valid=meta["best_valid"], bad_evals=meta["bad_evals"], stopped=meta["stopped"],
        history=meta["history"], best_tensors={k: v.to(device) for k, v in best.items()} if best else None,
    )
