"""Over HTTP on Postgres + Redis with a real worker: upload -> job -> activate -> recommend."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from conftest import Workers
from jobkit import Server

from core.settings import Settings
from tests.factories import write_interactions

pytestmark = pytest.mark.integration

FINAL = ("succeeded", "failed", "cancelled")


def test_upload_train_activate_recommend(distributed: Settings, workers: Workers, tmp_path: Path) -> None:
    workers.start("http-worker")
    server = Server(distributed, tmp_path / "server.log", "--no-worker")
    try:
        server.wait_ready()
        data = tmp_path / "toy.csv"
        write_interactions(data, n_users=80, n_items=100, per_user=10)  # DCD defaults need lists of 40+
        with httpx.Client(base_url=server.url, timeout=30) as http:
            up = http.post(
                "/datasets",
                files={"file": ("toy.csv", data.read_bytes(), "text/csv")},
                data={"user_col": "user", "item_col": "item"},
            )
            assert up.status_code == 201, up.text
            dataset = up.json()
            assert (dataset["n_users"], dataset["n_items"], dataset["n_interactions"]) == (80, 100, 800)
            body = {
                "dataset_id": dataset["id"],
                "teacher": {"model": "bpr", "dim": 8},
                "student": {"model": "bpr", "dim": 4},
                "method": "dcd",
                "hyperparameters": {"epochs": 2, "teacher_epochs": 2, "batch_size": 256, "lr": 0.01},
            }
            created = http.post("/jobs", json=body)
            assert created.status_code == 201, created.text
            job_id = created.json()["id"]
            deadline = time.monotonic() + 150
            job = http.get(f"/jobs/{job_id}").json()
            while job["status"] not in FINAL and time.monotonic() < deadline:
                time.sleep(0.5)
                job = http.get(f"/jobs/{job_id}").json()
            assert job["status"] == "succeeded", (job, workers.logs())
            assert {h["phase"] for h in job["history"]} == {"teacher", "distill"}
            model = http.get(f"/models/{job['student_model_id']}").json()
            assert model["role"] == "student" and model["compression_ratio"] == pytest.approx(2.0)

            activated = http.post(f"/models/{model['id']}/activate")
            assert activated.status_code == 200, activated.text
            rec = http.get("/recommend/u0", params={"k": 5})
            assert rec.status_code == 200, rec.text
            payload = rec.json()
            assert payload["model_id"] == model["id"] and payload["source"] == "personalized"
            assert len(payload["items"]) == 5
            # u0 likes the first half of the catalogue; its seen items are filtered out.
            seen = {
                line.split(",")[1] for line in data.read_text().splitlines()[1:] if line.startswith("u0,")
            }
            assert not seen & {item["item"] for item in payload["items"]}
            unknown = http.get("/recommend/nobody", params={"k": 3}).json()
            assert unknown["source"] == "popular" and len(unknown["items"]) == 3
    finally:
        server.stop()
