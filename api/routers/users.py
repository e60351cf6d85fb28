"""``/users/{user}/seen``: the items the active model's training data has for a user (what the dashboard's
"try it" page shows beside the recommendations, and what ``exclude_seen`` drops)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from api.deps import current_bundle
from api.errors import InvalidInput, NotFound
from api.schemas import SeenItemsPublic

router = APIRouter(prefix="/users", tags=["users"])


@router.get("/{user:path}/seen", response_model=SeenItemsPublic,
            responses={404: {"description": "unknown user"}, 503: {"description": "no active model"}})
async def seen_items(
    request: Request,
    user: str,
    limit: Annotated[int, Query(gt=0, description="At most this many items (at most RECDISTILL_MAX_K).")] = 100,
) -> SeenItemsPublic:
    max_k = request.app.state.settings.max_k
    if limit > max_k:
        raise InvalidInput(f"limit: must be between 1 and {max_k}, got {limit}", code="invalid_limit")
    bundle = current_bundle(request)
    code = bundle.user_index.get(user)
    if code is None:
        raise NotFound(f"unknown user id {user!r}", code="unknown_user")
    row = bundle.seen_codes(code)
    return SeenItemsPublic(user=user, model_id=bundle.model_id, count=len(row), items=bundle.item_ids.take(row[:limit]))
