"""FastAPI dependencies as ``Annotated`` aliases: settings, database session, auth, the served bundle.

Cheap ones are ``async def`` so the recommend path never hops to the thread pool.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Query, Request
from sqlalchemy.orm import Session

from api.auth import require_access
from api.errors import InvalidInput, ServiceUnavailable
from api.holder import IndexHolder
from core.index import ServingBundle
from core.settings import Settings


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    """A session per request; routers commit explicitly, anything uncommitted is rolled back."""
    session: Session = request.app.state.sessions()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


async def get_holder(request: Request) -> IndexHolder:
    return request.app.state.holder


def current_bundle(request: Request) -> ServingBundle:
    """The bundle this request will use from start to end (one read of the reference)."""
    bundle = request.app.state.holder.bundle
    if bundle is None:
        raise ServiceUnavailable("no active model: activate one with POST /models/{id}/activate", code="no_active_model")
    return bundle


def check_k(settings: Settings, k: int, offset: int = 0) -> None:
    """k must be in 1..RECDISTILL_MAX_K and k + offset within the limit too."""
    if k <= 0 or k > settings.max_k:
        raise InvalidInput(f"k: must be between 1 and {settings.max_k}, got {k}", code="invalid_k")
    if offset < 0 or k + offset > settings.max_k:
        raise InvalidInput(f"offset: must be >= 0 with k + offset at most {settings.max_k}, got {offset}",
                           code="invalid_offset")


def check_batch(settings: Settings, n_users: int, depth: int, n_exclude: int) -> None:
    """A batch may name at most RECDISTILL_MAX_BATCH_USERS users and return at most
    RECDISTILL_MAX_BATCH_ITEMS items (users x (k + offset)); ``exclude`` at most RECDISTILL_MAX_EXCLUDE ids."""
    if n_users > settings.max_batch_users:
        raise InvalidInput(f"users: at most {settings.max_batch_users} users per batch, got {n_users}",
                           code="batch_too_large")
    if n_users * depth > settings.max_batch_items:
        raise InvalidInput(
            f"users: {n_users} users x (k + offset) {depth} = {n_users * depth} items is above the limit of "
            f"{settings.max_batch_items} (RECDISTILL_MAX_BATCH_ITEMS); ask for fewer users or a smaller k",
            code="batch_too_large")
    if n_exclude > settings.max_exclude:
        raise InvalidInput(f"exclude: at most {settings.max_exclude} item ids, got {n_exclude}",
                           code="too_many_excluded")


# Paging of the list endpoints. The offset bound keeps a client's number inside a 64-bit SQL integer
# (2**63 was an OverflowError, a 500, in the SQLite driver); no listing has a billion rows.
MAX_PAGE = 1000
MAX_OFFSET = 1_000_000_000
PageLimit = Annotated[int, Query(ge=1, le=MAX_PAGE, description=f"Rows per page (1-{MAX_PAGE}).")]
PageOffset = Annotated[int, Query(ge=0, le=MAX_OFFSET, description=f"Rows to skip (0-{MAX_OFFSET}).")]

SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
HolderDep = Annotated[IndexHolder, Depends(get_holder)]
# The app applies the access policy to every included route (api.main); these only restate it on a route
# (FastAPI runs a dependency once per request however often it is listed).
Auth = Depends(require_access)
