"""The published schema describes the server: error shape, statuses, security, limits, strict rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from api_support import RecordingQueue, build_app, make_settings
from fastapi.testclient import TestClient

from api.openapi import build_openapi


def schema_for(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    app = build_app(make_settings(tmp_path / "home", **overrides), RecordingQueue())
    return app.openapi()


def test_every_error_has_the_real_shape(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in schema["components"]["schemas"]
    error = schema["components"]["schemas"]["ErrorPublic"]
    assert set(error["required"]) == {"detail", "code"} and "errors" in error["properties"]
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            for status, response in op["responses"].items():
                if status[0] in "45":
                    ref = response["content"]["application/json"]["schema"]
                    assert ref == {"$ref": "#/components/schemas/ErrorPublic"}, (method, path, status)


def test_statuses_each_operation_returns(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]

    def statuses(method: str, path: str) -> set[str]:
        return set(paths[path][method]["responses"])

    assert {"400", "401", "403", "404", "422", "503"} <= statuses("post", "/jobs")
    assert {"401", "403", "413", "422"} <= statuses("post", "/datasets")
    assert {"404", "409"} <= statuses("delete", "/datasets/{dataset_id}")
    assert {"404", "409"} <= statuses("post", "/jobs/{job_id}/cancel")
    assert {"404", "409"} <= statuses("post", "/models/{model_id}/activate")
    assert {"400", "404", "422", "503"} <= statuses("post", "/recommend/batch")
    assert {"404", "422", "503"} <= statuses("get", "/recommend/{user}")
    assert statuses("get", "/healthz") == {"200"}
    assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]


def test_security_follows_the_access_policy(tmp_path: Path) -> None:
    keyed = schema_for(tmp_path)
    assert keyed["components"]["securitySchemes"] == {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
    for path, ops in keyed["paths"].items():
        for method, op in ops.items():
            expected = None if path in ("/healthz", "/readyz") else [{"ApiKey": []}]
            assert op.get("security") == expected, (method, path)
    opened = schema_for(tmp_path, open_serving=True)["paths"]
    assert "security" not in opened["/recommend/{user}"]["get"]
    assert "security" not in opened["/items/{item}/similar"]["get"]
    assert opened["/datasets"]["get"]["security"] == [{"ApiKey": []}]
    keyless = schema_for(tmp_path, api_key=None)
    assert "securitySchemes" not in keyless["components"]
    checkpoint = keyless["paths"]["/models/{model_id}/checkpoint"]["get"]
    assert "security" not in checkpoint and "403" in checkpoint["responses"] and "401" not in checkpoint["responses"]


def test_limits_are_published(tmp_path: Path) -> None:
    schema = schema_for(tmp_path, max_k=50, max_upload_mb=7, max_batch_users=30, max_exclude=20)
    params = {p["name"]: p["schema"] for p in schema["paths"]["/recommend/{user}"]["get"]["parameters"]}
    assert params["k"]["maximum"] == 50 and params["offset"]["maximum"] == 49
    similar = {p["name"]: p["schema"] for p in schema["paths"]["/items/{item}/similar"]["get"]["parameters"]}
    assert similar["k"]["maximum"] == 50
    batch = schema["components"]["schemas"]["RecommendBatchCreate"]
    assert batch["properties"]["k"]["maximum"] == 50 and "k + offset at most 50" in batch["description"]
    assert batch["properties"]["users"]["maxItems"] == 30 and batch["properties"]["exclude"]["maxItems"] == 20
    assert "7 MiB" in schema["paths"]["/datasets"]["post"]["description"]
    form = schema["paths"]["/datasets"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(form["properties"]["format"]["enum"]) == {"csv", "tsv", "parquet", "inter"}
    assert "," in form["properties"]["sep"]["enum"] and "a" not in form["properties"]["sep"]["enum"]
    job = schema["components"]["schemas"]["JobCreate"]
    assert [branch["required"] for branch in job["oneOf"]] == [["teacher"], ["teacher_model_id"]]
    assert schema["components"]["schemas"]["StudentSpec"]["properties"]["model"]["enum"] == ["bpr", "lightgcn"]


def test_get_recommend_batch_is_documented_as_the_user_named_batch(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths["/recommend/batch"]) == {"get", "post"}
    assert client.put("/recommend/batch").headers["allow"] == "GET, POST"


def test_schema_is_built_once(tmp_path: Path) -> None:
    app = build_app(make_settings(tmp_path / "home"), RecordingQueue())
    assert app.openapi() is app.openapi()
    assert build_openapi(app, app.state.settings) == app.openapi()
