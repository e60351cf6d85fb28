"""Checkpoints without pickles: a model's safetensors + manifest.json, and the trainer's resumable state.

Every file is written atomically (``core.storage.atomic_path``: a temporary name, then ``os.replace``).
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save_file as st_save_file

import core
from core.models import build_model
from core.models.base import Recommender
from core.storage import atomic_path, atomic_write_bytes

MODEL_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
TRAIN_STATE_FILE = "train_state.safetensors"
#: Keys of the LightGCN (graph model) training matrix inside model.safetensors.
_TRAIN_ROWS, _TRAIN_COLS = "__train__.rows", "__train__.cols"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint folder is missing files or holds inconsistent content."""


def cpu_tensors(tensors: dict[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors (safetensors refuses strided storage): the tensors themselves where they
    already are, copies of the others. Copying every one held a second image of a training state while it was
    written (bench/results/dcd-memory-checkpoint.json)."""
    return {prefix + k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Stream ``tensors`` into ``path`` atomically. safetensors' ``save`` builds the whole file as bytes (and
    copies them once more); a large DCD training state then held ~3 images of itself at each epoch's save."""
    with atomic_path(path) as tmp:
        st_save_file(tensors, tmp, metadata=metadata)


def library_versions() -> dict[str, str]:
    return {
        "recdistill": core.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        # ATen picks CPU kernels by instruction set (e.g. AVX2 vs AVX512); reduction order, hence float
        # rounding, can differ between them, so a CPU run reproduces bit-for-bit only on the same capability.
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def model_config(model: Recommender) -> dict[str, Any]:
    """What ``build_model`` needs to rebuild ``model`` (besides a graph model's train matrix)."""
    return {
        "model": model.name,
        "dim": model.dim,
        "n_users": model.n_users,
        "n_items": model.n_items,
        "opts": model.options(),
    }


def save_checkpoint(directory: str | os.PathLike[str], model: Recommender, manifest: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` and ``manifest.json`` into ``directory``; returns the folder.

    ``manifest`` carries the caller's facts (seed, data fingerprint, id maps, metrics, ...); this function
    adds ``config`` (model name, dim, sizes, options), ``versions`` and ``format_version``. The manifest is
    written last, so its presence marks a complete checkpoint.
    """
    if not model.name:
        raise ValueError(f"model {type(model).__name__} has no registry name; it cannot be checkpointed")
    folder = Path(directory)
    tensors = cpu_tensors(model.state_dict())
    train = getattr(model, "train_matrix", None) if model.needs_train else None
    if train is not None:
        coo = sp.coo_matrix(train)
        tensors[_TRAIN_ROWS] = torch.from_numpy(coo.row.astype(np.int64))
        tensors[_TRAIN_COLS] = torch.from_numpy(coo.col.astype(np.int64))
    full = dict(manifest)
    full.update(config=model_config(model), versions=library_versions(), format_version=FORMAT_VERSION)
    payload = json.dumps(full, indent=1, sort_keys=True, default=_json_default).encode()
    write_safetensors(folder / MODEL_FILE, tensors)
    atomic_write_bytes(folder / MANIFEST_FILE, payload)
    return folder


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"manifest value of type {type(obj).__name__} is not JSON serialisable")


def read_manifest(directory: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: not a complete checkpoint folder")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc


def load_checkpoint(
    directory: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[Recommender, dict[str, Any]]:
    """Rebuild the model of a checkpoint folder through ``build_model`` (no pickle) -> (model in eval mode, manifest)."""
    folder = Path(directory)
    manifest = read_manifest(folder)
    cfg = manifest.get("config")
    if not isinstance(cfg, dict) or not {"model", "dim", "n_users", "n_items"} <= cfg.keys():
        raise CheckpointError(f"{folder / MANIFEST_FILE}: 'config' lacks model, dim, n_users or n_items")
    weights = folder / MODEL_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing")
    tensors = st_load(weights.read_bytes())
    train = None
    if _TRAIN_ROWS in tensors:
        rows, cols = tensors.pop(_TRAIN_ROWS).numpy(), tensors.pop(_TRAIN_COLS).numpy()
        train = sp.csr_matrix(
            (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(cfg["n_users"], cfg["n_items"])
        )
    model = build_model(cfg["model"], cfg["n_users"], cfg["n_items"], cfg["dim"], train=train, **cfg.get("opts", {}))
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights} does not match the manifest's config: {exc}") from exc
    return model.to(device).eval(), manifest


def save_train_state(path: Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    """One atomic file: tensors in safetensors, everything else as JSON in its metadata."""
    meta = {"state": json.dumps(state, default=_json_default), "format_version": str(FORMAT_VERSION)}
    write_safetensors(path, tensors, meta)


def load_train_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path} is not a readable training checkpoint: {exc}") from exc
    if "state" not in meta:
        raise CheckpointError(f"{path} has no training state metadata")
    return tensors, json.loads(meta["state"])
