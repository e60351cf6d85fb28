"""POST /recommend: a user the model has never seen, folded in from their items (issue 11, item 3)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_support import API_KEY, RecordingQueue, add_model, build_app, make_settings
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from core.db.models import Base
from core.db.session import dispose_engines, get_engine, session_factory
from core.index import ServingBundle
from core.settings import Settings


@pytest.fixture()
def served(client: TestClient, sessions: sessionmaker[Session], settings: Settings) -> Iterator[ServingBundle]:
    mid = add_model(sessions, settings)
    assert client.post(f"/models/{mid}/activate").status_code == 200
    yield ServingBundle.load(settings.artifact_dir / "models" / mid / "serving")


def test_shape_matches_get_and_excludes_given_items(client: TestClient, served: ServingBundle) -> None:
    given = ["i1", "i2", "i3"]
    res = client.post("/recommend", json={"items": given, "k": 5})
    assert res.status_code == 200, res.text
    body = res.json()
    get_body = client.get("/recommend/u1", params={"k": 5}).json()
    assert set(body) == set(get_body)
    assert body["user"] is None and body["source"] == "folded_in" and body["fallback"] is False
    assert body["model_id"] == served.model_id and body["k"] == 5 and body["offset"] == 0
    rec = served.recommend_items(given, 5)
    assert [x["item"] for x in body["items"]] == rec.items and not set(rec.items) & set(given)
    assert [x["score"] for x in body["items"]] == pytest.approx(rec.scores)
    page = client.post("/recommend", json={"items": given, "k": 5, "offset": 5, "exclude": [rec.items[0]]}).json()
    assert [x["item"] for x in page["items"]] == served.recommend_items(given, 5, offset=5, exclude=[rec.items[0]]).items


def test_unknown_items_fallback_or_404(client: TestClient, served: ServingBundle) -> None:
    body = client.post("/recommend", json={"items": ["nope", "i4"], "k": 3}).json()
    assert body["source"] == "folded_in" and [x["item"] for x in body["items"]] == served.recommend_items(["i4"], 3).items
    body = client.post("/recommend", json={"items": ["nope"], "k": 3}).json()
    assert body["source"] == "popular" and body["fallback"] is True and len(body["items"]) == 3
    res = client.post("/recommend", json={"items": ["nope"], "fallback": False})
    assert res.status_code == 404 and res.json()["code"] == "no_known_items"
    assert res.json()["detail"].startswith("items:")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"items": []}, "items"),
        ({"items": "i1"}, "items"),
        ({"items": [1]}, "items"),
        ({"items": ["i1\x00"]}, "items"),
        ({"items": ["i1"], "k": 0}, "k"),
        ({"items": ["i1"], "k": 101}, "k"),
        ({"items": ["i1"], "k": 50, "offset": 60}, "offset"),
        ({"items": ["i1"], "fallback": 0}, "fallback"),
        ({"items": ["i1"], "user": "u1"}, "user"),
        ({"k": 3}, "items"),
    ],
)
def test_bad_bodies_are_422_naming_the_field(client: TestClient, served: ServingBundle, body: dict, field: str) -> None:
    res = client.post("/recommend", json=body)
    assert res.status_code == 422, res.text
    assert res.json()["detail"].startswith(field)


def test_access_no_model_and_malformed_json(client: TestClient, anon: TestClient) -> None:
    assert client.post("/recommend", json={"items": ["i1"]}).status_code == 503
    assert anon.post("/recommend", json={"items": ["i1"]}).status_code == 401
    res = client.post("/recommend", content=b"{", headers={"content-type": "application/json"})
    assert res.status_code == 400 and res.json()["code"] == "malformed_json"


def test_item_and_exclude_counts_are_bounded(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "home", max_foldin_items=3, max_exclude=2)
    settings.ensure_dirs()
    Base.metadata.create_all(get_engine(settings.database_url))
    try:
        with TestClient(build_app(settings, RecordingQueue()), headers={"X-API-Key": API_KEY}) as c:
            mid = add_model(session_factory(settings.database_url), settings)
            assert c.post(f"/models/{mid}/activate").status_code == 200
            res = c.post("/recommend", json={"items": ["i1", "i2", "i3", "i4"]})
            assert res.status_code == 422 and res.json()["code"] == "too_many_items"
            assert res.json()["detail"].startswith("items:") and "RECDISTILL_MAX_FOLDIN_ITEMS" in res.json()["detail"]
            res = c.post("/recommend", json={"items": ["i1"], "exclude": ["i2", "i3", "i4"]})
            assert res.status_code == 422 and res.json()["detail"].startswith("exclude:")
            assert c.post("/recommend", json={"items": ["i1", "i2", "i3"], "exclude": ["i4", "i5"]}).status_code == 200
            schema = c.get("/openapi.json").json()
            props = schema["components"]["schemas"]["RecommendItemsCreate"]["properties"]
            assert props["items"]["maxItems"] == 3 and props["exclude"]["maxItems"] == 2
            statuses = set(schema["paths"]["/recommend"]["post"]["responses"])
            assert {"200", "400", "401", "403", "404", "408", "413", "422", "503"} <= statuses
    finally:
        dispose_engines()
