"""EASE, the closed-form teacher: its solution, its place in fit/checkpoints/specs, and a job that distils from it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from core.checkpoint import load_checkpoint, save_checkpoint
from core.config import EASE_MAX_ITEMS, DCDConfig, ModelSpec, TrainConfig, _model_spec
from core.db import repo
from core.db.session import dispose_engines, session_scope
from core.distill import distiller_for
from core.jobs.lifecycle import run_job
from core.models import build_model
from core.settings import Settings
from core.train import fit
from tests.core.test_train import Recorder, small_data
from tests.factories import job_settings, tiny_job


def ease(data, l2: float = 5.0):  # type: ignore[no-untyped-def]
    return build_model("ease", data.n_users, data.n_items, data.n_items, train=data.train, l2=l2)


def test_solve_is_the_closed_form_with_a_zero_diagonal() -> None:
    data = small_data()
    model = ease(data, l2=5.0)
    model.solve()
    x = data.train.toarray().astype(np.float64)
    x[x > 0] = 1.0
    p = np.linalg.inv(x.T @ x + 5.0 * np.eye(data.n_items))
    expected = np.eye(data.n_items) - p / np.diag(p)[None, :]
    b = model.weights.numpy()
    np.testing.assert_allclose(b, expected, atol=1e-5)
    assert np.all(np.diag(b) == 0)
    # Scores are the user's training row times B, whichever way they are asked for.
    users = torch.tensor([0, 3, 7])
    full = model.full_scores(users)
    np.testing.assert_allclose(full.numpy(), (x[[0, 3, 7]] @ b), atol=1e-4)
    items = torch.tensor([[1, 2], [0, 5], [4, 4]])
    np.testing.assert_allclose(model.score(users, items).numpy(), full.gather(1, items).numpy())


def test_fit_solves_once_and_says_so() -> None:
    data = small_data()
    rec = Recorder()
    model = ease(data)
    result = fit(model, data, TrainConfig(epochs=50, device="cpu"), callbacks=[rec])
    assert (result.epochs_run, result.best_epoch, result.stopped_by) == (1, 1, "closed_form")
    assert len(rec.reports) == 1 and rec.reports[0].valid == result.best_valid
    assert "ndcg@10" in result.best_valid
    assert model.weights.abs().sum() > 0


def test_checkpoint_round_trip_keeps_the_weights_and_l2(tmp_path: Path) -> None:
    data = small_data()
    model = ease(data, l2=7.5)
    model.solve()
    save_checkpoint(tmp_path / "t", model, {"note": "x"})
    loaded, manifest = load_checkpoint(tmp_path / "t")
    assert manifest["config"]["opts"] == {"l2": 7.5} and manifest["config"]["dim"] == data.n_items
    users = torch.arange(data.n_users)
    torch.testing.assert_close(loaded.full_scores(users), model.full_scores(users))


def test_ease_refuses_what_it_cannot_do() -> None:
    data = small_data()
    model = ease(data)
    with pytest.raises(TypeError, match="closed form"):
        model.loss(torch.tensor([0]), torch.tensor([1]), torch.tensor([2]))
    with pytest.raises(TypeError, match="never served"):
        model.embed()
    with pytest.raises(ValueError, match="above its limit"):
        build_model("ease", 2, EASE_MAX_ITEMS + 1, 1, train=sp.csr_matrix((2, EASE_MAX_ITEMS + 1)))
    with pytest.raises(ValueError, match="l2"):
        ease(data, l2=0.0)
    with pytest.raises(TypeError, match="gradient steps"):
        build_model("bpr", 3, 3, 2).solve()


def test_a_distiller_learns_from_ease_rankings() -> None:
    data = small_data()
    teacher = ease(data)
    teacher.solve()
    distiller = distiller_for("dcd", DCDConfig(m=5, p=2, rkd_k=2, rkd_l=2))
    distiller.prepare(teacher, data, "cpu")
    student = build_model("bpr", data.n_users, data.n_items, 4, seed=0)
    result = fit(student, data, TrainConfig(epochs=2, batch_size=64, device="cpu"), distiller=distiller)
    assert result.epochs_run == 2 and result.stopped_by == "cap"


@pytest.mark.parametrize(
    ("text", "spec"),
    [("ease:1000", {"model": "ease", "dim": None, "l2": 1000.0}), ("ease", {"model": "ease", "dim": None, "l2": 1000.0}),
     ("ease:2.5e2", {"model": "ease", "dim": None, "l2": 250.0}), ("bpr:20", {"model": "bpr", "dim": 20, "l2": None})],
)
def test_spec_parse(text: str, spec: dict) -> None:
    assert ModelSpec.parse(text).model_dump() == spec
    assert ModelSpec.parse(str(ModelSpec.parse(text))) == ModelSpec.parse(text)


@pytest.mark.parametrize("text", ["ease:abc", "ease:0", "ease:-3", "ease:inf", "ease:nan", "ease:1e8"])
def test_spec_parse_refuses_bad_l2(text: str) -> None:
    with pytest.raises(ValueError, match="L2 weight"):
        ModelSpec.parse(text)


@pytest.mark.parametrize(
    ("spec", "message"),
    [({"model": "ease", "dim": 10}, "teacher.dim: ease has no dim"),
     ({"model": "bpr"}, "teacher.dim: required for bpr"),
     ({"model": "bpr", "dim": 10, "l2": 3.0}, "teacher.l2: applies to ease only"),
     ({"model": "ease", "l2": 0}, "teacher.l2"),
     ({"model": "ease", "l2": 1e9}, "teacher.l2")],
)
def test_spec_errors_name_the_field(spec: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _model_spec(spec, "teacher")


@pytest.fixture()
def settings(tmp_path: Path) -> Iterator[Settings]:
    yield job_settings(tmp_path)
    dispose_engines()


def test_a_job_distils_a_student_from_an_ease_teacher(settings: Settings) -> None:
    hp = {"epochs": 2, "batch_size": 256, "lr": 0.01, "m": 10, "p": 3, "rkd_k": 3, "rkd_l": 3}
    job_id = tiny_job(settings, teacher={"model": "ease", "l2": 50.0}, hyperparameters=hp)
    assert run_job(job_id, settings, worker_id="w1") == "succeeded"
    with session_scope(settings.database_url) as s:
        job = repo.get_job(s, job_id)
        teacher = repo.get_model(s, job.result_teacher_model_id or "")
        student = repo.get_model(s, job.student_model_id or "")
        assert teacher.model_name == "ease" and teacher.dim == teacher.n_params ** 0.5
        assert student.dim == 4
        history = job.history
        t_folder = settings.artifact_dir / teacher.artifact_path
    assert [h["stopped_by"] for h in history if "stopped_by" in h] == ["closed_form", "cap"]
    manifest = json.loads((t_folder / "manifest.json").read_text())
    assert manifest["stopped_by"] == "closed_form" and manifest["epochs"] == 1
