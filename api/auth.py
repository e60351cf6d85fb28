"""API-key checks: writes need ``X-API-Key`` when a key is configured; reads only if reads are closed."""

from __future__ import annotations

import hmac
import logging

from fastapi import Request

from api.errors import Forbidden, Unauthorized
from core.settings import Settings

logger = logging.getLogger(__name__)

HEADER = "X-API-Key"


def _check(settings: Settings, supplied: str | None) -> None:
    expected = settings.api_key
    if not expected:
        return
    if not supplied:
        raise Unauthorized(f"missing {HEADER} header", headers={"WWW-Authenticate": HEADER})
    if not hmac.compare_digest(supplied.encode(), expected.encode()):
        raise Forbidden(f"wrong {HEADER}")


async def require_write(request: Request) -> None:
    """Dependency of every write endpoint."""
    _check(request.app.state.settings, request.headers.get(HEADER))


def authorize_read(request: Request) -> None:
    """Read check, callable inline (the recommend hot path skips dependency injection)."""
    settings: Settings = request.app.state.settings
    if not settings.open_reads:
        _check(settings, request.headers.get(HEADER))


async def require_read(request: Request) -> None:
    """Dependency of read endpoints: open unless RECDISTILL_OPEN_READS=false."""
    authorize_read(request)


def warn_if_open(settings: Settings) -> None:
    """Log once at start-up when writes are unauthenticated (the embedded local default)."""
    if not settings.api_key:
        logger.warning("RECDISTILL_API_KEY is not set: write endpoints are open to anyone who can reach %s:%s",
                       settings.host, settings.port)
    if not settings.open_reads and not settings.api_key:
        logger.warning("RECDISTILL_OPEN_READS=false has no effect without RECDISTILL_API_KEY")
