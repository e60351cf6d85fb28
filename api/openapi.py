"""The published OpenAPI schema, made to describe what the server really does.

FastAPI documents every 422 as its own ``HTTPValidationError`` and knows nothing of the access policy,
the error handlers or the limits read from the settings. ``install_openapi`` replaces ``app.openapi``
(FastAPI's documented extension point) with a generator that post-processes FastAPI's schema once:

* every error answer is ``ErrorPublic`` (``{detail, code, errors?}``, as api.errors sends it);
* every status an operation returns is listed: 422 where it takes input, 408/413 where it reads a body
  (api.limits), 400 for a malformed JSON body,
  401/403 and the ``ApiKey`` security requirement where the access policy (api.auth) needs the key under
  these settings, 404 where a path names something, and the route-specific ones in ``EXTRA_STATUSES``;
* the limits read from the settings (``k`` and ``k + offset`` at most ``RECDISTILL_MAX_K``, the upload
  size and formats) are in the parameters and bodies they bound.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.auth import HEADER, SECURITY_SCHEME, Access, access_level, needs_key
from api.schemas import ErrorPublic
from core.settings import Settings

ERROR_REF = {"$ref": "#/components/schemas/ErrorPublic"}
DESCRIPTIONS = {
    400: "Malformed JSON body.",
    401: f"Missing {HEADER} header.",
    403: f"Wrong {HEADER}, or (checkpoint download) no API key configured on the server.",
    404: "Unknown id, user (with fallback=false) or item.",
    409: "Conflicts with the resource's state.",
    408: "The request body stalled longer than RECDISTILL_BODY_TIMEOUT.",
    413: "Body larger than RECDISTILL_MAX_BODY_KB (uploads: RECDISTILL_MAX_UPLOAD_MB).",
    422: "Invalid input; `errors` names each bad field.",
    503: "Unavailable (no active model, queue or database unreachable).",
}
# Statuses beside the generic ones, by (method, path): what the routes raise themselves.
EXTRA_STATUSES: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/datasets"): (503,),
    ("delete", "/datasets/{dataset_id}"): (409,),
    ("post", "/jobs"): (404, 503),
    ("post", "/jobs/{job_id}/cancel"): (409,),
    ("post", "/models/{model_id}/activate"): (409,),
    ("get", "/models/{model_id}/report"): (409,),
    ("get", "/recommend/{user}"): (503,),
    ("post", "/recommend/batch"): (404, 503),
    ("post", "/recommend"): (404, 503),
    ("get", "/items/{item}/similar"): (503,),
    ("get", "/readyz"): (503,),
}
UPLOAD_FORMATS = "CSV, TSV, Parquet or RecBole .inter (by extension or the format field), optionally .gz, .bz2 or .xz"


def _error_response(status: int, existing: dict[str, Any] | None) -> dict[str, Any]:
    description = (existing or {}).get("description") or DESCRIPTIONS.get(status, "Error.")
    return {"description": description, "content": {"application/json": {"schema": ERROR_REF}}}


def _statuses(method: str, path: str, op: dict[str, Any], settings: Settings) -> set[int]:
    statuses = set(EXTRA_STATUSES.get((method, path), ()))
    params = op.get("parameters", [])
    body = op.get("requestBody", {}).get("content", {})
    if params or body:
        statuses.add(422)
    if body:  # api.limits: a body past RECDISTILL_MAX_BODY_KB (uploads: their own limit), or one that stalls
        statuses |= {408, 413}
    if "application/json" in body:
        statuses.add(400)
    if any(p.get("in") == "path" for p in params):
        statuses.add(404)
    level = access_level(path)
    if needs_key(level, settings):
        statuses |= {401, 403} if settings.api_key else {403}
    return statuses


def _document_limits(schema: dict[str, Any], settings: Settings) -> None:
    max_k = settings.max_k
    k_rule = f"k at most {max_k} (RECDISTILL_MAX_K), and k + offset at most {max_k}"
    paths = schema["paths"]
    for op in (paths["/recommend/{user}"]["get"], paths["/items/{item}/similar"]["get"]):
        for param in op.get("parameters", []):
            if param["name"] == "k":
                param["schema"]["maximum"] = max_k
            elif param["name"] == "offset":
                param["schema"]["maximum"] = max_k - 1
    paths["/recommend/{user}"]["get"]["description"] = (
        paths["/recommend/{user}"]["get"].get("description", "") + f"\n\nLimits: {k_rule}.")
    batch = schema["components"]["schemas"]["RecommendBatchCreate"]
    props = batch["properties"]
    props["k"]["maximum"] = max_k
    props["offset"]["maximum"] = max_k - 1
    props["users"]["maxItems"] = min(props["users"].get("maxItems", settings.max_batch_users),
                                     settings.max_batch_users)
    props["exclude"]["maxItems"] = min(props["exclude"].get("maxItems", settings.max_exclude), settings.max_exclude)
    batch["description"] = (
        f"Limits: {k_rule}; at most {props['users']['maxItems']} users (RECDISTILL_MAX_BATCH_USERS) and "
        f"users x (k + offset) at most {settings.max_batch_items} (RECDISTILL_MAX_BATCH_ITEMS); at most "
        f"{props['exclude']['maxItems']} excluded ids (RECDISTILL_MAX_EXCLUDE).")
    foldin = schema["components"]["schemas"]["RecommendItemsCreate"]
    fprops = foldin["properties"]
    fprops["k"]["maximum"] = max_k
    fprops["offset"]["maximum"] = max_k - 1
    fprops["items"]["maxItems"] = settings.max_foldin_items
    fprops["exclude"]["maxItems"] = settings.max_exclude
    foldin["description"] = (
        foldin.get("description", "") + f" Limits: {k_rule}; at most {settings.max_foldin_items} items "
        f"(RECDISTILL_MAX_FOLDIN_ITEMS) and {settings.max_exclude} excluded ids (RECDISTILL_MAX_EXCLUDE).").strip()
    for param in paths["/recommend/{user}"]["get"].get("parameters", []):
        if param["name"] == "exclude":
            param["description"] = (param.get("description", "") + f" At most {settings.max_exclude} ids "
                                    "(RECDISTILL_MAX_EXCLUDE; each comma-separated part counts).")
    upload = paths["/datasets"]["post"]
    upload["description"] = (f"Streamed to disk; at most {settings.max_upload_mb} MiB "
                             f"(RECDISTILL_MAX_UPLOAD_MB). Formats: {UPLOAD_FORMATS}.")


def _document_batch_user(schema: dict[str, Any]) -> None:
    """GET /recommend/batch is GET /recommend/{user} for the user "batch" (ids are any string): the path
    has both methods, and a 405 there says ``Allow: GET, POST``; document it so."""
    single = copy.deepcopy(schema["paths"]["/recommend/{user}"]["get"])
    single["parameters"] = [p for p in single["parameters"] if p["name"] != "user"]
    single["operationId"] = single.get("operationId", "recommend") + "_for_user_named_batch"
    single["summary"] = 'Recommend for the user whose id is "batch" (GET /recommend/{user})'
    schema["paths"]["/recommend/batch"]["get"] = single


def build_openapi(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """FastAPI's schema of ``app``, made truthful for ``settings``."""
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas.update(ErrorPublic.model_json_schema(ref_template="#/components/schemas/{model}").pop("$defs", {}))
    schemas["ErrorPublic"] = ErrorPublic.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas["ErrorPublic"].pop("$defs", None)
    secured = False
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            responses = op.setdefault("responses", {})
            for status in _statuses(method, path, op, settings):
                responses[str(status)] = _error_response(status, responses.get(str(status)))
            for status, response in responses.items():  # route-declared errors get the real shape too
                if status.startswith(("4", "5")):
                    responses[status] = _error_response(int(status), response)
            if needs_key(access_level(path), settings) and settings.api_key:
                op["security"] = [{SECURITY_SCHEME: []}]
                secured = True
            elif access_level(path) is Access.SECRET:
                op["description"] = (op.get("description", "") + "\n\nRefused (403) until the server has an "
                                     "API key (RECDISTILL_API_KEY).").strip()
    _document_batch_user(schema)
    if secured:
        components["securitySchemes"] = {SECURITY_SCHEME: {"type": "apiKey", "in": "header", "name": HEADER}}
    _document_limits(schema, settings)
    return schema


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Serve ``build_openapi``'s schema at /openapi.json (built on first request, then cached)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app, settings)
        return app.openapi_schema

    generator: Callable[[], dict[str, Any]] = openapi
    app.openapi = generator  # type: ignore[method-assign]
