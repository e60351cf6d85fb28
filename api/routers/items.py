"""``/items/{item}/similar``: cosine neighbours over the active student's item embeddings."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from api.deps import check_k, current_bundle
from api.routers.recommend import json_response
from api.schemas import SimilarPublic

router = APIRouter(prefix="/items", tags=["items"])


@router.get("/{item:path}/similar", response_model=SimilarPublic,
            responses={404: {"description": "unknown item"}, 503: {"description": "no active model"}})
async def similar_items(
    request: Request,
    item: str,
    k: Annotated[int, Query(gt=0, description="How many neighbours (at most RECDISTILL_MAX_K).")] = 10,
) -> Response:
    check_k(request.app.state.settings, k)
    bundle = current_bundle(request)
    rec = bundle.similar(item, k)  # unknown item -> 404 unknown_item
    body = {"item": item, "model_id": bundle.model_id, "k": k,
            "items": [{"item": i, "score": s} for i, s in zip(rec.items, rec.scores, strict=True)]}
    return json_response(json.dumps(body, ensure_ascii=False, allow_nan=False))
