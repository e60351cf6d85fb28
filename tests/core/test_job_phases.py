"""The job runner reads a dataset with every option stored on its row, and shows each phase as it begins."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.db import repo
from core.db.session import dispose_engines, session_scope
from core.jobs import phases
from core.jobs.lifecycle import run_job
from core.settings import Settings
from tests.factories import job_settings, tiny_job

FAST_HP = {
    "epochs": 2,
    "teacher_epochs": 1,
    "batch_size": 256,
    "lr": 0.01,
    "m": 10,
    "p": 3,
    "rkd_k": 3,
    "rkd_l": 3,
}


@pytest.fixture()
def settings(tmp_path: Path) -> Iterator[Settings]:
    yield job_settings(tmp_path)
    dispose_engines()


def semicolon_file(n_users: int = 30, n_items: int = 20) -> str:
    """';'-separated; every user also rates two 'junk' items 1 star, which a threshold of 3 must drop."""
    rows = ["uid;iid;score;ts"]
    for u in range(n_users):
        for j in range(8):
            rows.append(f"u{u};i{(u + j) % n_items};5;{1000 + j}")
        rows += [f"u{u};junk{u % 5};1;900", f"u{u};junk{(u + 1) % 5};1;901"]
    return "\n".join(rows) + "\n"


def make_job(settings: Settings, content: str, dataset: dict[str, Any], **job: Any) -> str:
    fields = {"hyperparameters": dict(FAST_HP), "split": {"mode": "random", "ratios": [0.8, 0.1, 0.1]}, **job}
    return tiny_job(settings, content, dataset, **fields)


SEMI = {
    "format": "csv",
    "sep": ";",
    "user_col": "uid",
    "item_col": "iid",
    "rating_col": "score",
    "timestamp_col": "ts",
    "rating_threshold": 3.0,
}


def test_job_reads_the_dataset_with_its_stored_separator_and_columns(settings: Settings) -> None:
    job_id = make_job(settings, semicolon_file(), SEMI)
    assert run_job(job_id, settings, worker_id="w1") == "succeeded"
    with session_scope(settings.database_url) as s:
        folder = (
            settings.artifact_dir
            / repo.get_model(s, repo.get_job(s, job_id).student_model_id or "").artifact_path
        )
    manifest = json.loads((folder / "manifest.json").read_text())
    assert len(manifest["user_ids"]) == 30
    assert manifest["item_ids"] == sorted(
        f"i{i}" for i in range(20)
    )  # junk (1 star) dropped by the threshold


def test_job_without_the_separator_fails_naming_the_problem(settings: Settings) -> None:
    job_id = make_job(settings, semicolon_file(), {**SEMI, "sep": None})
    assert run_job(job_id, settings, worker_id="w1") == "failed"
    with session_scope(settings.database_url) as s:
        assert "uid" in (repo.get_job(s, job_id).error or "")


def test_every_stored_dataset_option_reaches_load_split(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def fake_load_split(path: Path, dataset: dict[str, Any], split_opts: dict[str, Any], seed: int) -> Any:
        seen.update(dataset)
        raise ValueError("stop here")

    monkeypatch.setattr(phases.steps, "load_split", fake_load_split)
    job_id = make_job(settings, semicolon_file(), SEMI)
    assert run_job(job_id, settings, worker_id="w1") == "failed"
    assert {k: seen.get(k) for k in SEMI} == SEMI


def _recording(
    settings: Settings, job_id: str, log: list[tuple[str, Any, int, int]], name: str, fn: Callable[..., Any]
) -> Callable[..., Any]:
    """Wrap ``fn`` so every call first records the job row's (phase, epoch, max_epochs)."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with session_scope(settings.database_url) as s:
            job = repo.get_job(s, job_id)
            log.append((name, job.phase, job.epoch, job.max_epochs))
        return fn(*args, **kwargs)

    return wrapper


def test_each_phase_is_recorded_as_it_begins(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    job_id = make_job(settings, semicolon_file(), SEMI)
    calls: list[tuple[str, Any, int, int]] = []
    for name in ("make_distiller", "test_metrics", "export_bundle"):
        original = getattr(phases.steps, name)
        monkeypatch.setattr(phases.steps, name, _recording(settings, job_id, calls, name, original))
    assert run_job(job_id, settings, worker_id="w1") == "succeeded"
    assert calls == [
        ("test_metrics", "teacher", 1, 1),  # the teacher's own test metrics, right after its fit
        (
            "make_distiller",
            "distill",
            0,
            2,
        ),  # distill shows as 0/2 while the teacher's top-M lists are computed
        ("test_metrics", "evaluate", 2, 2),
        ("export_bundle", "index", 2, 2),
    ]


def test_the_same_job_twice_gives_the_same_metrics_and_recommendations(settings: Settings) -> None:
    """Models are built from the job's seed, not from whatever the process drew before (issue 11)."""
    import torch

    from core.index import ServingBundle

    results = []
    for _ in range(2):
        job_id = make_job(settings, semicolon_file(), SEMI)
        torch.rand(100)  # the process's generator moves on between the two jobs
        assert run_job(job_id, settings, worker_id="w1") == "succeeded"
        with session_scope(settings.database_url) as s:
            job = repo.get_job(s, job_id)
            student = repo.get_model(s, job.student_model_id or "")
            teacher = repo.get_model(s, job.result_teacher_model_id or "")
            folder = settings.artifact_dir / student.artifact_path / "serving"
            results.append((student.metrics, teacher.metrics))
        bundle = ServingBundle.load(folder)
        results.append([bundle.recommend(u, 5) for u in ("u0", "u7", "u13")])
    assert results[0] == results[2] and results[1] == results[3]


def test_hetcomp_keeps_its_ensemble_trajectories_in_the_job_folder(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job resumed after its worker died finds the trajectories its first run trained (the folder goes with
    the job when it ends)."""
    hp = {"epochs": 2, "teacher_epochs": 1, "batch_size": 256, "lr": 0.01, "teachers": ["bpr:4"], "ensemble_epochs": 1,
          "stages": 2, "k": 5, "positives": 3}
    job_id = make_job(settings, semicolon_file(), SEMI, method="hetcomp", hyperparameters=hp)
    kept: list[list[str]] = []
    original = phases.steps.make_distiller

    def spy(*args: Any, **kwargs: Any) -> Any:
        distiller = original(*args, **kwargs)
        kept.append(sorted(p.name for p in kwargs["trajectory_cache"].iterdir()))
        assert kwargs["trajectory_cache"].parent.name == job_id
        return distiller

    monkeypatch.setattr(phases.steps, "make_distiller", spy)
    assert run_job(job_id, settings, worker_id="w1") == "succeeded"
    assert len(kept) == 1 and len(kept[0]) == 1 and kept[0][0].startswith("hetcomp-bpr4-seed")


def test_a_job_above_the_workers_memory_fails_before_its_first_phase(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker holds a job to its own budget (it may have less memory than the API's machine): the job ends
    # failed with the reason at once, instead of being killed RECDISTILL_JOB_MAX_CRASHES times.
    monkeypatch.setattr(phases.memory, "LIST_BYTES", 10**9)
    job_id = make_job(settings, semicolon_file(), SEMI, method="dcd")
    assert run_job(job_id, settings, worker_id="w1") == "failed"
    with session_scope(settings.database_url) as s:
        job = repo.get_job(s, job_id)
        assert (job.error or "").startswith("hyperparameters.m: this job needs at least")
        assert job.crashes == 0 and job.result_teacher_model_id is None and not job.history
