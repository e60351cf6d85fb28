"""POST/GET /jobs and cancel: validation names the field, rows are never half-written, enqueue failures fail the job."""

from __future__ import annotations

from typing import Any

import pytest
from api_support import RecordingQueue, add_dataset, add_model, count_rows, job_body
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from core.db import repo
from core.db.models import Job
from core.jobs import memory
from core.settings import Settings


def test_create_job_queues_it(
    client: TestClient, sessions: sessionmaker[Session], queue: RecordingQueue
) -> None:
    ds = add_dataset(sessions)
    res = client.post("/jobs", json=job_body(ds))
    assert res.status_code == 201, res.text
    job = res.json()
    assert job["status"] == "queued" and job["hyperparameters"] == {"epochs": 3, "lr": 0.01}
    assert job["split"] == {"mode": "random", "ratios": [0.8, 0.1, 0.1]} and job["max_epochs"] == 3
    assert queue.sent == [job["id"]]
    assert client.get(f"/jobs/{job['id']}").json()["status"] == "queued"
    assert [j["id"] for j in client.get("/jobs", params={"status": "queued"}).json()["data"]] == [job["id"]]
    assert client.get("/jobs", params={"status": "running"}).json()["data"] == []


def test_method_specific_hyperparameters_are_kept(client: TestClient, sessions: sessionmaker[Session]) -> None:
    ds = add_dataset(sessions)
    hp = {"epochs": 5, "teacher_epochs": 9, "teacher_lr": 0.01, "p": 20, "lambda_ucd": 0.01, "use_rkd": False}
    res = client.post("/jobs", json=job_body(ds, hyperparameters=hp))
    assert res.status_code == 201, res.text
    assert res.json()["hyperparameters"] == hp and res.json()["max_epochs"] == 5
    res = client.post("/jobs", json=job_body(ds, method="rrd", hyperparameters={"k": 20, "lambda_rrd": 0.01}))
    assert res.status_code == 201, res.text


def test_an_ease_teacher_is_accepted_with_its_l2_or_the_default(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    ds = add_dataset(sessions)
    res = client.post("/jobs", json=job_body(ds, teacher={"model": "ease", "l2": 300}))
    assert res.status_code == 201, res.text
    assert res.json()["teacher"] == {"model": "ease", "dim": None, "l2": 300.0}
    res = client.post("/jobs", json=job_body(ds, teacher={"model": "ease"}))
    assert res.status_code == 201 and res.json()["teacher"]["l2"] == 1000.0


def test_a_hetcomp_job_is_accepted_with_its_ensemble(client: TestClient, sessions: sessionmaker[Session]) -> None:
    body = job_body(add_dataset(sessions), method="hetcomp",
                    hyperparameters={"teachers": ["bpr:32", "ease:500"], "ensemble_epochs": 20, "lambda_easy": 0.001})
    res = client.post("/jobs", json=body)
    assert res.status_code == 201, res.text
    assert res.json()["hyperparameters"]["teachers"] == ["bpr:32", "ease:500"]


def test_a_job_the_worker_could_not_build_is_refused(client: TestClient, sessions: sessionmaker[Session]) -> None:
    # Rules across fields and parts (the teacher's model and its fit loop) are checked at the door, not by the worker.
    ds = add_dataset(sessions)
    res = client.post("/jobs", json=job_body(ds, teacher={"model": "lightgcn", "dim": 32},
                                             hyperparameters={"teacher_sparse_updates": True}))
    assert res.status_code == 422 and "teacher_sparse_updates: model 'lightgcn'" in res.text, res.text
    assert count_rows(sessions, Job) == 0
    res = client.post("/jobs", json=job_body(ds, hyperparameters={"teacher_sparse_updates": True}))
    assert res.status_code == 201, res.text


def test_reuse_a_trained_teacher(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    ds = add_dataset(sessions)
    teacher = add_model(sessions, settings, dataset_id=ds, role="teacher", dim=32, with_bundle=False)
    body = job_body(ds, teacher=None, teacher_model_id=teacher)
    assert client.post("/jobs", json=body).status_code == 201
    res = client.post("/jobs", json={**body, "student": {"model": "bpr", "dim": 32}})
    assert res.status_code == 422 and "student.dim" in res.json()["detail"]
    other = add_dataset(sessions, name="other")
    res = client.post("/jobs", json={**body, "dataset_id": other})
    assert res.status_code == 422 and "teacher_model_id" in res.json()["detail"]
    student = add_model(sessions, settings, dataset_id=ds, with_bundle=False)
    res = client.post("/jobs", json={**body, "teacher_model_id": student})
    assert res.status_code == 422 and "not a teacher" in res.json()["detail"]
    # A key for the teacher's fit loop would be ignored (the teacher is not trained again): refused by name.
    res = client.post("/jobs", json={**body, "hyperparameters": {"epochs": 3, "teacher_epochs": 5}})
    assert res.status_code == 422 and "teacher_epochs" in res.json()["detail"], res.text


@pytest.mark.parametrize(
    ("over", "status", "words"),
    [
        ({"student": {"model": "bpr", "dim": 64}}, 422, "student.dim"),
        ({"student": {"model": "bpr", "dim": 128}}, 422, "student.dim"),
        ({"student": {"model": "bpr", "dim": 0}}, 422, "student.dim"),
        ({"student": {"model": "bpr", "dim": -3}}, 422, "student.dim"),
        ({"teacher": {"model": "transformer", "dim": 64}}, 422, "teacher.model"),
        ({"student": {"model": "neumf", "dim": 8}}, 422, "dot-product"),
        ({"method": "magic"}, 422, "method"),
        ({"hyperparameters": {"epochs": 3, "learning_rate": 1}}, 422, "learning_rate"),
        ({"hyperparameters": {"epochs": 0}}, 422, "hyperparameters: epochs"),
        ({"hyperparameters": {"lr": -1}}, 422, "hyperparameters: lr"),
        ({"hyperparameters": {"teacher_epochs": "many"}}, 422, "teacher_epochs"),
        ({"hyperparameters": {"k": 10}}, 422, "['k'] for method 'dcd'"),
        ({"method": "none", "hyperparameters": {"p": 10}}, 422, "['p'] for method 'none'"),
        ({"method": "rrd", "hyperparameters": {"eps": 0.1}}, 422, "['eps'] for method 'rrd'"),
        ({"hyperparameters": {"p": 600}}, 422, "p: must be at most m (500)"),
        ({"hyperparameters": {"m": 30}}, 422, "p: must be at most m (30)"),
        ({"hyperparameters": {"correction_m": 20}}, 422, "p: must be at most correction_m (20)"),
        ({"hyperparameters": {"m": 100, "correction_m": 200, "p": 10}}, 422, "correction_m: must be at most m"),
        ({"teacher": None}, 422, "teacher_model_id"),
        ({"teacher_model_id": "a" * 32}, 422, "exactly one"),
        ({"split": {"mode": "random", "ratios": [0.5, 0.5, 0.5]}}, 422, "ratios"),
        ({"dataset_id": "../../etc/passwd"}, 422, "dataset_id"),
        ({"dataset_id": "f" * 32}, 404, "f" * 32),
        ({"teacher": None, "teacher_model_id": "e" * 32}, 404, "e" * 32),
        ({"colour": "red"}, 422, "colour"),
        ({"teacher": {"model": "ease", "dim": 64}}, 422, "teacher.dim"),
        ({"teacher": {"model": "ease", "l2": 0}}, 422, "teacher.l2"),
        ({"teacher": {"model": "ease", "l2": 1e300}}, 422, "teacher.l2"),
        ({"teacher": {"model": "bpr", "dim": 64, "l2": 5.0}}, 422, "teacher.l2"),
        ({"teacher": {"model": "bpr"}}, 422, "teacher.dim"),
        ({"student": {"model": "ease", "l2": 5.0}}, 422, "student"),
    ],
)
def test_bad_job_requests(
    client: TestClient,
    sessions: sessionmaker[Session],
    queue: RecordingQueue,
    over: dict[str, Any],
    status: int,
    words: str,
) -> None:
    ds = add_dataset(sessions)
    res = client.post("/jobs", json={**job_body(ds), **over})
    assert res.status_code == status, res.text
    assert words in res.json()["detail"]
    assert count_rows(sessions, Job) == 0 and queue.sent == []


def test_malformed_json_and_wrong_types(client: TestClient, sessions: sessionmaker[Session]) -> None:
    res = client.post("/jobs", content=b'{"dataset_id": ', headers={"content-type": "application/json"})
    assert res.status_code == 400 and "malformed JSON" in res.json()["detail"]
    res = client.post("/jobs", json=["not", "an", "object"])
    assert res.status_code == 422
    res = client.post("/jobs", json={"student": {"model": "bpr", "dim": "eight"}})
    assert (
        res.status_code == 422
        and "student.dim" in res.json()["detail"]
        and "dataset_id" in res.json()["detail"]
    )
    assert count_rows(sessions, Job) == 0


def test_enqueue_failure_marks_the_job_failed(
    client: TestClient, sessions: sessionmaker[Session], queue: RecordingQueue
) -> None:
    queue.error = ConnectionError("broker down")
    res = client.post("/jobs", json=job_body(add_dataset(sessions)))
    assert res.status_code == 503 and "broker down" in res.json()["detail"]
    job_id = res.json()["job"]["id"]
    job = client.get(f"/jobs/{job_id}").json()
    assert job["status"] == "failed" and "broker down" in job["error"]


def test_cancel(client: TestClient, sessions: sessionmaker[Session]) -> None:
    ds = add_dataset(sessions)
    queued = client.post("/jobs", json=job_body(ds)).json()
    res = client.post(f"/jobs/{queued['id']}/cancel")
    assert res.status_code == 200 and res.json()["status"] == "cancelled"
    assert client.post(f"/jobs/{queued['id']}/cancel").status_code == 409
    running = client.post("/jobs", json=job_body(ds)).json()
    with sessions() as s:
        repo.get_job(s, running["id"]).status = "running"
        s.commit()
    res = client.post(f"/jobs/{running['id']}/cancel")
    assert res.json()["status"] == "running" and res.json()["cancel_requested"] is True
    assert client.post(f"/jobs/{'0' * 32}/cancel").status_code == 404


def test_unknown_and_bad_job_ids(client: TestClient, anon: TestClient) -> None:
    res = client.get(f"/jobs/{'1' * 32}")
    assert res.status_code == 404 and "1" * 32 in res.json()["detail"]
    assert client.get("/jobs/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)
    assert client.get("/jobs", params={"status": "sleeping"}).status_code == 422
    assert anon.post(f"/jobs/{'1' * 32}/cancel").status_code == 401


@pytest.mark.parametrize(("method", "key", "value"), [
    ("dcd", "rkd_l", 10**9), ("dcd", "bank", 10**6), ("dcd", "chunk", 10**7), ("dcd", "m", 10**7),
    ("dcd", "lambda_ucd", 1e300), ("rrd", "l", 10**9), ("rrd", "seed", 2**40),
    ("hetcomp", "k", 10**6), ("hetcomp", "ensemble_epochs", 10**6), ("hetcomp", "stages", 100),
    ("hetcomp", "teachers", ["bpr:8"] * 5), ("hetcomp", "teachers", ["foo:8"]), ("hetcomp", "teachers", ["bpr:9999999"]),
])
def test_every_distiller_number_is_bounded(client: TestClient, sessions: sessionmaker[Session], method: str,
                                           key: str, value: float) -> None:
    # A worker would have tried to allocate what a client asked for (rkd_l = 1e9 uninteresting items per user).
    body = job_body(add_dataset(sessions), method=method, hyperparameters={key: value})
    res = client.post("/jobs", json=body)
    assert res.status_code == 422 and key in res.json()["detail"], res.text


def test_a_job_that_cannot_fit_in_memory_is_refused_naming_the_option(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    # The scale benchmark's 10M-interaction shape; a 24 GB worker (bench/results/scale-job.json ran m = 100 there).
    client.app.state.settings = settings.model_copy(update={"job_memory_mb": 24 * 1024})  # type: ignore[attr-defined]
    ds = add_dataset(sessions, n_users=1_000_000, n_items=100_000)
    res = client.post("/jobs", json=job_body(ds, hyperparameters={"m": 2000}))
    assert res.status_code == 422, res.text
    detail = res.json()["detail"]
    assert detail.startswith("hyperparameters.m: this job needs at least") and "RECDISTILL_JOB_MEMORY_MB" in detail
    assert "no m above " in detail and res.json()["code"] == "job_too_large" and count_rows(sessions, Job) == 0
    assert client.post("/jobs", json=job_body(ds, hyperparameters={"m": 100})).status_code == 201
    res = client.post("/jobs", json=job_body(ds, teacher={"model": "ease"}))
    assert res.status_code == 422 and res.json()["detail"].startswith("teacher.model: EASE keeps"), res.text
    res = client.post("/jobs", json=job_body(ds, method="hetcomp", hyperparameters={"teachers": ["ease:500"]}))
    assert res.status_code == 422 and res.json()["detail"].startswith("hyperparameters.teachers[0]:"), res.text


def test_without_the_setting_a_job_is_held_to_this_machines_memory(
    client: TestClient, sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory, "machine_memory", lambda: 8 * 2**30)  # an 8 GiB machine
    ds = add_dataset(sessions, n_users=1_000_000, n_items=100_000)
    res = client.post("/jobs", json=job_body(ds, hyperparameters={"m": 500}))  # a 9.4 GB floor
    assert res.status_code == 422 and "a job may use 8.6 GB (this machine's memory" in res.json()["detail"], res.text
    assert client.post("/jobs", json=job_body(ds, hyperparameters={"m": 100})).status_code == 201  # 3.4 GB
