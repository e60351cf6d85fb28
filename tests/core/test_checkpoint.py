"""Model checkpoints: safetensors + manifest round trip for every model, no pickle, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from safetensors.torch import load_file

from core.checkpoint import CheckpointError, cpu_tensors, load_checkpoint, save_checkpoint, write_safetensors
from core.models import MODELS, build_model

# Models trained by gradient steps (EASE, solved in closed form, has its own tests: test_ease.py).
GRADIENT_MODELS = sorted(name for name, cls in MODELS.items() if not cls.closed_form)


def train_matrix() -> sp.csr_matrix:
    m = sp.random(12, 9, density=0.3, format="csr", random_state=1, dtype=np.float32)
    m.data[:] = 1.0
    return m


@pytest.mark.parametrize("name", GRADIENT_MODELS)
def test_round_trip_gives_identical_scores(tmp_path: Path, name: str) -> None:
    train = train_matrix()
    torch.manual_seed(0)
    model = build_model(name, 12, 9, 6, train=train, reg=0.01).eval()
    # move the weights off their initial values so a fresh init cannot pass by accident
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    manifest = {
        "seed": 7,
        "fingerprint": "abc",
        "user_ids": [f"u{i}" for i in range(12)],
        "item_ids": np.array([f"i{i}" for i in range(9)]),
        "metrics": {"ndcg@10": np.float64(0.5)},
    }
    save_checkpoint(tmp_path / "ck", model, manifest)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["manifest.json", "model.safetensors"]
    loaded, meta = load_checkpoint(tmp_path / "ck")
    users = torch.arange(12)
    with torch.no_grad():
        assert torch.equal(loaded.full_scores(users), model.full_scores(users))
    assert type(loaded) is type(model) and not loaded.training
    assert meta["config"] == {"model": name, "dim": 6, "n_users": 12, "n_items": 9, "opts": model.options()}
    assert meta["seed"] == 7 and meta["item_ids"][3] == "i3" and meta["metrics"] == {"ndcg@10": 0.5}
    assert {"torch", "numpy", "python", "recdistill", "torch_cpu_capability"} <= set(meta["versions"])
    tensors = load_file(str(tmp_path / "ck" / "model.safetensors"))  # plain safetensors, no pickle
    assert ("__train__.rows" in tensors) == (name == "lightgcn")


def test_missing_or_inconsistent_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="manifest.json is missing"):
        load_checkpoint(tmp_path)
    model = build_model("bpr", 4, 3, 2)
    save_checkpoint(tmp_path, model, {})
    meta = json.loads((tmp_path / "manifest.json").read_text())
    meta["config"]["dim"] = 5
    (tmp_path / "manifest.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match the manifest"):
        load_checkpoint(tmp_path)
    del meta["config"]["dim"]
    (tmp_path / "manifest.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="'config' lacks"):
        load_checkpoint(tmp_path)
    (tmp_path / "manifest.json").write_text("{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(tmp_path)


def test_unserialisable_manifest_fails_before_replacing_files(tmp_path: Path) -> None:
    model = build_model("bpr", 4, 3, 2)
    with pytest.raises(TypeError, match="not JSON serialisable"):
        save_checkpoint(tmp_path, model, {"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_state_is_written_from_the_tensors_themselves(tmp_path: Path) -> None:
    # A training state is written without a copy of its CPU tensors (DCD's is gigabytes at scale); a strided one
    # is packed, and what is read back is what was given.
    flat, table = torch.arange(6, dtype=torch.int16), torch.arange(12.0).view(3, 4)
    out = cpu_tensors({"flat": flat, "column": table[:, 1]}, "p/")
    assert out["p/flat"].data_ptr() == flat.data_ptr() and out["p/column"].is_contiguous()
    write_safetensors(tmp_path / "s.safetensors", out, {"k": "v"})
    back = load_file(str(tmp_path / "s.safetensors"))
    assert torch.equal(back["p/flat"], flat) and torch.equal(back["p/column"], table[:, 1])


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "s.safetensors"
    write_safetensors(path, {"a": torch.ones(3)})
    shared = torch.zeros(3)
    with pytest.raises(RuntimeError, match="share memory"):  # refused by safetensors after the file was opened
        write_safetensors(path, {"a": shared, "b": shared[:2]})
    assert torch.equal(load_file(str(path))["a"], torch.ones(3)) and [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_load_onto_cuda(tmp_path: Path) -> None:
    model = build_model("lightgcn", 12, 9, 4, train=train_matrix())
    save_checkpoint(tmp_path, model, {})
    loaded, _ = load_checkpoint(tmp_path, device="cuda")
    users = torch.arange(3)
    torch.testing.assert_close(loaded.full_scores(users.cuda()).cpu(), model.full_scores(users))
