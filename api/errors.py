"""Domain exceptions and their one mapping to HTTP: every error body is ``{"detail": ..., "code": ...}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from core.db.repo import ConflictError, NotFoundError
from core.index import BundleError, UnknownIdError

logger = logging.getLogger(__name__)


class APIError(Exception):
    """An error with its HTTP status and a stable machine-readable code."""

    status_code = 400
    code = "bad_request"

    def __init__(self, detail: str, *, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        self.headers = headers


class InvalidInput(APIError):
    status_code = 422
    code = "invalid_input"


class NotFound(APIError):
    status_code = 404
    code = "not_found"


class Conflict(APIError):
    status_code = 409
    code = "conflict"


class BodyReadError(APIError, StarletteHTTPException):
    """Raised while a request body is read. FastAPI turns any exception from its body read into a bare 400
    except HTTPException, which it re-raises; the APIError handler still formats it (first in the MRO)."""

    def __init__(self, detail: str, *, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        Exception.__init__(self, detail)  # not HTTPException's __init__: status and code are class attributes
        self.detail = detail
        if code is not None:
            self.code = code
        self.headers = headers


class PayloadTooLarge(BodyReadError):
    status_code = 413
    code = "payload_too_large"


class RequestTimeout(BodyReadError):
    status_code = 408
    code = "request_timeout"


class Unauthorized(APIError):
    status_code = 401
    code = "missing_api_key"


class Forbidden(APIError):
    status_code = 403
    code = "invalid_api_key"


class ServiceUnavailable(APIError):
    status_code = 503
    code = "unavailable"


def _body(detail: Any, code: str, **extra: Any) -> dict[str, Any]:
    return {"detail": detail, "code": code, **extra}


def _field(loc: tuple[Any, ...]) -> str:
    # ("query", "k") -> "k"; ("body", "student", "dim") -> "student.dim"
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header", "form", "cookie")]
    return ".".join(parts) or "body"


def describe_validation(errors: list[Any]) -> tuple[str, list[dict[str, Any]]]:
    """One readable sentence naming every bad field, plus the structured list."""
    items = []
    for err in errors:
        field = _field(tuple(err.get("loc", ())))
        msg = str(err.get("msg", "invalid value"))
        if err.get("type") == "extra_forbidden":
            msg = "unknown field"
        elif err.get("type") == "string_pattern_mismatch" and "{32}" in str((err.get("ctx") or {}).get("pattern")):
            msg = f"must be a 32-character hex id, got {err.get('input')!r}"
        msg = msg.removeprefix("Value error, ")
        items.append({"field": field, "message": msg, "type": err.get("type")})
    text = "; ".join(it["message"] if it["field"] == "body" else f"{it['field']}: {it['message']}" for it in items)
    return text, items


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return JSONResponse(_body(exc.detail, exc.code), status_code=exc.status_code, headers=exc.headers)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        err = next(e for e in errors if e.get("type") == "json_invalid")
        reason = (err.get("ctx") or {}).get("error", "invalid JSON")
        return JSONResponse(_body(f"malformed JSON body: {reason}", "malformed_json"), status_code=400)
    text, items = describe_validation(errors)
    return JSONResponse(_body(text, "validation_error", errors=items), status_code=422)


async def _not_found(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(_body(str(exc), "not_found"), status_code=404)


async def _unknown_id(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, UnknownIdError)
    return JSONResponse(_body(str(exc), f"unknown_{exc.kind}"), status_code=404)


async def _conflict(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(_body(str(exc), "conflict"), status_code=409)


async def _bundle_error(_: Request, exc: Exception) -> JSONResponse:
    logger.error("serving bundle error: %s", exc)
    return JSONResponse(_body(str(exc), "bundle_error"), status_code=503)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app accepts on this request's path.

    The router answers 405 from the first route whose path matched (``/recommend/{user:path}``, GET, also
    matches ``/recommend/batch``), so its ``Allow`` names that one route's methods only. Each method is
    tried against the app's routes (included routers match their own routes)."""
    return [
        method for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in request.app.routes)
    ]


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
    headers = dict(exc.headers or {})
    detail = exc.detail
    if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError):
        # FastAPI's body read turns the JSON parser's recursion limit into a bare "error parsing the body".
        detail, code = "malformed JSON body: nested too deeply", "malformed_json"
    if exc.status_code == 405:
        allowed = allowed_methods(request)
        headers["Allow"] = ", ".join(allowed)
        detail = f"method {request.method} not allowed on {request.url.path}; allowed: {', '.join(allowed)}"
    return JSONResponse(_body(detail, code), status_code=exc.status_code, headers=headers or None)


def install_error_handlers(app: FastAPI) -> None:
    """Register every domain exception -> HTTP mapping on ``app``."""
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(NotFoundError, _not_found)
    app.add_exception_handler(UnknownIdError, _unknown_id)
    app.add_exception_handler(ConflictError, _conflict)
    app.add_exception_handler(BundleError, _bundle_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
