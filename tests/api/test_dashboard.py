"""The dashboard's page and files and the offline /docs: public under an API key, served from the package,
nothing from a CDN; ``/users/{user}/seen`` for the "try it" page."""

from __future__ import annotations

import re

import pytest
from api_support import add_model
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.auth import Access, access_level
from api.routers.dashboard import STATIC_DIR
from core.settings import Settings

EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.I)


@pytest.mark.parametrize("path", ["/", "/static/{name}", "/docs", "/docs/assets/{name}", "/docs/oauth2-redirect"])
def test_dashboard_and_docs_routes_are_public_in_the_one_policy(path: str) -> None:
    assert access_level(path) is Access.PUBLIC


def test_page_and_files_load_without_a_key_but_data_does_not(anon: TestClient) -> None:
    page = anon.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for name in re.findall(r'(?:src|href)="static/([^"]+)"', page.text):
        res = anon.get(f"/static/{name}")
        assert res.status_code == 200 and res.content == (STATIC_DIR / name).read_bytes()
    assert anon.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert anon.get("/datasets").json()["code"] == "missing_api_key"


def test_no_file_outside_the_static_folder_is_served(anon: TestClient) -> None:
    for path in ("/static/nope.js", "/static/..%2Fauth.py", "/static/%2E%2E%2Fmain.py", "/docs/assets/index.j2"):
        res = anon.get(path)
        assert res.status_code == 404 and res.json()["code"] == "not_found", path


def test_no_page_loads_anything_from_another_host(anon: TestClient) -> None:
    for path in ("/", "/docs"):
        html = anon.get(path).text
        assert not EXTERNAL.search(html), path
    for name in ("app.js", "app.css"):
        assert "//" not in re.sub(r"//[^\n]*|http://www\.w3\.org/2000/svg", "", (STATIC_DIR / name).read_text())


def test_docs_load_swagger_ui_from_local_files(anon: TestClient) -> None:
    html = anon.get("/docs").text
    assets = re.findall(r'(?:src|href)="(/docs/assets/[^"]+)"', html)
    assert {"/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css"} <= set(assets)
    for url in assets:
        res = anon.get(url)
        assert res.status_code == 200 and len(res.content) > 500, url
    assert anon.get("/openapi.json").status_code == 200


def test_dashboard_routes_are_not_in_the_api_schema(anon: TestClient) -> None:
    paths = anon.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith(("/static", "/docs")) for p in paths)
    assert "/users/{user}/seen" in paths


def test_seen_items_of_a_user_of_the_active_model(
    client: TestClient, anon: TestClient, sessions: sessionmaker[Session], settings: Settings
) -> None:
    assert client.get("/users/u1/seen").json()["code"] == "no_active_model"
    mid = add_model(sessions, settings)
    client.post(f"/models/{mid}/activate")
    body = client.get("/users/u1/seen").json()
    assert body["model_id"] == mid and body["count"] == len(body["items"]) > 0
    top = client.get("/recommend/u1", params={"k": 60 - body["count"]}).json()["items"]
    assert not {i["item"] for i in top} & set(body["items"])  # exactly what exclude_seen drops
    assert set(body["items"]) | {i["item"] for i in top} == {f"i{j}" for j in range(60)}
    assert client.get("/users/u1/seen", params={"limit": 1}).json()["items"] == body["items"][:1]
    assert client.get("/users/nobody/seen").json()["code"] == "unknown_user"
    too_many = client.get("/users/u1/seen", params={"limit": settings.max_k + 1})
    assert too_many.status_code == 422 and "limit" in too_many.json()["detail"]
    assert anon.get("/users/u1/seen").status_code == 401
