"""``recdistill serve`` (API + embedded local worker), ``recdistill worker`` (a Celery worker) and
``recdistill migrate``; registered by ``cli/main.py``. Imports stay light: no torch here.
"""

from __future__ import annotations

import argparse
import logging
import signal

from core.settings import Settings, get_settings

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve``, ``worker`` and ``migrate`` commands to a top-level subparsers object."""
    serve = subparsers.add_parser(
        "serve",
        help="run the REST API (and, in the embedded mode, a local worker)",
        description="Migrate the database, start a local worker when the queue is the embedded SQLite one "
        "(or with --worker), then serve api.main:app with uvicorn. Configuration: environment variables "
        "(RECDISTILL_HOME, DATABASE_URL, CELERY_BROKER_URL, ...).",
    )
    serve.add_argument("--host", help="bind address (default RECDISTILL_HOST)")
    serve.add_argument("--port", type=int, help="port (default RECDISTILL_PORT)")
    group = serve.add_mutually_exclusive_group()
    group.add_argument(
        "--worker",
        dest="local_worker",
        action="store_true",
        default=None,
        help="always start a local worker process",
    )
    group.add_argument(
        "--no-worker",
        dest="local_worker",
        action="store_false",
        help="never start a local worker (jobs wait for `recdistill worker` processes)",
    )
    serve.add_argument(
        "--no-migrate", dest="migrate", action="store_false", help="skip `alembic upgrade head`"
    )
    serve.set_defaults(handler=run_serve)

    worker = subparsers.add_parser(
        "worker",
        help="run a Celery worker that executes distillation jobs (one at a time)",
        description="A Celery worker on CELERY_BROKER_URL: prefetch 1, late acks, one job at a time. "
        "Start one per GPU (CUDA_VISIBLE_DEVICES) on as many machines as you like, sharing ARTIFACT_DIR.",
    )
    worker.add_argument(
        "--pool",
        default="solo",
        choices=("solo", "prefork", "threads"),
        help="Celery pool (default solo: the job runs in the worker process)",
    )
    worker.add_argument("--name", help="Celery node name (default recdistill-<pid>@<host>)")
    worker.add_argument(
        "--migrate",
        action="store_true",
        help="run `alembic upgrade head` first (normally serve or migrate does)",
    )
    worker.set_defaults(handler=run_worker)

    migrate = subparsers.add_parser(
        "migrate", help="bring the database to the newest schema (alembic upgrade head)"
    )
    migrate.set_defaults(handler=run_migrate)


def _prepare(settings: Settings, migrate: bool) -> None:
    from core.db.migrate import upgrade_head

    settings.ensure_dirs()
    if migrate:
        upgrade_head(settings.database_url)


def run_migrate(args: argparse.Namespace) -> int:
    _prepare(get_settings(), migrate=True)
    log.info("database at %s is up to date", get_settings().database_url.split("@")[-1])
    return 0


def run_worker(args: argparse.Namespace) -> int:
    from worker.celery_app import celery_app, ensure_broker_dir
    from worker.embedded import worker_argv

    settings = get_settings()
    _prepare(settings, args.migrate)
    ensure_broker_dir(settings)
    celery_app.worker_main(argv=worker_argv(settings, pool=args.pool, name=args.name))
    return 0


def run_serve(args: argparse.Namespace) -> int:
    from api.server import run as run_api
    from worker.embedded import LocalWorker, LocalWorkerBusy

    settings = get_settings()
    _prepare(settings, args.migrate)
    start_worker = settings.embedded_broker if args.local_worker is None else args.local_worker
    local = LocalWorker(settings) if start_worker else None
    if local is not None:
        try:
            local.start()  # one local worker per RECDISTILL_HOME: waits for a previous server's to exit
        except LocalWorkerBusy as exc:
            log.error("%s", exc)
            return 1
    # uvicorn re-raises the SIGTERM it handled once it has shut down; with the default action that would
    # kill this process before the local worker is stopped. A no-op handler lets the finally clause run.
    # Installed after the wait above, so that a SIGTERM during it still ends the server at once.
    signal.signal(signal.SIGTERM, lambda signum, frame: log.info("SIGTERM: shutting down"))
    try:
        run_api(args.host or settings.host, args.port or settings.port, log_level=settings.log_level.lower())
    finally:
        if local is not None:
            local.stop()
    return 0
