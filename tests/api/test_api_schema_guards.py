"""Shared request-schema guards: non-finite numbers, NUL characters, strict JSON types, bounded paging."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from api_support import add_dataset, count_rows
from api_support import job_body as shared_job_body
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from core.db.models import Dataset, Job


def job_body(dataset_id: str, **over: Any) -> dict[str, Any]:
    return shared_job_body(dataset_id, **{"hyperparameters": {"epochs": 3}, **over})


def post_json(client: TestClient, path: str, body: Any) -> Any:
    # json.dumps writes Infinity/NaN, which Python's reader (and so FastAPI) accepts.
    return client.post(path, content=json.dumps(body).encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize(
    ("method", "key"),
    [("dcd", "lambda_ucd"), ("dcd", "lambda_icd"), ("dcd", "lambda_rkd"), ("dcd", "eps"), ("dcd", "rkd_t"),
     ("dcd", "floor"), ("dcd", "row_fraction"), ("rrd", "t"), ("rrd", "lambda_rrd"), ("rrd", "lambda_item"),
     ("dcd", "lr"), ("dcd", "weight_decay"), ("dcd", "teacher_lr")],
)
def test_non_finite_hyperparameters_are_422(
    client: TestClient, sessions: sessionmaker[Session], method: str, key: str, value: float
) -> None:
    ds = add_dataset(sessions)
    res = post_json(client, "/jobs", job_body(ds, method=method, hyperparameters={key: value}))
    assert res.status_code == 422, res.text
    assert key in res.json()["detail"] and "finite" in res.json()["detail"]
    assert count_rows(sessions, Job) == 0


def test_non_finite_split_ratio_is_422(client: TestClient, sessions: sessionmaker[Session]) -> None:
    ds = add_dataset(sessions)
    res = post_json(client, "/jobs", job_body(ds, split={"ratios": [float("nan"), 0.5, 0.5]}))
    assert res.status_code == 422 and "split.ratios" in res.json()["detail"]


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"seed": False}, "seed"),
        ({"seed": 1.5}, "seed"),
        ({"student": {"model": "bpr", "dim": True}}, "student.dim"),
        ({"hyperparameters": {"epochs": True}}, "epochs"),
        ({"hyperparameters": {"use_rkd": 0}}, "use_rkd"),
        ({"hyperparameters": {"lr": "0.1"}}, "lr"),
        ({"dataset_id": "ab\x00" + "c" * 29}, "dataset_id"),
        ({"hyperparameters": {"correction_order": "released\x00"}}, "hyperparameters"),
    ],
)
def test_job_bodies_are_strictly_typed(
    client: TestClient, sessions: sessionmaker[Session], over: dict[str, Any], field: str
) -> None:
    ds = add_dataset(sessions)
    res = post_json(client, "/jobs", {**job_body(ds), **over})
    assert res.status_code == 422, res.text
    assert field in res.json()["detail"]
    assert count_rows(sessions, Job) == 0


def test_a_strict_job_body_still_accepts_json_numbers(client: TestClient, sessions: sessionmaker[Session]) -> None:
    ds = add_dataset(sessions)
    body = job_body(ds, hyperparameters={"lr": 1, "use_rkd": False}, split={"mode": "random", "ratios": [1, 0, 0]})
    res = post_json(client, "/jobs", body)
    assert res.status_code == 201, res.text
    assert res.json()["split"]["ratios"] == [1.0, 0.0, 0.0]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"users": ["u1"], "exclude_seen": 0}, "exclude_seen"),
        ({"users": ["u1"], "fallback": "true"}, "fallback"),
        ({"users": ["u1"], "k": True}, "k"),
        ({"users": ["u\x001"]}, "users"),
        ({"users": ["u1"], "exclude": ["i\x00"]}, "exclude"),
    ],
)
def test_batch_bodies_are_strict(client: TestClient, body: dict[str, Any], field: str) -> None:
    res = post_json(client, "/recommend/batch", body)
    assert res.status_code == 422, res.text
    assert field in res.json()["detail"]


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"rating_col": "rating", "rating_threshold": "-inf"}, "rating_threshold"),
        ({"rating_col": "rating", "rating_threshold": "NaN"}, "rating_threshold"),
        ({"sep": "\x00"}, "sep"),
        ({"sep": "::"}, "sep"),  # multi-byte separators were a pandas ValueError, a 500
        ({"sep": "\u00b9"}, "sep"),
        ({"sep": "\n"}, "sep"),
        ({"user_col": "user\x00id"}, "user_col"),
        ({"rating_col": "ra\x00ting"}, "rating_col"),
    ],
)
def test_upload_form_refuses_non_finite_and_nul(
    client: TestClient, sessions: sessionmaker[Session], fields: dict[str, str], field: str
) -> None:
    csv = b"user_id,item_id,rating\nu1,i1,5\nu1,i2,3\nu2,i1,4\nu3,i3,1\n"
    res = client.post("/datasets", files={"file": ("r.csv", io.BytesIO(csv), "text/csv")}, data=fields)
    assert res.status_code == 422, res.text
    assert field in res.json()["detail"]
    assert count_rows(sessions, Dataset) == 0


@pytest.mark.parametrize("path", ["/datasets", "/jobs", "/models"])
@pytest.mark.parametrize("offset", [2**63, 10**9 + 1, -1])
def test_list_offset_is_bounded(client: TestClient, path: str, offset: int) -> None:
    res = client.get(path, params={"offset": offset})
    assert res.status_code == 422, res.text
    assert res.json()["errors"][0]["field"] == "offset"


def test_list_offset_at_the_bound_is_fine(client: TestClient) -> None:
    for path in ("/datasets", "/jobs", "/models"):
        res = client.get(path, params={"offset": 10**9})
        assert res.status_code == 200 and res.json()["count"] == 0


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/recommend/batch", "GET, POST"),
        ("DELETE", "/recommend/u1", "GET"),
        ("PUT", "/datasets", "GET, POST"),
        ("PUT", "/datasets/" + "a" * 32, "GET, DELETE"),
        ("GET", "/jobs/" + "a" * 32 + "/cancel", "POST"),
        ("POST", "/healthz", "GET"),
    ],
)
def test_405_allow_lists_every_method_of_the_path(client: TestClient, method: str, path: str, allow: str) -> None:
    res = client.request(method, path)
    assert res.status_code == 405 and res.headers["allow"] == allow
    assert res.json()["code"] == "method_not_allowed" and allow in res.json()["detail"]


def test_integral_json_numbers_are_integers(client: TestClient, sessions: sessionmaker[Session]) -> None:
    # JSON Schema's "integer" includes 8.0; a fraction is still refused.
    ds = add_dataset(sessions)
    body = job_body(ds, seed=3.0, student={"model": "bpr", "dim": 8.0}, hyperparameters={"epochs": 2.0})
    res = post_json(client, "/jobs", body)
    assert res.status_code == 201, res.text
    assert res.json()["seed"] == 3 and res.json()["student"]["dim"] == 8
    assert res.json()["hyperparameters"] == {"epochs": 2} and isinstance(res.json()["hyperparameters"]["epochs"], int)
    res = post_json(client, "/jobs", job_body(ds, seed=3.5))
    assert res.status_code == 422 and "seed" in res.json()["detail"]
