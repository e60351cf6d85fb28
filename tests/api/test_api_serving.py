"""Health, readiness, Prometheus metrics, hot swap (poller + concurrent requests) and the no-torch rule."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from api_support import RecordingQueue, add_dataset, add_model, build_app
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from core.db import repo
from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_health_ready_and_metrics(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    res = client.get("/readyz")
    assert res.status_code == 503 and "no active model" in res.json()["detail"]
    mid = add_model(sessions, settings)
    client.post(f"/models/{mid}/activate")
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model_id"] == mid
    client.get("/recommend/u1")
    client.get("/recommend/u2")
    client.post(
        "/jobs",
        json={
            "dataset_id": add_dataset(sessions),
            "teacher": {"model": "bpr", "dim": 16},
            "student": {"model": "bpr", "dim": 4},
        },
    )
    text = client.get("/metrics").text
    assert (
        'recdistill_http_request_duration_seconds_count{method="GET",route="/recommend/{user}",status="200"} 2.0'
        in text
    )
    assert 'recdistill_jobs{status="queued"} 1.0' in text
    assert (
        f'recdistill_active_model_info{{activation_id="1",dim="8",index="flat",model_id="{mid}"}} 1.0' in text
    )
    assert "recdistill_index_items 60.0" in text


def test_readyz_reports_an_unreachable_database(tmp_path: Path) -> None:
    from api_support import make_settings

    broken = make_settings(tmp_path / "h", database_url="postgresql+psycopg://postgres@127.0.0.1:1/nothing")
    with TestClient(build_app(broken, RecordingQueue())) as c:
        res = c.get("/readyz")
        assert res.status_code == 503 and "database unreachable" in res.json()["detail"]
        assert c.get("/healthz").status_code == 200


def test_poller_picks_up_activation_from_another_process(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    mid = add_model(sessions, settings)
    with TestClient(build_app(settings, RecordingQueue(), poll_interval_s=0.05),
                    headers={"X-API-Key": settings.api_key or ""}) as c:
        assert c.get("/readyz").status_code == 503
        with sessions() as s:  # what another API process's POST /activate writes
            repo.activate_model(s, mid)
            s.commit()
        deadline = time.monotonic() + 5
        while c.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert c.get("/recommend/u1").json()["model_id"] == mid


def test_hot_swap_under_concurrent_requests_has_zero_errors(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    a = add_model(sessions, settings, seed=1)
    b = add_model(sessions, settings, seed=2)
    app = build_app(settings, RecordingQueue(), poll_interval_s=0.02)
    with TestClient(app, headers={"X-API-Key": settings.api_key or ""}) as c:
        assert c.post(f"/models/{a}/activate").status_code == 200
        stop = threading.Event()
        statuses: Counter[int] = Counter()
        served: Counter[str] = Counter()
        lock = threading.Lock()

        def hammer(user: str) -> None:
            while not stop.is_set():
                res = c.get(f"/recommend/{user}", params={"k": 10})
                with lock:
                    statuses[res.status_code] += 1
                    if res.status_code == 200:
                        served[res.json()["model_id"]] += 1
                        assert len(res.json()["items"]) == 10

        threads = [threading.Thread(target=hammer, args=(f"u{i}",)) for i in range(4)]
        for t in threads:
            t.start()
        for target in (b, a, b, a, b):
            time.sleep(0.1)
            assert c.post(f"/models/{target}/activate").status_code == 200
            with sessions() as s:  # and swaps that arrive through the poller
                repo.activate_model(s, a if target == b else b)
                s.commit()
        time.sleep(0.2)
        stop.set()
        for t in threads:
            t.join()
    assert set(statuses) == {200}, statuses
    assert statuses[200] > 50 and served[a] > 0 and served[b] > 0


def test_api_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "import api.main, api.routers.jobs, core.index, core.config\n"
        "app = api.main.create_app()\n"
        "app.openapi()\n"
        "assert 'torch' not in sys.modules, 'api imported torch'\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"RECDISTILL_HOME": "/tmp/recdistill-no-torch-check", "PATH": "/usr/bin:/bin"},
    )
    assert res.returncode == 0, res.stderr


def test_names_match_the_torch_registries() -> None:
    code = (
        "from core.config import DISTILL_CONFIGS, MODEL_NAMES, METHOD_NAMES, SERVABLE_MODEL_NAMES\n"
        "from core.models import MODELS\n"
        "from core.distill import DISTILLERS\n"
        "assert set(MODEL_NAMES) == set(MODELS), (MODEL_NAMES, list(MODELS))\n"
        "assert {n for n in MODELS if MODELS[n].is_dot_product} == set(SERVABLE_MODEL_NAMES)\n"
        "assert set(DISTILLERS) == set(METHOD_NAMES) == set(DISTILL_CONFIGS), list(DISTILLERS)\n"
        "assert all(DISTILLERS[n].config_cls is DISTILL_CONFIGS[n] for n in DISTILLERS)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_index_built_into_the_bundle_serves_through_the_api(tmp_path: Path, kind: str) -> None:
    """The worker-side index kind travels in the bundle: the API serves it whatever its own RECDISTILL_INDEX,
    and GET /models/{id} shows the kind, its parameters and the recall@10 measured when it was built."""
    from api_support import API_KEY, make_settings

    from core.db.models import Base
    from core.db.session import get_engine, session_factory

    settings = make_settings(tmp_path / "h", index="flat")
    settings.ensure_dirs()
    Base.metadata.create_all(get_engine(settings.database_url))
    mid = add_model(session_factory(settings.database_url), settings, n_items=400, index=kind)
    with TestClient(build_app(settings, RecordingQueue()), headers={"X-API-Key": API_KEY}) as c:
        assert c.post(f"/models/{mid}/activate").status_code == 200
        body = c.get("/recommend/u3", params={"k": 5}).json()
        assert len(body["items"]) == 5 and body["source"] == "personalized"
        assert f'index="{kind}"' in c.get("/metrics").text
        index = c.get(f"/models/{mid}").json()["index"]
        assert index["kind"] == kind and index["recall_at_10"] >= 0.95 and index["recall_queries"] == 40
        assert set(index["params"]) == ({"nlist", "nprobe"} if kind == "ivf" else {"m", "ef_search"})
        assert c.get("/models").json()["data"][0]["index"] is None  # listed rows do not read bundles


def test_a_version_1_bundle_already_on_disk_still_activates_and_serves(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    """Bundles written before the index was saved in them (version 1) keep serving: the API builds their index
    at load, as it always did, and GET /models/{id} says no index was recorded."""
    import numpy as np
    import scipy.sparse as sp

    from tests.factories import write_v1_bundle

    mid = add_model(sessions, settings, with_bundle=False)
    rng = np.random.default_rng(0)
    arrays = {"user_emb": rng.standard_normal((40, 8)).astype(np.float32),
              "item_emb": rng.standard_normal((60, 8)).astype(np.float32),
              "user_ids": [f"u{i}" for i in range(40)], "item_ids": [f"i{j}" for j in range(60)],
              "seen": sp.csr_matrix((40, 60), dtype=np.float32), "popularity": np.arange(60), "model_id": mid}
    write_v1_bundle(settings.artifact_dir / "models" / mid / "serving", arrays)
    assert client.post(f"/models/{mid}/activate").status_code == 200
    body = client.get("/recommend/u3", params={"k": 5}).json()
    best = np.argsort(-(arrays["item_emb"] @ arrays["user_emb"][3]), kind="stable")[:5]
    assert [x["item"] for x in body["items"]] == [f"i{j}" for j in best]
    assert client.get(f"/models/{mid}").json()["index"] is None
