"""``DirectRoute``: request-only endpoints are called directly; anything with parameters or dependencies
(declared on the route, its router, or at include time) still goes through FastAPI's handler."""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.testclient import TestClient

from api.direct_route import DirectRoute

calls: list[str] = []


async def deny(request: Request) -> None:
    calls.append("deny")
    raise HTTPException(status_code=403, detail="denied")


async def plain(request: Request) -> Response:
    return Response(b'{"ok":true}', media_type="application/json")


async def with_query(request: Request, n: int) -> Response:
    return Response(f'{{"n":{n}}}'.encode(), media_type="application/json")


class Teapot(Exception):
    pass


async def raises(request: Request) -> Response:
    if request.query_params.get("http"):
        raise HTTPException(status_code=418, detail="short and stout")
    raise Teapot("no coffee")


def make_router(**kwargs: object) -> APIRouter:
    router = APIRouter(route_class=DirectRoute, **kwargs)  # type: ignore[arg-type]
    router.add_api_route("/plain", plain, methods=["GET"])
    router.add_api_route("/query", with_query, methods=["GET"])
    router.add_api_route("/raises", raises, methods=["GET"])
    router.add_api_route("/post", plain, methods=["POST"])
    return router


def test_request_only_get_endpoint_is_served_directly_others_are_not() -> None:
    router = make_router()
    by_path = {r.path: r for r in router.routes if isinstance(r, DirectRoute)}
    assert by_path["/plain"].app.__qualname__.startswith("direct_app")
    assert not by_path["/query"].app.__qualname__.startswith("direct_app")
    app = FastAPI()
    app.include_router(router)
    with TestClient(app) as client:
        assert client.get("/plain").json() == {"ok": True}
        assert client.get("/query", params={"n": 3}).json() == {"n": 3}
        assert client.get("/query", params={"n": "x"}).status_code == 422


def test_dependencies_from_the_router_or_the_include_still_run() -> None:
    for app in (FastAPI(), FastAPI(dependencies=[Depends(deny)])):
        if app.router.dependencies:
            app.include_router(make_router())
        else:
            app.include_router(make_router(), dependencies=[Depends(deny)])
        calls.clear()
        with TestClient(app) as client:
            assert client.get("/plain").status_code == 403
        assert calls == ["deny"]
    app = FastAPI()
    app.include_router(make_router(dependencies=[Depends(deny)]))
    with TestClient(app) as client:
        assert client.get("/plain").status_code == 403


def test_routes_on_the_app_itself_run_the_app_exception_handlers() -> None:
    """Spliced onto the app (as api.main does), a GET route is served by its direct ASGI app; what the
    endpoint raises reaches the app's handlers exactly as through FastAPI's route wrapper."""
    from fastapi.responses import JSONResponse

    router = make_router()
    by_path = {r.path: r for r in router.routes if isinstance(r, DirectRoute)}
    assert by_path["/plain"].app.__qualname__.startswith("direct_app")
    assert not by_path["/post"].app.__qualname__.startswith("direct_app")  # only GET skips the body limit
    results = []
    for splice in (True, False):
        app = FastAPI()

        @app.exception_handler(Teapot)
        async def teapot(request: Request, exc: Teapot) -> JSONResponse:
            return JSONResponse({"detail": str(exc), "path": request.url.path}, status_code=418)

        if splice:
            app.router.routes[:0] = router.routes
        else:
            app.include_router(router)
        with TestClient(app) as client:
            got = [(r.status_code, r.json()) for r in (client.get("/raises"), client.get("/raises?http=1"))]
            got.append((client.post("/post").status_code, client.get("/plain").json()))
        results.append(got)
    assert results[0] == results[1] == [
        (418, {"detail": "no coffee", "path": "/raises"}), (418, {"detail": "short and stout"}), (200, {"ok": True})
    ]
