"""GET /recommend/{user}, POST /recommend/batch, GET /items/{item}/similar against the bundle itself."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from api_support import add_model
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from core.index import ServingBundle
from core.settings import Settings


@pytest.fixture()
def served(
    client: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> Iterator[ServingBundle]:
    mid = add_model(sessions, settings)
    assert client.post(f"/models/{mid}/activate").status_code == 200
    yield ServingBundle.load(settings.artifact_dir / "models" / mid / "serving")


def test_recommend_matches_bundle(client: TestClient, served: ServingBundle) -> None:
    body = client.get("/recommend/u3", params={"k": 5}).json()
    rec = served.recommend("u3", 5)
    assert (
        body["source"] == "personalized" and body["fallback"] is False and body["model_id"] == served.model_id
    )
    assert [x["item"] for x in body["items"]] == rec.items
    assert [x["score"] for x in body["items"]] == pytest.approx(rec.scores)
    page2 = client.get("/recommend/u3", params={"k": 5, "offset": 5}).json()
    assert [x["item"] for x in page2["items"]] == served.recommend("u3", 5, offset=5).items


def test_exclude_and_seen_flags(client: TestClient, served: ServingBundle) -> None:
    top = served.recommend("u2", 4).items
    body = client.get("/recommend/u2", params={"k": 4, "exclude": f"{top[0]},{top[1]}"}).json()
    assert [x["item"] for x in body["items"]][:2] == top[2:4]
    body = client.get("/recommend/u2", params=[("k", "4"), ("exclude", top[0]), ("exclude", top[1])]).json()
    assert [x["item"] for x in body["items"]][:2] == top[2:4]
    body = client.get("/recommend/u2", params={"k": 4, "exclude_seen": "false"}).json()
    assert [x["item"] for x in body["items"]] == served.recommend("u2", 4, exclude_seen=False).items


def test_unknown_user_fallback_or_404(client: TestClient, served: ServingBundle) -> None:
    body = client.get("/recommend/stranger", params={"k": 3}).json()
    assert body["source"] == "popular" and body["fallback"] is True and len(body["items"]) == 3
    res = client.get("/recommend/stranger", params={"fallback": "false"})
    assert (
        res.status_code == 404 and "stranger" in res.json()["detail"] and res.json()["code"] == "unknown_user"
    )
    # Path-like user ids are just unknown ids (never used as paths).
    res = client.get("/recommend/../../etc/passwd", params={"fallback": "false"})
    assert res.status_code == 404


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"k": 0}, "k"),
        ({"k": -1}, "k"),
        ({"k": 101}, "k"),
        ({"k": "ten"}, "k"),
        ({"offset": -1}, "offset"),
        ({"k": 50, "offset": 60}, "offset"),
    ],
)
def test_bad_k_and_offset(client: TestClient, served: ServingBundle, params: dict, field: str) -> None:
    res = client.get("/recommend/u1", params=params)
    assert res.status_code == 422 and res.json()["detail"].startswith(field)


def test_batch_equals_single_calls(client: TestClient, served: ServingBundle) -> None:
    users = ["u0", "u5", "nobody", "u5"]
    res = client.post("/recommend/batch", json={"users": users, "k": 4, "exclude": ["i1"]})
    assert res.status_code == 200, res.text
    data = res.json()["data"]
    assert [d["user"] for d in data] == users
    for d in data:
        single = client.get(f"/recommend/{d['user']}", params={"k": 4, "exclude": "i1"}).json()
        assert d["items"] == single["items"] and d["source"] == single["source"]
    res = client.post("/recommend/batch", json={"users": users, "k": 4, "fallback": False})
    assert res.status_code == 404 and "nobody" in res.json()["detail"]
    for body, field in [
        ({"users": [], "k": 3}, "users"),
        ({"users": ["u1"], "k": 0}, "k"),
        ({"users": ["u1"], "k": 1000}, "k"),
        ({"users": ["u1"], "kk": 3}, "kk"),
    ]:
        res = client.post("/recommend/batch", json=body)
        assert res.status_code == 422 and field in res.json()["detail"], (body, res.text)


def test_similar_items(client: TestClient, served: ServingBundle) -> None:
    body = client.get("/items/i7/similar", params={"k": 5}).json()
    assert [x["item"] for x in body["items"]] == served.similar("i7", 5).items and body["item"] == "i7"
    res = client.get("/items/nope/similar")
    assert res.status_code == 404 and res.json()["code"] == "unknown_item" and "nope" in res.json()["detail"]
    assert client.get("/items/i7/similar", params={"k": 0}).status_code == 422
    assert client.get("/items/i7/similar", params={"k": 500}).status_code == 422


def test_serving_needs_the_key_unless_opened(settings: Settings, sessions: sessionmaker[Session]) -> None:
    # Issue 10 changed the default: reads were open (RECDISTILL_OPEN_READS=true), now every route but the
    # probes needs the key, and RECDISTILL_OPEN_SERVING opens the serving routes only.
    from api_support import API_KEY, RecordingQueue, build_app, make_settings

    with TestClient(build_app(settings, RecordingQueue())) as anon:
        assert anon.get("/recommend/u1").status_code == 401
        assert anon.get("/datasets").status_code == 401
        assert anon.get("/healthz").status_code == 200
        assert anon.get("/datasets", headers={"X-API-Key": API_KEY}).status_code == 200
    opened = make_settings(settings.home, open_serving=True)
    with TestClient(build_app(opened, RecordingQueue())) as anon:
        assert anon.get("/recommend/u1").status_code == 503  # open, but no active model
        assert anon.get("/datasets").status_code == 401


def test_bodies_validate_against_the_documented_models(client: TestClient, served: ServingBundle) -> None:
    """The route skips response-model validation, so check its JSON against the models the docs show."""
    from api.schemas import RecommendationPublic, RecommendationsPublic

    for user, params in [("u3", {"k": 5}), ("stranger", {"k": 3, "offset": 2}), ("u1", {"exclude": "i1,i2"})]:
        res = client.get(f"/recommend/{user}", params=params)
        assert res.status_code == 200 and res.headers["content-type"] == "application/json"
        body = res.json()
        assert RecommendationPublic.model_validate(body).model_dump() == body
    res = client.post("/recommend/batch", json={"users": ["u0", "nobody"], "k": 2})
    assert RecommendationsPublic.model_validate(res.json()).model_dump() == res.json()
    get = client.get("/openapi.json").json()["paths"]["/recommend/{user}"]["get"]
    ok = get["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/RecommendationPublic"}
    assert {p["name"] for p in get["parameters"]} == {"user", "k", "offset", "exclude_seen", "exclude", "fallback"}
    assert {"401", "404", "422", "503"} <= set(get["responses"])


@pytest.mark.parametrize(
    "query",
    [b"", b"k=10", b"k=4&k=6", b"k", b"k=", b"&&k=3&", b"=5&k=1", b"a=1=2", b"k=3;offset=2",
     b"exclude=a,b&exclude=&exclude=c", b"k=%33", b"exclude=Fargo+(1996)", b"exclude=caf%C3%A9",
     b"exclude=caf\xc3\xa9", b"exclude=%zz", b"offset=1&exclude=x&fallback=no"],
)
def test_query_parsing_reads_like_starlette(query: bytes) -> None:
    from starlette.datastructures import QueryParams

    from api.query import parse_query

    params = QueryParams(query)
    assert parse_query(query) == (dict(params), params.getlist("exclude"))


def test_no_active_model_is_503(client: TestClient) -> None:
    res = client.get("/recommend/u1")
    assert res.status_code == 503 and res.json()["code"] == "no_active_model"

