"""core.config: the one schema. A job's hyperparameters split into the two fit loops and the distiller's config,
validated once; the module stays torch-free."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.config import DCDConfig, JobSpec, JobStatus, RRDConfig, TrainConfig, check_hyperparameters

ROOT = Path(__file__).resolve().parents[2]


def spec(**over: object) -> JobSpec:
    parts: dict = {"dataset_id": "d" * 32, "method": "dcd", "teacher": {"model": "bpr", "dim": 16},
                   "teacher_model_id": None, "student": {"model": "bpr", "dim": 4}, "hyperparameters": {},
                   "seed": 7, "split": None}
    return JobSpec.build(**{**parts, **over})  # type: ignore[arg-type]


def test_hyperparameters_split_into_teacher_student_and_distiller() -> None:
    s = spec(hyperparameters={"epochs": 3, "teacher_epochs": 5, "lr": 0.01, "m": 20, "p": 4})
    assert (s.teacher_train.epochs, s.student_train.epochs) == (5, 3)
    assert s.teacher_train.lr == s.student_train.lr == 0.01  # the student's keys are the teacher's defaults
    assert s.teacher_train.seed == s.student_train.seed == 7
    assert isinstance(s.distiller, DCDConfig) and (s.distiller.m, s.distiller.p, s.distiller.seed) == (20, 4, 7)
    assert s.hyperparameters == {"epochs": 3, "teacher_epochs": 5, "lr": 0.01, "m": 20, "p": 4}
    assert s.split.mode == "random" and s.student.model == "bpr"
    assert isinstance(spec(method="rrd").distiller, RRDConfig)


def test_a_model_trains_with_its_own_defaults_under_the_users_values() -> None:
    # LightGCN propagates over the whole graph every batch: it trains at batch 32768 (and a larger step) unless
    # the job says otherwise; the BPR student keeps TrainConfig's defaults.
    s = spec(teacher={"model": "lightgcn", "dim": 16})
    assert (s.teacher_train.batch_size, s.teacher_train.lr) == (32768, 1e-2)
    assert (s.student_train.batch_size, s.student_train.lr) == (1024, 1e-3)
    s = spec(teacher={"model": "lightgcn", "dim": 16}, hyperparameters={"teacher_batch_size": 2048, "lr": 5e-3})
    assert (s.teacher_train.batch_size, s.teacher_train.lr) == (2048, 5e-3)
    assert spec(teacher=None, teacher_model_id="t" * 32).teacher_train.batch_size == 1024


def test_sparse_updates_reach_the_loops_that_can_use_them() -> None:
    s = spec(hyperparameters={"teacher_sparse_updates": True})
    assert s.teacher_train.sparse_updates and not s.student_train.sparse_updates
    s = spec(method="none", hyperparameters={"sparse_updates": True})  # plain training: both loops
    assert s.teacher_train.sparse_updates and s.student_train.sparse_updates


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"hyperparameters": {"seed": 3}}, "['seed']"),  # the distiller's seed is the job's
        ({"method": "none", "hyperparameters": {"row_fraction": 0.5}}, "['row_fraction']"),
        ({"hyperparameters": {"epochs": 100_001}}, "epochs: Input should be less than or equal to 100000"),
        ({"hyperparameters": {"teacher_valid_users": 0}}, "teacher_valid_users: Input should be greater than"),
        ({"hyperparameters": {"valid_users": 10**9}}, "valid_users: Input should be less than or equal to"),
        ({"hyperparameters": {"m": 10}}, "p: must be at most m (10)"),
        ({"student": {"model": "nope", "dim": 4}}, "student.model 'nope'"),
        ({"method": "nope"}, "'nope'"),
        # sparse updates: lookup models, plain training, no weight decay (each named by the job's key)
        ({"hyperparameters": {"sparse_updates": True}}, "sparse_updates: method 'dcd' adds distillation losses"),
        ({"teacher": {"model": "lightgcn", "dim": 16}, "hyperparameters": {"teacher_sparse_updates": True}},
         "teacher_sparse_updates: model 'lightgcn'"),
        ({"hyperparameters": {"teacher_sparse_updates": True, "weight_decay": 1e-4}},
         "weight_decay must be 0 with teacher_sparse_updates"),
        ({"method": "none", "hyperparameters": {"sparse_updates": True, "teacher_weight_decay": 1e-4}},
         "teacher_weight_decay must be 0 with sparse_updates"),
        ({"method": "none", "teacher": {"model": "lightgcn", "dim": 16}, "hyperparameters": {"sparse_updates": True}},
         "sparse_updates (the teacher inherits it; give teacher_sparse_updates false): model 'lightgcn'"),
    ],
)
def test_a_bad_part_is_named(over: dict, needle: str) -> None:
    with pytest.raises(ValueError) as err:
        spec(**over)
    assert needle in str(err.value), err.value


def test_json_types_are_strict_at_the_edge_and_lax_for_rows() -> None:
    with pytest.raises(ValueError, match="use_rkd"):
        check_hyperparameters("dcd", {"use_rkd": 0})
    assert check_hyperparameters("dcd", {"use_rkd": 0}, strict=False) == {"use_rkd": False}
    assert check_hyperparameters("dcd", {"epochs": 2.0}) == {"epochs": 2}


def test_the_fit_loop_itself_takes_any_positive_value() -> None:
    assert TrainConfig(lr=1e30).lr == 1e30  # the job's upper bounds are the edge's, not the loop's


def test_statuses_are_their_strings() -> None:
    assert JobStatus.QUEUED == "queued" and f"{JobStatus.FAILED}" == "failed"


def test_config_imports_no_torch() -> None:
    code = "import sys, core.config; assert 'torch' not in sys.modules"
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
