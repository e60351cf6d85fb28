"""Access control: one policy maps each route to an access level; ``authorize`` enforces it.

With ``RECDISTILL_API_KEY`` set, every route needs the ``X-API-Key`` header except the public ones
(health probes, the API's own documentation and the dashboard's page and files, which hold no data). ``RECDISTILL_OPEN_SERVING`` opens the
serving routes (``/recommend*``, ``/items/*/similar``) to anonymous clients. Checkpoint download hands out
the weights and every raw user id of the data set, so it always needs a key, and is refused when the server
has none. The app applies ``authorize`` to every included route as a dependency; the recommend hot path
calls it inline (``authorize_read``).
"""

from __future__ import annotations

import hmac
import logging
import os
from enum import StrEnum
from functools import lru_cache

from fastapi import Request

from api.errors import Forbidden, Unauthorized
from core.settings import Settings

logger = logging.getLogger(__name__)

HEADER = "X-API-Key"
SECURITY_SCHEME = "ApiKey"


class Access(StrEnum):
    PUBLIC = "public"  # never needs the key: health probes and the docs (no data)
    SERVING = "serving"  # needs the key unless RECDISTILL_OPEN_SERVING
    PRIVATE = "private"  # needs the key whenever one is set (the default of any route)
    SECRET = "secret"  # always needs a key; refused when the server has none


# The dashboard's page and files are public: they hold no data, and the page asks for the key itself.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc",
                          "/docs/assets/{name}", "/", "/static/{name}"})
SECRET_PATHS = frozenset({"/models/{model_id}/checkpoint"})


@lru_cache(maxsize=256)
def access_level(path: str) -> Access:
    """The access level of the route with path template ``path`` (e.g. ``/items/{item:path}/similar``)."""
    if path in PUBLIC_PATHS:
        return Access.PUBLIC
    if path in SECRET_PATHS:
        return Access.SECRET
    if path == "/recommend" or path.startswith("/recommend/") or (
        path.startswith("/items/") and path.endswith("/similar")
    ):
        return Access.SERVING
    return Access.PRIVATE


def needs_key(level: Access, settings: Settings) -> bool:
    """Whether a request to a route of ``level`` must carry the key under ``settings``."""
    if level is Access.SECRET:
        return True
    if not settings.api_key or level is Access.PUBLIC:
        return False
    return not (level is Access.SERVING and settings.open_serving)


def check_key(settings: Settings, supplied: str | None) -> None:
    """401 without a key, 403 with a wrong one (compared in constant time) or when the server has none."""
    expected = settings.api_key
    if not expected:
        raise Forbidden(f"this route needs an API key and the server has none: set RECDISTILL_API_KEY "
                        f"and send it in {HEADER}", code="api_key_required")
    if not supplied:
        raise Unauthorized(f"missing {HEADER} header", headers={"WWW-Authenticate": HEADER})
    if not hmac.compare_digest(supplied.encode(), expected.encode()):
        raise Forbidden(f"wrong {HEADER}")


def authorize(request: Request) -> None:
    """Enforce the policy of the route this request matched."""
    route = request.scope.get("route")
    level = access_level(route.path if route is not None else request.url.path)
    settings: Settings = request.app.state.settings
    if needs_key(level, settings):
        check_key(settings, request.headers.get(HEADER))


# The name the recommend hot path calls inline (it skips dependency injection).
authorize_read = authorize


async def require_access(request: Request) -> None:
    """The app-wide dependency form of ``authorize`` (``async``: no hop to the thread pool)."""
    authorize(request)


def warn_if_open(settings: Settings) -> None:
    """Log once at start-up what is reachable without a key."""
    if "RECDISTILL_OPEN_READS" in os.environ:
        logger.warning("RECDISTILL_OPEN_READS is no longer read: with RECDISTILL_API_KEY set every route but "
                       "/healthz and /readyz needs the key; RECDISTILL_OPEN_SERVING=true opens the serving routes")
    if not settings.api_key:
        logger.warning("RECDISTILL_API_KEY is not set: every endpoint but checkpoint download is open to anyone "
                       "who can reach %s:%s", settings.host, settings.port)
    elif settings.open_serving:
        logger.info("RECDISTILL_OPEN_SERVING=true: /recommend and /items/*/similar are served without a key")
