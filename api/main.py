"""The FastAPI app: ``create_app(settings)`` wires routers, errors, auth, metrics and the index lifespan.

``app`` (module level) is what ``uvicorn api.main:app`` serves; it reads settings from the environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import faiss
from fastapi import Depends, FastAPI

from api.auth import require_access, warn_if_open
from api.errors import install_error_handlers
from api.holder import IndexHolder
from api.ingest import IngestRunner, cleanup_upload_leftovers
from api.limits import BodyLimitMiddleware
from api.metrics import Metrics, MetricsMiddleware
from api.openapi import install_openapi
from api.routers import dashboard, datasets, health, items, jobs, models, recommend, users
from core.db.session import session_factory
from core.index import IndexSpec
from core.settings import Settings, get_settings

logger = logging.getLogger(__name__)

DESCRIPTION = (
    "Upload interaction data, run teacher -> student distillation jobs (DCD, RRD), register models and "
    "serve top-K recommendations from a FAISS index. Errors are JSON `{detail, code, errors?}`. With "
    "`RECDISTILL_API_KEY` set, every endpoint but /healthz, /readyz, the docs and the dashboard page (/) needs the `X-API-Key` header "
    "(`RECDISTILL_OPEN_SERVING=true` opens /recommend and /items/{item}/similar)."
)


def _default_enqueue(settings: Settings) -> Callable[[str], object]:
    def enqueue(job_id: str) -> object:
        from worker.celery_app import enqueue_job  # celery client only; imported on first use

        return enqueue_job(job_id, settings)

    return enqueue


def create_app(settings: Settings | None = None, *, poll_interval_s: float = 1.0) -> FastAPI:
    """Build an app bound to ``settings`` (default: the environment's)."""
    settings = settings or get_settings()
    sessions = session_factory(settings.database_url)
    holder = IndexHolder(sessions, settings.artifact_dir, IndexSpec.of(settings))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        warn_if_open(settings)
        # One-query searches gain nothing from OpenMP and its spinning threads steal the event loop's
        # core; an API scales by uvicorn workers instead.
        faiss.omp_set_num_threads(1)
        settings.ensure_dirs()
        await asyncio.to_thread(cleanup_upload_leftovers, settings, sessions)
        try:
            await asyncio.to_thread(holder.refresh)
        except Exception:  # no database yet, or it is down: start unready, the poller retries
            logger.exception("could not load the active model at start-up")
        task = asyncio.create_task(holder.poll(poll_interval_s))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # The access policy guards every included route; the recommend routes, spliced in below, call it inline.
    # /docs is api.routers.dashboard's: Swagger UI from local files instead of FastAPI's CDN links.
    app = FastAPI(title="recdistill", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                  dependencies=[Depends(require_access)], docs_url=None)
    app.state.settings = settings
    app.state.sessions = sessions
    app.state.holder = holder
    app.state.enqueue = _default_enqueue(settings)
    app.state.ingest = IngestRunner(settings)
    app.state.metrics = Metrics(holder)
    install_error_handlers(app)
    install_openapi(app, settings)
    # Serving routes first: the router matches in order, and they are the hot path. The recommend routes
    # sit on the app itself, ahead of the docs routes, because an included router is matched twice per
    # request (once to pick the router, once to pick its route): about 30 µs of the ~200 µs a /recommend
    # request cost in-process.
    app.router.routes[:0] = recommend.router.routes
    for module in (items, users, health, datasets, jobs, models, dashboard):
        app.include_router(module.router)
    app.add_middleware(BodyLimitMiddleware, settings=settings)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app


def __getattr__(name: str) -> FastAPI:
    # Built on first access so importing api.main (tests, tools) reads no environment by itself.
    if name == "app":
        built = create_app()
        globals()["app"] = built
        return built
    raise AttributeError(name)
