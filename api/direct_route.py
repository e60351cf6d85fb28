"""``DirectRoute``: an ``APIRoute`` whose ``async (request) -> Response`` endpoint is called as is.

FastAPI's request handler solves dependencies, builds a sub-response and an error context on every call
even when the endpoint takes only the ``Request``, and wraps it in two exit stacks and a route-level
exception catcher; on the recommend hot path that was about a quarter of the request's cost. The route
keeps everything else (OpenAPI from ``response_model``/``responses``, matching, the app's exception
handlers, which catch what the endpoint raises one layer up); any endpoint with parameters or
dependencies gets FastAPI's normal handler. Only public APIs: the route's own ``dependant`` decides, and a
router included with extra dependencies gets new route objects whose dependant holds them (tested).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send

Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]

def takes_only_request(dependant: Dependant) -> bool:
    """True when solving ``dependant`` would only hand the endpoint its ``Request``."""
    call = dependant.call
    return (
        call is not None
        and inspect.iscoroutinefunction(call)
        and dependant.request_param_name is not None
        and len(inspect.signature(call).parameters) == 1
        and not (dependant.path_params or dependant.query_params or dependant.header_params
                 or dependant.cookie_params or dependant.body_params or dependant.dependencies)
    )


def direct_app(endpoint: Endpoint) -> ASGIApp:
    """The ASGI app of a request-only GET endpoint: no exit stacks (no dependencies to close) and no
    route-level exception catcher (the app's ExceptionMiddleware runs the same handlers)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        response = await endpoint(Request(scope, receive, send))
        await response(scope, receive, send)

    return app


class DirectRoute(APIRoute):
    """Calls a request-only endpoint directly; other endpoints fall back to FastAPI's handler."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        # A GET endpoint reads no body, so the body-size limit FastAPI wraps around routes has nothing to do.
        if self.methods == {"GET"} and takes_only_request(self.dependant):
            self.app = direct_app(endpoint)
