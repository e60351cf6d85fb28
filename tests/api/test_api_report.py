"""GET /models/{id}/report and the same report in GET /jobs/{id}: the rows a job recorded, never a guess."""

from __future__ import annotations

from typing import Any

from api_support import add_dataset
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from tests.factories import job_row, model_row

LAT = {"p50_ms": 0.2, "p99_ms": 0.5, "queries": 200, "k": 10, "method": "faiss-flat", "servable": True}
SPLIT = {"mode": "random", "ratios": [0.8, 0.1, 0.1]}


def _job_with_models(sessions: sessionmaker[Session], ds: str, method: str, ndcg: float,
                     **student: Any) -> tuple[str, str, str]:
    """A succeeded job with its teacher (bpr:16) and student (bpr:4) rows; (job, teacher, student) ids."""
    with sessions() as s:
        job = job_row(s, ds, status="succeeded", method=method, seed=0, split=SPLIT)
        teacher = model_row(s, ds, job.id, role="teacher", dim=16, method=None, n_params=1120, size_bytes=4480,
                            metrics={"ndcg@10": 0.3})
        row = model_row(s, ds, job.id, method=method, teacher_model_id=teacher.id, metrics={"ndcg@10": ndcg, "recall@20": 0.5},
                        teacher_metrics={"ndcg@10": 0.3, "recall@20": 0.6}, n_params=280, size_bytes=1120,
                        **student)
        job.student_model_id, job.result_teacher_model_id = row.id, teacher.id
        s.commit()
        return job.id, teacher.id, row.id


def test_report_of_a_student(client: TestClient, sessions: sessionmaker[Session]) -> None:
    ds = add_dataset(sessions)
    job_id, teacher_id, student_id = _job_with_models(
        sessions, ds, "dcd", 0.25, latency={"student": LAT, "teacher": {**LAT, "p50_ms": 0.4}})
    res = client.get(f"/models/{student_id}/report")
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["teacher"]["model_id"] == teacher_id and body["teacher"]["n_params"] == 1120
    assert body["student"]["metrics"] == {"ndcg@10": 0.25, "recall@20": 0.5}
    assert body["teacher"]["metrics"] == {"ndcg@10": 0.3, "recall@20": 0.6}
    assert body["times_smaller"] == 4.0 and body["bytes_ratio"] == 4.0
    assert abs(body["teacher_share"] - 0.25 / 0.3) < 1e-9
    assert body["student"]["latency"]["p50_ms"] == 0.2 and body["teacher"]["latency"]["p50_ms"] == 0.4
    assert body["gap_closed"] is None and any("gap closed unknown" in n for n in body["notes"])
    # The job carries the same report once it succeeded.
    assert client.get(f"/jobs/{job_id}").json()["report"] == body

    # A student-alone run on the same data set, split, seed and student: the gap closed is now known.
    _, _, alone = _job_with_models(sessions, ds, "none", 0.2)
    body = client.get(f"/models/{student_id}/report").json()
    assert body["baseline_model_id"] == alone and abs(body["gap_closed"] - 0.5) < 1e-9
    assert client.get(f"/models/{alone}/report").json()["gap_closed"] is None


def test_report_refusals(client: TestClient, sessions: sessionmaker[Session]) -> None:
    res = client.get(f"/models/{'9' * 32}/report")
    assert res.status_code == 404 and res.json()["code"] == "not_found" and "9" * 32 in res.json()["detail"]
    assert client.get("/models/nothex/report").status_code == 422
    ds = add_dataset(sessions)
    job_id, teacher_id, _ = _job_with_models(sessions, ds, "dcd", 0.25)
    res = client.get(f"/models/{teacher_id}/report")
    assert res.status_code == 409 and res.json()["code"] == "not_a_student"
    with sessions() as s:
        queued = job_row(s, ds).id
        s.commit()
    assert client.get(f"/jobs/{queued}").json()["report"] is None
    # A job run before latency was recorded: null latency, said in words.
    body = client.get(f"/jobs/{job_id}").json()["report"]
    assert body["student"]["latency"] is None and any("latency not measured" in n for n in body["notes"])


def test_report_is_documented(client: TestClient) -> None:
    op = client.get("/openapi.json").json()["paths"]["/models/{model_id}/report"]["get"]
    assert {"200", "404", "409", "422"} <= set(op["responses"])
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("ModelReportPublic")
