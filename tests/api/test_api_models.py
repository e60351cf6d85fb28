"""GET /models, activation (hot swap + rollback), refusals, checkpoint download."""

from __future__ import annotations

import io
import json
import zipfile

from api_support import add_model, count_rows
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from core.db.models import Activation
from core.settings import Settings


def test_list_and_detail(client: TestClient, sessions: sessionmaker[Session], settings: Settings) -> None:
    mid = add_model(sessions, settings)
    body = client.get(f"/models/{mid}").json()
    assert body["metrics"] == {"ndcg@10": 0.1} and body["teacher_metrics"] == {"ndcg@10": 0.12}
    assert body["compression_ratio"] == 4.0 and body["n_params"] == 800 and body["active"] is False
    assert [m["id"] for m in client.get("/models", params={"role": "student"}).json()["data"]] == [mid]
    assert client.get("/models", params={"role": "teacher"}).json()["count"] == 0


def test_activate_serves_and_rollback(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    assert client.get("/recommend/u1").status_code == 503
    first = add_model(sessions, settings, seed=1)
    second = add_model(sessions, settings, seed=2)
    res = client.post(f"/models/{first}/activate")
    assert res.status_code == 200 and res.json()["previous_model_id"] is None
    assert client.get("/recommend/u1").json()["model_id"] == first
    res = client.post(f"/models/{second}/activate")
    assert res.json()["previous_model_id"] == first
    assert client.get("/recommend/u1").json()["model_id"] == second
    assert client.get(f"/models/{second}").json()["active"] is True
    # Rollback = activate the previous id again.
    client.post(f"/models/{first}/activate")
    assert client.get("/recommend/u1").json()["model_id"] == first
    assert count_rows(sessions, Activation) == 3


def test_activation_refusals_leave_no_row(
    client: TestClient, anon: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    failed = add_model(sessions, settings, job_status="failed")
    res = client.post(f"/models/{failed}/activate")
    assert res.status_code == 409 and "failed" in res.json()["detail"]
    teacher = add_model(sessions, settings, role="teacher", with_bundle=False)
    res = client.post(f"/models/{teacher}/activate")
    assert res.status_code == 409 and "teacher" in res.json()["detail"]
    broken = add_model(sessions, settings, with_bundle=False)
    res = client.post(f"/models/{broken}/activate")
    assert res.status_code == 409 and "missing" in res.json()["detail"]
    res = client.post(f"/models/{'9' * 32}/activate")
    assert res.status_code == 404 and "9" * 32 in res.json()["detail"]
    assert client.post("/models/..%2F..%2Fetc%2Fpasswd/activate").status_code in (404, 422)
    good = add_model(sessions, settings)
    assert anon.post(f"/models/{good}/activate").status_code == 401
    assert anon.post(f"/models/{good}/activate", headers={"X-API-Key": "nope"}).status_code == 403
    assert count_rows(sessions, Activation) == 0
    assert client.get("/readyz").status_code == 503


def test_checkpoint_download(client: TestClient, sessions: sessionmaker[Session], settings: Settings) -> None:
    mid = add_model(sessions, settings)
    res = client.get(f"/models/{mid}/checkpoint")
    assert res.status_code == 200 and res.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(res.content)) as zf:
        assert sorted(zf.namelist()) == ["manifest.json", "model.safetensors"]
        assert json.loads(zf.read("manifest.json"))["dim"] == 8
    (settings.artifact_dir / "models" / mid / "model.safetensors").unlink()
    res = client.get(f"/models/{mid}/checkpoint")
    assert res.status_code == 404 and "safetensors" in res.json()["detail"]
    assert client.get(f"/models/{'8' * 32}/checkpoint").status_code == 404
