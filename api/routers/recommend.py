"""``/recommend``: top-K for one user (GET), many (POST /recommend/batch) or a user the model has never seen,
given by their items (POST /recommend: folded in by one ridge solve), from the active bundle.

The hot path avoids dependency injection and response-model re-validation: ``DirectRoute`` calls the
endpoint with the bare ``Request``, auth, the bundle reference and k are checked inline, and the JSON body
is encoded once with orjson (see bench/serve_throughput.py). The response models document the routes.
"""

from __future__ import annotations

from typing import Any

import anyio
import orjson
from fastapi import APIRouter, Request, Response

from api.auth import authorize_read
from api.deps import Auth, check_batch, check_k, current_bundle
from api.direct_route import DirectRoute
from api.errors import InvalidInput, NotFound
from api.query import bool_param, int_param, parse_exclude, parse_query
from api.schemas import (
    RecommendationPublic,
    RecommendationsPublic,
    RecommendBatchCreate,
    RecommendItemsCreate,
)
from core.index import Recommendation, ServingBundle, UnknownIdError

router = APIRouter(prefix="/recommend", tags=["recommend"], route_class=DirectRoute)

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing X-API-Key (reads closed)"}, 403: {"description": "wrong X-API-Key"},
    404: {"description": "unknown user with fallback=false"}, 422: {"description": "bad k/offset/body"},
    503: {"description": "no active model"},
}
FOLDIN_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS, 404: {"description": "no given item is known, with fallback=false"},
    422: {"description": "bad k/offset/body, or more items than RECDISTILL_MAX_FOLDIN_ITEMS"},
}


def public(user: str | None, rec: Recommendation, model_id: str, k: int, offset: int) -> dict[str, Any]:
    """One ``RecommendationPublic`` as plain data (orjson encodes it in a fraction of pydantic's time).

    Scores are finite: bundles refuse NaN/inf embeddings and popularity scores are counts.
    """
    return {"user": user, "model_id": model_id, "source": rec.source, "fallback": rec.source == "popular",
            "k": k, "offset": offset,
            "items": [{"item": i, "score": s} for i, s in zip(rec.items, rec.scores, strict=True)]}


def json_response(body: str | bytes) -> Response:
    return Response(body, media_type="application/json")


def _param(name: str, schema: dict[str, Any], description: str, where: str = "query") -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path", "schema": schema, "description": description}


# Query parameters are parsed by hand on this route (FastAPI's per-parameter machinery was a third of
# its cost), so they are documented here.
RECOMMEND_PARAMS = [
    _param("user", {"type": "string"}, "User id (any string; unknown users get popular items).", "path"),
    _param("k", {"type": "integer", "minimum": 1, "default": 10}, "How many items (at most RECDISTILL_MAX_K)."),
    _param("offset", {"type": "integer", "minimum": 0, "default": 0}, "Skip this many top items (paging)."),
    _param("exclude_seen", {"type": "boolean", "default": True}, "Drop the user's training items."),
    _param("exclude", {"type": "array", "items": {"type": "string"}}, "Item ids to drop: i1,i2 or repeated."),
    _param("fallback", {"type": "boolean", "default": True}, "Unknown user: popular items (true) or 404 (false)."),
]


@router.get("/{user:path}", response_model=RecommendationPublic, responses=ERRORS,
            openapi_extra={"parameters": RECOMMEND_PARAMS})
async def recommend(request: Request) -> Response:
    """Top-k items for ``user`` from the active model (``source``: personalized, or popular as fallback)."""
    authorize_read(request)
    user: str = request.path_params["user"]
    params, exclude = parse_query(request.scope["query_string"])
    k, offset = int_param(params, "k", 10), int_param(params, "offset", 0)
    check_k(request.app.state.settings, k, offset)
    exclude_seen, fallback = bool_param(params, "exclude_seen", True), bool_param(params, "fallback", True)
    bundle = current_bundle(request)  # one read: a concurrent swap cannot change it under us
    drop = parse_exclude(exclude, bundle, request.app.state.settings.max_exclude) if exclude else ()
    rec = bundle.recommend(user, k, offset=offset, exclude_seen=exclude_seen, exclude=drop, fallback=fallback)
    return json_response(orjson.dumps(public(user, rec, bundle.model_id, k, offset)))


# The key is checked as a dependency so that an anonymous client is told 401 before anything about its body.
@router.post("/batch", response_model=RecommendationsPublic, responses=ERRORS, dependencies=[Auth])
async def recommend_batch(request: Request, body: RecommendBatchCreate) -> Response:
    """Top-k items for each of ``users``; at most RECDISTILL_MAX_BATCH_USERS users and
    users x (k + offset) <= RECDISTILL_MAX_BATCH_ITEMS."""
    settings = request.app.state.settings
    check_k(settings, body.k, body.offset)
    check_batch(settings, len(body.users), body.k + body.offset, len(body.exclude))
    bundle = current_bundle(request)
    # Thousands of searches and a response of up to RECDISTILL_MAX_BATCH_ITEMS items: off the event loop,
    # so other requests (and /healthz) keep being answered meanwhile.
    return json_response(await anyio.to_thread.run_sync(_batch_body, bundle, body))


def _batch_body(bundle: ServingBundle, body: RecommendBatchCreate) -> bytes:
    recs = bundle.recommend_batch(body.users, body.k, offset=body.offset, exclude_seen=body.exclude_seen,
                                  exclude=body.exclude, fallback=body.fallback)
    data = [public(u, r, bundle.model_id, body.k, body.offset) for u, r in zip(body.users, recs, strict=True)]
    return orjson.dumps({"model_id": bundle.model_id, "data": data})


# Registered after /batch and without a path parameter, so it never shadows POST /recommend/batch.
@router.post("", response_model=RecommendationPublic, responses=FOLDIN_ERRORS, dependencies=[Auth])
async def recommend_new_user(request: Request, body: RecommendItemsCreate) -> Response:
    """Top-k items for a user the model has never seen, from the items they interacted with: their vector
    is solved against the active model's item embeddings (a ridge fold-in, no retraining), ``source`` is
    ``folded_in`` and ``user`` null; the given items are never recommended back. Unknown item ids are
    ignored; when none is known, popular items (``fallback``) or 404, as GET answers an unknown user."""
    settings = request.app.state.settings
    check_k(settings, body.k, body.offset)
    if len(body.items) > settings.max_foldin_items:
        raise InvalidInput(f"items: at most {settings.max_foldin_items} item ids (RECDISTILL_MAX_FOLDIN_ITEMS), "
                           f"got {len(body.items)}", code="too_many_items")
    if len(body.exclude) > settings.max_exclude:
        raise InvalidInput(f"exclude: at most {settings.max_exclude} item ids, got {len(body.exclude)}",
                           code="too_many_excluded")
    bundle = current_bundle(request)
    # One dim x dim solve and one search: microseconds, so on the event loop like GET /recommend/{user}.
    try:
        rec = bundle.recommend_items(body.items, body.k, offset=body.offset, exclude=body.exclude,
                                     fallback=body.fallback)
    except UnknownIdError:
        raise NotFound(f"items: none of the {len(body.items)} item ids is in the active model's catalogue "
                       "(fallback=false)", code="no_known_items") from None
    return json_response(orjson.dumps(public(None, rec, bundle.model_id, body.k, body.offset)))
