"""``/healthz`` (process up), ``/readyz`` (database reachable + active index loaded), ``/metrics``."""

from __future__ import annotations

import logging
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

logger = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _database_ok(request: Request) -> str | None:
    # The activation query the poller runs: proves the connection and the migrated schema.
    try:
        request.app.state.holder.newest_activation()
        return None
    except Exception as exc:
        return f"database unreachable: {type(exc).__name__}"


@router.get("/readyz", responses={503: {"description": "database unreachable or no active model"}})
async def readyz(request: Request) -> JSONResponse:
    problems: list[str] = []
    db_error = await anyio.to_thread.run_sync(_database_ok, request)
    if db_error:
        problems.append(db_error)
    holder = request.app.state.holder
    bundle = holder.bundle
    if bundle is None:
        problems.append("no active model loaded")
    body: dict[str, Any] = {
        "database": "ok" if db_error is None else "unreachable",
        "model_id": None if bundle is None else bundle.model_id,
        "activation_id": holder.activation_id,
        "n_items": None if bundle is None else bundle.n_items,
    }
    if problems:
        return JSONResponse({"detail": "; ".join(problems), "code": "not_ready", **body}, status_code=503)
    return JSONResponse({"status": "ready", **body})


@router.get("/metrics", response_class=Response, responses={
    200: {"description": "Prometheus text exposition", "content": {"text/plain": {"schema": {"type": "string"}}}}})
async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    payload = await anyio.to_thread.run_sync(generate_latest, registry)
    return Response(payload, media_type=CONTENT_TYPE_LATEST)
