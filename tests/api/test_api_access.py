"""Access control: one policy for every route; the key is needed everywhere but the probes by default."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import API_KEY, RecordingQueue, add_model, build_app, make_settings
from fastapi.testclient import TestClient

from api.auth import Access, access_level
from core.db.models import Base
from core.db.session import dispose_engines, get_engine, session_factory
from core.settings import Settings

PROBES = {"/healthz", "/readyz"}
SERVING = {"/recommend/{user}", "/recommend/batch", "/recommend", "/items/{item}/similar"}
# A valid body per route that takes one (the batch's by default).
BODIES = {"/recommend": {"items": ["i1"]}}


def body_for(template: str) -> dict[str, list[str]]:
    return BODIES.get(template, {"users": ["u1"]})


def operations(client: TestClient) -> list[tuple[str, str]]:
    """Every (method, concrete path) the published schema lists; path parameters get a plausible value."""
    paths = client.get("/openapi.json").json()["paths"]
    out = []
    for template, ops in paths.items():
        concrete = re.sub(r"\{[a-z_]*_id\}", "a" * 32, template)
        concrete = concrete.replace("{user}", "u1").replace("{item}", "i1")
        out.extend((method.upper(), concrete) for method in ops)
    return out


def app_with(tmp_path: Path, **overrides: object) -> Iterator[tuple[TestClient, Settings]]:
    settings = make_settings(tmp_path / "home", **overrides)
    settings.ensure_dirs()
    Base.metadata.create_all(get_engine(settings.database_url))
    with TestClient(build_app(settings, RecordingQueue())) as anon:
        yield anon, settings
    dispose_engines()


@pytest.fixture()
def keyed(tmp_path: Path) -> Iterator[tuple[TestClient, Settings]]:
    yield from app_with(tmp_path)


def template_of(client: TestClient, method: str, path: str) -> str:
    for template in client.get("/openapi.json").json()["paths"]:
        pattern = re.sub(r"\{[^}]+\}", "[^/]+", template.replace("{user}", ".+").replace("{item}", ".+"))
        if re.fullmatch(pattern, path) and method.lower() in client.get("/openapi.json").json()["paths"][template]:
            return template
    raise AssertionError(path)


def test_every_route_but_the_probes_needs_the_key(keyed: tuple[TestClient, Settings]) -> None:
    anon, _ = keyed
    ops = operations(anon)
    assert len(ops) >= 15
    for method, path in ops:
        template = template_of(anon, method, path)
        # A valid batch body: that route checks the key only after FastAPI validated its body.
        res = anon.request(method, path, json=body_for(template))
        if template in PROBES:
            assert res.status_code in (200, 503), (method, path)
            continue
        assert res.status_code == 401, (method, path, res.status_code)
        assert res.json()["code"] == "missing_api_key" and res.headers["www-authenticate"] == "X-API-Key"
        wrong = anon.request(method, path, headers={"X-API-Key": API_KEY + "x"}, json=body_for(template))
        assert wrong.status_code == 403 and wrong.json()["code"] == "invalid_api_key", (method, path)
    assert anon.get("/metrics").status_code == 401
    for public in ("/openapi.json", "/docs"):
        assert anon.get(public).status_code == 200


def test_open_serving_opens_the_serving_routes_only(tmp_path: Path) -> None:
    for anon, _ in app_with(tmp_path, open_serving=True):
        for method, path in operations(anon):
            template = template_of(anon, method, path)
            status = anon.request(method, path, json=body_for(template)).status_code
            if template in SERVING:
                assert status == 503, (method, path)  # past the key check; no active model
            elif template not in PROBES:
                assert status == 401, (method, path)


def test_checkpoint_download_needs_a_configured_key(tmp_path: Path) -> None:
    for anon, settings in app_with(tmp_path, api_key=None):
        mid = add_model(session_factory(settings.database_url), settings)
        res = anon.get(f"/models/{mid}/checkpoint")
        assert res.status_code == 403 and res.json()["code"] == "api_key_required"
        assert "RECDISTILL_API_KEY" in res.json()["detail"]
        assert anon.get(f"/models/{mid}").status_code == 200  # no key set: the rest is open


def test_policy_levels() -> None:
    assert access_level("/healthz") is Access.PUBLIC and access_level("/readyz") is Access.PUBLIC
    assert access_level("/recommend/{user:path}") is Access.SERVING
    assert access_level("/recommend/batch") is Access.SERVING
    assert access_level("/items/{item:path}/similar") is Access.SERVING
    assert access_level("/models/{model_id}/checkpoint") is Access.SECRET
    for path in ("/metrics", "/datasets", "/jobs/{job_id}", "/models", "/anything-new"):
        assert access_level(path) is Access.PRIVATE


def test_the_retired_open_reads_setting_is_named_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from api.auth import warn_if_open

    monkeypatch.setenv("RECDISTILL_OPEN_READS", "true")
    warn_if_open(make_settings(tmp_path / "home"))
    assert "RECDISTILL_OPEN_READS is no longer read" in caplog.text and "RECDISTILL_OPEN_SERVING" in caplog.text


def test_an_anonymous_bad_batch_body_is_told_401_first(anon: TestClient) -> None:
    res = anon.post("/recommend/batch", json={"users": [], "k": "x"})
    assert res.status_code == 401 and res.json()["code"] == "missing_api_key"
